"""Throughput of a slice stack on 1 and 2 workers, and the Dask executor's overhead against local processes.

    .venv/bin/python benchmarks/scaling.py            # -> benchmarks/results/scaling.md (a few minutes)
    .venv/bin/python benchmarks/scaling.py --quick    # smoke run -> benchmarks/results/scaling_quick.md
    .venv/bin/python benchmarks/scaling.py --device gpu --out benchmarks/results/scaling_gpu.md  # (gpu_check.sh)

The same work (SIRT on a stack of parallel-beam Shepp-Logan slices, matrix projector, outputs written)
runs with each executor, interleaved in a rotating order and repeated; the best wall time of each is
reported (the machine is shared: the best run is the least disturbed). Wall time is the whole
run_pipeline call: read, plan, staging the sinogram, starting the workers (or the cluster), solving,
assembling and writing. ``dask (running cluster)`` sends the units to a LocalCluster started once
beforehand, so its time leaves out the cluster start: the per-run overhead of Dask itself.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine_info, md_kv, md_table  # noqa: E402


def make_stack(path: Path, n_slices: int, size: int, views: int) -> None:
    from recon_cli.geometry import VolumeGrid, parallel_beam_geometry
    from recon_cli.io.hdf5 import write_sinogram
    from recon_cli.phantoms import shepp_logan
    from recon_cli.simulate import simulate_sinogram

    images = np.stack([shepp_logan(size) * (0.8 + 0.4 * k / n_slices) for k in range(n_slices)]).astype(np.float32)
    geometry = parallel_beam_geometry(views, int(1.5 * size), 1.0)
    write_sinogram(path, simulate_sinogram(images, 1.0, geometry, VolumeGrid((n_slices, size, size), 1.0),
                                           I0=1e5, seed=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small stack, 1 repeat")
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                    help="gpu: every worker uses the GPU (projector kind auto: ASTRA CUDA)")
    ap.add_argument("--executors", default="local1,local2,dasklocal1,dasklocal2,dask2",
                    help="comma list of: local1, local2, dasklocal1, dasklocal2, dask2")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.slices, args.size, args.iterations, args.repeats = 8, 64, 5, 1
    if args.device == "gpu":
        from recon_cli.backend import gpu_status

        ok, why = gpu_status()
        if not ok:
            sys.exit(f"--device gpu: no usable GPU ({why})")
    out = args.out or REPO / "benchmarks" / "results" / ("scaling_quick.md" if args.quick else "scaling.md")
    os.environ.setdefault("RECON_CACHE_DIR", tempfile.mkdtemp(prefix="recon-bench-cache-"))

    import dask
    import distributed

    from recon_cli.config import config_from_dict
    from recon_cli.executors import ExecutorSpec
    from recon_cli.runner import run_pipeline

    work = Path(tempfile.mkdtemp(prefix="recon-scaling-"))
    data = work / "stack.h5"
    make_stack(data, args.slices, args.size, views=max(30, args.size // 2 + 26))
    cores = len(os.sched_getaffinity(0))

    def cfg(name: str):
        return config_from_dict({"name": "scaling", "input": {"path": str(data)}, "device": args.device,
                                 "projector": {"kind": "matrix" if args.device == "cpu" else "auto"},
                                 "solver": {"name": "sirt", "params": {"iterations": args.iterations}},
                                 "output": {"path": str(work / f"{name}.h5")}, "checkpoint": {"every": 0}})

    with dask.config.set({"distributed.scheduler.allowed-failures": 2}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=":0", env={"RECON_NUM_THREADS": str(max(1, cores // 2))},
                                           silence_logs=40)
    all_runs = {
        "local1": ("local, 1 worker (this process)", None),
        "local2": ("local, 2 worker processes", ExecutorSpec("local", workers=2)),
        "dasklocal1": ("dask-local, 1 worker", ExecutorSpec("dask-local", workers=1)),
        "dasklocal2": ("dask-local, 2 workers", ExecutorSpec("dask-local", workers=2)),
        "dask2": ("dask, 2 workers (running cluster)", ExecutorSpec("dask", scheduler=cluster.scheduler_address)),
    }
    wanted = [k.strip() for k in args.executors.split(",") if k.strip()]
    unknown = sorted(set(wanted) - set(all_runs))
    if unknown or "local1" not in wanted or "local2" not in wanted:
        ap.error(f"--executors: unknown {unknown}" if unknown else "--executors must include local1 and local2")
    runs = dict(all_runs[k] for k in all_runs if k in wanted)
    run_pipeline(cfg("warmup"), progress=False, overwrite=True)  # matrix into the disk cache
    times: dict[str, list[float]] = {k: [] for k in runs}
    units: dict[str, int] = {}
    diff: dict[str, float] = {}
    reference = None
    load = [os.getloadavg()[0]]
    names = list(runs)
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            spec = runs[name]
            t0 = time.perf_counter()
            result = run_pipeline(cfg("out"), progress=False, overwrite=True, executor=spec,
                                  jobs=spec.n_workers if spec is not None and spec.kind != "dask" else 1)
            times[name].append(time.perf_counter() - t0)
            units[name] = int(result.info.get("units", 1))
            if reference is None:
                reference = result.volume
            diff[name] = max(diff.get(name, 0.0), float(np.max(np.abs(result.volume - reference))))
            if args.device == "cpu":  # the GPU's atomic additions need not be bit-exact
                assert diff[name] == 0.0, f"{name}: a different volume"
            print(f"[{rep + 1}/{args.repeats}] {name}: {times[name][-1]:.2f} s", flush=True)
    load.append(os.getloadavg()[0])
    cluster.close()

    best = {k: min(v) for k, v in times.items()}
    base_1, base_2 = best["local, 1 worker (this process)"], best["local, 2 worker processes"]
    rows = []
    for name in names:
        rows.append([name, units[name], f"{best[name]:.2f}", f"{np.median(times[name]):.2f}",
                     f"{args.slices / best[name]:.2f}", f"{base_1 / best[name]:.2f}",
                     f"{best[name] - base_2:+.2f}" if "2" in name and name != "local, 2 worker processes" else "",
                     f"{diff[name]:.3g}"])
    headers = ["executor", "units", "best wall s", "median wall s", "slices/s (best)", "speed-up vs 1 local",
               "overhead vs local 2 (s)", "max abs diff vs first run"]
    info = machine_info(packages=("recon-cli", "numpy", "scipy", "astra-toolbox", "dask", "distributed"))
    info["load average (1 min) before / after"] = f"{load[0]:.1f} / {load[1]:.1f}"
    text = [
        "# Scaling: slice stacks on local processes and on Dask",
        "",
        f"Work ({args.device}): SIRT, {args.iterations} iterations, on {args.slices} parallel-beam slices of "
        f"{args.size}x{args.size} "
        f"({'matrix projector from the disk cache' if args.device == 'cpu' else 'ASTRA CUDA projector'}, "
        f"outputs written), the same volume from every executor "
        f"(checked bit for bit). {args.repeats} interleaved repeats; best and median wall time of the whole run. "
        f"Worker threads: cores / workers ({cores} cores).",
        "",
        md_table(headers, rows),
        "",
        "Notes: the machine is shared with other jobs (see the load average), so absolute times are noisy; the "
        "executors were measured side by side in one run. 'local, 2 worker processes' and 'dask-local' include "
        "starting the worker processes (spawn, importing recon_cli); 'dask (running cluster)' leaves out the "
        "cluster start, which is the per-run overhead of Dask itself. Overhead = best wall time minus that of "
        "'local, 2 worker processes'.",
        "",
        "## Machine",
        "",
        md_kv(info),
        "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        "",
    ]
    out.write_text("\n".join(text))
    print(out.read_text())


if __name__ == "__main__":
    main()
