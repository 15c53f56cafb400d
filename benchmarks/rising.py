"""RISING benchmark (issue 5): RISING against its early iterate, the converged solver and a post-processing U-Net.

    .venv/bin/python benchmarks/rising.py            # full run (~10 min on 2 idle cores)
    .venv/bin/python benchmarks/rising.py --quick    # 2 cases, smoke run

Held-out images of the reference geometry (60-view fan beam, 256 x 256 of 1 mm, Poisson I0 = 1e5),
none of them used in training: COULE phantoms with seeds 3000+, anatomy phantoms with seeds 3100+
(``np.random.default_rng(seed)``; training draws from ``SeedSequence([0, split, index])``), and the
two sample files ``shepp_logan_fan60.h5`` and ``head_fan60.h5``.

Methods: ``rising`` with the shipped model (k sgp_tv iterations from zero + network; k from the
model's metadata, 30 for the shipped model), the early iterate alone (sgp_tv, k iterations), sgp_tv converged (200 iterations, the network's target), the
post-processing U-Net (FBP -> ground truth, recon_cli/models/postproc_fan60.onnx through ``unet``;
"pending" when that model is absent) and plain FBP. Metrics: PSNR, SSIM, relative error to the
ground truth; relative error to (and PSNR against) the converged solution; wall time of the solver
call (projector built beforehand and shared; the ONNX session loaded once before timing; the
cheap methods timed as the best of 3 calls, the converged solver once). Targets: time(converged) /
time(RISING) >= 5 and PSNR(converged) - PSNR(RISING) <= 1 dB on average.

Writes ``<out>/rising.md`` and ``<out>/rising_samples.png`` (default out: benchmarks/results;
/tmp/recon_bench_rising_quick for --quick).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, contact_sheet, fmt, log, machine_info, md_kv, md_table  # noqa: E402

from recon_cli.backend import Device  # noqa: E402
from recon_cli.geometry import reference_geometry  # noqa: E402
from recon_cli.io.hdf5 import read_sinogram  # noqa: E402
from recon_cli.learn.anatomy import anatomy_phantom  # noqa: E402
from recon_cli.metrics import compute_metrics  # noqa: E402
from recon_cli.phantoms import coule_phantom  # noqa: E402
from recon_cli.projectors import make_projector  # noqa: E402
from recon_cli.simulate import simulate_sinogram  # noqa: E402
from recon_cli.sinogram import Sinogram  # noqa: E402
from recon_cli.solvers.registry import run_solver  # noqa: E402

RISING_MODEL = REPO / "recon_cli" / "models" / "rising_sgp_tv_fan60.onnx"
POSTPROC_MODEL = REPO / "recon_cli" / "models" / "postproc_fan60.onnx"
SGP = {"lam": 10.0, "beta": 1.0e-3, "intensity_scale": 0.0384, "scaling": True}  # = pipelines/sgp_tv.yaml
CONVERGED = 200
COULE_SEEDS = tuple(range(3000, 3005))
ANATOMY_SEEDS = tuple(range(3100, 3105))
SAMPLES = ("shepp_logan_fan60.h5", "head_fan60.h5")
I0 = 1.0e5
REPEATS = 3
TARGET_SPEEDUP, TARGET_GAP_DB = 5.0, 1.0


@dataclass
class Case:
    name: str
    description: str
    sino: Sinogram
    held_out: str  # "procedural" or "sample"


@dataclass
class Row:
    method: str
    volume: np.ndarray | None = None
    wall: float = float("nan")
    metrics: dict = field(default_factory=dict)
    error: str | None = None


def load_cases(quick: bool) -> list[Case]:
    geometry, grid = reference_geometry()
    cases = []
    coule, anatomy = (COULE_SEEDS[:1], ()) if quick else (COULE_SEEDS, ANATOMY_SEEDS)
    for kind, seeds, make in (("coule", coule, coule_phantom), ("anatomy", anatomy, anatomy_phantom)):
        for seed in seeds:
            image = make(grid.shape[0], np.random.default_rng(seed))
            sino = simulate_sinogram(image, grid.voxel_size, geometry, grid, I0=I0, seed=seed + 17)
            cases.append(Case(f"{kind}{seed}", f"{kind} phantom, default_rng({seed}), noise seed {seed + 17}",
                              sino, "procedural"))
    for fname in SAMPLES[1:] if quick else SAMPLES:
        sino = read_sinogram(REPO / "sample_data" / fname)
        cases.append(Case(Path(fname).stem, f"sample_data/{fname}", sino, "sample"))
    return cases


def methods(model: Path, postproc: Path | None, k: int) -> list[tuple[str, str, dict, int]]:
    """(label, solver, params, repeats)."""
    out = [(f"RISING (sgp_tv {k} it + net)", "rising",
            {"iterative": {"name": "sgp_tv", "params": SGP}, "k": k, "model": str(model)}, REPEATS),
           (f"sgp_tv {k} it (early iterate)", "sgp_tv", {**SGP, "iterations": k}, REPEATS),
           (f"sgp_tv {CONVERGED} it (converged)", "sgp_tv", {**SGP, "iterations": CONVERGED}, 1)]
    if postproc is not None:
        out.append(("FBP + post-processing U-Net", "unet", {"model": str(postproc)}, REPEATS))
    out.append(("FBP (Hann)", "fbp", {"filter": "hann"}, REPEATS))
    return out


def run(op, case: Case, label: str, solver: str, params: dict, repeats: int) -> Row:
    row = Row(label)
    try:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            rec = run_solver(solver, op, case.sino, params)
            best = min(best, time.perf_counter() - t0)
        row.wall = best
        row.volume = np.asarray(rec.volume, np.float32)
        row.metrics = compute_metrics(row.volume, case.sino.reference, names=["psnr", "ssim", "rel_err"])
    except Exception as exc:  # report and continue
        row.error = f"{type(exc).__name__}: {exc}"
        log(f"  !! {label}: {row.error}")
        traceback.print_exc(file=sys.stdout)
    return row


def to_converged(rows: list[Row], conv: np.ndarray) -> None:
    """Relative error to, and PSNR against, the converged solution (data range of the converged image)."""
    for r in rows:
        if r.volume is not None:
            m = compute_metrics(r.volume, conv, names=["psnr", "rel_err"])
            r.metrics["rel_err_conv"] = m["rel_err"]
            r.metrics["psnr_conv"] = m["psnr"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 cases (smoke run)")
    ap.add_argument("--out", help="output folder")
    ap.add_argument("--model", default=str(RISING_MODEL), help="RISING model (default: the shipped one)")
    args = ap.parse_args(argv)
    out = Path(args.out or ("/tmp/recon_bench_rising_quick" if args.quick else REPO / "benchmarks" / "results"))
    out.mkdir(parents=True, exist_ok=True)
    model = Path(args.model)
    if not model.is_file():
        log(f"no RISING model at {model}: train it first (docs/models.md)")
        return 1
    postproc = POSTPROC_MODEL if POSTPROC_MODEL.is_file() else None
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    geometry, grid = reference_geometry()
    op = make_projector(geometry, grid, Device("cpu"))
    cases = load_cases(args.quick)
    from recon_cli.networks import load_model

    meta = load_model(model).meta  # loads (and caches) the ONNX session before any timing
    k = int(meta["input"]["params"]["iterations"])
    meths = methods(model, postproc, k)
    if postproc is not None:
        load_model(postproc)
    results: dict[str, list[Row]] = {}
    for case in cases:
        log(f"{case.name}: {case.description}")
        rows = [run(op, case, label, solver, params, rep) for label, solver, params, rep in meths]
        conv = rows[2].volume
        if conv is not None:
            to_converged(rows, conv)
        for r in rows:
            if r.error is None:
                log(f"  {r.method:<30s} PSNR {r.metrics['psnr']:6.2f} dB  SSIM {r.metrics['ssim']:.3f}  "
                    f"rel.err(conv) {r.metrics.get('rel_err_conv', float('nan')):.4f}  {r.wall:7.3f} s")
        results[case.name] = rows
    write_report(out, args, cases, results, meths, postproc, meta, load_start, time.perf_counter() - t_start)
    return 0


# ----------------------------------------------------------------------------- report


def _mean(values) -> float | None:
    """Mean of the finite values; None (a dash in tables) when there are none (e.g. PSNR of x_conv to itself)."""
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def discussion(meta, k, procedural, ok, get, rising, early, conv, median_speedup, min_speedup, gap_proc,
               mean_gap) -> list[str]:
    """The report's discussion: the numbers of this run, and what limits the gap."""
    def mean_of(group, label, key):
        v = _mean(get(c, label).metrics.get(key) for c in group)
        return float("nan") if v is None else v

    train = meta.get("training", {})
    n_par = meta.get("n_parameters", 0)
    arch = meta.get("architecture", {})
    n_train = meta.get("data", {}).get("counts", {}).get("train")
    p_rc = mean_of(procedural, rising, "psnr_conv")      # RISING to x_conv
    p_kc = mean_of(procedural, early, "psnr_conv")       # x_k to x_conv
    p_c = mean_of(procedural, conv, "psnr")              # x_conv to the ground truth
    samples = [c for c in ok if c.held_out == "sample"]
    out = [f"- **Speed.** RISING costs {k} sgp_tv iterations plus one network pass; the converged solver "
           f"{CONVERGED} iterations. The time ratio is {median_speedup:.1f}x (median; smallest {min_speedup:.1f}x): "
           "the >= 5x target is " + ("met" if min_speedup >= TARGET_SPEEDUP else
                                     "met on the median" if median_speedup >= TARGET_SPEEDUP else "missed")
           + " on the CPU. Why k = " + str(k) + ": with our lam (10) sgp_tv's iterates stall on a plateau about "
           "32-34 dB from the converged solution until one long Barzilai-Borwein step, between iterations 22 and "
           "31 depending on the image, jumps to 37-40 dB (tuning images, seeds 7002-7006 / 7102-7106: mean PSNR "
           "of x_k to x_conv 32.7 dB at k = 20, 34.4 at 25, 38.7 at 30, 41.8 at 40; docs/models.md). k = 30 is "
           "just after that jump for most images and still leaves a >= 5x time ratio; k = 40 would not "
           "(200 / (40 + network) < 5).",
           "- **The solver.** sgp_tv was checked against Bonettini, Zanella, Zanni (2009): split-gradient "
           "scaling (here with the TV split), ABB_min step alternation (tau 0.5, memory 3), monotone Armijo; "
           "no defect was found, and the variants tried on the tuning images (no scaling, no TV split in the "
           "scaling, a larger first step, much looser scaling bounds, non-monotone line search, other ABB_min "
           "settings, BB1 or BB2 alone) did not make the early iterates consistently better, so sgp_tv is "
           "unchanged (and the converged targets with it).",
           f"- **Quality.** PSNR gap to the converged solver, mean over all {len(ok)} cases: {mean_gap:.2f} dB: "
           "the 1 dB target is "
           + ("met." if mean_gap <= TARGET_GAP_DB else f"missed by {mean_gap - TARGET_GAP_DB:.2f} dB.")
           + f" On the procedural images (like the training data) the network takes x_{k} from {p_kc:.1f} dB to "
           f"{p_rc:.1f} dB PSNR against x_conv (x_conv itself is {p_c:.1f} dB from the ground truth), a gap of "
           f"{gap_proc:.2f} dB to the converged solver"
           + (", within the target" if gap_proc <= TARGET_GAP_DB else "") + "."
           + (" The mean over all cases is pulled up by the two sample images (gaps "
              + ", ".join(f"{c.name} {get(c, conv).metrics['psnr'] - get(c, rising).metrics['psnr']:.2f} dB"
                          for c in samples) + "), which are unlike the training phantoms." if samples else "")
           + f" Network: U-Net depth {arch.get('depth')}, base {arch.get('base_channels')} channels "
           f"({n_par / 1e6:.1f} M parameters; the paper's has 64-512 channels), {n_train} training images, "
           f"{train.get('epochs_run')} epochs (best {train.get('best_epoch')}) on a shared 2-core CPU."]
    if samples:
        parts = [f"{c.name} {get(c, rising).metrics['psnr']:.1f} dB (x_{k} {get(c, early).metrics['psnr']:.1f}, "
                 f"converged {get(c, conv).metrics['psnr']:.1f}; rel.err to x_conv "
                 f"{get(c, rising).metrics['rel_err_conv']:.3f} vs x_{k}'s {get(c, early).metrics['rel_err_conv']:.3f})"
                 for c in samples]
        out.append("- **Sample images** (unlike the procedural training phantoms): " + "; ".join(parts) + ". "
                   "The network was trained on COULE-like and anatomy-like phantoms only; more varied training "
                   "images (e.g. real slices through an `hdf5` source), a larger network and more epochs are "
                   "the expected fixes for the remaining gap.")
    out.append("- **Post-processing U-Net** (FBP -> ground truth) is trained to the ground truth, not to the "
               "variational model, so it can beat the converged solver on images like its training data; "
               "RISING's point is to stay tied to the solver's model (its distance to x_conv above).")
    return out


