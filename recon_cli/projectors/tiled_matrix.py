"""ASTRA's projection matrix of a 2D geometry, built tile by tile over the image.

ASTRA's CPU ray tracers work in float32 and step along each ray incrementally: the ray's
position is computed at the first image row (or column) and a per-row increment is added, so
its rounding error grows along the ray. Near-axis rays split a row between two pixels in
proportion to that position divided by ``tan`` of the ray's angle to the axis, which amplifies
the drift: at 512^2 (60 fan views) single weights are off by several per cent and ASTRA's
whole matrix is 8e-3 (relative Frobenius norm) from the exact float64 intersection lengths;
a quarter-turned geometry steps the other way and gets different errors
(benchmarks/results/speed_accuracy.md).

Building the matrix on square tiles of at most ``TILE`` pixels, each with the geometry moved so
that the tile is centred on the origin (smaller float32 coordinates), restarts every ray at each
tile edge and bounds the drift to a tile: the result is the same kernel (each pixel's weight
depends only on the ray and that pixel) but 40-110x closer to the exact weights at 256^2-512^2,
and so nearly equivariant under the quarter turns and mirrors that the symmetry-compressed
projector relies on. Geometries ASTRA cannot express as vectors are tiled without the shift.

A ray that runs exactly along a tile edge (the central ray of a view parallel to a grid axis when
the detector count is odd; whole views in parallel beam) lies on the border of two tiles, and
ASTRA counts it in both tiles or in neither, as float32 rounding falls: that ray's line integral
doubled or lost (found on a 512^2 fan scan with 831 detector elements: 6-7 % error in the four
axis views, -1.1 dB in a TV reconstruction). Such rays are found by their weight sum against the
exact chord length of the ray through the image, and their weights are taken from ASTRA's
whole-image matrix of their view instead (:func:`_retrace_edge_rays`).

For ASTRA's line kernels (``line_fanflat``, ``line``) on vector geometries whose rays cross the
whole image, no ASTRA matrix is built at all: the weights are the exact float64 intersection
lengths that those kernels approximate in float32 (recon_cli.projectors.exact_line). Tiles
bound ASTRA's drift but do not remove it, and near-axis rays of a view and of its quarter-turned
copy were still split differently between neighbouring pixels (1.6e-5 symmetric vs full adjoint
at 512^2, benchmarks/results/symmetry_difference.md); exact weights are equivariant, so the
symmetric projector then equals the full matrix up to float32 rounding.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp

#: Tile side (pixels). 32 keeps ASTRA's float32 drift at the level of a 32^2 image.
TILE = 32


def tiled_matrix_transpose(proj_geom: dict, projector_type: str, slice_shape: tuple[int, int],
                           voxel_size: float, tile: int = TILE) -> sp.csr_matrix:
    """A^T as a float32 CSR of shape (ny*nx, n_rays), A ASTRA's matrix of ``proj_geom`` on the
    centred (ny, nx) grid of ``voxel_size`` mm pixels, built on tiles of at most ``tile`` pixels."""
    import astra

    ny, nx = slice_shape
    h = float(voxel_size)
    x0, y0 = -nx * h / 2, ny * h / 2  # left edge, top edge (row 0 is +y)
    vectors, vec_type, n_det = _vectors(proj_geom, projector_type)
    if uses_exact_weights(proj_geom, projector_type, slice_shape, voxel_size):
        from recon_cli.projectors.exact_line import exact_line_matrix_transpose

        return exact_line_matrix_transpose(vectors, vec_type, n_det, slice_shape, voxel_size)
    pix_parts, ray_parts, val_parts = [], [], []
    n_rays = None
    for r0 in range(0, ny, tile):
        tr = min(tile, ny - r0)
        for c0 in range(0, nx, tile):
            tc = min(tile, nx - c0)
            left, right, bottom, top = x0 + c0 * h, x0 + (c0 + tc) * h, y0 - (r0 + tr) * h, y0 - r0 * h
            if vectors is not None:  # the tile centred on the origin, the geometry moved with it
                cx, cy = (left + right) / 2, (bottom + top) / 2
                moved = vectors.copy()
                moved[:, 2] -= cx
                moved[:, 3] -= cy
                if vec_type == "fanflat_vec":  # the source moves too (parallel: columns 0-1 are a direction)
                    moved[:, 0] -= cx
                    moved[:, 1] -= cy
                geom = astra.create_proj_geom(vec_type, n_det, moved)
                vol_geom = astra.create_vol_geom(tr, tc, left - cx, right - cx, bottom - cy, top - cy)
            else:
                geom = proj_geom
                vol_geom = astra.create_vol_geom(tr, tc, left, right, bottom, top)
            m = astra_matrix_coo(projector_type, geom, vol_geom)
            n_rays = m.shape[0]
            # int32 indices where they fit: the parts and their concatenation dominate the build's peak memory
            index = np.int32 if max(ny * nx, n_rays) < 2**31 else np.int64
            keep = m.data != 0
            row_in_tile, col_in_tile = np.divmod(m.col[keep], tc)
            pix_parts.append(((row_in_tile + r0) * nx + col_in_tile + c0).astype(index))
            ray_parts.append(m.row[keep].astype(index))
            val_parts.append(m.data[keep].astype(np.float32))
            del m
    pix = np.concatenate(pix_parts)
    del pix_parts
    ray = np.concatenate(ray_parts)
    del ray_parts
    val = np.concatenate(val_parts)
    del val_parts
    if vectors is not None:
        chords = chord_lengths(vectors, vec_type, n_det, (x0, x0 + nx * h, y0 - ny * h, y0))
        pix, ray, val = _retrace_edge_rays(pix, ray, val, chords, vectors, vec_type, n_det, projector_type,
                                           (ny, nx, x0, y0, h))
    import scipy.sparse as sp

    return sp.coo_matrix((val, (pix, ray)), shape=(ny * nx, n_rays)).tocsr()


#: ASTRA CPU projector types whose weights are exact intersection lengths (built in float64 here).
EXACT_TYPES = ("line_fanflat", "line")


def uses_exact_weights(proj_geom: dict, projector_type: str, slice_shape: tuple[int, int],
                       voxel_size: float) -> bool:
    """Whether :func:`tiled_matrix_transpose` computes exact line weights instead of calling ASTRA."""
    from recon_cli.projectors.exact_line import rays_span_image

    if projector_type not in EXACT_TYPES:
        return False
    vectors, vec_type, _ = _vectors(proj_geom, projector_type)
    return vectors is not None and rays_span_image(vectors, vec_type, slice_shape, voxel_size)


def astra_matrix_coo(projector_type: str, proj_geom: dict, vol_geom: dict):
    """ASTRA's CPU projection matrix of ``proj_geom`` on ``vol_geom`` as a SciPy COO (rays x pixels)."""
    import astra

    pid = astra.create_projector(projector_type, proj_geom, vol_geom)
    try:
        mid = astra.projector.matrix(pid)
        try:
            return astra.matrix.get(mid).tocoo()
        finally:
            astra.matrix.delete(mid)
    finally:
        astra.projector.delete(pid)


