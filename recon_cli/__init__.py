"""recon-cli: model-based tomographic reconstruction (SV-TV, RISING, graphLa+Psi) on ASTRA."""

__version__ = "0.1.0"

#: The distribution name on package indexes (pip install recon-ct-cli); "recon-cli" there is another project.
DISTRIBUTION = "recon-ct-cli"
