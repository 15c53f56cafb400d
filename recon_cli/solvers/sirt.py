"""SIRT: x <- P(x + relaxation * C A^T R (y - A x)), R = 1 / row sums, C = 1 / column sums.

Works on one slice (ny, nx) or a stack (nz, ny, nx) with any Operator (numpy or
cupy, ``xp = op.xp``); the update is elementwise, so a stack gives exactly the
slice-by-slice result. P is the projection onto x >= 0 when ``nonnegative``.
"""
from __future__ import annotations

import time

from recon_cli.solvers.registry import IterationState, SolverParams, register, unit
from recon_cli.sinogram import Reconstruction


class TimedOperator:
    """Wraps an Operator, adding the seconds spent in forward/adjoint to ``seconds``.

    CuPy work is asynchronous, so each call synchronises the device before stopping the clock.
    """

    def __init__(self, op):
        self.op, self.xp, self.seconds = op, op.xp, 0.0
        self._sync = _synchroniser(op.xp)

    def _timed(self, fn, arg):
        t0 = time.perf_counter()
        out = fn(arg)
        self._sync()
        self.seconds += time.perf_counter() - t0
        return out

    def forward(self, x):
        return self._timed(self.op.forward, x)

    def adjoint(self, y):
        return self._timed(self.op.adjoint, y)


def _synchroniser(xp):
    if xp.__name__ == "cupy":
        return lambda: xp.cuda.Stream.null.synchronize()
    return lambda: None


def relative_norm(r, y_norm: float, xp) -> float:
    """||r|| / ||y|| as a plain float (||y|| = 0 gives ||r||)."""
    value = float(xp.linalg.norm(r.ravel()))
    return value / y_norm if y_norm > 0 else value


def inverse_or_zero(s, xp, eps: float = 1e-12):
    """1 / s where s > eps, else 0 (float32)."""
    s = s.astype(xp.float32, copy=False)
    return xp.where(s > eps, 1.0 / xp.maximum(s, eps), 0.0).astype(xp.float32, copy=False)


class SIRTParams(SolverParams):
    iterations: int = unit("-", "number of iterations", default=100, ge=1)
    nonnegative: bool = unit("-", "project onto x >= 0 after each update", default=True)
    relaxation: float = unit("-", "relaxation factor (0 < relaxation < 2)", default=1.0, gt=0.0, lt=2.0)


@register("sirt", SIRTParams, "simultaneous iterative reconstruction technique", iterative=True,
          state_arrays=(4, 5), slice_independent=True)
def solve(op, sino, params: SIRTParams, callback=None, *, resume_state: dict | None = None) -> Reconstruction:
    """SIRT from x = 0; ``info['history']['residual']`` holds ||A x_k - y|| / ||y|| per iteration.

    Restartable: the callback's ``extra['state']`` is {iteration, x, history}; ``resume_state``
    (such a dict) continues after its iteration with exactly the uninterrupted iterates (A x
    is recomputed from x, the same product as in the loop).
    """
    t_start = time.perf_counter()
    xp = op.xp
    timed = TimedOperator(op)
    y = xp.asarray(sino.data, dtype=xp.float32).reshape(op.range_shape)
    y_norm = float(xp.linalg.norm(y.ravel()))
    row_w = inverse_or_zero(timed.forward(xp.ones(op.domain_shape, dtype=xp.float32)), xp)
    col_w = inverse_or_zero(timed.adjoint(xp.ones(op.range_shape, dtype=xp.float32)), xp)
    col_w *= float(params.relaxation)
    history: list[float] = []
    start = 0
    if resume_state is None:
        x = xp.zeros(op.domain_shape, dtype=xp.float32)
        ax = xp.zeros(op.range_shape, dtype=xp.float32)
    else:
        x = xp.array(resume_state["x"], dtype=xp.float32).reshape(op.domain_shape)
        ax = timed.forward(x)
        start = int(resume_state["iteration"])
        history = [float(v) for v in resume_state["history"]["residual"]]
    stopped = "iterations"
    k = start
    for k in range(start + 1, params.iterations + 1):
        x += col_w * timed.adjoint(row_w * (y - ax))
        if params.nonnegative:
            xp.maximum(x, 0.0, out=x)
        ax = timed.forward(x)
        residual = relative_norm(ax - y, y_norm, xp)
        history.append(residual)
        if callback is not None and callback(IterationState(
                k, x, residual=residual,
                extra={"state": {"iteration": k, "x": x, "history": {"residual": history}}})):
            stopped = "callback"
            break
    info = {"iterations": k, "history": {"residual": history}, "stopped": stopped,
            "relaxation": params.relaxation, "nonnegative": params.nonnegative,
            "time_projector": timed.seconds, "time_total": time.perf_counter() - t_start}
    if start:
        info["resumed_from"] = start
    return Reconstruction(x, info)
