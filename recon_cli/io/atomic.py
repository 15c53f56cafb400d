"""Atomic output: write to a temporary name in the target folder, rename on success.

A failed writer leaves neither a partial output nor a temporary file behind.
"""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from recon_cli.errors import InputError


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def check_writable(path, overwrite: bool = False) -> None:
    """Refuse an output path that cannot be written, before anything is computed (creates nothing).

    InputError (naming ``path``) when it exists without ``overwrite``, or when its nearest existing
    ancestor is a file or a folder that is not writable (so the output cannot be made there).
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise InputError("exists; use --overwrite", file=str(target))
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot create the output folder: {parent} is a file, not a folder", file=str(target))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write here: folder {parent} is not writable", file=str(target))


@contextmanager
def atomic_path(path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` when the block succeeds.

    The temporary path does not exist yet (the writer creates a file, or a folder).
    On an exception it is deleted and the exception propagates. ``path`` existing
    without ``overwrite`` raises InputError before anything is written. Parent
    folders are created.
    """
    target = Path(path)
    check_writable(target, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {target.parent} ({exc.strerror or exc})",
                         file=str(target)) from None
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"writer did not create {tmp}")
        if target.exists() and not overwrite:  # appeared while we were writing
            raise InputError("exists; use --overwrite", file=str(target))
        if tmp.is_dir() and target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
