"""The one Chambolle-Pock (PDHG) core for weighted TV-type problems with non-negativity.

Problem (x: image, float32; y: data; K: projector; B: regularisation operator):

    min_x  P(x) = 1/2 ||K x - y||^2 + lam * sum_i w_i |(B x)_i|  (+ indicator of x >= 0)

``B`` is any Operator. Isotropic (``isotropic=True``): its range has shape ``(m, *img)`` and
``|(Bx)_i|`` is the Euclidean magnitude of the m components at pixel i (the gradient magnitude
for B = D); ``w`` has shape ``img``. Anisotropic: ``|.|`` is the absolute value of every entry
of ``Bx`` and ``w`` broadcasts against ``B.range_shape`` (shape ``img`` or the full range).

Steps. With L_K = ||K||, L_B = ||B|| (``Operator.norm()``, cached) the regulariser block is
rescaled by c = L_K / L_B so that both blocks have norm L_K; then tau = r * 0.99 / (sqrt(2) L_K),
sigma = 0.99 / (r sqrt(2) L_K), so tau * sigma * ||[K; cB]||^2 <= 0.98 < 1 for any r. Rescaling B
by c with one sigma is *exactly* the same iteration as keeping B and giving its dual block the
step sigma_B = sigma c^2 (the dual variable is s = c s'), which is what the code does: s is the
dual variable of the original, unscaled problem, bounded by |s_i| <= lam w_i. (Textbook
tau = sigma = 1/||[K; B]|| leaves sigma_B thousands of times too small; see DESIGN.md.)

The primal/dual balance r = sqrt(tau / sigma) matters as much: PDHG's bound is smallest for
r ~ ||x*|| / ||z*||, which depends on the grid and units. Measured (300 iterations, TV on Shepp-Logan,
reference fan beam, objective against a 3000-iteration solution), the best fixed r was 0.025 on
128^2 / 2 mm pixels, 0.1 on 256^2 / 1 mm and 0.1-0.3 on 512^2 / 0.5 mm: no single value fits. The
default ``step_ratio="auto"`` therefore starts at r = 0.1 and resets r = KAPPA ||x_k|| / ||z_k||
at iterations 10, 20, 40, ..., 320 (finitely many changes, so PDHG's convergence is kept); it
settled at r = 0.028 / 0.084 / 0.22 on those three grids and matched the best fixed r on each
(relative objective error after 300 iterations 1.3e-4 / 5.2e-4 / 2.0e-3 against 1.0e-4 / 6.0e-4 /
2.3e-3). A number fixes r.

Iteration (xbar = 2 x_{k+1} - x_k; K xbar and B xbar are formed from K x_{k+1} and K x_k, so each
iteration costs one forward and one adjoint projection and the data residual comes for free):

    q <- (q + sigma (K xbar - y)) / (1 + sigma)
    s <- proj_{|s_i| <= lam w_i}(s + sigma_B B xbar)          (magnitude, not squared)
    x <- max(0, x - tau (K^T q + B^T s))

Primal-dual gap (every ``gap_every`` iterations and at the last one). The Fenchel dual of the
problem is D(q, s) = -(1/2 ||q||^2 + <q, y>) - H*(-(K^T q + B^T s)) with |s_i| <= lam w_i, where H is
the indicator of the constraint set. For x >= 0 over all of R^N, H* is infinite unless
K^T q + B^T s >= 0, which PDHG's dual iterates satisfy only in the limit. We therefore use the
box C_R = {0 <= x <= R} with R = max(x_k) (for ``nonnegative=False``: |x| <= R, R = max|x_k|):

    D_R(q, s) = -(1/2 ||q||^2 + <q, y>) - R * sum_i max(-v_i, 0)     (nonnegative)
    D_R(q, s) = -(1/2 ||q||^2 + <q, y>) - R * sum_i |v_i|            (free sign)
    v = K^T q + B^T s,   gap = P(x_k) - D_R(q_k, s_k) >= 0.

D_R is finite for every dual iterate, and D_R <= min over C_R of P, which equals the true minimum
P* whenever the minimiser lies in C_R (R >= max x*; R = max x_k converges to max x*). At the
saddle point v >= 0 (v = 0 in the free case), so the gap goes to zero. ``info['gap']`` is the
last gap; the stopping test uses gap / |P(x_k)|.
"""
from __future__ import annotations

import math

import numpy as np

from recon_cli.ops.operator import Operator
from recon_cli.ops.prox import project_l2_balls, project_linf_box, group_magnitude
from recon_cli.solvers.algorithm import Algorithm, Stopwatch, TimedOperator, run
from recon_cli.solvers.registry import IterationState

