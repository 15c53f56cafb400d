"""The training progress bar counts epochs: its total is the number of epochs, as its text says."""
from __future__ import annotations

import json
import re
from contextlib import contextmanager

import pytest

pytest.importorskip("torch")

from recon_cli.learn import train as train_module  # noqa: E402
from recon_cli.learn.config import config_from_dict  # noqa: E402

TINY = {
    "name": "tiny-progress",
    "geometry": {"type": "parallel", "n_angles": 20, "detector_count": 32, "detector_spacing": 1.0},
    "grid": {"shape": [16, 16], "voxel_size": 1.0},
    "noise": {"I0": 1.0e5},
    "data": {"sources": [{"kind": "coule"}], "train": 8, "val": 2, "test": 0},
    "input": {"name": "fbp"},
    "model": {"depth": 2, "base_channels": 4},
    "training": {"epochs": 3, "batch_size": 4, "patch": 16, "lr": 1.0e-3, "threads": 1},
}


def test_epoch_bar_total_is_the_number_of_epochs(tmp_path, monkeypatch):
    calls = []

    @contextmanager
    def recording(enabled):
        yield lambda kind, done, total, text="": calls.append((kind, done, total, text))

    monkeypatch.setattr(train_module, "_progress", recording)
    raw = json.loads(json.dumps(TINY))
    raw["data"]["cache_dir"] = str(tmp_path / "cache")
    train_module.train(config_from_dict(raw), out_dir=tmp_path / "out", progress=True)
    epochs = [(done, total, text) for kind, done, total, text in calls if kind == "epochs"]
    assert epochs and {total for _, total, _ in epochs} == {3}
    for done, total, text in epochs:
        shown = int(re.match(r"epoch (\d+)/(\d+), batch (\d+)/(\d+)", text).group(1))
        assert shown - 1 < done <= shown  # the bar's count (M of N) is the epoch the text names, once done
    assert epochs[-1][0] == 3 and epochs[-1][2].startswith("epoch 3/3, batch 2/2")
