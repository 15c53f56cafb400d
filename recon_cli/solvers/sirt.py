"""SIRT: x <- P(x + relaxation * C A^T R (y - A x)), R = 1 / row sums, C = 1 / column sums.

Works on one slice (ny, nx) or a stack (nz, ny, nx) with any Operator (numpy or
cupy, ``xp = op.xp``); the update is elementwise, so a stack gives exactly the
slice-by-slice result. P is the projection onto x >= 0 when ``nonnegative``.
The iteration is :class:`SIRT` (recon_cli.solvers.algorithm), run by the one driver.
"""
from __future__ import annotations

from recon_cli.solvers.algorithm import Algorithm, Stopwatch, TimedOperator, run
from recon_cli.solvers.registry import IterationState, register
from recon_cli.solvers.params.sirt import SIRTParams  # noqa: F401 (re-exported)
from recon_cli.sinogram import Reconstruction


def relative_norm(r, y_norm: float, xp) -> float:
    """||r|| / ||y|| as a plain float (||y|| = 0 gives ||r||)."""
    value = float(xp.linalg.norm(r.ravel()))
    return value / y_norm if y_norm > 0 else value


def inverse_or_zero(s, xp, eps: float = 1e-12):
    """1 / s where s > eps, else 0 (float32)."""
    s = s.astype(xp.float32, copy=False)
    return xp.where(s > eps, 1.0 / xp.maximum(s, eps), 0.0).astype(xp.float32, copy=False)


class SIRT(Algorithm):
    """SIRT from x = 0 on ``op`` (a TimedOperator) for data ``y`` (op.range_shape, float32).

    State: {iteration, x, history: {residual}}; A x is recomputed from x on resume (the same product
    as in the loop), so a resumed run is bit for bit the uninterrupted one. ``state``: continue from one.
    """

    def __init__(self, op: TimedOperator, y, iterations: int, relaxation: float = 1.0, nonnegative: bool = True,
                 state: dict | None = None):
        xp = self.xp = op.xp
        self.op, self.y, self.max_iterations, self.nonnegative = op, y, int(iterations), bool(nonnegative)
        self.y_norm = float(xp.linalg.norm(y.ravel()))
        self.row_w = inverse_or_zero(op.forward(xp.ones(op.domain_shape, dtype=xp.float32)), xp)
        self.col_w = inverse_or_zero(op.adjoint(xp.ones(op.range_shape, dtype=xp.float32)), xp)
        self.col_w *= float(relaxation)
        self.x = xp.zeros(op.domain_shape, dtype=xp.float32)
        self.ax = xp.zeros(op.range_shape, dtype=xp.float32)
        self.history: list[float] = []
        if state is not None:
            self.resume(state)

    def load_state(self, state: dict) -> None:
        xp = self.xp
        self.x = xp.array(state["x"], dtype=xp.float32).reshape(self.op.domain_shape)
        self.ax = self.op.forward(self.x)
        self.history = [float(v) for v in state["history"]["residual"]]

    def step(self, k: int):
        xp = self.xp
        self.x += self.col_w * self.op.adjoint(self.row_w * (self.y - self.ax))
        if self.nonnegative:
            xp.maximum(self.x, 0.0, out=self.x)
        self.ax = self.op.forward(self.x)
        self.history.append(relative_norm(self.ax - self.y, self.y_norm, xp))
        return None

    def report(self) -> IterationState:
        return IterationState(self.iteration, self.x, residual=self.history[-1])

    def state(self) -> dict:
        return {"iteration": self.iteration, "x": self.x, "history": {"residual": self.history}}


@register("sirt", SIRTParams, state_arrays=(4, 5), slice_independent=True)
def solve(op, sino, params: SIRTParams, callback=None, *, resume_state: dict | None = None) -> Reconstruction:
    """SIRT from x = 0; ``info['history']['residual']`` holds ||A x_k - y|| / ||y|| per iteration.

    Restartable: the callback's ``extra['state']`` is {iteration, x, history}; ``resume_state``
    (such a dict) continues after its iteration with exactly the uninterrupted iterates.
    """
    clock = Stopwatch()
    timed = TimedOperator(op)
    y = op.xp.asarray(sino.data, dtype=op.xp.float32).reshape(op.range_shape)
    alg = SIRT(timed, y, params.iterations, params.relaxation, params.nonnegative, state=resume_state)
    record = run(alg, callback)
    info = {"iterations": record.iterations, "history": {"residual": alg.history}, "stopped": record.stopped,
            "relaxation": params.relaxation, "nonnegative": params.nonnegative,
            "time_projector": timed.seconds, "time_total": clock.seconds()}
    if record.resumed_from:
        info["resumed_from"] = record.resumed_from
    return Reconstruction(alg.x, info)
