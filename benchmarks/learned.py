"""Learned priors on the evaluation suite (issue 14): the envelope U-Net alone (with its guard), SV-TV
with the learned pre-estimate, graphLa+Net, against FBP (Hann), TV lam auto and the SV-TV ceiling.

    .venv/bin/python benchmarks/learned.py                       # every test case and method
    .venv/bin/python benchmarks/learned.py --cases s01 s03 --methods unet
    .venv/bin/python benchmarks/learned.py --report               # rewrite learned.md from learned.json

Cases: the suite's ``test`` cases (benchmarks/suite_cases.py; simulated data cached in
~/.cache/recon-cli-suite). FBP (Hann), TV lam auto (I0 / sigma in the file, as here) and the SV-TV
ceiling (true-image weights, best lam) are read from benchmarks/results/suite.json, not recomputed.
Every learned method sees the sinogram with its I0 / sigma metadata, as a scanner file carries it.

Two groups: **held out** (images never seen in training: the abdomen slice, which the shipped
training config excludes, and the COULE / anatomy phantoms of integer seeds 5300-5312, which training
never draws: it seeds with SeedSequence([seed, split, index])) and **image seen in training** (neck
and CT_small: other crop, geometry and dose than any training pair, but the same anatomy).

``unet`` is run with ``on_implausible: ignore`` so the network's own output is scored; the guard's
residuals (network, FBP, expected misfit) are stored, and the guarded result of each candidate rule
is derived from them (fallback = FBP (Hann), or TV lam auto).
Results per (case, method) are kept in learned.json; learned.md is rewritten from it every time.
Times are wall times of the whole call on a shared 2-core machine (indicative only).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FINDINGS_END, FINDINGS_START, REPO, kept_findings, log, machine_info, md_kv, md_table  # noqa: E402
from suite import score, sinogram, timed_cpu  # noqa: E402
from suite_cases import by_name, load_case, suite  # noqa: E402

from recon_cli.backend import Device  # noqa: E402
from recon_cli.projectors import make_projector  # noqa: E402
from recon_cli.solvers.registry import run_solver  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
JSON_PATH = RESULTS / "learned.json"
SUITE_JSON = RESULTS / "suite.json"
#: The model of pipelines/unet.yaml: the per-case table and the must-show checks are about it.
MODEL = "postproc_tv_envelope_big"
#: The designs compared side by side (issue 14): model name -> what its network is fed.
#: ``postproc_tv_envelope_big_plain``: MODEL's results before dihedral averaging and the correction weight
#: (network alone, a = 1), kept from the run that measured them; not a model file.
DESIGNS = {"postproc_envelope": "FBP (Hann) input", "postproc_tv_envelope": "TV lam auto input",
           "postproc_tv_envelope_aug": "TV lam auto input, aug",
           "postproc_tv_envelope_aug_l1": "TV lam auto input, aug, L1 loss",
           "postproc_tv_envelope_big_plain": "TV lam auto input, 160 pairs",
           "postproc_tv_envelope_big": "TV lam auto input, 160 pairs, 8-fold average, a = 0.35"}
METHODS = ("unet", "svtv_learned", "graphla_net", "svtv_fbp", "rising")
#: The RISING envelope model (``--methods rising --model RISING_MODEL``): RISING against its converged solver.
RISING_MODEL = "rising_sgp_tv_envelope"
#: Images that are real CT slices (the rest are phantoms): RISING's 1 dB rule is stated on real slices.
REAL_IMAGES = ("neck", "abdomen", "ct_small")
ITERATIONS = 300  # SV-TV iterations (the suite's TV / SV-TV runs use the same)
#: Images the shipped envelope models saw in training (other crops / geometries / doses).
SEEN_IMAGES = ("neck", "ct_small")
#: Candidate guard rules: (label, FBP-ratio limit or None, noise-ratio limit or None).
RULES = (("FBP ratio <= 1.5 (old)", 1.5, None), ("noise ratio <= 5 (default)", 1.5, 5.0),
         ("noise ratio <= 3", 1.5, 3.0), ("noise ratio <= 2", 1.5, 2.0),
         ("noise ratio <= 1.5", 1.5, 1.5), ("noise ratio <= 1.25", 1.5, 1.25))


def result_key(method: str, model: str) -> str:
    """Where a method's result is kept in learned.json: the plain method name for MODEL (the columns of
    the per-case table), ``method@model`` for any other design."""
    return method if model == MODEL else f"{method}@{model}"


def group(spec) -> str:
    return "seen" if spec.image.split(":")[0] in SEEN_IMAGES else "held out"


def net_ref(model: str) -> dict:
    return {"name": "unet", "params": {"model": model}}


def rising_refs(model: str) -> tuple[dict, int, dict]:
    """(RISING's pre_estimate, k, the converged solver) as the model was trained: the same solver and
    parameters (lam rule included), k = the input's iteration count."""
    from recon_cli.networks import load_model

    meta = load_model(model).meta
    trained = dict(meta["input"]["params"])
    k = int(trained.pop("iterations"))
    return {"name": meta["input"]["name"], "params": trained}, k, dict(meta["target"]["solver"])


def run_rising(case, op, model: str, repeats: int = 2) -> dict:
    """RISING and its converged solver side by side: each run ``repeats`` times alternately (after one
    untimed RISING run that loads the model), CPU time of this process (one thread), the minimum kept."""
    sino = sinogram(case, True)
    pre, k, conv = rising_refs(model)
    params = {"pre_estimate": pre, "k": k, "model": model}
    run_solver("rising", op, sino, params)  # warm-up: model file and ONNX session (cached per process)
    cpu_r, cpu_c, wall_r, wall_c = [], [], [], []
    for _ in range(repeats):
        conv_rec, w, c = timed_cpu(lambda: run_solver(conv["name"], op, sino, conv["params"]))
        cpu_c.append(c), wall_c.append(w)
        rec, w, c = timed_cpu(lambda: run_solver("rising", op, sino, params))
        cpu_r.append(c), wall_r.append(w)
    x_k = run_solver(pre["name"], op, sino, {**pre["params"], "iterations": k}).volume
    info = rec.info
    return {**score(case, rec.volume), "time": min(wall_r), "cpu": min(cpu_r), "k": k,
            "converged": {**score(case, conv_rec.volume), "cpu": min(cpu_c), "time": min(wall_c),
                          "iterations": int(conv["params"].get("iterations", 0)),
                          "lam": float(conv_rec.info.get("lam", float("nan")))},
            "x_k_psnr": score(case, x_k)["psnr"], "cpu_ratio": min(cpu_c) / min(cpu_r),
            "guard_decision": info.get("guard_decision"), "time_network": info.get("time_network"),
            "time_iterative": info.get("time_iterative"), "guard_ratio": info.get("guard_ratio"),
            "guard_noise_ratio": info.get("guard_noise_ratio")}


def run_method(case, op, method: str, model: str) -> dict:
    if method == "rising":
        return run_rising(case, op, model)
    sino = sinogram(case, True)
    t0 = time.perf_counter()
    if method == "unet":
        rec = run_solver("unet", op, sino, {"model": model, "on_implausible": "ignore", "noise_factor": None})
        info = rec.info
        out = {k: info.get(k) for k in ("guard_residual_network", "guard_residual_baseline", "guard_residual_noise",
                                        "guard_noise_ratio", "guard_ratio", "time_network")}
    elif method == "svtv_learned":
        rec = run_solver("svtv", op, sino, {"lam": "auto", "iterations": ITERATIONS, "pre_estimate": net_ref(model)})
        out = {"lam": float(rec.info["lam"])}
    elif method == "svtv_fbp":  # svtv's default pre-estimate (FBP, Ram-Lak): what the learned one replaces
        rec = run_solver("svtv", op, sino, {"lam": "auto", "iterations": ITERATIONS})
        out = {"lam": float(rec.info["lam"])}
    elif method == "graphla_net":
        rec = run_solver("graphla", op, sino, {"psi": net_ref(model)})
        out = {"iterations": int(rec.info.get("iterations", 0) or 0)}
    else:
        raise ValueError(method)
    out["time"] = time.perf_counter() - t0
    return {**score(case, rec.volume), **out}


def envelope_checks(model: str) -> list[tuple[str, bool, str]]:
    """(label, passed, detail): every suite case (geometry, grid, noise) fits without allow_mismatch;
    a float32-stored copy of a case's angles fits too."""
    import dataclasses

    from recon_cli.networks import load_model

    m = load_model(model)
    failures = []
    for spec in suite():
        case = load_case(spec)
        found = m.mismatches(case.geometry, case.grid, noise=case.metadata(True))
        if found:
            failures.append(f"{spec.name}: {found[0][0]}: {found[0][1]}")
    out = [("every suite geometry runs without allow_mismatch", not failures,
            f"{len(suite()) - len(failures)}/{len(suite())} cases fit (geometry, grid, pixel size, noise)"
            + (f"; {failures[0]}" if failures else ""))]
    case = load_case(by_name(["s01"])[0])
    g32 = dataclasses.replace(case.geometry, angles=np.asarray(case.geometry.angles, np.float32).astype(np.float64))
    found = m.mismatches(g32, case.grid, noise=case.metadata(True))
    out.append(("a float32-stored copy of a geometry runs", not found,
                "s01's angles stored as float32" + (f": {found[0][1]}" if found else ": fits")))
    return out


# ----------------------------------------------------------------------------- report
def load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"cases": {}}


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


