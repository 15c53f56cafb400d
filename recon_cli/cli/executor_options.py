"""``--executor``, ``--scheduler``, ``--workers``, ``--retries``: shared by ``recon batch`` and ``recon run``."""
from __future__ import annotations

import click

from recon_cli.executors import EXECUTORS


def executor_options(func):
    """Add the executor options to a click command (parameters: executor, scheduler, workers, retries)."""
    options = [
        click.option("--executor", type=click.Choice(list(EXECUTORS)), default="local", show_default=True,
                     help="Where units run: local processes, an existing Dask cluster (dask, with --scheduler) "
                          "or a Dask LocalCluster on this machine (dask-local, with --workers)."),
        click.option("--scheduler", metavar="tcp://HOST:PORT", help="The Dask scheduler (--executor dask)."),
        click.option("--workers", type=click.IntRange(min=1), metavar="N",
                     help="Worker processes (local, dask-local)."),
        click.option("--retries", type=click.IntRange(min=0), metavar="N",
                     help="Run a failed unit again up to N times (default: 0 local, 2 Dask)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def executor_spec(executor: str, scheduler: str | None, workers: int | None, retries: int | None):
    """The checked ExecutorSpec (ConfigError, exit 2, for bad combinations)."""
    from recon_cli.executors import ExecutorSpec

    return ExecutorSpec(kind=executor, scheduler=scheduler, workers=workers, retries=retries)
