"""Simulated CT data without the inverse crime.

The image is taken as a function on its own pixel grid, centred on the rotation
axis (zero outside). It is resampled to a grid ``upsample`` times finer than the
reconstruction grid (same field of view: area averages where the image is finer,
linear interpolation where it is coarser) and projected with ASTRA onto a detector
with ``upsample`` times more, ``upsample`` times narrower elements; groups of
``upsample`` sub-detectors are then averaged back to the real detector elements
(bin averaging). The reference is the exact area average of that fine image on the
reconstruction grid. Reconstructing on the coarse grid with the coarse projector
therefore never reuses the model that made the data.

Noise:
- Poisson, ``I0`` incident photons per detector element: counts ~ Poisson(I0 exp(-p)),
  zero counts clamped to 0.5 (so that -log stays finite), y = -log(counts / I0).
- Gaussian, ``gaussian_rel``: white noise e scaled so that ||e|| = gaussian_rel * ||y||,
  added after the Poisson noise when both are given.
"""
from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from recon_cli.backend import gpu_available
from recon_cli.errors import DeviceError, InputError
from recon_cli.geometry import Cone3D, FanFlat2D, Geometry, Parallel2D, Parallel3D, VolumeGrid
from recon_cli.sinogram import Sinogram

log = logging.getLogger(__name__)

#: Projector types used for the fine forward projection (``strip_fanflat`` is inaccurate in ASTRA 2.5).
SIM_PROJECTOR = {"parallel": "linear", "fanflat": "line_fanflat"}

#: Zero photon counts are replaced by this value before the log.
ZERO_COUNT = 0.5


# ----------------------------------------------------------------------------- resampling
def _axis_matrix(n_in: int, v_in: float, n_out: int, v_out: float) -> sp.csr_matrix:
    """(n_out, n_in) resampling matrix along one axis; both grids are centred on 0.

    Output cells at least as large as input cells (v_out >= v_in): exact area average of the
    piecewise-constant input (zero outside it). Smaller output cells: linear interpolation
    between input pixel centres, constant up to the input's outer edge, zero beyond.
    """
    edges_in = (np.arange(n_in + 1) - n_in / 2) * v_in
    if v_out >= v_in * (1 - 1e-9):
        rows, cols, vals = [], [], []
        for i in range(n_out):
            lo, hi = (i - n_out / 2) * v_out, (i + 1 - n_out / 2) * v_out
            j0 = max(int(np.floor((lo - edges_in[0]) / v_in)), 0)
            j1 = min(int(np.ceil((hi - edges_in[0]) / v_in)), n_in)
            for j in range(j0, j1):
                overlap = min(hi, edges_in[j + 1]) - max(lo, edges_in[j])
                if overlap > 1e-12 * v_out:
                    rows.append(i)
                    cols.append(j)
                    vals.append(overlap / v_out)
        return sp.csr_matrix((vals, (rows, cols)), shape=(n_out, n_in))
    centres = (np.arange(n_out) + 0.5 - n_out / 2) * v_out
    t = centres / v_in + (n_in - 1) / 2  # position in input index units
    keep = (t >= -0.5) & (t <= n_in - 0.5)
    t = np.clip(t, 0.0, n_in - 1.0)
    j0 = np.minimum(np.floor(t).astype(int), max(n_in - 2, 0))
    frac = t - j0
    if n_in == 1:
        j0, frac = np.zeros_like(j0), np.zeros_like(t)
    rows = np.concatenate([np.nonzero(keep)[0]] * 2)
    cols = np.concatenate([j0[keep], np.minimum(j0[keep] + 1, n_in - 1)])
    vals = np.concatenate([1 - frac[keep], frac[keep]])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n_out, n_in))