def load_model_meta(model: str) -> dict:
    from recon_cli.networks import load_model

    return load_model(model).meta


def input_psnr(base_methods: dict, model: str) -> float | None:
    """PSNR of ``model``'s trained input solver on a case, from suite.json: FBP (Hann) or TV lam auto (I0)."""
    name = (load_model_meta(model).get("input") or {}).get("name", "fbp")
    return base_methods.get("tv_auto_I0" if name == "tv" else "fbp", {}).get("psnr")


def guarded(u: dict, fbp: float, tv: float, fbp_limit, noise_limit, fallback: str) -> tuple[float, bool]:
    """(PSNR of unet under a rule, fell back?) from the stored residuals; ``fbp``: the fallback 'fbp' (the
    model's input solver), ``tv``: TV lam auto."""
    bad = u["guard_residual_network"] is None
    if fbp_limit is not None and not bad:
        bad = u["guard_ratio"] is None or u["guard_ratio"] > fbp_limit
    if noise_limit is not None and not bad:
        bad = u["guard_noise_ratio"] is None or u["guard_noise_ratio"] > noise_limit
    if not bad:
        return u["psnr"], False
    return (fbp if fallback == "fbp" else tv), True


def write_report(results: dict, command: str, model: str) -> None:
    specs = {s.name: s for s in suite()}
    base = load_json(SUITE_JSON)["cases"]
    L = ["# Learned priors on the evaluation suite (issue 14)", "",
         "Regenerate: `OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/learned.py` (cases: the suite's test "
         "cases, benchmarks/suite_cases.py). Last command: `" + command + "`.", "",
         md_kv(results.get("machine", {})), "",
         f"Model: `{model}` (recon_cli/models/{model}.json; trained by `recon train training/{model}.yaml --out "
         "recon_cli/models`). FBP (Hann), TV lam auto (I0 / sigma in the file) and the SV-TV ceiling (weights "
         "from the true image, best lam) come from benchmarks/results/suite.json. PSNR (dB) on the body mask. "
         "Groups: **held out** = image never in training (abdomen slice, excluded by the training config; "
         "phantoms of the suite's integer seeds); **seen** = image seen in training (other crop/geometry/dose).",
         ""]
    findings = kept_findings(RESULTS / "learned.md")
    L += ["## Findings", "", FINDINGS_START, findings or "(none written yet)", FINDINGS_END, ""]
    rows, table = [], {}
    for name, spec in specs.items():
        if spec.split != "test":
            continue
        r = results["cases"].get(name, {}).get("methods", {})
        b = base.get(name, {}).get("methods", {})
        fbp, tv = b.get("fbp", {}).get("psnr"), b.get("tv_auto_I0", {}).get("psnr")
        ceil, tvo = b.get("svtv_ceiling", {}).get("psnr"), b.get("tv_oracle", {}).get("psnr")
        u, s, g, sf = r.get("unet"), r.get("svtv_learned"), r.get("graphla_net"), r.get("svtv_fbp")
        table[name] = {"group": group(spec), "fbp": fbp, "tv": tv, "ceiling": ceil, "tv_oracle": tvo,
                       "unet": u, "svtv": s, "graphla": g, "input": input_psnr(b, model)}
        cell = lambda v, t=None: "–" if v is None else (f"{v:.2f}" + (f" ({t:.0f} s)" if t is not None else ""))  # noqa: E731
        rows.append([name, group(spec), cell(fbp), cell(tv, b.get("tv_auto_I0", {}).get("time")), cell(ceil),
                     "–" if u is None else f"{u['psnr']:.2f} ({u['time']:.1f} s)",
                     "–" if u is None else (f"{u['guard_ratio']:.2f} / {u['guard_noise_ratio']:.2f} / "
                                            f"{u['guard_noise_ratio'] / u['guard_ratio']:.2f}"),
                     "–" if s is None else f"{s['psnr']:.2f} ({s['time']:.0f} s)",
                     "–" if sf is None else f"{sf['psnr']:.2f} ({sf['time']:.0f} s)",
                     "–" if g is None else f"{g['psnr']:.2f} ({g['time']:.0f} s)", rising_cell(r)])
    L += ["## Per case (PSNR dB, wall time)", "",
          "`unet`: the unet solver's output with the guard set to ignore; `guard ratios`: its data residual over "
          "its input solver's and over the expected misfit (noise + model error; TV lam auto leaves 0.97x it), "
          "then the input's own residual over the misfit. RISING: model `" + RISING_MODEL + "` (table below).", "",
          md_table(["case", "group", "FBP (Hann)", "TV lam auto", "SV-TV ceiling", "unet (raw)",
                    "residual: unet/input, unet/misfit, input/misfit", "SV-TV learned lam auto",
                    "SV-TV FBP pre-estimate lam auto", "graphLa+Net", "RISING"], rows, "llrrrrrrrrl"), ""]
    # guard rules
    have = {n: t for n, t in table.items() if t["unet"] is not None and t["input"] is not None}
    rule_rows = []
    chosen = None
    for label, fl, nl in RULES:
        for fb in ("fbp", "tv"):
            vals = {n: guarded(t["unet"], t["input"], t["tv"], fl, nl, fb) for n, t in have.items()}
            worst = min((v[0] - have[n]["fbp"] for n, v in vals.items()), default=float("nan"))
            mean_u = _mean(v[0] for v in vals.values())
            mean_tv = _mean(t["tv"] for t in have.values())
            falls = sum(v[1] for v in vals.values())
            rule_rows.append([label, "input solver" if fb == "fbp" else "TV lam auto", f"{falls}/{len(vals)}",
                              f"{worst:+.2f}", f"{mean_u:.2f}", f"{mean_u - mean_tv:+.2f}"])
            if label.startswith("noise ratio <= 5") and fb == "fbp":
                chosen = (vals, worst, mean_u, mean_tv)
    if rule_rows:
        L += ["## Which guard rule keeps unet >= FBP (Hann)", "",
              "Every rule also falls back on a residual above 1.5x the input solver's or a non-finite output. "
              "`worst vs FBP`: min over cases of PSNR(guarded unet) - PSNR(FBP (Hann)); `vs TV`: mean guarded unet "
              "- mean TV lam auto. The unet solver's default is `noise_factor: 5` with fallback to its input "
              "solver (`" + model + "`: " + str((load_model_meta(model).get("input") or {}).get("name")) + ").", "",
              md_table(["rule", "fallback", "fell back", "worst vs FBP", "mean guarded unet", "vs TV lam auto"],
                       rule_rows, "llrrrr"), ""]
    # must-show checks
    checks = []
    try:
        checks += envelope_checks(model)
    except Exception as exc:  # model missing: say so
        checks.append(("envelope checks", False, f"could not load {model}: {exc}"))
    if chosen is not None:
        vals, worst, mean_u, mean_tv = chosen
        checks.append(("unet (default guard: input ratio <= 1.5, noise ratio <= 5, fallback: its input solver) "
                       "never below FBP (Hann)", worst >= 0,
                       f"worst {worst:+.2f} dB over {len(vals)} cases"))
        checks.append(("unet at or above TV lam auto on the mean", mean_u >= mean_tv,
                       f"{mean_u:.2f} vs {mean_tv:.2f} dB"))
    sv = {n: t for n, t in table.items() if t["svtv"] is not None and t["tv"] is not None}
    if sv:
        room = [n for n, t in sv.items() if t["ceiling"] is not None and t["tv_oracle"] is not None
                and t["ceiling"] - t["tv_oracle"] >= 1.0]
        gain = _mean(sv[n]["svtv"]["psnr"] - sv[n]["tv"] for n in room)
        checks.append(("SV-TV learned >= TV lam auto + 0.5 dB on the mean where ceiling - TV oracle >= 1 dB",
                       bool(room) and gain >= 0.5,
                       f"{len(room)} such case(s) ({', '.join(room) or 'none'}): mean gain {gain:+.2f} dB"))
        worst = min(t["svtv"]["psnr"] - t["tv"] for t in sv.values())
        checks.append(("SV-TV learned never more than 0.2 dB below TV lam auto", worst >= -0.2,
                       f"worst {worst:+.2f} dB over {len(sv)} cases"))
    gl = {n: t for n, t in table.items() if t["graphla"] is not None and t["unet"] is not None}
    if gl:
        mg, mu, mt = (_mean(t["graphla"]["psnr"] for t in gl.values()), _mean(t["unet"]["psnr"] for t in gl.values()),
                      _mean(t["tv"] for t in gl.values()))
        checks.append(("graphLa+Net >= Net and >= TV lam auto on the mean", mg >= mu and mg >= mt,
                       f"graphLa+Net {mg:.2f}, Net {mu:.2f}, TV lam auto {mt:.2f} dB over {len(gl)} cases"))
    rising_lines, rising_checks = rising_tables(results, specs, base)
    checks += rising_checks
    L += rising_lines
    L += design_table(results, specs, base)
    L += ["## Must-show checks", "", *[f"- **{'PASS' if ok else 'FAIL'}** {label}: {detail}"
                                      for label, ok, detail in checks], ""]
    for grp in ("held out", "seen"):
        names = [n for n, t in table.items() if t["group"] == grp and t["unet"] is not None]
        if not names:
            continue
        means = {k: _mean(table[n][k] for n in names) for k in ("fbp", "tv", "ceiling")}
        mu = _mean(table[n]["unet"]["psnr"] for n in names)
        ms = _mean(table[n]["svtv"]["psnr"] for n in names if table[n]["svtv"])
        mg = _mean(table[n]["graphla"]["psnr"] for n in names if table[n]["graphla"])
        L += [f"- mean over {grp} ({', '.join(names)}): FBP {means['fbp']:.2f}, TV lam auto {means['tv']:.2f}, "
              f"ceiling {means['ceiling']:.2f}, unet {mu:.2f}, SV-TV learned {ms:.2f}, graphLa+Net {mg:.2f} dB"]
    L.append("")
    (RESULTS / "learned.md").write_text("\n".join(L))