#: Initial tau / sigma balance r: tau = r * 0.99 / (sqrt(2) ||K||), sigma = 0.99 / (r sqrt(2) ||K||).
STEP_RATIO = 0.1
#: With ``step_ratio="auto"`` r is reset at these iterations to KAPPA * ||x_k|| / ||(q_k, s_k / c)||.
REBALANCE_AT = (10, 20, 40, 80, 160, 320)
#: PDHG's ergodic bound (||x0 - x*||^2 / tau + ||z0 - z*||^2 / sigma) / k is smallest for
#: r = ||x*|| / ||z*||; measured, the fastest fixed r was ~0.07 of that ratio (0.06-0.13 over the
#: fan-beam cases 128^2 / 2 mm, 256^2 / 1 mm and a 24^2 parallel-beam case).
KAPPA = 0.07


def _norm(xp, a) -> float:
    return float(xp.linalg.norm(a.ravel()))


def _dot(xp, a, b) -> float:
    return float(xp.vdot(a.ravel(), b.ravel()))


class _Reg:
    """Evaluation and dual projection of lam * sum_i w_i |(Bx)_i| (isotropic or anisotropic)."""

    def __init__(self, B: Operator, lam: float, weights, isotropic: bool, xp):
        self.isotropic = isotropic
        self.xp = xp
        rshape = tuple(B.range_shape)
        if isotropic:
            if len(rshape) < 2:
                raise ValueError(f"isotropic=True needs B's range shaped (m, *img); got {rshape}")
            wshape = rshape[1:]
        else:
            wshape = rshape
        self.weights = None
        if weights is not None:
            w = xp.asarray(weights, dtype=np.float32)
            if not isotropic and w.shape == rshape[1:] and len(rshape) >= 2:
                w = w[None]
            if w.shape != wshape and not (not isotropic and w.shape[1:] == wshape[1:] and w.shape[0] == 1):
                raise ValueError(f"weights shape {tuple(w.shape)} does not fit B's range {rshape}")
            if bool(xp.any(w < 0)):
                raise ValueError("weights must be non-negative")
            self.weights = w
        self.set_lam(lam)
        self.work = xp.empty(rshape[1:] if isotropic else rshape, dtype=np.float32)
        self.scratch = xp.empty(rshape[1:], dtype=np.float32) if isotropic else None

    def set_lam(self, lam: float) -> None:
        self.lam = float(lam)
        if self.weights is None:
            self.radius = self.lam
        else:
            self.radius = (self.weights * np.float32(self.lam)).astype(np.float32)

    def project(self, s):
        if self.isotropic:
            project_l2_balls(s, self.radius, work=self.work, scratch=self.scratch)
        else:
            project_linf_box(s, self.radius)

    def value(self, Bx) -> float:
        """lam * sum_i w_i |(Bx)_i| (float64 sum)."""
        xp = self.xp
        if self.isotropic:
            mag = group_magnitude(Bx, out=self.work, scratch=self.scratch)
        else:
            mag = xp.abs(Bx, out=self.work)
        if self.weights is not None:
            mag *= self.weights
        return self.lam * float(xp.sum(mag, dtype=np.float64))


def step_sizes(K: Operator, B: Operator, step_ratio: float = STEP_RATIO, *, norms=None) -> dict:
    """tau, sigma (data dual) and sigma_B (regulariser dual) as plain floats, with the norms used.

    ``norms``: (||K||, ||B||) already known (a resumed run), else ``Operator.norm()``.
    """
    norm_k, norm_b = (float(K.norm()), float(B.norm())) if norms is None else (float(norms[0]), float(norms[1]))
    if not (norm_k > 0 and norm_b > 0):
        raise ValueError(f"operator norms must be positive (||K|| = {norm_k}, ||B|| = {norm_b})")
    c = norm_k / norm_b
    base = 0.99 / (math.sqrt(2.0) * norm_k)
    tau = base * float(step_ratio)
    sigma = base / float(step_ratio)
    return {"tau": tau, "sigma": sigma, "sigma_B": sigma * c * c, "norm_K": norm_k, "norm_B": norm_b,
            "block_scale": c}


def checked_problem(K: Operator, y, R: Operator, lam: float | None, name: str = "B"):
    """``y`` as float32 on K.xp after checking that R (the regulariser, called ``name``) and K share a
    domain, that y fits K's range and that ``lam`` (None: chosen later) is finite and >= 0."""
    if tuple(R.domain_shape) != tuple(K.domain_shape):
        raise ValueError(f"K and {name} have different domains: {K.domain_shape} vs {R.domain_shape}")
    y = K.xp.asarray(y, dtype=np.float32)
    if tuple(y.shape) != tuple(K.range_shape):
        raise ValueError(f"data shape {tuple(y.shape)} does not match K's range {K.range_shape}")
    if lam is not None and not (float(lam) >= 0 and math.isfinite(float(lam))):
        raise ValueError(f"lam must be a finite non-negative number, got {lam}")
    return y


