"""One driver for every iterative method: the :class:`Algorithm` protocol and :func:`run`.

An iterative method (Chambolle-Pock, SGP, MM-GKS, SIRT, CGLS, CGLS on a stacked system, TpV's
reweighting) is a small class keeping its state in attributes: its constructor sets it up (from
a start or, through :meth:`Algorithm.resume`, from a state it reported), :meth:`Algorithm.step`
does one iteration, :meth:`Algorithm.converged` applies its tolerances, :meth:`Algorithm.report`
describes the iterate (objective, residual, gap) and :meth:`Algorithm.state` /
:meth:`Algorithm.load_state` give and take its full state (arrays and JSON values, the format of
recon_cli.checkpoint). :func:`run` alone owns the loop: the iteration budget, the stopping rules
(the algorithm's tolerances and a callback returning True), the per-iteration callback with the
state a checkpoint needs, and the timing.

Stopping rules are applied in one order for every method: after iteration k the tolerance test
is evaluated, the callback sees the state (which records that test as ``pending_stop``), a truthy
callback stops ("callback"), then a met tolerance stops. A state written at an iteration where
the uninterrupted run stopped therefore resumes into a run that stops there too.

Timing: :class:`TimedOperator` is the one wrapper measuring the seconds an Operator spends in its
projections (synchronising the GPU so that asynchronous CuPy work is counted), and
:class:`Stopwatch` the one wall clock (the only users of ``time.perf_counter`` among the solvers).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from recon_cli.solvers.registry import IterationState


class Stopwatch:
    """Wall-clock seconds since creation."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.t0


def synchronise(xp) -> None:
    """Wait for the GPU's queued work (so that timings are real); nothing on numpy."""
    if getattr(xp, "__name__", "") == "cupy":
        xp.cuda.Stream.null.synchronize()


class TimedOperator:
    """An Operator whose forward/adjoint time (s, GPU-synchronised) adds up in ``seconds``.

    Shapes, array module and norm are the wrapped operator's; ``seconds`` may be shared with another
    wrapper of the same run by passing ``seconds`` (a start value) and reading it back.
    """

    def __init__(self, op, seconds: float = 0.0):
        self.op, self.xp, self.seconds = op, op.xp, float(seconds)
        self.domain_shape, self.range_shape = op.domain_shape, op.range_shape

    def _timed(self, fn: Callable, arg):
        synchronise(self.xp)
        t0 = time.perf_counter()
        out = fn(arg)
        synchronise(self.xp)
        self.seconds += time.perf_counter() - t0
        return out

    def forward(self, x):
        return self._timed(self.op.forward, x)

    def adjoint(self, y):
        return self._timed(self.op.adjoint, y)

    def norm(self) -> float:
        return self.op.norm()


@dataclass
class Halt:
    """Returned by :meth:`Algorithm.step` to stop the run: ``reason``; ``completed``: the step counts
    as an iteration (else the iteration count stays at the last completed one)."""

    reason: str
    completed: bool = False


class Algorithm:
    """Base of an iterative method (see the module docstring).

    Attributes every subclass keeps: ``iteration`` (completed iterations), ``max_iterations``
    (budget), ``x`` (the current iterate, live), ``budget_reason`` (``stopped`` when the budget ends
    the run), ``observed`` (set by :func:`run`: a callback sees every iteration, so per-iteration
    values must be computed), ``pending_stop`` (the tolerance met at the last iteration, or None),
    ``resumed_from`` (the iteration of the state it was resumed from, or None).
    """

    budget_reason = "iterations"
    iteration: int = 0
    max_iterations: int = 0
    observed: bool = False
    pending_stop: Optional[str] = None
    resumed_from: Optional[int] = None
    x: Any = None

    def step(self, k: int) -> Optional[Halt]:
        """Do iteration ``k`` (= iteration + 1); a Halt stops the run."""
        raise NotImplementedError

    def converged(self) -> Optional[str]:
        """The tolerance met after the last iteration (a stop reason), or None."""
        return None

    def report(self) -> IterationState:
        """The callback's view of the last iteration (without the state, which :func:`run` adds)."""
        return IterationState(self.iteration, self.x)

    def state(self) -> dict:
        """The full state after the last iteration: ``iteration`` plus arrays (live) and JSON values."""
        raise NotImplementedError

    def load_state(self, state: dict) -> None:
        """Continue from a dict given by :meth:`state` (arrays copied)."""
        raise NotImplementedError

    def resume(self, state: dict) -> "Algorithm":
        """:meth:`load_state`, and remember the iteration and any stop the uninterrupted run met there."""
        self.load_state(state)
        self.iteration = int(state["iteration"])
        self.pending_stop = state.get("pending_stop") or None
        self.resumed_from = self.iteration
        return self

    def finish(self) -> None:
        """Called once after the last iteration (e.g. the objective of an unrecorded final iterate)."""


@dataclass
class RunRecord:
    """What :func:`run` reports: ``iterations`` done in all, why it ``stopped``, ``time_total`` (s) of
    this call and ``resumed_from`` (None for a fresh start)."""

    iterations: int
    stopped: str
    time_total: float
    resumed_from: Optional[int]


def advance(alg: Algorithm) -> Optional[Halt]:
    """One iteration of ``alg`` with its bookkeeping (count, tolerance test); a Halt if it stopped.

    :func:`run` iterates this; a composite algorithm (TpV's reweighting) steps its inner one with it.
    """
    k = alg.iteration + 1
    halt = alg.step(k)
    if halt is not None:
        if halt.completed:
            alg.iteration = k
        return halt
    alg.iteration = k
    alg.pending_stop = alg.converged()
    return None


def run(algorithm: Algorithm, callback=None, *, context: dict | None = None) -> RunRecord:
    """Iterate ``algorithm`` up to its budget, a met tolerance or a truthy ``callback``.

    ``callback(IterationState)`` sees every iteration; its ``extra['state']`` is the algorithm's full
    state plus ``pending_stop`` and the entries of ``context`` (fixed values a resumed run needs, e.g.
    the chosen lam), all live, not copies.
    """
    clock = Stopwatch()
    alg = algorithm
    alg.observed = callback is not None
    stopped = alg.budget_reason
    if alg.pending_stop:  # resumed at the very iteration where the uninterrupted run stopped
        stopped = alg.pending_stop
    else:
        while alg.iteration < alg.max_iterations:
            halt = advance(alg)
            if halt is not None:
                stopped = halt.reason
                break
            if callback is not None:
                report = alg.report()
                report.extra = {"state": {**alg.state(), "pending_stop": alg.pending_stop, **(context or {})}}
                if callback(report):
                    stopped = "callback"
                    break
            if alg.pending_stop is not None:
                stopped = alg.pending_stop
                break
    alg.finish()
    return RunRecord(alg.iteration, stopped, clock.seconds(), alg.resumed_from)