def rising_cell(r: dict) -> str:
    x = r.get(result_key("rising", RISING_MODEL))
    return "–" if x is None else f"{x['psnr']:.2f} ({x['cpu_ratio']:.1f}x faster)"


def rising_tables(results: dict, specs: dict, base: dict) -> tuple[list[str], list[tuple[str, bool, str]]]:
    """rising_table for RISING_MODEL and every other RISING model with results in learned.json."""
    models = sorted({k.split("@", 1)[1] for name, c in results["cases"].items() for k in c.get("methods", {})
                     if k.startswith("rising@") and name in specs and specs[name].split == "test"} - {RISING_MODEL})
    lines, checks = [], []
    for model in [RISING_MODEL, *models]:
        more, check = rising_table(results, specs, base, model)
        lines += more
        checks.append(check)
    return lines, checks


def rising_table(results: dict, specs: dict, base: dict, model: str = RISING_MODEL
                 ) -> tuple[list[str], tuple[str, bool, str]]:
    """Markdown lines of RISING against its converged solver (and TV lam auto), and the must-show check."""
    label = f"RISING (`{model}`) within 1 dB of its converged solver on real slices and >= 5x faster"
    rows, got = [], {}
    for name, spec in specs.items():
        x = results["cases"].get(name, {}).get("methods", {}).get(result_key("rising", model))
        if spec.split != "test" or x is None:
            continue
        tv = base.get(name, {}).get("methods", {}).get("tv_auto_I0", {}).get("psnr")
        c = x["converged"]
        real = spec.image.split(":")[0] in REAL_IMAGES
        got[name] = (x, c, tv, real)
        rows.append([name, group(spec) + ("" if real else ", phantom"), "–" if tv is None else f"{tv:.2f}",
                     f"{c['psnr']:.2f}", f"{x['x_k_psnr']:.2f}", f"{x['psnr']:.2f}", f"{x['psnr'] - c['psnr']:+.2f}",
                     f"{c['cpu']:.2f}", f"{x['cpu']:.2f}", f"{x['cpu_ratio']:.1f}", str(x.get("guard_decision"))])
    if not got:
        return [], (label, False, f"not measured: no results of `{model}` in learned.json")
    k = next(iter(got.values()))[0]["k"]
    it = next(iter(got.values()))[1]["iterations"]
    mean = lambda f: _mean(f(v) for v in got.values())  # noqa: E731
    rows.append([f"**mean ({len(got)} cases)**", "", f"**{mean(lambda v: v[2]):.2f}**",
                 f"**{mean(lambda v: v[1]['psnr']):.2f}**", f"**{mean(lambda v: v[0]['x_k_psnr']):.2f}**",
                 f"**{mean(lambda v: v[0]['psnr']):.2f}**", f"**{mean(lambda v: v[0]['psnr'] - v[1]['psnr']):+.2f}**",
                 "", "", "", ""])
    real = {n: v for n, v in got.items() if v[3]}
    worst = min((v[0]["psnr"] - v[1]["psnr"] for v in real.values()), default=float("nan"))
    slowest = min(v[0]["cpu_ratio"] for v in got.values())
    ok = bool(real) and worst >= -1.0 and slowest >= 5.0
    check = (label, ok, f"worst gap on {len(real)} real slices {worst:+.2f} dB, mean "
                        f"{_mean(v[0]['psnr'] - v[1]['psnr'] for v in real.values()):+.2f}; "
                        f"CPU time ratio converged / RISING {slowest:.1f}-"
                        f"{max(v[0]['cpu_ratio'] for v in got.values()):.1f}x")
    lines = [f"## RISING against its converged solver: `{model}` (PSNR dB, CPU s)", "",
             f"Model `{model}` (training config and command: docs/models.md): RISING = {k} iterations of sgp_tv "
             "from 0, then "
             f"the network; converged = sgp_tv {it} iterations, the same parameters (lam 'noise': 400 x noise std / "
             "pixel size). `x_k`: the k iterations alone. CPU time of one thread, converged and RISING run "
             "alternately twice, minimum kept (RISING includes its guard's residuals). "
             "`python benchmarks/learned.py --model " + model + " --methods rising`.", "",
             md_table(["case", "group", "TV lam auto", "sgp_tv converged", "x_k", "RISING", "RISING - converged",
                       "CPU converged", "CPU RISING", "ratio", "guard"], rows, "llrrrrrrrrl"), ""]
    return lines, check


