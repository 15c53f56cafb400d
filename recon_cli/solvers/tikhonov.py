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
1. ``gcv_steps`` steps of Golub-Kahan bidiagonalisation of K started at y (full
   reorthogonalisation): K V_k^T = U_{k+1}^T B_k, y = beta U_{k+1}^T e_1 (recon_cli.solvers.mmgks).
2. On span(V_k) the problem becomes min ||B_k z - beta e_1||^2 + lam ||D V_k z||^2 (exact: the
   data residual of x = V_k z equals the small one), with G_D = (D V_k)(D V_k)^T.
3. The weighted GCV function of that small problem,
       G(lam) = ||B_k z_lam - beta e_1||^2 / (k + 1 - omega * trace(H_lam))^2,
       H_lam = B_k (B_k^T B_k + lam G_D)^-1 B_k^T,
   is minimised over log(lam) (a grid of 241 points over 24 decades around the scale where both
   terms weigh alike, then Brent's method around the best grid point). omega = ``gcv_omega``
   (1: standard GCV; < 1 regularises less, the weighted GCV of Chung, Nagy & O'Leary).
4. CGLS on the full stacked system with that lam, from the projected solution, deflated by the
   projection's basis (:class:`Deflation`): N V^T (N = K^T K + lam D^T D) follows from the
   bidiagonal relation with one more adjoint, so the search directions are kept N-orthogonal to
   span(V) at two (k, n) products per iteration, and CGLS no longer spends iterations on the part of
   the spectrum the projection already solved (the projected start alone only gives its value).
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
Cost of either: ``gcv_steps`` forward/adjoint pairs and gradients, then the CGLS solve.

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
from recon_cli.ops.finite_differences import Gradient
from recon_cli.ops.operator import Operator
from recon_cli.sinogram import Reconstruction, Sinogram
from recon_cli.solvers.mmgks import discrepancy_lam, golub_kahan, projected_solve
from recon_cli.solvers.regularisation_parameter import noise_norm
from recon_cli.solvers.algorithm import Algorithm, Halt, Stopwatch, TimedOperator, run
from recon_cli.solvers.registry import IterationState, register
from recon_cli.solvers.params.tikhonov import TikhonovParams  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- CGLS, stacked
class Deflation:
    """Deflated CG (Saad, Yeung, Erhel & Guyomarc'h, SIAM J. Sci. Comput. 21, 2000) on the normal matrix
    N = K^T K + lam D^T D by the span of k orthonormal rows ``W`` (k, n) float32 on the solver's xp.

    ``NW`` (k, n): N applied to each row of W; ``E`` (k, k) float64: W N W^T. Search directions are
    kept N-orthogonal to span(W) (:meth:`project`), so that, started from the Galerkin solution on
    span(W) (W r_0 = 0), CG only works on the rest of the spectrum. Cost per iteration: two (k, n)
    matrix-vector products.
    """

    def __init__(self, W, NW, E: np.ndarray):
        self.W, self.NW = W, NW
        self.E = np.asarray(E, dtype=np.float64)

    def project(self, s):
        """s - W^T E^-1 (N W^T)^T s, in the shape of s (a new array)."""
        xp = array_module(self.W)
        c = np.asarray(to_numpy(self.NW @ s.reshape(-1)), dtype=np.float64)
        mu = np.linalg.solve(self.E, c).astype(np.float32)
        return s - (xp.asarray(mu) @ self.W).reshape(s.shape)


class StackedCGLS(Algorithm):
    """CGLS for min ||K x - y||^2 + lam ||D x||^2 (lam >= 0, absolute), float32 on K.xp.

    Works on A = [K; sqrt(lam) D], b = [y; 0] without forming A. ``x0``: start (copied). Stops when
    the normal residual ||A^T(b - Ax)|| / ||A^T b|| < ``tol`` or after ``iterations``. State
    {iteration, x, r1, r2 (the residual blocks), p, gamma, history}; ``state``: continue from one.
    """

    def __init__(self, K: Operator, y, D: Operator, lam: float, *, x0=None, iterations: int = 200,
                 tol: float = 1e-4, state: dict | None = None, deflation: "Deflation | None" = None):
        xp = self.xp = K.xp
        self.K = K if isinstance(K, TimedOperator) else TimedOperator(K)
        self.D, self.max_iterations, self.tol = D, int(iterations), tol
        self.y = y = xp.asarray(y, dtype=np.float32).reshape(K.range_shape)
        self.s_lam = np.float32(math.sqrt(float(lam)))
        self.y_norm = math.sqrt(self._sq(y)) or 1.0
        self.hist = {"residual": [], "normal_residual": []}
        self.deflation = deflation
        # reference for the normal residual: ||A^T b|| = ||K^T y||
        if state is not None:
            self.resume(state)
            self.atb = math.sqrt(self._sq(self.K.adjoint(y))) or 1.0
            return
        Kt, s_lam = self.K, self.s_lam
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
        if "s" in state:
            self.s = restored("s", self.K.domain_shape)
        else:  # a checkpoint written before s was kept
            self.s = self.K.adjoint(self.r1) + self.s_lam * self.D.adjoint(self.r2)

    def _galerkin_correction(self) -> None:
        """x += W^T E^-1 W s: removes the residual's part in span(W), which deflated directions cannot
        reduce (rounding leaves ~1e-6 of it in the projected start, and it grows slowly); one forward."""
        dfl = self.deflation
        mu = np.linalg.solve(dfl.E, np.asarray(to_numpy(dfl.W @ self.s.reshape(-1)), dtype=np.float64))
        mu = self.xp.asarray(mu.astype(np.float32))
        dx = (mu @ dfl.W).reshape(self.x.shape)
        self.x += dx
        self.r1 -= self.K.forward(dx)
        self.r2 -= self.s_lam * self.D.forward(dx)
        self.s = self.s - (mu @ dfl.NW).reshape(self.s.shape)

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
        self.p += s if self.deflation is None else self.deflation.project(s)
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
                "s": self.s, "gamma": self.gamma, "history": self.hist}


def cgls_stacked(K: Operator, y, D: Operator, lam: float, *, x0=None, iterations: int = 200,
                 tol: float = 1e-4, callback=None, resume_state: dict | None = None, context: dict | None = None,
                 deflation: "Deflation | None" = None):
    """:class:`StackedCGLS` run by the driver. Returns (x, info): iterations, stopped ('tol' | 'iterations'
    | 'callback'), history {residual (||Kx - y|| / ||y||), normal_residual (||A^T(b - Ax)|| / ||A^T b||)},
    time_projector (s), residual, resumed_from (when resumed). ``deflation``: see :class:`Deflation`
    (``x0`` must then be the Galerkin solution on its basis; a resumed run needs the same one)."""
    alg = StackedCGLS(K, y, D, lam, x0=x0, iterations=iterations, tol=tol, state=resume_state,
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


def projected_lam(K: Operator, y, D: Operator, steps: int = 40, *, method: str = "gcv", omega: float = 1.0,
                  target: float | None = None, lam_factor: float = 1.0, deflate: bool = False) -> dict:
    """lam_abs chosen on the Golub-Kahan projection (module docstring), with the projected solution
    x_k = V_k^T z (the CGLS warm start).

    ``method``: 'gcv' (weighted GCV with ``omega``) or 'discrepancy' (||K x_k - y|| = ``target``; then
    lam_abs = ``lam_factor`` x that lam when the target was reached, and x_k is solved at it).
    Returns {lam_abs, x (K.domain_shape), steps (done), residual_norm, time, and for gcv: trace, gcv,
    at_grid_edge; for discrepancy: reached; with ``deflate``: deflation (:func:`krylov_deflation` at lam_abs,
    for which x is the Galerkin solution)}.
    """
    clock = Stopwatch()
    xp = K.xp
    DV = xp.empty((int(steps), int(np.prod(D.range_shape))), dtype=np.float32)  # rows D v_j
    done = [0]
    G_D = np.zeros((int(steps), int(steps)))
    lams: list[float] = []

    def gram_D(k: int, V) -> np.ndarray:
        """(D V)(D V)^T for the first k basis vectors; only the rows/columns of new vectors are computed."""
        j0 = done[0]
        if j0 < k:
            for j in range(j0, k):
                DV[j] = D.forward(V[j].reshape(K.domain_shape)).reshape(-1)
            G_D[:k, j0:k] = to_numpy(DV[:k] @ DV[j0:k].T).astype(np.float64)
            G_D[j0:k, :k] = G_D[:k, j0:k].T
            done[0] = k
        return G_D[:k, :k]

    def settled(k: int, B, V, beta: float) -> bool:
        """discrepancy: stop once the projected lams of the last three steps agree within LAM_SETTLED."""
        if method != "discrepancy" or k < MIN_DISCREPANCY_STEPS:
            return False
        e1 = np.zeros(k + 1)
        e1[0] = beta
        lam_k, reached = discrepancy_lam(B.T @ B, B.T @ e1, beta * beta, gram_D(k, V), float(target))
        lams.append(lam_k if reached else math.nan)
        return len(lams) >= 3 and all(math.isfinite(v) for v in lams[-3:]) and \
            max(lams[-3:]) <= (1.0 + LAM_SETTLED) * min(lams[-3:])

    U, B, V, beta = golub_kahan(K, y, int(steps), stop=settled)
    k = V.shape[0]
    G_D = gram_D(k, V).copy()
    out: dict = {"steps": k}
    if method == "gcv":
        res = projected_gcv(B, beta, G_D, omega=omega)
        lam, z = res["lam"], res["z"]
        out.update(trace=res["trace"], gcv=res["gcv"], at_grid_edge=bool(res["at_grid_edge"]))
    elif method == "discrepancy":
        if not (target is not None and target > 0):
            raise ValueError("the discrepancy principle needs a positive target residual")
        e1 = np.zeros(B.shape[0])
        e1[0] = beta
        BtB, Bte = B.T @ B, B.T @ e1
        lam, reached = discrepancy_lam(BtB, Bte, beta * beta, G_D, float(target))
        out.update(reached=bool(reached), lam_discrepancy_abs=float(lam))
        if reached:
            lam *= float(lam_factor)
        z = projected_solve(BtB, Bte, G_D, lam)
    else:
        raise ValueError(f"unknown lam method {method!r}")
    e1 = np.zeros(B.shape[0])
    e1[0] = beta
    out["residual_norm"] = float(np.linalg.norm(B @ z - e1))
    out["lam_abs"] = float(lam)
    out["x"] = (xp.asarray(z.astype(np.float32)) @ V).reshape(K.domain_shape)
    if deflate:
        out["deflation"] = krylov_deflation(K, D, U, B, V, DV[:k], float(lam))
    del DV
    out["time"] = clock.seconds()
    return out


def krylov_deflation(K: Operator, D: Operator, U, B: np.ndarray, V, DV: list, lam: float) -> Deflation:
    """:class:`Deflation` of the stacked CGLS at ``lam`` (absolute) by the Golub-Kahan basis V (k, n).

    From K V^T = U^T B and K^T U^T = V^T B^T + alpha_{k+1} v_{k+1} e_{k+1}^T:
    K^T K V^T = V^T B^T B + beta_{k+1} w e_k^T with w = K^T u_{k+1} - beta_{k+1} v_k (one adjoint);
    D^T D V^T from the stored D V (k adjoint gradients). E = B^T B + lam G_D (W w = 0 exactly).
    ``DV`` (k, p): the rows D v_j (float32, flattened), ``U`` (k+1, m), ``B`` (k+1, k)."""
    xp = K.xp
    k = V.shape[0]
    BtB = B.T @ B  # tridiagonal: K^T K v_j = sum over i in {j-1, j, j+1} of (B^T B)_ij v_i
    NW = V * xp.asarray(np.diag(BtB).astype(np.float32))[:, None]
    off = np.diag(BtB, 1).astype(np.float32)
    for j in range(k - 1):
        NW[j] += off[j] * V[j + 1]
        NW[j + 1] += off[j] * V[j]
    beta_next = float(B[k, k - 1])
    if beta_next != 0.0:
        w = K.adjoint(U[k].reshape(K.range_shape)).reshape(-1).astype(np.float32, copy=False)
        w = w - np.float32(beta_next) * V[k - 1]
        NW[k - 1] += np.float32(beta_next) * w
    lam32 = np.float32(lam)
    for j in range(k):
        dv = DV[j].reshape(D.range_shape)
        NW[j] += lam32 * D.adjoint(dv).reshape(-1)
    # G_D in one product (not the search's incremental one), so that a rebuild is bit-identical
    return Deflation(V, NW, BtB + lam * to_numpy(DV @ DV.T).astype(np.float64))


def rebuild_deflation(K: Operator, y, D: Operator, steps: int, lam: float) -> Deflation:
    """The :func:`krylov_deflation` of a run that chose lam on ``steps`` Golub-Kahan steps, recomputed
    (bit-identical) for a resumed run: ``steps`` steps, D V and one adjoint."""
    U, B, V, _ = golub_kahan(K, y, int(steps))
    DV = K.xp.stack([D.forward(v.reshape(K.domain_shape)).reshape(-1).astype(np.float32) for v in V])
    return krylov_deflation(K, D, U, B, V, DV, float(lam))


# ----------------------------------------------------------------------------- the solver
def choose_lam_tikhonov(op: Operator, y, D: Operator, sino: Sinogram, params: TikhonovParams):
    """(lam_abs, warm start x0 or None, record for info, :class:`Deflation` or None) for ``params.lam`` (a
    number, gcv, discrepancy, auto); x0 and the deflation come from the Golub-Kahan projection."""
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
    extra["deflation_rank"] = int(g["deflation"].W.shape[0])
    return g["lam_abs"], g["x"], extra, g["deflation"]


#: Arrays held at the peak of a lam gcv / discrepancy / auto run with the default gcv_steps (40): the
#: Golub-Kahan bases V (40 image-sized) and U (41 sinogram-sized), D V (40 x 2 image-sized), the deflation's
#: N V^T (40), the CGLS state (x, p, s, D-residual: 5) and a few work arrays.
TIKHONOV_STATE_ARRAYS = (170, 45)


@register("tikhonov", TikhonovParams, state_arrays=TIKHONOV_STATE_ARRAYS)
def solve(op: Operator, sino: Sinogram, params: TikhonovParams, callback=None, *,
          resume_state: dict | None = None) -> Reconstruction:
    """Gradient-regularised least squares of ``sino`` on ``op``'s grid (1/mm).

    Restartable: the callback's ``extra['state']`` is :class:`StackedCGLS`'s plus ``lam_abs`` and
    ``lam_search`` (the lam record); ``resume_state`` continues with that lam, without choosing again.
    """
    clock = Stopwatch()
    xp = op.xp
    y = xp.asarray(sino.data, dtype=np.float32).reshape(op.range_shape)
    D = Gradient(tuple(op.domain_shape), mode=params.mode, xp=xp)
    h2 = float(sino.grid.voxel_size) ** 2
    if resume_state is None:
        lam_abs, x0, extra, deflation = choose_lam_tikhonov(op, y, D, sino, params)
    else:
        lam_abs, x0, extra = float(resume_state["lam_abs"]), None, dict(resume_state.get("lam_search") or {})
        rank = int(extra.get("deflation_rank") or 0)
        deflation = rebuild_deflation(op, y, D, rank, lam_abs) if rank else None
    x, info = cgls_stacked(op, y, D, lam_abs, x0=x0, iterations=params.iterations, tol=params.tol,
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
