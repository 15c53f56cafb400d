"""Learned pre-estimate benchmark (issue 4): SV-TV with a U-Net pre-estimate against FBP, TV,
SV-TV with an FBP pre-estimate, and the networks alone, on held-out images.

    .venv/bin/python benchmarks/learned.py            # full run (shipped models, ~1 h on 2 busy cores)
    .venv/bin/python benchmarks/learned.py --quick --prior M.onnx --postproc M.onnx   # smoke run

Writes ``<out>/learned.md`` and ``<out>/learned.json`` (default out: benchmarks/results for the
full run, /tmp/recon_bench_learned_quick for --quick). Progress goes to stdout.

Held-out images, reference geometry (``reference_geometry()``: 60-view fan beam, 256 x 256 of
1 mm), Poisson noise I0 = 1e5, simulated by ``simulate_sinogram`` (2x finer grid and detector):

* COULE-like (``coule_phantom``) and anatomy-like (``learn.anatomy.anatomy_phantom``) images
  drawn with ``np.random.default_rng(seed)`` for seeds 10_000+ (COULE) and 20_000+ (anatomy).
  Training draws its images from ``SeedSequence([data.seed, split, index])`` (three entries),
  so these integer seeds never give a training image.
* ``sample_data/head_fan60.h5`` (a real CT slice, pydicom's CT_small) and
  ``sample_data/shepp_logan_fan60.h5``: neither kind of image was in the training data.

Rows: FBP (Hann, the networks' input); TV as pipelines/tv.yaml (lam 8, 300 iterations); SV-TV
with svtv's defaults (p = 0.5, eta = 0.05, 1 px blur, lam auto by the discrepancy principle, 300 iterations)
and three pre-estimates: svtv's default ``{name: fbp}`` (Ram-Lak), FBP (Hann) and the learned one
``{name: unet, model: svtv_prior_fan60}``; TV's lam and SV-TV's lam and eta (p = 0.5) tuned on
separate tuning images (seeds 30_000+, never benchmarked), SV-TV for the FBP (Hann) and the
learned pre-estimate each; the networks alone (FBP -> U-Net); SV-TV with the learned
pre-estimate's tuned settings but weights from the true image (the ceiling of any pre-estimate).
Times are wall times of the whole call (pre-estimate included) on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (FINDINGS_END, FINDINGS_START, REPO, fmt, kept_findings, log, machine_info, md_kv,  # noqa: E402
                    md_table, timed_call)

from recon_cli.backend import Device  # noqa: E402
from recon_cli.geometry import fingerprint, reference_geometry  # noqa: E402
from recon_cli.io.hdf5 import read_sinogram  # noqa: E402
from recon_cli.learn.anatomy import anatomy_phantom  # noqa: E402
from recon_cli.metrics import compute_metrics  # noqa: E402
from recon_cli.networks import load_model  # noqa: E402
from recon_cli.phantoms import coule_phantom  # noqa: E402
from recon_cli.projectors import make_projector  # noqa: E402
from recon_cli.simulate import simulate_sinogram  # noqa: E402
from recon_cli.sinogram import Sinogram  # noqa: E402
from recon_cli.solvers.registry import run_solver  # noqa: E402

I0 = 1.0e5
COULE_SEEDS = (10_000, 10_001, 10_002, 10_003)
ANATOMY_SEEDS = (20_000, 20_001, 20_002, 20_003)
SAMPLE_FILES = ("head_fan60.h5", "shepp_logan_fan60.h5")
METRICS = ("psnr", "ssim", "rel_err")
CELL = {"psnr": "{:.2f}", "ssim": "{:.4f}", "rel_err": "{:.4f}", "wall": "{:.1f}"}
TV_PARAMS = {"lam": 8.0, "iterations": 300}          # pipelines/tv.yaml
SVTV_PARAMS = {"iterations": 300}                    # svtv defaults otherwise (p 0.5, eta 0.05, blur 1 px, lam auto)
TUNE_SEEDS = {"coule": (30_000, 30_001), "anatomy": (30_000, 30_001)}  # tuning images, not benchmarked
TUNE_GRID = {"lam": (4.0, 8.0, 16.0, 32.0), "eta": (2e-3, 1e-2, 3e-2, 1e-1)}  # p = 0.5 (svtv's default), no blur


@dataclass
class Settings:
    quick: bool
    out: Path
    prior: str
    postproc: str
    coule_seeds: tuple
    anatomy_seeds: tuple
    samples: tuple
    iterations: int = 300
    search_iterations: int = 100
    tune_seeds: dict = field(default_factory=lambda: dict(TUNE_SEEDS))
    tune_grid: dict = field(default_factory=lambda: dict(TUNE_GRID))


def settings(args) -> Settings:
    if args.quick:
        return Settings(True, Path(args.out or "/tmp/recon_bench_learned_quick"), args.prior, args.postproc,
                        COULE_SEEDS[:1], ANATOMY_SEEDS[:1], SAMPLE_FILES[:1], iterations=50, search_iterations=30,
                        tune_seeds={"coule": (30_000,), "anatomy": (30_000,)},
                        tune_grid={"lam": (8.0, 16.0), "eta": (2e-3, 1e-2)})
    return Settings(False, Path(args.out or REPO / "benchmarks" / "results"), args.prior, args.postproc,
                    COULE_SEEDS[:args.n], ANATOMY_SEEDS[:args.n], SAMPLE_FILES)


# ----------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    kind: str          # "coule", "anatomy" (synthetic, like training) or "sample"
    description: str
    sino: Sinogram


def synthetic_case(kind: str, seed: int, geometry, grid) -> Case:
    rng = np.random.default_rng(seed)
    image = coule_phantom(grid.shape[0], rng) if kind == "coule" else anatomy_phantom(grid.shape[0], rng)
    sino = simulate_sinogram(image, grid.voxel_size, geometry, grid, I0=I0, seed=seed + 1)
    return Case(f"{kind}{seed}", kind, f"{kind} phantom, default_rng({seed}), noise seed {seed + 1}", sino)


def load_cases(st: Settings) -> list[Case]:
    geometry, grid = reference_geometry()
    cases = [synthetic_case("coule", s, geometry, grid) for s in st.coule_seeds]
    cases += [synthetic_case("anatomy", s, geometry, grid) for s in st.anatomy_seeds]
    for fname in st.samples:
        sino = read_sinogram(REPO / "sample_data" / fname)
        cases.append(Case(Path(fname).stem, "sample", f"sample_data/{fname} ({sino.metadata.get('simulated_from')})",
                          sino))
    return cases


# ----------------------------------------------------------------------------- methods
PRE_ESTIMATES = {"FBP": {"name": "fbp"}, "FBP (hann)": {"name": "fbp", "params": {"filter": "hann"}}}


def pre_estimate_ref(st: Settings, label: str) -> dict:
    return {"name": "unet", "model": st.prior} if label == "learned" else PRE_ESTIMATES[label]


def methods(st: Settings, tuned: dict) -> list[tuple[str, str, dict]]:
    """(label, solver, params) of every row, in table order. ``tuned``: pre-estimate label -> {lam, eta}."""
    it = {"iterations": st.iterations, "search_iterations": st.search_iterations}
    tv = {**TV_PARAMS, "iterations": st.iterations}
    svtv = {**SVTV_PARAMS, **it}
    rows = [("fbp (hann)", "fbp", {"filter": "hann"}), ("tv (lam 8, tv.yaml)", "tv", tv)]
    for pre in ("FBP", "FBP (hann)", "learned"):
        rows.append((f"svtv defaults, {pre} pre-estimate", "svtv", {**svtv, "pre_estimate": pre_estimate_ref(st, pre)}))
    if "tv" in tuned:
        rows.append((f"tv tuned (lam {tuned['tv']['lam']:g})", "tv", {**tv, **tuned["tv"]}))
    for pre, best in tuned.items():
        if pre == "tv":
            continue
        rows.append((f"svtv tuned ({tuned_text(best)}), {pre} pre-estimate", "svtv",
                     {**svtv, **best, "smoothing": 0.0, "pre_estimate": pre_estimate_ref(st, pre)}))
    rows += [("U-Net alone: svtv_prior", "unet", {"model": st.prior}),
             ("U-Net alone: postproc", "unet", {"model": st.postproc})]
    if "learned" in tuned:
        rows.append((f"svtv tuned ({tuned_text(tuned['learned'])}), true-image weights (ceiling)", "ceiling",
                     {**svtv, **tuned["learned"], "smoothing": 0.0}))
    return rows


def tuned_text(best: dict) -> str:
    return f"lam {best['lam']:g}, eta {best['eta']:g}"


# ----------------------------------------------------------------------------- tuning
def tune(st: Settings, op) -> tuple[dict, list[list]]:
    """Best settings by mean PSNR over the tuning images: TV's lam, and SV-TV's (lam, eta) for each
    pre-estimate (FBP Hann, learned).

    Returns ({"tv": {"lam"}, pre-estimate label: {"lam", "eta"}}, table rows). The pre-estimate of
    each image is computed once; SV-TV runs with p = 0.5; all with ``st.iterations`` iterations.
    """
    from recon_cli.solvers.svtv import SVTVParams, solve_with_pre_estimate

    geometry, grid = reference_geometry()
    images = [synthetic_case(kind, seed, geometry, grid) for kind, seeds in st.tune_seeds.items() for seed in seeds]
    pres = ("FBP (hann)", "learned")
    scores: dict = {}

    def score(key, volume, case):
        m = compute_metrics(np.asarray(volume), case.sino.reference, names=["psnr", "ssim"])
        scores.setdefault(key, []).append(m)

    for case in images:
        for lam in st.tune_grid["lam"]:
            score(("tv", lam, None), run_solver("tv", op, case.sino, {"lam": lam, "iterations": st.iterations}).volume,
                  case)
        for pre in pres:
            ref = pre_estimate_ref(st, pre)
            params = {"model": ref["model"]} if "model" in ref else ref.get("params", {})
            u = run_solver(ref["name"], op, case.sino, params).volume
            for lam in st.tune_grid["lam"]:
                for eta in st.tune_grid["eta"]:
                    params = SVTVParams(lam=lam, eta=eta, smoothing=0.0, iterations=st.iterations)
                    score((pre, lam, eta), solve_with_pre_estimate(op, case.sino, params, u).volume, case)
        log(f"  tuning on {case.name}: done")
    best, rows = {}, []
    for method in ("tv",) + pres:
        keys = [k for k in scores if k[0] == method]
        mean = {k: (float(np.mean([m["psnr"] for m in scores[k]])), float(np.mean([m["ssim"] for m in scores[k]])))
                for k in keys}
        top = max(keys, key=lambda k: mean[k][0])
        best[method] = {"lam": top[1]} if method == "tv" else {"lam": top[1], "eta": top[2]}
        label = "none (tv)" if method == "tv" else method
        rows += [[label, f"{k[1]:g}", "–" if k[2] is None else f"{k[2]:g}", CELL["psnr"].format(mean[k][0]),
                  CELL["ssim"].format(mean[k][1]), "**best**" if k == top else ""] for k in keys]
    log(f"tuned: {best}")
    return best, rows


@dataclass
class Result:
    case: str
    label: str
    metrics: dict = field(default_factory=dict)
    wall: float = float("nan")
    lam: float | None = None
    error: str | None = None


def run_method(case: Case, op, label: str, solver: str, params: dict) -> Result:
    """One row: run, time the whole call, score against the case's reference; errors become rows."""
    res = Result(case.name, label)

    def call():
        if solver == "ceiling":
            from recon_cli.solvers.svtv import SVTVParams, solve_with_pre_estimate

            return solve_with_pre_estimate(op, case.sino, SVTVParams.model_validate(params), case.sino.reference)
        return run_solver(solver, op, case.sino, params)

    rec, res.wall, res.error = timed_call(call, label)
    if res.error is not None:
        return res
    res.lam = rec.info.get("lam")
    res.metrics = compute_metrics(np.asarray(rec.volume, np.float32), case.sino.reference, names=list(METRICS))
    log(f"  {label:<36s} PSNR {res.metrics['psnr']:6.2f} dB  SSIM {res.metrics['ssim']:.4f}  "
        f"rel {res.metrics['rel_err']:.4f}  {res.wall:6.1f} s  lam {fmt(res.lam)}")
    return res


