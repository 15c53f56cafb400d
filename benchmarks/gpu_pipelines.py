"""Every shipped pipeline on the CPU and on the GPU, side by side: same PSNR/SSIM, and the wall-time ratio.

Run by benchmarks/gpu_check.sh on a machine with a CUDA GPU; writes benchmarks/results/gpu_pipelines.md.
Each run is a fresh ``python -m recon_cli run PIPELINE --device D --json`` process (start-up and matrix
build included, as a user pays them); CPU and GPU runs alternate, pipeline by pipeline.

    python benchmarks/gpu_pipelines.py [--device gpu] [--quick] [--budget-s 150] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml"))
QUICK = ("fbp", "tv", "sgp_tv", "svtv", "graphla", "tikhonov")  # --quick: the model-based solvers only
PSNR_TOLERANCE_DB = 0.1  # a GPU run whose PSNR differs by more is flagged


def run_once(pipeline: Path, device: str, workdir: Path, timeout_s: float) -> dict:
    """One ``recon run``: its metrics, wall time and exit status."""
    out = workdir / f"{pipeline.stem}_{device}.h5"
    cmd = [sys.executable, "-m", "recon_cli", "run", str(pipeline), "--device", device, "--json", "--overwrite",
           "-o", str(out)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out ({timeout_s:.0f} s)", "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        return {"status": f"exit {proc.returncode}: {last[:160]}", "wall_s": wall}
    try:
        metrics = json.loads(proc.stdout)["metrics"]
    except (ValueError, KeyError) as exc:
        return {"status": f"no JSON ({exc})", "wall_s": wall}
    return {"status": "ok", "wall_s": wall, "psnr": metrics.get("psnr"), "ssim": metrics.get("ssim"),
            "solve_s": metrics.get("wall_time")}


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="gpu", choices=["gpu"], help="the device compared with the CPU")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--budget-s", type=float, default=150.0, help="stop starting new pipelines after this")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu_pipelines.md")
    args = ap.parse_args(argv)

    pipelines = [p for p in PIPELINES if not args.quick or p.stem in QUICK]
    t_start = time.perf_counter()
    rows, failed = [], False
    with tempfile.TemporaryDirectory(prefix="recon-gpu-pipelines-") as tmp:
        for pipeline in pipelines:
            left = args.budget_s - (time.perf_counter() - t_start)
            if left < 10:
                rows.append(f"| {pipeline.stem} | | | | | | | | | not run (budget) |")
                continue
            cpu = run_once(pipeline, "cpu", Path(tmp), timeout_s=max(10.0, left / 2))
            gpu = run_once(pipeline, args.device, Path(tmp), timeout_s=max(10.0, left / 2))
            note = []
            if cpu["status"] != "ok":
                note.append(f"cpu {cpu['status']}")
            if gpu["status"] != "ok":
                note.append(f"gpu {gpu['status']}")
                failed = True
            dpsnr = None
            if cpu.get("psnr") is not None and gpu.get("psnr") is not None:
                dpsnr = gpu["psnr"] - cpu["psnr"]
                if abs(dpsnr) > PSNR_TOLERANCE_DB:
                    note.append(f"PSNR differs by more than {PSNR_TOLERANCE_DB} dB")
                    failed = True
            ratio = cpu["wall_s"] / gpu["wall_s"] if cpu["status"] == gpu["status"] == "ok" else None
            rows.append(f"| {pipeline.stem} | {fmt(cpu.get('psnr'), '.2f')} | {fmt(gpu.get('psnr'), '.2f')} | "
                        f"{fmt(dpsnr, '+.3f')} | {cpu['wall_s']:.2f} | {gpu['wall_s']:.2f} | {fmt(ratio, '.2f')} | "
                        f"{fmt(cpu.get('solve_s'), '.3f')} | {fmt(gpu.get('solve_s'), '.3f')} | "
                        f"{'; '.join(note) or 'ok'} |")
            print(rows[-1], flush=True)
    text = "\n".join([
        "# Shipped pipelines, CPU vs GPU",
        "",
        f"`benchmarks/gpu_pipelines.py{' --quick' if args.quick else ''}` on {os.uname().nodename}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPU cores. Each run is a fresh "
        "`recon run --json` process (start-up and matrix build included); CPU and GPU alternate. "
        "Speed-up = CPU wall / GPU wall; solve s = the solver alone (the run's `wall_time` metric).",
        "",
        "| pipeline | CPU PSNR | GPU PSNR | GPU - CPU dB | CPU s | GPU s | speed-up | CPU solve s | GPU solve s | note |",
        "| --- | --: | --: | --: | --: | --: | --: | --: | --: | --- |",
        *rows, ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