class ChambollePock(Algorithm):
    """Chambolle-Pock for min_x 1/2||Kx-y||^2 + lam sum_i w_i |(Bx)_i| (+ x >= 0); see the module docstring.

    Shapes: x ``K.domain_shape`` (= ``B.domain_shape``), y ``K.range_shape``; float32 on K.xp.
    ``x0``: warm start (copied). ``dual0``: optional (q, s) warm start of the dual variables.
    ``max_iter``, ``tol_rel_change`` (||x_{k+1} - x_k|| / ||x_{k+1}||), ``tol_gap`` (gap / |P|, tested
    every ``gap_every`` iterations and at the last one); objective and residual are recorded every
    ``record_every`` iterations (every one when observed by a callback). ``step_ratio``: "auto" or r.

    State {iteration, x, q, s, kxbar, bxbar (the extrapolations K xbar, B xbar for the next iteration),
    tau, sigma, sigma_B, norm_K, norm_B, history, objective, residual, rel_change, rel_gap,
    last_recorded}; ``state`` (such a dict; ``x0``/``dual0`` are then ignored) continues after its
    iteration with exactly the uninterrupted iterates: K x and B x are recomputed from x, the same
    products as in the loop, and the step-ratio resets keep their iteration numbers.
    """

    budget_reason = "max_iter"

    def __init__(self, K: Operator, y, B: Operator, lam: float, weights=None, *, isotropic: bool = True,
                 nonnegative: bool = True, x0=None, max_iter: int = 500, tol_rel_change: float = 0.0,
                 tol_gap: float = 0.0, record_every: int = 1, gap_every: int = 10, dual0=None,
                 step_ratio="auto", state: dict | None = None, kx0=None):
        xp = self.xp = K.xp
        y = checked_problem(K, y, B, lam)
        lam = float(lam)
        self.K = K if isinstance(K, TimedOperator) else TimedOperator(K)
        self.B, self.y, self.lam, self.nonnegative = B, y, lam, nonnegative
        self.max_iterations = int(max_iter)
        self.record_every, self.gap_every = max(1, int(record_every)), max(1, int(gap_every))
        self.tol_rel_change, self.tol_gap = tol_rel_change, tol_gap
        self.auto_ratio = step_ratio == "auto"
        rs = state
        steps = step_sizes(K, B, STEP_RATIO if self.auto_ratio else step_ratio,
                           norms=None if rs is None else (rs["norm_K"], rs["norm_B"]))
        self.norm_K, self.norm_B = steps["norm_K"], steps["norm_B"]
        self.base, self.c2 = 0.99 / (math.sqrt(2.0) * steps["norm_K"]), steps["block_scale"] ** 2
        self.tau, self.sigma, self.sigma_b = steps["tau"], steps["sigma"], steps["sigma_B"]
        self.reg = _Reg(B, lam, weights, isotropic, xp)
        self.y_norm = _norm(xp, y) or 1.0
        self.hist = {"objective": [], "residual": [], "rel_change": [], "gap": [], "gap_iteration": [],
                     "step_ratio": []}
        self.objective = self.residual = self.gap = self.rel_gap = self.rel_change = None
        self.last_recorded = 0
        self.want_record = False
        if rs is not None:
            self.resume(rs)
            return
        Kt = self.K
        if x0 is None:
            self.x = xp.zeros(K.domain_shape, dtype=np.float32)
            self.kx = xp.zeros(K.range_shape, dtype=np.float32)
        else:
            self.x = xp.array(x0, dtype=np.float32, copy=True).reshape(K.domain_shape)
            if nonnegative:
                xp.maximum(self.x, 0, out=self.x)
            # kx0: K x0 from the run that ended at x0 (a chain of warm starts: lam auto's legs, TpV's steps)
            self.kx = Kt.forward(self.x) if kx0 is None else xp.array(kx0, dtype=np.float32, copy=True)
        self.bx = B.forward(self.x)
        self.kxbar = self.kx.copy()
        self.bxbar = self.bx.copy()
        self.x_prev = xp.empty_like(self.x)
        if dual0 is None:
            self.q = xp.zeros(K.range_shape, dtype=np.float32)
            self.s = xp.zeros(B.range_shape, dtype=np.float32)
        else:
            self.q = xp.array(dual0[0], dtype=np.float32, copy=True)
            self.s = xp.array(dual0[1], dtype=np.float32, copy=True)
            self.reg.project(self.s)

    def load_state(self, rs: dict) -> None:
        xp, K, B = self.xp, self.K, self.B
        self.tau, self.sigma, self.sigma_b = float(rs["tau"]), float(rs["sigma"]), float(rs["sigma_B"])
        self.x = xp.array(rs["x"], dtype=np.float32, copy=True).reshape(K.domain_shape)
        self.kx = K.forward(self.x)
        self.bx = B.forward(self.x)
        self.kxbar = xp.array(rs["kxbar"], dtype=np.float32, copy=True).reshape(K.range_shape)
        self.bxbar = xp.array(rs["bxbar"], dtype=np.float32, copy=True).reshape(B.range_shape)
        self.x_prev = xp.empty_like(self.x)
        self.q = xp.array(rs["q"], dtype=np.float32, copy=True).reshape(K.range_shape)
        self.s = xp.array(rs["s"], dtype=np.float32, copy=True).reshape(B.range_shape)
        self.hist = {name: list(rs["history"][name]) for name in self.hist}
        self.objective, self.residual, self.rel_change, self.rel_gap = (
            rs[k] for k in ("objective", "residual", "rel_change", "rel_gap"))
        self.last_recorded = int(rs["last_recorded"])

    def step(self, it: int):
        xp, K, B, y, reg = self.xp, self.K, self.B, self.y, self.reg
        x, q, s, kxbar, bxbar = self.x, self.q, self.s, self.kxbar, self.bxbar
        want_gap = (it % self.gap_every == 0) or it == self.max_iterations
        if self.auto_ratio and it in REBALANCE_AT:
            xn = _norm(xp, x)
            zn = math.sqrt(_dot(xp, q, q) + _dot(xp, s, s) / self.c2)
            if xn > 0 and zn > 0:
                r = KAPPA * xn / zn
                self.tau, self.sigma = self.base * r, self.base / r
                self.sigma_b = self.sigma * self.c2
                self.hist["step_ratio"].append(r)
        tau, sigma = self.tau, self.sigma
        want_record = self.want_record = want_gap or (it % self.record_every == 0) or self.observed
        # dual ascent: data block, then regulariser block (kxbar, bxbar are consumed)
        kxbar -= y
        kxbar *= sigma
        q += kxbar
        q *= 1.0 / (1.0 + sigma)
        bxbar *= self.sigma_b
        s += bxbar
        reg.project(s)
        # primal descent
        g = K.adjoint(q)
        g += B.adjoint(s)
        if want_gap:
            dual_data = 0.5 * _dot(xp, q, q) + _dot(xp, q, y)
            if self.nonnegative:
                viol = float(xp.sum(xp.maximum(-g, 0), dtype=np.float64))
            else:
                viol = float(xp.sum(xp.abs(g), dtype=np.float64))
        x_prev = self.x_prev
        x_prev[...] = x
        g *= tau
        x -= g
        if self.nonnegative:
            xp.maximum(x, 0, out=x)
        del g
        # K x_{k+1}, B x_{k+1}, and the extrapolations K xbar = 2 K x_{k+1} - K x_k
        kx_new = K.forward(x)
        xp.multiply(kx_new, 2.0, out=kxbar)
        kxbar -= self.kx
        kx_old, self.kx = self.kx, kx_new
        bx_new = B.forward(x)
        xp.multiply(bx_new, 2.0, out=bxbar)
        bxbar -= self.bx
        self.bx = bx_new
        # convergence measures
        x_prev -= x
        x_norm = _norm(xp, x)
        self.rel_change = _norm(xp, x_prev) / x_norm if x_norm > 0 else 0.0
        self.gap = None
        hist = self.hist
        if want_record:
            xp.subtract(self.kx, y, out=kx_old)  # reuse the old buffer as the residual
            res_norm = _norm(xp, kx_old)
            self.objective = 0.5 * res_norm * res_norm + reg.value(self.bx)
            self.residual = res_norm / self.y_norm
            self.last_recorded = it
            if it % self.record_every == 0 or want_gap:
                hist["objective"].append(self.objective)
                hist["residual"].append(self.residual)
                hist["rel_change"].append(self.rel_change)
        del kx_old
        if want_gap:
            radius = float(xp.max(x)) if self.nonnegative else float(xp.max(xp.abs(x)))
            dual_value = -dual_data - radius * viol
            self.gap = self.objective - dual_value
            self.rel_gap = self.gap / abs(self.objective) if self.objective else abs(self.gap)
            hist["gap"].append(self.gap)
            hist["gap_iteration"].append(it)
        return None

    def converged(self):
        if self.tol_rel_change > 0 and self.rel_change < self.tol_rel_change:
            return "rel_change"
        if self.tol_gap > 0 and self.gap is not None and self.rel_gap < self.tol_gap:
            return "gap"
        return None

    def report(self) -> IterationState:
        rec = self.want_record
        return IterationState(self.iteration, self.x, self.objective if rec else None,
                              self.residual if rec else None, self.gap)

    def state(self) -> dict:
        return {"iteration": self.iteration, "x": self.x, "q": self.q, "s": self.s, "kxbar": self.kxbar,
                "bxbar": self.bxbar, "tau": self.tau, "sigma": self.sigma, "sigma_B": self.sigma_b,
                "norm_K": self.norm_K, "norm_B": self.norm_B, "history": self.hist, "objective": self.objective,
                "residual": self.residual, "rel_change": self.rel_change, "rel_gap": self.rel_gap,
                "last_recorded": self.last_recorded}

    def finish(self) -> None:
        if self.last_recorded != self.iteration:  # stopped on an unrecorded iteration: objective of x
            res_norm = _norm(self.xp, self.kx - self.y)
            self.objective = 0.5 * res_norm * res_norm + self.reg.value(self.bx)
            self.residual = res_norm / self.y_norm

    def info(self) -> dict:
        """iterations, history, objective, residual, rel_change, gap, rel_gap, lam, the final steps
        (tau, sigma, sigma_B, step_ratio), norm_K, norm_B, time_projector (s, in K's products)."""
        hist = self.hist
        return {"iterations": self.iteration, "history": hist, "objective": self.objective,
                "residual": self.residual, "rel_change": self.rel_change,
                "gap": hist["gap"][-1] if hist["gap"] else None, "rel_gap": self.rel_gap,
                "lam": self.lam, "tau": self.tau, "sigma": self.sigma, "sigma_B": self.sigma_b,
                "step_ratio": math.sqrt(self.tau / self.sigma), "norm_K": self.norm_K, "norm_B": self.norm_B,
                "time_projector": self.K.seconds}


