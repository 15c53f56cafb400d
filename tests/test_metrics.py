"""Metrics against hand-computed values."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from rich.console import Console
from skimage.metrics import structural_similarity

from recon_cli.errors import ConfigError, InputError
from recon_cli.metrics import (METRIC_NAMES, MU_WATER, compute_metrics, data_residual, metrics_table,
                               print_metrics, to_hu)
from recon_cli.ops.operator import Operator


def _checker(n=32):
    """Reference with values exactly 0 and 1 (data range 1)."""
    yy, xx = np.mgrid[:n, :n]
    return (((yy // 4) + (xx // 4)) % 2).astype(np.float32)


def test_psnr_of_a_known_mse():
    ref = _checker()
    sign = np.where(np.arange(ref.size).reshape(ref.shape) % 2 == 0, 1.0, -1.0)
    recon = ref + 0.1 * sign  # every pixel off by 0.1: MSE = 0.01
    m = compute_metrics(recon, ref, names=["psnr", "rmse"])
    assert list(m) == ["psnr", "rmse"]
    assert m["psnr"] == pytest.approx(20.0, abs=1e-5)  # 10 log10(1 / 0.01)
    assert m["rmse"] == pytest.approx(0.1, rel=1e-6)
    m2 = compute_metrics(recon, ref, names=["psnr"], data_range=2.0)
    assert m2["psnr"] == pytest.approx(20.0 + 10 * math.log10(4.0), abs=1e-5)


def test_rel_err_rmse_and_hu_rmse_by_hand():
    ref = np.full((16, 16), 2 * MU_WATER)  # constant: range-free metrics still work
    recon = ref * 1.1
    m = compute_metrics(recon, ref, names=["rel_err", "rmse", "hu_rmse"])
    assert m["rel_err"] == pytest.approx(0.1, rel=1e-12)
    assert m["rmse"] == pytest.approx(0.2 * MU_WATER, rel=1e-12)
    assert m["hu_rmse"] == pytest.approx(200.0, rel=1e-9)  # 0.1 * 2 mu_w -> 0.2 * 1000 HU
    with pytest.raises(InputError, match="data range is zero"):
        compute_metrics(recon, ref, names=["psnr"])


def test_hu_conversion():
    assert to_hu(MU_WATER) == 0.0
    assert to_hu(0.0) == -1000.0
    assert to_hu(2 * MU_WATER) == pytest.approx(1000.0)
    assert np.allclose(to_hu(np.array([0.02, 0.04]), mu_water=0.02), [0.0, 1000.0])


def test_identical_images():
    ref = _checker() * np.float32(0.03)
    m = compute_metrics(ref.copy(), ref)
    assert m["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert m["psnr"] == math.inf
    assert m["rel_err"] == 0.0 and m["rmse"] == 0.0 and m["hu_rmse"] == 0.0


def test_ssim_matches_scikit_image_and_stacks_are_slice_averaged():
    rng = np.random.default_rng(0)
    ref = rng.random((3, 24, 24))
    recon = ref + 0.05 * rng.standard_normal(ref.shape)
    dr = float(ref.max() - ref.min())
    per_slice = [structural_similarity(r, x, data_range=dr) for r, x in zip(ref, recon)]
    m = compute_metrics(recon, ref)
    assert m["ssim"] == pytest.approx(np.mean(per_slice), rel=1e-12)
    mse = np.mean((recon - ref) ** 2)
    assert m["psnr"] == pytest.approx(10 * math.log10(dr**2 / mse), rel=1e-12)  # over the whole volume
    assert 0.3 < m["ssim"] < 0.99


def test_mask_restricts_every_metric():
    ref = _checker(40).astype(np.float64)
    recon = ref.copy()
    recon[:10, :10] += 0.5  # an error confined to the top-left corner
    mask = np.zeros(ref.shape, bool)
    mask[20:, 20:] = True  # far from the error (more than the SSIM window)
    m = compute_metrics(recon, ref, mask=mask)
    assert m["psnr"] == math.inf and m["rmse"] == 0.0 and m["rel_err"] == 0.0
    assert m["ssim"] == pytest.approx(1.0, abs=1e-12)
    unmasked = compute_metrics(recon, ref)
    assert unmasked["rmse"] == pytest.approx(math.sqrt(100 * 0.25 / 1600))
    assert unmasked["ssim"] < 0.99
    corner = np.zeros(ref.shape, bool)
    corner[:10, :10] = True
    mc = compute_metrics(recon, ref, mask=corner)
    assert mc["rmse"] == pytest.approx(0.5) and mc["psnr"] == pytest.approx(10 * math.log10(1 / 0.25))
    everything = compute_metrics(recon, ref, mask=np.ones(ref.shape, bool))
    assert everything == pytest.approx(unmasked)


def test_2d_mask_applies_to_every_slice_of_a_stack():
    ref = np.stack([_checker(16), _checker(16)]).astype(np.float64)
    recon = ref.copy()
    recon[:, 0, 0] += 0.3
    mask = np.ones((16, 16), bool)
    mask[0, 0] = False
    assert compute_metrics(recon, ref, mask=mask, names=["rmse"])["rmse"] == 0.0
    assert compute_metrics(recon, ref, names=["rmse"])["rmse"] == pytest.approx(0.3 / 16)


def test_default_names_and_passed_in_values():
    ref = _checker()
    assert list(compute_metrics(ref, ref)) == ["psnr", "ssim", "rel_err", "rmse", "hu_rmse"]
    assert compute_metrics(ref, residual=0.25, wall_time=1.5) == {"residual": 0.25, "wall_time": 1.5}
    assert compute_metrics(ref) == {}
    m = compute_metrics(ref, ref, residual=0.1, wall_time=2.0, names=["wall_time", "ssim"])
    assert list(m) == ["wall_time", "ssim"] and m["wall_time"] == 2.0


@pytest.mark.parametrize("kwargs,error,words", [
    ({"names": ["psnr"]}, ConfigError, "needs a reference"),
    ({"names": ["snr"]}, ConfigError, "unknown metric 'snr'"),
    ({"names": ["residual"]}, ConfigError, "not measured"),
    ({"reference": np.zeros((8, 9))}, InputError, "differs from reconstruction shape"),
    ({"reference": np.eye(8), "mask": np.ones((8, 8))}, InputError, "must be boolean"),
    ({"reference": np.eye(8), "mask": np.zeros((8, 8), bool)}, InputError, "no voxel"),
    ({"reference": np.eye(8), "mask": np.ones((4, 4), bool)}, InputError, "mask shape"),
])
def test_bad_requests(kwargs, error, words):
    with pytest.raises(error, match=words):
        compute_metrics(np.eye(8), **kwargs)


class _Matrix(Operator):
    def __init__(self, a):
        self.a = np.asarray(a, np.float32)
        self.domain_shape, self.range_shape = (self.a.shape[1],), (self.a.shape[0],)

    def forward(self, x):
        return self.a @ x

    def adjoint(self, y):
        return self.a.T @ y


def test_data_residual():
    op = _Matrix([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    x = np.array([1.0, 1.0], np.float32)
    y = np.array([1.0, 2.0, 2.0], np.float32)  # = A x
    assert data_residual(op, x, y) == 0.0
    y2 = np.array([1.0, 2.0, 4.0], np.float32)  # ||Ax - y|| = 2, ||y|| = sqrt(21)
    value = data_residual(op, x, y2)
    assert isinstance(value, float) and value == pytest.approx(2 / math.sqrt(21), rel=1e-6)


def test_table_and_print():
    metrics = {"psnr": 31.234, "ssim": 0.91234, "hu_rmse": 41.26, "wall_time": 2.5, "psnr_inf": math.inf}
    table = metrics_table(metrics)
    assert table.row_count == len(metrics)
    buf = io.StringIO()
    print_metrics(metrics, console=Console(file=buf, width=120))
    text = buf.getvalue()
    for expected in ("31.23 dB", "0.9123", "41.3 HU", "2.50 s", "inf"):
        assert expected in text
    assert set(METRIC_NAMES) >= {"psnr", "ssim", "rel_err", "rmse", "hu_rmse", "residual", "wall_time"}
