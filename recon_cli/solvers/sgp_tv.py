"""Scaled Gradient Projection (SGP) on smoothed total variation, the iterative solver of RISING.

Minimises, over x >= 0,

    f(x) = 1/2 ||K x - y||^2 + lam_abs * sum_i sqrt(|D x|_i^2 + beta_abs^2)

with D the forward-difference gradient (slice-wise for stacks) and |.|_i the isotropic magnitude.
Method: Bonettini, Zanella, Zanni, "A scaled gradient projection method for constrained image
deblurring", Inverse Problems 25 (2009) 015002 -- a diagonal scaling from the split of the gradient
into positive parts, alternating Barzilai-Borwein steps (ABB_min), projection onto x >= 0 and an
Armijo line search along the feasible direction (monotone by default).

Units and the convention for ``lam`` and ``beta``: images are attenuation in 1/mm (water 0.0192)
and data are line integrals (dimensionless). ``lam`` and ``beta`` are given, like the RISING paper's
(lam = 0.1, beta = 1e-3), for an image normalised to [0, 1] on a grid of unit pixels. With
``s = intensity_scale`` (1/mm, the value that maps to 1; default 2 x water) and voxel size ``h`` (mm)
the solver uses

    lam_abs = lam * s * h^2   (mm)        beta_abs = beta * s   (1/mm),

which makes our problem exactly the paper's problem for u = x / s, scaled by s^2 h^2. The default
lam = 10 (not the paper's 0.1) was chosen on the sample data (I0 = 1e5, 60 fan-beam views): 0.1
there is too weak (200 iterations fit the noise, 26.7 dB on the Shepp-Logan sample against 39.9 dB
for lam = 10).

``lam: auto``: the discrepancy principle followed along one SGP chain (:func:`choose_lam_sgp`), then,
on few-view data, a factor min(1, s / FULL_SAMPLING) on that lam (s: data values per pixel; 0.35,
fitted on the evaluation suite's tuning cases: benchmarks/results/sgp_lam_rule.md).

Per iteration: one forward and one adjoint projection (the line search reuses K d, so backtracking
costs no projections). Step sizes and line-search scalars are plain Python floats; the loop is
float32 and in place. Works on numpy and cupy (``op.xp``); a stack of slices is solved jointly
(one step size for the stack), which converges to the same minimiser as slice-by-slice solves.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from recon_cli.errors import InputError, RunError
from recon_cli.ops.finite_differences import Gradient
from recon_cli.ops.operator import Operator
from recon_cli.sinogram import Reconstruction, Sinogram
from recon_cli.solvers.algorithm import Algorithm, Halt, Stopwatch, TimedOperator, run
from recon_cli.solvers.registry import IterationState, register, run_ref
from recon_cli.solvers.params.sgp_tv import SGPTVParams  # noqa: F401 (re-exported)



# ---------------------------------------------------------------------------------------------
# The smooth objective and its pieces (any dtype; used by the loop and by the tests)


def absolute_weights(params: SGPTVParams, voxel_size: float, lam: float | None = None) -> tuple[float, float]:
    """(lam_abs in mm, beta_abs in 1/mm) from the normalised parameters (``lam`` overrides params.lam)."""
    s = float(params.intensity_scale)
    lam = float(params.lam if lam is None else lam)
    return lam * s * float(voxel_size) ** 2, float(params.beta) * s


#: lam auto on few-view data: lam = min(1, s / FULL_SAMPLING) x the discrepancy lam, s = data values
#: per pixel of a slice (:func:`sampling_ratio`). Below it the discrepancy principle over-smooths
#: SGP-TV: the best lam was 0.5-0.7x the discrepancy lam on the tuning cases with 30-45 views
#: (benchmarks/results/suite.md, findings). Chosen on the suite's tuning cases only.
FULL_SAMPLING = 0.35


def sampling_ratio(op: Operator) -> float:
    """Data values per unknown: n_angles x n_det / (ny x nx) for a slice (and for a stack of them)."""
    return float(np.prod(tuple(op.range_shape))) / float(np.prod(tuple(op.domain_shape)))


def auto_lam_factor(op: Operator, params: SGPTVParams) -> tuple[float, float]:
    """(factor on the discrepancy lam, sampling ratio) of lam auto: ``params.auto_lam_factor``, or
    min(1, sampling / FULL_SAMPLING) when it is 'auto'."""
    s = sampling_ratio(op)
    if params.auto_lam_factor != "auto":
        return float(params.auto_lam_factor), s
    return min(1.0, s / FULL_SAMPLING), s


def choose_lam_sgp(op: Operator, sino: Sinogram, params: SGPTVParams, x0=None) -> tuple[float, Any, dict]:
    """lam auto for SGP-TV: the discrepancy target followed along one warm-started SGP chain
    (regularisation_parameter.follow_discrepancy, as ``tv``): a first leg of a third of
    ``iterations`` (one leg from a warm start ``x0``), legs of ``search_iterations`` (at most
    iterations / 6), a damped Newton step on log lam after each. Returns (lam normalised, the chain's
    :class:`SGP` at its last x (the final run continues it by :meth:`SGP.restart`), info with
    ``final_iterations``: max(iterations - chain, iterations / 3), so that the whole run takes at most
    LAM_AUTO_BUDGET x ``iterations``). The legs and the final run are one SGP object restarted at each
    new lam: a restart is exactly a fresh SGP from the last x, but without its 3 projections (K x,
    K^T of the residual, K^T y) and without freeing and reallocating its arrays (measured on suite
    case s07: 542 instead of 557 projections, and no page faults; a fresh object per leg cost 5-10 %
    of one solve in CPU time beyond the iterations, from the allocator returning memory between legs).
    The lam returned is :func:`auto_lam_factor` x the lam the legs settled on (the final run moves to it
    from the chain's x). The earlier trial search (a cold trial of ``iterations``, then warm trials)
    stopped on unconverged trials: 1.75 dB below the best lam on the suite's 512^2 case."""
    from recon_cli.solvers.regularisation_parameter import LAM_AUTO_BUDGET, data_misfit_norm, follow_discrepancy

    y = sino.data
    misfit, misfit_info = data_misfit_norm(y, sino.metadata, sino.geometry, sino.grid.voxel_size,
                                           model_error=bool(params.model_error))
    target = float(params.discrepancy_tau) * misfit
    y_norm = float(op.xp.linalg.norm(op.xp.asarray(y).ravel()))
    clock = Stopwatch()
    n_total = int(params.iterations)
    leg = max(5, min(int(params.search_iterations), int(math.ceil(n_total / 6))))
    first = leg if x0 is not None else max(leg, int(math.ceil(n_total / 3)))
    final_min = int(math.ceil(n_total / 3))
    chain: dict[str, Any] = {"alg": None}

    def run_leg(lam: float, n: int):
        trial = params.model_copy(update={"iterations": n, "tol": 0.0, "tol_objective": 0.0})
        lam_abs, beta_abs = absolute_weights(params, sino.grid.voxel_size, lam)
        alg = chain["alg"]
        if alg is None:
            alg = chain["alg"] = SGP(op, y, lam_abs, beta_abs, trial, x0=x0)
        else:
            alg.restart(lam_abs, trial)
        record = run(alg)
        return float(alg.history["residual"][-1]) * y_norm, int(record.iterations)

    followed = follow_discrepancy(run_leg, target, float(params.search_start), first=first, leg=leg,
                                  budget=int(LAM_AUTO_BUDGET * n_total) - final_min, rtol=float(params.search_rtol))
    factor, sampling = auto_lam_factor(op, params)
    info = {"lam_auto": True, **misfit_info, "discrepancy_target": target, "lam_discrepancy": followed.lam,
            "auto_lam_factor": factor, "sampling_ratio": sampling,
            "discrepancy_tau": float(params.discrepancy_tau), "lam_search_evaluations": followed.legs,
            "lam_search_iterations": followed.iterations, "lam_search_converged": followed.settled,
            "final_iterations": max(n_total - followed.iterations, final_min),
            "time_lam_search": clock.seconds()}
    return factor * followed.lam, chain["alg"], info


def noise_rule_lam(sino: Sinogram, params: SGPTVParams) -> tuple[float, dict]:
    """lam 'noise': lam_per_noise_std * sigma / voxel_size (normalised), sigma the noise std of one line
    integral (metadata sigma or I0, else estimated from the sinogram; regularisation_parameter.noise_norm).
    No solve: what RISING needs, whose k iterations must stay cheap, while the network (trained with
    the same rule) serves every dose of its envelope. Returns (lam, info)."""
    from recon_cli.solvers.regularisation_parameter import noise_norm

    y = sino.data
    norm, source = noise_norm(y, sino.metadata)
    std = float(norm) / math.sqrt(float(np.prod(y.shape)))
    if not (std > 0 and math.isfinite(std)):
        raise InputError(f"lam 'noise': the noise level is {std!r} ({source}); give lam a number",
                         field="lam")
    lam = float(params.lam_per_noise_std) * std / float(sino.grid.voxel_size)
    return lam, {"lam_rule": "noise", "lam_rule_noise_std": std, "lam_rule_noise_source": source}


def tv_weights(dx, beta: float, xp):
    """phi_i = 1 / sqrt(|Dx|_i^2 + beta^2) for ``dx`` = D x of shape (n_axes, *image)."""
    a = xp.sum(dx * dx, axis=0)
    a += beta * beta
    xp.sqrt(a, out=a)
    xp.reciprocal(a, out=a)
    return a


def smoothed_tv(dx, beta: float, xp) -> float:
    """sum_i sqrt(|Dx|_i^2 + beta^2), accumulated in float64."""
    a = xp.sum(dx * dx, axis=0)
    a += beta * beta
    return float(xp.sum(xp.sqrt(a), dtype=xp.float64))


def tv_split_weight(phi, grad_op: Gradient, xp):
    """w with grad TV(x) = x * w - U(x), U >= 0 for x >= 0: w_i = sum of phi over the differences using pixel i.

    Forward differences: the difference at i along an axis (when i is not last) involves pixels i
    and i+1 with weight phi_i, so w = |D|^T phi (D^T with absolute values of its entries).
    """
    w = xp.zeros_like(phi)
    for ax in grad_op.axes:
        n = phi.shape[ax]
        lo = [slice(None)] * phi.ndim
        hi = [slice(None)] * phi.ndim
        lo[ax], hi[ax] = slice(0, n - 1), slice(1, n)
        w[tuple(lo)] += phi[tuple(lo)]
        w[tuple(hi)] += phi[tuple(lo)]
    return w


def objective_and_gradient(op: Operator, grad_op: Gradient, x, y, lam: float, beta: float):
    """(f(x), grad f(x)) of 1/2||Kx - y||^2 + lam * sum sqrt(|Dx|^2 + beta^2) (absolute lam, beta)."""
    xp = op.xp
    r = op.forward(x) - y
    dx = grad_op.forward(x)
    phi = tv_weights(dx, beta, xp)
    f = 0.5 * float(xp.sum(r * r, dtype=xp.float64)) + lam * smoothed_tv(dx, beta, xp)
    g = op.adjoint(r) + lam * grad_op.adjoint(dx * phi)
    return f, g


# ---------------------------------------------------------------------------------------------
# The solver


def _dot(a, b, xp) -> float:
    """<a, b> as a Python float, accumulated in float64."""
    return float(xp.sum(a * b, dtype=xp.float64))


class SGP(Algorithm):
    """SGP on f (absolute ``lam`` in mm, ``beta`` in 1/mm) from ``x0`` (or 0), float32 of op.domain_shape.

    State {iteration, x, r, alpha, tau, bb2_recent, f_recent, f_initial, history, backtracks}; ``state``
    (such a dict) continues after its iteration with exactly the uninterrupted iterates (D x, the
    gradient and the scaling are recomputed from x and r by the same operations as in the loop).
    """

    def __init__(self, op: Operator, y, lam: float, beta: float, params: SGPTVParams, x0=None,
                 state: dict | None = None):
        xp = self.xp = op.xp
        self.params, self.max_iterations = params, int(params.iterations)
        self.K = K = TimedOperator(op)
        y = self.y = xp.asarray(y, dtype=np.float32)
        if y.shape != tuple(op.range_shape):
            raise InputError(f"sinogram has shape {y.shape}, the projector expects {tuple(op.range_shape)}",
                             field="sinogram")
        self.grad_op = Gradient(op.domain_shape, mode="slicewise", xp=xp)
        self.knorm = knorm = float(op.norm())
        if not knorm > 0.0:
            raise RunError("the projector has zero norm; nothing to reconstruct")
        self.c = 1.0 / (knorm * knorm)  # unscaled step unit 1/||K||^2
        self.lam, self.beta = float(lam), float(beta)
        if x0 is None:
            x = xp.zeros(op.domain_shape, dtype=np.float32)
            kx = xp.zeros(op.range_shape, dtype=np.float32)
        else:
            x = xp.array(x0, dtype=np.float32)
            if x.shape != tuple(op.domain_shape):
                raise InputError(f"warm start has shape {x.shape}, expected {tuple(op.domain_shape)}", field="x0")
            xp.maximum(x, 0.0, out=x)
            kx = K.forward(x)
        r = kx - y  # residual K x - y, updated in place
        del kx
        start = 0
        if state is not None:
            x = xp.array(state["x"], dtype=np.float32).reshape(op.domain_shape)
            r = xp.array(state["r"], dtype=np.float32).reshape(op.range_shape)
            start = int(state["iteration"])
        self.x, self.r = x, r
        self.y_norm = float(xp.linalg.norm(y)) or 1.0
        self.kty = K.adjoint(y) if params.scaling else None
        self._start(start)
        self.d = xp.empty_like(x)
        if state is not None:
            self.resume(state)

    def _objective_at(self, x, r):
        """(f, D x) at x with residual r = K x - y."""
        dx = self.grad_op.forward(x)
        return 0.5 * _dot(r, r, self.xp) + self.lam * smoothed_tv(dx, self.beta, self.xp), dx

    def _gradient_at(self, r, dx, g_data=None):
        """(grad f, K^T r, phi) from the residual and D x (one adjoint projection; none when ``g_data``,
        K^T r, is known)."""
        phi = tv_weights(dx, self.beta, self.xp)
        if g_data is None:
            g_data = self.K.adjoint(r)
        g = self.grad_op.adjoint(dx * phi)
        g *= self.lam
        g += g_data
        return g, g_data, phi

    def _scaling_of(self, x, g_data, phi, k):
        """Diagonal scaling clip(x / V, c / L_k, c L_k), V = K^T K x + lam x w (c where V = 0, e.g. x = 0).

        L_k^2 = 1 + L^2 / k^2.1 (L = scaling_bound): the bounds narrow towards the unscaled c with a
        summable excess, the condition of the SGP convergence theory (Bonettini & Prato 2015).
        """
        params, xp, c = self.params, self.xp, self.c
        if not params.scaling:
            return c
        v = g_data + self.kty  # K^T K x
        v += self.lam * (x * tv_split_weight(phi, self.grad_op, xp))
        positive = v > 0
        scale = xp.where(positive, x / xp.where(positive, v, 1.0), c).astype(np.float32, copy=False)
        bound = (1.0 + params.scaling_bound ** 2 / max(k, 1) ** 2.1) ** 0.5
        xp.clip(scale, c / bound, c * bound, out=scale)
        return scale

    def load_state(self, state: dict) -> None:
        params = self.params
        self.alpha, self.tau, self.f_initial = (float(state[key]) for key in ("alpha", "tau", "f_initial"))
        self.bb2_recent.extend(float(v) for v in state["bb2_recent"])
        self.f_recent = deque((float(v) for v in state["f_recent"]), maxlen=params.armijo_memory)
        self.history = {key: [float(v) for v in state["history"][key]] for key in self.history}
        self.n_backtracks = int(state["backtracks"])

    def step(self, k: int):
        xp, params, lam, c = self.xp, self.params, self.lam, self.c
        x, r, g, d, dx, f = self.x, self.r, self.g, self.d, self.dx, self.f
        beta2 = self.beta * self.beta
        # feasible direction d = P(x - alpha * D * g) - x
        xp.multiply(g, self.scale, out=d)
        d *= -self.alpha
        d += x
        xp.maximum(d, 0.0, out=d)
        d -= x
        gd = _dot(g, d, xp)
        if not gd < 0.0:
            return Halt("stationary (no descent direction)")
        kd = self.K.forward(d)
        dd = self.grad_op.forward(d)
        # change of f along d: the data term is quadratic; the TV term from stable differences
        # sqrt(a + e) - sqrt(a) = e / (sqrt(a + e) + sqrt(a)), e = 2 t <Dx, Dd> + t^2 |Dd|^2
        q1, q2 = _dot(r, kd, xp), _dot(kd, kd, xp)
        a = xp.sum(dx * dx, axis=0)
        a += beta2
        gh = xp.sum(dx * dd, axis=0)
        hh = xp.sum(dd * dd, axis=0)
        sqrt_a = xp.sqrt(a)
        f_ref = max(self.f_recent)
        step = 1.0
        for _ in range(params.max_backtracks):  # Armijo backtracking within the iteration
            e = hh * (step * step)
            e += gh * (2.0 * step)
            den = xp.sqrt(a + e)
            den += sqrt_a
            e /= den
            delta = step * q1 + 0.5 * step * step * q2 + lam * float(xp.sum(e, dtype=xp.float64))
            if f + delta <= f_ref + params.armijo_sigma * step * gd:
                break
            step *= params.backtrack_factor
            self.n_backtracks += 1
        else:
            return Halt("line search failed (float32 precision reached)")
        # move: x += step d (stays >= 0: a convex combination of x and P(...) >= 0), r += step K d
        d *= step
        x += d
        xp.maximum(x, 0.0, out=x)
        kd *= step
        r += kd
        f_new, dx_new = self._objective_at(x, r)
        if params.armijo_memory == 1 and not f_new < f:
            # the line search promised a decrease that the recomputed objective cannot resolve:
            # converged to float32 precision; undo the step and stop
            x -= d
            xp.maximum(x, 0.0, out=x)
            r -= kd
            return Halt("no measurable decrease (float32 precision reached)")
        self.f_old, self.f, self.dx = f, f_new, dx_new
        g_old = g
        g, g_data, phi = self._gradient_at(r, dx_new)
        self.g, self.g_data = g, g_data
        self.scale = scale = self._scaling_of(x, g_data, phi, k)
        self.f_recent.append(f_new)
        # alternating Barzilai-Borwein steps in the metric of the new scaling (s = d, z = g - g_old)
        z = g - g_old
        if params.scaling:
            s_over = d / scale
            sz1 = _dot(s_over, z, xp)
            bb1 = _dot(s_over, s_over, xp) / sz1 if sz1 > 0 else params.alpha_max
            dz = z * scale
            sz2 = _dot(d, dz, xp)
            bb2 = sz2 / _dot(dz, dz, xp) if sz2 > 0 else params.alpha_max
        else:
            sz = _dot(d, z, xp)
            bb1 = _dot(d, d, xp) / (c * sz) if sz > 0 else params.alpha_max
            bb2 = sz / (c * _dot(z, z, xp)) if sz > 0 else params.alpha_max
        bb1 = min(max(bb1, params.alpha_min), params.alpha_max)
        bb2 = min(max(bb2, params.alpha_min), params.alpha_max)
        self.bb2_recent.append(bb2)
        if bb2 / bb1 <= self.tau:
            self.alpha = min(self.bb2_recent)
            self.tau *= 0.9
        else:
            self.alpha = bb1
            self.tau *= 1.1
        residual = float(xp.linalg.norm(r)) / self.y_norm
        self.history["objective"].append(f_new)
        self.history["residual"].append(residual)
        self.history["alpha"].append(self.alpha)
        self.history["step"].append(step)
        return None

    def converged(self):
        xp, params = self.xp, self.params
        if params.tol > 0.0 and float(xp.linalg.norm(self.d)) <= params.tol * float(xp.linalg.norm(self.x)):
            return "tol (relative change of x)"
        if params.tol_objective > 0.0 and abs(self.f_old - self.f) <= params.tol_objective * abs(self.f):
            return "tol_objective (relative change of f)"
        return None

    def report(self) -> IterationState:
        return IterationState(self.iteration, self.x, objective=self.f, residual=self.history["residual"][-1])

    def restart(self, lam: float, params: SGPTVParams) -> None:
        """Start a new run from the current x at absolute weight ``lam`` with ``params`` (its budget and
        tolerances): exactly what a new SGP(x0=x) would do, but keeping the residual K x - y, K^T of it
        and K^T y (no projection) and the arrays (lam auto's legs: :func:`choose_lam_sgp`)."""
        self.params, self.max_iterations = params, int(params.iterations)
        self.lam = float(lam)
        self.iteration, self.pending_stop, self.resumed_from = 0, None, None
        self.K.seconds = 0.0
        self._start(0, self.g_data)

    def _start(self, iteration: int, g_data=None) -> None:
        """A run's start at (x, r): objective, gradient, scaling, step and line-search memory, history.
        ``g_data``: K^T r when known (a restart; otherwise one adjoint)."""
        params = self.params
        self.f, self.dx = self._objective_at(self.x, self.r)
        self.f_old = self.f_initial = self.f
        self.g, g_data, phi = self._gradient_at(self.r, self.dx, g_data)
        self.g_data = g_data  # K^T r at x (kept for restart)
        self.scale = self._scaling_of(self.x, g_data, phi, iteration)
        self.alpha = float(params.alpha_init)
        self.tau = 0.5  # ABB_min switching threshold, adapted every iteration
        self.bb2_recent: deque[float] = deque(maxlen=params.bb_memory)
        self.f_recent: deque[float] = deque([self.f], maxlen=params.armijo_memory)
        self.history: dict[str, list[float]] = {"objective": [], "residual": [], "alpha": [], "step": []}
        self.n_backtracks = 0

    def state(self) -> dict:
        return {"iteration": self.iteration, "x": self.x, "r": self.r, "alpha": self.alpha, "tau": self.tau,
                "bb2_recent": list(self.bb2_recent), "f_recent": list(self.f_recent), "f_initial": self.f_initial,
                "history": self.history, "backtracks": self.n_backtracks}


def sgp_tv_minimize(op: Operator, y, lam: float, beta: float, params: SGPTVParams, x0=None,
                    callback=None, resume_state: dict | None = None, context: dict | None = None,
                    algorithm: "SGP | None" = None) -> tuple[Any, dict]:
    """Run :class:`SGP` by the driver. Returns (x float32 of op.domain_shape, info).

    The callback's ``extra['state']`` is SGP's state plus ``context``; ``resume_state`` continues one.
    ``algorithm``: an SGP on this problem (lam auto's chain) restarted from its x instead of a new
    one from ``x0`` (:meth:`SGP.restart`).
    """
    clock = Stopwatch()
    if algorithm is not None:
        if resume_state is not None:
            raise ValueError("a resumed run starts from its state, not from a chain")
        alg = algorithm
        alg.restart(lam, params)
    else:
        alg = SGP(op, y, lam, beta, params, x0=x0, state=resume_state)
    record = run(alg, callback, context=context)
    info = {"iterations": record.iterations, "history": alg.history, "stopped": record.stopped,
            "objective_initial": alg.f_initial, "backtracks": alg.n_backtracks,
            "time_projector": alg.K.seconds, "time_total": clock.seconds(),
            "lam_abs": alg.lam, "beta_abs": alg.beta, "operator_norm": alg.knorm}
    if record.resumed_from:
        info["resumed_from"] = record.resumed_from
    return alg.x, info


@register("sgp_tv", SGPTVParams, state_arrays=(28, 4))
def solve(op: Operator, sino: Sinogram, params: SGPTVParams, callback=None, x0=None, *,
          resume_state: dict | None = None) -> Reconstruction:
    """min_{x>=0} 1/2||Kx - y||^2 + lam_abs sum sqrt(|Dx|^2 + beta_abs^2); x0 (array) overrides params.x0.

    ``resume_state``: continue a run from the state its callback reported (no warm start is run).
    """
    clock = Stopwatch()
    info_x0: dict[str, Any] = {}
    chain = None  # lam auto: the SGP of the search legs, which the final run continues
    if x0 is None and params.x0 is not None and resume_state is None:
        warm = run_ref(params.x0, op, sino)
        x0 = warm.volume
        info_x0 = {"x0_solver": params.x0.name}
        if warm.info.get("time_total") is not None:
            info_x0["time_x0"] = float(warm.info["time_total"])
    if params.lam == "noise":
        lam, rule = noise_rule_lam(sino, params)
        info_x0.update(rule)
    elif params.lam != "auto":
        lam = float(params.lam)
    elif resume_state is not None:  # a resumed lam-auto run keeps the lam it chose
        lam = float(resume_state["lam"])
        info_x0.update(resume_state.get("lam_search") or {})
    else:
        lam, chain, search = choose_lam_sgp(op, sino, params, x0)
        info_x0.update(search)
    lam_abs, beta_abs = absolute_weights(params, sino.grid.voxel_size, lam)
    context = None
    if params.lam == "auto":  # a resumed run keeps the lam it chose
        context = {"lam": lam, "lam_search": {k: v for k, v in info_x0.items() if k not in ("x0_solver", "time_x0")}}
    run_params = params
    if "final_iterations" in info_x0:  # lam auto: the chain already ran part of the budget
        run_params = params.model_copy(update={"iterations": int(info_x0["final_iterations"])})
    x, info = sgp_tv_minimize(op, sino.data, lam_abs, beta_abs, run_params, x0=x0, callback=callback,
                              resume_state=resume_state, context=context, algorithm=chain)
    info.update(info_x0, lam=lam, beta=params.beta, intensity_scale=params.intensity_scale,
                scaling=params.scaling, time_total=clock.seconds())
    return Reconstruction(x, info)
