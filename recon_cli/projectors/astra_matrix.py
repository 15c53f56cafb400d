"""ASTRA's own projection matrix, cached on disk, applied as SciPy sparse products on slice stacks.

Only the rows of a few *stored* views are kept (recon_cli.projectors.symmetry): for equally
spaced views over 2 pi on a square grid, every other view is a stored view applied to a
quarter-turned or transposed copy of the image, possibly with its detector reversed. One
product ``A_s @ X``, with X's columns the transformed images, then yields every view, and the
adjoint is the sum of the inversely transformed columns of ``A_s^T @ Y``: the matrix bytes are
read once for up to 8 columns (60 views: 8 of 60 stored). Without symmetry every view is stored.

Accuracy: ASTRA's CPU kernels step along each ray in float32 from the first image row or column,
so its own matrix drifts from the exact weights along the ray (relative Frobenius error 2e-3 at
256^2 and 8e-3 at 512^2 for 60 fan views), and a quarter turn steps the other way: ASTRA's rows
of view k + n/4 are not the permuted rows of view k (benchmarks/results/symmetry_accuracy.md).
So the stored views are built by recon_cli.projectors.tiled_matrix: for the line kernels
(``line_fanflat``, ``line``) as exact float64 ray/pixel intersection lengths
(recon_cli.projectors.exact_line), which are exactly equivariant under the quarter turns and
mirrors, so the symmetric operator equals the full matrix of the same weights up to float32
rounding (fwd / adj 2.6-3.7e-7 / 1.7e-7 at 256^2-512^2, benchmarks/results/symmetry_full_match.md);
for the other kernels on 32x32 image tiles of ASTRA's matrix (restarting every ray at each
tile bounds the drift). Against ASTRA's whole-image matrix the operator differs by ASTRA's own
drift. The symmetric operator is itself an exact adjoint pair. Geometries without symmetry store
ASTRA's whole-image matrix unchanged, and so does ``$RECON_MATRIX_SYMMETRY=off``;
``strip_fanflat`` (inaccurate in ASTRA's CPU version) always stores every view.

One copy is stored: ``M = A_s^T`` as a CSR (rows: pixels), float32 values and int32 indices
(the cache format; SciPy's kernels take no smaller types). With numba (a dependency; SciPy's
kernels are the fallback, or ``$RECON_PRODUCT_KERNEL=scipy``) the products of a symmetric
operator run in compiled kernels on a copy of the indices as uint16
(recon_cli.projectors.symmetric_kernels: 6 bytes per non-zero instead of 8, 8 image transforms
per pass, bit-identical results). Through SciPy, the adjoint is a row-wise product ``M @ Y`` and
the forward product goes through the same storage as a column-wise scatter ``M.T @ X`` into the
small sinogram block, which measured faster than a CSR of A_s (benchmarks/results/speed.md).
The matrix is cached by recon_cli.projectors.matrix_cache (memory-mapped, checksummed, LRU
with a size cap), with the operator norm beside it.

Products stay float32. A stack of slices is one matrix-matrix product with the slices as
columns. SciPy's sparse products are single-threaded but release the GIL, so with
``threads > 1`` the rows of M are split into chunks of equal non-zero count on a shared thread
pool (the forward product then sums the chunks' partial sinograms).
"""
from __future__ import annotations

import copy
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # SciPy is imported where a sparse matrix is made (the projector choice needs none)
    import scipy.sparse as sp

from recon_cli.geometry import Geometry, VolumeGrid, fingerprint
from recon_cli.ops.operator import Operator, power_norm
from recon_cli.projectors import matrix_cache
from recon_cli.projectors.astra_cpu import AstraCPUProjector, astra_projector_type
from recon_cli.projectors.tiled_matrix import EXACT_TYPES, TILE, tiled_matrix_transpose
from recon_cli.projectors.symmetry import ViewSymmetry, find_view_symmetry, inverse_transform_image, \
    transform_image

log = logging.getLogger(__name__)