#: A ray whose tiled weights sum to a chord outside 1 +- this fraction of its exact chord through the
#: image lay on a tile edge (counted twice: 2x, or in no tile: 0); any other ray is within ~1e-3.
EDGE_RAY_TOLERANCE = 0.25


def _retrace_edge_rays(pix, ray, val, chords, vectors, vec_type: str, n_det: int, projector_type: str,
                       image: tuple):
    """(pix, ray, val) with the weights of the rays whose tiled sum is off their ``chords`` (mm)
    replaced by the rows of ASTRA's whole-image matrix of their views. ``image``: (ny, nx, left edge,
    top edge, pixel size mm)."""
    import astra

    sums = np.bincount(ray, weights=val.astype(np.float64), minlength=chords.size)
    bad = np.flatnonzero(np.abs(sums - chords) > EDGE_RAY_TOLERANCE * chords)
    if bad.size == 0:
        return pix, ray, val
    ny, nx, x0, y0, h = image
    keep = ~np.isin(ray, bad)
    pix_parts, ray_parts, val_parts = [pix[keep]], [ray[keep]], [val[keep]]
    vol_geom = astra.create_vol_geom(ny, nx, x0, x0 + nx * h, y0 - ny * h, y0)
    for view in np.unique(bad // n_det):
        m = astra_matrix_coo(projector_type, astra.create_proj_geom(vec_type, n_det, vectors[view:view + 1]),
                             vol_geom)
        wanted = np.isin(m.row + view * n_det, bad) & (m.data != 0)
        pix_parts.append(m.col[wanted].astype(pix.dtype))
        ray_parts.append((m.row[wanted] + view * n_det).astype(ray.dtype))
        val_parts.append(m.data[wanted].astype(np.float32))
    return np.concatenate(pix_parts), np.concatenate(ray_parts), np.concatenate(val_parts)


def chord_lengths(vectors: np.ndarray, vec_type: str, n_det: int, bounds: tuple) -> np.ndarray:
    """Length (mm) of every ray (view-major, ASTRA's row order) inside the rectangle
    ``bounds`` = (left, right, bottom, top), for ASTRA ``parallel_vec``/``fanflat_vec`` rows
    (ray/source, detector centre, detector pixel step). Slab intersection in float64."""
    v = np.asarray(vectors, dtype=np.float64)
    u = np.arange(n_det, dtype=np.float64) - n_det / 2.0 + 0.5
    det_x = v[:, 2, None] + u[None] * v[:, 4, None]
    det_y = v[:, 3, None] + u[None] * v[:, 5, None]
    if vec_type == "fanflat_vec":
        px, py = np.broadcast_to(v[:, 0, None], det_x.shape), np.broadcast_to(v[:, 1, None], det_x.shape)
        dx, dy = det_x - px, det_y - py
    else:
        px, py = det_x, det_y
        dx, dy = np.broadcast_to(v[:, 0, None], det_x.shape), np.broadcast_to(v[:, 1, None], det_x.shape)
    norm = np.hypot(dx, dy)
    dx, dy = dx / norm, dy / norm
    left, right, bottom, top = bounds
    t_lo = np.full(det_x.shape, -np.inf)
    t_hi = np.full(det_x.shape, np.inf)
    inside = np.ones(det_x.shape, dtype=bool)
    for p, d, lo, hi in ((px, dx, left, right), (py, dy, bottom, top)):
        moving = np.abs(d) > 1e-12
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(moving, (lo - p) / d, -np.inf)
            b = np.where(moving, (hi - p) / d, np.inf)
        t_lo = np.maximum(t_lo, np.minimum(a, b))
        t_hi = np.minimum(t_hi, np.maximum(a, b))
        inside &= moving | ((p >= lo) & (p <= hi))
    return np.where(inside, np.maximum(t_hi - t_lo, 0.0), 0.0).ravel()


#: ASTRA CPU projector types that take vector geometries (parallel_vec / fanflat_vec).
VECTOR_TYPES = ("line_fanflat", "linear", "line", "strip")


def _vectors(proj_geom: dict, projector_type: str):
    """(vectors (n_views, 6), vector geometry type, detector count) of a 2D geometry, or Nones when
    ASTRA's CPU projector ``projector_type`` does not take the vector form (``strip_fanflat``)."""
    import astra

    vec_type = {"parallel": "parallel_vec", "fanflat": "fanflat_vec"}.get(proj_geom["type"], proj_geom["type"])
    if projector_type not in VECTOR_TYPES or vec_type not in ("parallel_vec", "fanflat_vec"):
        return None, None, None
    vec = proj_geom if proj_geom["type"] == vec_type else astra.geom_2vec(proj_geom)
    return np.array(vec["Vectors"], dtype=np.float64), vec_type, int(vec["DetectorCount"])
