"""Gradient-regularised least squares (Tikhonov), lam fixed or by generalised cross-validation.

    min_x ||K x - y||^2 + lam_abs ||D x||^2        (D: forward-difference gradient, pixel units)

Convention for ``lam``: given for unit pixels, lam_abs = lam * voxel_size^2 (K scales with the
voxel size h, so this is the same problem for any h; it does not depend on the intensity scale).

Solver: CGLS on the stacked system [K; sqrt(lam_abs) D] x ~ [y; 0] (:func:`cgls_stacked`, a generic
routine for any pair of Operators; the registered ``cgls`` solver has no reusable inner routine and
no regulariser), started from the GCV step's projected solution (or 0), stopped when the normal
residual ||A^T(b - A x)|| / ||A^T b|| < ``tol`` or after ``iterations`` steps.

``lam: gcv`` (the default) - a projected GCV (as in hybrid Krylov methods, Chung, Nagy & O'Leary,
ETNA 28, 2008, extended to a general regulariser):
1. ``gcv_steps`` steps of Golub-Kahan bidiagonalisation of K started at y (U reorthogonalised, its
   coefficients kept in B_k, :func:`golub_kahan_tracked`): K V_k^T = U_{k+1}^T B_k, y = beta U_{k+1}^T e_1.
2. On span(V_k) the problem becomes min ||B_k z - beta e_1||^2 + lam ||D V_k z||^2 (exact: the
   data residual of x = V_k z equals the small one), with G_D = (D V_k)(D V_k)^T.
3. The weighted GCV function of that small problem,
       G(lam) = ||B_k z_lam - beta e_1||^2 / (k + 1 - omega * trace(H_lam))^2,
       H_lam = B_k (B_k^T B_k + lam G_D)^-1 B_k^T,
   is minimised over log(lam) (a grid of 241 points over 24 decades around the scale where both
   terms weigh alike, then Brent's method around the best grid point). omega = ``gcv_omega``
   (1: standard GCV; < 1 regularises less, the weighted GCV of Chung, Nagy & O'Leary).
4. CGLS on the full stacked system with that lam, from the projected solution, deflated
   (:class:`Deflation`) by the DEFLATION_RANK (8) Ritz vectors of N = K^T K + lam D^T D on span(V_k) with
   the largest Ritz values: the search directions are kept N-orthogonal to them at two (8, n) products per
   iteration, and CGLS no longer spends iterations on the part of the spectrum the projection already
   solved (the projected start alone only gives its value). The start's residuals, ||K^T y|| and N on the
   Ritz vectors follow from the bidiagonal relation (:class:`KrylovBasis`) with one more adjoint, so the
   search's projector calls are all the solve adds to one cold CGLS.
``lam: discrepancy``: the same projection, lam with ||K x_k - y|| = discrepancy_tau * ||e|| (||e|| from
metadata sigma / I0, else estimated: recon_cli.solvers.regularisation_parameter). If no lam reaches
the target (every residual of the projection is larger: model error above the noise level, or too
few steps) it falls back to GCV with a warning (info ``lam_fallback``).
``lam: auto``: ``auto_lam_factor`` (0.4) x the discrepancy lam. The discrepancy principle
over-smooths a quadratic regulariser: on the evaluation suite (benchmarks/results/suite.md) the
lam of best PSNR was 0.12-0.7x the discrepancy lam, while the residual it leaves is 0.36-0.94 of the
noise norm - a spread too wide for one tau (tau 0.8 already loses 4 dB on one case, where the
residual curve is flat near the noise floor), whereas PSNR is flat in log lam near its peak. The
factor was chosen on the suite's tuning cases (worst gap -0.19 dB there, tau 1.01) and reported on
its test cases; designs measured before it (tau 0.5-1.01, projected GCV, L-curve, UPRE and
quasi-optimality) are listed there.
Cost of either: ``gcv_steps`` (discrepancy / auto: until lam settles, LAM_SETTLED) forward/adjoint pairs
and gradients, one adjoint, then the CGLS solve.

Measured on the reference fan-beam geometry (60 views, 256^2, I0 = 1e5; PSNR of the full solve;
best = best of lam in {3, 10, 30, 100, 300}): COULE seed 2000: gcv lam 4.2 -> 29.65 dB,
discrepancy lam 95 -> 30.39 dB, best 30.45 dB (lam 30); seed 2001: 28.68 / 29.47 / 29.55 dB;
head sample: 31.04 / 32.66 / 32.82 dB. GCV estimates the *prediction* error and under-regularises
these few-view problems (a Hutchinson estimate of the full, unprojected GCV decreased all the way
down to lam = 3 on seed 2000, so the projection is not the cause); the discrepancy principle lands
within 0.2 dB of the best. GCV stays the default as in the graphLa paper.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from recon_cli.backend import array_module, to_numpy
from recon_cli.errors import DeviceError
from recon_cli.ops.finite_differences import Gradient
from recon_cli.ops.operator import Operator
from recon_cli.sinogram import Reconstruction, Sinogram
from recon_cli.solvers.mmgks import bidiagonalisation_arrays, discrepancy_lam, projected_solve
from recon_cli.solvers.regularisation_parameter import noise_norm
from recon_cli.solvers.algorithm import Algorithm, Halt, Stopwatch, TimedOperator, run
from recon_cli.solvers.registry import IterationState, register
from recon_cli.solvers.params.tikhonov import TikhonovParams  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- CGLS, stacked
class Deflation:
    """Deflated CG (Saad, Yeung, Erhel & Guyomarc'h, SIAM J. Sci. Comput. 21, 2000) on the normal matrix
    N = K^T K + lam D^T D by the span of r orthonormal rows ``W`` (r, n) float32 on the solver's xp.

    ``NW`` (r, n): N applied to each row of W; ``E`` (r, r) float64: W N W^T. Search directions are
    kept N-orthogonal to span(W) (:meth:`project`), so that, started from the Galerkin solution on
    span(W) (W r_0 = 0), CG only works on the rest of the spectrum. Cost per iteration: two (r, n)
    matrix-vector products. K W^T = U^T KW (``U`` (k+1, m) float32, ``KW`` (k+1, r) float64: W lies in a
    Golub-Kahan basis, :class:`KrylovBasis`), so a Galerkin correction needs no projector call.
    """

    def __init__(self, W, NW, E: np.ndarray, U, KW: np.ndarray):
        self.W, self.NW, self.U = W, NW, U
        self.E, self.KW = np.asarray(E, dtype=np.float64), np.asarray(KW, dtype=np.float64)

    def project(self, s):
        """s - W^T E^-1 (N W^T)^T s, in the shape of s (a new array)."""
        return s - self.correction(s).reshape(s.shape)

    def correction(self, s):
        """W^T E^-1 (N W^T)^T s (n,): the part of s that :meth:`project` removes."""
        return self.image(np.linalg.solve(self.E, self.coefficients(s, self.NW)))

    def coefficients(self, x, rows=None) -> np.ndarray:
        """W x (r,) float64 (or ``rows`` x): for x in span(W), its coordinates."""
        return np.asarray(to_numpy((self.W if rows is None else rows) @ x.reshape(-1)), dtype=np.float64)

    def image(self, c):
        """W^T c (n,) float32 for coordinates c (r,)."""
        return _on(self.W, c) @ self.W

    def forward(self, c):
        """K W^T c = U^T (KW c) (m,) float32."""
        return _on(self.U, self.KW @ np.asarray(c, dtype=np.float64)) @ self.U

    def normal(self, c):
        """N W^T c (n,) float32."""
        return _on(self.NW, c) @ self.NW


def _on(a, c):
    """Coefficients c (float64 numpy) as float32 on the array module of ``a``."""
    return array_module(a).asarray(np.asarray(c, dtype=np.float64).astype(np.float32))


class StackedCGLS(Algorithm):
    """CGLS for min ||K x - y||^2 + lam ||D x||^2 (lam >= 0, absolute), float32 on K.xp.

    Works on A = [K; sqrt(lam) D], b = [y; 0] without forming A. ``x0``: start (copied; its residuals cost a
    forward and an adjoint), or ``start``: {x, r1 (y - K x), s (A^T(b - A x)), atb (||K^T y||)} computed
    elsewhere (:meth:`KrylovBasis.galerkin_start`: no projector call). Stops when the normal residual
    ||A^T(b - Ax)|| / ||A^T b|| < ``tol`` or after ``iterations``. ``deflation``: see :class:`Deflation` (the
    start is then corrected to the Galerkin solution on its span). State {iteration, x, r1, r2 (the residual
    blocks), p, s, gamma, atb, history}; ``state``: continue from one.
    """

    def __init__(self, K: Operator, y, D: Operator, lam: float, *, x0=None, start: dict | None = None,
                 iterations: int = 200, tol: float = 1e-4, state: dict | None = None,
                 deflation: "Deflation | None" = None):
        xp = self.xp = K.xp
        self.K = K if isinstance(K, TimedOperator) else TimedOperator(K)
        self.D, self.max_iterations, self.tol = D, int(iterations), tol
        self.y = y = xp.asarray(y, dtype=np.float32).reshape(K.range_shape)
        self.s_lam = np.float32(math.sqrt(float(lam)))
        self.y_norm = math.sqrt(self._sq(y)) or 1.0
        self.hist = {"residual": [], "normal_residual": []}
        self.deflation = deflation
        self.atb = None  # reference for the normal residual: ||A^T b|| = ||K^T y||
        if state is not None:
            self.resume(state)
            if self.atb is None:  # a checkpoint written before atb was kept
                self.atb = math.sqrt(self._sq(self.K.adjoint(y))) or 1.0
            return
        Kt, s_lam = self.K, self.s_lam
        if start is not None:
            self.x = xp.array(start["x"], dtype=np.float32, copy=True).reshape(K.domain_shape)
            self.r1 = xp.array(start["r1"], dtype=np.float32, copy=True).reshape(K.range_shape)
            self.r2 = -s_lam * D.forward(self.x)
            self.s = xp.array(start["s"], dtype=np.float32, copy=True).reshape(K.domain_shape)
            self.atb = float(start["atb"]) or 1.0
        else:
            if x0 is None:
                self.x = xp.zeros(K.domain_shape, dtype=np.float32)
                self.r1 = y.copy()
                self.r2 = xp.zeros(D.range_shape, dtype=np.float32)
            else:
                self.x = xp.array(x0, dtype=np.float32, copy=True).reshape(K.domain_shape)
                self.r1 = y - Kt.forward(self.x)
                self.r2 = -s_lam * D.forward(self.x)
            s = Kt.adjoint(self.r1)
            s += s_lam * D.adjoint(self.r2)
            self.s = s
        if deflation is not None:
            self._galerkin_correction()
        self.gamma = self._sq(self.s)
        self.p = self.s.copy() if deflation is None else deflation.project(self.s)
        if self.atb is None:
            self.atb = math.sqrt(self._sq(Kt.adjoint(y))) or 1.0

    def _sq(self, v) -> float:
        return float(self.xp.vdot(v.ravel(), v.ravel()).real)

    def load_state(self, state: dict) -> None:
        def restored(key, shape):
            return self.xp.array(state[key], dtype=np.float32, copy=True).reshape(shape)

        self.x, self.p = restored("x", self.K.domain_shape), restored("p", self.K.domain_shape)
        self.r1, self.r2 = restored("r1", self.K.range_shape), restored("r2", self.D.range_shape)
        self.gamma = float(state["gamma"])
        self.hist = {k: [float(v) for v in state["history"][k]] for k in self.hist}
        if "atb" in state:
            self.atb = float(state["atb"])
        if "s" in state:
            self.s = restored("s", self.K.domain_shape)
        else:  # a checkpoint written before s was kept
            self.s = self.K.adjoint(self.r1) + self.s_lam * self.D.adjoint(self.r2)

    def _galerkin_correction(self) -> None:
        """x += W^T E^-1 W s: removes the residual's part in span(W), which deflated directions cannot
        reduce (rounding leaves ~1e-6 of it in the projected start, and it grows slowly); no projector call."""
        dfl = self.deflation
        mu = np.linalg.solve(dfl.E, dfl.coefficients(self.s))
        dx = dfl.image(mu).reshape(self.x.shape)
        self.x += dx
        self.r1 -= dfl.forward(mu).reshape(self.r1.shape)
        self.r2 -= self.s_lam * self.D.forward(dx)
        self.s = self.s - dfl.normal(mu).reshape(self.s.shape)

    def step(self, k: int):
        K, D, s_lam = self.K, self.D, self.s_lam
        q1 = K.forward(self.p)
        q2 = s_lam * D.forward(self.p)
        qq = self._sq(q1) + self._sq(q2)
        if qq == 0:
            return Halt("tol", completed=True)
        # (s, p) = gamma in exact CGLS; with deflation s keeps a rounding-level part in span(W) that p
        # lacks, and gamma / qq then over-steps (measured: divergence after ~100 iterations)
        sp = self.gamma if self.deflation is None else float(self.xp.vdot(self.s.ravel(), self.p.ravel()))
        alpha = np.float32(sp / qq)
        self.x += alpha * self.p
        self.r1 -= alpha * q1
        self.r2 -= alpha * q2
        s = K.adjoint(self.r1)
        s += s_lam * D.adjoint(self.r2)
        if self.deflation is not None and self.tol > 0 and self._sq(s) < (3.0 * self.tol * self.atb) ** 2:
            # near the stopping tolerance: clear the part in span(W) if it is a third of what is left
            ws = self.deflation.W @ s.reshape(-1)
            if float(self.xp.vdot(ws, ws)) > (self.tol * self.atb / 3.0) ** 2:
                self.s = s
                self._galerkin_correction()
                s = self.s
        gamma_new = self._sq(s)
        self.p *= np.float32(gamma_new / self.gamma) if self.gamma > 0 else np.float32(0.0)
        self.p += s
        if self.deflation is not None:
            self.p -= self.deflation.correction(s).reshape(self.p.shape)
        self.gamma, self.s = gamma_new, s
        self.hist["residual"].append(math.sqrt(self._sq(self.r1)) / self.y_norm)
        self.hist["normal_residual"].append(math.sqrt(self.gamma) / self.atb)
        return None

    def converged(self):
        return "tol" if self.tol > 0 and self.hist["normal_residual"][-1] < self.tol else None

    def report(self) -> IterationState:
        return IterationState(self.iteration, self.x, residual=self.hist["residual"][-1])

    def state(self) -> dict:
        return {"iteration": self.iteration, "x": self.x, "r1": self.r1, "r2": self.r2, "p": self.p,
                "s": self.s, "gamma": self.gamma, "atb": self.atb, "history": self.hist}


def cgls_stacked(K: Operator, y, D: Operator, lam: float, *, x0=None, start: dict | None = None,
                 iterations: int = 200, tol: float = 1e-4, callback=None, resume_state: dict | None = None,
                 context: dict | None = None, deflation: "Deflation | None" = None):
    """:class:`StackedCGLS` run by the driver. Returns (x, info): iterations, stopped ('tol' | 'iterations'
    | 'callback'), history {residual (||Kx - y|| / ||y||), normal_residual (||A^T(b - Ax)|| / ||A^T b||)},
    time_projector (s), residual, resumed_from (when resumed). ``x0`` / ``start``, ``deflation``: see
    :class:`StackedCGLS` (a resumed run needs the same deflation)."""
    alg = StackedCGLS(K, y, D, lam, x0=x0, start=start, iterations=iterations, tol=tol, state=resume_state,
                      deflation=deflation)
    record = run(alg, callback, context=context)
    hist = alg.hist
    info = {"iterations": record.iterations, "stopped": record.stopped, "history": hist,
            "time_projector": alg.K.seconds, "residual": hist["residual"][-1] if hist["residual"] else None}
    if record.resumed_from is not None:
        info["resumed_from"] = record.resumed_from
    return alg.x, info


#: lam discrepancy / auto: Golub-Kahan steps stop once the projected discrepancy lam of the last three
#: steps agrees within LAM_SETTLED (at least MIN_DISCREPANCY_STEPS, at most ``gcv_steps``). On the
#: evaluation suite's 12 cases 3 % settles in 12-19 steps with lam 0.86-1.09x the lam of 50 steps
#: (2 %: 12-26 steps, 0.90-1.01x; 5 %: 12-18 steps, but s07's lam 0.90x cost 0.15 dB there, past the
#: 0.5 dB target). The steps saved (up to 8 projector pairs on t03, 5 on t04) are a fifth to a third of a
#: whole solve on the cases where CGLS converges in 20-30 iterations.
MIN_DISCREPANCY_STEPS = 10
LAM_SETTLED = 0.03


# ----------------------------------------------------------------------------- GCV
def projected_gcv(B: np.ndarray, beta: float, G_D: np.ndarray, omega: float = 1.0, n_grid: int = 241,
                  decades: float = 12.0) -> dict:
    """Minimise the (weighted) GCV function of min ||B z - beta e1||^2 + lam z^T G_D z.

    ``B``: (k+1, k) bidiagonal; ``G_D``: (k, k) Gram matrix of the regulariser on the basis.
    Returns {lam, z, gcv, residual (||B z - beta e1||), trace, grid (lams), grid_gcv}.
    """
    kp1, k = B.shape
    BtB = B.T @ B
    e1 = np.zeros(kp1)
    e1[0] = beta
    Bte = B.T @ e1
    t_b, t_d = float(np.trace(BtB)), float(np.trace(G_D))
    scale = t_b / t_d if t_d > 0 else 1.0

    def evaluate(log_lam: float):
        lam = math.exp(log_lam)
        H = BtB + lam * G_D
        try:
            Hinv_Bt = np.linalg.solve(H, B.T)
        except np.linalg.LinAlgError:
            Hinv_Bt = np.linalg.lstsq(H, B.T, rcond=1e-13)[0]
        z = Hinv_Bt @ e1
        r = B @ z - e1
        trace = float(np.trace(B @ Hinv_Bt))
        denom = kp1 - omega * trace
        return float(r @ r) / (denom * denom), z, math.sqrt(float(r @ r)), trace

    logs = np.linspace(math.log(scale) - decades * math.log(10), math.log(scale) + decades * math.log(10), n_grid)
    values = np.array([evaluate(t)[0] for t in logs])
    i = int(np.argmin(values))
    lo, hi = logs[max(i - 1, 0)], logs[min(i + 1, n_grid - 1)]
    best = logs[i]
    if hi > lo:
        from scipy.optimize import minimize_scalar  # lazy: 0.3-1 s of import, only needed here

        res = minimize_scalar(lambda t: evaluate(t)[0], bounds=(lo, hi), method="bounded",
                              options={"xatol": 1e-4})
        if res.fun <= values[i]:
            best = float(res.x)
    g, z, rn, tr = evaluate(best)
    return {"lam": math.exp(best), "z": z, "gcv": g, "residual": rn, "trace": tr,
            "grid": np.exp(logs), "grid_gcv": values, "at_grid_edge": i in (0, n_grid - 1)}


class GradientGram:
    """The Gram matrix G_D = (D V)(D V)^T = V (D^T D) V^T (``G`` (steps, steps) float64) of a growing
    orthonormal basis V (rows v_j, (k, n)), one vector at a time (:meth:`extend`), so that a lam search and
    its rebuild compute it identically: one D^T D (``D.normal``) and one (j, n) matrix-vector product per
    vector (D^T D V itself is not kept)."""

    def __init__(self, D: Operator, steps: int, xp):
        self.D, self.k = D, 0
        self.Lv = xp.empty(tuple(D.domain_shape), dtype=np.float32)  # D^T D v_j, the current vector
        self.G = np.zeros((int(steps), int(steps)))

    def extend(self, V) -> np.ndarray:
        """Rows for the vectors V[k:] not seen yet; returns G_D of all of V, (len(V), len(V)) (a view)."""
        D, shape = self.D, self.D.domain_shape
        for j in range(self.k, V.shape[0]):
            D.normal(V[j].reshape(shape), out=self.Lv)
            row = np.asarray(to_numpy(V[:j + 1] @ self.Lv.reshape(-1)), dtype=np.float64)
            self.G[:j + 1, j] = row
            self.G[j, :j + 1] = row
        self.k = V.shape[0]
        return self.G[:self.k, :self.k]


def projected_discrepancy_lam(B: np.ndarray, beta: float, G: np.ndarray, target: float,
                              span: float = 1e14) -> tuple[float, bool]:
    """:func:`recon_cli.solvers.mmgks.discrepancy_lam` of the bidiagonal projection (G_K = B^T B,
    h = beta B^T e1, ||y||^2 = beta^2; ``B`` (k+1, k), ``G`` (k, k)): (lam, reached), the same root and bracket.

    The residual in closed form: with B^T B = L L^T and L^-1 G L^-T = Q diag(d) Q^T,
    ||B z(lam) - beta e1||^2 = r0^2 + sum_i g_i^2 (lam d_i / (1 + lam d_i))^2 (g = Q^T L^-1 h, r0: the residual
    at lam = 0), O(k) per evaluation instead of a factorisation. Falls back to discrepancy_lam when B^T B is
    not numerically positive definite."""
    BtB = B.T @ B
    h = beta * B[0]  # B^T (beta e1)
    try:
        Li = np.linalg.inv(np.linalg.cholesky(BtB))  # L^-1 (k, k)
    except np.linalg.LinAlgError:
        return discrepancy_lam(BtB, h, beta * beta, G, target, span=span)
    Li_h = Li @ h
    r = B @ (Li.T @ Li_h)  # B z(0) - beta e1
    r[0] -= beta
    r0_sq = float(r @ r)
    M = Li @ G @ Li.T
    d, Q = np.linalg.eigh(0.5 * (M + M.T))
    d = np.maximum(d, 0.0)
    g_sq = (Q.T @ Li_h) ** 2
    t_k, t_l = float(np.trace(BtB)), float(np.trace(G))
    scale = t_k / t_l if t_l > 0 else 1.0
    lo, hi = math.log(scale / span), math.log(scale * span)
    tt = target * target

    def f(log_lam: float) -> float:
        q = math.exp(log_lam) * d
        q /= 1.0 + q
        return (r0_sq + float(g_sq @ (q * q))) / tt - 1.0

    if f(lo) >= 0:
        return math.exp(lo), False
    if f(hi) <= 0:
        return math.exp(hi), False
    from scipy.optimize import brentq

    return math.exp(brentq(f, lo, hi, xtol=1e-6, rtol=1e-10, maxiter=200)), True


def golub_kahan_tracked(K: Operator, y, steps: int, *, stop=None, on_vector=None):
    """Golub-Kahan bidiagonalisation of K started at y with U reorthogonalised and V not, the removed
    coefficients kept, so that both relations hold to rounding without V being exactly orthonormal:
    K V^T = U^T B (B (k+1, k): bidiagonal plus the reorthogonalisation coefficients above the diagonal) and
    K^T U^T = V^T Bv^T + w e_k^T (``Bv`` (k+1, k) lower bidiagonal: alpha_j on the diagonal, B's subdiagonal).
    U keeps orthonormal rows (float32), V loses orthogonality only to about eps cond(B) (Simon & Zha, SIAM J.
    Sci. Comput. 21, 2000), and reading U alone per step halves the memory traffic of full
    reorthogonalisation (measured on the suite: V orthonormal to 1e-6 after 40 steps, lam within 5e-5 of
    the fully reorthogonalised one). Returns (U, B, Bv, V, beta); ``stop(k, B[:k+1, :k], V[:k], beta)`` after
    step k ends it when True; ``on_vector(V[:k+1])`` is called as soon as v_k is stored."""
    xp = K.xp
    beta, U, V, B, tmp, tmp_u = bidiagonalisation_arrays(K, y, steps)
    alphas = np.zeros(steps)
    k_done = 0
    for k in range(steps):
        v = K.adjoint(U[k].reshape(K.range_shape)).reshape(-1).astype(np.float32, copy=False)
        if k > 0:
            v -= xp.multiply(V[k - 1], np.float32(B[k, k - 1]), out=tmp)
        alpha = float(xp.linalg.norm(v))
        if alpha <= 1e-12 * beta:
            break
        xp.divide(v, np.float32(alpha), out=V[k])
        alphas[k] = alpha
        if on_vector is not None:
            on_vector(V[:k + 1])
        u = K.forward(V[k].reshape(K.domain_shape)).reshape(-1).astype(np.float32, copy=False)
        u -= xp.multiply(U[k], np.float32(alpha), out=tmp_u)
        Q = U[:k + 1]
        before = float(xp.linalg.norm(u))
        c = np.asarray(to_numpy(Q @ u), dtype=np.float64)
        u -= Q.T @ xp.asarray(c.astype(np.float32))
        gamma = float(xp.linalg.norm(u))
        if gamma < 0.5 * before:
            c2 = np.asarray(to_numpy(Q @ u), dtype=np.float64)
            u -= Q.T @ xp.asarray(c2.astype(np.float32))
            c += c2
            gamma = float(xp.linalg.norm(u))
        B[:k + 1, k] = c
        B[k, k] += alpha
        k_done = k + 1
        if gamma <= 1e-12 * beta:
            break
        xp.divide(u, np.float32(gamma), out=U[k + 1])
        B[k + 1, k] = gamma
        if stop is not None and stop(k_done, B[:k_done + 1, :k_done], V[:k_done], beta):
            break
    Bv = np.zeros((k_done + 1, k_done))
    Bv[np.arange(k_done), np.arange(k_done)] = alphas[:k_done]
    Bv[np.arange(1, k_done + 1), np.arange(k_done)] = np.diag(B[:k_done + 1, :k_done], -1)
    return U[:k_done + 1], B[:k_done + 1, :k_done], Bv, V[:k_done], beta


class KrylovBasis:
    """The Golub-Kahan projection of the lam search: ``steps`` steps of :func:`golub_kahan_tracked` of K
    started at y (K V^T = U^T B, K^T U^T = V^T Bv^T + w e_k^T, y = beta u_0; U (k+1, m), B and Bv (k+1, k),
    V (k, n)) with the regulariser on V (``G`` = G_D, :class:`GradientGram`). ``stop(k, B, beta, G_D)`` may
    end it early.

    At a chosen lam it gives the CGLS its Galerkin start (:meth:`galerkin_start`) and deflation
    (:meth:`deflation`) without projector calls but one adjoint (w = K^T u_k - B[k, k-1] v_{k-1}), from
    K^T K V^T = V^T Bv^T B + B[k, k-1] w e_{k-1}^T and (U orthonormal) V N V^T = B^T B + lam G_D.
    """

    def __init__(self, K: Operator, y, D: Operator, steps: int, stop=None):
        self.K, self.D = K, D
        gram = GradientGram(D, steps, K.xp)

        def settled(k: int, B, V, beta: float) -> bool:
            return stop is not None and bool(stop(k, B, beta, gram.G[:k, :k]))

        self.U, self.B, self.Bv, self.V, self.beta = golub_kahan_tracked(K, y, int(steps), stop=settled,
                                                                         on_vector=gram.extend)
        self.G = gram.extend(self.V).copy()
        self.steps = int(self.V.shape[0])
        self._w = None

    @property
    def w(self):
        """B[k, k-1] (K^T u_k - B[k, k-1] v_{k-1}) (n,) float32 (one adjoint, computed once), or None if
        the bidiagonalisation broke down (B[k, k-1] = 0)."""
        k, b = self.steps, float(self.B[self.steps, self.steps - 1])
        if self._w is None and b != 0.0:
            w = self.K.adjoint(self.U[k].reshape(self.K.range_shape)).reshape(-1).astype(np.float32, copy=False)
            w -= np.float32(b) * self.V[k - 1]
            w *= np.float32(b)
            self._w = w
        return self._w

    def galerkin_start(self, z: np.ndarray, lam: float, y) -> dict:
        """The CGLS state at x = V^T z (z: coordinates (k,), e.g. the projected solution at ``lam``):
        {x (domain), r1 = y - K x = y - U^T B z (range), s = K^T y - N x (domain), atb = ||K^T y||}, with
        K^T y = beta Bv[0, 0] v_0 and N V^T from the relations above."""
        K, V, B = self.K, self.V, self.B
        k = self.steps
        x, Nx = _on(V, np.stack([z, self.Bv.T @ (B @ z)])) @ V  # V^T z and V^T Bv^T B z in one pass over V
        x = x.reshape(K.domain_shape)
        r1 = y.reshape(-1) - _on(self.U, B @ z) @ self.U
        if self.w is not None:
            Nx += np.float32(z[k - 1]) * self.w
        Nx += np.float32(lam) * self.D.normal(x).reshape(-1)
        atb = abs(self.beta * float(self.Bv[0, 0]))
        s = np.float32(atb) * V[0] - Nx
        return {"x": x, "r1": r1.reshape(K.range_shape), "s": s.reshape(K.domain_shape), "atb": atb}

    def deflation(self, lam: float, rank: int | None = None) -> Deflation:
        """:class:`Deflation` of the stacked CGLS at ``lam`` (absolute) by the ``rank`` (default
        DEFLATION_RANK) Ritz vectors of N on span(V) with the largest Ritz values: W = Y^T V, where
        E_V = B^T B + lam G_D = Y diag Y^T (W N W^T = Y^T E_V Y), and
        N W^T = V^T Bv^T B Y + B[k, k-1] w Y[k-1] + lam D^T D W^T: one pass over V and r gradients."""
        V, B, shape = self.V, self.B, self.D.domain_shape
        k = self.steps
        BtB = B.T @ B
        E = BtB + lam * self.G
        _, Y = np.linalg.eigh(E)
        Y = Y[:, ::-1][:, :min(int(rank or DEFLATION_RANK), k)]  # (k, r), largest first
        r = Y.shape[1]
        WN = _on(V, np.concatenate([Y.T, Y.T @ (B.T @ self.Bv)])) @ V  # rows: W, then Y^T B^T Bv V
        W, NW = WN[:r], WN[r:]
        Lw = self.K.xp.empty(shape, dtype=np.float32)
        lam32 = np.float32(lam)
        for i in range(r):
            self.D.normal(W[i].reshape(shape), out=Lw)
            Lw *= lam32
            NW[i] += Lw.reshape(-1)
            if self.w is not None:
                NW[i] += np.float32(Y[k - 1, i]) * self.w
        return Deflation(W, NW, Y.T @ E @ Y, self.U, B @ Y)


#: Rank of the CGLS deflation: the Ritz vectors of N with the largest Ritz values on the search's basis
#: (12-19 vectors on the evaluation suite). 8 keep the deflated CGLS within 0-2 iterations of the whole
#: basis on all 16 cases (s07, t04, t07, t02, t06, s03: the same), 6 cost up to 3 more, 4 up to 2 on s07;
#: each iteration reads W and N W^T once, which on 256^2 grids is as much memory traffic as a projection.
DEFLATION_RANK = 8


def projected_lam(K: Operator, y, D: Operator, steps: int = 40, *, method: str = "gcv", omega: float = 1.0,
                  target: float | None = None, lam_factor: float = 1.0, deflate: bool = False) -> dict:
    """lam_abs chosen on the Golub-Kahan projection (module docstring), with the projected solution
    x_k = V_k^T z (the CGLS warm start).

    ``method``: 'gcv' (weighted GCV with ``omega``) or 'discrepancy' (||K x_k - y|| = ``target``; then
    lam_abs = ``lam_factor`` x that lam when the target was reached, and x_k is solved at it).
    Returns {lam_abs, x (K.domain_shape), steps (done), residual_norm, time, and for gcv: trace, gcv,
    at_grid_edge; for discrepancy: reached; with ``deflate``: start (:meth:`KrylovBasis.galerkin_start` at x)
    and deflation (:meth:`KrylovBasis.deflation` at lam_abs)}.
    """
    clock = Stopwatch()
    y = K.xp.asarray(y, dtype=np.float32)
    lams: list[float] = []

    def settled(k: int, B, beta: float, G_D) -> bool:
        """discrepancy: stop once the projected lams of the last three steps agree within LAM_SETTLED."""
        if method != "discrepancy" or k < MIN_DISCREPANCY_STEPS:
            return False
        lam_k, reached = projected_discrepancy_lam(B, beta, G_D, float(target))
        lams.append(lam_k if reached else math.nan)
        return len(lams) >= 3 and all(math.isfinite(v) for v in lams[-3:]) and \
            max(lams[-3:]) <= (1.0 + LAM_SETTLED) * min(lams[-3:])

    basis = KrylovBasis(K, y, D, int(steps), stop=settled)
    B, beta, G_D = basis.B, basis.beta, basis.G
    out: dict = {"steps": basis.steps}
    e1 = np.zeros(B.shape[0])
    e1[0] = beta
    if method == "gcv":
        res = projected_gcv(B, beta, G_D, omega=omega)
        lam, z = res["lam"], res["z"]
        out.update(trace=res["trace"], gcv=res["gcv"], at_grid_edge=bool(res["at_grid_edge"]))
    elif method == "discrepancy":
        if not (target is not None and target > 0):
            raise ValueError("the discrepancy principle needs a positive target residual")
        lam, reached = projected_discrepancy_lam(B, beta, G_D, float(target))
        out.update(reached=bool(reached), lam_discrepancy_abs=float(lam))
        if reached:
            lam *= float(lam_factor)
        z = projected_solve(B.T @ B, B.T @ e1, G_D, lam)
    else:
        raise ValueError(f"unknown lam method {method!r}")
    out["residual_norm"] = float(np.linalg.norm(B @ z - e1))
    out["lam_abs"] = float(lam)
    if deflate:
        out["start"] = basis.galerkin_start(z, float(lam), y)
        out["x"] = out["start"]["x"]
        out["deflation"] = basis.deflation(float(lam))
    else:
        out["x"] = (_on(basis.V, z) @ basis.V).reshape(K.domain_shape)
    out["time"] = clock.seconds()
    return out


def rebuild_deflation(K: Operator, y, D: Operator, steps: int, lam: float, rank: int | None = None) -> Deflation:
    """The deflation (of ``rank``) of a run that chose lam on ``steps`` Golub-Kahan steps, recomputed
    bit-identically (the same steps, the same per-vector :class:`GradientGram`) for a resumed run."""
    return KrylovBasis(K, K.xp.asarray(y, dtype=np.float32), D, int(steps)).deflation(float(lam), rank)


# ----------------------------------------------------------------------------- the solver
def choose_lam_tikhonov(op: Operator, y, D: Operator, sino: Sinogram, params: TikhonovParams):
    """(lam_abs, CGLS start or None, record for info, :class:`Deflation` or None) for ``params.lam`` (a
    number, gcv, discrepancy, auto); the start (:meth:`KrylovBasis.galerkin_start`) and the deflation come
    from the Golub-Kahan projection."""
    h2 = float(sino.grid.voxel_size) ** 2
    extra: dict = {}
    method = "discrepancy" if params.lam == "auto" else params.lam
    if method not in ("gcv", "discrepancy"):
        return float(params.lam) * h2, None, extra, None
    target = None
    if method == "discrepancy":
        e_norm, source = noise_norm(y, sino.metadata)
        target = float(params.discrepancy_tau) * e_norm
        extra.update(noise_norm=e_norm, noise_source=source, discrepancy_target=target)
    factor = float(params.auto_lam_factor) if params.lam == "auto" else 1.0
    g = projected_lam(op, y, D, steps=params.gcv_steps, method=method, omega=params.gcv_omega,
                      target=target, lam_factor=factor, deflate=True)
    if method == "discrepancy" and not g["reached"]:
        # the target lies below every residual of the projection (model error above the noise, or
        # too few steps): lam -> 0 would be unregularised CGLS, so use GCV instead
        log.warning("tikhonov lam discrepancy: target residual %.4g not reachable on %d Golub-Kahan "
                    "steps (residual %.4g); using GCV", target, g["steps"], g["residual_norm"])
        g = projected_lam(op, y, D, steps=params.gcv_steps, method="gcv", omega=params.gcv_omega, deflate=True)
        g["reached"] = False
        extra["lam_fallback"] = "gcv (discrepancy target not reachable)"
    extra.update(lam_method=f"{method} (projected on {g['steps']} Golub-Kahan steps)",
                 lam_projection_steps=g["steps"], time_lam_search=g["time"])
    if "trace" in g:
        extra.update(gcv_omega=float(params.gcv_omega), gcv_trace=g["trace"], gcv_value=g["gcv"],
                     gcv_at_grid_edge=g["at_grid_edge"])
    if method == "discrepancy":
        extra.update(lam_target_reached=g["reached"])
    if params.lam == "auto" and g["reached"]:
        extra.update(lam_discrepancy=g["lam_discrepancy_abs"] / h2, auto_lam_factor=factor)
        extra["lam_method"] = f"auto: {factor:g} x the {extra['lam_method']}"
    extra.update(deflation_steps=int(g["steps"]), deflation_rank=int(g["deflation"].W.shape[0]))
    return g["lam_abs"], g["start"], extra, g["deflation"]


#: Arrays held at the peak of a lam gcv / discrepancy / auto run with the default gcv_steps (40): the
#: Golub-Kahan bases V (40 image-sized) and U (41 sinogram-sized, kept by the deflation), the deflation's
#: W and N W^T (2 x DEFLATION_RANK), the CGLS state (x, p, s, D-residual: 5) and a few work arrays
#: (tracemalloc peak 61-67 image-sized arrays + 45 sinogram-sized at 64^2-256^2, lam auto and gcv).
TIKHONOV_STATE_ARRAYS = (70, 45)


@register("tikhonov", TikhonovParams, state_arrays=TIKHONOV_STATE_ARRAYS)
def solve(op: Operator, sino: Sinogram, params: TikhonovParams, callback=None, *,
          resume_state: dict | None = None) -> Reconstruction:
    """Gradient-regularised least squares of ``sino`` on ``op``'s grid (1/mm).

    Restartable: the callback's ``extra['state']`` is :class:`StackedCGLS`'s plus ``lam_abs`` and
    ``lam_search`` (the lam record); ``resume_state`` continues with that lam, without choosing again.
    """
    if not getattr(op, "exact_adjoint", True):
        raise DeviceError(f"tikhonov (CGLS) needs a projector with an exact adjoint, and {type(op).__name__}'s "
                          "is not one (it diverges there); run it with --device cpu", field="device")
    clock = Stopwatch()
    xp = op.xp
    y = xp.asarray(sino.data, dtype=np.float32).reshape(op.range_shape)
    D = Gradient(tuple(op.domain_shape), mode=params.mode, xp=xp)
    h2 = float(sino.grid.voxel_size) ** 2
    if resume_state is None:
        lam_abs, start, extra, deflation = choose_lam_tikhonov(op, y, D, sino, params)
    else:
        lam_abs, start, extra = float(resume_state["lam_abs"]), None, dict(resume_state.get("lam_search") or {})
        # a record written before deflation_steps held the steps in deflation_rank (the whole basis)
        steps = int(extra.get("deflation_steps") or extra.get("deflation_rank") or 0)
        rank = int(extra.get("deflation_rank") or 0)
        deflation = rebuild_deflation(op, y, D, steps, lam_abs, rank) if steps else None
    x, info = cgls_stacked(op, y, D, lam_abs, start=start, iterations=params.iterations, tol=params.tol,
                           callback=callback, resume_state=resume_state, deflation=deflation,
                           context={"lam_abs": lam_abs, "lam_search": dict(extra)})
    if params.nonnegative:
        xp.maximum(x, 0, out=x)
    if extra.get("discrepancy_target"):
        extra["discrepancy_ratio"] = info["residual"] * float(xp.linalg.norm(y.ravel())) / extra["discrepancy_target"]
    out = {"iterations": info["iterations"], "history": info["history"], "stopped": info["stopped"],
           "residual": info["residual"], "time_projector": info["time_projector"],
           "lam": lam_abs / h2, "lam_abs": lam_abs, "lam_units": "unit pixels (lam_abs = lam * voxel_size^2)",
           **extra, "time_total": clock.seconds()}
    if "resumed_from" in info:
        out["resumed_from"] = info["resumed_from"]
    return Reconstruction(volume=x, info=out)
