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
import time

import numpy as np

from recon_cli.backend import to_numpy
from recon_cli.ops.operator import Operator
from recon_cli.solvers.registry import IterationState


def _sync(xp) -> None:
    if xp is not np:
        xp.cuda.Stream.null.synchronize()


def golub_kahan(K: Operator, y, steps: int, *, reorthogonalise: bool = True):
    """``steps`` steps of Golub-Kahan bidiagonalisation of K started at y.

    Returns (U, B, V, beta): U (steps+1, m) and V (steps, n) float32 xp arrays with orthonormal rows
    (m = y.size, n = prod(K.domain_shape)), B the (steps+1, steps) lower-bidiagonal float64 numpy
    matrix with K V^T = U^T B, and beta = ||y||. Stops early (fewer rows) on breakdown. Full
    reorthogonalisation (default) keeps the bases orthonormal in float32.
    """
    xp = K.xp
    y = xp.asarray(y, dtype=np.float32).reshape(-1)
    beta = float(xp.linalg.norm(y))
    if beta == 0:
        raise ValueError("golub_kahan: the data are zero")
    n = int(np.prod(K.domain_shape))
    U = xp.zeros((steps + 1, y.size), dtype=np.float32)
    V = xp.zeros((steps, n), dtype=np.float32)
    B = np.zeros((steps + 1, steps))
    U[0] = y / np.float32(beta)
    k_done = 0
    for k in range(steps):
        v = K.adjoint(U[k].reshape(K.range_shape)).reshape(-1).astype(np.float32, copy=False)
        if k > 0:
            v -= np.float32(B[k, k - 1]) * V[k - 1]
        if reorthogonalise and k > 0:
            for _ in range(2):
                v -= V[:k].T @ (V[:k] @ v)
        alpha = float(xp.linalg.norm(v))
        if alpha <= 1e-12 * beta:
            break
        V[k] = v / np.float32(alpha)
        B[k, k] = alpha
        u = K.forward(V[k].reshape(K.domain_shape)).reshape(-1).astype(np.float32, copy=False)
        u -= np.float32(alpha) * U[k]
        if reorthogonalise:
            for _ in range(2):
                u -= U[:k + 1].T @ (U[:k + 1] @ u)
        gamma = float(xp.linalg.norm(u))
        k_done = k + 1
        if gamma <= 1e-12 * beta:
            B[k + 1, k] = 0.0
            break
        U[k + 1] = u / np.float32(gamma)
        B[k + 1, k] = gamma
    return U[:k_done + 1], B[:k_done + 1, :k_done], V[:k_done], beta


def _small_solve(G_K, h, G_L, lam: float) -> np.ndarray:
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
        z = _small_solve(G_K, h, G_L, math.exp(log_lam))
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


