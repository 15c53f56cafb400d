"""Speed at the memory-bandwidth limit (issue 17): projector bytes and times before/after, threads,
tv per iteration against ODL, cold vs warm runs, FBP on a new geometry, start-up.

"before" is the design of main before this change, rebuilt here side by side in one process:
the full matrix A and its transpose as two float32/int32 CSRs, forward ``A @ x``, adjoint
``A^T @ y`` (A expanded from the stored views; same non-zeros as ASTRA's own matrix). "after" is
recon_cli's AstraMatrixProjector (stored views only, one CSR). The command-line rows run ``recon``
of this tree and of ``--before-src`` (a checkout of main: ``git archive main | tar -x -C DIR``) in
fresh processes, each with its own empty cache where it says "new geometry" / "cold".

Usage::

    nice -n 10 .venv/bin/python benchmarks/speed.py --before-src /tmp/main_src   # ~15-25 min on 2 cores
    .venv/bin/python benchmarks/speed.py --quick                                 # smoke run, *_quick.md
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, best_time, log, machine_info, md_kv, md_table  # noqa: E402

from recon_cli.geometry import VolumeGrid, fan_beam_geometry  # noqa: E402
from recon_cli.ops.operator import Operator  # noqa: E402
from recon_cli.projectors.astra_cpu import AstraCPUProjector  # noqa: E402
from recon_cli.projectors.astra_matrix import AstraMatrixProjector, CSRProduct, _pool  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def fan_case(n: int, n_views: int = 60):
    """The reference fan geometry (595/490 mm) over the same 256 mm field on an n x n grid."""
    voxel = 256.0 / n
    return fan_beam_geometry(n_angles=n_views, detector_count=2 * n, detector_spacing=1.2 * voxel), \
        VolumeGrid((n, n), voxel)


def load() -> str:
    return "%.2f / %.2f / %.2f" % os.getloadavg()


def read_bandwidth(n_bytes: int = 512 * 1024**2) -> float:
    a = np.ones(n_bytes // 4, np.float32)
    return a.nbytes / best_time(a.sum, 5)


def csr_bytes(m) -> int:
    return m.data.nbytes + m.indices.nbytes + m.indptr.nbytes


class BeforeOperator(Operator):
    """The previous design: full A and A^T as two CSRs, forward A @ x, adjoint A^T @ y (1 thread)."""

    def __init__(self, op: AstraMatrixProjector):
        a = op.matrix
        a.indices, a.indptr = a.indices.astype(np.int32), a.indptr.astype(np.int32)
        at = a.T.tocsr()
        at.indices, at.indptr = at.indices.astype(np.int32), at.indptr.astype(np.int32)
        self.a, self.at = a, at
        self._fwd, self._adj = CSRProduct(a, 1), CSRProduct(at, 1)
        self.domain_shape, self.range_shape = op.domain_shape, op.range_shape

    @property
    def nbytes(self) -> int:
        return csr_bytes(self.a) + csr_bytes(self.at)

    def forward(self, x):
        return self._fwd(np.asarray(x, np.float32).reshape(-1)).reshape(self.range_shape)

    def adjoint(self, y):
        return self._adj(np.asarray(y, np.float32).reshape(-1)).reshape(self.domain_shape)


# ----------------------------------------------------------------------------- products


def products(sizes, repeats: int, bandwidth: float) -> list[dict]:
    rows = []
    for n in sizes:
        geometry, grid = fan_case(n)
        after = AstraMatrixProjector(geometry, grid, threads=1)
        after2 = after.with_threads(2)
        before = BeforeOperator(after)
        x = np.random.default_rng(0).random(grid.shape, dtype=np.float32)
        y = before.forward(x)
        err_f = float(np.linalg.norm(after.forward(x) - y) / np.linalg.norm(y))
        ab = before.adjoint(y)
        err_a = float(np.linalg.norm(after.adjoint(y) - ab) / np.linalg.norm(ab))
        t = {k: {"fwd": [], "adj": []} for k in ("before", "after", "after2")}
        ops = {"before": before, "after": after, "after2": after2}
        for r in range(repeats):  # interleaved
            for k in (list(ops)[r % 3:] + list(ops)[:r % 3]):
                t0 = time.perf_counter()
                ops[k].forward(x)
                t1 = time.perf_counter()
                ops[k].adjoint(y)
                t[k]["fwd"].append(t1 - t0)
                t[k]["adj"].append(time.perf_counter() - t1)
        med = {k: {p: statistics.median(v) for p, v in d.items()} for k, d in t.items()}
        vec = 4 * (x.size + y.size)
        rows.append(dict(
            n=n, nnz_before=before.a.nnz, nnz_after=after.stored.nnz, order=after.symmetry.order,
            mb_before=before.nbytes / 1e6, mb_after=after.nbytes / 1e6,
            # bytes one product reads: its matrix once + the input and output vectors
            read_before=(csr_bytes(before.a) + vec) / 1e6, read_after=(after.nbytes + 8 * vec) / 1e6,
            fwd_before=med["before"]["fwd"], adj_before=med["before"]["adj"],
            fwd_after=med["after"]["fwd"], adj_after=med["after"]["adj"],
            fwd_after2=med["after2"]["fwd"], adj_after2=med["after2"]["adj"],
            err_fwd=err_f, err_adj=err_a, load=load()))
        r = rows[-1]
        r["fa_before"], r["fa_after"], r["fa_after2"] = (r["fwd_before"] + r["adj_before"],
                                                         r["fwd_after"] + r["adj_after"],
                                                         r["fwd_after2"] + r["adj_after2"])
        r["bound_before"] = 2 * r["read_before"] * 1e6 / bandwidth
        r["bound_after"] = 2 * r["read_after"] * 1e6 / bandwidth
        log(f"{n}^2: fwd+adj before {r['fa_before'] * 1e3:.1f} ms, after {r['fa_after'] * 1e3:.1f} ms "
            f"(2 threads {r['fa_after2'] * 1e3:.1f}), memory {r['mb_before']:.0f} -> {r['mb_after']:.0f} MB, "
            f"errors {err_f:.1e}/{err_a:.1e}, load {r['load']}")
        del before, after, after2
    return rows


def stack_threads(n: int, nz: int, repeats: int) -> dict:
    geometry, grid = fan_case(n)
    grid = VolumeGrid((nz, n, n), grid.voxel_size)
    one = AstraMatrixProjector(geometry, grid, threads=1)
    two = one.with_threads(2)
    x = np.random.default_rng(0).random(grid.shape, dtype=np.float32)
    t1, t2 = [], []
    for _ in range(repeats):
        t1.append(best_time(lambda: one.adjoint(one.forward(x)), 1))
        t2.append(best_time(lambda: two.adjoint(two.forward(x)), 1))
    return dict(n=n, nz=nz, one=statistics.median(t1), two=statistics.median(t2), load=load())


# ----------------------------------------------------------------------------- tv vs ODL


def odl_rows(sizes, iterations: int, repeats: int) -> list[dict]:
    import solvers as sb  # benchmarks/solvers.py: the ODL comparison (same fixed-step iteration)

    rows = []
    for n in sizes:
        geometry, grid = fan_case(n)
        projectors: dict = {}
        case = sb.fresh_case(sb.FRESH_SEEDS[0], "normal", geometry, grid, projectors)
        st = sb.Settings(quick=False, out=RESULTS, odl_iters=iterations, odl_repeats=repeats)
        after_op = AstraMatrixProjector(geometry, grid, threads=1)
        for label, op in (("after", after_op), ("before", BeforeOperator(after_op))):
            case.op = op
            res = sb.odl_compare(case, 1e-3, st)
            res.update(n=n, design=label, load=load())
            rows.append(res)
    return rows


# ----------------------------------------------------------------------------- command line runs


def _env(src: Path | None, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "SCIPY_ARRAY_API")}
    env["RECON_CACHE_DIR"] = str(cache)
    env["OPENBLAS_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(src) if src else str(REPO)
    return env


def recon(args, src: Path | None, cache: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "recon_cli", *args], env=_env(src, cache), capture_output=True,
                          text=True, cwd=str(src or REPO))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"recon {' '.join(args)} failed: {proc.stderr.strip()[-800:]}")
    return wall


def write_case(path: Path, n: int, nz: int | None = None):
    from recon_cli.io.hdf5 import write_sinogram
    from recon_cli.phantoms import shepp_logan
    from recon_cli.simulate import simulate_sinogram

    if path.exists():
        return
    geometry, grid = fan_case(n)
    image = shepp_logan(n).astype(np.float32)  # already in 1/mm (the former "* 0.02" made it 50x too faint)
    if nz:
        image = np.stack([image] * nz)
        grid = VolumeGrid((nz, n, n), grid.voxel_size)
    write_sinogram(path, simulate_sinogram(image, grid.voxel_size, geometry, grid, I0=1e5, seed=1))


def pipeline(tmp: Path, name: str, data: Path, solver: str, params: dict, formats=("hdf5",)) -> Path:
    import yaml

    raw = {"name": name, "input": {"path": str(data)}, "device": "cpu",
           "solver": {"name": solver, "params": params}, "output": {"path": str(tmp / f"{name}.h5"),
                                                                    "formats": list(formats)},
           "checkpoint": {"every": 0}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cli_rows(before: Path | None, tv_n: int, tv_iters: int, fbp_n: int, repeats: int) -> dict:
    out: dict = {"load_start": load()}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        sides = [("after", None)] + ([("before", before)] if before else [])
        caches = {k: tmp / f"cache_{k}" for k, _ in sides}
        # start-up
        for side, src in sides:
            out[f"version_{side}"] = statistics.median(recon(["--version"], src, caches[side]) for _ in range(5))
            out[f"solvers_{side}"] = statistics.median(recon(["solvers"], src, caches[side]) for _ in range(5))
            log(f"start-up {side}: --version {out[f'version_{side}']:.3f} s, solvers {out[f'solvers_{side}']:.3f} s")
        # FBP on a new geometry (fresh cache each time), and a small warm FBP run with PNG
        data = tmp / f"fbp{fbp_n}.h5"
        write_case(data, fbp_n)
        small = tmp / "fbp128.h5"
        write_case(small, 128)
        for side, src in sides:
            walls = []
            for k in range(repeats):
                cache = tmp / f"fresh_{side}_{k}"
                walls.append(recon(["-q", "run", str(pipeline(tmp, f"fbp_{side}_{k}", data, "fbp", {})), "--overwrite"],
                                   src, cache))
                out[f"fbp_matrix_{side}"] = (cache / "matrices").is_dir() and any((cache / "matrices").iterdir())
            out[f"fbp_new_{side}"] = statistics.median(walls)
            pipe = pipeline(tmp, f"fbp128_{side}", small, "fbp", {}, formats=("hdf5", "png"))
            recon(["-q", "run", str(pipe), "--overwrite"], src, caches[side])  # warm
            out[f"fbp128_{side}"] = statistics.median(
                recon(["-q", "run", str(pipe), "--overwrite"], src, caches[side]) for _ in range(repeats))
            log(f"FBP {side}: new geometry {fbp_n}^2 {out[f'fbp_new_{side}']:.2f} s (matrix built: "
                f"{out[f'fbp_matrix_{side}']}), warm 128^2 with PNG {out[f'fbp128_{side}']:.2f} s")
        # tv cold vs warm at tv_n (after only; the before side's cold build takes minutes and GBs)
        data = tmp / f"tv{tv_n}.h5"
        write_case(data, tv_n)
        pipe = pipeline(tmp, "tv", data, "tv", {"lam": 1e-3, "iterations": tv_iters})
        cache = tmp / "tv_cache"
        out["tv_cold"] = recon(["-q", "run", str(pipe), "--overwrite"], None, cache)
        out["tv_warm"] = recon(["-q", "run", str(pipe), "--overwrite"], None, cache)
        log(f"tv {tv_n}^2 {tv_iters} iterations: cold {out['tv_cold']:.1f} s, warm {out['tv_warm']:.1f} s")
    out["load_end"] = load()
    return out


# ----------------------------------------------------------------------------- report


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:.1f}"


def write_report(path: Path, prod, stacks, odl, cli, bandwidth, info, command, wall):
    L = ["# Speed at the memory-bandwidth limit (issue 17)", "",
         "Side by side in one run (`before` = the design on main before this change, rebuilt in the same",
         "process; see the module docstring). Fan beam, 60 views over 360 degrees, the reference geometry",
         "scaled to each grid, ASTRA `line_fanflat`, float32, one slice unless stated, one thread unless",
         "stated. Times are medians of interleaved repeats. The machine is shared with other agents: the",
         "load average (1/5/15 min) is noted next to each block; the run was started with `nice -n 10`.", ""]
    L += ["## Projector products", "",
          md_table(["grid", "nnz before", "nnz stored", "symmetry order", "matrix MB before (A + A^T)",
                    "MB after (one copy)", "MB read/product before", "after", "fwd before ms", "adj before ms",
                    "fwd after ms", "adj after ms", "fwd+adj speed-up", "bound before ms", "bound after ms",
                    "rel. error fwd / adj", "load"],
                   [[f"{r['n']}^2", r["nnz_before"], r["nnz_after"], f"{r['order']:.2f}", f"{r['mb_before']:.0f}",
                     f"{r['mb_after']:.0f}", f"{r['read_before']:.0f}", f"{r['read_after']:.0f}",
                     fmt_ms(r["fwd_before"]), fmt_ms(r["adj_before"]), fmt_ms(r["fwd_after"]),
                     fmt_ms(r["adj_after"]), f"{r['fa_before'] / r['fa_after']:.2f}x",
                     fmt_ms(r["bound_before"]), fmt_ms(r["bound_after"]),
                     f"{r['err_fwd']:.1e} / {r['err_adj']:.1e}", r["load"]] for r in prod]), "",
          f"Read bandwidth (sum of a 512 MB float32 array, 1 thread): {bandwidth / 1e9:.1f} GB/s. "
          "`bound` = bytes a forward + adjoint pair must read / that bandwidth (after: the stored matrix and "
          "8 transformed copies of the vectors). `rel. error`: relative 2-norm of after against before "
          "(random image; adjoint of its sinogram): before is expanded from the stored views, so this is "
          "rounding only; the difference to ASTRA's own matrix is in results/speed_accuracy.md.", ""]
    L += ["## Threads (1 vs 2 per product)", "",
          md_table(["case", "fwd+adj 1 thread ms", "2 threads ms", "speed-up", "load"],
                   [[f"{r['n']}^2 1 slice", fmt_ms(r["fa_after"]), fmt_ms(r["fa_after2"]),
                     f"{r['fa_after'] / r['fa_after2']:.2f}x", r["load"]] for r in prod]
                   + [[f"{s['n']}^2 x {s['nz']} slices", fmt_ms(s["one"]), fmt_ms(s["two"]),
                       f"{s['one'] / s['two']:.2f}x", s["load"]] for s in stacks]), ""]
    if odl:
        L += ["## tv per iteration vs ODL 1.0 (ASTRA CPU projector)", "",
              "`benchmarks/solvers.py`'s comparison: our `tv` (lam fixed, 1e-3 normalised), our PDHG core with",
              "ODL's fixed steps, and ODL's `pdhg` with the same steps (same iteration; objectives must agree).",
              "",
              md_table(["grid", "projector", "tv ms/it", "core ms/it", "ODL ms/it", "ODL / tv", "ODL / core",
                        "objective core / ODL rel. diff", "PSNR tv / ODL dB", "load"],
                       [[f"{r['n']}^2", r["design"], fmt_ms(r["tv_per_it"]), fmt_ms(r["fixed_per_it"]),
                         fmt_ms(r["odl_per_it"]), f"{r['ratio']:.2f}", f"{r['ratio_fixed']:.2f}",
                         f"{abs(r['obj_fixed'] - r['obj_odl']) / abs(r['obj_odl']):.1e}",
                         f"{r['psnr_tv']:.2f} / {r['psnr_odl']:.2f}", r["load"]] for r in odl]), ""]
    if cli:
        rows = [["`recon --version` (median of 5)", cli.get("version_before"), cli["version_after"]],
                ["`recon solvers` (median of 5)", cli.get("solvers_before"), cli["solvers_after"]],
                [f"FBP {cli['fbp_n']}^2 on a new geometry (empty cache), total", cli.get("fbp_new_before"),
                 cli["fbp_new_after"]],
                ["  ... a matrix was built", cli.get("fbp_matrix_before"), cli["fbp_matrix_after"]],
                ["FBP 128^2 with PNG, warm cache, total", cli.get("fbp128_before"), cli["fbp128_after"]],
                [f"tv {cli['tv_n']}^2, {cli['tv_iters']} iterations, cold (empty cache)", None, cli["tv_cold"]],
                [f"tv {cli['tv_n']}^2, {cli['tv_iters']} iterations, warm", None, cli["tv_warm"]]]
        L += ["## Command-line runs (fresh processes; seconds)", "",
              md_table(["what", "before (main)", "after"],
                       [[w, "-" if b is None else (b if isinstance(b, bool) else f"{b:.3f}"),
                         a if isinstance(a, bool) else f"{a:.3f}"] for w, b, a in rows]), "",
              f"Load average at the start / end of this block: {cli['load_start']} / {cli['load_end']}. "
              f"FBP on a new geometry minus start-up (`--version`): "
              f"{cli['fbp_new_after'] - cli['version_after']:.2f} s; tv cold / warm: "
              f"{cli['tv_cold'] / cli['tv_warm']:.2f}.", ""]
    L += ["## Machine and run", "", md_kv({**info, "wall time (s)": f"{wall:.0f}", "command": f"`{command}`"}), ""]
    path.write_text("\n".join(L))
    log(f"wrote {path}")


def accuracy(path: Path, sizes=(256, 512), tv_n: int = 256, tv_iters: int = 200) -> None:
    """The symmetric projector against ASTRA's own (direct projector, and the full matrix in a tv run)."""
    import solvers as sb

    from recon_cli.metrics import compute_metrics
    from recon_cli.phantoms import shepp_logan
    from recon_cli.solvers.registry import run_solver

    def rel(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    rows = []
    for n in sizes:
        geometry, grid = fan_case(n)
        sym, direct = AstraMatrixProjector(geometry, grid, threads=1), AstraCPUProjector(geometry, grid)
        x = (0.02 * shepp_logan(n)).astype(np.float32)
        r = np.random.default_rng(0).random((n, n), dtype=np.float32)
        y = direct.forward(x)
        yr = np.random.default_rng(1).random(y.shape, dtype=np.float32)
        rows.append([f"{n}^2", f"{rel(sym.forward(x), y):.1e}", f"{rel(sym.adjoint(y), direct.adjoint(y)):.1e}",
                     f"{rel(sym.forward(r), direct.forward(r)):.1e}", f"{rel(sym.adjoint(yr), direct.adjoint(yr)):.1e}"])
        log(f"accuracy {n}^2: {rows[-1]}")
    geometry, grid = fan_case(tv_n)
    case = sb.fresh_case(sb.FRESH_SEEDS[0], "normal", geometry, grid, {})
    sym = AstraMatrixProjector(geometry, grid, threads=1)
    os.environ["RECON_MATRIX_SYMMETRY"] = "off"
    try:
        full = AstraMatrixProjector(geometry, grid, threads=1)
    finally:
        os.environ.pop("RECON_MATRIX_SYMMETRY")
    recs = {}
    tv_rows = []
    for name, op in (("symmetric (stored views on tiles)", sym), ("ASTRA's whole-image matrix", full)):
        rec = run_solver("tv", op, case.sino, {"lam": 1e-3, "iterations": tv_iters})
        recs[name] = rec.volume
        tv_rows.append([name, f"{compute_metrics(rec.volume, case.sino.reference, names=['psnr'])['psnr']:.3f}",
                        f"{float(rec.info['objective']):.6g}"])
    diff = rel(*recs.values())
    L = ["# Accuracy of the symmetry-compressed projector against ASTRA's own", "",
         "ASTRA's CPU ray tracing drifts in float32 along each ray and a quarter turn steps the other way,",
         "so ASTRA's own rows (its direct projector, its whole-image matrix) differ from the symmetric",
         "operator, whose stored views are built on 32x32 tiles and are 40-110x closer to the exact weights",
         "(results/symmetry_accuracy.md). Relative 2-norm differences to ASTRA's direct projector, fan beam,",
         "60 views, `line_fanflat` (Shepp-Logan phantom and its sinogram; random image and sinogram):", "",
         md_table(["grid", "fwd phantom", "adj of its sinogram", "fwd random", "adj random"], rows), "",
         f"TV ({tv_iters} iterations, lam 1e-3, COULE seed {sb.FRESH_SEEDS[0]}, normal dose, {tv_n}^2) with each "
         f"operator (their reconstructions differ by {diff:.1e} relative):", "",
         md_table(["operator", "PSNR dB", "objective"], tv_rows), "",
         f"Load average: {load()}. `RECON_MATRIX_SYMMETRY=off` stores every view (ASTRA's whole-image matrix "
         "exactly).", ""]
    path.write_text("\n".join(L))
    log(f"wrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--before-src", type=Path, help="a checkout of main for the command-line 'before' column")
    ap.add_argument("--no-odl", action="store_true")
    ap.add_argument("--no-cli", action="store_true")
    ap.add_argument("--accuracy-only", action="store_true", help="only results/speed_accuracy.md")
    args = ap.parse_args(argv)
    if args.accuracy_only:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["RECON_CACHE_DIR"] = cache
            accuracy(RESULTS / ("speed_accuracy_quick.md" if args.quick else "speed_accuracy.md"),
                     (64,) if args.quick else (256, 512), 64 if args.quick else 256, 20 if args.quick else 200)
        return 0
    t_start = time.perf_counter()
    command = " ".join(["python benchmarks/speed.py", *(argv if argv is not None else sys.argv[1:])])
    with tempfile.TemporaryDirectory() as cache:
        os.environ["RECON_CACHE_DIR"] = cache
        bandwidth = read_bandwidth(64 * 1024**2 if args.quick else 512 * 1024**2)
        sizes = (64, 128) if args.quick else (256, 512, 1024)
        prod = products(sizes, 3 if args.quick else 7, bandwidth)
        stacks = [stack_threads(64 if args.quick else 256, 4 if args.quick else 16, 3)]
        odl = [] if args.no_odl else odl_rows((64,) if args.quick else (256, 512), 10 if args.quick else 50,
                                              1 if args.quick else 2)
        cli = None
        if not args.no_cli:
            tv_n, tv_iters, fbp_n = (128, 10, 128) if args.quick else (1024, 100, 512)
            cli = cli_rows(args.before_src, tv_n, tv_iters, fbp_n, 1 if args.quick else 2)
            cli.update(tv_n=tv_n, tv_iters=tv_iters, fbp_n=fbp_n)
    info = machine_info()
    out = RESULTS / ("speed_quick.md" if args.quick else "speed.md")
    write_report(out, prod, stacks, odl, cli, bandwidth, info, command, time.perf_counter() - t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