def estimated_nnz(geometry: Geometry, grid: VolumeGrid) -> int:
    """Rough non-zero count of the matrix: each ray crosses about 2*max(ny, nx) pixels."""
    ny, nx = grid.slice_shape
    n_det_hit = min(geometry.detector_count, int(np.ceil(np.hypot(ny, nx) * grid.voxel_size
                                                          / geometry.detector_spacing * 1.2)) + 2)
    return int(geometry.n_angles * n_det_hit * 2 * max(ny, nx))


#: ASTRA projector types whose matrix is used with view symmetry. ``strip_fanflat`` is left out:
#: ASTRA's CPU version is off by 0.4-1.3 % per view (DESIGN.md), so its rotated views differ by 1e-3.
SYMMETRIC_TYPES = ("line_fanflat", "linear", "strip", "line")


def symmetry_enabled() -> bool:
    """False when $RECON_MATRIX_SYMMETRY is 0/off/false/no (then every view's rows are stored)."""
    return os.environ.get("RECON_MATRIX_SYMMETRY", "on").strip().lower() not in ("0", "off", "false", "no")


def view_symmetry(geometry: Geometry, grid: VolumeGrid, projector_type: str | None = None) -> ViewSymmetry:
    """The view symmetry the matrix projector uses for this geometry, grid and projector type."""
    ptype = astra_projector_type(geometry, projector_type)
    if ptype not in SYMMETRIC_TYPES or not symmetry_enabled():
        n = geometry.n_angles
        entries = np.stack([np.arange(n), np.zeros(n, np.int64), np.arange(n), np.zeros(n, np.int64)], axis=1)
        return ViewSymmetry(n_views=n, stored=tuple(range(n)), transforms=((False, 0),), entries=entries)
    return find_view_symmetry(geometry.angles, geometry.type, grid.slice_shape)


def estimated_matrix_bytes(geometry: Geometry, grid: VolumeGrid, building: bool = False,
                           projector_type: str | None = None) -> int:
    """Bytes of the stored matrix (8 per non-zero: float32 value, int32 index; one copy, stored
    views only); while it is built, ASTRA's own copy and SciPy's conversion add about 2.3 more."""
    stored = len(view_symmetry(geometry, grid, projector_type).stored) / max(1, geometry.n_angles)
    return int(estimated_nnz(geometry, grid) * stored * 8 * (3.3 if building else 1))


