"""What produced an output: resolved pipeline, command line, versions, device, host, input hash.

Stored as ``/provenance`` attributes of every reconstruction file (dicts as JSON strings).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

#: Distributions whose versions are recorded (when installed); "recon-cli" is this package, whose
#: distribution is named recon_cli.DISTRIBUTION on package indexes.
PACKAGES = ("recon-cli", "astra-toolbox", "numpy", "scipy", "h5py", "pydantic", "scikit-image", "cupy-cuda12x",
            "torch", "onnxruntime")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each distribution (from its metadata; nothing is imported)."""
    out = {"python": platform.python_version()}
    from recon_cli import DISTRIBUTION

    for name in names:
        try:
            out[name] = metadata.version(DISTRIBUTION if name in ("recon-cli", DISTRIBUTION) else name)
        except metadata.PackageNotFoundError:
            continue
    return out


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def utc_timestamp() -> str:
    """Now, UTC, ISO 8601 with seconds (e.g. 2025-01-31T12:00:00Z)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_provenance(*, pipeline_yaml: str, pipeline_hash: str, command_line: str | None, device: str,
                     projector: dict[str, Any], input_path: str | Path, input_sha256: str | None = None,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``/provenance`` record of one run (JSON-friendly values)."""
    return {
        "pipeline": pipeline_yaml,
        "pipeline_sha256": pipeline_hash,
        "command_line": command_line or " ".join(sys.argv),
        "cwd": os.getcwd(),
        "versions": package_versions(),
        "device": device,
        "projector": projector,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "timestamp_utc": utc_timestamp(),
        "input_path": str(input_path),
        "input_sha256": input_sha256 if input_sha256 is not None else file_sha256(input_path),
        **(extra or {}),
    }
