"""Progress of a run: a rich bar on a terminal, INFO log lines everywhere else.

On a terminal (stdout and stderr both ttys, and progress enabled) a bar driven by the solver's
per-iteration callback is shown on stderr. Without a terminal (batch scripts, Docker logs,
``| cat``) the same callback writes an INFO line about every 10% of the iterations or every 30 s, with
the iteration, objective / residual where the solver reports them, and the time left (ETA);
:func:`log_stage` writes one INFO line per stage of a run (read, pre-estimate, solve, write).
Every such line carries its numbers in ``record.progress`` too, which ``--log-format json``
writes as keys of the JSON object (see recon_cli.logging_setup). The callback never stops the
solver. Sub-solver stages (SV-TV's pre-estimate, graphLa's Psi) report through states whose
``extra['stage']`` is set (recon_cli.solvers.registry.run_stage).
"""
from __future__ import annotations

import logging
import math
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from recon_cli.solvers.registry import IterationState, SolverParams

log = logging.getLogger(__name__)

#: A log line at least every this share of the iterations ...
LOG_FRACTION = 0.1
#: ... or after this many seconds without one.
LOG_INTERVAL_S = 30.0


def iteration_budget(params: SolverParams) -> int | None:
    """The planned number of iterations, as the solver's typed parameters state it (None: no budget)."""
    return params.iteration_budget()


def _fmt(value: float | None) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return ""
    return f"{value:.4e}"


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def log_stage(stage: str, detail: str = "", **fields: Any) -> None:
    """One INFO line ``<stage>: <detail>`` with ``{'stage': stage, **fields}`` as structured fields."""
    log.info("%s: %s", stage, detail, extra={"progress": {"stage": stage, **fields}})


class ProgressLog:
    """Solver callback writing INFO lines: about every LOG_FRACTION of ``total`` iterations or every
    LOG_INTERVAL_S seconds, and at the last iteration; sub-solver stages are announced and reported
    the same way. ``clock``: a monotonic time source in seconds (for tests)."""

    wants_stages = True

    def __init__(self, label: str, total: int | None, clock: Callable[[], float] = time.monotonic):
        self.label, self.clock = label, clock
        self.main = {"stage": "solve", "solver": label, "total": total}
        self.current: dict | None = None
        self._start(self.main)

    def _start(self, stage: dict) -> None:
        self.current = dict(stage)
        self.t0 = self.last_log = self.clock()
        self.next_mark = self._step()

    def _step(self) -> int:
        total = self.current.get("total")
        return max(1, math.ceil(total * LOG_FRACTION)) if total else 0

    def __call__(self, state: IterationState) -> None:
        extra = state.extra or {}
        stage = {k: extra.get(k) for k in ("stage", "solver", "total")} if extra.get("stage") else self.main
        if stage != self.current:
            self._start(stage)
            if stage is not self.main:
                total = stage.get("total")
                log_stage(stage["stage"], f"{stage['solver']}" + (f" ({total} iterations)" if total else ""),
                          solver=stage["solver"], total=total)
        if state.iteration <= 0:
            return None
        now = self.clock()
        total = self.current.get("total")
        due = now - self.last_log >= LOG_INTERVAL_S
        if total:
            due = due or state.iteration >= self.next_mark or state.iteration >= total
        if not due:
            return None
        while total and self.next_mark <= state.iteration:
            self.next_mark += self._step()
        self.last_log = now
        self._log(state, now - self.t0)
        return None

    def _log(self, state: IterationState, elapsed: float) -> None:
        total = self.current.get("total")
        fields: dict[str, Any] = {"stage": self.current["stage"], "solver": self.current["solver"],
                                  "iteration": int(state.iteration), "total": total,
                                  "elapsed_s": round(elapsed, 3)}
        parts = [f"iteration {state.iteration}" + (f"/{total}" if total else "")]
        if total:
            fields["percent"] = round(100.0 * min(state.iteration, total) / total, 1)
            eta = elapsed / state.iteration * max(total - state.iteration, 0)
            fields["eta_s"] = round(eta, 3)
            parts[0] += f" ({fields['percent']:.0f}%)"
        for name in ("objective", "residual"):
            value = _finite(getattr(state, name))
            if value is not None:
                fields[name] = value
                parts.append(f"{name} {value:.4e}")
        parts.append(f"elapsed {elapsed:.1f} s")
        if "eta_s" in fields:
            parts.append(f"ETA {fields['eta_s']:.1f} s")
        log.info("%s %s: %s", self.current["stage"], self.current["solver"], ", ".join(parts),
                 extra={"progress": fields})


def progress_on_terminal() -> bool:
    """Whether a progress bar can be shown (stdout and stderr are terminals)."""
    return sys.stderr.isatty() and sys.stdout.isatty()


@contextmanager
def solver_progress(label: str, total: int | None, enabled: bool = True) -> Iterator[Callable]:
    """Yield ``callback(IterationState)``: on a terminal a progress bar (iteration count, objective) when
    ``enabled`` and nothing otherwise (--quiet, --json, a batch's own bar); without a terminal a
    :class:`ProgressLog` (INFO lines; shown or not by the logging level)."""
    if not progress_on_terminal():  # pipes, logs, CI, Docker
        yield ProgressLog(label, total)
        return
    if not enabled:
        yield lambda state: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total, status="")
        current = {"stage": None}

        def callback(state: IterationState) -> None:
            extra = state.extra or {}
            stage = extra.get("stage")
            if stage != current["stage"]:  # a sub-solver's stage starts, or the solver's own iterations
                current["stage"] = stage
                description = f"{label}: {stage} {extra.get('solver')}" if stage else label
                bar.reset(task, total=extra.get("total") if stage else total, description=description)
            parts = []
            if _fmt(state.objective):
                parts.append(f"objective {_fmt(state.objective)}")
            if _fmt(state.residual):
                parts.append(f"residual {_fmt(state.residual)}")
            bar.update(task, completed=state.iteration, status="  ".join(parts))
            return None

        callback.wants_stages = True
        yield callback
