"""Where work units run: local processes, an existing Dask cluster, or a Dask LocalCluster.

A *unit* is a picklable module-level function and one small task (an input of a batch, a range of
slices of one stack). Units read their own input and write their own output part; only small
results (statuses, metrics, paths) come back, so no large array passes through a scheduler.

- ``local``: ``workers`` spawned processes (``ProcessPoolExecutor``, ``spawn``); one worker runs the
  units in this process.
- ``dask``: the ``dask.distributed`` cluster at ``scheduler`` (``tcp://HOST:PORT``); the workers need
  recon-cli installed and the input and output folders at the same paths (a shared file system).
- ``dask-local``: a ``LocalCluster`` of ``workers`` processes with one thread each.

A unit that raises is run again up to ``retries`` times (Dask: ``submit(retries=)`` for errors and
``distributed.scheduler.allowed-failures`` for dead workers, which ``dask-local`` sets to ``retries``;
local: resubmitted, also after a worker process died), then reported as a failed :class:`UnitOutcome`.
Worker processes turn on recon_cli.worker_cache, so projectors are built once per worker.
"""
from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from recon_cli.errors import ConfigError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "dask", "dask-local")
DEFAULT_DASK_RETRIES = 2


@dataclass
class ExecutorSpec:
    """``kind`` (see EXECUTORS), ``scheduler`` address (dask), ``workers`` (local, dask-local),
    ``retries`` (None: 0 for local, DEFAULT_DASK_RETRIES for Dask), ``threads`` per worker (None: the
    cores divided by the workers on this machine; a remote worker's own setting for ``dask``),
    ``unit_slices``: slices per unit of a stack (None: one unit per worker, smaller if memory requires;
    a matrix projector reads its matrix once per product for all slices of a unit, so fewer, larger
    units are faster)."""

    kind: str = "local"
    scheduler: str | None = None
    workers: int | None = None
    retries: int | None = None
    threads: int | None = None
    unit_slices: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ConfigError(f"unknown executor {self.kind!r}; choose one of {list(EXECUTORS)}", field="--executor")
        if self.kind == "dask" and not self.scheduler:
            raise ConfigError("--executor dask needs --scheduler tcp://HOST:PORT", field="--scheduler")
        if self.kind != "dask" and self.scheduler:
            raise ConfigError(f"--scheduler is only for --executor dask (not {self.kind})", field="--scheduler")
        if self.kind == "dask" and self.workers is not None:
            raise ConfigError("--workers is not used with --executor dask (the cluster has its own workers)",
                              field="--workers")
        if self.workers is not None and int(self.workers) < 1:
            raise ConfigError("--workers must be at least 1", field="--workers")
        if self.retries is not None and int(self.retries) < 0:
            raise ConfigError("--retries must be 0 or more", field="--retries")

    @property
    def is_dask(self) -> bool:
        return self.kind in ("dask", "dask-local")

    @property
    def n_retries(self) -> int:
        if self.retries is not None:
            return int(self.retries)
        return DEFAULT_DASK_RETRIES if self.is_dask else 0

    @property
    def n_workers(self) -> int:
        """Local worker processes (local, dask-local); for ``dask`` the cluster's own count is unknown here: 1."""
        return max(1, int(self.workers or 1))

    def worker_threads(self) -> int | None:
        if self.threads:
            return int(self.threads)
        if self.kind == "dask":
            return None
        from recon_cli.projectors.astra_matrix import default_threads

        return max(1, default_threads() // self.n_workers)


@dataclass
class UnitOutcome:
    """One unit's end: ``ok`` with the unit's return ``value``, or the last ``error`` (one line) and,
    when the unit raised :class:`UnitFailed`, its ``value``; ``attempts`` counts the runs."""

    index: int
    ok: bool
    value: Any = None
    error: str = ""
    attempts: int = 1


class UnitFailed(Exception):
    """Raised by a unit to be retried; ``payload`` (picklable) is reported if every attempt fails."""

    def __init__(self, message: str, payload: Any = None):
        super().__init__(message)
        self.payload = payload

    def __reduce__(self):
        return (UnitFailed, (str(self), self.payload))


# ----------------------------------------------------------------------------- worker side

_worker_ready = {"threads": None, "done": False}


def worker_setup(threads: int | None = None) -> None:
    """Once per worker process: compute threads (RECON_NUM_THREADS) and the projector cache."""
    if _worker_ready["done"]:
        return
    if threads:
        os.environ["RECON_NUM_THREADS"] = str(int(threads))
    from recon_cli import worker_cache

    worker_cache.enable()
    _worker_ready.update(done=True, threads=threads)


def _call_unit(fn: Callable, task: Any, threads: int | None) -> Any:
    worker_setup(threads)
    return fn(task)


def _one_line(exc: BaseException) -> str:
    from recon_cli.errors import ReconError

    text = exc.one_line() if isinstance(exc, ReconError) else f"{type(exc).__name__}: {exc}"
    return " ".join(str(text).split())


# ----------------------------------------------------------------------------- running units


def run_units(spec: ExecutorSpec, fn: Callable[[Any], Any], tasks: Sequence[Any],
              on_done: Callable[[UnitOutcome], None] | None = None) -> list[UnitOutcome]:
    """Run ``fn(task)`` for every task on ``spec``'s executor; outcomes in task order.

    ``on_done`` is called in this process as each unit ends (after its last attempt). KeyboardInterrupt
    and recon_cli.signals.Interrupted cancel the units not yet finished and propagate.
    """
    tasks = list(tasks)
    outcomes: list[UnitOutcome | None] = [None] * len(tasks)

    def done(outcome: UnitOutcome) -> None:
        outcomes[outcome.index] = outcome
        if on_done is not None:
            on_done(outcome)

    if not tasks:
        return []
    if spec.is_dask:
        _run_dask(spec, fn, tasks, done)
    elif spec.n_workers == 1 or len(tasks) == 1:
        _run_here(spec, fn, tasks, done)
    else:
        _run_processes(spec, fn, tasks, done)
    return [o for o in outcomes if o is not None]


def _failure(index: int, exc: BaseException, attempts: int) -> UnitOutcome:
    payload = exc.payload if isinstance(exc, UnitFailed) else None
    return UnitOutcome(index, False, payload, _one_line(exc), attempts)


def _run_here(spec: ExecutorSpec, fn, tasks, done) -> None:
    for i, task in enumerate(tasks):
        for attempt in range(1, spec.n_retries + 2):
            try:
                value = fn(task)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - reported per unit
                from recon_cli.signals import Interrupted

                if isinstance(exc, Interrupted):
                    raise
                if attempt > spec.n_retries:
                    done(_failure(i, exc, attempt))
                else:
                    log.warning("unit %d failed (%s); retrying", i, _one_line(exc))
                continue
            done(UnitOutcome(i, True, value, attempts=attempt))
            break


def _run_processes(spec: ExecutorSpec, fn, tasks, done) -> None:
    """Spawned worker processes; a unit whose worker died is resubmitted to a fresh pool."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")
    workers = min(spec.n_workers, len(tasks))
    threads = spec.worker_threads()
    attempts = [0] * len(tasks)
    pending = list(range(len(tasks)))
    pool = None
    try:
        while pending:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=worker_setup,
                                       initargs=(threads,))
            futures = {}
            for i in pending:
                attempts[i] += 1
                futures[pool.submit(fn, tasks[i])] = i
            pending = []
            broken = False
            waiting = set(futures)
            while waiting:
                finished, waiting = wait(waiting, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = futures[fut]
                    try:
                        done(UnitOutcome(i, True, fut.result(), attempts=attempts[i]))
                        continue
                    except BrokenProcessPool:
                        broken = True
                        exc: BaseException = RuntimeError("the worker process died (killed by the system, "
                                                          "e.g. out of memory?)")
                    except Exception as err:  # noqa: BLE001 - reported per unit
                        exc = err
                    if attempts[i] <= spec.n_retries:
                        log.warning("unit %d failed (%s); retrying", i, _one_line(exc))
                        pending.append(i)
                    else:
                        done(_failure(i, exc, attempts[i]))
            pool.shutdown(wait=True, cancel_futures=True)
            pool = None
            if broken:
                log.warning("a worker process died; starting new workers for %d units", len(pending))
            pending.sort()
    finally:
        if pool is not None:
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                if proc.is_alive():
                    proc.terminate()
            pool.shutdown(wait=True, cancel_futures=True)


def count_workers(spec: ExecutorSpec) -> int:
    """Workers that will run units: ``workers`` (local, dask-local), or those the scheduler has now (dask)."""
    if spec.kind != "dask":
        return spec.n_workers
    client, _ = dask_client(spec)
    try:
        return max(1, len(client.scheduler_info().get("workers", {})))
    finally:
        client.close()


def dask_client(spec: ExecutorSpec):
    """(client, cluster or None): a Client of the scheduler (dask) or of a new LocalCluster (dask-local)."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("--executor dask needs the 'dask[distributed]' package (pip install "
                          "'recon-ct-cli[dask]')", field="--executor") from None
    if spec.kind == "dask":
        try:
            return Client(spec.scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler {spec.scheduler} ({exc})",
                              field="--scheduler") from None
    threads = spec.worker_threads()
    env = {"RECON_NUM_THREADS": str(threads)} if threads else {}
    with dask.config.set({"distributed.scheduler.allowed-failures": spec.n_retries}):
        cluster = LocalCluster(n_workers=spec.n_workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0", env=env, silence_logs=logging.ERROR)
    return Client(cluster), cluster


def _run_dask(spec: ExecutorSpec, fn, tasks, done) -> None:
    from distributed import as_completed

    client, cluster = dask_client(spec)
    threads = spec.worker_threads()
    tag = uuid.uuid4().hex[:8]
    futures = []
    try:
        futures = [client.submit(_call_unit, fn, task, threads, key=f"recon-unit-{tag}-{i}", pure=False,
                                 retries=spec.n_retries) for i, task in enumerate(tasks)]
        index = {fut.key: i for i, fut in enumerate(futures)}
        for fut in as_completed(futures):
            i = index[fut.key]
            if fut.status == "finished":
                done(UnitOutcome(i, True, fut.result(), attempts=1))
                continue
            exc = fut.exception()
            if type(exc).__name__ == "KilledWorker":
                exc = RuntimeError(f"the worker died while running it ({spec.n_retries + 1} attempts)")
            done(_failure(i, exc, spec.n_retries + 1))
            fut.release()
    except BaseException:
        if futures:
            client.cancel(futures)
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