# ----------------------------------------------------------------------------- report
def mean_rows(results: list[Result], labels: list[str], cases: list[Case], kinds: set[str]) -> list[list]:
    names = {c.name for c in cases if c.kind in kinds}
    rows = []
    for label in labels:
        rs = [r for r in results if r.label == label and r.case in names and r.error is None]
        if not rs:
            continue
        rows.append([label] + [CELL[m].format(np.mean([r.metrics[m] for r in rs])) for m in METRICS]
                    + [CELL["wall"].format(np.mean([r.wall for r in rs])), len(rs)])
    return rows


def model_summary(path: str) -> dict:
    """The facts of a model's metadata that matter for reading the table."""
    model = load_model(path)
    meta = model.meta
    tr, data, arch = meta.get("training", {}), meta.get("data", {}), meta.get("architecture", {})
    val, val_in = meta.get("metrics", {}).get("val", {}), meta.get("metrics", {}).get("val_input", {})
    file = model.path.relative_to(REPO) if model.path.is_relative_to(REPO) else model.path
    return {"file": str(file), "name": model.name,
            "network": f"U-Net depth {arch.get('depth')}, base {arch.get('base_channels')} channels, "
                       f"{meta.get('n_parameters')} parameters",
            "input": json.dumps(meta.get("input")), "loss": json.dumps(tr.get("loss")),
            "training data": ", ".join(s["kind"] for s in data.get("sources", [])) + " "
                             + json.dumps(data.get("counts")) + f", seed {data.get('seed')}",
            "epochs": f"{tr.get('epochs_run')} (best {tr.get('best_epoch')})",
            "validation (training's own split)": f"PSNR {val.get('psnr')} dB (FBP {val_in.get('psnr')}), "
                                                 f"SSIM {val.get('ssim')} (FBP {val_in.get('ssim')})"}


