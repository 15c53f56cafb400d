"""The numpy SSIM of recon_cli.metrics is scikit-image's structural_similarity (map and mean, borders
included) without importing scipy.ndimage; box_mean is scipy's uniform_filter (reflected borders)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import uniform_filter
from skimage.metrics import structural_similarity

from recon_cli.metrics import box_mean, compute_metrics, ssim_map
from recon_cli.phantoms import shepp_logan


@pytest.mark.parametrize("shape,win", [((24, 24), 7), ((7, 9), 7), ((5, 12), 5), ((3, 3), 3), ((40, 17), 7)])
def test_box_mean_is_scipy_uniform_filter(shape, win):
    image = np.random.default_rng(1).standard_normal(shape) * 3.0 + 1.0
    np.testing.assert_allclose(box_mean(image, win), uniform_filter(image, size=win), rtol=0, atol=1e-13)


@pytest.mark.parametrize("shape,win", [((24, 24), 7), ((9, 7), 7), ((6, 11), 5), ((64, 48), 7)])
def test_ssim_map_is_scikit_image_map_borders_included(shape, win):
    rng = np.random.default_rng(2)
    ref = 0.02 + 0.01 * rng.random(shape)
    recon = ref + 0.003 * rng.standard_normal(shape)
    dr = float(ref.max() - ref.min())
    mean, full = structural_similarity(ref, recon, data_range=dr, win_size=win, full=True)
    ours = ssim_map(ref, recon, dr, win)
    np.testing.assert_allclose(ours, full, rtol=0, atol=1e-12)
    pad = (win - 1) // 2
    assert ours[pad:shape[0] - pad, pad:shape[1] - pad].mean() == pytest.approx(mean, rel=1e-12)


def test_ssim_of_a_reconstruction_like_image_matches_to_1e_9():
    """Shepp-Logan (1/mm) against a noisy, blurred copy: SSIM equal to scikit-image's to 1e-9 (1e-6 needed)."""
    ref = shepp_logan(128).astype(np.float64)
    rng = np.random.default_rng(3)
    recon = uniform_filter(ref, 3) + 0.002 * rng.standard_normal(ref.shape)
    dr = float(ref.max() - ref.min())
    expected = structural_similarity(ref, recon, data_range=dr)
    assert compute_metrics(recon, ref, names=["ssim"])["ssim"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert 0.05 < expected < 0.99


def test_masked_ssim_on_the_border_uses_scikit_image_border_values():
    """A mask inside the 3-pixel border only: the map's reflected-border values, as scikit-image's."""
    rng = np.random.default_rng(4)
    ref = rng.random((20, 20))
    recon = ref + 0.1 * rng.standard_normal(ref.shape)
    mask = np.zeros(ref.shape, dtype=bool)
    mask[:2, :] = True
    dr = float(ref.max() - ref.min())
    full = structural_similarity(ref, recon, data_range=dr, full=True)[1]
    got = compute_metrics(recon, ref, names=["ssim"], mask=mask)["ssim"]
    assert got == pytest.approx(float(full[mask].mean()), rel=1e-12)
