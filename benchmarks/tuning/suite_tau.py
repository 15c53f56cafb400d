"""Residual ratio at the oracle lam on the suite's cases: which discrepancy_tau each solver needs.

    .venv/bin/python benchmarks/tuning/suite_tau.py [--cases t01 ...] [--solvers tv svtv tikhonov]

For every case with a tv oracle and an SV-TV ceiling oracle in benchmarks/results/suite.json: one solve
at each oracle lam, and ||K x - y|| / misfit (misfit: the noise norm estimated from the sinogram,
raised by the model error, as lam auto computes it). lam auto hits the oracle when discrepancy_tau
equals that ratio. ``tikhonov``: the same at its own oracle lam, over the noise norm alone (its
discrepancy target has no model-error term). Prints one line per case and the mean / range over the
tuning and the test cases.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from suite import JSON_PATH, TV_ITERATIONS, sinogram  # noqa: E402
from suite_cases import by_name, load_case  # noqa: E402

from recon_cli.backend import Device  # noqa: E402
from recon_cli.projectors import make_projector  # noqa: E402
from recon_cli.solvers.regularisation_parameter import data_misfit_norm, noise_norm  # noqa: E402
from recon_cli.solvers.registry import run_solver  # noqa: E402
from recon_cli.solvers.svtv import SVTVParams, solve_with_pre_estimate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="*")
    ap.add_argument("--solvers", nargs="*", default=["tv", "svtv"], choices=["tv", "svtv", "tikhonov"])
    args = ap.parse_args()
    results = json.loads(JSON_PATH.read_text())["cases"]
    rows = []
    for spec in by_name(args.cases):
        m = results.get(spec.name, {}).get("methods", {})
        if "tv_oracle" not in m:
            continue
        case = load_case(spec)
        op = make_projector(case.geometry, case.grid, Device("cpu"))
        sino = sinogram(case, False)
        misfit, info = data_misfit_norm(sino.data, sino.metadata, sino.geometry, sino.grid.voxel_size)
        y = np.asarray(sino.data, np.float64)
        r_tv = r_sv = r_tk = None
        if "tv" in args.solvers:
            rec = run_solver("tv", op, sino, {"lam": m["tv_oracle"]["lam"], "iterations": TV_ITERATIONS})
            r_tv = float(np.linalg.norm(op.forward(rec.volume) - y)) / misfit
        if "tikhonov" in args.solvers and "tikhonov_oracle" in m:
            rec = run_solver("tikhonov", op, sino, {"lam": m["tikhonov_oracle"]["lam"]})
            e_norm, _ = noise_norm(sino.data, sino.metadata)
            r_tk = float(np.linalg.norm(op.forward(rec.volume) - y)) / e_norm
        if "svtv" in args.solvers and "svtv_ceiling" in m:
            params = SVTVParams.model_validate({"lam": m["svtv_ceiling"]["lam"], "iterations": TV_ITERATIONS})
            rec = solve_with_pre_estimate(op, sino, params, case.reference)
            r_sv = float(np.linalg.norm(op.forward(rec.volume) - y)) / misfit
        rows.append((spec.name, spec.split, r_tv, r_sv, r_tk))
        fmt = (lambda r: "-" if r is None else f"{r:.3f}")
        print(f"{spec.name:28s} {spec.split}  tau* tv {fmt(r_tv)}  svtv ceiling {fmt(r_sv)}  tikhonov {fmt(r_tk)}"
              f"  r_model {info.get('unresolved_energy_ratio')}", flush=True)
    for split in ("tune", "test"):
        for col, label in ((2, "tv"), (3, "svtv"), (4, "tikhonov")):
            vals = [r[col] for r in rows if r[1] == split and r[col] is not None]
            if vals:
                print(f"{split}: {label} tau* mean {np.mean(vals):.3f} range {min(vals):.3f}-{max(vals):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
