"""Majorisation-minimisation in generalised Krylov subspaces (MM-GKS) for l2-l1 problems.

Problem (K: projector, L: any regularisation Operator, e.g. a graph Laplacian; eps > 0 smooths l1):

    min_x  J(x) = 1/2 ||K x - y||^2 + lam * sum_i phi_eps((L x)_i),   phi_eps(t) = sqrt(t^2 + eps^2)

Method (Lanza, Morigi, Reichel, Sgallari, SIAM J. Sci. Comput. 37, 2015; Huang, Lanza, Morigi,
Reichel, Sgallari, BIT 57, 2017; restarts as in Buccini & Reichel), written from the papers:

1. Majorisation. At the iterate x_k, phi_eps(t) <= phi_eps(t_k) + (t^2 - t_k^2) / (2 phi_eps(t_k)), so
   J is majorised by the quadratic 1/2||Kx - y||^2 + lam/2 ||W_k^(1/2) L x||^2 + const with the
   weights w_i = 1 / sqrt((L x_k)_i^2 + eps^2) (the "adaptive" majorant; J decreases monotonically
   when the quadratic is minimised exactly).
2. Generalised Krylov subspace. The quadratic is minimised over span(V), V orthonormal:
   z = argmin 1/2||K V z - y||^2 + lam/2 ||W^(1/2) L V z||^2, x_{k+1} = V z. The small problem uses
   the Gram matrices G_K = (KV)^T KV (updated by one row/column per new basis vector) and
   G_L = (LV)^T W (LV) (recomputed as W changes), in float64; KV and LV are stored, so each
   iteration costs one K, one K^T, one L and one L^T product plus O(n k^2) for G_L.
3. Expansion. V gains the normalised residual of the normal equations of the majorised problem,
   r = K^T(K x_{k+1} - y) + lam L^T W L x_{k+1}, orthogonalised against V twice.
4. Discrepancy principle (``lam=None``, the default of the paper): at *every* iteration lam is the
   root of ||K V z(lam) - y|| = tau * delta (delta = ||noise||), found by Brent's method on log(lam)
   for the small system (the residual grows monotonically with lam). If the current subspace cannot
   reach the target (even lam -> 0 leaves a larger residual) the smallest lam of the bracket is used;
   if every lam gives a smaller residual, the largest. ``lam`` given: that fixed value, in which
   case the iteration is the MM minimisation of J itself.
5. Restarts. Every ``restart`` iterations the basis is reset to the current x (normalised) plus the
   new residual direction, so memory and per-iteration cost stay bounded.
6. Stop when ||x_{k+1} - x_k|| / ||x_{k+1}|| < tol (not tested in the two iterations after a restart,
   whose 2-3 dimensional subspaces barely move x), or after ``max_iter`` iterations.

The initial subspace is spanned by ``x0`` (if given; its L x0 also sets the first weights, else
w = 1/eps) and ``krylov_dim`` Golub-Kahan vectors, i.e. the Krylov subspace K_k(K^T K, K^T y).

MM-GKS has no constraint: ``nonnegative=True`` only clips the final x to x >= 0 (the objective
reported is then that of the clipped image). Use the Chambolle-Pock solver (recon_cli.solvers.pdhg)
for the constrained problem.
"""
from __future__ import annotations

import math

import numpy as np

from recon_cli.backend import to_numpy
from recon_cli.ops.operator import Operator
from recon_cli.solvers.algorithm import Algorithm, Halt, Stopwatch, TimedOperator, run
from recon_cli.solvers.pdhg import checked_problem
from recon_cli.solvers.registry import IterationState


def _reorthogonalised(v, Q, xp):
    """(v minus its projection on the orthonormal rows of Q, its norm): classical Gram-Schmidt in place (v is
    overwritten), repeated once when the first pass removed more than half of v's norm (the "twice is
    enough" criterion of Daniel, Gragg, Kaufman & Stewart, 1976; a second pass is then needed, otherwise
    it changes nothing)."""
    before = float(xp.linalg.norm(v))
    v -= Q.T @ (Q @ v)
    after = float(xp.linalg.norm(v))
    if after < 0.5 * before:
        v -= Q.T @ (Q @ v)
        after = float(xp.linalg.norm(v))
    return v, after


