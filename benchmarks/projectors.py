"""Forward + adjoint time of ASTRA's direct CPU projector against the cached-matrix projector.

Fan beam (the reference geometry: 595 mm source-origin, 490 mm origin-detector, a
256 mm field of view) sampled on 256x256 (1 mm, 512 detector bins of 1.2 mm) and
512x512 (0.5 mm, 1024 bins of 0.6 mm) grids, 60 and 180 views, stacks of 1 and 16
slices. Every configuration times the direct projector, the matrix projector on one
thread and on all cores, interleaved, ``--repeats`` times; the table reports medians.

The memory-bandwidth bound of a matrix forward + adjoint is the bytes it must read
(data, indices and indptr of the matrix and of its transpose) plus the vectors it
reads and writes, divided by the read bandwidth measured in the same run (sum of a
large float32 array on every core).

Usage::

    python benchmarks/projectors.py            # full run (about 5-10 minutes on 2 cores)
    python benchmarks/projectors.py --quick    # smoke run (seconds), written to *_quick.md
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recon_cli.geometry import VolumeGrid, fan_beam_geometry
from recon_cli.projectors.astra_cpu import AstraCPUProjector
from recon_cli.projectors.astra_matrix import AstraMatrixProjector, _pool, default_threads

RESULTS = Path(__file__).resolve().parent / "results"


def fan_case(n: int, n_views: int):
    """The reference fan geometry sampled for an n x n grid over the same 256 mm field."""
    voxel = 256.0 / n
    geometry = fan_beam_geometry(n_angles=n_views, detector_count=2 * n, detector_spacing=1.2 * voxel)
    return geometry, VolumeGrid((n, n), voxel)


def read_bandwidth(threads: int, n_bytes: int, repeats: int = 5) -> float:
    """Read bandwidth in bytes/s: sum of a large float32 array split over ``threads`` workers."""
    a = np.ones(n_bytes // 4, np.float32)
    parts = np.array_split(a, threads)
    pool = _pool(threads)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if threads == 1:
            a.sum()
        else:
            list(pool.map(np.sum, parts))
        times.append(time.perf_counter() - t0)
    return a.nbytes / min(times)


def fwd_adj_seconds(op, x) -> float:
    t0 = time.perf_counter()
    op.adjoint(op.forward(x))
    return time.perf_counter() - t0


def matrix_bytes(op: AstraMatrixProjector, n_slices: int) -> int:
    """Bytes one forward + adjoint must move: the stored matrix twice (once per product), and the
    transformed image / sinogram copies (one column per symmetry transform) read once and written once."""
    n_t = len(op.symmetry.transforms)
    vectors = 4 * n_slices * n_t * (op.stored.shape[0] + op.stored.shape[1])
    return 2 * op.nbytes + 2 * vectors


def run_case(n, n_views, stacks, repeats, threads, bandwidth, log):
    geometry, slice_grid = fan_case(n, n_views)
    t0 = time.perf_counter()
    AstraMatrixProjector(geometry, slice_grid)  # first build: the stored views' matrix, saved to the cache
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    AstraMatrixProjector(geometry, slice_grid)  # from the cache (memory-mapped, checksum verified)
    load_s = time.perf_counter() - t0
    rows = []
    for nz in stacks:
        grid = slice_grid if nz == 1 else VolumeGrid((nz, n, n), slice_grid.voxel_size)
        direct = AstraCPUProjector(geometry, grid)
        matrix_n = AstraMatrixProjector(geometry, grid, threads=threads)
        matrix_1 = matrix_n.with_threads(1)
        x = np.random.default_rng(0).random(grid.shape, dtype=np.float32)
        err = float(np.linalg.norm(matrix_n.forward(x) - direct.forward(x)) / np.linalg.norm(direct.forward(x)))
        assert err < 1e-4, f"matrix and direct projectors disagree ({err:.2e})"
        ops = {"direct": direct, "matrix_1": matrix_1, "matrix_n": matrix_n}
        times = {k: [] for k in ops}
        for r in range(repeats):
            order = list(ops)[r % 3:] + list(ops)[:r % 3]  # interleaved, rotating order
            for k in order:
                times[k].append(fwd_adj_seconds(ops[k], x))
        med = {k: statistics.median(v) for k, v in times.items()}
        best_matrix = min(med["matrix_1"], med["matrix_n"])
        bound = matrix_bytes(matrix_n, nz) / bandwidth
        row = dict(n=n, views=n_views, slices=nz, direct=med["direct"], matrix_1=med["matrix_1"],
                   matrix_n=med["matrix_n"], ratio=med["direct"] / best_matrix,
                   thread_speedup=med["matrix_1"] / med["matrix_n"], build=build_s, load=load_s,
                   mb=matrix_n.nbytes / 1e6, moved_mb=matrix_bytes(matrix_n, nz) / 1e6,
                   bound=bound, fraction=bound / best_matrix, nnz=matrix_n.stored.nnz)
        log(f"{n}x{n} {n_views:3d} views {nz:2d} slices: direct {row['direct']:.3f} s, matrix 1 thread "
            f"{row['matrix_1']:.3f} s, {threads} threads {row['matrix_n']:.3f} s, ratio {row['ratio']:.1f}, "
            f"bound {bound * 1e3:.1f} ms ({row['fraction']:.0%})")
        rows.append(row)
        del direct, matrix_n, matrix_1
    return rows


def machine_info() -> dict:
    import astra
    import scipy

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": default_threads(), "python": platform.python_version(),
            "numpy": np.__version__, "scipy": scipy.__version__, "astra": astra.__version__,
            "date": dt.datetime.now().isoformat(timespec="seconds")}


def write_markdown(path: Path, rows, info, bw1, bwn, bw_mb, threads, command, load_before, load_after, wall):
    lines = [
        "# Projector benchmark: ASTRA direct CPU vs cached CSR matrix",
        "",
        "Forward + adjoint of one operator application (a slice or a stack of slices), fan beam,",
        "ASTRA `line_fanflat`, float32. Median of the interleaved repeats; times in seconds.",
        "`ratio` = direct / best matrix time. `bound` = bytes moved / measured read bandwidth;",
        "`of bound` = bound / best matrix time (1.0 would be bandwidth-limited).",
        "",
        "| grid | views | slices | direct | matrix 1 thread | matrix " f"{threads} threads | ratio "
        "| thread speed-up | build | load | stored matrix MB | moved MB | bound | of bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']}x{r['n']} | {r['views']} | {r['slices']} | {r['direct']:.3f} | {r['matrix_1']:.4f} "
            f"| {r['matrix_n']:.4f} | {r['ratio']:.1f} | {r['thread_speedup']:.2f} | {r['build']:.1f} "
            f"| {r['load']:.2f} | {r['mb']:.0f} | {r['moved_mb']:.0f} | {r['bound'] * 1e3:.1f} ms "
            f"| {r['fraction']:.2f} |")
    lines += [
        "",
        "## Machine and run",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores available to the process",
        f"- Read bandwidth (sum of a {bw_mb} MB float32 array): {bw1 / 1e9:.1f} GB/s on 1 thread, "
        f"{bwn / 1e9:.1f} GB/s on {threads}",
        f"- Python {info['python']}, numpy {info['numpy']}, scipy {info['scipy']}, astra {info['astra']}",
        f"- Date: {info['date']}; total wall time {wall:.0f} s",
        f"- Load average (1 min) before / after: {load_before:.2f} / {load_after:.2f} "
        "(other jobs on the machine slow every column alike, interleaving keeps the comparison fair)",
        f"- Command: `{command}`",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (64/128 grids, few views)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats per case (default 3, quick 3)")
    parser.add_argument("--threads", type=int, default=None, help="threads of the threaded matrix projector")
    parser.add_argument("--out", type=Path, default=None, help="Markdown output file")
    args = parser.parse_args(argv)

    threads = args.threads or default_threads()
    repeats = max(3, args.repeats or 3)
    if args.quick:
        grids, views, stacks, bw_bytes = (64, 128), (30,), (1, 4), 128 * 2**20
        out = args.out or RESULTS / "projectors_quick.md"
    else:
        grids, views, stacks, bw_bytes = (256, 512), (60, 180), (1, 16), 512 * 2**20
        out = args.out or RESULTS / "projectors.md"
    cli_args = sys.argv[1:] if argv is None else list(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *cli_args])

    def log(msg):
        print(msg, flush=True)

    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    bw1, bwn = read_bandwidth(1, bw_bytes), read_bandwidth(threads, bw_bytes)
    log(f"read bandwidth: {bw1 / 1e9:.1f} GB/s (1 thread), {bwn / 1e9:.1f} GB/s ({threads} threads)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="recon-bench-cache-") as cache:
        os.environ["RECON_CACHE_DIR"] = cache  # a fresh cache: the first construction is a real build
        for n in grids:
            for v in views:
                rows += run_case(n, v, stacks, repeats, threads, max(bw1, bwn), log)
    wall = time.perf_counter() - t_start
    write_markdown(out, rows, machine_info(), bw1, bwn, bw_bytes // 2**20, threads, command,
                   load_before, os.getloadavg()[0], wall)
    log(f"wrote {out} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