def product_workspace_bytes(geometry: Geometry, grid: VolumeGrid, projector_type: str | None = None) -> int:
    """Peak bytes of the transformed copies one product block holds (beyond the input and output):
    up to AstraMatrixProjector.max_columns image-sized columns plus as many stored-view sinograms."""
    sym = view_symmetry(geometry, grid, projector_type)
    if sym.is_trivial:
        return 0
    n_t = len(sym.transforms)
    slices = min(grid.n_slices or 1, max(1, AstraMatrixProjector.max_columns // n_t))
    image = int(np.prod(grid.slice_shape))
    stored_sino = len(sym.stored) * geometry.detector_count
    return 4 * slices * n_t * (image + stored_sino)


def matrix_cache_path(geometry: Geometry, grid: VolumeGrid, projector_type: str | None = None) -> Path:
    """Folder of the cached matrix: ``<cache_dir>/matrices/<type>_<fingerprint>/``."""
    ptype = astra_projector_type(geometry, projector_type)
    stored = ",".join(map(str, view_symmetry(geometry, grid, ptype).stored))
    builder = "exact-line" if ptype in EXACT_TYPES else f"tiled{TILE}"  # exact when the rays allow (tiled_matrix)
    key = fingerprint(geometry, grid.slice_grid(), extra=f"{ptype}/stored-views-v5-{builder}/{stored}")
    return matrix_cache.matrices_dir() / f"{ptype}_{key}"


def _stored_geometry(geometry: Geometry, stored) -> Geometry:
    """The geometry of the stored views only."""
    import dataclasses

    return dataclasses.replace(geometry, angles=np.asarray(geometry.angles)[list(stored)])


def _build(geometry: Geometry, grid: VolumeGrid, ptype: str, symmetry: ViewSymmetry) -> sp.csr_matrix:
    """M = A_s^T as a float32 CSR with int32 indices, A_s ASTRA's matrix of the stored views (built on
    image tiles when other views follow from them: recon_cli.projectors.tiled_matrix)."""
    t0 = time.perf_counter()
    sub = _stored_geometry(geometry, symmetry.stored)
    if symmetry.is_trivial:  # ASTRA's own matrix, exactly
        a_s = AstraCPUProjector(sub, grid.slice_grid(), ptype).sparse_matrix()
        m = a_s.T.tocsr()
        del a_s
    else:  # on tiles: views rotated or mirrored from the stored ones then agree with their own rows
        m = tiled_matrix_transpose(sub.to_astra(), ptype, grid.slice_shape, grid.voxel_size)
    m.sort_indices()
    if m.nnz < 2**31 - 1:  # int32 indices halve the bytes an index costs in every product
        m.indices, m.indptr = m.indices.astype(np.int32, copy=False), m.indptr.astype(np.int32, copy=False)
    log.info("built %s projection matrix of %d stored views of %d (%s), nnz=%d in %.1f s", ptype,
             len(symmetry.stored), geometry.n_angles, "x%.1f symmetry" % symmetry.order, m.nnz,
             time.perf_counter() - t0)
    return m


def load_or_build_stored_matrix(geometry: Geometry, grid: VolumeGrid, projector_type: str | None = None,
                                use_cache: bool = True) -> tuple[sp.csr_matrix, ViewSymmetry, Path | None]:
    """(M = A_s^T, symmetry, cache folder or None): from the cache when present and intact."""
    ptype = astra_projector_type(geometry, projector_type)
    symmetry = view_symmetry(geometry, grid, ptype)
    shape = (int(np.prod(grid.slice_shape)), len(symmetry.stored) * geometry.detector_count)
    folder = matrix_cache_path(geometry, grid, ptype)
    if use_cache and folder.is_dir():
        try:
            m, _ = matrix_cache.load_entry(folder, shape)
            log.debug("projection matrix from cache %s", folder)
            return m, symmetry, folder
        except Exception as exc:  # missing, truncated or corrupt files: rebuild them
            log.warning("ignoring unreadable matrix cache %s (%s)", folder, exc)
    m = _build(geometry, grid, ptype, symmetry)
    if use_cache:
        try:
            if not matrix_cache.save_entry(folder, m, {"stored_views": list(symmetry.stored)}):
                folder = None
        except OSError as exc:
            log.warning("could not cache the projection matrix at %s (%s)", folder, exc)
            folder = None
    return m, symmetry, folder if use_cache else None


def default_threads() -> int:
    """$RECON_NUM_THREADS, else 1.

    Measured (benchmarks/results/speed.md, 2-core host shared with other jobs): two threads per
    product were 0.7-0.75x of one on single slices (256^2-1024^2) and gained nothing on stacks;
    they pay only on an otherwise idle machine with a free core per thread (see
    benchmarks/README.md). Set RECON_NUM_THREADS=2 there.
    """
    env = os.environ.get("RECON_NUM_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("ignoring RECON_NUM_THREADS=%r (not an integer)", env)
    return 1


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
        import scipy.sparse as sp

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

    def serial(self, k: int) -> bool:
        """Whether a product with ``k`` columns runs on one thread (no threads, or too little work)."""
        return self.chunks is None or len(self.chunks) == 1 or self.m.nnz * k < self.min_work * len(self.chunks)

    def __call__(self, v: np.ndarray) -> np.ndarray:
        k = v.shape[1] if v.ndim == 2 else 1
        if self.serial(k):
            return self.m @ v
        out = np.empty((self.m.shape[0], *v.shape[1:]), dtype=np.result_type(self.m.dtype, v.dtype))

        def run(chunk):
            a, b, sub = chunk
            out[a:b] = sub @ v

        for _ in _pool(len(self.chunks)).map(run, self.chunks):
            pass
        return out


class TransposedCSRProduct(CSRProduct):
    """v -> M.T @ v for a CSR M (a column-wise scatter through M's storage), optionally on threads.

    With threads and at least as many columns in v as threads, the columns of v are split
    between threads (each result column is computed exactly as without threads); a single
    column is split by rows of M (the columns of M.T), each thread scattering into its own
    output block, and the blocks are summed (equal up to rounding).
    """

    def __init__(self, m: sp.csr_matrix, threads: int = 1):
        super().__init__(m, threads)
        self.mt = m.T  # a CSC on the same arrays, no copy

    def __call__(self, v: np.ndarray) -> np.ndarray:
        k = v.shape[1] if v.ndim == 2 else 1
        if self.serial(k):
            return self.mt @ v
        if k >= self.threads:
            cuts = np.linspace(0, k, self.threads + 1).astype(int)
            out = np.empty((self.m.shape[1], k), dtype=np.result_type(self.m.dtype, v.dtype))

            def run(ab):
                a, b = ab
                out[:, a:b] = self.mt @ np.ascontiguousarray(v[:, a:b])

            for _ in _pool(self.threads).map(run, zip(cuts[:-1], cuts[1:])):
                pass
            return out
        parts = list(_pool(len(self.chunks)).map(lambda c: c[2].T @ v[c[0]:c[1]], self.chunks))
        out = parts[0]
        for p in parts[1:]:
            out += p
        return out


class AstraMatrixProjector(Operator):
    """Same operator as AstraCPUProjector, applied as sparse products on whole slice stacks.

    x of shape grid.shape ((ny, nx) or (nz, ny, nx)), y of shape geometry.sinogram_shape(nz).
    ``threads``: worker threads per product (default :func:`default_threads`; 1 = plain SciPy).
    ``stored``: the one matrix kept, M = A_s^T (rows: pixels; columns: detector bins of the
    stored views); ``symmetry``: how the other views follow from the stored ones.
    """

    def __init__(self, geometry: Geometry, grid: VolumeGrid, projector_type: str | None = None,
                 use_cache: bool = True, threads: int | None = None, kernel: str | None = None):
        self.geometry, self.grid = geometry, grid
        self.projector_type = astra_projector_type(geometry, projector_type)
        self.domain_shape = grid.shape
        self.range_shape = geometry.sinogram_shape(grid.n_slices)
        self.stored, self.symmetry, self._cache_folder = load_or_build_stored_matrix(
            geometry, grid, self.projector_type, use_cache)
        self.threads = default_threads() if threads is None else max(1, int(threads))
        self._fwd = TransposedCSRProduct(self.stored, self.threads)
        self._adj = CSRProduct(self.stored, self.threads)
        self._plan = self._scatter_plan()
        self._compiled = None if self.trivial else CompiledSymmetricProduct.create(self, kernel)

    @property
    def kernel(self) -> str:
        """Which products apply the stored matrix: ``numba`` (compiled, transforms fused) or ``scipy``."""
        return "numba" if self._compiled is not None else "scipy"

    def _scatter_plan(self):
        """Per transform k: (transform, stored positions (L, 1), detector indices (L, n_det), views (L,))."""
        n_det = self.geometry.detector_count
        ramp = np.arange(n_det)
        plan = []
        e = self.symmetry.entries
        for k, g in enumerate(self.symmetry.transforms):
            sel = e[e[:, 1] == k]
            det = np.where(sel[:, 3:4] == 1, ramp[::-1], ramp)
            plan.append((g, sel[:, 0:1], det, sel[:, 2]))
        return plan

    def with_threads(self, threads: int) -> "AstraMatrixProjector":
        """The same operator (sharing the stored matrix) with another thread count."""
        other = copy.copy(self)
        other.threads = max(1, int(threads))
        other._fwd = TransposedCSRProduct(self.stored, other.threads)
        other._adj = CSRProduct(self.stored, other.threads)
        if self._compiled is not None:
            other._compiled = self._compiled.with_threads(other.threads)
        return other

    @property
    def nbytes(self) -> int:
        """Memory held by the stored matrix."""
        m = self._compiled.matrix if self._compiled is not None else self.stored
        return m.data.nbytes + m.indices.nbytes + m.indptr.nbytes

    @property
    def trivial(self) -> bool:
        return self.symmetry.is_trivial

    def _slices(self, a, shape_2d):
        a = np.asarray(a, dtype=np.float32)
        n = shape_2d[0] * shape_2d[1]
        if a.size % n:
            raise ValueError(f"expected a multiple of {n} values, got an array of shape {a.shape}")
        return a.reshape(-1, *shape_2d)

    #: Columns (slices x transforms) of one product: bounds the workspace of transformed copies
    #: (about 2 x max_columns image- and sinogram-sized float32 arrays) on large stacks.
    max_columns = 32

    def _blocks(self, nz: int):
        step = max(1, self.max_columns // len(self.symmetry.transforms))
        return [(a, min(a + step, nz)) for a in range(0, nz, step)]

    def forward(self, x):
        ny, nx = self.grid.slice_shape
        x3 = self._slices(x, (ny, nx))
        nz, npix = x3.shape[0], ny * nx
        if self.trivial:
            cols = np.ascontiguousarray(x3.reshape(nz, npix).T)
            return np.ascontiguousarray(self._fwd(cols).T).reshape(self.range_shape)
        out = np.empty((nz, self.geometry.n_angles, self.geometry.detector_count), np.float32)
        for a, b in self._blocks(nz):
            self._forward_block(x3[a:b], out[a:b])
        return out.reshape(self.range_shape)

    def _forward_block(self, x3, out):
        nz, npix = x3.shape[0], x3.shape[1] * x3.shape[2]
        n_t, n_det = len(self.symmetry.transforms), self.geometry.detector_count
        if self._use_compiled(nz):  # one gather from the stored-view columns into the sinogram
            z = self._compiled.forward_groups(x3.reshape(nz, npix), nz)
            np.take(z.reshape(-1), self._view_maps(nz)[0], out=out)  # out: a contiguous block of slices
            return
        else:
            cols = np.empty((npix, n_t, nz), np.float32)
            for k, (g, _, _, _) in enumerate(self._plan):
                cols[:, k, :] = transform_image(x3, g).reshape(nz, npix).T
            z = self._fwd(cols.reshape(npix, n_t * nz)).reshape(-1, n_det, n_t, nz)
        for k, (_, s, det, views) in enumerate(self._plan):
            out[:, views, :] = z[s, det, k, :].transpose(2, 0, 1)

    def _use_compiled(self, nz: int) -> bool:
        """The compiled kernels work on groups of 8 columns (transforms x slices); a block whose column
        count is not a multiple of 8 (e.g. 2 or 4 transforms on one slice) goes through SciPy's kernels
        instead (the same results, bit for bit), so no padding columns cost image-sized workspace."""
        return self._compiled is not None and len(self.symmetry.transforms) * nz % 8 == 0

    def _view_maps(self, nz: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(forward map (nz, n_views, n_det), adjoint map (n_groups, n_rays, 8), unused (k,)), int64 flat
        indices: the sinogram = z.flat[forward map] for the compiled forward's columns z (n_groups,
        n_rays, 8), column q = k*nz + s at [q // 8, :, q % 8]; the compiled adjoint's columns =
        y.flat[adjoint map] for the sinogram y (nz, n_views, n_det), then set to zero at ``unused``
        (columns no view uses, padding)."""
        cache = self.__dict__.setdefault("_view_map_cache", {})
        if nz in cache:
            return cache[nz]
        n_views, n_det = self.geometry.n_angles, self.geometry.detector_count
        n_rays = len(self.symmetry.stored) * n_det
        groups = -(-len(self.symmetry.transforms) * nz // 8)
        fwd = np.empty((nz, n_views, n_det), np.int64)
        adj = np.full(groups * n_rays * 8, nz * n_views * n_det, np.int64)  # the appended zero
        slices = np.arange(nz)
        for k, (_, s, det, views) in enumerate(self._plan):
            q = k * nz + slices  # (nz,)
            rays = s * n_det + det  # (L, n_det)
            flat = (q // 8)[:, None, None] * (n_rays * 8) + rays[None] * 8 + (q % 8)[:, None, None]
            fwd[:, views, :] = flat
            adj[flat] = (slices[:, None, None] * n_views + views[None, :, None]) * n_det + np.arange(n_det)
        unused = np.flatnonzero(adj == nz * n_views * n_det)
        adj[unused] = 0
        cache[nz] = (fwd, adj.reshape(groups, n_rays, 8), unused)
        return cache[nz]

    def adjoint(self, y):
        ny, nx = self.grid.slice_shape
        n_views, n_det = self.geometry.n_angles, self.geometry.detector_count
        y3 = self._slices(y, (n_views, n_det))
        nz = y3.shape[0]
        if self.trivial:
            cols = np.ascontiguousarray(y3.reshape(nz, n_views * n_det).T)
            return np.ascontiguousarray(self._adj(cols).T).reshape(self.domain_shape)
        out = np.zeros((nz, ny, nx), np.float32)
        for a, b in self._blocks(nz):
            self._adjoint_block(y3[a:b], out[a:b])
        return out.reshape(self.domain_shape)

    def _adjoint_block(self, y3, out):
        nz, (ny, nx) = y3.shape[0], self.grid.slice_shape
        n_t, n_det = len(self.symmetry.transforms), self.geometry.detector_count
        if self._use_compiled(nz):  # one gather from the sinogram into the columns, zeros where unused
            _, gather, unused = self._view_maps(nz)
            cols = np.take(y3.reshape(-1), gather)
            cols.reshape(-1)[unused] = 0.0
            self._compiled.adjoint_groups(cols, nz, out.reshape(nz, ny * nx))  # out: zeros, written
            return
        cols = np.zeros((len(self.symmetry.stored), n_det, n_t, nz), np.float32)
        for k, (_, s, det, views) in enumerate(self._plan):
            cols[s, det, k, :] = y3[:, views, :].transpose(1, 2, 0)
        w = self._adj(cols.reshape(-1, n_t * nz)).reshape(ny, nx, n_t, nz)
        for k, (g, _, _, _) in enumerate(self._plan):
            out += inverse_transform_image(np.moveaxis(w[:, :, k, :], -1, 0), g)

    def norm(self, iterations: int = 30, seed: int = 0) -> float:
        """||A||_2 (power iteration), cached in memory and beside the matrix in the disk cache."""
        cached = getattr(self, "_norm_cache", None)
        if cached is not None:
            return cached
        key = f"norm_{iterations}_{seed}"
        value = None
        if self._cache_folder is not None:
            try:
                value = matrix_cache.read_meta(self._cache_folder).get(key)
            except (OSError, ValueError):
                value = None
        if value is None:
            # on one slice: the norm of a stack of independent slices is that of one slice
            one = self if self.grid.n_slices is None else _single_slice(self)
            value = power_norm(one, iterations=iterations, seed=seed)
            if self._cache_folder is not None:
                matrix_cache.update_meta(self._cache_folder, **{key: value})
        self._norm_cache = float(value)
        return self._norm_cache

    @property
    def matrix(self) -> sp.csr_matrix:
        """The full matrix A (n_angles*n_det, ny*nx) as a CSR, expanded from the stored views (tests, tools)."""
        a_s = self.stored.T.tocsr()
        if self.trivial:
            return a_s
        ny, nx = self.grid.slice_shape
        n_det = self.geometry.detector_count
        pixels = np.arange(ny * nx).reshape(ny, nx)
        blocks = [None] * self.geometry.n_angles
        for k, (g, s, det, views) in enumerate(self._plan):
            perm = transform_image(pixels, g).ravel()  # g(x).ravel() == x.ravel()[perm]
            inv = np.empty_like(perm)
            inv[perm] = np.arange(perm.size)
            for s_k, d_k, u in zip(s[:, 0], det, views):
                rows = a_s[int(s_k) * n_det + d_k]
                blocks[int(u)] = rows[:, inv]
        import scipy.sparse as sp

        out = sp.vstack(blocks, format="csr").astype(np.float32)
        out.sort_indices()
        return out

    @property
    def matrix_t(self) -> sp.csr_matrix:
        """A^T as a CSR (expanded; tests, tools)."""
        return self.matrix.T.tocsr()


class CompiledSymmetricProduct:
    """The stored matrix as a compact CSR (float32 values, uint16 column indices where they fit) applied
    by numba kernels that fuse the image transforms (recon_cli.projectors.symmetric_kernels).

    ``forward_groups(x2, nz)``: x2 (nz, npix) -> z (n_groups, n_rays, 8), column q = k*nz + s (the stored
    rays of transform k of slice s) at [q // 8, :, q % 8]. ``adjoint_groups(y, nz)``: such columns ->
    (nz, npix), the inversely transformed columns summed. With ``threads > 1`` the pixel rows are split into blocks of equal non-zero count,
    each thread writing its own output, summed afterwards.
    """

    min_work = CSRProduct.min_work

    def __init__(self, matrix: sp.csr_matrix, maps, inverse, shape: tuple[int, int], kernels, threads: int = 1):
        self.matrix, self.maps, self.inverse, self.shape, self.kernels = matrix, maps, inverse, tuple(shape), kernels
        self.threads = max(1, int(threads))
        cuts = [0, matrix.shape[0]]
        if self.threads > 1:
            cuts = [a for a, _, _ in row_chunks(matrix, self.threads)] + [matrix.shape[0]]
        self.ranges = list(zip(cuts[:-1], cuts[1:]))

    @classmethod
    def create(cls, op: "AstraMatrixProjector", kernel: str | None) -> "CompiledSymmetricProduct | None":
        """The compiled product of ``op``'s stored matrix, or None (SciPy's products) when ``kernel`` (default
        $RECON_PRODUCT_KERNEL) is ``scipy``, numba is missing, or a transform is not an index map."""
        from recon_cli.projectors import symmetric_kernels as sk

        choice = (kernel or sk.kernel_choice()).lower()
        if choice == "scipy":
            return None
        kernels = sk.load_kernels()
        if kernels is None:
            if choice == "numba":
                log.warning("numba is not installed: symmetric products use SciPy's kernels")
            return None
        try:
            maps = sk.affine_index_maps(op.symmetry.transforms, transform_image, op.grid.slice_shape)
            inverse = np.stack(sk.affine_index_maps(op.symmetry.transforms, inverse_transform_image,
                                                    op.grid.slice_shape), axis=1)
        except ValueError as exc:
            log.info("compiled products not used (%s)", exc)
            return None
        import scipy.sparse as sp

        m = op.stored
        compact = sp.csr_matrix(m.shape, dtype=np.float32)  # assigned: the constructor would re-check types
        compact.data = np.ascontiguousarray(m.data, dtype=np.float32)
        compact.indices = sk.compact_indices(m.indices, m.shape[1])
        compact.indptr = np.ascontiguousarray(m.indptr, dtype=np.int64)
        return cls(compact, maps, inverse, op.grid.slice_shape, kernels, op.threads)

    def with_threads(self, threads: int) -> "CompiledSymmetricProduct":
        return CompiledSymmetricProduct(self.matrix, self.maps, self.inverse, self.shape, self.kernels, threads)

    def _lanes(self, nz: int) -> np.ndarray:
        from recon_cli.projectors.symmetric_kernels import lane_table

        cache = self.__dict__.setdefault("_lane_cache", {})
        if nz not in cache:
            cache[nz] = lane_table(self.maps, nz, self.matrix.shape[0])
        return cache[nz]

    def _terms(self, nz: int, groups: int) -> np.ndarray:
        from recon_cli.projectors.symmetric_kernels import inverse_terms

        cache = self.__dict__.setdefault("_term_cache", {})
        if nz not in cache:
            cache[nz] = inverse_terms(self.inverse, nz, self.matrix.shape[0], groups * self.matrix.shape[0] * 8)
        return cache[nz]

    def _serial(self, groups: int) -> bool:
        return len(self.ranges) == 1 or self.matrix.nnz * 8 * groups < self.min_work * len(self.ranges)

    def forward_groups(self, x2: np.ndarray, nz: int) -> np.ndarray:
        """x2 (nz, npix) -> z (n_groups, n_rays, 8): column q = k*nz + s at [q // 8, :, q % 8]."""
        from recon_cli.projectors.symmetric_kernels import compile_for

        fwd, _, gather, _ = self.kernels
        m, (ny, nx) = self.matrix, self.shape
        lanes = self._lanes(nz)
        x2 = np.ascontiguousarray(x2, dtype=np.float32).reshape(-1)
        cols = np.empty((lanes.shape[0], m.shape[0], 8), np.float32)
        compile_for(gather, (x2, lanes, ny, nx, cols))
        gather(x2, lanes, ny, nx, cols)
        z = np.zeros((lanes.shape[0], m.shape[1], 8), np.float32)
        args = (m.indptr, m.indices, m.data)
        compile_for(fwd, args + (cols[0], 0, 1, z[0]))
        if self._serial(lanes.shape[0]):
            for g in range(lanes.shape[0]):
                fwd(*args, cols[g], 0, m.shape[0], z[g])
        else:
            parts = [z] + [np.zeros_like(z) for _ in self.ranges[1:]]

            def run(t):
                for g in range(lanes.shape[0]):
                    fwd(*args, cols[g], self.ranges[t][0], self.ranges[t][1], parts[t][g])

            for _ in _pool(len(self.ranges)).map(run, range(len(self.ranges))):
                pass
            for p in parts[1:]:
                z += p
        return z

    def adjoint_groups(self, y: np.ndarray, nz: int, out: np.ndarray | None = None) -> np.ndarray:
        """y (n_groups, n_rays, 8) (column q = k*nz + s at [q // 8, :, q % 8], zero where unused) -> (nz, npix),
        written into ``out`` (C-contiguous (nz, npix) float32) when given."""
        from recon_cli.projectors.symmetric_kernels import compile_for

        _, adj, _, inverse_sum = self.kernels
        m, (ny, nx) = self.matrix, self.shape
        lanes = self._lanes(nz)
        y = np.ascontiguousarray(y, dtype=np.float32)
        groups = lanes.shape[0]
        w_flat = np.empty(groups * m.shape[0] * 8 + 1, np.float32)
        w_flat[-1] = 0.0  # read by the unused terms of the inverse sum (fewer than 8 transforms)
        w = w_flat[:-1].reshape(groups, m.shape[0], 8)
        args = (m.indptr, m.indices, m.data)
        compile_for(adj, args + (y[0], 0, 1, w[0]))
        if self._serial(lanes.shape[0]):
            for g in range(lanes.shape[0]):
                adj(*args, y[g], 0, m.shape[0], w[g])
        else:  # each thread writes its own rows of w
            def run(t):
                for g in range(lanes.shape[0]):
                    adj(*args, y[g], self.ranges[t][0], self.ranges[t][1], w[g])

            for _ in _pool(len(self.ranges)).map(run, range(len(self.ranges))):
                pass
        out = np.empty((nz, m.shape[0]), np.float32) if out is None else out
        flat_out = out.reshape(-1)  # a view: out is C-contiguous
        terms = self._terms(nz, groups)
        compile_for(inverse_sum, (w_flat, terms, ny, nx, flat_out))
        inverse_sum(w_flat, terms, ny, nx, flat_out)
        return out


def _single_slice(op: AstraMatrixProjector) -> AstraMatrixProjector:
    """The same operator on one slice (sharing the stored matrix)."""
    one = copy.copy(op)
    one.grid = op.grid.slice_grid()
    one.domain_shape = one.grid.shape
    one.range_shape = op.geometry.sinogram_shape()
    one.__dict__.pop("_norm_cache", None)
    return one
