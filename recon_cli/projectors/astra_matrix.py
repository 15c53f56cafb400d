"""ASTRA's own projection matrix as a cached SciPy CSR: fast products on slice stacks.

The matrix of a 2D CPU projector is built once per (geometry, grid, projector type),
saved under the cache directory keyed by a hash of those, and reused. Its transpose
is stored as a second CSR so that the adjoint is also a row-parallel product.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recon_cli.geometry import Geometry, VolumeGrid, fingerprint
from recon_cli.ops.operator import Operator
from recon_cli.projectors.astra_cpu import AstraCPUProjector, astra_projector_type

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """$RECON_CACHE_DIR, else $XDG_CACHE_HOME/recon-cli, else ~/.cache/recon-cli."""
    env = os.environ.get("RECON_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "recon-cli"


def estimated_nnz(geometry: Geometry, grid: VolumeGrid) -> int:
    """Rough non-zero count of the matrix: each ray crosses about 2*max(ny, nx) pixels."""
    ny, nx = grid.slice_shape
    n_det_hit = min(geometry.detector_count, int(np.ceil(np.hypot(ny, nx) * grid.voxel_size
                                                          / geometry.detector_spacing * 1.2)) + 2)
    return int(geometry.n_angles * n_det_hit * 2 * max(ny, nx))


def _save_atomic(path: Path, matrix: sp.csr_matrix) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        sp.save_npz(tmp, matrix, compressed=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_or_build_matrix(geometry: Geometry, grid: VolumeGrid, projector_type: str | None = None,
                         use_cache: bool = True) -> sp.csr_matrix:
    """CSR float32 matrix of shape (n_angles*n_det, ny*nx), from the disk cache when present."""
    ptype = astra_projector_type(geometry, projector_type)
    key = fingerprint(geometry, grid.slice_grid(), extra=ptype)
    path = cache_dir() / "matrices" / f"{ptype}_{key}.npz"
    if use_cache and path.exists():
        try:
            matrix = sp.load_npz(path).tocsr()
            if matrix.shape == (geometry.n_angles * geometry.detector_count, int(np.prod(grid.slice_shape))):
                log.debug("projection matrix from cache %s", path)
                return matrix
        except Exception as exc:  # corrupt cache file: rebuild it
            log.warning("ignoring unreadable matrix cache %s (%s)", path, exc)
    t0 = time.perf_counter()
    matrix = AstraCPUProjector(geometry, grid.slice_grid(), ptype).sparse_matrix()
    matrix.sort_indices()
    log.info("built %s projection matrix %s, nnz=%d in %.1f s", ptype, matrix.shape, matrix.nnz,
             time.perf_counter() - t0)
    if use_cache:
        try:
            _save_atomic(path, matrix)
        except OSError as exc:
            log.warning("could not cache the projection matrix at %s (%s)", path, exc)
    return matrix


class AstraMatrixProjector(Operator):
    """Same operator as AstraCPUProjector, applied as CSR products on whole slice stacks."""

    def __init__(self, geometry: Geometry, grid: VolumeGrid, projector_type: str | None = None,
                 use_cache: bool = True):
        self.geometry, self.grid = geometry, grid
        self.projector_type = astra_projector_type(geometry, projector_type)
        self.domain_shape = grid.shape
        self.range_shape = geometry.sinogram_shape(grid.n_slices)
        self.matrix = load_or_build_matrix(geometry, grid, self.projector_type, use_cache)
        self.matrix_t = self.matrix.T.tocsr()

    @property
    def nbytes(self) -> int:
        """Memory held by the matrix and its transpose."""
        return sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in (self.matrix, self.matrix_t))

    @staticmethod
    def _product(m: sp.csr_matrix, x: np.ndarray, n_in: int, out_shape) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.size == n_in:  # one slice
            return (m @ x.reshape(-1)).reshape(out_shape)
        stack = x.reshape(-1, n_in)
        return np.ascontiguousarray((m @ stack.T).T).reshape(out_shape)

    def forward(self, x):
        return self._product(self.matrix, x, self.matrix.shape[1], self.range_shape)

    def adjoint(self, y):
        return self._product(self.matrix_t, y, self.matrix_t.shape[1], self.domain_shape)