def pdhg(K: Operator, y, B: Operator, lam: float, weights=None, *, isotropic: bool = True,
         nonnegative: bool = True, x0=None, max_iter: int = 500, tol_rel_change: float = 0.0,
         tol_gap: float = 0.0, callback=None, record_every: int = 1, gap_every: int = 10,
         dual0=None, return_dual: bool = False, step_ratio="auto", resume_state: dict | None = None,
         context: dict | None = None, kx0=None, keep: dict | None = None):
    """Solve min_x 1/2||Kx-y||^2 + lam sum_i w_i |(Bx)_i| (+ x >= 0) by :class:`ChambollePock` and the driver.

    ``callback(IterationState)`` is called after every iteration (``objective``/``residual``
    filled on recorded iterations, ``gap`` on gap iterations); a truthy return stops. Its
    ``extra['state']`` is the algorithm's state plus ``pending_stop`` and ``context``;
    ``resume_state`` (such a dict) continues it.

    Returns ``(x, info)`` (``(x, info, (q, s))`` with ``return_dual``). ``info``: iterations,
    stopped, history {objective, residual (||Kx-y||/||y||), rel_change, gap, gap_iteration},
    objective, gap, rel_gap, residual, lam, tau, sigma, sigma_B (final steps), step_ratio, norm_K, norm_B,
    time_projector / time_total (s; time inside K.forward/K.adjoint and overall).
    ``kx0``: K x0, known from the run that ended at ``x0`` (saves a projection); ``keep``: a dict that
    receives this run's final K x as ``keep['kx']`` (the next run's ``kx0``).
    """
    clock = Stopwatch()
    alg = ChambollePock(K, y, B, lam, weights, isotropic=isotropic, nonnegative=nonnegative, x0=x0,
                        max_iter=max_iter, tol_rel_change=tol_rel_change, tol_gap=tol_gap,
                        record_every=record_every, gap_every=gap_every, dual0=dual0, step_ratio=step_ratio,
                        state=resume_state, kx0=kx0)
    record = run(alg, callback, context=context)
    if keep is not None:
        keep["kx"] = alg.kx
    info = {**alg.info(), "stopped": record.stopped, "time_total": clock.seconds()}
    if record.resumed_from is not None:
        info["resumed_from"] = record.resumed_from
    if return_dual:
        return alg.x, info, (alg.q, alg.s)
    return alg.x, info
