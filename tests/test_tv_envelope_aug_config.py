"""The third TV-input envelope design (training/postproc_tv_envelope_aug.yaml) reuses the second's cached pairs."""
from __future__ import annotations

from pathlib import Path

from recon_cli.learn.config import load_train_config
from recon_cli.learn.datasets import plan_samples

TRAINING = Path(__file__).resolve().parents[1] / "training"


def test_more_pairs_keep_the_keys_of_the_first_ones_and_of_the_validation_pairs():
    """A pair's key does not depend on the split sizes or the training settings, so a larger data.train
    reuses every cached pair of postproc_tv_envelope and only computes the new indices."""
    old = plan_samples(load_train_config(TRAINING / "postproc_tv_envelope.yaml"))
    new_cfg = load_train_config(TRAINING / "postproc_tv_envelope_aug.yaml", ["data.train=60"])
    new = plan_samples(new_cfg)
    assert new_cfg.training.dihedral and new_cfg.training.loss.kind == "elastic"
    assert [s.key for s in new["train"][: len(old["train"])]] == [s.key for s in old["train"]]
    assert [s.key for s in new["val"]] == [s.key for s in old["val"]]
    assert len(new["train"]) == 60 and len({s.key for s in new["train"]}) == 60  # the extra pairs are new ones
    assert not {s.key for s in new["train"]} & {s.key for s in new["val"]}  # validation stays apart
