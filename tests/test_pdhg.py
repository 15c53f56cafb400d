"""The Chambolle-Pock core and its proximal maps: projections, agreement with CVXPY, the gap, x >= 0."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recon_cli.geometry import VolumeGrid, parallel_beam_geometry
from recon_cli.ops.finite_differences import Gradient
from recon_cli.ops.prox import (group_magnitude, project_l2_balls, project_linf_box, project_nonnegative,
                                prox_l2_data_conjugate)
from recon_cli.phantoms import shepp_logan
from recon_cli.projectors.astra_matrix import AstraMatrixProjector
from recon_cli.solvers.pdhg import pdhg, step_sizes

N = 24
LAM = 0.05  # absolute (mm), a well-regularised value for the problem below


# ----------------------------------------------------------------------------- proximal maps
def test_project_l2_balls_matches_pointwise_formula():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((2, 7, 9)).astype(np.float32)
    radius = rng.uniform(0.0, 1.5, (7, 9)).astype(np.float32)
    radius[0, 0] = 0.0
    expected = s.astype(np.float64).copy()
    for i in range(7):
        for j in range(9):
            v = expected[:, i, j]
            n = np.linalg.norm(v)  # the magnitude, not its square
            if n > radius[i, j]:
                expected[:, i, j] = v * (radius[i, j] / n) if n > 0 else 0
    out = project_l2_balls(s, radius)
    assert out is s  # in place
    np.testing.assert_allclose(s, expected, rtol=1e-6, atol=1e-7)
    assert np.all(s[:, 0, 0] == 0)
    assert np.all(group_magnitude(s) <= radius * (1 + 1e-6) + 1e-7)


def test_project_l2_balls_scalar_radius_is_the_nearest_point_and_idempotent():
    rng = np.random.default_rng(1)
    s = (3 * rng.standard_normal((3, 5, 6))).astype(np.float32)
    orig = s.copy()
    p = project_l2_balls(s.copy(), 1.0)
    np.testing.assert_allclose(project_l2_balls(p.copy(), 1.0), p, rtol=1e-6)
    # no other point of the ball is closer: compare with random feasible points
    for _ in range(50):
        cand = rng.standard_normal(orig.shape).astype(np.float32)
        cand = project_l2_balls(cand, 1.0)
        assert np.all(np.sum((orig - p) ** 2, axis=0) <= np.sum((orig - cand) ** 2, axis=0) + 1e-5)
    inside = group_magnitude(orig) <= 1.0
    np.testing.assert_array_equal(p[:, inside], orig[:, inside])


def test_project_linf_box_and_nonnegative():
    rng = np.random.default_rng(2)
    s = rng.standard_normal((2, 4, 5)).astype(np.float32)
    r = rng.uniform(0, 1, (4, 5)).astype(np.float32)
    np.testing.assert_array_equal(project_linf_box(s.copy(), r), np.clip(s, -r[None], r[None]))
    np.testing.assert_array_equal(project_linf_box(s.copy(), 0.3), np.clip(s, -0.3, 0.3))
    np.testing.assert_array_equal(project_nonnegative(s.copy()), np.maximum(s, 0))


def test_prox_of_data_conjugate():
    q = np.array([1.0, -2.0, 3.0], np.float32)
    y = np.array([0.5, 0.5, -1.0], np.float32)
    np.testing.assert_allclose(prox_l2_data_conjugate(q.copy(), y, 0.5), (q - 0.5 * y) / 1.5, rtol=1e-6)


# ----------------------------------------------------------------------------- a small CT problem
@pytest.fixture(scope="module")
def problem():
    geometry = parallel_beam_geometry(30, detector_count=36, detector_spacing=1.0)
    grid = VolumeGrid((N, N), 1.0)
    K = AstraMatrixProjector(geometry, grid, use_cache=False)
    x_true = shepp_logan(N)
    y = K.forward(x_true)
    rng = np.random.default_rng(0)
    y = (y + 0.01 * float(np.abs(y).max()) * rng.standard_normal(y.shape)).astype(np.float32)
    return K, y


def _gradient_matrices(shape):
    """Sparse matrices of D's components, from the operator applied to the unit vectors."""
    D = Gradient(shape)
    n = int(np.prod(shape))
    eye = np.eye(n, dtype=np.float32)
    cols = np.stack([D.forward(eye[i].reshape(shape)).reshape(D.range_shape[0], -1) for i in range(n)], axis=-1)
    return [sp.csr_matrix(cols[k].astype(np.float64)) for k in range(cols.shape[0])]