def design_table(results: dict, specs: dict, base: dict) -> list[str]:
    """Markdown lines: per test case, PSNR of every design in DESIGNS that has results (unet alone, SV-TV
    with it as pre-estimate, graphLa+Net with it as Psi) next to FBP (Hann) and TV lam auto; means last."""
    designs = [m for m in DESIGNS if any(result_key("unet", m) in c.get("methods", {})
                                         for c in results["cases"].values())]
    if not designs:
        return []
    cols = [(m, meth) for meth in ("unet", "svtv_learned", "graphla_net") for m in designs]
    label = {"unet": "unet", "svtv_learned": "SV-TV learned", "graphla_net": "graphLa+Net"}
    headers = ["case", "group", "FBP (Hann)", "TV lam auto"] + [f"{label[meth]} ({DESIGNS[m]})" for m, meth in cols]
    rows, sums = [], {}
    for name, spec in specs.items():
        r = results["cases"].get(name, {}).get("methods", {})
        if spec.split != "test" or not all(result_key("unet", m) in r for m in designs):
            continue
        b = base.get(name, {}).get("methods", {})
        vals = [b.get("fbp", {}).get("psnr"), b.get("tv_auto_I0", {}).get("psnr")]
        vals += [r.get(result_key(meth, m), {}).get("psnr") for m, meth in cols]
        for i, v in enumerate(vals):
            sums.setdefault(i, []).append(v)
        rows.append([name, group(spec)] + ["–" if v is None else f"{v:.2f}" for v in vals])
    means = [_mean(sums[i]) if None not in sums[i] else None for i in range(len(sums))]
    rows.append([f"**mean ({len(rows)} cases)**", ""] + ["–" if v is None else f"**{v:.2f}**" for v in means])
    return ["## Designs: the network's input (PSNR dB)", "",
            "Each design is the same envelope U-Net (training/<model>.yaml) fed a different input solver; "
            "`unet` is the network's own output (guard ignored), SV-TV learned (lam auto) takes it as "
            "pre-estimate, graphLa+Net as Psi. Models: "
            + ", ".join(f"`{m}` ({DESIGNS[m]})" for m in designs) + ".", "",
            md_table(headers, rows, "ll" + "r" * (len(headers) - 2)), ""]


