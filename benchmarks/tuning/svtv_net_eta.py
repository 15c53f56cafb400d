"""Tuning run (see benchmarks/tuning/README.md): should SV-TV's edge scale differ for a network pre-estimate?

SV-TV (lam auto, 300 iterations, p 0.5) on the suite's TUNING cases only (t*), weights from the FBP
(Ram-Lak) pre-estimate (svtv's default) or from the envelope network (``unet``, default guard), over
eta (edge threshold relative to the pre-estimate's range) and the pre-estimate's blur. PSNR on the body
mask; TV lam auto from benchmarks/results/suite.json. Usage:

    .venv/bin/python benchmarks/tuning/svtv_net_eta.py [MODEL]      # default postproc_tv_envelope
"""
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from suite import score, sinogram  # noqa: E402
from suite_cases import load_case, suite  # noqa: E402

from recon_cli.backend import Device  # noqa: E402
from recon_cli.projectors import make_projector  # noqa: E402
from recon_cli.solvers.registry import run_solver  # noqa: E402
from recon_cli.solvers.svtv import SVTVParams, solve_with_pre_estimate  # noqa: E402

MODEL = sys.argv[1] if len(sys.argv) > 1 else "postproc_tv_envelope"
SETTINGS = [(eta, sm) for sm in (1.0, 0.0) for eta in (0.02, 0.05, 0.1, 0.2)]  # (eta, smoothing px); default 0.05, 1
base = json.loads((ROOT / "results" / "suite.json").read_text())["cases"]
print(f"model {MODEL}; settings (eta, blur px): {SETTINGS}", flush=True)
for spec in suite():
    if spec.split != "tune":
        continue
    case = load_case(spec)
    op = make_projector(case.geometry, case.grid, Device("cpu"))
    sino = sinogram(case, True)
    tv = base[spec.name]["methods"]["tv_auto_I0"]["psnr"]
    pre = {"fbp": run_solver("fbp", op, sino, {}).volume,
           "net": run_solver("unet", op, sino, {"model": MODEL}).volume}
    for name, u in pre.items():
        row = []
        for eta, sm in SETTINGS:
            p = SVTVParams.model_validate({"lam": "auto", "iterations": 300, "p": 0.5, "eta": eta, "smoothing": sm})
            row.append(score(case, solve_with_pre_estimate(op, sino, p, u).volume)["psnr"] - tv)
        print(f"{spec.name} TV {tv:.2f} pre {name} ({score(case, u)['psnr']:.2f}): "
              + "  ".join(f"eta{e}/sm{s:g} {d:+.2f}" for (e, s), d in zip(SETTINGS, row)), flush=True)
    del op
