"""ASTRA's own projection matrix as a cached SciPy CSR: fast products on slice stacks.

The matrix of a 2D CPU projector is built once per (geometry, grid, projector type),
saved under the cache directory keyed by a hash of those, and reused. Its transpose
is kept as a second CSR so that the adjoint is also a row-wise product (faster than
the CSC view of the transpose, at twice the memory). Both are cached as plain
``.npy`` arrays and memory-mapped on load: loading costs no time, and processes
using the same matrix share its pages.

Products stay float32. A stack of slices is one matrix-matrix product with the slices
as the columns of a C-ordered (n_pixels, n_slices) block. SciPy's CSR products are
single-threaded but release the GIL, so with ``threads > 1`` the rows are split into
chunks of equal non-zero count, run on a shared thread pool (see benchmarks/README.md
for the measured effect).
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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


_PARTS = ("data", "indices", "indptr")


def matrix_cache_path(geometry: Geometry, grid: VolumeGrid, projector_type: str | None = None) -> Path:
    """Folder of the cached matrix: ``<cache_dir>/matrices/<type>_<fingerprint>/``."""
    ptype = astra_projector_type(geometry, projector_type)
    key = fingerprint(geometry, grid.slice_grid(), extra=ptype)
    return cache_dir() / "matrices" / f"{ptype}_{key}"


def _csr(data, indices, indptr, shape) -> sp.csr_matrix:
    """A CSR on these arrays as they are (memory maps stay memory maps; no copy, no check)."""
    m = sp.csr_matrix(shape, dtype=np.float32)
    m.data, m.indices, m.indptr = data, indices, indptr
    return m


def _save_csr(folder: Path, name: str, m: sp.csr_matrix) -> None:
    """``<name>.<part>.npy`` for data, indices, indptr, each written atomically.

    The content only depends on the cache key, so files of two concurrent writers are
    interchangeable and need no joint atomicity.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for part in _PARTS:
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp.npy")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, getattr(m, part))
            os.replace(tmp, folder / f"{name}.{part}.npy")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    _write_checksums(folder, name, {part: _crc(getattr(m, part)) for part in _PARTS})


def _crc(array: np.ndarray) -> str:
    """CRC-32 of an array's bytes (hex): catches a damaged cache file, at several GB/s."""
    import zlib

    return f"{zlib.crc32(memoryview(np.ascontiguousarray(array)).cast('B')):08x}"


def _write_checksums(folder: Path, name: str, sums: dict[str, str]) -> None:
    """``<name>.crc32.json``, written after the arrays it vouches for (atomically)."""
    import json

    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp.json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(sums, f)
        os.replace(tmp, folder / f"{name}.crc32.json")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _verify_checksums(folder: Path, name: str, arrays: dict[str, np.ndarray]) -> None:
    """ValueError when ``<name>.crc32.json`` is missing or an array's CRC differs from it."""
    import json

    try:
        sums = json.loads((folder / f"{name}.crc32.json").read_text())
    except (OSError, ValueError):
        raise ValueError(f"{name}: no checksum file (written by an older version, or interrupted)") from None
    for part, array in arrays.items():
        if sums.get(part) != _crc(array):
            raise ValueError(f"{name}.{part}: checksum mismatch (the file was damaged)")


def _load_csr(folder: Path, name: str, shape: tuple[int, int]) -> sp.csr_matrix:
    """Memory-mapped CSR (read-only, pages shared between processes); ValueError when inconsistent."""
    data, indices, indptr = (np.load(folder / f"{name}.{part}.npy", mmap_mode="r") for part in _PARTS)
    nnz = data.shape[0]
    if (data.dtype != np.float32 or indices.dtype not in (np.int32, np.int64) or indptr.dtype != indices.dtype
            or indices.shape != (nnz,) or indptr.shape != (shape[0] + 1,)
            or indptr[0] != 0 or indptr[-1] != nnz):
        raise ValueError(f"{name}: arrays do not form a float32 CSR of shape {shape}")
    if nnz and (int(indices.min()) < 0 or int(indices.max()) >= shape[1]):  # one pass, guards the products
        raise ValueError(f"{name}: column index out of range")
    _verify_checksums(folder, name, {"data": data, "indices": indices, "indptr": indptr})
    return _csr(data, indices, indptr, shape)


def _build(geometry: Geometry, grid: VolumeGrid, ptype: str) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    t0 = time.perf_counter()
    matrix = AstraCPUProjector(geometry, grid.slice_grid(), ptype).sparse_matrix()
    matrix.sort_indices()
    matrix_t = matrix.T.tocsr()
    for m in (matrix, matrix_t):  # int32 indices halve the bytes an index costs in every product
        if m.nnz < 2**31 - 1:
            m.indices, m.indptr = m.indices.astype(np.int32, copy=False), m.indptr.astype(np.int32, copy=False)
    log.info("built %s projection matrix %s, nnz=%d in %.1f s", ptype, matrix.shape, matrix.nnz,
             time.perf_counter() - t0)
    return matrix, matrix_t


