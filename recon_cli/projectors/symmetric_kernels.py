"""Compiled (numba) products of the symmetry-compressed projector.

The stored matrix is ``M = A_s^T`` (rows: the ``ny*nx`` pixels; columns: the rays of the stored
views), held as a CSR with float32 values and the smallest index type that fits (uint16 while
the stored views have fewer than 65536 rays: 6 instead of 8 bytes per non-zero). Each of the
``C = n_transforms * n_slices`` columns of a product is one transformed copy of one slice, in
groups of 8 columns. Image transform ``k`` is an index map affine in the pixel's (row i, column
j): ``transform_k(x)[i, j] = x.flat[a_k + i*b_k + j*c_k]``.

* forward: :func:`_gather_columns` copies the 8 transformed images of a group into one
  (npix, 8) block (tile by tile, so the rotated reads stay in cache), then :func:`_forward_rows`
  scatters ``M[p, ray] * cols[p, :]`` into the small stored-view sinogram block (in cache);
* adjoint: :func:`_adjoint_rows` computes ``w[p, :] = sum_ray M[p, ray] * y[ray, :]`` and
  :func:`_sum_inverse` adds the 8 inversely transformed columns per pixel.

The 8 multiply-adds per non-zero are written out so that LLVM's SLP vectoriser (switched on
for these kernels only: numba leaves it off) makes them one 256-bit operation: 1.5-1.8x less CPU
time than SciPy's ``csr_matvecs`` per product at 512^2. Per row the multiply-adds happen in
SciPy's order, and the inverse sum adds the transforms in the SciPy path's order, so forward
and adjoint equal the SciPy path bit for bit (tests/test_symmetric_kernels.py). Row kernels
take a row range ``[p0, p1)`` and release the GIL, so rows can be split between threads.

numba is imported and the kernels compiled only when a matrix projector is made (never at the
import of recon_cli: start-up and FBP stay free of it). Compiled code is cached on disk
(``cache=True``): in ``$NUMBA_CACHE_DIR`` when set, else in the user's recon-cli cache or the
``$RECON_CACHE_DIR`` folder (:func:`_numba_cache_dirs`; never beside this file, which may be
read-only, e.g. in the Docker image), and compiled in memory when none is writable. ``$RECON_PRODUCT_KERNEL=scipy`` (or numba missing) selects SciPy's
products instead (recon_cli.projectors.astra_matrix).
"""
from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np

log = logging.getLogger(__name__)

#: Side (pixels) of the square image tiles the transforms are copied through (cache-friendly gathers).
TILE = 32


def _gather_columns(x, lanes, ny, nx, cols):
    """cols[g, p, l] = x[A + i*B + j*C] for every pixel p = i*nx + j, (A, B, C) = lanes[g, l] (x: the
    slices flattened, (nz*npix,); cols: (n_groups, npix, 8) float32), tile by tile so that the 8
    rotated reads of a tile stay in cache while cols is written in order. The 24 lane constants
    are held in locals (numba gives LLVM no type-based aliasing, so array reads would repeat)."""
    for g in range(lanes.shape[0]):
        A0, A1, A2, A3, A4, A5, A6, A7 = lanes[g, 0, 0], lanes[g, 1, 0], lanes[g, 2, 0], lanes[g, 3, 0], lanes[g, 4, 0], lanes[g, 5, 0], lanes[g, 6, 0], lanes[g, 7, 0]
        B0, B1, B2, B3, B4, B5, B6, B7 = lanes[g, 0, 1], lanes[g, 1, 1], lanes[g, 2, 1], lanes[g, 3, 1], lanes[g, 4, 1], lanes[g, 5, 1], lanes[g, 6, 1], lanes[g, 7, 1]
        C0, C1, C2, C3, C4, C5, C6, C7 = lanes[g, 0, 2], lanes[g, 1, 2], lanes[g, 2, 2], lanes[g, 3, 2], lanes[g, 4, 2], lanes[g, 5, 2], lanes[g, 6, 2], lanes[g, 7, 2]
        for i0 in range(0, ny, TILE):
            for j0 in range(0, nx, TILE):
                for i in range(i0, min(i0 + TILE, ny)):
                    R0 = A0 + i * B0
                    R1 = A1 + i * B1
                    R2 = A2 + i * B2
                    R3 = A3 + i * B3
                    R4 = A4 + i * B4
                    R5 = A5 + i * B5
                    R6 = A6 + i * B6
                    R7 = A7 + i * B7
                    for j in range(j0, min(j0 + TILE, nx)):
                        p = i * nx + j
                        cols[g, p, 0] = x[np.uint64(R0 + j * C0)]
                        cols[g, p, 1] = x[np.uint64(R1 + j * C1)]
                        cols[g, p, 2] = x[np.uint64(R2 + j * C2)]
                        cols[g, p, 3] = x[np.uint64(R3 + j * C3)]
                        cols[g, p, 4] = x[np.uint64(R4 + j * C4)]
                        cols[g, p, 5] = x[np.uint64(R5 + j * C5)]
                        cols[g, p, 6] = x[np.uint64(R6 + j * C6)]
                        cols[g, p, 7] = x[np.uint64(R7 + j * C7)]


