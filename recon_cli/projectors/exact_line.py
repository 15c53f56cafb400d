"""Exact (float64) line-kernel weights: the length of each ray inside each pixel.

This is the kernel of ASTRA's CPU ``line_fanflat`` and ``line`` projectors without their float32
stepping: a ray is cut into bands one pixel wide along its major axis (image rows for a ray
closer to vertical, columns otherwise); inside a band the ray has the length ``h / |cos|`` of
its angle to that axis and moves at most one pixel along the minor axis, so it covers one or two
pixels, split where it crosses the grid line between them. Parts outside the image are dropped.
A ray lying on a grid line along its band (within ``ON_LINE`` pixels) gives each neighbour half,
so that the weights are exactly equivariant under the quarter turns and mirrors of the
symmetry-compressed projector (recon_cli.projectors.symmetry) up to float64 rounding.

Rays are given as ASTRA ``fanflat_vec`` / ``parallel_vec`` rows; source and detector must lie
outside the image (callers check with :func:`rays_span_image`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp

#: A ray within this distance (in pixels) of a grid line over a whole band lies on it.
ON_LINE = 1e-9


def _rays(vectors: np.ndarray, vec_type: str, n_det: int) -> tuple[np.ndarray, np.ndarray]:
    """(points (n_rays, 2), directions (n_rays, 2)) in mm, view-major (ASTRA's row order)."""
    v = np.asarray(vectors, dtype=np.float64)
    u = np.arange(n_det, dtype=np.float64) - n_det / 2.0 + 0.5
    det = np.stack([v[:, 2, None] + u[None] * v[:, 4, None], v[:, 3, None] + u[None] * v[:, 5, None]], -1)
    if vec_type == "fanflat_vec":
        src = np.broadcast_to(v[:, None, 0:2], det.shape)
        return det.reshape(-1, 2), (det - src).reshape(-1, 2)
    return det.reshape(-1, 2), np.broadcast_to(v[:, None, 0:2], det.shape).reshape(-1, 2)


def rays_span_image(vectors: np.ndarray, vec_type: str, slice_shape: tuple[int, int], voxel_size: float) -> bool:
    """Whether every source (fan) and detector centre lies outside the image's circumscribed circle."""
    v = np.asarray(vectors, dtype=np.float64)
    radius = 0.5 * float(voxel_size) * float(np.hypot(*slice_shape))
    points = [v[:, 2:4]] + ([v[:, 0:2]] if vec_type == "fanflat_vec" else [])
    return all(bool(np.all(np.hypot(p[:, 0], p[:, 1]) > radius)) for p in points)


def _band_weights(p_major, p_minor, d_major, d_minor, n_major: int, n_minor: int, h: float):
    """Weights of rays (point p, direction d, in pixel units from the image's lower-left corner) over the
    bands of the major axis: (ray index, band index, minor index, length mm) arrays."""
    ray = np.arange(p_major.size)
    band = np.arange(n_major, dtype=np.float64)
    slope = d_minor / d_major  # |slope| <= 1
    length = h * np.hypot(d_major, d_minor) / np.abs(d_major)
    # minor coordinate where the ray enters / leaves each band (band b spans major coordinate [b, b+1])
    lo = p_minor[:, None] + (band[None] - p_major[:, None]) * slope[:, None]
    hi = lo + slope[:, None]
    u0, u1 = np.minimum(lo, hi), np.maximum(lo, hi)
    c0 = np.floor(u0)
    c1 = np.floor(u1)
    split = c1 > c0  # crosses the grid line u = c1 inside the band
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(split, (c1 - u0) / (u1 - u0), 1.0)
    # on a grid line along the whole band: half to each neighbour
    nearest = np.rint(u0)
    on_line = (np.abs(u0 - nearest) < ON_LINE) & (np.abs(u1 - nearest) < ON_LINE)
    c0 = np.where(on_line, nearest - 1, c0)
    c1 = np.where(on_line, nearest, c1)
    first = np.where(on_line, 0.5, first)
    split = split | on_line
    rows, bands, minors, weights = [], [], [], []
    for col, w, use in ((c0, first, np.ones_like(split)), (c1, 1.0 - first, split)):
        ok = use & (col >= 0) & (col < n_minor) & (w > 0)
        r, b = np.nonzero(ok)
        rows.append(ray[r])
        bands.append(b)
        minors.append(col[ok].astype(np.int64))
        weights.append((w * length[:, None])[ok])
    return tuple(np.concatenate(a) for a in (rows, bands, minors, weights))


def exact_line_matrix_transpose(vectors: np.ndarray, vec_type: str, n_det: int, slice_shape: tuple[int, int],
                                voxel_size: float) -> sp.csr_matrix:
    """A^T as a float32 CSR of shape (ny*nx, n_rays): exact ray/pixel intersection lengths (mm) on the
    centred (ny, nx) grid of ``voxel_size`` mm pixels (row 0 at +y), one view at a time."""
    import scipy.sparse as sp

    ny, nx = slice_shape
    h = float(voxel_size)
    points, dirs = _rays(vectors, vec_type, n_det)
    # pixel units: x -> column coordinate from the left edge, y -> row coordinate from the top edge
    px, py = points[:, 0] / h + nx / 2.0, ny / 2.0 - points[:, 1] / h
    dx, dy = dirs[:, 0], -dirs[:, 1]
    n_rays = px.size
    pix_parts, ray_parts, val_parts = [], [], []
    per_view = max(1, n_det)
    for start in range(0, n_rays, per_view):
        sl = slice(start, min(start + per_view, n_rays))
        steep = np.abs(dy[sl]) >= np.abs(dx[sl])  # closer to vertical: bands are image rows
        for rows_major, sel in ((True, steep), (False, ~steep)):
            idx = np.flatnonzero(sel) + start
            if idx.size == 0:
                continue
            if rows_major:
                r, row, col, w = _band_weights(py[idx], px[idx], dy[idx], dx[idx], ny, nx, h)
            else:
                r, col, row, w = _band_weights(px[idx], py[idx], dx[idx], dy[idx], nx, ny, h)
            pix_parts.append(row * nx + col)
            ray_parts.append(idx[r])
            val_parts.append(w)
    pix = np.concatenate(pix_parts)
    ray = np.concatenate(ray_parts)
    val = np.concatenate(val_parts).astype(np.float32)
    index = np.int32 if max(ny * nx, n_rays) < 2**31 else np.int64
    m = sp.coo_matrix((val, (pix.astype(index), ray.astype(index))), shape=(ny * nx, n_rays)).tocsr()
    m.sum_duplicates()
    return m
