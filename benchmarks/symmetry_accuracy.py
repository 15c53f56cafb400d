"""Accuracy of the matrix projectors against ASTRA's own matrix and an exact float64 line kernel.

For each geometry (fan: 60 views over 360 degrees, ``line_fanflat``; parallel: 180 views over
180 degrees, ``linear``) and grid, compares per view and on products:
* ``astra``: ASTRA's full matrix built on the whole image (``AstraCPUProjector.sparse_matrix``);
* ``tiled``: the same kernel built on image tiles (recon_cli.projectors.tiled_matrix), all views;
* ``sym``: the symmetry-compressed projector (stored views built on tiles, other views by
  quarter turns / transposes);
* ``exact``: float64 reference weights computed here (exact ray/pixel intersection lengths for
  the line kernel, exact linear interpolation per row/column for ASTRA's parallel ``linear``).

    python benchmarks/symmetry_accuracy.py [--sizes 256 512] [--out benchmarks/results/speed_accuracy.md]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recon_cli.geometry import VolumeGrid, fan_beam_geometry, parallel_beam_geometry  # noqa: E402
from recon_cli.projectors.astra_cpu import AstraCPUProjector  # noqa: E402
from recon_cli.projectors.astra_matrix import AstraMatrixProjector  # noqa: E402
from recon_cli.projectors.tiled_matrix import TILE, tiled_matrix_transpose  # noqa: E402


def _bins(vec, n_det):
    i = np.arange(n_det) - n_det / 2 + 0.5
    return np.stack([vec[2] + i * vec[4], vec[3] + i * vec[5]], 1)


def exact_line_view(vec, n_det: int, n: int, h: float, parallel: bool) -> sp.csr_matrix:
    """Exact float64 ray/pixel intersection lengths of one view (n_det, n*n): all crossings of the
    ray with the grid lines, sorted; each segment belongs to the pixel holding its midpoint."""
    d_pts = _bins(vec, n_det)
    if parallel:
        ray = np.array(vec[:2])
        s_pts, d_pts = d_pts - 1e4 * ray, d_pts + 1e4 * ray
    else:
        s_pts = np.broadcast_to(np.array(vec[:2]), d_pts.shape)
    half = n * h / 2
    lines = -half + h * np.arange(n + 1)
    d = d_pts - s_pts
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.concatenate([(lines[None] - s_pts[:, :1]) / d[:, :1], (lines[None] - s_pts[:, 1:]) / d[:, 1:]], 1)
    a[~np.isfinite(a)] = np.inf
    a.sort(axis=1)
    mid = 0.5 * (a[:, 1:] + a[:, :-1])
    length = np.diff(a, axis=1) * np.hypot(d[:, 0], d[:, 1])[:, None]
    col = np.floor((s_pts[:, :1] + mid * d[:, :1] + half) / h)
    row = np.floor((half - s_pts[:, 1:] - mid * d[:, 1:]) / h)
    ok = np.isfinite(length) & (length > 0) & (col >= 0) & (col < n) & (row >= 0) & (row < n)
    rays = np.broadcast_to(np.arange(n_det)[:, None], ok.shape)[ok]
    m = sp.csr_matrix((length[ok], (rays, (row[ok] * n + col[ok]).astype(np.int64))), shape=(n_det, n * n))
    m.sum_duplicates()
    return m


def exact_linear_view(vec, n_det: int, n: int, h: float) -> sp.csr_matrix:
    """Exact float64 weights of ASTRA's parallel ``linear`` kernel for one view: per image row
    (or column, for rays closer to horizontal) the row length split between the two nearest
    pixel centres by linear interpolation."""
    rx, ry = vec[0], vec[1]
    pts = _bins(vec, n_det)
    half = n * h / 2
    centres = -half + h * (np.arange(n) + 0.5)
    det = np.arange(n_det)[:, None]
    parts = []
    if abs(rx) < abs(ry):
        t = (centres[::-1][None] - pts[:, 1:]) / ry  # row r at y = centres[n-1-r]
        pos = (pts[:, :1] + t * rx - centres[0]) / h
        seg = h * np.hypot(rx, ry) / abs(ry)
        other = np.broadcast_to(np.arange(n)[None], pos.shape)
        base = np.floor(pos).astype(np.int64)
        for idx, w in ((base, 1 - (pos - base)), (base + 1, pos - base)):
            ok = (idx >= 0) & (idx < n)
            parts.append((np.broadcast_to(det, ok.shape)[ok], other[ok] * n + idx[ok], w[ok] * seg))
    else:
        t = (centres[None] - pts[:, :1]) / rx
        pos = (half - h / 2 - (pts[:, 1:] + t * ry)) / h
        seg = h * np.hypot(rx, ry) / abs(rx)
        other = np.broadcast_to(np.arange(n)[None], pos.shape)
        base = np.floor(pos).astype(np.int64)
        for idx, w in ((base, 1 - (pos - base)), (base + 1, pos - base)):
            ok = (idx >= 0) & (idx < n)
            parts.append((np.broadcast_to(det, ok.shape)[ok], idx[ok] * n + other[ok], w[ok] * seg))
    r, c, v = (np.concatenate(p) for p in zip(*parts))
    m = sp.csr_matrix((v, (r, c)), shape=(n_det, n * n))
    m.sum_duplicates()
    return m


def exact_matrix(geometry, grid, ptype: str) -> sp.csr_matrix:
    import astra

    vecs = astra.geom_2vec(geometry.to_astra())["Vectors"]
    n, h, nd = grid.slice_shape[0], grid.voxel_size, geometry.detector_count
    parallel = geometry.type == "parallel"
    views = [exact_linear_view(v, nd, n, h) if ptype == "linear" else exact_line_view(v, nd, n, h, parallel)
             for v in vecs]
    return sp.vstack(views, format="csr")


def case(kind: str, n: int):
    voxel = 256.0 / n
    if kind == "fan":
        return fan_beam_geometry(n_angles=60, detector_count=2 * n, detector_spacing=1.2 * voxel), \
            VolumeGrid((n, n), voxel), "line_fanflat"
    return parallel_beam_geometry(n_angles=180, detector_count=int(1.5 * n), detector_spacing=voxel), \
        VolumeGrid((n, n), voxel), "linear"


def _ray_axis_angles(geometry) -> np.ndarray:
    """Angle (degrees, 0-45) between each ray and the nearest image axis, shape (n_views * n_det,)."""
    import astra

    vecs = astra.geom_2vec(geometry.to_astra())["Vectors"]
    out = []
    for v in vecs:
        if geometry.type == "parallel":
            d = np.broadcast_to(np.array(v[:2]), (geometry.detector_count, 2))
        else:
            d = _bins(v, geometry.detector_count) - np.array(v[:2])
        a = np.degrees(np.arctan2(np.abs(d[:, 1]), np.abs(d[:, 0])))
        out.append(np.minimum(a, 90 - a))
    return np.concatenate(out)


def _error_by_ray_angle(geometry, astra_full, sym, exact) -> list[tuple[str, float, float]]:
    """(ray angle band, ASTRA vs exact, sym vs exact): relative Frobenius error of the rows of rays
    whose angle to the nearest image axis lies in the band."""
    angle = _ray_axis_angles(geometry)
    rows = []
    for lo, hi in ((0, 2), (2, 5), (5, 15), (15, 30), (30, 45.01)):
        sel = np.flatnonzero((angle >= lo) & (angle < hi))
        if sel.size:
            e = exact[sel]
            rows.append((f"{lo:g}-{min(hi, 45):g} deg", rel(astra_full[sel], e), rel(sym[sel], e)))
    return rows


def _angle_check(geometry, grid, ptype, sym) -> list[tuple[int, float, float]]:
    """Is the angle arithmetic the cause? For views a quarter turn from a stored view: ASTRA's rows
    from the angle vs from a vector geometry whose vectors are the stored view's, exactly rotated
    (component swaps and sign changes, exact in floating point); and the symmetric rows vs the latter."""
    import astra

    vecs = astra.geom_2vec(geometry.to_astra())["Vectors"]
    vol = grid.slice_grid().to_astra()
    nd, n = geometry.detector_count, geometry.n_angles

    def rows_of(v):
        pid = astra.create_projector(ptype, astra.create_proj_geom("fanflat_vec", nd, np.atleast_2d(v)), vol)
        mid = astra.projector.matrix(pid)
        try:
            return astra.matrix.get(mid).tocsr().astype(np.float64)
        finally:
            astra.matrix.delete(mid)
            astra.projector.delete(pid)

    out = []
    for u in (n // 4, n // 4 + 1, n // 2, 3 * n // 4):
        if n % 4:
            break
        s, q = u % (n // 4), u // (n // 4)
        v = np.array(vecs[s], dtype=np.float64)
        for _ in range(q):  # +90 degrees: (x, y) -> (-y, x) for source, detector and pixel vectors
            v = np.array([-v[1], v[0], -v[3], v[2], -v[5], v[4]])
        from_angle, rotated = rows_of(vecs[u]), rows_of(v)
        out.append((u, rel(from_angle, rotated) if sp.linalg.norm(from_angle - rotated) else 0.0,
                    rel(sym[u * nd:(u + 1) * nd], from_angle)))
    return out


def rel(a, b) -> float:
    if sp.issparse(a):
        return float(sp.linalg.norm(a - b) / sp.linalg.norm(b))
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def measure(kind: str, n: int) -> dict:
    os.environ.setdefault("RECON_CACHE_DIR", "/tmp/recon-symmetry-accuracy-cache")
    geometry, grid, ptype = case(kind, n)
    t0 = time.perf_counter()
    astra_full = AstraCPUProjector(geometry, grid, ptype).sparse_matrix().astype(np.float64)
    t_astra = time.perf_counter() - t0
    t0 = time.perf_counter()
    tiled = tiled_matrix_transpose(geometry.to_astra(), ptype, grid.slice_shape, grid.voxel_size).T.tocsr()
    t_tiled = time.perf_counter() - t0
    tiled = tiled.astype(np.float64)
    sym_op = AstraMatrixProjector(geometry, grid, ptype, use_cache=False, threads=1)
    sym = sym_op.matrix.astype(np.float64)
    exact = exact_matrix(geometry, grid, ptype)
    nd = geometry.detector_count
    per_view = []
    for u in range(geometry.n_angles):
        sl = slice(u * nd, (u + 1) * nd)
        e = exact[sl]
        per_view.append((rel(sym[sl], astra_full[sl]), rel(astra_full[sl], e), rel(sym[sl], e), rel(tiled[sl], e),
                         rel(sym[sl], tiled[sl])))
    per_view = np.array(per_view)
    by_angle = _error_by_ray_angle(geometry, astra_full, sym, exact)
    angle_check = _angle_check(geometry, grid, ptype, sym) if kind == "fan" else None
    rng = np.random.default_rng(0)
    x = rng.random(n * n)
    yy, xx = np.mgrid[:n, :n]
    disk = (((xx - n / 2 + 0.5) ** 2 + (yy - n / 2 + 0.5) ** 2) < (0.4 * n) ** 2).astype(np.float64).ravel()
    y = rng.random(exact.shape[0])
    y_disk = exact @ disk
    ops = {"astra": astra_full, "tiled": tiled, "sym": sym, "exact": exact}
    prods = {}
    for name, f in (("fwd random", lambda m: m @ x), ("fwd disk", lambda m: m @ disk),
                    ("adj random", lambda m: m.T @ y), ("adj disk sinogram", lambda m: m.T @ y_disk)):
        r = {k: f(m) for k, m in ops.items()}
        prods[name] = {"sym-astra": rel(r["sym"], r["astra"]), "sym-tiled": rel(r["sym"], r["tiled"]),
                       "astra-exact": rel(r["astra"], r["exact"]), "tiled-exact": rel(r["tiled"], r["exact"]),
                       "sym-exact": rel(r["sym"], r["exact"])}
    return {"kind": kind, "n": n, "ptype": ptype, "views": geometry.n_angles, "stored": len(sym_op.symmetry.stored),
            "t_astra": t_astra, "t_tiled": t_tiled, "per_view": per_view, "angles": np.degrees(geometry.angles),
            "by_angle": by_angle, "angle_check": angle_check,
            "matrix": {"sym-astra": rel(sym, astra_full), "astra-exact": rel(astra_full, exact),
                       "tiled-exact": rel(tiled, exact), "sym-exact": rel(sym, exact), "sym-tiled": rel(sym, tiled)},
            "products": prods, "load": "%.2f / %.2f / %.2f" % os.getloadavg()}


def report(results: list[dict]) -> str:
    lines = ["# Accuracy of the matrix projectors (issue 17)", "",
             "`python benchmarks/symmetry_accuracy.py` (see its docstring). Relative 2-norm differences (Frobenius",
             "for matrices). `astra`: ASTRA's full matrix built on the whole image; `tiled`: the same kernel",
             f"built on {TILE}x{TILE}-pixel tiles (what recon-cli now stores); `sym`: the symmetry-compressed",
             "projector (stored views on tiles, other views by quarter turns and transposes); `exact`: float64",
             "reference weights (exact intersection lengths for `line_fanflat`, exact per-row linear",
             "interpolation for parallel `linear`). Random image / sinogram uniform in [0, 1); disk of radius",
             "0.4 n; `adj disk sinogram`: the adjoint of the disk's exact sinogram.", "",
             "## Why the symmetric views differ from ASTRA's own rows",
             "ASTRA's CPU kernels are float32 and step along each ray from the first image row (or column),",
             "adding a per-row increment to the ray position, so the rounding error grows along the ray. A near-axis",
             "ray splits each row between two pixels in proportion to position / tan(angle to the axis), which",
             "amplifies that drift into per-cent errors of single weights. A quarter turn reverses the stepping",
             "direction on one axis, so ASTRA's rows for view k + n/4 are not the permuted rows of view k; a",
             "transpose keeps the stepping order (those views differ 5-30x less). The angle arithmetic is not the cause:",
             "ASTRA's rows from a fanflat_vec geometry whose vectors are the exactly rotated vectors of the stored",
             "view are bit-identical to its rows from the angle. Both operators are equally far from the exact",
             "weights; building on tiles restarts every ray at each tile edge and removes most of the drift.", ""]
    for r in results:
        m, p = r["matrix"], r["products"]
        lines += [f"## {r['kind']} {r['n']}^2, {r['views']} views, `{r['ptype']}` ({r['stored']} stored views; "
                  f"load {r['load']})", "",
                  f"Build of all views: whole image {r['t_astra']:.1f} s, on tiles {r['t_tiled']:.1f} s.", "",
                  "| | sym vs astra | astra vs exact | tiled vs exact | sym vs exact | sym vs tiled |",
                  "| --- | --: | --: | --: | --: | --: |",
                  f"| matrix | {m['sym-astra']:.1e} | {m['astra-exact']:.1e} | {m['tiled-exact']:.1e} | "
                  f"{m['sym-exact']:.1e} | {m['sym-tiled']:.1e} |"]
        pv = r["per_view"]
        lines.append(f"| worst view | {pv[:, 0].max():.1e} | {pv[:, 1].max():.1e} | {pv[:, 3].max():.1e} | "
                     f"{pv[:, 2].max():.1e} | {pv[:, 4].max():.1e} |")
        for name, d in p.items():
            lines.append(f"| {name} | {d['sym-astra']:.1e} | {d['astra-exact']:.1e} | {d['tiled-exact']:.1e} | "
                         f"{d['sym-exact']:.1e} | {d['sym-tiled']:.1e} |")
        lines += ["", "By the ray's angle to the nearest image axis (matrix rows of those rays vs exact):", "",
                  "| ray angle | astra vs exact | sym vs exact |", "| --- | --: | --: |"]
        lines += [f"| {band} | {a:.1e} | {b:.1e} |" for band, a, b in r["by_angle"]]
        if r["angle_check"]:
            lines += ["", "Angle arithmetic: ASTRA's rows of view u from its angle vs from the exactly rotated vectors "
                      "of the stored view: " + ", ".join(f"view {u}: {d:.1e}" for u, d, _ in r["angle_check"]) +
                      " (0: bit-identical)."]
        worst = np.argsort(pv[:, 1])[::-1][:4]
        lines += ["", "ASTRA's least accurate views (angle: astra vs exact): " +
                  ", ".join(f"{r['angles'][u]:.0f} deg: {pv[u, 1]:.1e}" for u in worst), ""]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--kinds", nargs="+", default=["fan", "parallel"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    results = []
    for kind in args.kinds:
        for n in args.sizes:
            results.append(measure(kind, n))
            print(report(results[-1:]), flush=True)
    if args.out:
        args.out.write_text(report(results))


if __name__ == "__main__":
    main()
