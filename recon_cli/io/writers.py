"""The built-in output formats behind one signature, as registered in recon_cli.registries.OUTPUT_FORMATS.

``write(path, volume, voxel_size, facts, *, overwrite)``: ``volume`` the reconstruction (ny, nx) or
(nz, ny, nx) float32 in 1/mm, ``voxel_size`` in mm, ``facts`` an :class:`OutputFacts` (what the run
knows besides the image). Each writer is atomic on its own (recon_cli.io.atomic); the runner removes
the outputs of a run that fails halfway.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from recon_cli.constants import MU_WATER


@dataclass
class OutputFacts:
    """What a writer may record besides the image.

    ``metrics`` name -> float; ``provenance``, ``history``, ``info`` as stored in the HDF5 output;
    ``window`` (center, width) in HU for previews, None: the image's min..max; ``mu_water`` 1/mm for
    HU; ``name`` the pipeline's name (the DICOM SeriesDescription); ``dicom_source`` a DICOM input's
    Sinogram.metadata["dicom"]; ``recon`` the reconstruction parameters (runner.recon_facts).
    """

    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    window: Optional[tuple[float, float]] = None
    mu_water: float = MU_WATER
    name: str = ""
    dicom_source: Optional[dict[str, Any]] = None
    recon: dict[str, Any] = field(default_factory=dict)


def write_hdf5(path: Path, volume: np.ndarray, voxel_size: float, facts: OutputFacts, *, overwrite: bool) -> None:
    """HDF5 layout v1 with /reconstruction, /metrics, /provenance, /history, /info (recon_cli.io.hdf5)."""
    from recon_cli.io.hdf5 import write_reconstruction

    write_reconstruction(path, volume, voxel_size, metrics=facts.metrics, provenance=facts.provenance,
                         history=facts.history, info=facts.info, overwrite=overwrite)


def write_png(path: Path, volume: np.ndarray, voxel_size: float, facts: OutputFacts, *, overwrite: bool) -> None:
    """An 8-bit preview of the (central) slice, windowed in HU (recon_cli.io.png)."""
    from recon_cli.io.png import write_png as write

    write(path, volume, facts.window, facts.mu_water, overwrite=overwrite)


def write_tiff(path: Path, volume: np.ndarray, voxel_size: float, facts: OutputFacts, *, overwrite: bool) -> None:
    """One float32 (multi-page) TIFF in 1/mm."""
    from recon_cli.io.tiff_nifti import write_tiff as write

    write(path, volume, voxel_size, overwrite=overwrite)


def write_tiff_slices(path: Path, volume: np.ndarray, voxel_size: float, facts: OutputFacts, *,
                      overwrite: bool) -> None:
    """A folder of one float32 TIFF per slice."""
    from recon_cli.io.tiff_nifti import write_tiff_slices as write

    write(path, volume, voxel_size, overwrite=overwrite)


def write_nifti(path: Path, volume: np.ndarray, voxel_size: float, facts: OutputFacts, *, overwrite: bool) -> None:
    """NIfTI-1 (.nii.gz) in 1/mm."""
    from recon_cli.io.tiff_nifti import write_nifti as write

    write(path, volume, voxel_size, overwrite=overwrite)


def write_dicom(path: Path, volume: np.ndarray, voxel_size: float, facts: OutputFacts, *, overwrite: bool) -> None:
    """The reconstruction as a CT series folder. A DICOM input lends its patient/study identity, slice
    spacing and (axial series) position, so the series lies on its source; otherwise anonymous."""
    from recon_cli.io.dicom_writer import write_series

    source = facts.dicom_source or {}
    spacing = source.get("spacing")
    if spacing is None or not math.isclose(spacing[-1], voxel_size, rel_tol=1e-6):
        spacing, origin = voxel_size, None
    else:
        origin = source.get("origin")
    window = tuple(facts.window) if facts.window else (40.0, 400.0)
    write_series(path, volume, spacing, mu_water=facts.mu_water, series_description=facts.name,
                 identity=source.get("identity"), recon=facts.recon, origin=origin, window=window,
                 source_series_uid=source.get("series_uid"), overwrite=overwrite)
