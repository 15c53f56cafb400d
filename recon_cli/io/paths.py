"""Checks on an input path before it is opened (shared by format detection and the readers)."""
from __future__ import annotations

from pathlib import Path

from recon_cli.errors import InputError


def check_regular_file(path) -> None:
    """InputError for a path that exists but is neither a folder nor a regular file: reading a FIFO
    blocks until a writer appears (forever), a device may never end."""
    import stat

    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device or socket"
        raise InputError(f"is {kind}, not a regular file", file=str(path))
