"""Where recon-cli caches derived data (projection matrices, the solver catalogue); no imports beyond os."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$RECON_CACHE_DIR, else $XDG_CACHE_HOME/recon-cli, else ~/.cache/recon-cli."""
    env = os.environ.get("RECON_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "recon-cli"
