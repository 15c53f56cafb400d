"""RISING training on the data's own grid (issue 14): pair weighting by the input's error, pairs of an empty
field left out, real slices that fill the field, and cache keys that survive a solver parameter added later."""
from __future__ import annotations

import numpy as np
import pytest

from recon_cli.learn.config import Augment, LossConfig
from recon_cli.learn.datasets import augment_key, empty_field, solver_key
from recon_cli.phantoms import MU_WATER


def test_relative_loss_weighs_each_pair_by_its_input_error():
    torch = pytest.importorskip("torch")
    from recon_cli.learn.losses import make_loss

    gen = torch.Generator().manual_seed(0)
    target = torch.rand((3, 1, 8, 8), generator=gen)
    inputs = target + torch.tensor([1e-3, 1e-2, 1e-1])[:, None, None, None] * torch.randn((3, 1, 8, 8), generator=gen)
    loss = make_loss(LossConfig(kind="mse", per_pair="relative", relative_floor=1e-9))
    absolute = make_loss(LossConfig(kind="mse"))
    # the input itself scores 1 whatever its error; halving every pair's error scores 1/4
    assert float(loss(inputs, target, inputs)) == pytest.approx(1.0, rel=1e-4)
    half = target + 0.5 * (inputs - target)
    assert float(loss(half, target, inputs)) == pytest.approx(0.25, rel=1e-4)
    # the pair closest to its target (1e-3) counts as much as the farthest (1e-1) in the relative loss, while
    # the absolute MSE hardly sees it: making it 10x worse doubles nothing there
    worse = inputs.clone()
    worse[0] = target[0] + 10 * (inputs[0] - target[0])
    assert float(loss(worse, target, inputs)) > 30.0
    assert float(absolute(worse, target)) < 1.1 * float(absolute(inputs, target))
    with pytest.raises(ValueError):
        loss(inputs, target)


def test_an_empty_field_is_recognised_and_a_body_is_not():
    from recon_cli.learn.anatomy import anatomy_phantom

    assert empty_field(np.zeros((64, 64), np.float32))
    assert empty_field(np.full((64, 64), 0.05 * MU_WATER, np.float32))  # air / noise level only
    assert not empty_field(anatomy_phantom(64, np.random.default_rng(0)))


def test_fill_crops_put_tissue_on_the_field_edges_and_off_keeps_the_old_images_and_keys():
    from recon_cli.learn.real_slices import augment_slice

    yy, xx = np.mgrid[-1:1:128j, -1:1:128j]
    body = np.where(xx**2 + yy**2 < 0.9, MU_WATER, 0.0).astype(np.float32)  # a round body, 1 mm pixels

    def border_tissue(aug, seed):
        out = augment_slice(body, 1.0, 64, 1.0, aug, np.random.default_rng(seed))
        edge = np.concatenate([out[0], out[-1], out[:, 0], out[:, -1]])
        return float(np.mean(edge > 0.5 * MU_WATER)), out

    plain = Augment(elastic=0.0, scale=(1.0, 1.0), crop=False)
    filled = Augment(elastic=0.0, scale=(1.0, 1.0), crop=False, fill=1.0)
    assert all(border_tissue(filled, s)[0] > 0.75 for s in range(4))  # a 64 mm field inside a 121 mm body
    assert all(border_tissue(plain, s)[0] == 0.0 for s in range(4))  # the whole body shrunk into the field
    # fill 0 draws nothing more: the images are those of an augmentation without the field, and so is the key
    np.testing.assert_array_equal(border_tissue(Augment(elastic=0.0, fill=0.0), 1)[1],
                                  border_tissue(Augment(elastic=0.0), 1)[1])
    assert "fill" not in augment_key(plain.model_dump(mode="json"))
    assert augment_key(filled.model_dump(mode="json"))["fill"] == 1.0


def test_cache_key_leaves_out_a_parameter_inert_for_the_run():
    spec = {"name": "sgp_tv", "params": {"lam": "noise", "iterations": 25, "auto_lam_factor": "auto"}}
    assert "auto_lam_factor" not in solver_key(spec)["params"]
    auto = {"name": "sgp_tv", "params": {"lam": "auto", "iterations": 25, "auto_lam_factor": 0.5}}
    assert solver_key(auto)["params"]["auto_lam_factor"] == 0.5