def bidiagonalisation_arrays(K: Operator, y, steps: int):
    """(beta = ||y||, U (steps+1, m) with U[0] = y / beta, V (steps, n), B (steps+1, steps) zeros (float64 numpy),
    scratch (n,) and (m,)): the arrays of a Golub-Kahan run on K.xp (float32; rows written before read)."""
    xp = K.xp
    y = xp.asarray(y, dtype=np.float32).reshape(-1)
    beta = float(xp.linalg.norm(y))
    if beta == 0:
        raise ValueError("Golub-Kahan bidiagonalisation: the data are zero")
    n = int(np.prod(K.domain_shape))
    U = xp.empty((steps + 1, y.size), dtype=np.float32)
    V = xp.empty((steps, n), dtype=np.float32)
    xp.divide(y, np.float32(beta), out=U[0])
    return (beta, U, V, np.zeros((steps + 1, steps)), xp.empty(n, dtype=np.float32),
            xp.empty(y.size, dtype=np.float32))


def golub_kahan(K: Operator, y, steps: int, *, reorthogonalise: bool = True, stop=None):
    """``steps`` steps of Golub-Kahan bidiagonalisation of K started at y.

    Returns (U, B, V, beta): U (steps+1, m) and V (steps, n) float32 xp arrays with orthonormal rows
    (m = y.size, n = prod(K.domain_shape)), B the (steps+1, steps) lower-bidiagonal float64 numpy
    matrix with K V^T = U^T B, and beta = ||y||. Stops early (fewer rows) on breakdown, or when
    ``stop(k, B[:k+1, :k], V[:k], beta)`` returns True after step k. Full reorthogonalisation
    (default) keeps the bases orthonormal in float32.
    """
    xp = K.xp
    beta, U, V, B, tmp, tmp_u = bidiagonalisation_arrays(K, y, steps)
    k_done = 0
    for k in range(steps):
        v = K.adjoint(U[k].reshape(K.range_shape)).reshape(-1).astype(np.float32, copy=False)
        if k > 0:
            v -= xp.multiply(V[k - 1], np.float32(B[k, k - 1]), out=tmp)
        if reorthogonalise and k > 0:
            v, alpha = _reorthogonalised(v, V[:k], xp)
        else:
            alpha = float(xp.linalg.norm(v))
        if alpha <= 1e-12 * beta:
            break
        xp.divide(v, np.float32(alpha), out=V[k])
        B[k, k] = alpha
        u = K.forward(V[k].reshape(K.domain_shape)).reshape(-1).astype(np.float32, copy=False)
        u -= xp.multiply(U[k], np.float32(alpha), out=tmp_u)
        if reorthogonalise:
            u, gamma = _reorthogonalised(u, U[:k + 1], xp)
        else:
            gamma = float(xp.linalg.norm(u))
        k_done = k + 1
        if gamma <= 1e-12 * beta:
            B[k + 1, k] = 0.0
            break
        xp.divide(u, np.float32(gamma), out=U[k + 1])
        B[k + 1, k] = gamma
        if stop is not None and stop(k_done, B[:k_done + 1, :k_done], V[:k_done], beta):
            break
    return U[:k_done + 1], B[:k_done + 1, :k_done], V[:k_done], beta


def projected_solve(G_K, h, G_L, lam: float) -> np.ndarray:
    """argmin_z 1/2 z^T G_K z - h^T z + lam/2 z^T G_L z (float64; least squares if singular)."""
    H = G_K + lam * G_L
    try:
        c = np.linalg.cholesky(H)
        return np.linalg.solve(c.T, np.linalg.solve(c, h))
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(H, h, rcond=1e-13)[0]


def _residual_sq(G_K, h, yy: float, z) -> float:
    """||K V z - y||^2 from the Gram form (clipped at 0 against rounding)."""
    return max(float(z @ G_K @ z - 2.0 * h @ z + yy), 0.0)


def discrepancy_lam(G_K, h, yy: float, G_L, target: float, span: float = 1e14) -> tuple[float, bool]:
    """lam with ||K V z(lam) - y|| = target in the projected problem; (lam, reached).

    Brent's method on log(lam) inside [s / span, s * span], s = trace(G_K) / trace(G_L) (the scale
    where both terms weigh alike). Unreachable targets return the nearer end of the bracket.
    """
    t_k, t_l = float(np.trace(G_K)), float(np.trace(G_L))
    scale = t_k / t_l if t_l > 0 else 1.0
    lo, hi = math.log(scale / span), math.log(scale * span)
    tt = target * target

    def f(log_lam: float) -> float:
        z = projected_solve(G_K, h, G_L, math.exp(log_lam))
        return _residual_sq(G_K, h, yy, z) / tt - 1.0

    f_lo = f(lo)
    if f_lo >= 0:
        return math.exp(lo), False
    f_hi = f(hi)
    if f_hi <= 0:
        return math.exp(hi), False
    from scipy.optimize import brentq  # lazy: 0.3-1 s of import, only needed here

    root = brentq(f, lo, hi, xtol=1e-6, rtol=1e-10, maxiter=200)
    return math.exp(root), True