def load_or_build_matrices(geometry: Geometry, grid: VolumeGrid, projector_type: str | None = None,
                           use_cache: bool = True) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(A, A^T) as float32 CSRs, A of shape (n_angles*n_det, ny*nx).

    From the cache (memory-mapped) when present and consistent; otherwise built with
    ASTRA and, with ``use_cache``, saved. An unreadable cache is logged and rebuilt.
    """
    ptype = astra_projector_type(geometry, projector_type)
    shape = (geometry.n_angles * geometry.detector_count, int(np.prod(grid.slice_shape)))
    folder = matrix_cache_path(geometry, grid, ptype)
    if use_cache and folder.is_dir():
        try:
            matrices = _load_csr(folder, "A", shape), _load_csr(folder, "AT", shape[::-1])
            log.debug("projection matrix from cache %s", folder)
            return matrices
        except Exception as exc:  # missing, truncated or corrupt files: rebuild them
            log.warning("ignoring unreadable matrix cache %s (%s)", folder, exc)
    matrix, matrix_t = _build(geometry, grid, ptype)
    if use_cache:
        try:
            _save_csr(folder, "A", matrix)
            _save_csr(folder, "AT", matrix_t)
        except OSError as exc:
            log.warning("could not cache the projection matrix at %s (%s)", folder, exc)
    return matrix, matrix_t


def load_or_build_matrix(geometry: Geometry, grid: VolumeGrid, projector_type: str | None = None,
                         use_cache: bool = True) -> sp.csr_matrix:
    """CSR float32 matrix of shape (n_angles*n_det, ny*nx), from the disk cache when present."""
    return load_or_build_matrices(geometry, grid, projector_type, use_cache)[0]


def default_threads() -> int:
    """$RECON_NUM_THREADS, else the number of CPU cores this process may use."""
    env = os.environ.get("RECON_NUM_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("ignoring RECON_NUM_THREADS=%r (not an integer)", env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """One process-wide pool, replaced by a larger one when more workers are asked for."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] < workers:
            _POOL = (workers, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recon-csr"))
        return _POOL[1]


def row_chunks(m: sp.csr_matrix, n_chunks: int) -> list[tuple[int, int, sp.csr_matrix]]:
    """``n_chunks`` row blocks (start, stop, CSR view) of about equal non-zero count; no data is copied."""
    targets = np.linspace(0, m.nnz, n_chunks + 1)
    cuts = np.unique(np.concatenate([[0], np.searchsorted(m.indptr, targets[1:-1]), [m.shape[0]]]))
    chunks = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        lo, hi = int(m.indptr[a]), int(m.indptr[b])
        # assigned, not passed to the constructor, which copies views of larger arrays
        sub = sp.csr_matrix((int(b - a), m.shape[1]), dtype=m.dtype)
        sub.data, sub.indices = m.data[lo:hi], m.indices[lo:hi]
        sub.indptr = (m.indptr[a:b + 1] - m.indptr[a]).astype(m.indptr.dtype)
        chunks.append((int(a), int(b), sub))
    return chunks


class CSRProduct:
    """v -> M @ v for v of shape (n,) or (n, k) (C order), float32, optionally row-chunked on threads.

    Products smaller than ``min_work`` multiply-adds per thread run serially (dispatching
    to the pool costs tens of microseconds).
    """

    min_work = 500_000

    def __init__(self, m: sp.csr_matrix, threads: int = 1):
        self.m = m
        self.threads = max(1, int(threads))
        self.chunks = row_chunks(m, self.threads) if self.threads > 1 else None

    def __call__(self, v: np.ndarray) -> np.ndarray:
        k = v.shape[1] if v.ndim == 2 else 1
        if self.chunks is None or len(self.chunks) == 1 or self.m.nnz * k < self.min_work * len(self.chunks):
            return self.m @ v
        out = np.empty((self.m.shape[0], *v.shape[1:]), dtype=np.result_type(self.m.dtype, v.dtype))

        def run(chunk):
            a, b, sub = chunk
            out[a:b] = sub @ v

        for _ in _pool(len(self.chunks)).map(run, self.chunks):
            pass
        return out


class AstraMatrixProjector(Operator):
    """Same operator as AstraCPUProjector, applied as CSR products on whole slice stacks.

    ``threads``: worker threads per product (default :func:`default_threads`; 1 = plain SciPy).
    """

    def __init__(self, geometry: Geometry, grid: VolumeGrid, projector_type: str | None = None,
                 use_cache: bool = True, threads: int | None = None):
        self.geometry, self.grid = geometry, grid
        self.projector_type = astra_projector_type(geometry, projector_type)
        self.domain_shape = grid.shape
        self.range_shape = geometry.sinogram_shape(grid.n_slices)
        self.matrix, self.matrix_t = load_or_build_matrices(geometry, grid, self.projector_type, use_cache)
        self.threads = default_threads() if threads is None else max(1, int(threads))
        self._fwd = CSRProduct(self.matrix, self.threads)
        self._adj = CSRProduct(self.matrix_t, self.threads)

    def with_threads(self, threads: int) -> "AstraMatrixProjector":
        """The same operator (sharing the matrices) with another thread count."""
        other = copy.copy(self)
        other.threads = max(1, int(threads))
        other._fwd = CSRProduct(self.matrix, other.threads)
        other._adj = CSRProduct(self.matrix_t, other.threads)
        return other

    @property
    def nbytes(self) -> int:
        """Memory held by the matrix and its transpose."""
        return sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in (self.matrix, self.matrix_t))

    @staticmethod
    def _product(prod: CSRProduct, x, out_shape) -> np.ndarray:
        n_in = prod.m.shape[1]
        x = np.asarray(x, dtype=np.float32)
        if x.size == n_in:  # one slice
            return prod(x.reshape(-1)).reshape(out_shape)
        if x.size % n_in:
            raise ValueError(f"expected a multiple of {n_in} values, got an array of shape {x.shape}")
        columns = np.ascontiguousarray(x.reshape(-1, n_in).T)  # (n_in, n_slices), C order
        return np.ascontiguousarray(prod(columns).T).reshape(out_shape)

    def forward(self, x):
        return self._product(self._fwd, x, self.range_shape)

    def adjoint(self, y):
        return self._product(self._adj, y, self.domain_shape)
