"""Command-line start-up and small FBP runs, before vs after, interleaved in one run, with the floor (issue 17).

``before``: a source tree given with --before-src (e.g. /work/main, or ``git archive <commit> recon_cli
pipelines`` unpacked there); ``after``: this checkout. Each command runs in a fresh process (``python -m
recon_cli``), alternating sides, ``--repeats`` times; the median wall time and CPU time are reported with
the load average. FBP runs use a new, empty matrix cache each time (a new geometry).

Byte code: every process reads compiled byte code from one cache folder (PYTHONPYCACHEPREFIX in the
temporary folder, filled by a warm-up run of each command on each side), as an installed package
would; PYTHONDONTWRITEBYTECODE, if set in the calling shell, is dropped, because with it every run
compiles recon_cli's modules from source again (both sides alike, but not what a user pays).

The floor: fresh processes that do only what any Python tool doing the same FBP pays, without recon_cli:
``import numpy, astra, h5py``; then also read the HDF5 sinogram and run ASTRA's CPU FBP (ASTRA's CPU FBP
is parallel-beam only: the same sinogram array on a parallel geometry of the same size; our data are
fan-beam); then also the residual's forward projection (ASTRA line_fanflat, the projector recon's
residual metric uses). Also prints the import-time breakdown (``-X importtime``) of the FBP run of this
checkout.

    python benchmarks/startup.py --before-src /work/main [--repeats 5] [--out benchmarks/results/startup.md]
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

#: Text from this line on in --out is kept when the tables above it are written again.
NOTES = "<!-- notes written by hand; kept by benchmarks/startup.py -->"

#: The floor process (no recon_cli): argv[1] the HDF5 case, then the steps to run ("fbp", "residual").
FLOOR = '''
import sys
import h5py, numpy as np, astra
steps = sys.argv[2:]
if steps:
    with h5py.File(sys.argv[1], "r") as f:
        sino = f["sinogram"][()].astype(np.float32)
        g = dict(f["geometry"].attrs)
        angles = f["geometry/angles"][()]
        ny, nx = (int(v) for v in f["volume"].attrs["shape"])
        voxel = float(f["volume"].attrs["voxel_size"])
    vol = astra.create_vol_geom(ny, nx, -nx * voxel / 2, nx * voxel / 2, -ny * voxel / 2, ny * voxel / 2)
    par = astra.create_proj_geom("parallel", float(g["detector_spacing"]), int(g["detector_count"]), angles)
    pid = astra.create_projector("linear", par, vol)
    sid = astra.data2d.create("-sino", par, sino)
    rid = astra.data2d.create("-vol", vol, 0.0)
    cfg = astra.astra_dict("FBP")
    cfg.update(ProjectorId=pid, ProjectionDataId=sid, ReconstructionDataId=rid)
    alg = astra.algorithm.create(cfg)
    astra.algorithm.run(alg)
    image = astra.data2d.get(rid)
    if "residual" in steps:
        fan = astra.create_proj_geom("fanflat", float(g["detector_spacing"]), int(g["detector_count"]), angles,
                                     float(g["source_origin"]), float(g["origin_detector"]))
        fid = astra.create_projector("line_fanflat", fan, vol)
        _, fp = astra.create_sino(image, fid)
        print(float(np.linalg.norm(fp - sino) / np.linalg.norm(sino)))
'''


def _env(src: Path | None, cache: Path, pycache: Path) -> dict:
    env = dict(os.environ, RECON_CACHE_DIR=str(cache), OPENBLAS_NUM_THREADS="1", PYTHONPYCACHEPREFIX=str(pycache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    else:
        env.pop("PYTHONPATH", None)
    return env


def timed(cmd: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the child) of one fresh process."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(cwd))
    elapsed = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}: {proc.stderr.strip()[-800:]}")
    return elapsed, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def import_breakdown(args: list[str], env: dict, cwd: Path, top: int = 12) -> list[tuple[str, float]]:
    """(package, cumulative import ms) of the largest top-level imports of one run."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "recon_cli", *args], env=env,
                          capture_output=True, text=True, cwd=str(cwd))
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
        pycache = tmp / "pycache"
        data = tmp / f"fbp{args.fbp_n}.h5"
        speed.write_case(data, args.fbp_n)
        small = tmp / "fbp128.h5"
        speed.write_case(small, 128)
        floor_py = tmp / "floor.py"
        floor_py.write_text(FLOOR)

        def recon(make_args):
            return lambda side, k: [sys.executable, "-m", "recon_cli", *make_args(side, k)]

        def floor(*steps, path=data):
            return lambda side, k: [sys.executable, str(floor_py), str(path), *steps]

        big, n = f"FBP {args.fbp_n}^2", args.fbp_n
        # (label, command maker, fresh cache per run, sides: both, or the floor's one)
        cases = [("`recon --version`", recon(lambda side, k: ["--version"]), False, True),
                 ("`recon solvers`", recon(lambda side, k: ["solvers"]), False, True),
                 ("`recon solvers`, empty cache (first call)", recon(lambda side, k: ["solvers"]), True, True),
                 ("`recon validate pipelines/fbp.yaml`",
                  recon(lambda side, k: ["validate", "pipelines/fbp.yaml"]), False, True),
                 ("`recon validate pipelines/svtv.yaml`",
                  recon(lambda side, k: ["validate", "pipelines/svtv.yaml"]), False, True),
                 (f"{big}, new geometry (empty cache), HDF5 + metrics",
                  recon(lambda side, k: ["-q", "run", str(speed.pipeline(tmp, f"f{n}_{side}_{k}", data, "fbp", {})),
                                         "--overwrite"]), True, True),
                 ("FBP 128^2 with PNG, HDF5 + metrics",
                  recon(lambda side, k: ["-q", "run", str(speed.pipeline(tmp, f"f128_{side}_{k}", small, "fbp", {},
                                                                         formats=("hdf5", "png"))), "--overwrite"]),
                  True, True),
                 ("floor: `python -c pass`", lambda side, k: [sys.executable, "-c", "pass"], False, False),
                 ("floor: `import numpy, astra, h5py`", floor(), False, False),
                 (f"floor: imports + read + ASTRA FBP, {big}", floor("fbp"), False, False),
                 (f"floor: imports + read + ASTRA FBP + residual projection, {big}", floor("fbp", "residual"),
                  False, False),
                 ("floor: imports + read + ASTRA FBP + residual projection, 128^2",
                  floor("fbp", "residual", path=small), False, False)]
        for label, make_cmd, fresh, both in cases:
            run_sides = sides if both else {"floor": None}
            for side, src in run_sides.items():  # warm-up: fills the byte-code cache, not timed
                timed(make_cmd(side, "warm"), _env(src, tmp / f"cache_warm_{side}_{label[:12]}", pycache),
                      src or REPO)
            times = {side: [] for side in run_sides}
            cpus = {side: [] for side in run_sides}
            for k in range(args.repeats):
                for side, src in run_sides.items():
                    cache = tmp / (f"cache_{side}_{label[:12]}_{k}" if fresh else f"cache_{side}")
                    w, c = timed(make_cmd(side, k), _env(src, cache, pycache), src or REPO)
                    times[side].append(w)
                    cpus[side].append(c)
            med = {side: (statistics.median(times[side]), statistics.median(cpus[side])) for side in run_sides}
            before = med.get("before", (None, None))
            after = med.get("after", med.get("floor"))
            rows.append((label, before[0], after[0], before[1], after[1]))
            loads.append("%.2f / %.2f / %.2f" % os.getloadavg())
            print(f"{label}: before {before[0]}, after {after[0]:.3f} s; CPU {before[1]} / {after[1]:.3f} s  "
                  f"(load {loads[-1]})", flush=True)
        breakdown = import_breakdown(["-q", "run", str(speed.pipeline(tmp, "fbp_imp", data, "fbp", {})), "--overwrite"],
                                     _env(REPO, tmp / "cache_imp", pycache), REPO)
    by_label = {r[0]: r for r in rows}
    version = by_label["`recon --version`"]

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    lines = ["# Start-up and small FBP runs (issue 17)", "",
             f"`python benchmarks/startup.py --before-src <main tree> --repeats {args.repeats}`; fresh processes, "
             f"medians of {args.repeats}, sides interleaved, byte code compiled once (see the script's docstring). "
             "Load average (1/5/15 min) at the start and after each row: " + "; ".join(loads) + ".",
             "CPU: user + system seconds of the process (less sensitive to other jobs on the host than wall time). "
             "Floor rows: no recon_cli, one column.",
             "", "| command | before s | after s | after minus `--version` s | CPU before s | CPU after s |",
             "| --- | --: | --: | --: | --: | --: |"]
    lines += [f"| {label} | {fmt(b)} | {fmt(a)} | {fmt(a - version[2])} | {fmt(cb)} | {fmt(ca)} |"
              for label, b, a, cb, ca in rows]
    fbp_big = by_label[f"{big}, new geometry (empty cache), HDF5 + metrics"]
    fbp_small = by_label["FBP 128^2 with PNG, HDF5 + metrics"]
    floor_big = by_label[f"floor: imports + read + ASTRA FBP + residual projection, {big}"]
    floor_small = by_label["floor: imports + read + ASTRA FBP + residual projection, 128^2"]
    floor_imports = by_label["floor: `import numpy, astra, h5py`"]
    lines += ["", "Side by side (wall, after):", "",
              f"- {big} on a new geometry: {fbp_big[2]:.3f} s = `recon --version` ({version[2]:.3f} s) + "
              f"{fbp_big[2] - version[2]:.3f} s; the floor with the residual projection {floor_big[2]:.3f} s "
              f"(its imports alone {floor_imports[2]:.3f} s); recon minus floor {fbp_big[2] - floor_big[2]:.3f} s.",
              f"- FBP 128^2 with PNG: before {fbp_small[1]:.3f} s, after {fbp_small[2]:.3f} s "
              f"(after / before {fbp_small[2] / fbp_small[1]:.2f}; CPU {fbp_small[3]:.3f} -> {fbp_small[4]:.3f} s); "
              f"floor {floor_small[2]:.3f} s, recon minus floor: before {fbp_small[1] - floor_small[2]:.3f} s, "
              f"after {fbp_small[2] - floor_small[2]:.3f} s."]
    lines += ["", f"Largest top-level imports of the {big} run (after, `-X importtime`, cumulative ms):", "",
              "| module | ms |", "| --- | --: |"] + [f"| {name} | {ms:.0f} |" for name, ms in breakdown]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        old = args.out.read_text() if args.out.is_file() else ""
        if NOTES in old:  # the notes written by hand below the tables are kept
            text += "\n" + old[old.index(NOTES):]
        args.out.write_text(text)


if __name__ == "__main__":
    main()
