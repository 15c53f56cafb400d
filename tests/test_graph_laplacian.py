"""Graph Laplacian of an image: against a naive loop, symmetry, zero row sums, PSD, window, operator."""
from __future__ import annotations

import numpy as np
import pytest

from recon_cli.ops.graph_laplacian import (GraphLaplacianOperator, graph_laplacian, laplacian_nbytes,
                                           window_offsets)
from recon_cli.ops.operator import adjoint_mismatch


def naive_laplacian(u: np.ndarray, R: int, sigma: float, slice_half_width: int = 0, per_slice: bool = True):
    """Dense float64 reference: a double loop over pixel pairs, exactly the paper's definition."""
    u3 = u[None] if u.ndim == 2 else u
    nz, ny, nx = u3.shape
    n = u3.size
    un = (u3 - u3.min()) / (u3.max() - u3.min())
    W = np.zeros((n, n))
    for a in range(n):
        za, ya, xa = np.unravel_index(a, u3.shape)
        for b in range(n):
            zb, yb, xb = np.unravel_index(b, u3.shape)
            if a != b and max(abs(ya - yb), abs(xa - xb)) <= R - 1 and abs(za - zb) <= slice_half_width:
                W[a, b] = np.exp(-(un[za, ya, xa] - un[zb, yb, xb]) ** 2 / sigma)
    if per_slice and nz > 1:
        m = ny * nx
        for s in range(nz):
            block = W[s * m:(s + 1) * m, s * m:(s + 1) * m]
            block /= np.linalg.norm(block)
    else:
        W /= np.linalg.norm(W)
    return np.diag(W.sum(axis=1)) - W


@pytest.mark.parametrize("R", [2, 3, 5])
def test_vectorised_build_equals_naive_loop(R):
    u = np.random.default_rng(R).random((7, 9)).astype(np.float32)
    L = graph_laplacian(u, R=R, sigma=0.1)
    np.testing.assert_allclose(L.toarray(), naive_laplacian(u, R, 0.1), rtol=0, atol=5e-7)
    assert L.dtype == np.float32 and L.has_canonical_format


def test_stacks_slicewise_and_3d_equal_naive_loop():
    u = np.random.default_rng(7).random((3, 5, 6)).astype(np.float32)
    u[:, 0, 0], u[:, 0, 1] = 0.0, 1.0  # every slice spans the stack's range
    Ls = graph_laplacian(u, R=2, sigma=0.1, chunk_pixels=7)  # chunks cross slice boundaries
    np.testing.assert_allclose(Ls.toarray(), naive_laplacian(u, 2, 0.1), atol=5e-7)
    # slicewise: block diagonal, each block exactly the single-slice Laplacian
    m = 30
    dense = Ls.toarray()
    np.testing.assert_array_equal(dense[m:2 * m, m:2 * m], graph_laplacian(u[1], R=2, sigma=0.1).toarray())
    assert np.count_nonzero(dense[:m, m:]) == 0 and np.count_nonzero(dense[m:, :m]) == 0
    L3 = graph_laplacian(u, R=2, sigma=0.1, mode="3d", slice_half_width=1, chunk_pixels=11)
    np.testing.assert_allclose(L3.toarray(), naive_laplacian(u, 2, 0.1, 1, per_slice=False), atol=5e-7)


def test_symmetric_zero_row_sums_positive_semidefinite():
    for seed in range(3):
        u = np.random.default_rng(seed).random((12, 12))
        L = graph_laplacian(u, R=5, sigma=1e-3).toarray().astype(np.float64)
        assert np.array_equal(L, L.T)
        degree = np.diag(L)
        assert np.all(np.abs(L.sum(axis=1)) <= 1e-6 * degree.max())
        assert np.all(L - np.diag(degree) <= 0)  # off-diagonal weights are -w_ij <= 0
        assert np.linalg.eigvalsh(L).min() >= -1e-10


