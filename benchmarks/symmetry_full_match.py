"""Symmetric projector vs the full matrix, products at 256^2-1024^2 (issue 17: "identical within 1e-5").

Fan beam, 60 views over 360 degrees, ``line_fanflat``, the case of benchmarks/symmetry_accuracy.py.
Compared on a random image (forward) and a random sinogram (adjoint), relative 2-norm:

* ``sym``: recon-cli's AstraMatrixProjector (8 stored views, the other views by quarter turns and
  transposes; float32 products through the compiled kernels);
* ``full``: the full matrix of all 60 views from the same builder (tiled_matrix_transpose: exact line
  weights for line kernels), float32 CSR products;
* ``exact``: an independent float64 reference (benchmarks/symmetry_accuracy.exact_line_view: all grid
  crossings of a ray sorted, each segment to the pixel holding its midpoint), view by view;
* ``full ASTRA tiles`` (256^2 and 512^2 only): the previous design, ASTRA's matrix on 32x32 tiles for
  all views, and the previous symmetric operator built from ASTRA tiles.

    python benchmarks/symmetry_full_match.py [--sizes 256 512 1024] [--out benchmarks/results/symmetry_full_match.md]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from recon_cli.projectors import tiled_matrix  # noqa: E402
from recon_cli.projectors.astra_matrix import AstraMatrixProjector  # noqa: E402
from recon_cli.projectors.tiled_matrix import tiled_matrix_transpose  # noqa: E402
from symmetry_accuracy import case, exact_line_view  # noqa: E402


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def exact_products(geometry, grid, x, y):
    """Forward of x and adjoint of y with the independent float64 exact weights, one view at a time."""
    import astra

    vecs = astra.geom_2vec(geometry.to_astra())["Vectors"]
    n, h, nd = grid.slice_shape[0], grid.voxel_size, geometry.detector_count
    fwd = np.empty((geometry.n_angles, nd))
    adj = np.zeros(n * n)
    for u, v in enumerate(vecs):
        with np.errstate(invalid="ignore"):
            m = exact_line_view(v, nd, n, h, parallel=False)
        fwd[u] = m @ x.ravel()
        adj += m.T @ y[u].ravel()
    return fwd, adj


def astra_tiled(fn):
    """Run ``fn`` with the exact line weights switched off (the previous design: ASTRA on tiles)."""
    original = tiled_matrix.uses_exact_weights
    tiled_matrix.uses_exact_weights = lambda *a, **k: False
    try:
        return fn()
    finally:
        tiled_matrix.uses_exact_weights = original


def measure(n: int, with_astra: bool) -> dict:
    geometry, grid, ptype = case("fan", n)
    rng = np.random.default_rng(0)
    x = rng.random(grid.slice_shape).astype(np.float32)
    y = rng.random(geometry.sinogram_shape()).astype(np.float32)
    t0 = time.perf_counter()
    sym = AstraMatrixProjector(geometry, grid, ptype, use_cache=False, threads=1)
    t_sym = time.perf_counter() - t0
    fs, as_ = sym.forward(x), sym.adjoint(y)
    t0 = time.perf_counter()
    full_t = tiled_matrix_transpose(geometry.to_astra(), ptype, grid.slice_shape, grid.voxel_size)
    t_full = time.perf_counter() - t0
    ff = (full_t.T @ x.ravel()).reshape(fs.shape)
    af = (full_t @ y.ravel()).reshape(as_.shape)
    del full_t
    fe, ae = exact_products(geometry, grid, x.astype(np.float64), y.astype(np.float64))
    row = {"n": n, "stored": len(sym.symmetry.stored), "kernel": sym.kernel, "t_sym": t_sym, "t_full": t_full,
           "sym-full": (rel(fs, ff), rel(as_, af)), "sym-exact": (rel(fs, fe), rel(as_, ae)),
           "full-exact": (rel(ff, fe), rel(af, ae))}
    if with_astra:
        old_sym = astra_tiled(lambda: AstraMatrixProjector(geometry, grid, ptype, use_cache=False, threads=1))
        old_full = astra_tiled(lambda: tiled_matrix_transpose(geometry.to_astra(), ptype, grid.slice_shape,
                                                              grid.voxel_size))
        fo, ao = old_sym.forward(x), old_sym.adjoint(y)
        ffo = (old_full.T @ x.ravel()).reshape(fs.shape)
        afo = (old_full @ y.ravel()).reshape(as_.shape)
        row["old sym-full"] = (rel(fo, ffo), rel(ao, afo))
        row["old sym-exact"] = (rel(fo, fe), rel(ao, ae))
        row["old full-exact"] = (rel(ffo, fe), rel(afo, ae))
    row["load"] = "%.2f / %.2f / %.2f" % os.getloadavg()
    return row


def report(rows: list[dict]) -> str:
    def pair(v):
        return f"{v[0]:.1e} / {v[1]:.1e}"

    lines = ["# Symmetric projector vs the full matrix (issue 17)", "",
             "`python benchmarks/symmetry_full_match.py` (see its docstring): fan beam, 60 views over 360 degrees,",
             "`line_fanflat`, random image / sinogram uniform in [0, 1); relative 2-norm of forward / adjoint",
             "products. `sym`: the symmetry-compressed projector (8 stored views); `full`: all 60 views from the",
             "same builder; `exact`: an independent float64 reference (sorted grid crossings). Now: exact",
             "float64 line weights (recon_cli.projectors.exact_line) stored as float32; before: ASTRA's float32",
             "kernel on 32x32 tiles.", "",
             "| grid | sym vs full: fwd / adj | sym vs exact | full vs exact | before: sym vs full | before: sym vs "
             "exact | before: full vs exact | build sym / full s | load |",
             "| --- | --: | --: | --: | --: | --: | --: | --: | --: |"]
    for r in rows:
        old = [pair(r[k]) if k in r else "-" for k in ("old sym-full", "old sym-exact", "old full-exact")]
        lines.append(f"| {r['n']}^2 | {pair(r['sym-full'])} | {pair(r['sym-exact'])} | {pair(r['full-exact'])} | "
                     f"{' | '.join(old)} | {r['t_sym']:.1f} / {r['t_full']:.1f} | {r['load']} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--astra-up-to", type=int, default=512, help="largest grid with the previous design's rows")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    os.environ["RECON_CACHE_DIR"] = tempfile.mkdtemp(prefix="recon-full-match-")
    rows = []
    for n in args.sizes:
        rows.append(measure(n, n <= args.astra_up_to))
        print(report(rows[-1:]), flush=True)
    if args.out:
        args.out.write_text(report(rows))


if __name__ == "__main__":
    main()
