"""Readers and writers: HDF5 layout v1 (``hdf5``), PNG previews (``png``), atomic output (``atomic``).

Submodules are imported on demand so that ``import recon_cli.io`` stays cheap.
"""