def test_window_size_and_degree_count():
    for R in (1, 2, 3, 5):
        assert len(window_offsets(R)) == (2 * R - 1) ** 2  # the zero offset included
    n = 21
    u = np.zeros((n, n), np.float32)
    u[:, n // 2:] = 1.0  # one edge; with sigma = inf-like every weight is 1 anyway
    for R in (2, 3, 5):
        L = graph_laplacian(u, R=R, sigma=1e9)
        i = (n // 2) * n + n // 2  # an interior pixel
        row = L.getrow(i)
        assert row.nnz - 1 == (2 * R - 1) ** 2 - 1  # neighbours, before weighting
        corner = L.getrow(0)
        assert corner.nnz - 1 == R * R - 1
        # all weights equal: L_ii / |L_ij| = number of neighbours
        off = row.toarray().ravel()
        assert off[i] / -off[i + 1] == pytest.approx((2 * R - 1) ** 2 - 1, rel=1e-5)


def test_weights_cut_edges_and_relative_sigma_is_scale_free():
    u = np.zeros((16, 16), np.float32)
    u[:, 8:] = 1.0
    L = graph_laplacian(u, R=3, sigma=1e-3).toarray()
    i, j = 5 * 16 + 7, 5 * 16 + 8  # neighbours across the edge
    assert abs(L[i, j]) < 1e-30 * abs(L[i, i - 1])  # exp(-1000): no coupling across the edge
    np.testing.assert_array_equal(graph_laplacian(u * 0.02 + 0.01, R=3, sigma=1e-3).toarray(), L)
    # absolute sigma: same weights when sigma scales with the squared range
    La = graph_laplacian(u * 0.02, R=3, sigma=1e-3 * 0.02 ** 2, relative=False).toarray()
    np.testing.assert_allclose(La, L, rtol=1e-5, atol=1e-12)


def test_operator_adjoint_norm_and_memory():
    u = np.random.default_rng(3).random((20, 24)).astype(np.float32)
    L = graph_laplacian(u, R=5, sigma=1e-2)
    op = GraphLaplacianOperator(L, u.shape)
    assert op.domain_shape == op.range_shape == (20, 24)
    assert adjoint_mismatch(op) < 1e-6
    x = np.random.default_rng(4).random(u.shape).astype(np.float32)
    np.testing.assert_allclose(op.forward(x).ravel(), L @ x.ravel(), rtol=1e-6)
    true = float(np.linalg.eigvalsh(L.toarray().astype(np.float64)).max())
    assert true <= op.norm() <= op.gershgorin_bound() * (1 + 1e-6)
    assert op.norm() <= 1.06 * true
    assert laplacian_nbytes(L) == L.data.nbytes + L.indices.nbytes + L.indptr.nbytes
    # a non-symmetric matrix keeps its transpose for the adjoint
    import scipy.sparse as sp

    A = sp.random(480, 480, density=0.02, random_state=0, format="csr", dtype=np.float32)
    op2 = GraphLaplacianOperator(A, (20, 24), symmetric=False)
    assert adjoint_mismatch(op2) < 1e-6


def test_bad_inputs():
    with pytest.raises(ValueError, match="2D image or a 3D stack"):
        graph_laplacian(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="sigma"):
        graph_laplacian(np.zeros((4, 4), np.float32), sigma=0.0)
    with pytest.raises(ValueError, match="R must be"):
        graph_laplacian(np.zeros((4, 4), np.float32), R=0)
    with pytest.raises(ValueError, match="mode"):
        graph_laplacian(np.zeros((2, 4, 4), np.float32), mode="volume")
    with pytest.raises(ValueError, match="expected"):
        GraphLaplacianOperator(graph_laplacian(np.zeros((4, 4), np.float32)), (5, 4))
    # a constant image: all weights 1 (no range to normalise by), still a valid Laplacian
    L = graph_laplacian(np.full((6, 6), 3.0, np.float32), R=2)
    assert np.allclose(L.toarray().sum(axis=1), 0, atol=1e-6)
