"""Residual ratio at the oracle lam on the suite's cases: which discrepancy_tau each solver needs.

    .venv/bin/python benchmarks/tuning/suite_tau.py [--cases t01 ...]

For every case with a tv oracle and an SV-TV ceiling oracle in benchmarks/results/suite.json: one solve
at each oracle lam, and ||K x - y|| / misfit (misfit: the noise norm estimated from the sinogram,
raised by the model error, as lam auto computes it). lam auto hits the oracle when discrepancy_tau
equals that ratio. Prints one line per case and the mean / range over the tuning cases.
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
from recon_cli.solvers.regularisation_parameter import data_misfit_norm  # noqa: E402
from recon_cli.solvers.registry import run_solver  # noqa: E402
from recon_cli.solvers.svtv import SVTVParams, solve_with_pre_estimate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="*")
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
        rec = run_solver("tv", op, sino, {"lam": m["tv_oracle"]["lam"], "iterations": TV_ITERATIONS})
        r_tv = float(np.linalg.norm(op.forward(rec.volume) - y)) / misfit
        r_sv = None
        if "svtv_ceiling" in m:
            params = SVTVParams.model_validate({"lam": m["svtv_ceiling"]["lam"], "iterations": TV_ITERATIONS})
            rec = solve_with_pre_estimate(op, sino, params, case.reference)
            r_sv = float(np.linalg.norm(op.forward(rec.volume) - y)) / misfit
        rows.append((spec.name, spec.split, r_tv, r_sv, info.get("unresolved_energy_ratio")))
        print(f"{spec.name:28s} {spec.split}  tau* tv {r_tv:.3f}  svtv ceiling "
              f"{'-' if r_sv is None else f'{r_sv:.3f}'}  r_model {info.get('unresolved_energy_ratio')}", flush=True)
    for split in ("tune", "test"):
        tv = [r[2] for r in rows if r[1] == split]
        sv = [r[3] for r in rows if r[1] == split and r[3] is not None]
        if tv:
            print(f"{split}: tv tau* mean {np.mean(tv):.3f} range {min(tv):.3f}-{max(tv):.3f}"
                  + (f"; svtv tau* mean {np.mean(sv):.3f} range {min(sv):.3f}-{max(sv):.3f}" if sv else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
