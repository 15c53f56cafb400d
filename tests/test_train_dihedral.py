"""Dihedral augmentation of training patches (training.dihedral): input and target turned together."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from recon_cli.errors import ConfigError  # noqa: E402
from recon_cli.learn.config import config_from_dict  # noqa: E402
from recon_cli.learn.train import Tensors, _batches, dihedral  # noqa: E402

RAW = {
    "name": "tiny",
    "geometry": {"type": "parallel", "n_angles": 30, "detector_count": 48, "detector_spacing": 1.0},
    "grid": {"shape": [32, 32], "voxel_size": 1.0},
    "data": {"sources": [{"kind": "coule"}], "train": 8, "val": 2},
    "model": {"depth": 2, "base_channels": 4},
    "training": {"epochs": 1, "batch_size": 4, "patch": 16, "threads": 1},
}


def _config(**training):
    raw = json.loads(json.dumps(RAW))
    raw["training"].update(training)
    return config_from_dict(raw)


def test_dihedral_gives_the_eight_symmetries_of_a_square():
    image = torch.arange(9.0).reshape(1, 3, 3)
    outs = {tuple(dihedral(image, k, m).flatten().tolist()) for k in range(4) for m in (False, True)}
    assert len(outs) == 8  # all distinct: the whole dihedral group
    assert torch.equal(dihedral(image, 0, False), image)
    assert torch.equal(dihedral(image, 1, False)[0], torch.tensor([[2.0, 5, 8], [1, 4, 7], [0, 3, 6]]))
    assert torch.equal(dihedral(image, 0, True)[0], image[0].flip(-1))
    for out in outs:  # a permutation of the pixels: nothing lost or invented
        assert sorted(out) == sorted(image.flatten().tolist())


def _data(n=8, size=32, channels=2):
    """Inputs whose first plane is a distinct ramp per sample, target = 2 x that plane + 1 (pixelwise)."""
    g = torch.Generator().manual_seed(1)
    image = torch.rand(n, 1, size, size, generator=g)
    x = torch.cat([image, torch.full((n, channels - 1, size, size), 0.25)], dim=1)
    return Tensors(x=x, y=2 * image + 1, x_raw=x)


def test_dihedral_batches_keep_each_input_aligned_with_its_target_and_do_turn_them():
    data = _data()
    plain = list(_batches(data, _config(), torch.Generator().manual_seed(0)))
    turned = list(_batches(data, _config(dihedral=True), torch.Generator().manual_seed(0)))
    assert len(turned) == len(plain) == 2
    for (xa, ya), (xb, yb) in zip(plain, turned):
        assert xb.shape == xa.shape == (4, 2, 16, 16) and yb.shape == ya.shape == (4, 1, 16, 16)
        assert torch.allclose(yb, 2 * xb[:, :1] + 1)  # the pixelwise relation survives: same transform on both
        assert torch.all(xb[:, 1:] == 0.25)  # constant extra planes stay constant
    # the first batch has the same shuffling and crops as without augmentation (the turns are drawn after
    # them): each of its patches is a symmetry of the plain one
    (xa, _), (xb, _) = plain[0], turned[0]
    moved = 0
    for pa, pb in zip(xa[:, 0], xb[:, 0]):
        options = [dihedral(pa, k, m) for k in range(4) for m in (False, True)]
        assert any(torch.equal(o, pb) for o in options)
        moved += not torch.equal(pa, pb)
    assert moved >= 1  # the transforms are actually drawn (7 of 8 move a random patch)


def test_dihedral_batches_are_deterministic_in_the_generator():
    data = _data()
    a = list(_batches(data, _config(dihedral=True), torch.Generator().manual_seed(3)))
    b = list(_batches(data, _config(dihedral=True), torch.Generator().manual_seed(3)))
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


def test_dihedral_without_patches_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError, match="training.dihedral"):
        _config(dihedral=True, patch=None)
    assert _config(dihedral=True).training.dihedral is True
    assert _config().training.dihedral is False  # off by default: existing configs train as before


def test_dihedral_training_runs_end_to_end_and_writes_finite_weights(tmp_path):
    from recon_cli.learn.train import train

    raw = json.loads(json.dumps(RAW))
    raw["data"]["cache_dir"] = str(tmp_path / "cache")
    raw["training"].update(dihedral=True, epochs=2, loss={"kind": "elastic", "alpha": 0.7})
    result = train(config_from_dict(raw), out_dir=tmp_path / "out")
    assert result.paths["onnx"].is_file()
    assert result.metadata["config"]["training"]["dihedral"] is True
    assert all(np.isfinite(float(v.float().abs().sum())) for v in result.model.state_dict().values())
