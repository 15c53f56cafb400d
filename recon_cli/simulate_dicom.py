"""A DICOM CT image series as a simulation source: the pipeline input ``dicom`` simulates its acquisition.

A series holds images, not projections, so :func:`read_dicom_image_input` reads it
(``dicom_series.read_series``, HU -> 1/mm with ``mu_water``, clipped at 0), simulates a sinogram of
it with :func:`recon_cli.simulate.simulate_sinogram` (finer image and detector grids, optional
Poisson noise) and returns that with the series itself as ``reference``. The reconstruction grid
is the series' own: (ny, nx) for one slice or (nz, ny, nx), pixel size = PixelSpacing (mm), centred
on the rotation axis, so reconstruction pixel [k, i, j] lies where series pixel [k, i, j] lies.

``Sinogram.metadata["dicom"]`` keeps what a DICOM output of the reconstruction needs:
``series_uid``, ``identity`` (patient / study / frame-of-reference attributes), ``spacing``
(dz, dy, dx) mm and ``origin`` (ImagePositionPatient of the first slice when the series is axial,
ImageOrientationPatient = [1,0,0, 0,1,0]; else None, and the output gets a new frame of reference).
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from recon_cli.constants import (MU_WATER, REFERENCE_DETECTOR_COUNT, REFERENCE_DETECTOR_SPACING, REFERENCE_N_ANGLES,
                                 REFERENCE_ORIGIN_DETECTOR, REFERENCE_SOURCE_ORIGIN)
from recon_cli.errors import InputError
from recon_cli.geometry import Geometry, VolumeGrid, fan_beam_geometry, parallel_beam_geometry
from recon_cli.sinogram import Sinogram

log = logging.getLogger(__name__)

_AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def simulation_defaults() -> dict[str, Any]:
    """The acquisition simulated when none is given: the reference fan beam (recon_cli.constants), no noise."""
    return {"geometry": "fanflat", "angles": REFERENCE_N_ANGLES, "detector_count": REFERENCE_DETECTOR_COUNT,
            "detector_spacing": REFERENCE_DETECTOR_SPACING, "source_origin": REFERENCE_SOURCE_ORIGIN,
            "origin_detector": REFERENCE_ORIGIN_DETECTOR, "I0": None, "seed": 0}


def simulated_geometry(spec: dict[str, Any]) -> Geometry:
    """fanflat: views over 2*pi; parallel: views over pi (``spec`` as :func:`simulation_defaults`)."""
    if spec["geometry"] == "fanflat":
        return fan_beam_geometry(int(spec["angles"]), int(spec["detector_count"]), float(spec["detector_spacing"]),
                                 float(spec["source_origin"]), float(spec["origin_detector"]), 2 * math.pi)
    if spec["geometry"] == "parallel":
        return parallel_beam_geometry(int(spec["angles"]), int(spec["detector_count"]),
                                      float(spec["detector_spacing"]), math.pi)
    raise InputError(f"unknown geometry {spec['geometry']!r} (fanflat or parallel)", field="input.simulate.geometry")


def field_of_view_radius(geometry: Geometry) -> float:
    """Radius (mm) around the rotation axis seen by every view of a 2D geometry."""
    half = geometry.detector_count * geometry.detector_spacing / 2
    if geometry.type == "fanflat":
        return geometry.source_origin * math.sin(math.atan2(half, geometry.source_origin + geometry.origin_detector))
    return half


def _object_radius(mu: np.ndarray, voxel: float) -> float:
    """Distance (mm) from the axis to the outer corner of the farthest pixel with attenuation > 0."""
    ny, nx = mu.shape[-2:]
    inside = np.any(mu > 0, axis=0) if mu.ndim == 3 else mu > 0
    if not inside.any():
        return 0.0
    rows, cols = np.nonzero(inside)
    y = (np.abs(rows - (ny - 1) / 2) + 0.5) * voxel
    x = (np.abs(cols - (nx - 1) / 2) + 0.5) * voxel
    return float(np.sqrt(x * x + y * y).max())


def read_dicom_image_input(path, *, series_uid: str | None = None, simulate: dict[str, Any] | None = None,
                           mu_water: float = MU_WATER) -> Sinogram:
    """The sinogram simulated from the CT series at ``path`` (folder or file), with the series as reference.

    ``simulate``: any of the keys of :func:`simulation_defaults` (geometry, angles, detector_count,
    detector_spacing, source_origin, origin_detector, I0, seed). ``series_uid`` chooses one series
    when the files hold several. Returns data (n_angles, n_det) for one slice, else
    (nz, n_angles, n_det); ``reference`` (1/mm) the series' images; metadata as the simulator's
    (I0, sigma, seed, ...) plus ``source`` and ``dicom`` (see the module docstring).
    """
    from recon_cli.io.dicom_series import read_series_mu
    from recon_cli.simulate import simulate_sinogram

    spec = {**simulation_defaults(), **{k: v for k, v in (simulate or {}).items() if v is not None}}
    unknown = sorted(set(spec) - set(simulation_defaults()))
    if unknown:
        raise InputError(f"unknown simulation key(s) {', '.join(unknown)}", field="input.simulate")
    mu, series = read_series_mu(path, series_uid, mu_water)
    voxel = series.voxel_size()
    image = mu[0] if mu.shape[0] == 1 else mu
    grid = VolumeGrid(image.shape, voxel)
    geometry = simulated_geometry(spec)
    radius, fov = _object_radius(image, voxel), field_of_view_radius(geometry)
    if radius > fov:
        log.warning("the object reaches %.1f mm from the axis, beyond the %.1f mm seen by the simulated detector "
                    "(%d x %.4g mm): the projections are truncated", radius, fov, geometry.detector_count,
                    geometry.detector_spacing)
    sino = simulate_sinogram(image, voxel, geometry, grid, I0=spec["I0"], seed=int(spec["seed"]),
                             simulated_from=f"DICOM series {series.series_uid}")
    axial = np.allclose(series.orientation, _AXIAL, atol=1e-4)
    dicom = {"series_uid": series.series_uid, "identity": dict(series.identity),
             "spacing": [float(v) for v in series.spacing],
             "origin": [float(v) for v in series.origin] if axial else None}
    log.info("simulated %s views (%s) of %s", geometry.n_angles, geometry.type, series.series_uid)
    return Sinogram(data=sino.data, geometry=geometry, grid=grid, reference=np.ascontiguousarray(image),
                    metadata={**sino.metadata, "source": str(path), "dicom": dicom})


__all__ = ["read_dicom_image_input", "simulation_defaults", "simulated_geometry", "field_of_view_radius"]
