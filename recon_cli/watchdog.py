"""Tasks in spawned worker processes, each with a deadline: a worker past it is stopped, then killed.

Some failures cannot be stopped from inside the process: a native library looping forever in C
(ASTRA's geometry check on absurd angles did, ignoring SIGTERM) never returns to the interpreter, so
no signal handler, timer or thread can end it. A worker process can always be killed; the parent
reports the task as timed out and starts a fresh worker for the next one.

:func:`run_watched` runs ``target(task)`` for every task on ``n_workers`` processes (``spawn``: no
thread or lock state inherited). A worker past its deadline gets SIGTERM (so a slow but responsive
one can remove its temporary files), then SIGKILL after ``grace`` seconds. SIGINT / SIGTERM of the
parent (an Interrupted exception while it waits) stops every worker the same way, collects what they
report within ``grace`` seconds and returns the signal number.
"""
from __future__ import annotations

import logging
import multiprocessing
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What became of one task: ``kind`` 'ok' (``value`` is target's return), 'timeout' (``value`` the
    seconds allowed), 'died' (``value`` the worker's exit code), 'killed' (the parent was interrupted and
    the worker did not stop within ``value`` seconds) or 'error' (``value`` a one-line text)."""

    index: int
    kind: str
    value: Any
    seconds: float


def _worker_main(conn, initializer, initargs, target) -> None:  # pragma: no cover - runs in a child
    if initializer is not None:
        initializer(*initargs)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, task = message
        try:
            value = ("ok", target(task))
        except Exception as exc:  # noqa: BLE001 - reported to the parent as this task's failure
            value = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send((index, *value))
        except (BrokenPipeError, OSError):
            return


class _Slot:
    """One worker process and the task it runs (None when idle)."""

    def __init__(self, ctx, initializer, initargs, target):
        self._args = (ctx, initializer, initargs, target)
        self.proc = None
        self.conn = None
        self.index: int | None = None
        self.started = 0.0
        self.deadline = float("inf")

    def ensure_started(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            return
        ctx, initializer, initargs, target = self._args
        parent, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, initializer, initargs, target), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def submit(self, index: int, task: Any, timeout: float | None) -> None:
        self.ensure_started()
        self.index = index
        self.started = time.monotonic()
        self.deadline = self.started + timeout if timeout else float("inf")
        self.conn.send((index, task))

    def stop(self, grace: float, signal_first: bool = True) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the slot is left without a process."""
        proc = self.proc
        if proc is not None and proc.is_alive():
            if signal_first:
                proc.terminate()
                proc.join(grace)
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
        self.discard()

    def discard(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.proc, self.conn, self.index, self.deadline = None, None, None, float("inf")

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self.proc.join(5.0)
        self.stop(1.0)


def run_watched(tasks: Sequence[Any], target: Callable[[Any], Any], on_done: Callable[[Outcome], bool | None], *,
                n_workers: int = 1, timeout: float | None = None, grace: float = 5.0,
                initializer: Callable | None = None, initargs: tuple = ()) -> int | None:
    """Run ``target(task)`` for each task on up to ``n_workers`` processes, ``timeout`` seconds each.

    ``on_done(outcome)`` is called in this process as each task ends; returning True stops handing
    out new tasks (those are never run, and get no outcome). Returns the signal number when SIGINT /
    SIGTERM interrupted the wait (recon_cli.signals.Interrupted), else None. ``target``,
    ``initializer`` and the tasks must be picklable (module-level functions, plain data).
    """
    from recon_cli.signals import Interrupted

    ctx = multiprocessing.get_context("spawn")
    slots = [_Slot(ctx, initializer, initargs, target) for _ in range(max(1, min(n_workers, len(tasks))))]
    pending = deque(enumerate(tasks))
    stop_handing_out = False

    def finish(slot: _Slot, kind: str, value: Any) -> None:
        nonlocal stop_handing_out
        outcome = Outcome(slot.index, kind, value, time.monotonic() - slot.started)
        slot.index, slot.deadline = None, float("inf")
        if on_done(outcome):
            stop_handing_out = True

    def collect(slot: _Slot) -> bool:
        """Take a finished task's message (True), or notice a dead worker (True); False if still busy."""
        try:
            if slot.conn.poll():
                index, kind, value = slot.conn.recv()
                finish(slot, kind, value)
                return True
        except (EOFError, OSError):
            pass
        if not slot.proc.is_alive():
            code = slot.proc.exitcode
            finish(slot, "died", code)
            slot.discard()
            return True
        return False

    try:
        while True:
            for slot in slots:
                if slot.index is None and pending and not stop_handing_out:
                    index, task = pending.popleft()
                    slot.submit(index, task, timeout)
            busy = [s for s in slots if s.index is not None]
            if not busy:
                return None
            now = time.monotonic()
            wait_for = max(0.0, min(s.deadline for s in busy) - now)
            ready = wait([s.conn for s in busy] + [s.proc.sentinel for s in busy],
                         timeout=None if wait_for == float("inf") else wait_for)
            for slot in busy:
                if slot.conn in ready or slot.proc.sentinel in ready:
                    collect(slot)
            now = time.monotonic()
            for slot in slots:
                if slot.index is not None and now >= slot.deadline:
                    log.warning("task %d ran past its %.0f s limit; stopping its worker (pid %s)", slot.index,
                                timeout, slot.proc.pid)
                    index = slot.index
                    slot.stop(grace)
                    slot.index = index
                    finish(slot, "timeout", timeout)
    except Interrupted as exc:
        busy = [s for s in slots if s.index is not None]
        for slot in busy:
            if slot.proc.is_alive():
                slot.proc.terminate()  # the worker's input raises Interrupted, cleans up and reports
        end = time.monotonic() + grace
        while busy and time.monotonic() < end:
            wait([s.conn for s in busy] + [s.proc.sentinel for s in busy], timeout=max(0.0, end - time.monotonic()))
            busy = [s for s in busy if not collect(s)]
        for slot in busy:
            index = slot.index
            slot.stop(0.0, signal_first=False)
            slot.index = index
            finish(slot, "killed", grace)
        return exc.signum
    finally:
        for slot in slots:
            slot.close()
