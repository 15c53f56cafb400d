"""The on-disk cache of projection matrices: one folder per entry, a size cap, LRU eviction.

An entry ``<cache_dir>/matrices/<name>/`` holds one CSR matrix as ``M.data.npy``,
``M.indices.npy``, ``M.indptr.npy`` (memory-mapped on load: no load time, pages shared between
processes) and ``meta.json``: the matrix shape, dtypes, non-zero count, a CRC-32 of each array
(computed at build time, verified on load), and cached scalars such as the operator norm.
``meta.json`` is written last, so an entry without it is incomplete and ignored.

Every load touches ``meta.json`` (its mtime is the entry's last use); after an entry is written
the least recently used other entries are removed until the cache fits its cap:
``$RECON_CACHE_MAX`` (a size such as ``2G``), else ``DEFAULT_CAP_FRACTION`` of the disk space
the cache could use (free space + the cache's own size).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # SciPy is imported where a sparse matrix is made (the projector choice needs none)
    import scipy.sparse as sp

from recon_cli.cache_location import cache_dir

log = logging.getLogger(__name__)

FORMAT = "recon-matrix-v2"
_PARTS = ("data", "indices", "indptr")
#: Share of (free disk + cache size) the cache may use when $RECON_CACHE_MAX is not set.
DEFAULT_CAP_FRACTION = 0.25


def matrices_dir() -> Path:
    return cache_dir() / "matrices"


def _crc(a: np.ndarray) -> int:
    """CRC-32 of an array's bytes (read in 64 MiB blocks, so a memory map is never copied whole)."""
    flat = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    crc, step = 0, 1 << 26
    for i in range(0, flat.size, step):
        crc = zlib.crc32(flat[i:i + step], crc)
    return crc


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _csr(data, indices, indptr, shape) -> sp.csr_matrix:
    """A CSR on these arrays as they are (memory maps stay memory maps; no copy, no check)."""
    import scipy.sparse as sp

    m = sp.csr_matrix(shape, dtype=np.float32)
    m.data, m.indices, m.indptr = data, indices, indptr
    return m


def save_entry(folder: Path, m: sp.csr_matrix, extra: dict | None = None) -> bool:
    """Write the CSR ``m`` and its meta.json (last) into ``folder``, then enforce the cap.

    False (nothing written) when the matrix alone exceeds the cap. Files of two concurrent
    writers of the same entry are interchangeable (same key, same content).
    """
    cap = cache_cap()
    size = sum(getattr(m, p).nbytes for p in _PARTS)
    if size > cap:
        log.info("matrix cache: not caching %s (%.0f MB is more than the cap of %.0f MB)", folder.name,
                 size / 1e6, cap / 1e6)
        return False
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "shape": list(m.shape), "nnz": int(m.nnz), "created": time.time(),
            "dtypes": {p: str(getattr(m, p).dtype) for p in _PARTS},
            "crc32": {p: _crc(getattr(m, p)) for p in _PARTS}, **(extra or {})}
    for part in _PARTS:
        _atomic_write(folder / f"M.{part}.npy", lambda f, part=part: np.save(f, getattr(m, part)))
    _atomic_write(folder / "meta.json", lambda f: f.write(json.dumps(meta).encode()))
    enforce_cap(keep=folder, cap=cap)
    return True


def read_meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def load_entry(folder: Path, shape: tuple[int, int], verify: bool = True) -> tuple[sp.csr_matrix, dict]:
    """(memory-mapped CSR, meta); ValueError when missing, inconsistent or its checksum differs."""
    meta = read_meta(folder)
    if meta.get("format") != FORMAT or tuple(meta.get("shape", ())) != tuple(shape):
        raise ValueError(f"not a {FORMAT} entry of shape {shape}")
    data, indices, indptr = (np.load(folder / f"M.{part}.npy", mmap_mode="r") for part in _PARTS)
    nnz = data.shape[0]
    if (data.dtype != np.float32 or indices.dtype not in (np.int32, np.int64) or indptr.dtype != indices.dtype
            or nnz != meta["nnz"] or indices.shape != (nnz,) or indptr.shape != (shape[0] + 1,)
            or indptr[0] != 0 or indptr[-1] != nnz):
        raise ValueError(f"arrays do not form a float32 CSR of shape {shape}")
    if verify:
        for part, arr in zip(_PARTS, (data, indices, indptr)):
            if _crc(arr) != meta["crc32"][part]:
                raise ValueError(f"checksum of M.{part}.npy differs from the one written")
    if nnz and (int(indices.min()) < 0 or int(indices.max()) >= shape[1]):  # guards the products
        raise ValueError("column index out of range")
    touch(folder)
    return _csr(data, indices, indptr, shape), meta


def touch(folder: Path) -> None:
    """Mark an entry as used now (LRU order)."""
    try:
        os.utime(folder / "meta.json")
    except OSError:
        pass


def update_meta(folder: Path, **values) -> None:
    """Add scalars (e.g. the operator norm) to an entry's meta.json; silently skipped when not writable."""
    try:
        meta = read_meta(folder)
        meta.update(values)
        _atomic_write(folder / "meta.json", lambda f: f.write(json.dumps(meta).encode()))
    except (OSError, ValueError) as exc:
        log.debug("could not update %s (%s)", folder, exc)


@dataclass
class Entry:
    path: Path
    size: int
    last_used: float
    complete: bool


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def list_entries() -> list[Entry]:
    """Every entry folder, least recently used first (incomplete entries first of all)."""
    root = matrices_dir()
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        meta = folder / "meta.json"
        try:
            complete = meta.is_file()
            last = meta.stat().st_mtime if complete else folder.stat().st_mtime
            out.append(Entry(folder, _folder_size(folder), last, complete))
        except OSError:  # removed meanwhile by another process
            continue
    return sorted(out, key=lambda e: (e.complete, e.last_used))


def cache_cap() -> int:
    """Bytes the matrix cache may hold: $RECON_CACHE_MAX, else DEFAULT_CAP_FRACTION of free + used."""
    env = os.environ.get("RECON_CACHE_MAX", "").strip()
    if env:
        from recon_cli.host_memory import parse_size

        try:
            return parse_size(env)
        except Exception:
            log.warning("ignoring RECON_CACHE_MAX=%r (not a size such as 2G)", env)
    root = cache_dir()
    probe = root if root.exists() else Path(os.path.expanduser("~"))
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return 2 * 1024**3
    used = sum(e.size for e in list_entries())
    return int(DEFAULT_CAP_FRACTION * (free + used))


def remove_entry(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def enforce_cap(keep: Path | None = None, cap: int | None = None) -> list[Path]:
    """Remove least recently used entries (never ``keep``) until the cache fits ``cap``; the removed."""
    cap = cache_cap() if cap is None else cap
    entries = list_entries()
    total = sum(e.size for e in entries)
    removed = []
    for e in entries:
        if total <= cap:
            break
        if keep is not None and e.path.resolve() == Path(keep).resolve():
            continue
        remove_entry(e.path)
        total -= e.size
        removed.append(e.path)
        log.info("matrix cache: removed %s (least recently used; cache cap %.0f MB)", e.path.name, cap / 1e6)
    return removed


def clear() -> tuple[int, int]:
    """Remove every entry; (count, bytes) removed."""
    entries = list_entries()
    for e in entries:
        remove_entry(e.path)
    return len(entries), sum(e.size for e in entries)