def write_report(out: Path, args, cases, results, meths, postproc, meta, load_start, seconds) -> None:
    labels = [m[0] for m in meths]
    rising, early, conv = labels[0], labels[1], labels[2]

    def get(case, label):
        return next(r for r in results[case.name] if r.method == label)

    ok = [c for c in cases if all(get(c, lb).error is None for lb in (rising, early, conv))]
    procedural = [c for c in ok if c.held_out == "procedural"]
    speedups = {c.name: get(c, conv).wall / get(c, rising).wall for c in ok}
    gaps = {c.name: get(c, conv).metrics["psnr"] - get(c, rising).metrics["psnr"] for c in ok}
    closer = {c.name: get(c, rising).metrics["rel_err_conv"] < get(c, early).metrics["rel_err_conv"] for c in ok}
    k = int(meta["input"]["params"]["iterations"])
    mean_gap = _mean(gaps.values())
    mean_gap = float("nan") if mean_gap is None else mean_gap
    median_speedup = float(np.median(list(speedups.values()))) if speedups else float("nan")
    min_speedup = min(speedups.values()) if speedups else float("nan")
    gap_proc = _mean(gaps[c.name] for c in procedural)
    gap_proc = float("nan") if gap_proc is None else gap_proc

    cmd = "`.venv/bin/python benchmarks/rising.py" + (" --quick" if args.quick else "") + "`"
    lines = ["# RISING benchmark (issue 5)", "",
             f"Command: {cmd} (from the repository root; {seconds / 60:.1f} min).", "",
             "Held-out images of the reference geometry (60-view fan beam, 512 x 1.2 mm detector, 595 + 490 mm, "
             "256 x 256 grid of 1 mm, Poisson noise I0 = 1e5); none was used in training or tuning: "
             f"COULE phantoms seeds {COULE_SEEDS[0]}-{COULE_SEEDS[-1]}, anatomy phantoms seeds "
             f"{ANATOMY_SEEDS[0]}-{ANATOMY_SEEDS[-1]} (`np.random.default_rng(seed)`, noise seed = seed + 17; "
             "training used `SeedSequence([0, split, index])`), and the samples `shepp_logan_fan60.h5` and "
             "`head_fan60.h5`.", "",
             f"RISING model: `{Path(args.model).resolve().relative_to(REPO) if Path(args.model).resolve().is_relative_to(REPO) else args.model}` "
             f"(trained {meta.get('created', '?')}, best epoch {meta.get('training', {}).get('best_epoch')}, "
             f"{meta.get('data', {}).get('counts', {}).get('train')} training pairs). "
             f"sgp_tv parameters (all methods): lam 10, beta 1e-3, intensity_scale 0.0384, scaling on "
             "(= pipelines/sgp_tv.yaml).",
             "Post-processing U-Net: " + (f"`{postproc.relative_to(REPO)}` (FBP Hann -> ground truth) through `unet`."
                                          if postproc else "**pending** (recon_cli/models/postproc_fan60.onnx "
                                          "not trained yet when this ran)."), "",
             "Wall time: the solver call only (projector built once beforehand, ONNX sessions loaded once "
             f"before timing); best of {REPEATS} calls, except the converged solver (one call). "
             "`rel.err (conv)` = ||x - x_conv|| / ||x_conv|| with x_conv = sgp_tv 200 iterations; "
             "`PSNR (conv)` uses x_conv as the reference.", "",
             f"Machine load (1/5/15-min load average) at the start: {', '.join(f'{v:.1f}' for v in load_start)}, "
             f"at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} — the 2 cores were shared with other "
             "jobs, so absolute times are inflated; both sides of the time ratio ran under the same load.", ""]

    lines += ["## Summary", ""]
    verdict_speed = "met" if min_speedup >= TARGET_SPEEDUP else ("met on the median" if median_speedup >= TARGET_SPEEDUP
                                                                  else "missed")
    verdict_gap = "met" if mean_gap <= TARGET_GAP_DB else f"missed by {mean_gap - TARGET_GAP_DB:.2f} dB"
    lines += [md_table(["quantity", "value", "target", "verdict"], [
        ["time(converged) / time(RISING), median over cases", f"{median_speedup:.1f}x", f">= {TARGET_SPEEDUP:g}x",
         verdict_speed],
        ["time ratio, smallest case", f"{min_speedup:.1f}x", "", ""],
        ["PSNR(converged) - PSNR(RISING), mean over all cases", f"{mean_gap:.2f} dB", f"<= {TARGET_GAP_DB:g} dB",
         verdict_gap],
        ["PSNR gap, mean over the procedural cases", f"{gap_proc:.2f} dB", "", ""],
        [f"cases where RISING is closer to x_conv than x_{k}", f"{sum(closer.values())} / {len(closer)}", "all", ""],
    ], "lrrl"), ""]

    lines += ["## Discussion", ""] + discussion(meta, k, procedural, ok, get, rising, early, conv, median_speedup,
                                                min_speedup, gap_proc, mean_gap) + [""]
    lines += ["## Mean over the held-out cases", ""]
    for title, group in (("procedural (COULE + anatomy)", procedural),
                         ("all cases", ok)):
        rows = []
        for lb in labels:
            rs = [get(c, lb) for c in group if get(c, lb).error is None]
            if not rs:
                rows.append([lb] + ["pending" if lb.startswith("FBP +") else "failed"] * 6)
                continue
            rows.append([lb, _mean(r.metrics["psnr"] for r in rs), _mean(r.metrics["ssim"] for r in rs),
                         _mean(r.metrics["rel_err"] for r in rs), _mean(r.metrics.get("rel_err_conv") for r in rs),
                         _mean(r.metrics.get("psnr_conv") for r in rs), _mean(r.wall for r in rs)])
        if postproc is None:
            rows.insert(3, ["FBP + post-processing U-Net", "pending", "pending", "pending", "pending", "pending",
                            "pending"])
        lines += [f"### {title}: {len(group)} cases", "",
                  md_table(["method", "PSNR (dB)", "SSIM", "rel.err (GT)", "rel.err (conv)", "PSNR (conv) (dB)",
                            "wall (s)"], rows), ""]

    lines += ["## Per case", ""]
    rows = []
    for c in cases:
        for r in results[c.name]:
            if r.error:
                rows.append([c.name, r.method, "error: " + r.error[:60], "", "", "", ""])
                continue
            rows.append([c.name, r.method, r.metrics["psnr"], r.metrics["ssim"], r.metrics["rel_err"],
                         r.metrics.get("rel_err_conv"), r.wall])
        if c.name in speedups:
            rows.append([c.name, "**ratio / gap**", f"gap {gaps[c.name]:.2f} dB", "", "", "",
                         f"{speedups[c.name]:.1f}x"])
    lines += [md_table(["case", "method", "PSNR (dB)", "SSIM", "rel.err (GT)", "rel.err (conv)", "wall (s)"], rows,
                       "llrrrrr"), ""]

    sample = [c for c in cases if c.held_out == "sample" and c.name in speedups]
    if sample:
        images, vmax = [], 0.04
        for c in sample:
            images.append((f"{c.name}: ground truth", c.sino.reference))
            for lb in labels[:4]:
                r = get(c, lb)
                if r.volume is not None:
                    images.append((f"{lb.split(' (')[0]} {r.metrics['psnr']:.1f} dB", r.volume))
        png = contact_sheet(images, out / "rising_samples.png", vmin=0.0, vmax=vmax, columns=5,
                            title="ground truth, " + ", ".join(lb.split(" (")[0] for lb in labels[:4])
                                  + " (window 0-0.04 /mm)")
        lines += [f"![samples]({png.name})", ""]

    lines += ["## Machine", "", md_kv(machine_info(("recon-cli", "numpy", "astra-toolbox", "onnxruntime"))), ""]
    (out / "rising.md").write_text("\n".join(lines))
    log(f"wrote {out / 'rising.md'}: median speed-up {median_speedup:.1f}x, mean PSNR gap {mean_gap:.2f} dB")


if __name__ == "__main__":
    sys.exit(main())
