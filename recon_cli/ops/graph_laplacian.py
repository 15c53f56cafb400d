"""Graph Laplacian of an image, built from a preliminary reconstruction u (graphLa+Psi).

Graph (Bianchi, Evangelista, Aleotti, Donatelli, Loli Piccolomini, Li, arXiv 2312.16936): pixel i is
joined to every pixel j != i in the square window ||pos_i - pos_j||_inf <= R - 1 (the paper's
convention: R = 5 gives a 9 x 9 window, (2R-1)^2 - 1 = 80 neighbours), with the weight

    w_ij = exp(-(u_i - u_j)^2 / sigma),

W is divided by its Frobenius norm and L = diag(W 1) - W (the combinatorial Laplacian: symmetric,
zero row sums, positive semi-definite).

``relative=True`` (default): u is first mapped to [0, 1] by its intensity range,
u <- (u - min u) / (max u - min u), so ``sigma`` is relative to the squared range and the paper's
values apply unchanged (1e-3 for synthetic images, 2e-4 for clinical ones). ``relative=False``:
u is used as it is and sigma has the units of u^2 ((1/mm)^2 for attenuation images).

Slice stacks (nz, ny, nx): ``mode='slicewise'`` (default) gives the block-diagonal L of the slices,
each slice's W normalised by its own Frobenius norm, so every block is exactly the single-slice
Laplacian; ``mode='3d'`` adds the neighbours in the |dz| <= ``slice_half_width`` adjacent slices
(same in-plane window) and normalises the whole W at once. The intensity range is the whole stack's.

Construction is vectorised over the (2R-1)^2 window offsets, never over pixels, and writes the CSR
arrays directly: the offsets are sorted by their flat index shift, so for each row the valid
neighbours, with the diagonal in place, already come in increasing column order. Pixels are
processed in chunks (``chunk_pixels``) to bound the temporaries. Every diagonal entry is recomputed
from the stored (rounded) off-diagonal ones and rounded up, so the float32 matrix is exactly diagonally
dominant: symmetric, positive semi-definite, row sums in [0, 1.5 ulp]. Measured on this project's
2-core CPU, R = 5 (benchmarks/results/graphla.md): 512 x 512 in 1.3-3.1 s (the machine shared with other
jobs), 21.0 M stored entries, 162 MiB (data + indices + indptr), 210 MiB peak while building;
256 x 256 in 0.15-0.8 s, 5.2 M entries, 40 MiB. A product L x costs about 13 ms at 256 x 256.
Works on numpy (SciPy CSR) or cupy (cupyx.scipy.sparse CSR) with ``xp``.
"""
from __future__ import annotations

import numpy as np

from recon_cli.ops.operator import Operator


def window_offsets(R: int, slice_half_width: int = 0, shape: tuple[int, int, int] | None = None
                   ) -> list[tuple[int, int, int]]:
    """Window offsets (dz, dy, dx) with |dy|, |dx| <= R - 1 and |dz| <= slice_half_width, the zero offset
    included, in increasing flat-index order (lexicographic). ``shape`` (nz, ny, nx) drops offsets that
    reach outside any image of that shape."""
    R = int(R)
    if R < 1:
        raise ValueError(f"R must be >= 1, got {R}")
    r, rz = R - 1, int(slice_half_width)
    if rz < 0:
        raise ValueError(f"slice_half_width must be >= 0, got {slice_half_width}")
    if shape is not None:
        rz = min(rz, shape[0] - 1)
        ry, rx = min(r, shape[1] - 1), min(r, shape[2] - 1)
    else:
        ry = rx = r
    return [(dz, dy, dx) for dz in range(-rz, rz + 1) for dy in range(-ry, ry + 1) for dx in range(-rx, rx + 1)]


def _sparse_module(xp):
    if xp is np:
        import scipy.sparse as sparse
    else:
        import cupyx.scipy.sparse as sparse
    return sparse


def normalised_intensity(u, xp=np):
    """u mapped to [0, 1] by its range (float32); a constant image maps to 0."""
    u = xp.asarray(u, dtype=np.float32)
    lo, hi = float(xp.min(u)), float(xp.max(u))
    span = hi - lo
    if span <= 0:
        return xp.zeros_like(u)
    return (u - np.float32(lo)) * np.float32(1.0 / span)


