"""The weight a of an envelope U-Net's correction, output = x + a (net(x) - x), chosen on the suite's tuning cases.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/tuning/unet_correction_weight.py --split tune [--model M]
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/tuning/unet_correction_weight.py --split test [--model M]
    .venv/bin/python benchmarks/tuning/unet_correction_weight.py --write [--model M]   # a -> the model's metadata

Per case: x = the model's trained input solver on the case (with I0 / sigma in the file, as learned.py), the
network as unet runs it (dihedral average for a dihedrally trained model), PSNR (body mask) of x + a (net - x)
for a = 0.05 ... 1. Rows go to benchmarks/results/unet_correction_weight.json (per model, split and case) and
a table to unet_correction_weight.md. ``--write`` stores the a that maximises the mean PSNR over the tuning
rows alone (:func:`choose`; ties go to the larger a) as ``inference.correction_weight`` in the model's
metadata (.onnx and .json), with the cases it was chosen on.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import REPO, log  # noqa: E402
from suite import score, sinogram  # noqa: E402
from suite_cases import by_name, load_case  # noqa: E402

from recon_cli.backend import Device  # noqa: E402
from recon_cli.networks import conditions_for, dihedral_mean, load_model, resolve_model_path, update_metadata  # noqa: E402
from recon_cli.projectors import make_projector  # noqa: E402
from recon_cli.solvers.registry import SolverRef, run_ref  # noqa: E402

WEIGHTS = tuple(round(0.05 * i, 2) for i in range(1, 21))
RESULTS = REPO / "benchmarks" / "results"
JSON_PATH = RESULTS / "unet_correction_weight.json"
MODEL = "postproc_tv_envelope_big"


def curve(model, case) -> dict:
    """{input, network, curve: PSNR at each of WEIGHTS} for one case."""
    sino = sinogram(case, True)
    op = make_projector(case.geometry, case.grid, Device("cpu"))
    x = np.asarray(run_ref(SolverRef.model_validate(model.trained_input), op, sino).volume, np.float32)
    cond = conditions_for(sino)

    def net(v):
        return model.apply(v, voxel_size=sino.grid.voxel_size, conditions=cond)

    y = np.asarray(dihedral_mean(net, x) if model.trained_dihedral else net(x), np.float32)
    return {"input": score(case, x)["psnr"], "network": score(case, y)["psnr"],
            "curve": [score(case, x + a * (y - x))["psnr"] for a in WEIGHTS]}


def choose(rows: dict) -> tuple[float, list[float]]:
    """(the weight with the best mean PSNR over ``rows`` {case: {curve}}, ties to the larger; the means)."""
    means = np.mean([r["curve"] for r in rows.values()], axis=0)
    best = max(range(len(WEIGHTS)), key=lambda i: (round(float(means[i]), 6), i))
    return WEIGHTS[best], [float(m) for m in means]


def report(results: dict) -> str:
    lines = ["# unet correction weight (issue 14)", "",
             "Output = x + a (net(x) - x), x the model's input solver (TV lam auto for the TV-input models), the "
             "network averaged over the 8 turns / mirrors when trained so. PSNR (dB, body mask) per suite case; "
             "a chosen on the tuning cases (`--write`), reported on the test cases. "
             "`python benchmarks/tuning/unet_correction_weight.py --split tune|test [--model M]`.", ""]
    shown = (0.2, 0.3, 0.35, 0.4, 0.5, 0.7, 1.0)
    for model, splits in results.items():
        chosen = splits.get("chosen")
        lines += [f"## {model}" + (f": a = {chosen}" if chosen else ""), "",
                  "| case | split | input | " + " | ".join(f"a = {a}" for a in shown) + " |",
                  "| --- | --- | --: | " + " | ".join("--:" for _ in shown) + " |"]
        for split in ("tune", "test"):
            rows = splits.get(split, {})
            for name, r in rows.items():
                lines.append(f"| {name} | {split} | {r['input']:.2f} | "
                             + " | ".join(f"{r['curve'][WEIGHTS.index(a)]:.2f}" for a in shown) + " |")
            if rows:
                means = np.mean([[r["input"], *(r["curve"][WEIGHTS.index(a)] for a in shown)] for r in rows.values()], 0)
                lines.append(f"| **mean ({split})** | | **{means[0]:.2f}** | "
                             + " | ".join(f"**{m:.2f}**" for m in means[1:]) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--split", choices=("tune", "test"))
    ap.add_argument("--write", action="store_true", help="store the weight chosen on the tuning rows in the model")
    args = ap.parse_args(argv)
    results = json.loads(JSON_PATH.read_text()) if JSON_PATH.exists() else {}
    entry = results.setdefault(args.model, {})
    if args.split:
        model = load_model(args.model)
        rows = entry.setdefault(args.split, {})
        for spec in by_name(None):
            if spec.split == args.split:
                rows[spec.name] = curve(model, load_case(spec))
                log(f"{spec.name}: input {rows[spec.name]['input']:.2f}, network {rows[spec.name]['network']:.2f}")
    if args.write:
        weight, means = choose(entry["tune"])
        entry["chosen"] = weight
        update_metadata(resolve_model_path(args.model), "inference", {
            "correction_weight": weight,
            "chosen_on": "the evaluation suite's tuning cases " + ", ".join(sorted(entry["tune"])) + " (best mean PSNR; "
                         "benchmarks/tuning/unet_correction_weight.py)"})
        log(f"{args.model}: correction_weight {weight} (tuning mean {max(means):.2f} dB)")
    JSON_PATH.write_text(json.dumps(results, indent=1))
    (RESULTS / "unet_correction_weight.md").write_text(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
