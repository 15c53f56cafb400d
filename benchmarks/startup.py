"""Command-line start-up and a small FBP run, before vs after, interleaved in one run (issue 17).

``before``: a source tree given with --before-src (e.g. ``git archive <commit> recon_cli pipelines``
unpacked there); ``after``: this checkout. Each command runs in a fresh process (``python -m
recon_cli``), alternating sides, ``--repeats`` times; the median wall time is reported with the
load average. FBP runs use a new, empty matrix cache each time (a new geometry). Also prints the
import-time breakdown (``-X importtime``) of the FBP run of this checkout.

    python benchmarks/startup.py --before-src /tmp/main_src [--repeats 5] [--out benchmarks/results/startup.md]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import speed  # noqa: E402  (fan_case, write_case, pipeline)


def _env(src: Path, cache: Path) -> dict:
    env = dict(os.environ, RECON_CACHE_DIR=str(cache), OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = str(src)
    return env


def wall(args: list[str], src: Path, cache: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the child) of one fresh ``recon ARGS`` process."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "recon_cli", *args], env=_env(src, cache), capture_output=True,
                          text=True, cwd=str(src))
    elapsed = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"recon {' '.join(args)} failed in {src}: {proc.stderr.strip()[-800:]}")
    return elapsed, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def import_breakdown(args: list[str], src: Path, cache: Path, top: int = 12) -> list[tuple[str, float]]:
    """(package, cumulative import ms) of the largest top-level imports of one run."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "recon_cli", *args], env=_env(src, cache),
                          capture_output=True, text=True, cwd=str(src))
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cum, name = line.split("|")
        if cum.strip().isdigit() and name.startswith(" ") and not name.startswith("  "):  # top level: one space
            rows.append((name.strip(), int(cum) / 1000))
    return sorted(rows, key=lambda r: -r[1])[:top]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before-src", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fbp-n", type=int, default=512)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    sides = {"before": args.before_src.resolve(), "after": REPO}
    rows, loads = [], ["%.2f / %.2f / %.2f" % os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        data = tmp / f"fbp{args.fbp_n}.h5"
        speed.write_case(data, args.fbp_n)
        small = tmp / "fbp128.h5"
        speed.write_case(small, 128)
        cases = [("`recon --version`", lambda side, k: ["--version"], False),
                 ("`recon solvers`", lambda side, k: ["solvers"], False),
                 ("`recon solvers`, empty cache (first call)", lambda side, k: ["solvers"], True),
                 ("`recon validate pipelines/fbp.yaml`", lambda side, k: ["validate", "pipelines/fbp.yaml"], False),
                 (f"FBP {args.fbp_n}^2, new geometry (empty cache), HDF5 + metrics",
                  lambda side, k: ["-q", "run", str(speed.pipeline(tmp, f"f{args.fbp_n}_{side}_{k}", data, "fbp", {})),
                                   "--overwrite"], True),
                 ("FBP 128^2 with PNG, HDF5 + metrics",
                  lambda side, k: ["-q", "run", str(speed.pipeline(tmp, f"f128_{side}_{k}", small, "fbp", {},
                                                                     formats=("hdf5", "png"))), "--overwrite"], True)]
        for label, make_args, fresh in cases:
            times = {side: [] for side in sides}
            cpus = {side: [] for side in sides}
            for k in range(args.repeats):
                for side, src in sides.items():
                    cache = tmp / (f"cache_{side}_{label[:12]}_{k}" if fresh else f"cache_{side}")
                    w, c = wall(make_args(side, k), src, cache)
                    times[side].append(w)
                    cpus[side].append(c)
            rows.append((label, statistics.median(times["before"]), statistics.median(times["after"]),
                         statistics.median(cpus["before"]), statistics.median(cpus["after"])))
            loads.append("%.2f / %.2f / %.2f" % os.getloadavg())
            print(f"{label}: before {rows[-1][1]:.3f} s, after {rows[-1][2]:.3f} s; CPU {rows[-1][3]:.3f} / "
                  f"{rows[-1][4]:.3f} s  (load {loads[-1]})", flush=True)
        breakdown = import_breakdown(["-q", "run", str(speed.pipeline(tmp, "fbp_imp", data, "fbp", {})), "--overwrite"],
                                     REPO, tmp / "cache_imp")
    version = {r[0]: r for r in rows}["`recon --version`"]
    lines = ["# Start-up and small FBP runs (issue 17)", "",
             f"`python benchmarks/startup.py --before-src <main tree>`; fresh processes, medians of {args.repeats}, "
             "sides interleaved. Load average (1/5/15 min) at the start and after each row: " + "; ".join(loads) + ".",
             " CPU: user + system seconds of the process (less sensitive to other jobs on the host than wall time).",
             "", "| command | before s | after s | after minus `--version` s | CPU before s | CPU after s |",
             "| --- | --: | --: | --: | --: | --: |"]
    lines += [f"| {label} | {b:.3f} | {a:.3f} | {a - version[2]:.3f} | {cb:.3f} | {ca:.3f} |"
              for label, b, a, cb, ca in rows]
    lines += ["", f"Largest top-level imports of the FBP {args.fbp_n}^2 run (after, `-X importtime`, cumulative ms):", "",
              "| module | ms |", "| --- | --: |"] + [f"| {name} | {ms:.0f} |" for name, ms in breakdown]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
