"""Data residuals of a post-processing network's output against FBP's and TV's: what the
out-of-distribution guard's factor (recon_cli/solvers/learned_guard.py) was chosen from.

For COULE (seed 11), anatomy (seed 12) and the three real training slices (neck, abdomen: its
central 256 x 256 pixels, head), simulated in the reference 60-view fan beam (256 x 256, 1 mm,
I0 = 1e5, noise seed 1): PSNR and relative residual ||A x - y|| / ||y|| of FBP (Hann), the
network (default ``postproc_fan60``) and TV (``lam: auto``). Writes ``<out>/guard_residuals.md``.

    .venv/bin/python benchmarks/guard_residuals.py        # a few minutes (five TV lam searches)
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, md_kv, md_table  # noqa: E402

from recon_cli.backend import Device  # noqa: E402
from recon_cli.geometry import VolumeGrid  # noqa: E402
from recon_cli.learn.anatomy import anatomy_phantom  # noqa: E402
from recon_cli.learn.config import GeometrySpec  # noqa: E402
from recon_cli.learn.real_slices import load_slice, locate  # noqa: E402
from recon_cli.metrics import compute_metrics  # noqa: E402
from recon_cli.networks import load_model  # noqa: E402
from recon_cli.phantoms import coule_phantom  # noqa: E402
from recon_cli.projectors import make_projector  # noqa: E402
from recon_cli.simulate import simulate_sinogram  # noqa: E402
from recon_cli.solvers.learned_guard import relative_residual  # noqa: E402
from recon_cli.solvers.registry import run_solver  # noqa: E402


def images() -> dict[str, tuple[np.ndarray, float]]:
    out = {"COULE (seed 11)": (coule_phantom(256, np.random.default_rng(11)), 1.0),
           "anatomy (seed 12)": (anatomy_phantom(256, np.random.default_rng(12)), 1.0)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, name, crop in [("neck bad_sequence.dcm", "bad_sequence.dcm", None),
                                  ("abdomen explicit_VR-UN.dcm (central 256 px)", "explicit_VR-UN.dcm", 128),
                                  ("head CT_small.dcm", "CT_small.dcm", None)]:
            mu, spacing = load_slice(str(locate(name)))
            if crop:
                mu = mu[crop:-crop, crop:-crop]
            out[label] = (np.array(mu), spacing)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="postproc_fan60")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    geometry, grid = GeometrySpec().build(), VolumeGrid((256, 256), 1.0)
    op = make_projector(geometry, grid, Device("cpu"))
    model = load_model(args.model)
    rows = []
    for label, (mu, spacing) in images().items():
        sino = simulate_sinogram(mu, spacing, geometry, grid, I0=1e5, seed=1)
        fbp = run_solver("fbp", op, sino, {"filter": "hann"}).volume
        net = model.apply(fbp)
        tv = run_solver("tv", op, sino, {"lam": "auto"}).volume
        ref = sino.reference
        dr = float(ref.max() - ref.min())
        psnr = [compute_metrics(x, ref, names=["psnr"], data_range=dr)["psnr"] for x in (fbp, net, tv)]
        res = [relative_residual(op, x, sino.data) for x in (fbp, net, tv)]
        rows.append([label, " / ".join(f"{p:.1f}" for p in psnr), " / ".join(f"{r:.4f}" for r in res),
                     res[1] / res[0], res[1] / res[2]])
        print(rows[-1], flush=True)
    table = md_table(["image", "PSNR FBP / net / TV (dB)", "residual FBP / net / TV", "net / FBP", "net / TV"], rows)
    text = ["# Data residuals of a network's output (out-of-distribution guard)", "",
            f"Command: `.venv/bin/python benchmarks/guard_residuals.py {' '.join(argv or sys.argv[1:])}`", "",
            f"Model `{args.model}`; reference 60-view fan beam, 256 x 256 of 1 mm, I0 = 1e5.", "", table, "",
            "## Machine", "", md_kv(machine_info()), ""]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "guard_residuals.md").write_text("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
