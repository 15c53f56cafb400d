"""Plain containers passed between readers, solvers and writers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recon_cli.geometry import Geometry, VolumeGrid


@dataclass
class Sinogram:
    """Line integrals (float32) with their geometry and reconstruction grid.

    ``data``: ``(n_angles, n_det)`` or ``(n_slices, n_angles, n_det)`` (2D geometries),
    ``(det_rows, n_angles, det_cols)`` (3D geometries). ``reference``: true image on
    ``grid`` in 1/mm, or None. ``metadata``: e.g. ``{"I0": 1e5}`` or ``{"sigma": 0.01}``
    (noise description), ``source``.
    """

    data: np.ndarray
    geometry: Geometry
    grid: VolumeGrid
    reference: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reconstruction:
    """A solver's result: ``volume`` on the grid (1/mm) and ``info`` (iterations, history, timings, ...)."""

    volume: Any
    info: dict[str, Any] = field(default_factory=dict)
