"""Compiled symmetric products (issue 17, fourth round): bytes, time vs the bandwidth bound, tv vs ODL.

Side by side in one process, interleaved repeats, medians (wall and this thread's CPU time):

* ``full``: the design before issue 17 (full A and A^T as two float32/int32 CSRs, SciPy products);
* ``sym scipy``: the symmetry-compressed projector with SciPy's kernels (int32 indices; the
  transformed image copies made by numpy), i.e. main before this round;
* ``sym numba``: the same stored matrix with uint16 indices through the compiled kernels
  (recon_cli.projectors.symmetric_kernels).

Then ``tv`` per iteration against ODL 1.0's ``pdhg`` with its ASTRA CPU ray transform (60 fan views,
benchmarks/solvers.py's comparison: our tv with lam fixed, our PDHG core with ODL's fixed steps,
ODL with the same steps; objectives evaluated with our operator), once per kernel.

    nice -n 10 .venv/bin/python benchmarks/speed_kernels.py [--sizes 256 512 1024] [--odl-sizes 256 512]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, log, machine_info, md_kv, md_table  # noqa: E402
from speed import BeforeOperator, csr_bytes, fan_case, load, read_bandwidth  # noqa: E402

from recon_cli.projectors.astra_matrix import AstraMatrixProjector  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def matrix_bytes(op) -> int:
    if isinstance(op, BeforeOperator):
        return csr_bytes(op.a)  # one of its two CSRs per product
    return op.nbytes


def products(sizes, repeats: int, bandwidth: float) -> list[dict]:
    rows = []
    for n in sizes:
        geometry, grid = fan_case(n)
        ops = {"sym numba": AstraMatrixProjector(geometry, grid, threads=1, kernel="numba"),
               "sym scipy": AstraMatrixProjector(geometry, grid, threads=1, kernel="scipy")}
        assert ops["sym numba"].kernel == "numba" and ops["sym scipy"].kernel == "scipy"
        ops["full"] = BeforeOperator(ops["sym scipy"])
        x = np.random.default_rng(0).random(grid.shape, dtype=np.float32)
        y = ops["full"].forward(x)
        ref_f, ref_a = y, ops["full"].adjoint(y)
        err = {k: (float(np.linalg.norm(o.forward(x) - ref_f) / np.linalg.norm(ref_f)),
                   float(np.linalg.norm(o.adjoint(y) - ref_a) / np.linalg.norm(ref_a))) for k, o in ops.items()}
        same = bool(np.array_equal(ops["sym numba"].forward(x), ops["sym scipy"].forward(x))
                    and np.array_equal(ops["sym numba"].adjoint(y), ops["sym scipy"].adjoint(y)))
        t = {k: {"fwd": [], "adj": [], "fwd_cpu": [], "adj_cpu": []} for k in ops}
        names = list(ops)
        for r in range(repeats):  # interleaved, rotating the order
            for k in names[r % 3:] + names[:r % 3]:
                c0, t0 = time.thread_time(), time.perf_counter()
                ops[k].forward(x)
                c1, t1 = time.thread_time(), time.perf_counter()
                ops[k].adjoint(y)
                c2, t2 = time.thread_time(), time.perf_counter()
                t[k]["fwd"].append(t1 - t0)
                t[k]["adj"].append(t2 - t1)
                t[k]["fwd_cpu"].append(c1 - c0)
                t[k]["adj_cpu"].append(c2 - c1)
        vec = 4 * (x.size + y.size)
        for k, op in ops.items():
            med = {p: statistics.median(v) for p, v in t[k].items()}
            copies = 1 if k == "full" else len(op.symmetry.transforms)
            read = matrix_bytes(op) + copies * vec  # the matrix once, the (transformed) vectors
            rows.append(dict(n=n, design=k, mb=(csr_bytes(op.a) + csr_bytes(op.at) if k == "full" else op.nbytes) / 1e6,
                             read=read / 1e6, bound=read / bandwidth, err=err[k], same=same, load=load(),
                             nnz=op.a.nnz if k == "full" else op.stored.nnz, **med))
            r = rows[-1]
            log(f"{n}^2 {k}: fwd {r['fwd'] * 1e3:.1f} / adj {r['adj'] * 1e3:.1f} ms wall, "
                f"{r['fwd_cpu'] * 1e3:.1f} / {r['adj_cpu'] * 1e3:.1f} ms CPU, read {r['read']:.1f} MB, "
                f"bound {r['bound'] * 1e3:.2f} ms, load {r['load']}")
        del ops
    return rows


def odl_rows(sizes, iterations: int, repeats: int) -> list[dict]:
    import solvers as sb  # benchmarks/solvers.py: the ODL comparison (same fixed-step iteration)

    rows = []
    for n in sizes:
        geometry, grid = fan_case(n)
        case = sb.fresh_case(sb.FRESH_SEEDS[0], "normal", geometry, grid, {})
        for kernel, reps in (("numba", repeats), ("scipy", max(1, repeats - 1))):
            case.op = AstraMatrixProjector(geometry, grid, threads=1, kernel=kernel)
            st = sb.Settings(quick=False, out=RESULTS, odl_iters=iterations, odl_repeats=reps)
            res = sb.odl_compare(case, 1e-3, st)
            res.update(n=n, kernel=kernel, load=load())
            rows.append(res)
    return rows


def fmt(s: float) -> str:
    return f"{s * 1e3:.1f}"


def write(path: Path, prod, odl, bandwidth, info, command, wall):
    lines = ["# Compiled symmetric products (issue 17, fourth round)", "",
             f"`{command}` (see the script's docstring). Fan beam, 60 views over 360 degrees, `line_fanflat`,",
             "one slice, one thread, float32. Medians of interleaved repeats; wall and CPU (this thread) time.",
             f"Read bandwidth (sum of a 512 MB float32 array, 1 thread): {bandwidth / 1e9:.1f} GB/s. `bound`:",
             "the bytes one product must read (its matrix once, the input and output vectors once per image",
             "transform) / that bandwidth.", "",
             "## Products", ""]
    full = {r["n"]: r for r in prod if r["design"] == "full"}
    lines.append(md_table(["grid", "design", "nnz", "matrix MB", "MB read / product", "fwd ms", "adj ms",
                       "fwd CPU ms", "adj CPU ms", "bound ms", "CPU (fwd+adj) / 2 bounds",
                       "fwd+adj speed-up vs full (CPU / wall)", "rel. diff to full fwd / adj", "load"],
                      [[f"{r['n']}^2", r["design"], r["nnz"], f"{r['mb']:.1f}", f"{r['read']:.1f}", fmt(r["fwd"]),
                        fmt(r["adj"]), fmt(r["fwd_cpu"]), fmt(r["adj_cpu"]), f"{r['bound'] * 1e3:.2f}",
                        f"{(r['fwd_cpu'] + r['adj_cpu']) / (2 * r['bound']):.1f}",
                        f"{(full[r['n']]['fwd_cpu'] + full[r['n']]['adj_cpu']) / (r['fwd_cpu'] + r['adj_cpu']):.2f}x"
                        f" / {(full[r['n']]['fwd'] + full[r['n']]['adj']) / (r['fwd'] + r['adj']):.2f}x",
                        f"{r['err'][0]:.1e} / {r['err'][1]:.1e}", r["load"]] for r in prod]))
    same = all(r["same"] for r in prod)
    lines += ["", f"numba and SciPy symmetric products bit-identical (forward and adjoint): {same}.", ""]
    if odl:
        lines += ["## tv per iteration vs ODL 1.0 (ASTRA CPU projector)", "",
                  "`benchmarks/solvers.py`'s comparison: our `tv` (lam fixed, 1e-3 normalised), our PDHG core with",
                  "ODL's fixed steps, and ODL's `pdhg` with the same steps (same iteration); objectives of the",
                  "final images evaluated with our operator; best of the interleaved runs.", ""]
        lines.append(md_table(["grid", "kernel", "iterations", "tv ms/it", "core ms/it", "ODL ms/it", "ODL / tv",
                           "ODL / core", "objective core / ODL rel. diff",
                           "PSNR tv / ODL dB", "tv runs ms/it", "ODL runs ms/it", "load"],
                          [[f"{r['n']}^2", r["kernel"], r["iterations"], fmt(r["tv_per_it"]), fmt(r["fixed_per_it"]),
                            fmt(r["odl_per_it"]), f"{r['ratio']:.2f}", f"{r['ratio_fixed']:.2f}",
                            f"{abs(r['obj_fixed'] - r['obj_odl']) / abs(r['obj_odl']):.1e}",
                            f"{r['psnr_tv']:.2f} / {r['psnr_odl']:.2f}",
                            ", ".join(fmt(v) for v in r["tv_times"]), ", ".join(fmt(v) for v in r["odl_times"]),
                            r["load"]] for r in odl]))
        lines.append("")
    lines += ["## Machine and run", "", md_kv({**info, "wall time (s)": f"{wall:.0f}", "command": f"`{command}`"})]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--odl-sizes", type=int, nargs="*", default=[256, 512])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--odl-iterations", type=int, default=100)
    ap.add_argument("--odl-repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "speed_kernels.md")
    args = ap.parse_args(argv)
    command = " ".join(["python benchmarks/speed_kernels.py", *(argv if argv is not None else sys.argv[1:])])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["RECON_CACHE_DIR"] = cache
        bandwidth = read_bandwidth()
        prod = products(args.sizes, args.repeats, bandwidth)
        odl = odl_rows(args.odl_sizes, args.odl_iterations, args.odl_repeats) if args.odl_sizes else []
    write(args.out, prod, odl, bandwidth, machine_info(), command, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