def _cvxpy_solution(K, y, lam, weights=None, isotropic=True, nonnegative=True):
    cp = pytest.importorskip("cvxpy")
    shape = K.domain_shape
    n = int(np.prod(shape))
    Dy, Dx = _gradient_matrices(shape)
    A = K.matrix.astype(np.float64)
    x = cp.Variable(n)
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64).ravel()
    if isotropic:
        reg = cp.sum(cp.multiply(w, cp.norm(cp.vstack([Dy @ x, Dx @ x]), 2, axis=0)))
    else:
        reg = cp.sum(cp.multiply(w, cp.abs(Dy @ x))) + cp.sum(cp.multiply(w, cp.abs(Dx @ x)))
    objective = 0.5 * cp.sum_squares(A @ x - y.ravel().astype(np.float64)) + lam * reg
    problem = cp.Problem(cp.Minimize(objective), [x >= 0] if nonnegative else [])
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    assert problem.status == "optimal"
    return x.value.reshape(shape), float(problem.value)


# Tolerances: ||x - x_cvx||_inf <= 5e-4 * max(x_cvx), objective within 5e-6 (relative). Measured after
# 2000 iterations: x 4.8e-5 / 1.7e-6 / 4.5e-6 / 4.8e-5, objective 4.5e-7 / 6.4e-8 / 2.0e-7 / 5.5e-7
# (isotropic, anisotropic, weighted, free sign); gap < 1e-4 after 370-450 iterations.
X_TOL, OBJ_TOL = 5e-4, 5e-6


@pytest.mark.parametrize("isotropic, nonnegative, weighted", [
    (True, True, False), (False, True, False), (True, True, True), (True, False, False)])
def test_pdhg_matches_cvxpy(problem, isotropic, nonnegative, weighted):
    K, y = problem
    B = Gradient(K.domain_shape)
    weights = None
    if weighted:
        weights = np.random.default_rng(3).uniform(0.05, 1.0, K.domain_shape).astype(np.float32)
    x_ref, p_ref = _cvxpy_solution(K, y, LAM, weights, isotropic, nonnegative)
    x, info = pdhg(K, y, B, LAM, weights, isotropic=isotropic, nonnegative=nonnegative, max_iter=2000)
    assert x.dtype == np.float32 and x.shape == K.domain_shape
    err = float(np.abs(x - x_ref).max()) / float(np.abs(x_ref).max())
    rel_obj = (info["objective"] - p_ref) / p_ref
    assert err < X_TOL, err
    assert -1e-6 < rel_obj < OBJ_TOL, rel_obj  # never below the true minimum (up to float32)
    assert info["rel_gap"] < 1e-3
    if nonnegative:
        assert float(x.min()) >= 0.0


def test_gap_goes_to_zero_and_stops_the_solver(problem):
    K, y = problem
    x, info = pdhg(K, y, Gradient(K.domain_shape), LAM, max_iter=5000, tol_gap=1e-4, gap_every=10)
    assert info["stopped"] == "gap"
    assert info["iterations"] < 5000
    gaps = np.array(info["history"]["gap"])
    assert np.all(gaps > -1e-6 * info["objective"])  # a valid gap is non-negative (up to rounding)
    assert gaps[-1] / info["objective"] < 1e-4
    assert gaps[-1] < 1e-2 * gaps[0]


def test_every_iterate_is_nonnegative_and_callback_stops(problem):
    K, y = problem
    seen = []

    def callback(state):
        seen.append(float(state.x.min()))
        assert state.objective is not None and state.residual is not None
        return state.iteration >= 37

    x, info = pdhg(K, y, Gradient(K.domain_shape), LAM, max_iter=200, callback=callback)
    assert info["stopped"] == "callback" and info["iterations"] == 37 and len(seen) == 37
    assert min(seen) >= 0.0
    # without the constraint the same problem does go negative somewhere
    x_free, _ = pdhg(K, y, Gradient(K.domain_shape), LAM, nonnegative=False, max_iter=200)
    assert float(x_free.min()) < 0.0