def graph_laplacian(u, R: int = 5, sigma: float = 1e-3, relative: bool = True, xp=np, *,
                    mode: str = "slicewise", slice_half_width: int = 1, chunk_pixels: int = 1 << 14):
    """Sparse graph Laplacian L (N x N, float32 CSR, N = u.size) of the image or stack ``u``.

    ``u``: (ny, nx) or (nz, ny, nx); ``R``: window half-width in the paper's convention (neighbours at
    ||.||_inf <= R - 1); ``sigma``: weight scale (relative to u's range when ``relative``); ``mode``:
    'slicewise' (block-diagonal, per-slice normalisation) or '3d' (neighbours in the adjacent
    ``slice_half_width`` slices too, one normalisation). Returns a scipy.sparse.csr_matrix (numpy) or a
    cupyx.scipy.sparse.csr_matrix (cupy) with sorted indices and the diagonal stored.
    """
    if mode not in ("slicewise", "3d"):
        raise ValueError(f"mode must be 'slicewise' or '3d', got {mode!r}")
    sigma = float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    u = xp.asarray(u, dtype=np.float32)
    if u.ndim not in (2, 3):
        raise ValueError(f"graph_laplacian needs a 2D image or a 3D stack, got shape {tuple(u.shape)}")
    shape3 = (1, *u.shape) if u.ndim == 2 else tuple(u.shape)
    nz, ny, nx = shape3
    n = nz * ny * nx
    values = normalised_intensity(u, xp) if relative else u
    flat = values.reshape(-1)

    rz = slice_half_width if (mode == "3d" and nz > 1) else 0
    offsets = window_offsets(R, rz, shape3)
    n_off = len(offsets)
    k_diag = offsets.index((0, 0, 0))
    shifts = [dz * ny * nx + dy * nx + dx for dz, dy, dx in offsets]  # flat index shifts, increasing
    deltas = xp.asarray(shifts, dtype=np.int64)
    # exact number of stored entries: each offset is valid for (nz-|dz|)(ny-|dy|)(nx-|dx|) pixels
    nnz = sum((nz - abs(dz)) * (ny - abs(dy)) * (nx - abs(dx)) for dz, dy, dx in offsets)
    index_dtype = np.int64 if max(nnz, n) >= 2**31 else np.int32
    data = xp.empty(nnz, dtype=np.float32)
    indices = xp.empty(nnz, dtype=index_dtype)
    indptr = xp.empty(n + 1, dtype=index_dtype)
    indptr[0] = 0
    diag_pos = xp.empty(n, dtype=index_dtype)  # where each row's diagonal entry sits in data
    inv_sigma = np.float32(1.0 / sigma)

    sq_sum = np.zeros(nz, dtype=np.float64)  # sum of w^2 over the rows of each slice
    pos = 0
    chunk = max(int(chunk_pixels), 1)
    for p0 in range(0, n, chunk):
        p1 = min(n, p0 + chunk)
        p = xp.arange(p0, p1, dtype=np.int64)
        z, rem = p // (ny * nx), p % (ny * nx)
        y, x = rem // nx, rem % nx
        inside = {}  # per-axis validity of each shift, computed once per chunk

        def ok(axis_name, coord, shift, size):
            key = (axis_name, shift)
            if key not in inside:
                inside[key] = (coord + shift >= 0) & (coord + shift < size)
            return inside[key]

        valid = xp.empty((n_off, p1 - p0), dtype=bool)   # offset-major: contiguous rows
        weight = xp.empty((n_off, p1 - p0), dtype=np.float32)
        ui = flat[p0:p1]
        for k, (dz, dy, dx) in enumerate(offsets):
            v = ok("x", x, dx, nx) & ok("y", y, dy, ny)
            if dz:
                v &= ok("z", z, dz, nz)
            valid[k] = v
            if k == k_diag:
                weight[k] = 0.0
                continue
            d = flat[xp.clip(p + shifts[k], 0, n - 1)]
            d -= ui
            d *= d
            d *= -inv_sigma
            w = weight[k]
            xp.exp(d, out=w)
            w *= v
        sq = weight * weight
        if nz == 1:
            sq_sum[0] += float(xp.sum(sq, dtype=np.float64))
        else:
            row_sq = xp.sum(sq, axis=0, dtype=np.float64)
            sq_sum += _to_numpy(xp.bincount(z, weights=row_sq, minlength=nz))
        del sq
        weight *= np.float32(-1.0)  # the diagonal (still 0) is set after the normalisation
        diag_pos[p0:p1] = xp.sum(valid[:k_diag], axis=0) + (
            xp.concatenate([xp.zeros(1, dtype=index_dtype), xp.cumsum(xp.sum(valid, axis=0))[:-1]]) + pos)
        # row-major (pixel, offset) order = CSR order (offsets sorted by column shift)
        valid_t = valid.T
        count = int(xp.count_nonzero(valid))
        data[pos:pos + count] = weight.T[valid_t]
        cols = p.astype(index_dtype)[:, None] + deltas.astype(index_dtype)[None, :]
        indices[pos:pos + count] = cols[valid_t]
        del cols
        indptr[p0 + 1:p1 + 1] = xp.cumsum(xp.sum(valid, axis=0)) + pos
        pos += count
        del valid, weight, valid_t
    assert pos == nnz, (pos, nnz)
    # Frobenius normalisation (per slice in slicewise mode, of the whole W in 3d mode)
    if rz == 0 and nz > 1:
        host_indptr = _to_numpy(indptr)
        for s in range(nz):
            a, b = int(host_indptr[s * ny * nx]), int(host_indptr[(s + 1) * ny * nx])
            fro = float(np.sqrt(sq_sum[s]))
            if fro > 0:
                data[a:b] *= np.float32(1.0 / fro)
    else:
        fro = float(np.sqrt(sq_sum.sum()))
        if fro > 0:
            data *= np.float32(1.0 / fro)
    _set_diagonal(data, indptr, diag_pos, chunk, xp)
    sparse = _sparse_module(xp)
    L = sparse.csr_matrix((data, indices, indptr), shape=(n, n))
    if xp is np:
        L.has_sorted_indices = True
    return L


