"""CGLS: conjugate gradients on the normal equations of min ||A x - y||, from x = 0.

Works on one slice (ny, nx) or a stack (nz, ny, nx) with any Operator (numpy or
cupy, ``xp = op.xp``). For 2D geometries the step sizes are computed per slice
(arrays of shape (nz, 1, 1)), so a stack gives the slice-by-slice result; for 3D
geometries the whole volume is one problem.
"""
from __future__ import annotations

from recon_cli.solvers.algorithm import Algorithm, Stopwatch, TimedOperator, run
from recon_cli.solvers.registry import IterationState, register
from recon_cli.solvers.params.cgls import CGLSParams  # noqa: F401 (re-exported)
from recon_cli.solvers.sirt import relative_norm
from recon_cli.sinogram import Reconstruction


def _ratio(num, den, xp):
    """num / den where den > 0, else 0 (float32 arrays)."""
    return xp.where(den > 0, num / xp.where(den > 0, den, 1.0), 0.0).astype(xp.float32, copy=False)


class CGLS(Algorithm):
    """CGLS from x = 0 on ``op`` (a TimedOperator) for data ``y``; ``per_slice``: step sizes per slice
    of a 2D stack (arrays (nz, 1, 1)), else one problem. ``tol`` on the max normal residual (0: off).

    State: {iteration, x, r, p, gamma, gamma0, history}; ``state``: continue from such a dict.
    """

    def __init__(self, op: TimedOperator, y, iterations: int, tol: float = 0.0, per_slice: bool = False,
                 state: dict | None = None):
        xp = self.xp = op.xp
        self.op, self.max_iterations, self.tol = op, int(iterations), float(tol)
        self.x_axes = (-2, -1) if per_slice else tuple(range(len(op.domain_shape)))
        self.y_axes = (-2, -1) if per_slice else tuple(range(len(op.range_shape)))
        self.y_norm = float(xp.linalg.norm(y.ravel()))
        self.history: dict[str, list[float]] = {"residual": [], "normal_residual": []}
        if state is not None:
            self.resume(state)
            return
        self.x = xp.zeros(op.domain_shape, dtype=xp.float32)
        self.r = y.copy()
        s = op.adjoint(self.r)
        self.p = s.copy()
        self.gamma = self._sumsq(s, self.x_axes)
        self.gamma0 = self.gamma.copy()

    def _sumsq(self, v, axes):
        return self.xp.sum(v * v, axis=axes, keepdims=True, dtype=self.xp.float32)

    def load_state(self, state: dict) -> None:
        def restored(key):
            return self.xp.array(state[key], dtype=self.xp.float32)

        self.x, self.r, self.p = restored("x"), restored("r"), restored("p")
        self.gamma, self.gamma0 = restored("gamma"), restored("gamma0")
        self.history = {k: [float(v) for v in state["history"][k]] for k in self.history}

    def step(self, k: int):
        xp = self.xp
        q = self.op.forward(self.p)
        alpha = _ratio(self.gamma, self._sumsq(q, self.y_axes), xp)
        self.x += alpha * self.p
        self.r -= alpha * q  # alpha: (nz, 1, 1) per slice or (1, ..., 1)
        s = self.op.adjoint(self.r)
        gamma_new = self._sumsq(s, self.x_axes)
        beta = _ratio(gamma_new, self.gamma, xp)
        self.p = s + beta * self.p
        self.gamma = gamma_new
        self.history["residual"].append(relative_norm(self.r, self.y_norm, xp))
        self.history["normal_residual"].append(float(xp.sqrt(xp.max(_ratio(self.gamma, self.gamma0, xp)))))
        return None

    def converged(self):
        return "tol" if self.tol > 0 and self.history["normal_residual"][-1] < self.tol else None

    def report(self) -> IterationState:
        return IterationState(self.iteration, self.x, residual=self.history["residual"][-1])

    def state(self) -> dict:
        return {"iteration": self.iteration, "x": self.x, "r": self.r, "p": self.p, "gamma": self.gamma,
                "gamma0": self.gamma0, "history": self.history}


@register("cgls", CGLSParams, state_arrays=(5, 4), slice_independent=True)
def solve(op, sino, params: CGLSParams, callback=None, *, resume_state: dict | None = None) -> Reconstruction:
    """CGLS; ``info['history']`` holds 'residual' (||A x - y|| / ||y||) and 'normal_residual'
    (max over slices of ||A^T(y - A x)|| / ||A^T y||) per iteration.

    Restartable: the callback's ``extra['state']`` is {iteration, x, r, p, gamma, gamma0, history};
    ``resume_state`` (such a dict) continues after its iteration with the uninterrupted iterates.
    """
    clock = Stopwatch()
    xp = op.xp
    timed = TimedOperator(op)
    y = xp.asarray(sino.data, dtype=xp.float32).reshape(op.range_shape)
    per_slice = len(op.domain_shape) == 3 and not getattr(sino.geometry, "is_3d", False)
    alg = CGLS(timed, y, params.iterations, params.tol, per_slice, state=resume_state)
    record = run(alg, callback)
    info = {"iterations": record.iterations, "history": alg.history, "stopped": record.stopped, "tol": params.tol,
            "time_projector": timed.seconds, "time_total": clock.seconds()}
    if record.resumed_from:
        info["resumed_from"] = record.resumed_from
    return Reconstruction(alg.x, info)