def test_relative_change_stop_and_warm_start(problem):
    K, y = problem
    B = Gradient(K.domain_shape)
    x1, info1, dual = pdhg(K, y, B, LAM, max_iter=3000, tol_rel_change=1e-6, return_dual=True)
    assert info1["stopped"] == "rel_change"
    assert info1["history"]["rel_change"][-1] < 1e-6
    # warm start from the primal-dual pair: continues where it stopped; a cold start is far off
    x2, info2 = pdhg(K, y, B, LAM, x0=x1, dual0=dual, max_iter=10)
    _, cold = pdhg(K, y, B, LAM, max_iter=10)
    assert info2["rel_gap"] < 1.2 * info1["rel_gap"] < 1e-2 * cold["rel_gap"]
    assert float(np.abs(x2 - x1).max()) < 1e-3 * float(x1.max())


def test_residual_history_and_timings(problem):
    K, y = problem
    x, info = pdhg(K, y, Gradient(K.domain_shape), LAM, max_iter=50, record_every=5, gap_every=25)
    h = info["history"]
    assert len(h["objective"]) == 10 and h["gap_iteration"] == [25, 50]
    np.testing.assert_allclose(h["residual"][-1], np.linalg.norm(K.forward(x) - y) / np.linalg.norm(y),
                               rtol=1e-4)
    assert 0 < info["time_projector"] <= info["time_total"]


def test_step_sizes_balance_the_blocks(problem):
    K, _ = problem
    B = Gradient(K.domain_shape)
    st = step_sizes(K, B, step_ratio=1.0)
    assert isinstance(st["tau"], float) and isinstance(st["sigma_B"], float)
    # tau sigma ||[K; cB]||^2 < 1 with c^2 = sigma_B / sigma
    c2 = st["sigma_B"] / st["sigma"]
    assert st["tau"] * st["sigma"] * (st["norm_K"] ** 2 + c2 * st["norm_B"] ** 2) < 1.0
    np.testing.assert_allclose(c2 * st["norm_B"] ** 2, st["norm_K"] ** 2, rtol=1e-12)


def test_bad_inputs_raise(problem):
    K, y = problem
    B = Gradient(K.domain_shape)
    with pytest.raises(ValueError, match="lam"):
        pdhg(K, y, B, -1.0)
    with pytest.raises(ValueError, match="data shape"):
        pdhg(K, y[:-1], B, LAM)
    with pytest.raises(ValueError, match="weights"):
        pdhg(K, y, B, LAM, np.ones((3, 3), np.float32))
    with pytest.raises(ValueError, match="domain"):
        pdhg(K, y, Gradient((N + 1, N)), LAM)


class _SparseOperator:
    """A plain-vector operator from a SciPy matrix (like a graph Laplacian): (ny, nx) -> (m,)."""

    xp = np

    def __init__(self, matrix, shape):
        from recon_cli.ops.operator import Operator

        class Op(Operator):
            domain_shape, range_shape = tuple(shape), (matrix.shape[0],)

            def forward(self, x):
                return (matrix @ x.ravel()).astype(np.float32)

            def adjoint(self, y):
                return (matrix.T @ y).astype(np.float32).reshape(shape)

        self.op = Op()


def test_pdhg_with_a_vector_valued_operator_matches_cvxpy(problem):
    """B with a plain-vector range (as a graph Laplacian): anisotropic l1 of B x, with weights."""
    cp = pytest.importorskip("cvxpy")
    K, y = problem
    shape = K.domain_shape
    Dy, Dx = _gradient_matrices(shape)
    L = sp.vstack([Dy, Dx]).tocsr().astype(np.float32)  # a 2N x N matrix
    B = _SparseOperator(L, shape).op
    w = np.random.default_rng(5).uniform(0.2, 1.0, L.shape[0]).astype(np.float32)
    x = cp.Variable(int(np.prod(shape)))
    obj = 0.5 * cp.sum_squares(K.matrix.astype(np.float64) @ x - y.ravel()) + \
        LAM * cp.sum(cp.multiply(w, cp.abs(L.astype(np.float64) @ x)))
    prob = cp.Problem(cp.Minimize(obj), [x >= 0])
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    with pytest.raises(ValueError, match="isotropic"):
        pdhg(K, y, B, LAM, w, isotropic=True)
    xs, info = pdhg(K, y, B, LAM, w, isotropic=False, max_iter=2000)
    x_ref = x.value.reshape(shape)
    assert float(np.abs(xs - x_ref).max()) / float(x_ref.max()) < X_TOL
    assert abs(info["objective"] - prob.value) / prob.value < OBJ_TOL
