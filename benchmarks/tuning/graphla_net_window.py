"""graphLa+Net: graph window R, weight scale sigma and discrepancy tau, with Psi = an envelope U-Net, per suite case.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/tuning/graphla_net_window.py tune|test [MODEL]
Psi = unet with ``on_implausible: ignore`` (for MODEL = postproc_tv_envelope_big that is now the averaged, damped
output; the session-7 numbers in learned.md were measured before those two changes, with the plain network).
Writes benchmarks/results/graphla_net_window_<split>_<MODEL>.json and prints per-case PSNR and the means.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
from suite import score, sinogram
from suite_cases import by_name, load_case
from recon_cli.backend import Device
from recon_cli.projectors import make_projector
from recon_cli.solvers.registry import run_solver
from recon_cli.solvers.graphla import solve_with_psi
from recon_cli.solvers.params.graphla import GraphLaParams

split = sys.argv[1]
model = sys.argv[2] if len(sys.argv) > 2 else "postproc_tv_envelope_big"
variants = [dict(), dict(R=3), dict(R=2), dict(R=4), dict(sigma=3e-4), dict(sigma=1e-4), dict(sigma=3e-3),
            dict(R=3, sigma=3e-3), dict(discrepancy_tau=0.9), dict(R=3, discrepancy_tau=1.05),
            dict(R=3, discrepancy_tau=1.1), dict(algorithm="pdhg")]


out = {}
for spec in by_name(None):
    if spec.split != split:
        continue
    case = load_case(spec)
    op = make_projector(case.geometry, case.grid, Device("cpu"))
    sino = sinogram(case, True)
    net = run_solver("unet", op, sino, {"model": model, "on_implausible": "ignore", "noise_factor": None})
    u = net.volume
    row = {"net": score(case, u)["psnr"]}
    tv = run_solver("tv", op, sino, {"lam": "auto", "iterations": 300})
    row["tv"] = score(case, tv.volume)["psnr"]
    for v in variants:
        p = GraphLaParams(**v)
        rec = solve_with_psi(op, sino, p, u)
        row[json.dumps(v)] = score(case, rec.volume)["psnr"]
    out[spec.name] = row
    print(spec.name, " ".join(f"{k}={v:.2f}" for k, v in row.items()), flush=True)
names = list(next(iter(out.values())).keys())
print("MEAN", " ".join(f"{k}={np.mean([r[k] for r in out.values()]):.2f}" for k in names))
print("MEAN-gap-to-tv", " ".join(f"{k}={np.mean([r[k]-r['tv'] for r in out.values()]):+.2f}" for k in names))
Path(__file__).resolve().parents[1].joinpath("results", f"graphla_net_window_{split}_{model}.json").write_text(json.dumps(out, indent=1))
