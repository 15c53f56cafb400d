"""sgp_tv lam auto on few-view data: the constant of its rule, fitted on the suite's tuning cases only.

    .venv/bin/python benchmarks/sgp_lam_rule.py          # reads results/suite.json -> results/sgp_lam_rule.md

lam auto of sgp_tv = min(1, s / FULL_SAMPLING) x the discrepancy lam, s = data values per pixel of a
slice (recon_cli.solvers.sgp_tv.sampling_ratio). For every candidate FULL_SAMPLING, each tuning case's
PSNR at the lam the rule gives is read off that case's sgp_tv oracle curve (PSNR of 200-iteration solves
at lam on a sqrt(2) grid, interpolated linearly in log lam), without and with I0 / sigma in the file;
the candidate with the best worst-case gap (then the best mean gap) wins. Test cases are never read for
the fit; they are listed below it, for the record. The suite rows must hold the discrepancy lam
(``lam_discrepancy``; rows written before the rule existed hold it as ``lam``).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, md_table  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
#: Candidates of FULL_SAMPLING (data values per pixel above which the discrepancy lam is kept).
CANDIDATES = tuple(round(0.15 + 0.025 * k, 3) for k in range(19))  # 0.15 .. 0.60
KINDS = (("sgp_tv_auto", "est."), ("sgp_tv_autoI0", "I0"))


def interpolate(curve: list, lam: float) -> tuple[float, bool]:
    """(PSNR at ``lam`` on the oracle ``curve`` [(lam, psnr), ...] linear in log lam, inside the curve)."""
    pts = sorted((math.log(a), p) for a, p in curve)
    t = math.log(lam)
    if t <= pts[0][0]:
        return pts[0][1], t >= pts[0][0] - 1e-12
    if t >= pts[-1][0]:
        return pts[-1][1], t <= pts[-1][0] + 1e-12
    for (a, pa), (b, pb) in zip(pts, pts[1:]):
        if a <= t <= b:
            return pa + (pb - pa) * (t - a) / (b - a), True
    raise AssertionError("unreachable")


def rows_of(results: dict, split: str, specs: dict) -> list[dict]:
    """Per (case of ``split``, kind): discrepancy lam, sampling ratio, oracle curve and PSNR."""
    from suite_cases import case_geometry

    out = []
    for name, entry in results["cases"].items():
        spec = specs.get(name)
        if spec is None or spec.split != split:
            continue
        m = entry.get("methods", {})
        oracle = m.get("sgp_tv_oracle")
        if not oracle:
            continue
        geometry, grid = case_geometry(spec)
        sampling = len(geometry.angles) * geometry.detector_count / float(spec.n * spec.n)
        for method, kind in KINDS:
            a = m.get(method)
            if not a:
                continue
            out.append({"case": name, "kind": kind, "sampling": sampling,
                        "lam_discrepancy": float(a.get("lam_discrepancy", a["lam"])),
                        "curve": oracle["curve"], "oracle": float(oracle["psnr"]), "oracle_lam": float(oracle["lam"])})
    return out


def factor(sampling: float, full: float) -> float:
    return min(1.0, sampling / full)


def gaps(rows: list[dict], full: float) -> list[float]:
    return [interpolate(r["curve"], factor(r["sampling"], full) * r["lam_discrepancy"])[0] - r["oracle"]
            for r in rows]


def fit(results: dict, specs: dict) -> tuple[float, dict]:
    """(the chosen FULL_SAMPLING, {candidate: (worst gap, mean gap)}) from the tuning cases only."""
    rows = rows_of(results, "tune", specs)
    if not rows:
        raise ValueError("no tuning case with sgp_tv lam auto and oracle rows")
    table = {}
    for full in CANDIDATES:
        g = gaps(rows, full)
        table[full] = (min(g), sum(g) / len(g))
    best = max(CANDIDATES, key=lambda c: (round(table[c][0], 2), table[c][1]))
    return best, table


def main() -> int:
    from suite import merged_results
    from suite_cases import suite

    from recon_cli.solvers.sgp_tv import FULL_SAMPLING

    specs = {s.name: s for s in suite()}
    results = merged_results()
    best, table = fit(results, specs)
    L = ["# sgp_tv lam auto: the few-view rule (fitted on the tuning cases)", "",
         "Regenerate: `.venv/bin/python benchmarks/sgp_lam_rule.py` (reads results/suite.json). "
         "lam = min(1, s / FULL_SAMPLING) x the discrepancy lam, s = data values per pixel of a slice; PSNR at "
         "that lam read off each case's sgp_tv oracle curve (200-iteration solves on a sqrt(2) lam grid, linear "
         "in log lam). Gap = that PSNR - the oracle's.", "",
         f"Chosen on the tuning cases: **FULL_SAMPLING = {best}** (worst tuning gap {table[best][0]:+.2f} dB); "
         f"in the code: {FULL_SAMPLING}.", "",
         "## Candidates (tuning cases, without and with I0 in the file)", "",
         md_table(["FULL_SAMPLING", "worst gap", "mean gap"],
                  [[f"{c}", f"{w:+.2f}", f"{m:+.2f}"] for c, (w, m) in table.items()], "rrr"), ""]
    for split in ("tune", "test"):
        rows = rows_of(results, split, specs)
        cells = []
        for r in rows:
            f1 = interpolate(r["curve"], r["lam_discrepancy"])[0] - r["oracle"]
            fb, inside = interpolate(r["curve"], factor(r["sampling"], best) * r["lam_discrepancy"])
            cells.append([r["case"], r["kind"], f"{r['sampling']:.3f}", f"{r['lam_discrepancy']:.3g}",
                          f"{r['oracle_lam']:.3g}", f"{r['oracle_lam'] / r['lam_discrepancy']:.2f}",
                          f"{factor(r['sampling'], best):.2f}", f"{f1:+.2f}", f"{fb - r['oracle']:+.2f}"
                          + ("" if inside else " (edge)")])
        L += [f"## {'Tuning' if split == 'tune' else 'Test'} cases ({'fitted' if split == 'tune' else 'not read by the fit'})",
              "", md_table(["case", "noise", "s", "discrepancy lam", "oracle lam", "oracle / discrepancy", "factor",
                            "gap at factor 1 (interp.)", "gap at the rule (interp.)"], cells, "llrrrrrrr"), ""]
    (RESULTS / "sgp_lam_rule.md").write_text("\n".join(L))
    print(f"FULL_SAMPLING chosen {best} (worst tuning gap {table[best][0]:+.2f} dB); code: {FULL_SAMPLING}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
