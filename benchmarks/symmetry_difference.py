"""Why the symmetric projector's adjoint differs from the full tiled matrix's by ~1e-5 at 512^2 (issue 17).

For the fan case of benchmarks/symmetry_accuracy.py (60 views over 360 degrees, ``line_fanflat``)
at each size, compares the symmetry-compressed projector (``sym``) with the full matrix built on
tiles of the same size (``tiled``; what tests/test_tiled_matrix.py compares against) and with
exact float64 weights (``exact``):

* products in float32 (as run) and in float64 on the same float32 matrices: if the two agree,
  the accumulation order of the float32 products is not the cause;
* tile sides 32 (the projector's) and 16: if the difference stays, ASTRA's float32 drift along a
  ray (what tiling bounds) is not the cause either;
* the matrix difference by the ray's angle to the nearest image axis (share of
  ||sym - tiled||_F^2 and relative error per band), and the rows' sums (ray lengths) vs the rows.

    python benchmarks/symmetry_difference.py [--sizes 256 512] [--out benchmarks/results/symmetry_difference.md]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from symmetry_accuracy import _ray_axis_angles, case, exact_matrix, rel  # noqa: E402

from recon_cli.projectors import astra_matrix  # noqa: E402
from recon_cli.projectors.astra_matrix import AstraMatrixProjector  # noqa: E402
from recon_cli.projectors.tiled_matrix import tiled_matrix_transpose  # noqa: E402

BANDS = ((0, 0.5), (0.5, 2), (2, 5), (5, 15), (15, 45.01))


def symmetric_matrix(geometry, grid, ptype: str, tile: int):
    """The symmetric projector's expanded matrix (float32) with stored views built on ``tile``-pixel tiles."""
    original = astra_matrix.tiled_matrix_transpose
    astra_matrix.tiled_matrix_transpose = lambda *a, **k: original(*a, **{**k, "tile": tile})
    try:
        return AstraMatrixProjector(geometry, grid, ptype, use_cache=False, threads=1).matrix
    finally:
        astra_matrix.tiled_matrix_transpose = original


def measure(n: int, tiles=(32, 16)) -> dict:
    geometry, grid, ptype = case("fan", n)
    rng = np.random.default_rng(0)
    x = rng.random(int(np.prod(grid.slice_shape)), dtype=np.float32)
    y = rng.random(geometry.n_angles * geometry.detector_count, dtype=np.float32)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    out = {"n": n, "tiles": {}}
    exact = exact_matrix(geometry, grid, ptype)
    out["exact_adj"], out["exact_fwd"] = exact.T @ y64, exact @ x64
    for tile in tiles:
        t0 = time.perf_counter()
        sym = symmetric_matrix(geometry, grid, ptype, tile)
        full = tiled_matrix_transpose(geometry.to_astra(), ptype, grid.slice_shape, grid.voxel_size, tile=tile).T.tocsr()
        build = time.perf_counter() - t0
        s64, f64 = sym.astype(np.float64), full.astype(np.float64)
        row = {"build_s": build,
               "adj32": rel(sym.T @ y, full.T @ y), "adj64": rel(s64.T @ y64, f64.T @ y64),
               "fwd32": rel(sym @ x, full @ x), "fwd64": rel(s64 @ x64, f64 @ x64),
               "sym_exact_adj": rel(s64.T @ y64, out["exact_adj"]), "tiled_exact_adj": rel(f64.T @ y64, out["exact_adj"]),
               "matrix": rel(s64, f64)}
        if tile == tiles[0]:
            d = (s64 - f64).tocsr()
            d2 = np.asarray(d.multiply(d).sum(axis=1)).ravel()
            f2 = np.asarray(f64.multiply(f64).sum(axis=1)).ravel()
            angle = _ray_axis_angles(geometry)
            bands = []
            for lo, hi in BANDS:
                sel = (angle >= lo) & (angle < hi)
                bands.append((f"{lo:g}-{min(hi, 45):g}", float(sel.mean()), float(d2[sel].sum() / d2.sum()),
                              float(np.sqrt(d2[sel].sum() / max(f2[sel].sum(), 1e-300)))))
            row["bands"] = bands
            sums_s, sums_f = np.asarray(s64.sum(axis=1)).ravel(), np.asarray(f64.sum(axis=1)).ravel()
            row["row_sums"] = float(np.linalg.norm(sums_s - sums_f) / np.linalg.norm(sums_f))
            row["rows"] = float(np.sqrt(d2.sum() / f2.sum()))
        out["tiles"][tile] = row
        print(f"n={n} tile={tile}: {row['adj32']:.2e} / {row['adj64']:.2e} (adj f32 / f64)", flush=True)
    return out


def report(results: list[dict], loads: list[str], seconds: float) -> str:
    lines = ["# Symmetric vs full tiled matrix: where the adjoint difference comes from (issue 17)", "",
             "`python benchmarks/symmetry_difference.py` (see its docstring): fan beam, 60 views over 360 degrees, "
             "`line_fanflat`, random image / sinogram uniform in [0, 1); relative 2-norms. Load average (1/5/15) per "
             "size: " + "; ".join(loads) + f". Wall time {seconds:.0f} s.", "",
             "| grid | tile | sym vs tiled adj, f32 products | same matrices, f64 products | fwd f32 | fwd f64 | "
             "matrix (Frobenius) | sym vs exact adj | tiled vs exact adj | build sym + full s |",
             "| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: |"]
    for r in results:
        for tile, row in r["tiles"].items():
            lines.append(f"| {r['n']}^2 | {tile} | {row['adj32']:.2e} | {row['adj64']:.2e} | {row['fwd32']:.2e} | "
                         f"{row['fwd64']:.2e} | {row['matrix']:.2e} | {row['sym_exact_adj']:.2e} | "
                         f"{row['tiled_exact_adj']:.2e} | {row['build_s']:.1f} |")
    for r in results:
        row = next(iter(r["tiles"].values()))
        lines += ["", f"## {r['n']}^2: the matrix difference by the ray's angle to the nearest image axis (tile 32)", "",
                  f"Rows' sums (ray lengths) differ by {row['row_sums']:.1e} relative, the rows themselves by "
                  f"{row['rows']:.1e}: the two matrices split a ray's length differently between neighbouring "
                  "pixels.", "", "| ray angle (deg) | share of rays | share of the difference (squared) | "
                  "relative difference of those rows |", "| --- | --: | --: | --: |"]
        lines += [f"| {b} | {s:.3f} | {d:.3f} | {e:.1e} |" for b, s, d, e in row["bands"]]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    results, loads = [], []
    for n in args.sizes:
        results.append(measure(n))
        loads.append(f"{n}^2: " + "%.2f / %.2f / %.2f" % os.getloadavg())
    text = report(results, loads, time.perf_counter() - t0)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
