"""Memory sizes as text ('2G' <-> bytes) and the host memory this process can still use.

The bottom of the package (no recon_cli imports but errors): the memory planner (recon_cli.memory),
the readers' size checks (recon_cli.io) and the matrix cache's size limit (recon_cli.projectors)
all use it. Binary units: 1K = 1024 bytes.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from recon_cli.errors import ConfigError

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


# ----------------------------------------------------------------------------- sizes


def parse_size(text: str | int | float) -> int:
    """'2G', '500M', '1.5GiB', '64k', '1000000' -> bytes (binary units: 1K = 1024)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = int(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(text))
        if m is None:
            raise ConfigError(f"cannot read memory size {text!r}; use e.g. 2G, 500M, 64K or bytes",
                              field="--max-memory")
        value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise ConfigError(f"memory size must be positive, got {text!r}", field="--max-memory")
    return value


def format_size(n: float) -> str:
    """Bytes as '1.5 GiB', '300.0 MiB', '12.0 KiB', '512 B'."""
    n = float(n)
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


# ----------------------------------------------------------------------------- what is available


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> int | None:
    """The container's memory limit minus its usage (cgroup v2, else v1), or None without a limit."""
    pairs = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
             ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))
    for limit_file, usage_file in pairs:
        try:
            limit_text = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max":
            return None
        limit = int(limit_text)
        if limit >= 1 << 60:  # v1 "no limit" is a huge number
            return None
        return max(0, limit - usage)
    return None


def available_host_memory() -> int:
    """Bytes of RAM this process can still use: MemAvailable, capped by a cgroup limit."""
    values = [v for v in (_meminfo_available(), _cgroup_headroom()) if v is not None]
    if not values:
        try:
            values = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
            values = [4 * 1024**3]
    return int(min(values))