def _apply_along(matrix: sp.csr_matrix, x: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(x, axis, 0)
    out = matrix @ moved.reshape(moved.shape[0], -1)
    return np.moveaxis(np.asarray(out).reshape((matrix.shape[0], *moved.shape[1:])), 0, axis)


def resample_image(image: np.ndarray, voxel_size: float, shape: tuple[int, ...], out_voxel: float,
                   axes: tuple[int, ...] | None = None) -> np.ndarray:
    """Resample a centred image of pixel size ``voxel_size`` (mm) onto a centred grid of ``shape``
    and ``out_voxel`` (mm) along ``axes`` (default: the last two); other axes must match.
    Area-averaging when coarsening, linear interpolation when refining, zero outside. float32.
    """
    image = np.asarray(image, np.float64)
    axes = tuple(range(image.ndim - 2, image.ndim)) if axes is None else axes
    out = image
    for ax in axes:
        n_in, n_out = image.shape[ax], shape[ax]
        if n_in == n_out and abs(voxel_size - out_voxel) <= 1e-9 * out_voxel:
            continue
        out = _apply_along(_axis_matrix(n_in, voxel_size, n_out, out_voxel), out, ax)
    if out.shape != tuple(shape):
        raise InputError(f"image shape {image.shape} cannot be resampled to {tuple(shape)}", field="image")
    return out.astype(np.float32)


def block_mean(x: np.ndarray, factor: int, axes: tuple[int, ...]) -> np.ndarray:
    """Average non-overlapping blocks of ``factor`` elements along each of ``axes``."""
    if factor == 1:
        return x
    shape, mean_axes = [], []
    for ax, n in enumerate(x.shape):
        if ax in axes:
            shape += [n // factor, factor]
            mean_axes.append(len(shape) - 1)
        else:
            shape.append(n)
    return x.reshape(shape).mean(axis=tuple(mean_axes))


# ----------------------------------------------------------------------------- projection
def refine_geometry(geometry: Geometry, upsample: int) -> Geometry:
    """The same acquisition with ``upsample`` times more detector elements (and rows, in 3D)
    of 1/upsample the size; detector centres of each group average to the real element's centre."""
    u = upsample
    common = dict(angles=geometry.angles, detector_spacing=geometry.detector_spacing / u,
                  detector_count=geometry.detector_count * u)
    if isinstance(geometry, Cone3D):
        return Cone3D(**common, detector_rows=geometry.detector_rows * u,
                      detector_row_spacing=geometry.detector_row_spacing / u,
                      source_origin=geometry.source_origin, origin_detector=geometry.origin_detector)
    if isinstance(geometry, Parallel3D):
        return Parallel3D(**common, detector_rows=geometry.detector_rows * u,
                          detector_row_spacing=geometry.detector_row_spacing / u)
    if isinstance(geometry, FanFlat2D):
        return FanFlat2D(**common, source_origin=geometry.source_origin,
                         origin_detector=geometry.origin_detector)
    if isinstance(geometry, Parallel2D):
        return Parallel2D(**common)
    raise InputError(f"unsupported geometry {type(geometry).__name__}", field="geometry/type")


def _project_2d(fine: np.ndarray, fine_geom: Geometry, fine_grid: VolumeGrid) -> np.ndarray:
    from recon_cli.projectors.astra_cpu import AstraCPUProjector

    op = AstraCPUProjector(fine_geom, fine_grid, SIM_PROJECTOR[fine_geom.type])
    return op.forward(fine)


def _project_3d_gpu(fine: np.ndarray, fine_geom: Geometry, fine_grid: VolumeGrid) -> np.ndarray:
    """ASTRA CUDA 3D forward projection; only called after gpu_available() is True."""
    import astra

    vol_geom = fine_grid.to_astra()
    sid, sino = astra.create_sino3d_gpu(np.ascontiguousarray(fine, np.float32), fine_geom.to_astra(), vol_geom)
    astra.data3d.delete(sid)
    return np.asarray(sino, np.float32)


# ----------------------------------------------------------------------------- noise
def add_noise(p: np.ndarray, *, I0: float | None, gaussian_rel: float | None,
              rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Noisy line integrals (float64) and the estimated std of one line integral (RMS over elements)."""
    y = np.asarray(p, np.float64)
    var = 0.0
    if I0 is not None:
        counts = rng.poisson(I0 * np.exp(-y)).astype(np.float64)
        zero = counts == 0
        if zero.any():
            log.warning("%d detector readings had zero counts; clamped to %g", int(zero.sum()), ZERO_COUNT)
            counts[zero] = ZERO_COUNT
        var += float(np.mean(np.exp(y) / I0))
        y = -np.log(counts / I0)
    if gaussian_rel is not None and gaussian_rel > 0:
        e = rng.standard_normal(y.shape)
        e *= gaussian_rel * np.linalg.norm(y) / np.linalg.norm(e)
        var += float(np.mean(e * e))
        y = y + e
    return y, float(np.sqrt(var))


# ----------------------------------------------------------------------------- main entry
def _check_args(image, image_voxel_size, geometry, grid, upsample, I0, gaussian_rel):
    if int(upsample) != upsample or upsample < 1:
        raise InputError(f"must be a positive integer, got {upsample}", field="upsample")
    if I0 is not None and not (np.isfinite(I0) and I0 > 0):
        raise InputError(f"incident counts must be positive, got {I0}", field="I0")
    if gaussian_rel is not None and not (np.isfinite(gaussian_rel) and gaussian_rel >= 0):
        raise InputError(f"relative Gaussian noise must be >= 0, got {gaussian_rel}", field="gaussian_rel")
    if not (np.isfinite(image_voxel_size) and image_voxel_size > 0):
        raise InputError(f"must be a positive number of mm, got {image_voxel_size}", field="image_voxel_size")
    if image.ndim != len(grid.shape):
        raise InputError(f"image has {image.ndim} dimensions but the grid is {list(grid.shape)}", field="image")
    if image.ndim == 3 and not geometry.is_3d and image.shape[0] != grid.shape[0]:
        raise InputError(f"image has {image.shape[0]} slices but the grid {grid.shape[0]}", field="image")
    if geometry.is_3d and image.ndim != 3:
        raise InputError("a 3D geometry needs an image (nz, ny, nx)", field="image")
    if not np.all(np.isfinite(image)):
        raise InputError("image contains NaN or Inf", field="image")
    if float(image.min()) < 0:
        raise InputError(f"image has negative attenuation (min {float(image.min()):.3g} 1/mm)", field="image")


def simulate_sinogram(image, image_voxel_size: float, geometry: Geometry, grid: VolumeGrid, *,
                      upsample: int = 2, I0: float | None = None, gaussian_rel: float | None = None,
                      seed: int = 0, simulated_from: str = "image") -> Sinogram:
    """Simulated sinogram of ``image`` (1/mm, (ny, nx) or (nz, ny, nx) slices, pixel size
    ``image_voxel_size`` mm, centred on the rotation axis) for ``geometry`` on ``grid``.

    Returns a Sinogram with float32 ``data`` of shape ``geometry.sinogram_shape(grid.n_slices)``,
    ``reference`` = the area average on ``grid`` of the fine image that was projected (float32,
    1/mm: an image coarser than the fine grid is interpolated linearly first, so its reference is
    slightly smoother than the input; draw phantoms on the fine grid to avoid that), ``metadata``
    ``{"I0", "gaussian_rel" (each only when used), "sigma": estimated std of one line integral
    (0.0 without noise), "upsample", "seed", "simulated_from"}``. 2D geometries run on the CPU;
    3D geometries need a GPU (DeviceError otherwise).
    """
    image = np.asarray(image)
    _check_args(image, image_voxel_size, geometry, grid, upsample, I0, gaussian_rel)
    if geometry.is_3d and not gpu_available():
        raise DeviceError(f"simulating the 3D geometry {geometry.type!r} needs a GPU "
                          "(ASTRA has no 3D CPU projector)", field="geometry/type")
    u = int(upsample)
    fine_grid = VolumeGrid(tuple(s * u for s in grid.shape) if geometry.is_3d
                           else (*grid.shape[:-2], grid.shape[-2] * u, grid.shape[-1] * u),
                           grid.voxel_size / u)
    axes = tuple(range(image.ndim)) if geometry.is_3d else (image.ndim - 2, image.ndim - 1)
    fine = resample_image(image, float(image_voxel_size), fine_grid.shape, fine_grid.voxel_size, axes=axes)
    reference = block_mean(fine, u, axes).astype(np.float32)
    fine_geom = refine_geometry(geometry, u)
    if geometry.is_3d:
        p = block_mean(_project_3d_gpu(fine, fine_geom, fine_grid), u, (0, 2))  # (rows, angles, cols)
    else:
        p = block_mean(_project_2d(fine, fine_geom, fine_grid), u, (fine.ndim - 1,))  # detector axis
    rng = np.random.default_rng(seed)
    y, sigma = add_noise(p, I0=I0, gaussian_rel=gaussian_rel, rng=rng)
    metadata = {"sigma": sigma, "upsample": u, "seed": int(seed), "simulated_from": str(simulated_from)}
    if I0 is not None:
        metadata["I0"] = float(I0)
    if gaussian_rel is not None:
        metadata["gaussian_rel"] = float(gaussian_rel)
    return Sinogram(data=y.astype(np.float32), geometry=geometry, grid=grid, reference=reference,
                    metadata=metadata)
