"""The CLI called in-process or in a fresh interpreter, and small cases, as several test files need them."""
from __future__ import annotations

from pathlib import Path

import pytest


def recon_quiet(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``recon -q ARGS`` run in this process."""
    from recon_cli.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["-q", *args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def inverse_crime_case(n: int, views: int, seed: int = 0, noise_rel: float = 0.01):
    """(K, sinogram, ||e||): a pixel-sharp Shepp-Logan (n^2 pixels over 256 mm) projected by K itself on a
    ``views``-view fan beam, plus white noise of ``noise_rel`` ||K x||; metadata sigma and upsample 1."""
    import math

    import numpy as np

    from recon_cli.geometry import VolumeGrid, fan_beam_geometry
    from recon_cli.phantoms import shepp_logan
    from recon_cli.projectors.astra_matrix import AstraMatrixProjector
    from recon_cli.sinogram import Sinogram

    geometry = fan_beam_geometry(views, detector_count=2 * n, detector_spacing=1.2 * 256 / n)
    grid = VolumeGrid((n, n), 256.0 / n)
    K = AstraMatrixProjector(geometry, grid)
    x = shepp_logan(n, supersample=1)
    y = K.forward(x)
    e = np.random.default_rng(seed).standard_normal(y.shape).astype(np.float32)
    e *= noise_rel * np.linalg.norm(y) / np.linalg.norm(e)
    sino = Sinogram(data=(y + e).astype(np.float32), geometry=geometry, grid=grid, reference=x,
                    metadata={"sigma": float(np.linalg.norm(e) / math.sqrt(y.size)), "upsample": 1})
    return K, sino, float(np.linalg.norm(e))


#: Runs ``recon ARGS`` (JSON list in argv[1]) in a fresh interpreter and prints, after its output, the
#: exit code and every module it imported.
_PROBE = """
import json, sys
from recon_cli.cli.main import main
sys.argv = ["recon", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as exc:
    code = exc.code
print("\\nMODULES=" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def recon_in_fresh_process(args: list[str], env: dict | None = None) -> tuple[int, str, set[str]]:
    """(exit code, output, modules imported) of ``recon ARGS`` run from the repository root in a new
    interpreter (start-up and import tests)."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args)], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=120, env=env).stdout
    text, report = out.rsplit("MODULES=", 1)
    report = json.loads(report)
    return report["code"], text, set(report["modules"])


def train_via_cli(root: Path, raw: dict) -> tuple[Path, Path, Path]:
    """`recon train` on the config ``raw`` (copied; its pair cache under ``root``) through the CLI:
    (output folder, config path, cache folder)."""
    import json

    import yaml
    from click.testing import CliRunner

    from recon_cli.cli.main import cli

    raw = json.loads(json.dumps(raw))
    raw["data"]["cache_dir"] = str(root / "cache")
    cfg_path = root / f"{raw['name']}.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(cli, ["-q", "train", str(cfg_path), "--out", str(root / "out")])
    assert result.exit_code == 0, result.output
    return root / "out", cfg_path, root / "cache"


class CountingOperator:
    """``op`` counting its projections (forward + adjoint calls) in ``calls``; everything else is ``op``'s."""

    def __init__(self, op):
        self.op, self.calls = op, 0

    def __getattr__(self, name):
        return getattr(self.op, name)

    def forward(self, x):
        self.calls += 1
        return self.op.forward(x)

    def adjoint(self, y):
        self.calls += 1
        return self.op.adjoint(y)
