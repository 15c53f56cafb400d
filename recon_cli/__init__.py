"""recon-cli: model-based tomographic reconstruction (SV-TV, RISING, graphLa+Psi) on ASTRA."""

__version__ = "0.1.0"