class MMGKS(Algorithm):
    """MM-GKS for min 1/2||Kx - y||^2 + lam sum_i sqrt((Lx)_i^2 + eps^2) (see the module docstring).

    ``lam=None``: discrepancy principle with ``noise_norm`` (= ||e||, required) and ``tau``; else the
    fixed (absolute) lam. ``eps``: smoothing in the units of L x. ``x0``: initial iterate (weights) and
    first basis vector. Shapes: x ``K.domain_shape`` (= ``L.domain_shape``), y ``K.range_shape``.

    Iteration k > 1 first expands the subspace by the normal-equation residual of iteration k - 1
    (restarting it every ``restart`` iterations), then minimises the majorant over it. State: the
    basis V with K V, L V (float32), the Gram data G_K, h (float64), its dimension, x, L x, K x - y,
    the weights, lam, the restart counters and the history; ``state`` continues from such a dict.
    """

    budget_reason = "max_iter"

    def __init__(self, K: Operator, y, L: Operator, *, lam: float | None = None, noise_norm: float | None = None,
                 tau: float = 1.01, eps: float = 0.1, x0=None, krylov_dim: int = 5, restart: int = 30,
                 max_iter: int = 200, tol: float = 1e-4, nonnegative: bool = False, state: dict | None = None):
        xp = self.xp = K.xp
        y = checked_problem(K, y, L, lam, "L")
        self.use_dp = use_dp = lam is None
        if use_dp and not (noise_norm is not None and noise_norm > 0):
            raise ValueError("the discrepancy principle needs a positive noise_norm")
        self.eps = eps = float(eps)
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.restart, self.max_iterations, self.tol = max(int(restart), 1), int(max_iter), tol
        self.nonnegative, self.tau = nonnegative, float(tau)
        self.dshape = dshape = tuple(K.domain_shape)
        self.K = TimedOperator(K)
        self.L = L
        self.yv = yv = y.reshape(-1)
        self.y64 = float(xp.vdot(yv.astype(np.float64), yv.astype(np.float64)))
        self.y_norm = math.sqrt(self.y64) or 1.0
        self.target = float(tau) * float(noise_norm) if use_dp else None
        self.eps2 = np.float32(eps * eps)
        self.hist = {"objective": [], "objective_smoothed": [], "residual": [], "lam": [], "rel_change": [],
                     "subspace_dim": []}
        self.restarts, self.reached, self.since_restart = 0, True, 0
        self.lam_k = float(lam) if not use_dp else None
        self.rel_change = None
        if state is not None:
            self.resume(state)
            return
        # ---- initial subspace: x0 (if any) and the Krylov space K_k(K^T K, K^T y)
        _, _, V_gk, _ = golub_kahan(self.K, y, max(int(krylov_dim), 1))
        basis = []
        if x0 is not None:
            x0 = xp.asarray(x0, dtype=np.float32).reshape(-1)
            if float(xp.linalg.norm(x0)) > 0:
                basis.append(x0)
        basis.extend(V_gk[i] for i in range(V_gk.shape[0]))
        cap = len(basis) + self.restart + 2
        n = int(np.prod(dshape))
        self.V = xp.zeros((cap, n), dtype=np.float32)
        self.KV = xp.zeros((cap, yv.size), dtype=np.float32)
        self.LV = xp.zeros((cap, int(np.prod(L.range_shape))), dtype=np.float32)
        self.dim = 0
        self.G_K = np.zeros((cap, cap))
        self.h = np.zeros(cap)
        for v in basis:  # a handful of starting vectors, not iterations
            self._add(v)
        self.x = x0.copy() if x0 is not None else xp.zeros(n, dtype=np.float32)
        self.lx = self._Lf(self.x)
        self.kx = self._Kf(self.x) if x0 is not None else xp.zeros(yv.size, dtype=np.float32)
        self.res = self.w = None

    def _Kf(self, v):
        return self.K.forward(v.reshape(self.dshape)).reshape(-1)

    def _Ka(self, r):
        return self.K.adjoint(r.reshape(self.K.range_shape)).reshape(-1)

    def _Lf(self, v):
        return self.L.forward(v.reshape(self.dshape)).reshape(-1)

    def _La(self, v):
        return self.L.adjoint(v.reshape(self.L.range_shape)).reshape(-1)

    def _add(self, v, kv=None, lv=None) -> bool:
        """Orthonormalise v against V[:dim] and append it (with K v, L v); False if v lies in span(V)."""
        xp, k, V = self.xp, self.dim, self.V
        cap = V.shape[0]
        v = v.astype(np.float32, copy=True)
        v_norm0 = float(xp.linalg.norm(v))
        if v_norm0 == 0:
            return False
        recompute = kv is None or k > 0
        if k > 0:
            v -= V[:k].T @ (V[:k] @ v)  # twice: classical Gram-Schmidt, reorthogonalised
            v -= V[:k].T @ (V[:k] @ v)
        v_norm = float(xp.linalg.norm(v))
        if v_norm <= 1e-6 * v_norm0 or k >= cap:
            return False
        v /= np.float32(v_norm)
        V[k] = v
        self.KV[k] = self._Kf(v) if recompute else kv / np.float32(v_norm)
        self.LV[k] = self._Lf(v) if recompute else lv / np.float32(v_norm)
        new64 = self.KV[k].astype(np.float64)
        self.G_K[k, : k + 1] = self.G_K[: k + 1, k] = to_numpy(self.KV[: k + 1].astype(np.float64) @ new64)
        self.h[k] = float(xp.vdot(new64, self.yv.astype(np.float64)))
        self.dim = k + 1
        return True

    def step(self, it: int):
        xp = self.xp
        if it > 1:  # expand by the residual of the normal equations of iteration it - 1's majorised problem
            g = self._Ka(self.res)
            g += np.float32(self.lam_k) * self._La(self.w * self.lx)
            self.since_restart += 1
            if self.since_restart >= self.restart or self.dim >= self.V.shape[0]:
                # restart: keep the current x as the first basis vector (K x, L x known)
                self.dim = 0
                self.G_K[:] = 0.0
                self.h[:] = 0.0
                self._add(self.x, self.kx, self.lx)
                self.since_restart = 0
                self.restarts += 1
            if not self._add(g):
                return Halt("subspace_exhausted")
        k, lx = self.dim, self.lx
        w = xp.sqrt(lx * lx + self.eps2)
        xp.divide(np.float32(1.0), w, out=w)  # w_i = 1 / sqrt((Lx)_i^2 + eps^2)
        self.w = w
        M = self.LV[:k] * xp.sqrt(w)[None, :]
        G_L = to_numpy(M @ M.T).astype(np.float64)
        del M
        Gk, hk = self.G_K[:k, :k], self.h[:k]
        if self.use_dp:
            self.lam_k, self.reached = discrepancy_lam(Gk, hk, self.y64, G_L, self.target)
        lam_k = self.lam_k
        z = projected_solve(Gk, hk, G_L, lam_k)
        zx = xp.asarray(z.astype(np.float32))
        x_new = zx @ self.V[:k]
        self.kx = zx @ self.KV[:k]
        self.lx = lx = zx @ self.LV[:k]
        diff = float(xp.linalg.norm(x_new - self.x))
        x_norm = float(xp.linalg.norm(x_new))
        self.rel_change = diff / x_norm if x_norm > 0 else 0.0
        self.x = x_new
        self.res = self.kx - self.yv
        self.res_norm = res_norm = float(xp.linalg.norm(self.res))
        l1 = float(xp.sum(xp.abs(lx), dtype=np.float64))
        smooth = float(xp.sum(xp.sqrt(lx * lx + self.eps2), dtype=np.float64))
        hist = self.hist
        hist["objective"].append(0.5 * res_norm ** 2 + lam_k * l1)
        hist["objective_smoothed"].append(0.5 * res_norm ** 2 + lam_k * smooth)
        hist["residual"].append(res_norm / self.y_norm)
        hist["lam"].append(lam_k)
        hist["rel_change"].append(self.rel_change)
        hist["subspace_dim"].append(k)
        return None

    def converged(self):
        # right after a restart the subspace is tiny and x barely moves: no convergence test there
        if self.iteration > 1 and self.since_restart >= 2 and self.rel_change < self.tol:
            return "tol"
        return None

    def report(self) -> IterationState:
        return IterationState(self.iteration, self.x.reshape(self.dshape), self.hist["objective"][-1],
                              self.res_norm / self.y_norm)

    _ARRAYS = ("V", "KV", "LV", "x", "lx", "kx", "res", "w")

    def state(self) -> dict:
        return {"iteration": self.iteration, **{name: getattr(self, name) for name in self._ARRAYS},
                "G_K": self.G_K, "h": self.h, "dim": self.dim, "lam_k": self.lam_k, "reached": self.reached,
                "since_restart": self.since_restart, "restarts": self.restarts, "rel_change": self.rel_change,
                "res_norm": self.res_norm, "history": self.hist}

    def load_state(self, state: dict) -> None:
        xp = self.xp
        for name in self._ARRAYS:
            setattr(self, name, xp.array(state[name], dtype=np.float32, copy=True))
        self.G_K = np.array(state["G_K"], dtype=np.float64, copy=True)
        self.h = np.array(state["h"], dtype=np.float64, copy=True)
        self.dim, self.since_restart, self.restarts = int(state["dim"]), int(state["since_restart"]), \
            int(state["restarts"])
        self.lam_k, self.reached = float(state["lam_k"]), bool(state["reached"])
        self.rel_change, self.res_norm = float(state["rel_change"]), float(state["res_norm"])
        self.hist = {name: list(state["history"][name]) for name in self.hist}

    def finish(self) -> None:
        """Clip to x >= 0 when asked, and the final objective and residual of the returned x."""
        xp = self.xp
        self.x = self.x.reshape(self.dshape)
        self.res_unclipped = self.res_norm
        lx = self.lx
        if self.nonnegative:
            xp.maximum(self.x, 0, out=self.x)
            kx = self._Kf(self.x)
            lx = self._Lf(self.x)
            self.res_norm = float(xp.linalg.norm(kx - self.yv))
        self.objective = 0.5 * self.res_norm ** 2 + self.lam_k * float(xp.sum(xp.abs(lx), dtype=np.float64))


