"""sgp_tv lam auto: the few-view rule (lam = min(1, s / FULL_SAMPLING) x the discrepancy lam), its
constant fitted on the evaluation suite's tuning cases only, and the chain restarted without projections."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import CountingOperator

from recon_cli.solvers.registry import run_solver
from recon_cli.solvers.sgp_tv import FULL_SAMPLING, SGP, SGPTVParams, absolute_weights, sampling_ratio

REPO = Path(__file__).resolve().parents[1]


def test_few_view_lam_auto_applies_the_sampling_factor():
    from cli_helpers import inverse_crime_case

    K, sino, _ = inverse_crime_case(48, 6, seed=2)  # 6 x 96 data values for 48^2 pixels: s = 0.25
    s = sampling_ratio(K)
    assert s == pytest.approx(6 * 96 / 48**2)
    assert s < FULL_SAMPLING
    params = {"lam": "auto", "iterations": 60, "search_iterations": 10}
    rec = run_solver("sgp_tv", K, sino, params)
    info = rec.info
    assert info["auto_lam_factor"] == pytest.approx(s / FULL_SAMPLING)
    assert info["sampling_ratio"] == pytest.approx(s)
    assert info["lam"] == pytest.approx(info["auto_lam_factor"] * info["lam_discrepancy"], rel=1e-12)
    # the factor 1 keeps the discrepancy lam, which the legs find the same way
    plain = run_solver("sgp_tv", K, sino, {**params, "auto_lam_factor": 1.0}).info
    assert plain["auto_lam_factor"] == 1.0
    assert plain["lam"] == pytest.approx(plain["lam_discrepancy"], rel=1e-12)
    assert plain["lam_discrepancy"] == pytest.approx(info["lam_discrepancy"], rel=1e-9)
    # the final run meets the residual of the smaller lam: below the discrepancy target
    final = float(np.linalg.norm(K.forward(rec.volume) - sino.data))
    assert final < info["discrepancy_target"]


def test_enough_views_keep_the_discrepancy_lam():
    from cli_helpers import inverse_crime_case

    K, sino, _ = inverse_crime_case(48, 40, seed=1)  # s = 1.67
    assert sampling_ratio(K) > FULL_SAMPLING
    info = run_solver("sgp_tv", K, sino, {"lam": "auto", "iterations": 60, "search_iterations": 10}).info
    assert info["auto_lam_factor"] == 1.0 and info["lam"] == info["lam_discrepancy"]


def test_restart_is_a_fresh_start_without_projections():
    """SGP.restart at a new lam continues exactly as a new SGP from the same x (lam auto's legs), with
    3 projections fewer (K x, K^T r, K^T y)."""
    from cli_helpers import inverse_crime_case

    K, sino, _ = inverse_crime_case(32, 12, seed=3)
    y = sino.data
    first = SGPTVParams(lam=1.0, iterations=15, intensity_scale=0.04)
    lam1, beta = absolute_weights(first, K.grid.voxel_size)
    lam2 = 3.0 * lam1
    second = first.model_copy(update={"iterations": 12})
    from recon_cli.solvers.algorithm import run

    counted = CountingOperator(K)
    chain = SGP(counted, y, lam1, beta, first)
    run(chain)
    x_mid = chain.x.copy()
    before = counted.calls
    chain.restart(lam2, second)
    run(chain)
    restarted = counted.calls - before

    counted_fresh = CountingOperator(K)
    fresh = SGP(counted_fresh, y, lam2, beta, second, x0=x_mid)
    run(fresh)
    assert restarted == counted_fresh.calls - 3
    assert chain.iteration == fresh.iteration == 12
    np.testing.assert_allclose(chain.x, fresh.x, rtol=0, atol=1e-4 * float(np.abs(fresh.x).max()))
    assert chain.history["objective"][-1] == pytest.approx(fresh.history["objective"][-1], rel=1e-4)


def _suite():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import sgp_lam_rule
    import suite_cases

    results = json.loads((REPO / "benchmarks" / "results" / "suite.json").read_text())
    return sgp_lam_rule, {s.name: s for s in suite_cases.suite()}, results


def test_full_sampling_is_the_fit_on_the_tuning_cases_only():
    """FULL_SAMPLING is what benchmarks/sgp_lam_rule.py fits on the suite's tuning cases
    (benchmarks/results/suite.json), and the fit never reads a test case: scrambling every test case's
    rows leaves it unchanged."""
    rule, specs, results = _suite()
    tuning = rule.rows_of(results, "tune", specs)
    assert {r["case"] for r in tuning} >= {"t05_anat_fan30A_2e4", "t06_coule_par45_1e4", "t08_neck_fan36A_1e5",
                                           "t09_ctsmall_par30_2e4"}  # the few-view tuning cases
    assert min(r["sampling"] for r in tuning) < FULL_SAMPLING  # the rule acts on tuning cases
    best, table = rule.fit(results, specs)
    assert best == pytest.approx(FULL_SAMPLING)
    assert table[best][0] >= -0.5  # within 0.5 dB of the oracle curves on every tuning case
    scrambled = copy.deepcopy(results)
    for name, entry in scrambled["cases"].items():
        if specs[name].split == "test":
            for row in entry.get("methods", {}).values():
                if "curve" in row:
                    row["curve"] = [[lam, -p] for lam, p in row["curve"]]
                if "lam" in row:
                    row["lam"] *= 7.0
                    row.pop("lam_discrepancy", None)
    assert rule.fit(scrambled, specs)[0] == best