def _sum_inverse(w, terms, ny, nx, out):
    """out[s*npix + i*nx + j] = sum over t = 0..7 (in order) of w[D + i*B + j*C], (D, B, C) = terms[s, t]
    (w: the adjoint's columns flattened from (n_groups, npix, 8); out: (nz*npix,) float32; see
    :func:`inverse_terms`). The adjoint of :func:`_gather_columns` written as a gather, so each
    pixel's terms add in the order of the SciPy path (``out += inverse_transform_k(w_k)``, k
    ascending; unused terms read a zero) whatever the blocking of the slices."""
    npix = ny * nx
    for s in range(terms.shape[0]):
        D0, B0, C0 = terms[s, 0, 0], terms[s, 0, 1], terms[s, 0, 2]
        D1, B1, C1 = terms[s, 1, 0], terms[s, 1, 1], terms[s, 1, 2]
        D2, B2, C2 = terms[s, 2, 0], terms[s, 2, 1], terms[s, 2, 2]
        D3, B3, C3 = terms[s, 3, 0], terms[s, 3, 1], terms[s, 3, 2]
        D4, B4, C4 = terms[s, 4, 0], terms[s, 4, 1], terms[s, 4, 2]
        D5, B5, C5 = terms[s, 5, 0], terms[s, 5, 1], terms[s, 5, 2]
        D6, B6, C6 = terms[s, 6, 0], terms[s, 6, 1], terms[s, 6, 2]
        D7, B7, C7 = terms[s, 7, 0], terms[s, 7, 1], terms[s, 7, 2]
        for i0 in range(0, ny, TILE):
            for j0 in range(0, nx, TILE):
                for i in range(i0, min(i0 + TILE, ny)):
                    R0 = D0 + i * B0
                    R1 = D1 + i * B1
                    R2 = D2 + i * B2
                    R3 = D3 + i * B3
                    R4 = D4 + i * B4
                    R5 = D5 + i * B5
                    R6 = D6 + i * B6
                    R7 = D7 + i * B7
                    row = s * npix + i * nx
                    for j in range(j0, min(j0 + TILE, nx)):
                        acc = np.float32(0.0)
                        acc += w[np.uint64(R0 + j * C0)]
                        acc += w[np.uint64(R1 + j * C1)]
                        acc += w[np.uint64(R2 + j * C2)]
                        acc += w[np.uint64(R3 + j * C3)]
                        acc += w[np.uint64(R4 + j * C4)]
                        acc += w[np.uint64(R5 + j * C5)]
                        acc += w[np.uint64(R6 + j * C6)]
                        acc += w[np.uint64(R7 + j * C7)]
                        out[row + j] = acc


def _forward_rows(indptr, indices, data, x8, p0, p1, z8):
    """z8[ray, :] += M[p, ray] * x8[p, :] for the rows p in [p0, p1) of M (x8: (npix, 8), z8: (n_rays, 8)
    float32): 8 columns at once, in SciPy's csc_matvecs order."""
    for p in range(p0, p1):
        b0 = x8[p, 0]
        b1 = x8[p, 1]
        b2 = x8[p, 2]
        b3 = x8[p, 3]
        b4 = x8[p, 4]
        b5 = x8[p, 5]
        b6 = x8[p, 6]
        b7 = x8[p, 7]
        for jj in range(indptr[p], indptr[p + 1]):
            r = indices[jj]
            v = data[jj]
            z8[r, 0] += v * b0
            z8[r, 1] += v * b1
            z8[r, 2] += v * b2
            z8[r, 3] += v * b3
            z8[r, 4] += v * b4
            z8[r, 5] += v * b5
            z8[r, 6] += v * b6
            z8[r, 7] += v * b7


