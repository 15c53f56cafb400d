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
            pid = astra.create_projector(projector_type, geom, vol_geom)
            try:
                mid = astra.projector.matrix(pid)
                try:
                    m = astra.matrix.get(mid).tocoo()
                finally:
                    astra.matrix.delete(mid)
            finally:
                astra.projector.delete(pid)
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
    import scipy.sparse as sp

    return sp.coo_matrix((val, (pix, ray)), shape=(ny * nx, n_rays)).tocsr()


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
