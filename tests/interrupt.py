"""Shared by the resume tests: run ``recon`` in a subprocess and stop it with SIGTERM once it has
written its first checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def leftovers(folder: Path) -> list[Path]:
    """Temporary files (``*.tmp*``) anywhere below ``folder``: an interrupted run must leave none."""
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def recon_cli(*args: str) -> subprocess.Popen:
    """``python -m recon_cli -q ARGS`` with unbuffered output, stdout and stderr captured as text."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "recon_cli", "-q", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def sigterm_after_first_checkpoint(pipeline: Path, checkpoint: Path, timeout: float = 120.0) -> tuple[int, str]:
    """Start ``recon run PIPELINE``, send SIGTERM as soon as ``checkpoint`` exists; (exit code, stderr)."""
    proc = recon_cli("run", str(pipeline))
    deadline = time.monotonic() + timeout
    while not checkpoint.exists():
        assert proc.poll() is None, f"run ended before its first checkpoint: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no checkpoint after {timeout:g} s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def interrupted_checkpoint(pipeline: Path, folder: Path):
    """Run ``pipeline`` (output ``folder/out/x.h5``), stop it with SIGTERM after its first checkpoint and
    check the interruption: exit code 143, no output and no temporary file left. Returns the loaded
    checkpoint (recon_cli.checkpoint.load_checkpoint)."""
    from recon_cli.checkpoint import load_checkpoint

    out = folder / "out" / "x.h5"
    ckpt = folder / "out" / ".recon-checkpoints" / "x.h5.ckpt.npz"
    returncode, err = sigterm_after_first_checkpoint(pipeline, ckpt)
    assert returncode == 143, err
    assert not out.exists() and leftovers(folder) == []
    return load_checkpoint(ckpt)