def _set_diagonal(data, indptr, diag_pos, chunk: int, xp) -> None:
    """L_ii = -sum_{j != i} L_ij, rounded *up* to float32, from the stored (already normalised) float32
    off-diagonal entries: the stored matrix is then exactly diagonally dominant, hence positive
    semi-definite, and its row sums lie in [0, 1.5 ulp(L_ii)]."""
    n = int(diag_pos.shape[0])
    host_indptr = _to_numpy(indptr)
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        a, b = int(host_indptr[r0]), int(host_indptr[r1])
        seg = data[a:b].astype(np.float64)
        local_diag = diag_pos[r0:r1] - a
        seg[local_diag] = 0.0
        csum = xp.concatenate([xp.zeros(1, dtype=np.float64), xp.cumsum(seg)])
        starts, ends = indptr[r0:r1] - a, indptr[r0 + 1:r1 + 1] - a
        off_sum = csum[ends] - csum[starts]  # <= 0
        degree = (-off_sum).astype(np.float32)
        up = xp.nextafter(degree, np.float32(np.inf))
        data[diag_pos[r0:r1]] = xp.where(off_sum < 0, up, np.float32(0.0))


def _to_numpy(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def laplacian_nbytes(L) -> int:
    """Bytes held by a CSR matrix: data + indices + indptr."""
    return int(L.data.nbytes + L.indices.nbytes + L.indptr.nbytes)


class GraphLaplacianOperator(Operator):
    """x -> L x on images of ``shape`` (L a sparse N x N matrix, N = prod(shape)), float32.

    ``symmetric=True`` (a graph Laplacian): the adjoint is L itself; otherwise L^T is kept as a
    second CSR. ``norm()``: an upper estimate of ||L||_2 for step sizes (see :meth:`norm`).
    """

    def __init__(self, L, shape: tuple[int, ...], symmetric: bool = True, xp=None):
        shape = tuple(int(s) for s in shape)
        n = int(np.prod(shape))
        if L.shape != (n, n):
            raise ValueError(f"L has shape {L.shape}, expected ({n}, {n}) for images {shape}")
        if xp is None:
            xp = np if type(L).__module__.startswith("scipy") else __import__("cupy")
        self.xp = xp
        self.L = L.astype(np.float32) if L.dtype != np.float32 else L
        self.LT = self.L if symmetric else self.L.T.tocsr()
        self.domain_shape = self.range_shape = shape

    def forward(self, x):
        return (self.L @ x.reshape(-1)).reshape(self.range_shape)

    def adjoint(self, y):
        return (self.LT @ y.reshape(-1)).reshape(self.domain_shape)

    def gershgorin_bound(self) -> float:
        xp = self.xp
        absL = abs(self.L)
        return float(xp.max(xp.asarray(absL.sum(axis=1)).ravel()))

    def norm(self, iterations: int = 30, seed: int = 0, method: str = "safe") -> float:
        """An upper estimate of ||L||_2 for step sizes (cached).

        'safe' (default): min(Gershgorin bound, 1.05 x power iteration). Power iteration approaches
        ||L|| from below (30 steps: 0.6-2.4% low on the Laplacians measured, 24^2 to 256^2), and the
        Gershgorin bound 2 max(degree) was 1.8-1.9x too large, which slowed PDHG 3-10x (the
        regulariser's dual step scales with 1/||L||^2). 'gershgorin' or 'power' alone on request.
        """
        if method == "gershgorin":
            return self.gershgorin_bound()
        if method == "power":
            return super().norm(iterations, seed)
        cached = getattr(self, "_safe_norm", None)
        if cached is None:
            cached = self._safe_norm = min(self.gershgorin_bound(), 1.05 * super().norm(iterations, seed))
        return cached

    @property
    def nbytes(self) -> int:
        return laplacian_nbytes(self.L) + (0 if self.LT is self.L else laplacian_nbytes(self.LT))
