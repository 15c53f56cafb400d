"""Atomic output: write to a temporary name in the target folder, rename on success.

A failed writer leaves neither a partial output nor a temporary file behind.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import time
import uuid
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from recon_cli.errors import InputError, RunError

#: errno values of a full disk / file size limit / quota.
_DISK_FULL = {getattr(__import__("errno"), n) for n in ("ENOSPC", "EFBIG", "EDQUOT") if hasattr(__import__("errno"), n)}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def check_name_length(path) -> None:
    """InputError when the last part of ``path`` is longer than MAX_NAME_BYTES (the OS would refuse it)."""
    name = Path(path).name.encode("utf-8", "surrogateescape")
    if len(name) > MAX_NAME_BYTES:
        raise InputError(f"file name of {len(name)} bytes is longer than the {MAX_NAME_BYTES} file systems "
                         "allow; choose a shorter output name", file=str(path))


def check_writable(path, overwrite: bool = False) -> None:
    """Refuse an output path that cannot be written, before anything is computed (creates nothing).

    InputError (naming ``path``) when it exists without ``overwrite``, or when its nearest existing
    ancestor is a file or a folder that is not writable (so the output cannot be made there).
    """
    target = Path(path)
    check_name_length(target)
    if target.exists() and not overwrite:
        raise InputError("exists; use --overwrite", file=str(target))
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot create the output folder: {parent} is a file, not a folder", file=str(target))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write here: folder {parent} is not writable", file=str(target))


#: Longest file name (bytes) on common file systems (ext4, XFS, APFS, NTFS in UTF-16 units).
MAX_NAME_BYTES = 255
#: Temporary names: ``.<name>.<host>-<pid>-<random>.tmp`` (``<name>`` shortened to fit MAX_NAME_BYTES).
_TMP_RE = re.compile(r"^\.(?P<name>.*)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
#: Temporaries of earlier versions (``.<name>.<random12>.tmp``), and of other hosts, count as stale after this.
_STALE_AFTER_S = 24 * 3600


def _host_tag() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def temporary_name(name: str) -> str:
    """The temporary name for a final file ``name``, at most MAX_NAME_BYTES bytes (UTF-8)."""
    suffix = f".{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    room = MAX_NAME_BYTES - 1 - len(suffix.encode())
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > room:
        name = encoded[:room].decode("utf-8", "ignore")  # drops a multi-byte character cut in half
    return f".{name}{suffix}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(folder, name: str | None = None, stem: str | None = None) -> list[Path]:
    """Remove the temporary files that killed runs left in ``folder`` (for the output ``name``, or for
    every output whose name starts with ``stem``, or all); returns what was removed.

    A temporary is stale when the process that wrote it (same host) is gone, or, for temporaries of
    other hosts and of earlier versions, when it is older than a day. Never raises.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    host, now = _host_tag(), time.time()
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            continue
        match = _TMP_RE.match(entry.name)
        base = match.group("name") if match else re.sub(r"\.[0-9a-f]{12}\.tmp$", "", entry.name[1:])
        if base == entry.name[1:]:
            continue  # not one of ours
        if name is not None and base != name and not (name.startswith(base) and len(base.encode()) >= 200):
            continue  # another output's (a shortened long name is a prefix of 200 bytes or more)
        if stem is not None and not base.startswith(stem):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if match and match.group("host") == host:
            stale = not _pid_alive(int(match.group("pid")))
        else:
            stale = age > _STALE_AFTER_S
        if stale:
            _remove(Path(entry.path))
            removed.append(Path(entry.path))
    return removed


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
    remove_stale_temporaries(target.parent, name=target.name)  # left by a run that was killed
    tmp = target.with_name(temporary_name(target.name))
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"writer did not create {tmp}")
        if target.exists() and not overwrite:  # appeared while we were writing
            raise InputError("exists; use --overwrite", file=str(target))
        if tmp.is_dir() and target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as exc:
        _remove(tmp)
        if exc.errno in _DISK_FULL or _disk_full_text(exc):
            raise RunError(f"cannot write: {exc.strerror or 'no space left'} (disk full or file size limit); "
                           "nothing was left behind", file=str(target)) from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def _disk_full_text(exc: BaseException) -> bool:
    """Libraries that wrap the OS error in their own text (HDF5, pydicom) still name it."""
    text = str(exc).lower()
    return any(t in text for t in ("no space left", "file too large", "disk quota")) or \
        bool(re.search(r"\d+ requested and \d+ written", text))  # tifffile's short write


def write_bytes_atomic(path, data, overwrite: bool = False) -> None:
    """Write ``data`` (bytes-like) to ``path`` atomically; refused early (RunError) when the folder's
    file system has less free space than ``data`` needs."""
    target = Path(path)
    size = memoryview(data).nbytes
    try:
        free = shutil.disk_usage(target.parent if target.parent.exists() else Path.cwd()).free
    except OSError:
        free = None
    if free is not None and free < size:
        raise RunError(f"cannot write {size} bytes: only {free} bytes free on its file system", file=str(target))
    with atomic_path(target, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


# ----------------------------------------------------------------------------- sets of outputs


def _set_marker(paths: list[Path]) -> Path:
    import hashlib

    first = Path(paths[0])
    digest = hashlib.sha256("\0".join(str(Path(p).name) for p in paths).encode()).hexdigest()[:16]
    return first.parent / f".recon-writing-{digest}.json"


def remove_partial_outputs(paths) -> list[Path]:
    """Remove what a killed run left of the output set ``paths`` (see :func:`output_set`): when its
    marker names a process of this host that is gone (or is over a day old from elsewhere), the outputs
    it lists are a partial set; they and the marker are removed. Returns the paths removed."""
    import json

    paths = [Path(p) for p in paths]
    if not paths:
        return []
    marker = _set_marker(paths)
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        age = time.time() - marker.stat().st_mtime
    except (OSError, ValueError):
        return []
    alive = _pid_alive(int(record.get("pid", 0))) if record.get("host") == _host_tag() else age < _STALE_AFTER_S
    if alive:
        return []
    removed = []
    for name in record.get("outputs", []):
        path = Path(name)
        if path in paths and (path.exists() or path.is_symlink()):
            _remove(path)
            removed.append(path)
    _remove(marker)
    return removed


@contextmanager
def output_set(paths) -> Iterator[None]:
    """Mark the outputs ``paths`` as being written while the block runs: a process killed (SIGKILL,
    power loss) between two of them leaves the marker, and the next run removes the partial set
    (:func:`remove_partial_outputs`) instead of keeping some outputs of a run that never finished."""
    import json

    paths = [Path(p) for p in paths]
    marker = _set_marker(paths)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"pid": os.getpid(), "host": _host_tag(), "outputs": [str(p) for p in paths]}),
                      encoding="utf-8")
    try:
        yield
    finally:
        _remove(marker)