def _adjoint_rows(indptr, indices, data, y8, p0, p1, w8):
    """w8[p, :] = sum_ray M[p, ray] * y8[ray, :] for the rows p in [p0, p1) of M (y8: (n_rays, 8), w8:
    (npix, 8) float32): 8 columns at once, in SciPy's csr_matvecs order."""
    for p in range(p0, p1):
        s0 = np.float32(0.0)
        s1 = np.float32(0.0)
        s2 = np.float32(0.0)
        s3 = np.float32(0.0)
        s4 = np.float32(0.0)
        s5 = np.float32(0.0)
        s6 = np.float32(0.0)
        s7 = np.float32(0.0)
        for jj in range(indptr[p], indptr[p + 1]):
            r = indices[jj]
            v = data[jj]
            s0 += v * y8[r, 0]
            s1 += v * y8[r, 1]
            s2 += v * y8[r, 2]
            s3 += v * y8[r, 3]
            s4 += v * y8[r, 4]
            s5 += v * y8[r, 5]
            s6 += v * y8[r, 6]
            s7 += v * y8[r, 7]
        w8[p, 0] = s0
        w8[p, 1] = s1
        w8[p, 2] = s2
        w8[p, 3] = s3
        w8[p, 4] = s4
        w8[p, 5] = s5
        w8[p, 6] = s6
        w8[p, 7] = s7