def mmgks(K: Operator, y, L: Operator, *, lam: float | None = None, noise_norm: float | None = None,
          tau: float = 1.01, eps: float = 0.1, x0=None, krylov_dim: int = 5, restart: int = 30,
          max_iter: int = 200, tol: float = 1e-4, nonnegative: bool = False, callback=None,
          resume_state: dict | None = None, context: dict | None = None):
    """:class:`MMGKS` run by the driver (arguments as there; ``resume_state``: a state it reported).

    Returns (x, info): iterations, stopped ('tol' | 'max_iter' | 'callback' | 'subspace_exhausted'), lam
    (last), history {objective (1/2||Kx-y||^2 + lam ||Lx||_1), objective_smoothed (J), residual
    (||Kx-y||/||y||), lam, rel_change, subspace_dim}, residual_norm, discrepancy_ratio (||Kx - y|| /
    (tau delta), of the returned, possibly clipped, x), residual_norm_unclipped (before the clip),
    restarts, lam_reached (the target was reachable at the last iteration), time_projector /
    time_total (s).
    """
    clock = Stopwatch()
    alg = MMGKS(K, y, L, lam=lam, noise_norm=noise_norm, tau=tau, eps=eps, x0=x0, krylov_dim=krylov_dim,
                restart=restart, max_iter=max_iter, tol=tol, nonnegative=nonnegative, state=resume_state)
    record = run(alg, callback, context=context)
    use_dp, res_norm = alg.use_dp, alg.res_norm
    info = {
        "iterations": record.iterations, "stopped": record.stopped, "history": alg.hist, "lam": alg.lam_k,
        "objective": alg.objective, "residual": res_norm / alg.y_norm, "residual_norm": res_norm,
        "restarts": alg.restarts, "lam_reached": bool(alg.reached), "eps": alg.eps,
        "tau": alg.tau if use_dp else None, "discrepancy_ratio": res_norm / alg.target if use_dp else None,
        "residual_norm_unclipped": alg.res_unclipped,
        "time_projector": alg.K.seconds, "time_total": clock.seconds(),
    }
    if record.resumed_from is not None:
        info["resumed_from"] = record.resumed_from
    return alg.x, info