def mmgks(K: Operator, y, L: Operator, *, lam: float | None = None, noise_norm: float | None = None,
          tau: float = 1.01, eps: float = 0.1, x0=None, krylov_dim: int = 5, restart: int = 30,
          max_iter: int = 200, tol: float = 1e-4, nonnegative: bool = False, callback=None):
    """MM-GKS for min 1/2||Kx - y||^2 + lam sum_i sqrt((Lx)_i^2 + eps^2) (see the module docstring).

    ``lam=None``: discrepancy principle with ``noise_norm`` (= ||e||, required) and ``tau``; else the
    fixed (absolute) lam. ``eps``: smoothing in the units of L x. ``x0``: initial iterate (weights) and
    first basis vector. Shapes: x ``K.domain_shape`` (= ``L.domain_shape``), y ``K.range_shape``.

    Returns (x, info): iterations, stopped ('tol' | 'max_iter' | 'callback'), lam (last), history
    {objective (1/2||Kx-y||^2 + lam ||Lx||_1), objective_smoothed (J), residual (||Kx-y||/||y||),
    lam, rel_change, subspace_dim}, residual_norm, discrepancy_ratio (||Kx - y|| / (tau delta), of the
    returned, possibly clipped, x), residual_norm_unclipped (before the clip),
    restarts, lam_reached (the target was reachable at the last iteration), time_projector /
    time_total (s).
    """
    t_start = time.perf_counter()
    xp = K.xp
    if tuple(L.domain_shape) != tuple(K.domain_shape):
        raise ValueError(f"K and L have different domains: {K.domain_shape} vs {L.domain_shape}")
    y = xp.asarray(y, dtype=np.float32)
    if tuple(y.shape) != tuple(K.range_shape):
        raise ValueError(f"data shape {tuple(y.shape)} does not match K's range {K.range_shape}")
    use_dp = lam is None
    if use_dp and not (noise_norm is not None and noise_norm > 0):
        raise ValueError("the discrepancy principle needs a positive noise_norm")
    if not use_dp and not (float(lam) >= 0 and math.isfinite(float(lam))):
        raise ValueError(f"lam must be a finite non-negative number, got {lam}")
    eps = float(eps)
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    restart = max(int(restart), 1)
    dshape = tuple(K.domain_shape)
    t_proj = [0.0]

    def Kf(v):
        _sync(xp)
        t0 = time.perf_counter()
        out = K.forward(v.reshape(dshape)).reshape(-1)
        _sync(xp)
        t_proj[0] += time.perf_counter() - t0
        return out

    def Ka(r):
        _sync(xp)
        t0 = time.perf_counter()
        out = K.adjoint(r.reshape(K.range_shape)).reshape(-1)
        _sync(xp)
        t_proj[0] += time.perf_counter() - t0
        return out

    def Lf(v):
        return L.forward(v.reshape(dshape)).reshape(-1)

    def La(v):
        return L.adjoint(v.reshape(L.range_shape)).reshape(-1)

    yv = y.reshape(-1)
    y64 = float(xp.vdot(yv.astype(np.float64), yv.astype(np.float64)))
    y_norm = math.sqrt(y64) or 1.0
    target = float(tau) * float(noise_norm) if use_dp else None

    # ---- initial subspace: x0 (if any) and the Krylov space K_k(K^T K, K^T y)
    _, _, V_gk, _ = golub_kahan(_TimedK(K, Kf, Ka), y, max(int(krylov_dim), 1))
    basis = []
    if x0 is not None:
        x0 = xp.asarray(x0, dtype=np.float32).reshape(-1)
        if float(xp.linalg.norm(x0)) > 0:
            basis.append(x0)
    basis.extend(V_gk[i] for i in range(V_gk.shape[0]))
    cap = len(basis) + restart + 2
    n = int(np.prod(dshape))
    V = xp.zeros((cap, n), dtype=np.float32)
    KV = xp.zeros((cap, yv.size), dtype=np.float32)
    LV = xp.zeros((cap, int(np.prod(L.range_shape))), dtype=np.float32)
    k = 0
    G_K = np.zeros((cap, cap))
    h = np.zeros(cap)

    def add(v, kv=None, lv=None) -> bool:
        """Orthonormalise v against V[:k] and append it (with K v, L v); False if v lies in span(V)."""
        nonlocal k
        v = v.astype(np.float32, copy=True)
        v_norm0 = float(xp.linalg.norm(v))
        if v_norm0 == 0:
            return False
        recompute = kv is None or k > 0
        if k > 0:
            for _ in range(2):
                v -= V[:k].T @ (V[:k] @ v)
        v_norm = float(xp.linalg.norm(v))
        if v_norm <= 1e-6 * v_norm0 or k >= cap:
            return False
        v /= np.float32(v_norm)
        V[k] = v
        KV[k] = Kf(v) if recompute else kv / np.float32(v_norm)
        LV[k] = Lf(v) if recompute else lv / np.float32(v_norm)
        new64 = KV[k].astype(np.float64)
        G_K[k, : k + 1] = G_K[: k + 1, k] = to_numpy(KV[: k + 1].astype(np.float64) @ new64)
        h[k] = float(xp.vdot(new64, yv.astype(np.float64)))
        k += 1
        return True

    for v in basis:
        add(v)

    x = x0.copy() if x0 is not None else xp.zeros(n, dtype=np.float32)
    lx = Lf(x)
    kx = Kf(x) if x0 is not None else xp.zeros(yv.size, dtype=np.float32)
    eps2 = np.float32(eps * eps)
    hist = {"objective": [], "objective_smoothed": [], "residual": [], "lam": [], "rel_change": [],
            "subspace_dim": []}
    stopped, it, restarts, reached = "max_iter", 0, 0, True
    lam_k = float(lam) if not use_dp else None
    since_restart = 0
    for it in range(1, int(max_iter) + 1):
        w = xp.sqrt(lx * lx + eps2)
        xp.divide(np.float32(1.0), w, out=w)  # w_i = 1 / sqrt((Lx)_i^2 + eps^2)
        M = LV[:k] * xp.sqrt(w)[None, :]
        G_L = to_numpy(M @ M.T).astype(np.float64)
        del M
        Gk, hk = G_K[:k, :k], h[:k]
        if use_dp:
            lam_k, reached = discrepancy_lam(Gk, hk, y64, G_L, target)
        z = _small_solve(Gk, hk, G_L, lam_k)
        zx = xp.asarray(z.astype(np.float32))
        x_new = zx @ V[:k]
        kx = zx @ KV[:k]
        lx = zx @ LV[:k]
        diff = float(xp.linalg.norm(x_new - x))
        x_norm = float(xp.linalg.norm(x_new))
        rel_change = diff / x_norm if x_norm > 0 else 0.0
        x = x_new
        res = kx - yv
        res_norm = float(xp.linalg.norm(res))
        l1 = float(xp.sum(xp.abs(lx), dtype=np.float64))
        smooth = float(xp.sum(xp.sqrt(lx * lx + eps2), dtype=np.float64))
        hist["objective"].append(0.5 * res_norm ** 2 + lam_k * l1)
        hist["objective_smoothed"].append(0.5 * res_norm ** 2 + lam_k * smooth)
        hist["residual"].append(res_norm / y_norm)
        hist["lam"].append(lam_k)
        hist["rel_change"].append(rel_change)
        hist["subspace_dim"].append(k)
        if callback is not None and callback(IterationState(it, x.reshape(dshape), hist["objective"][-1],
                                                            res_norm / y_norm)):
            stopped = "callback"
            break
        # right after a restart the subspace is tiny and x barely moves: no convergence test there
        if it > 1 and since_restart >= 2 and rel_change < tol:
            stopped = "tol"
            break
        if it == int(max_iter):
            break
        # residual of the normal equations of the majorised problem
        g = Ka(res)
        g += np.float32(lam_k) * La(w * lx)
        since_restart += 1
        if since_restart >= restart or k >= cap:
            # restart: keep the current x as the first basis vector (K x, L x known)
            k = 0
            G_K[:] = 0.0
            h[:] = 0.0
            add(x, kx, lx)
            since_restart = 0
            restarts += 1
        if not add(g):
            stopped = "subspace_exhausted"
            break

    x = x.reshape(dshape)
    res_unclipped = res_norm
    if nonnegative:
        xp.maximum(x, 0, out=x)
        kx = Kf(x)
        lx = Lf(x)
        res_norm = float(xp.linalg.norm(kx - yv))
    objective = 0.5 * res_norm ** 2 + lam_k * float(xp.sum(xp.abs(lx), dtype=np.float64))
    info = {
        "iterations": it, "stopped": stopped, "history": hist, "lam": lam_k, "objective": objective,
        "residual": res_norm / y_norm, "residual_norm": res_norm, "restarts": restarts,
        "lam_reached": bool(reached), "eps": eps, "tau": float(tau) if use_dp else None,
        "discrepancy_ratio": res_norm / target if use_dp else None,
        "residual_norm_unclipped": res_unclipped,
        "time_projector": t_proj[0], "time_total": time.perf_counter() - t_start,
    }
    return x, info


class _TimedK(Operator):
    """K with its products routed through the timed closures (for golub_kahan)."""

    def __init__(self, K: Operator, fwd, adj):
        self.K, self._f, self._a = K, fwd, adj
        self.domain_shape, self.range_shape, self.xp = K.domain_shape, K.range_shape, K.xp

    def forward(self, x):
        return self._f(x).reshape(self.range_shape)

    def adjoint(self, y):
        return self._a(y).reshape(self.domain_shape)
