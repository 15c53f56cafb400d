"""unet's correction weight: output = x + a (net(x) - x); a from the model's metadata (chosen on the suite's
tuning cases by benchmarks/tuning/unet_correction_weight.py) or the ``correction_weight`` parameter."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from recon_cli.backend import Device
from recon_cli.io.hdf5 import read_sinogram
from recon_cli.networks import load_model, resolve_model_path, update_metadata
from recon_cli.projectors import make_projector
from recon_cli.solvers.params.unet import UNetParams
from recon_cli.solvers.registry import run_solver

REPO = Path(__file__).resolve().parents[1]
SHIPPED = "postproc_tv_envelope_big"
CHEAP_INPUT = {"name": "tv", "params": {"lam": 8.0, "iterations": 20}}


@pytest.fixture(scope="module")
def sample():
    sino = read_sinogram(REPO / "sample_data" / "shepp_logan_fan60.h5")
    return sino, make_projector(sino.geometry, sino.grid, Device("cpu"))


def _copy_with_weight(tmp_path: Path, weight: float) -> Path:
    pytest.importorskip("onnx")
    src = resolve_model_path(SHIPPED)
    dst = tmp_path / "m.onnx"
    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    meta = update_metadata(dst, "inference", {"correction_weight": weight})
    assert meta["inference"]["correction_weight"] == weight
    assert json.loads(dst.with_suffix(".json").read_text())["inference"]["correction_weight"] == weight
    return dst


def test_the_models_weight_blends_the_input_and_the_network(sample, tmp_path):
    sino, op = sample
    path = _copy_with_weight(tmp_path, 0.5)
    assert load_model(path).correction_weight == 0.5
    base = {"model": str(path), "pre_estimate": CHEAP_INPUT, "allow_mismatch": True, "on_implausible": "ignore"}
    blended = run_solver("unet", op, sino, base)
    full = run_solver("unet", op, sino, {**base, "correction_weight": 1.0})
    x = run_solver("tv", op, sino, CHEAP_INPUT["params"]).volume
    assert blended.info["correction_weight"] == 0.5 and full.info["correction_weight"] == 1.0
    np.testing.assert_allclose(blended.volume, x + 0.5 * (full.volume - x), rtol=1e-5,
                               atol=1e-6 * float(np.abs(full.volume).max()))
    assert float(np.abs(full.volume - x).max()) > 1e-3 * float(np.abs(x).max())  # the network did change x
    # the parameter wins over the metadata
    quarter = run_solver("unet", op, sino, {**base, "correction_weight": 0.25})
    np.testing.assert_allclose(quarter.volume, x + 0.25 * (full.volume - x), rtol=1e-5,
                               atol=1e-6 * float(np.abs(full.volume).max()))


def test_a_model_without_a_weight_is_applied_in_full(sample):
    sino, op = sample
    model = load_model("postproc_fan60")
    assert "inference" not in model.meta and model.correction_weight == 1.0
    rec = run_solver("unet", op, sino, {"model": "postproc_fan60"})
    assert rec.info["correction_weight"] == 1.0


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan")])
def test_weights_outside_zero_one_are_refused(bad):
    with pytest.raises(ValidationError):
        UNetParams(model=SHIPPED, correction_weight=bad)


def test_the_shipped_weight_is_the_choice_on_the_tuning_cases_only():
    """The shipped model's weight is what benchmarks/tuning/unet_correction_weight.py chooses from its tuning
    rows alone (benchmarks/results/unet_correction_weight.json), recorded with the cases it was chosen on."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    sys.path.insert(0, str(REPO / "benchmarks" / "tuning"))
    import unet_correction_weight as tuning

    results = json.loads(tuning.JSON_PATH.read_text())[SHIPPED]
    assert all(name.startswith("t") for name in results["tune"]) and all(n.startswith("s") for n in results["test"])
    weight, means = tuning.choose(results["tune"])
    assert weight == results["chosen"] == load_model(SHIPPED).correction_weight
    assert max(means) > means[-1]  # the blend beats the network alone on the tuning cases
    chosen_on = load_model(SHIPPED).meta["inference"]["chosen_on"]
    assert all(name in chosen_on for name in results["tune"]) and not any(n in chosen_on for n in results["test"])
