"""Choosing the CPU projector for a run (recon_cli.memory.resolve_projector_kind) imports neither
SciPy nor ASTRA: an FBP run pays for them only when a metric or the solver needs them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_PROBE = """
import json, sys
from recon_cli.geometry import VolumeGrid, fan_beam_geometry
from recon_cli.memory import resolve_projector_kind
g = fan_beam_geometry(n_angles=60, detector_count=256, detector_spacing=1.2)
kinds = [resolve_projector_kind("auto", g, VolumeGrid((128, 128), 1.0), "cpu", products=p) for p in (1, 10000)]
print(json.dumps({"kinds": kinds, "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("scipy", "astra"))}))
"""


def test_projector_choice_imports_no_scipy_or_astra(tmp_path):
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "RECON_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["kinds"] == ["astra", "matrix"]  # FBP: direct; a long run: the matrix
    assert report["modules"] == []
