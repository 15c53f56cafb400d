"""A rich progress bar driven by a solver's per-iteration callback (on stderr).

Shown only when enabled and both stdout and stderr are terminals; otherwise the callback does nothing
but never stops the solver.
"""
from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from recon_cli.solvers.registry import IterationState

#: Parameter names solvers use for their iteration budget, looked up in this order.
ITERATION_KEYS = ("iterations", "max_iterations", "n_iter", "maxiter")


def iteration_budget(params: dict) -> int | None:
    """The planned number of iterations from a solver's parameters, if it has one."""
    for key in ITERATION_KEYS:
        value = params.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _fmt(value: float | None) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return ""
    return f"{value:.4e}"


@contextmanager
def solver_progress(label: str, total: int | None, enabled: bool = True) -> Iterator[Callable]:
    """Yield ``callback(IterationState)`` updating a progress bar (iteration count, objective)."""
    show = enabled and sys.stderr.isatty() and sys.stdout.isatty()  # off in pipes, logs and CI
    if not show:
        yield lambda state: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total, status="")

        def callback(state: IterationState) -> None:
            parts = []
            if _fmt(state.objective):
                parts.append(f"objective {_fmt(state.objective)}")
            if _fmt(state.residual):
                parts.append(f"residual {_fmt(state.residual)}")
            bar.update(task, completed=state.iteration, status="  ".join(parts))
            return None

        yield callback
