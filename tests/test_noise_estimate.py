"""The noise level from the sinogram alone (regularisation_parameter.estimate_noise_model).

Three kinds of synthetic data, none of them in the evaluation suite: textured anatomy at high dose
(where a second-difference estimator read the texture as noise), Gaussian noise on a COULE phantom
with thin bright lines, and Poisson plus electronic noise on a parallel-beam scan.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from recon_cli.geometry import FanFlat2D, Parallel2D, VolumeGrid
from recon_cli.learn.anatomy import anatomy_phantom
from recon_cli.phantoms import coule_phantom
from recon_cli.simulate import simulate_sinogram
from recon_cli.solvers.regularisation_parameter import (NoiseModel, estimate_noise_model, estimate_noise_norm,
                                                        noise_norm)


def _fan(n: int, pixel: float, views: int) -> tuple[FanFlat2D, VolumeGrid]:
    so, od = 595.0, 490.0
    spacing = pixel * (so + od) / so
    count = int(math.ceil(2 * (so + od) * math.tan(math.asin(n * pixel / math.sqrt(2) / so)) / spacing)) + 2
    return FanFlat2D(angles=np.linspace(0, 2 * np.pi, views, endpoint=False), detector_spacing=spacing,
                     detector_count=count, source_origin=so, origin_detector=od), VolumeGrid((n, n), pixel)


def _true_std(noisy, clean) -> float:
    e = noisy.data.astype(np.float64) - clean.data.astype(np.float64)
    return float(np.sqrt(np.mean(e * e)))


def _estimated_over_true(image, pixel, geometry, grid, **noise):
    """(noise model, estimated std / true std) of ``image`` simulated with and without ``noise``."""
    clean = simulate_sinogram(image, pixel, geometry, grid)
    noisy = simulate_sinogram(image, pixel, geometry, grid, **noise)
    model = estimate_noise_model(noisy.data)
    return model, model.norm(noisy.data) / math.sqrt(noisy.data.size) / _true_std(noisy, clean), noisy


def test_textured_anatomy_at_high_dose():
    """Poisson I0 = 1e6 on a textured body: the object's own detail must not be read as noise."""
    geometry, grid = _fan(128, 1.5, 60)
    image = anatomy_phantom(256, np.random.default_rng(71))
    model, ratio, _ = _estimated_over_true(image, 0.75, geometry, grid, I0=1e6, seed=5)
    assert abs(ratio - 1) < 0.15
    assert model.I0 == pytest.approx(1e6, rel=0.3)   # the Poisson part is recognised


def test_gaussian_noise_on_thin_bright_lines():
    geometry, grid = _fan(128, 1.0, 90)
    image = coule_phantom(256, np.random.default_rng(72))
    model, ratio, noisy = _estimated_over_true(image, 0.5, geometry, grid, gaussian_rel=0.01, seed=6)
    assert abs(ratio - 1) < 0.15
    assert model.gaussian > 3 * model.poisson * math.exp(float(np.mean(noisy.data)))  # additive noise wins


def test_poisson_plus_electronic_noise_parallel_beam():
    n, pixel = 128, 0.8
    geometry = Parallel2D(angles=np.linspace(0, np.pi, 180, endpoint=False), detector_spacing=pixel,
                          detector_count=int(n * math.sqrt(2)) + 2)
    grid = VolumeGrid((n, n), pixel)
    image = anatomy_phantom(256, np.random.default_rng(73))
    clean = simulate_sinogram(image, pixel / 2, geometry, grid)
    noisy = simulate_sinogram(image, pixel / 2, geometry, grid, I0=2e4, seed=7)
    rng = np.random.default_rng(8)
    noisy.data = (noisy.data + 0.01 * rng.standard_normal(noisy.data.shape)).astype(np.float32)
    est = estimate_noise_norm(noisy.data) / math.sqrt(noisy.data.size)
    assert abs(est / _true_std(noisy, clean) - 1) < 0.15


def test_noise_model_is_used_without_metadata_and_metadata_wins():
    y = np.random.default_rng(0).normal(2.0, 0.05, size=(40, 200))
    e, source = noise_norm(y, {})
    assert "estimated" in source and abs(e / (0.05 * math.sqrt(y.size)) - 1) < 0.1
    assert noise_norm(y, {"sigma": 0.1})[0] == pytest.approx(0.1 * math.sqrt(y.size))
    assert NoiseModel(0.0, 1e-4).I0 == pytest.approx(1e4) and NoiseModel(1e-4, 0.0).I0 is None


def test_noise_estimate_refuses_unusable_sinograms():
    from recon_cli.errors import InputError

    with pytest.raises(InputError, match="detector elements"):
        estimate_noise_model(np.zeros((10, 6)))
    bad = np.ones((10, 50))
    bad[3, 7] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        estimate_noise_model(bad)
    assert estimate_noise_model(np.ones((10, 50))) == NoiseModel(0.0, 0.0)  # noise-free: no noise
