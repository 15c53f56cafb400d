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


@contextmanager
def atomic_path(path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` when the block succeeds.

    The temporary path does not exist yet (the writer creates a file, or a folder).
    On an exception it is deleted and the exception propagates. ``path`` existing
    without ``overwrite`` raises InputError before anything is written. Parent
    folders are created.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise InputError("exists; use --overwrite", file=str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
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
