"""SIGINT / SIGTERM -> a clean :class:`Interrupted` exception in the main thread.

Without a handler, SIGTERM ends the process at once and leaves temporary files behind.
With :func:`install_signal_handlers`, the signal raises :class:`Interrupted` wherever the
main thread is, so every ``with atomic_path(...)`` block deletes its temporary file, the
runner removes the outputs of the unfinished run, and files already finished stay intact.
The CLI exits with 128 + the signal number: 130 for SIGINT (Ctrl-C), 143 for SIGTERM.

Only the first signal raises; later ones arriving while the program cleans up are
ignored (cleaning up takes milliseconds), so a second Ctrl-C cannot interrupt the
removal of a temporary file.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Callable

log = logging.getLogger(__name__)

#: The signals turned into Interrupted.
HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """Raised in the main thread by SIGINT / SIGTERM. Like KeyboardInterrupt, not an Exception:
    ``except Exception`` blocks let it through, ``except BaseException`` cleanups see it."""

    def __init__(self, signum: int):
        super().__init__(int(signum))
        self.signum = int(signum)
        self.checkpoint: str | None = None  # set by the runner when a checkpoint of the run is kept on disk
        self.resume_command: str | None = None  # the command that continues from it

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:  # pragma: no cover - not a known signal number
            return f"signal {self.signum}"

    def __str__(self) -> str:
        return f"interrupted by {self.signal_name}"


_state = {"installed": False, "raised": False}


def _handler(signum, frame) -> None:
    if _state["raised"]:
        log.debug("%s received while stopping; ignored", signal.Signals(signum).name)
        return
    _state["raised"] = True
    raise Interrupted(signum)


def install_signal_handlers(handler: Callable | None = None) -> bool:
    """Route SIGINT and SIGTERM to ``handler`` (default: raise Interrupted once).

    Only possible in the main thread of the main interpreter; returns False (and does
    nothing) elsewhere. Calling it again re-arms the handler (the next signal raises).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    _state["raised"] = False
    for signum in HANDLED:
        signal.signal(signum, handler or _handler)
    _state["installed"] = True
    return True


class preserved_signal_handlers:
    """Context manager: whatever handlers SIGINT / SIGTERM have now are put back on exit
    (so ``main()`` called in-process, e.g. by tests, leaves the caller's handlers alone)."""

    def __enter__(self):
        self._main = threading.current_thread() is threading.main_thread()
        self._saved = {s: signal.getsignal(s) for s in HANDLED} if self._main else {}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._saved.items():
            if handler is not None:
                signal.signal(signum, handler)
        _state["raised"] = False