def lane_table(maps, nz: int, npix: int) -> np.ndarray:
    """(n_groups, 8, 3) int64: for column q = k*nz + s (transform k, slice s) at [q // 8, q % 8] the flat
    map (s*npix + a_k, b_k, c_k) of transform k on slice s (see :func:`affine_index_maps`). Padding
    lanes (q >= n_transforms*nz) are all 0: they read pixel 0 of slice 0 into forward columns that
    are dropped, and add the adjoint's zero padding columns to it."""
    a, b, c = maps
    n_cols = len(a) * nz
    table = np.zeros((-(-n_cols // 8), 8, 3), np.int64)
    for q in range(n_cols):
        k, s = divmod(q, nz)
        table[q // 8, q % 8] = (s * npix + a[k], b[k], c[k])
    return table


def inverse_terms(inverse: np.ndarray, nz: int, npix: int, zero_index: int) -> np.ndarray:
    """(nz, 8, 3) int64 terms of :func:`_sum_inverse`: for slice s and transform k < n_t the flat map
    into w (n_groups, npix, 8) of column q = k*nz + s through the inverse map (a, b, c) = inverse[k];
    terms k >= n_t read the zero at flat index ``zero_index`` (one element after w)."""
    n_t = inverse.shape[0]
    terms = np.zeros((nz, 8, 3), np.int64)
    terms[:, :, 0] = zero_index
    for s in range(nz):
        for k in range(n_t):
            q = k * nz + s
            a, b, c = (int(v) for v in inverse[k])
            terms[s, k] = ((q // 8) * npix * 8 + a * 8 + q % 8, 8 * b, 8 * c)
    return terms


_KERNELS = None
_LOCK = threading.Lock()
#: (kernel id, argument kinds) already compiled: see :func:`compile_for`.
_READY: set = set()


def kernel_choice() -> str:
    """$RECON_PRODUCT_KERNEL: ``numba`` (default when importable) or ``scipy``."""
    value = os.environ.get("RECON_PRODUCT_KERNEL", "auto").strip().lower()
    return value if value in ("numba", "scipy") else "auto"


def _numba_cache_dirs() -> list[str]:
    """Where compiled kernels may be cached, first choice first: the user's cache
    ($XDG_CACHE_HOME/recon-cli/numba, else ~/.cache/recon-cli/numba: shared by every process of the
    user whatever its $RECON_CACHE_DIR, so compiling happens once per install), then
    ``<$RECON_CACHE_DIR>/numba`` (e.g. a writable volume when the home folder is read-only)."""
    from recon_cli.cache_location import cache_dir

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [os.path.join(base, "recon-cli", "numba"), str(cache_dir() / "numba")]


def load_kernels():
    """Compiled (forward rows, adjoint rows, gather, inverse sum) kernels, or None when numba is missing.

    The first call imports numba and compiles (or loads from the disk cache) both kernels.
    """
    global _KERNELS
    with _LOCK:
        if _KERNELS is not None:
            return _KERNELS or None
        try:
            import numba
        except ImportError:
            log.info("numba is not installed: symmetric products use SciPy's kernels")
            _KERNELS = ()
            return None
        use_cache = True
        if not numba.config.CACHE_DIR:  # numba's default is beside this file, maybe read-only
            folders = _numba_cache_dirs()
            writable = [f for f in folders if _writable(f)]
            use_cache = bool(writable)
            if use_cache:
                numba.config.CACHE_DIR = writable[0]
            else:
                log.info("numba kernels compiled in memory: cannot write %s", " or ".join(folders))
        compiled = []
        for fn in (_forward_rows, _adjoint_rows, _gather_columns, _sum_inverse):
            try:
                compiled.append(numba.njit(cache=use_cache, nogil=True)(fn))
            except Exception as exc:  # no writable cache location: compile in memory only
                log.info("numba disk cache unavailable (%s); compiling in memory", exc)
                compiled.append(numba.njit(cache=False, nogil=True)(fn))
        _KERNELS = tuple(compiled)
        return _KERNELS


def _writable(folder: str) -> bool:
    """Whether ``folder`` exists or can be made, and a file can be written in it."""
    import tempfile

    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def compile_for(kernel, args) -> None:
    """Compile ``kernel`` (or load it from the disk cache) for the types of ``args``, with LLVM's SLP
    vectoriser on (numba leaves it off by default; it turns the 8 unrolled multiply-adds into one
    vector operation: 1.8-2x faster products here, identical results)."""
    key = (id(kernel),) + tuple((a.dtype.char, a.ndim, a.flags.writeable, a.flags.c_contiguous)
                                if isinstance(a, np.ndarray) else type(a) for a in args)
    if key in _READY:  # a cheap check per product: numba.typeof of every argument costs ~0.3 ms
        return
    import numba

    sig = tuple(numba.typeof(arg) for arg in args)
    with _LOCK:
        if any(tuple(s) == sig for s in kernel.signatures):
            _READY.add(key)
            return
        t0 = time.perf_counter()
        saved = numba.config.SLP_VECTORIZE
        numba.config.SLP_VECTORIZE = 1
        try:
            kernel.compile(sig)
        finally:
            numba.config.SLP_VECTORIZE = saved
        _READY.add(key)
        log.debug("numba kernel %s ready in %.2f s", kernel.__name__, time.perf_counter() - t0)


def affine_index_maps(transforms, transform_image, slice_shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, c) int64 arrays, one entry per transform, with transform_k(x)[i, j] = x.flat[a + i*b + j*c];
    checked against ``transform_image`` on the index image (ValueError if a transform is not affine)."""
    ny, nx = slice_shape
    pixels = np.arange(ny * nx, dtype=np.int64).reshape(ny, nx)
    a, b, c = [], [], []
    rows, cols = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    for g in transforms:
        t = np.asarray(transform_image(pixels, g))
        if t.shape != (ny, nx):
            raise ValueError(f"transform {g} changes the slice shape {slice_shape}")
        a0 = int(t[0, 0])
        b0 = int(t[1, 0] - t[0, 0]) if ny > 1 else 0
        c0 = int(t[0, 1] - t[0, 0]) if nx > 1 else 0
        if not np.array_equal(t, a0 + rows * b0 + cols * c0):
            raise ValueError(f"transform {g} is not an affine index map")
        a.append(a0)
        b.append(b0)
        c.append(c0)
    return np.array(a, np.int64), np.array(b, np.int64), np.array(c, np.int64)


def compact_indices(indices: np.ndarray, n_cols: int) -> np.ndarray:
    """The column indices as uint16 when every column < 65536 fits, else int32."""
    return indices.astype(np.uint16 if n_cols <= 65536 else np.int32)