def suite_card(results: dict, model: str = MODEL) -> dict:
    """The measured suite results for the model card: per case PSNR of FBP, TV lam auto, unet (raw and the
    guard's decision under the solver's defaults), SV-TV learned and graphLa+Net, and the groups."""
    from recon_cli.solvers.learned_guard import IMPLAUSIBLE_FACTOR, NOISE_FACTOR

    base = load_json(SUITE_JSON)["cases"]
    rows = {}
    for spec in suite():
        r = results["cases"].get(spec.name, {}).get("methods", {})
        r = {meth: r[result_key(meth, model)] for meth in METHODS if result_key(meth, model) in r}
        u = r.get("unet")
        if spec.split != "test" or u is None:
            continue
        b = base.get(spec.name, {}).get("methods", {})
        fbp, tv = b["fbp"]["psnr"], b["tv_auto_I0"]["psnr"]
        fallback = (load_model_meta(model).get("input") or {}).get("name", "fbp")  # the guard's: the input solver
        psnr, fell = guarded(u, input_psnr(b, model), tv, IMPLAUSIBLE_FACTOR, NOISE_FACTOR, "fbp")
        rows[spec.name] = {"group": group(spec), "fbp_hann": round(fbp, 2), "tv_lam_auto": round(tv, 2),
                           "unet_raw": round(u["psnr"], 2), "unet_guarded": round(psnr, 2),
                           "guard": f"fallback ({'TV lam auto' if fallback == 'tv' else 'FBP'})" if fell else "accepted",
                           "svtv_learned_lam_auto": round(r["svtv_learned"]["psnr"], 2) if "svtv_learned" in r else None,
                           "graphla_net": round(r["graphla_net"]["psnr"], 2) if "graphla_net" in r else None}
    return {"benchmark": "benchmarks/results/learned.md (python benchmarks/learned.py)", "psnr_db": rows}


