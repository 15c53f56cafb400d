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


def odl_compare_cpu(case, op, lam: float, iterations: int, repeats: int) -> dict:
    """benchmarks/solvers.py's ODL comparison (our tv, our PDHG core with the fixed steps tv ended with,
    ODL's pdhg with the same steps), timed in wall and CPU time (ours: this thread; ODL: its process),
    interleaved: ODL, tv, core per repeat; best of each kind."""
    import subprocess

    import solvers as sb
    from recon_cli.ops.finite_differences import Gradient
    from recon_cli.solvers.pdhg import pdhg

    sino, n = case.sino, iterations
    op.norm()
    y32 = np.asarray(sino.data, np.float32)
    D = Gradient(tuple(sino.grid.shape))

    def timed(fn):
        c0, t0 = time.thread_time(), time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0, time.thread_time() - c0

    def ours_tv():
        return timed(lambda: sb.run_solver("tv", op, sino, {"lam": lam, "iterations": n}))

    tv_runs = [ours_tv()]
    info = tv_runs[0][0].info
    lam_abs = float(info["lam_abs"])
    ratio_fixed = (info["tau"] / info["sigma"]) ** 0.5

    def ours_fixed():
        return timed(lambda: pdhg(op, y32, D, lam_abs, max_iter=n, step_ratio=ratio_fixed))

    fixed_runs = [ours_fixed()]
    finfo = fixed_runs[0][0][1]
    odl_runs = []
    with tempfile.TemporaryDirectory() as tmp:
        prob = Path(tmp) / "problem.npz"
        sb.save_odl_problem(prob, op, sino, y32, lam_abs, n, finfo)
        for k in range(repeats):
            res_path = Path(tmp) / f"result{k}.npz"
            env = {k2: v for k2, v in os.environ.items() if k2 != "SCIPY_ARRAY_API"}
            proc = subprocess.run([sys.executable, str(Path(__file__).with_name("odl_pdhg.py")), str(prob),
                                   str(res_path)], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"odl_pdhg.py failed: {proc.stderr.strip()[-2000:]}")
            with np.load(res_path) as f:
                odl_runs.append({k2: f[k2] for k2 in f.files})
            tv_runs.append(ours_tv())
            fixed_runs.append(ours_fixed())
    y = np.asarray(sino.data, np.float64)
    x_fixed = np.asarray(min(fixed_runs, key=lambda r: r[1])[0][0], np.float32)
    x_tv = np.asarray(min(tv_runs, key=lambda r: r[1])[0].volume, np.float32)
    best_odl = min(odl_runs, key=lambda r: float(r["time_total"]))
    x_odl = best_odl["x"]

    def psnr(x):
        return sb.compute_metrics(x, sino.reference, names=["psnr"])["psnr"]

    out = {"iterations": n, "load": load(), "check_rel_diff": float(best_odl["check_rel_diff"]),
           "tv_wall": min(r[1] for r in tv_runs) / n, "tv_cpu": min(r[2] for r in tv_runs) / n,
           "core_wall": min(r[1] for r in fixed_runs) / n, "core_cpu": min(r[2] for r in fixed_runs) / n,
           "odl_wall": min(float(r["time_total"]) for r in odl_runs) / n,
           "odl_cpu": min(float(r["time_total_cpu"]) for r in odl_runs) / n,
           "tv_walls": [r[1] / n for r in tv_runs], "odl_walls": [float(r["time_total"]) / n for r in odl_runs],
           "obj_fixed": sb.objective(op, y, x_fixed, lam_abs), "obj_odl": sb.objective(op, y, x_odl, lam_abs),
           "psnr_tv": psnr(x_tv), "psnr_odl": psnr(x_odl)}
    out["obj_rel"] = abs(out["obj_fixed"] - out["obj_odl"]) / abs(out["obj_odl"])
    log(f"  tv {out['tv_wall'] * 1e3:.1f} ms/it wall, {out['tv_cpu'] * 1e3:.1f} CPU; ODL {out['odl_wall'] * 1e3:.1f} "
        f"wall, {out['odl_cpu'] * 1e3:.1f} CPU; objective core vs ODL {out['obj_rel']:.1e}; load {out['load']}")
    return out


def odl_rows(sizes, iterations: int, repeats: int) -> list[dict]:
    import solvers as sb  # benchmarks/solvers.py: the test case (COULE phantom, normal dose)

    rows = []
    for n in sizes:
        geometry, grid = fan_case(n)
        case = sb.fresh_case(sb.FRESH_SEEDS[0], "normal", geometry, grid, {})
        for kernel, reps in (("numba", repeats), ("scipy", max(1, repeats - 1))):
            log(f"tv vs ODL at {n}^2, {kernel} kernel, {iterations} iterations")
            op = AstraMatrixProjector(geometry, grid, threads=1, kernel=kernel)
            res = odl_compare_cpu(case, op, 1e-3, iterations, reps)
            res.update(n=n, kernel=kernel)
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
                  "final images evaluated with our operator; best of the interleaved runs. CPU: our thread's",
                  "CPU time; ODL's process CPU time (all threads). On a host shared with other jobs the CPU",
                  "ratio is the load-independent one (wall times stretch with the load, unequally).", ""]
        lines.append(md_table(["grid", "kernel", "iterations", "tv ms/it wall / CPU", "core ms/it wall / CPU",
                               "ODL ms/it wall / CPU", "ODL / tv wall", "ODL / tv CPU", "ODL / core CPU",
                               "objective core / ODL rel. diff", "PSNR tv / ODL dB", "tv runs ms/it (wall)",
                               "ODL runs ms/it (wall)", "load"],
                              [[f"{r['n']}^2", r["kernel"], r["iterations"], f"{fmt(r['tv_wall'])} / {fmt(r['tv_cpu'])}",
                                f"{fmt(r['core_wall'])} / {fmt(r['core_cpu'])}",
                                f"{fmt(r['odl_wall'])} / {fmt(r['odl_cpu'])}", f"{r['odl_wall'] / r['tv_wall']:.2f}",
                                f"{r['odl_cpu'] / r['tv_cpu']:.2f}", f"{r['odl_cpu'] / r['core_cpu']:.2f}",
                                f"{r['obj_rel']:.1e}", f"{r['psnr_tv']:.2f} / {r['psnr_odl']:.2f}",
                                ", ".join(fmt(v) for v in r["tv_walls"]), ", ".join(fmt(v) for v in r["odl_walls"]),
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
