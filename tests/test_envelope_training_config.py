"""The shipped envelope training config (issue 14): held-out images stay held out; the training grid cap."""
from __future__ import annotations

from pathlib import Path

import pytest

from recon_cli.learn.config import REAL_SLICES, config_from_dict, load_train_config

REPO = Path(__file__).resolve().parents[1]
ABDOMEN = "explicit_VR-UN.dcm"  # the suite's abdomen cases (s03, s04, s05) must be images never seen
SHIPPED = sorted((REPO / "training").glob("*envelope*.yaml"))


def test_there_is_a_shipped_envelope_config():
    assert REPO / "training" / "postproc_envelope.yaml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_envelope_configs_never_train_on_the_abdomen_slice(path):
    cfg = load_train_config(path)
    assert ABDOMEN in REAL_SLICES  # a dicom source without names would take it: names must be explicit
    for source in cfg.data.sources:
        if source.kind == "dicom":
            files = [Path(f).name for f in [*source.names, *source.paths]]
            assert files and ABDOMEN not in files
        assert source.kind != "hdf5"  # no user files that might hold a suite image


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_envelope_configs_never_draw_a_suite_seed(path):
    """Procedural training images are seeded by SeedSequence([seed, split, index]) (three entries), the
    suite's by default_rng(5300..5312): the two can never coincide; check the plan says so."""
    from recon_cli.learn.datasets import plan_samples

    cfg = load_train_config(path, ["data.train=30", "data.val=2", "data.test=2"])
    for split in plan_samples(cfg).values():
        for spec in split:
            seed = spec.source.get("seed")
            assert isinstance(seed, list) and len(seed) == 3


def test_max_train_n_caps_the_simulated_grid_but_keeps_the_field_of_view(tmp_path):
    from recon_cli.learn.datasets import plan_samples

    raw = {"name": "cap", "grid": {"shape": [64, 64], "voxel_size": 1.0},
           "envelope": {"n_views": [20, 40], "pixel_size_mm": [0.2, 1.5], "grid": [16, 512], "I0": [1e4, 1e6]},
           "data": {"sources": [{"kind": "anatomy"}], "train": 60, "val": 1, "cache_dir": str(tmp_path)},
           "training": {"patch": 16}}
    free = [s.acquisition for s in plan_samples(config_from_dict(raw))["train"]]
    assert max(a["n"] for a in free) > 128  # 0.2 mm pixels over a 64 mm field: up to 320
    raw["envelope"]["max_train_n"] = 128
    capped = [s.acquisition for s in plan_samples(config_from_dict(raw))["train"]]
    assert max(a["n"] for a in capped) == 128
    assert all(a["n"] * a["pixel_size"] == pytest.approx(64.0) for a in capped)
    # pairs coarser than the cap are unchanged
    assert [a for a in capped if a["n"] < 128] == [a for a in free if a["n"] < 128]
