"""What ``recon solvers`` shows, cached on disk so the command need not import every solver.

Describing the solvers (recon_cli.cli.solvers_cmd.describe_solver) imports every solver's parameter
module (recon_cli/solvers/params, no numpy) and builds their pydantic JSON schemas: a first call takes
0.43 s, a cached one 0.20 s (benchmarks/results/startup.md). The description depends only on the
installed code, so it is kept as JSON in ``<cache dir>/catalogue/solvers-<key>.json``; ``key`` hashes
the recon-cli version, the Python version, and the path, size and mtime of every module of recon_cli
and of pydantic's version file: any edit or upgrade makes a new key (and the old file is removed).

The cache is read only while the solver registry is not loaded in this process (a fresh
``recon`` process): a program that registered its own solvers, or already paid for the imports,
describes them directly. Unreadable or unwritable cache files are ignored (described directly).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from recon_cli.cache_location import cache_dir

log = logging.getLogger(__name__)

FORMAT = "recon-solver-catalogue-v1"
_PACKAGE = Path(__file__).resolve().parents[1]


def catalogue_dir() -> Path:
    return cache_dir() / "catalogue"


def _code_key() -> str:
    """sha256 of the versions and of (path, size, mtime) of every recon_cli module and pydantic's version file."""
    from importlib.util import find_spec

    from recon_cli import __version__

    h = hashlib.sha256(f"{FORMAT} {__version__} {sys.version}".encode())
    stamps = []
    for folder, dirs, files in os.walk(_PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                stamps.append(os.path.join(folder, name))
    spec = find_spec("pydantic")
    if spec is not None and spec.origin:
        stamps.append(os.path.join(os.path.dirname(spec.origin), "version.py"))
    for path in stamps:
        try:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0missing\n".encode())
    return h.hexdigest()[:32]


def usable() -> bool:
    """Whether the cache may be used here: the solver registry is not loaded in this process."""
    return "recon_cli.solvers.registry" not in sys.modules


def described_solvers(describe_all: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every solver described (a list of dicts as ``describe_all()`` returns): from the cache
    when it holds this code's description, else ``describe_all()``, stored for the next call."""
    if not usable():
        return describe_all()
    try:
        key = _code_key()
    except OSError as exc:
        log.debug("solver catalogue: no key (%s)", exc)
        return describe_all()
    path = catalogue_dir() / f"solvers-{key}.json"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("solvers"), list):
            return data["solvers"]
    except (OSError, ValueError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.debug("solver catalogue: ignoring %s (%s)", path, exc)
    described = describe_all()
    _store(path, described)
    return described


def _store(path: Path, described: list[dict[str, Any]]) -> None:
    """Write the catalogue atomically and remove catalogues of other code versions; errors are ignored."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".solvers-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"format": FORMAT, "solvers": described}, f)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        for old in path.parent.glob("solvers-*.json"):
            if old != path:
                old.unlink(missing_ok=True)
    except (OSError, TypeError, ValueError) as exc:
        log.debug("solver catalogue: not written to %s (%s)", path, exc)
