"""Solver speed of this checkout against another one, side by side (issue 18: the one iteration driver).

    git archive dffe251 | tar -x -C /tmp/before      # the tree to compare against
    nice -n 10 .venv/bin/python benchmarks/solvers_ab.py --before-src /tmp/before    # ~4 min -> results/solvers_ab.md

Each solver of the registry that iterates runs on the sample ``shepp_logan_fan60.h5`` (256^2, 60 fan-beam
views, the cached CSR projector built before timing) with a fixed lam and iteration count, in a fresh
process per tree, the two trees alternating ``--rounds`` times; the time is CPU seconds of the process
(``time.process_time``: less disturbed by other load than wall time on a shared host; all products run
on one thread) and each tree's best round is kept. The ratio is after / before.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, log, machine_info, md_kv, md_table  # noqa: E402

#: (solver, parameters): fixed lam and iteration counts, valid in both trees (graphla keeps its default FBP Psi)
CASES = [
    ("sirt", {"iterations": 200}),
    ("cgls", {"iterations": 100}),
    ("tv", {"lam": 8.0, "iterations": 300}),
    ("tpv", {"lam": 8.0, "iterations": 60, "outer_iterations": 3}),
    ("sgp_tv", {"lam": 10.0, "iterations": 150}),
    ("tikhonov", {"lam": 20.0, "iterations": 150, "tol": 0.0}),
    ("graphla", {"lam": 300.0, "iterations": 60, "tol": 0.0}),
]

CHILD = r"""
import json, sys, time
import numpy as np
from recon_cli.io.hdf5 import read_sinogram
from recon_cli.projectors.astra_matrix import AstraMatrixProjector
from recon_cli.solvers.registry import run_solver
sino = read_sinogram(sys.argv[1])
op = AstraMatrixProjector(sino.geometry, sino.grid)
op.forward(np.zeros(op.domain_shape, np.float32)); op.norm()
out = {}
for name, params in json.loads(sys.argv[2]):
    t0 = time.process_time()
    run_solver(name, op, sino, params)
    out[name] = time.process_time() - t0
print(json.dumps(out))
"""


def run_tree(src: Path, data: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src), "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(data), json.dumps(CASES)], cwd=str(src), env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before-src", required=True, type=Path, help="a checkout (source tree) to compare against")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    data = REPO / "sample_data" / "shepp_logan_fan60.h5"
    trees = {"before": args.before_src.resolve(), "after": REPO}
    best: dict[str, dict[str, float]] = {"before": {}, "after": {}}
    for r in range(args.rounds):
        for label, src in trees.items():
            times = run_tree(src, data)
            log(f"round {r + 1} {label}: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
            for name, t in times.items():
                best[label][name] = min(best[label].get(name, t), t)
    rows = [[name, json.dumps(params), best["before"][name], best["after"][name],
             best["after"][name] / best["before"][name]] for name, params in CASES]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "solvers_ab.md"
    path.write_text("# Solvers, this tree vs another, side by side (CPU seconds, best of "
                    f"{args.rounds} alternating rounds)\n\n"
                    + md_table(["solver", "parameters", "before (s)", "after (s)", "after / before"], rows)
                    + f"\n\nCommand: `python benchmarks/solvers_ab.py --before-src {args.before_src} "
                      f"--rounds {args.rounds}`\n\n" + md_kv(machine_info()) + "\n")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
