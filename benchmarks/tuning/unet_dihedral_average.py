"""Dihedral test-time averaging of an envelope U-Net vs the network alone and TV lam auto, per suite case.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/tuning/unet_dihedral_average.py tune [MODEL]   # chosen here
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/tuning/unet_dihedral_average.py test [MODEL]   # reported
Measured (postproc_tv_envelope_big): tune mean tv 35.11 / net 34.62 / averaged 34.72 (no case lower);
test mean 35.87 / 35.88 / 35.97.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
from suite import score, sinogram
from suite_cases import by_name, load_case
from recon_cli.backend import Device
from recon_cli.projectors import make_projector
from recon_cli.solvers.registry import run_solver
from recon_cli.networks import conditions_for, dihedral_mean, load_model

split = sys.argv[1]
model = load_model(sys.argv[2] if len(sys.argv) > 2 else "postproc_tv_envelope_big")
rows = []
for spec in by_name(None):
    if spec.split != split:
        continue
    case = load_case(spec); op = make_projector(case.geometry, case.grid, Device("cpu")); sino = sinogram(case, True)
    tv = np.asarray(run_solver("tv", op, sino, {"lam": "auto", "iterations": 300}).volume)
    cond = conditions_for(sino)

    def f(x):
        return np.asarray(model.apply(x, voxel_size=sino.grid.voxel_size, conditions=cond))

    plain = f(tv)
    tta = dihedral_mean(f, tv)
    r = [score(case, v)["psnr"] for v in (tv, plain, tta)]
    rows.append(r)
    print(spec.name, "tv %.2f net %.2f tta %.2f" % tuple(r), flush=True)
m = np.mean(rows, 0)
print("MEAN tv %.2f net %.2f tta %.2f" % tuple(m))