def write_card(model: str, card: dict) -> None:
    """Add ``card`` to the shipped model's metadata, in its .json and inside its .onnx (kept equal)."""
    from recon_cli.networks import resolve_model_path, update_metadata

    update_metadata(resolve_model_path(model), "card", card)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", help="case name prefixes (default: every test case)")
    ap.add_argument("--methods", nargs="*", choices=METHODS, help="methods (default: all)")
    ap.add_argument("--model", default=MODEL, help="the envelope model (name); another design than "
                    f"{MODEL} is stored as method@model and shown in the design table")
    ap.add_argument("--skip", nargs="*", default=[], help="case name prefixes to leave out (e.g. s04: 512^2)")
    ap.add_argument("--split", choices=("test", "tune"), default="test",
                    help="the suite's part: test (reported) or tune (where a rule such as a guard threshold is chosen)")
    ap.add_argument("--report", action="store_true", help="only rewrite learned.md from learned.json")
    ap.add_argument("--card", type=Path, help="JSON file of card entries (held-out images, CPU time, ...) to write "
                    "into the shipped model's metadata with the measured suite results")
    args = ap.parse_args(argv)
    command = "python benchmarks/learned.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = load_json(JSON_PATH)
    if not args.report:
        results["machine"] = machine_info()
        specs = [s for s in by_name(args.cases) if s.split == args.split
                 and not any(s.name.startswith(p) for p in args.skip)]
        for spec in sorted(specs, key=lambda c: c.n):
            case = load_case(spec)
            op = make_projector(case.geometry, case.grid, Device("cpu"))
            methods = results["cases"].setdefault(spec.name, {}).setdefault("methods", {})
            for method in args.methods or METHODS:
                log(f"{spec.name}: {method}")
                key = result_key(method, args.model)
                methods[key] = run_method(case, op, method, args.model)
                log(f"  {key}: {methods[key]['psnr']:.2f} dB ({methods[key]['time']:.1f} s)")
                JSON_PATH.write_text(json.dumps(results, indent=1))
            del op
    write_report(results, command, MODEL)
    if args.card:
        write_card(args.model, {**json.loads(args.card.read_text()), "suite": suite_card(results, args.model)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