def write_report(st: Settings, cases: list[Case], results: list[Result], command: str, wall: float,
                 tuned: dict, tune_rows: list[list]) -> Path:
    labels = [m[0] for m in methods(st, tuned)]
    headers = ["method", "PSNR (dB)", "SSIM", "rel. error", "time (s)", "images"]
    lines = ["# Learned pre-estimate for SV-TV: held-out benchmark", "",
             f"Generated by `{command}` (from the repository root, with the project's .venv; {wall / 60:.0f} min). "
             + ("**Quick smoke run: tiny model, few iterations; the numbers mean nothing.**" if st.quick else ""),
             "", __doc__[__doc__.index("Held-out images"):].strip(), ""]
    lines += ["## Models", ""]
    for role, path in (("SV-TV prior", st.prior), ("post-processing", st.postproc)):
        try:
            lines += [f"**{role}**", "", md_kv(model_summary(path)), ""]
        except Exception as exc:
            lines += [f"**{role}**: {path}: cannot load ({exc})", ""]
    groups = [("All held-out images", {"coule", "anatomy", "sample"}),
              ("Synthetic images like the training data (COULE-like and anatomy-like, unseen seeds)",
               {"coule", "anatomy"}),
              ("Sample files (not like the training data: real CT slice, Shepp-Logan)", {"sample"})]
    for title, kinds in groups:
        if not any(c.kind in kinds for c in cases):
            continue
        lines += [f"## Mean: {title}", "", md_table(headers, mean_rows(results, labels, cases, kinds)), ""]
    lines += ["## Tuning of TV's lam and SV-TV's lam and eta (p = 0.5)", "",
              "On separate tuning images (" + ", ".join(f"{k} seeds {', '.join(str(x) for x in v)}"
                                                          for k, v in st.tune_seeds.items())
              + "), mean over them; the best PSNR is used in the rows 'tv tuned' and 'svtv tuned'.", "",
              md_table(["pre-estimate", "lam", "eta", "PSNR (dB)", "SSIM", ""], tune_rows, "lrrrrl"), ""]
    lines += ["## Per image", ""]
    for case in cases:
        rows = []
        for r in results:
            if r.case != case.name:
                continue
            if r.error:
                rows.append([r.label, "failed", r.error, "", fmt(r.wall), ""])
            else:
                rows.append([r.label] + [CELL[m].format(r.metrics[m]) for m in METRICS]
                            + [CELL["wall"].format(r.wall), fmt(r.lam)])
        lines += [f"### {case.name}", "", case.description, "",
                  md_table(["method", "PSNR (dB)", "SSIM", "rel. error", "time (s)", "lam"], rows), ""]
    lines += ["## Machine", "", md_kv(machine_info(("recon-cli", "numpy", "astra-toolbox", "onnxruntime",
                                                      "scikit-image"))), ""]
    st.out.mkdir(parents=True, exist_ok=True)
    path = st.out / "learned.md"
    findings = kept_findings(path)
    lines[4:4] = [FINDINGS_START, findings or "(findings: write them here; kept when the script reruns)",
                  FINDINGS_END, ""]
    path.write_text("\n".join(lines))
    (st.out / "learned.json").write_text(json.dumps(
        {"command": command, "cases": [{"name": c.name, "kind": c.kind, "description": c.description} for c in cases],
         "tuned": tuned, "results": [r.__dict__ for r in results]}, indent=1, default=float))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one image of each kind, 50 iterations")
    ap.add_argument("--out", help="output folder")
    ap.add_argument("--prior", default="svtv_prior_fan60", help="SV-TV prior model (file or shipped name)")
    ap.add_argument("--postproc", default="postproc_fan60", help="post-processing model (file or shipped name)")
    ap.add_argument("-n", type=int, default=len(COULE_SEEDS), help="synthetic images of each kind")
    args = ap.parse_args(argv)
    st = settings(args)
    command = "python benchmarks/learned.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    cases = load_cases(st)
    results: list[Result] = []
    ops: dict = {}
    geometry, grid = reference_geometry()
    ops[fingerprint(geometry, grid)] = make_projector(geometry, grid, Device("cpu"))
    log("tuning SV-TV's lam and eta on the tuning images")
    tuned, tune_rows = tune(st, ops[fingerprint(geometry, grid)])
    for case in cases:
        log(f"{case.name}: {case.description}")
        key = fingerprint(case.sino.geometry, case.sino.grid)
        if key not in ops:
            ops[key] = make_projector(case.sino.geometry, case.sino.grid, Device("cpu"))
        for label, solver, params in methods(st, tuned):
            results.append(run_method(case, ops[key], label, solver, params))
    path = write_report(st, cases, results, command.strip(), time.perf_counter() - t0, tuned, tune_rows)
    log(f"wrote {path}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
