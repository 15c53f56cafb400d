"""Relative paths in a pipeline are relative to the pipeline file; models are named; ``recon validate``
checks that inputs and models resolve. Every shipped pipeline runs from an empty folder."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from recon_cli.cli.main import main
from recon_cli.config import load_config
from cli_helpers import recon_quiet as recon  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PIPELINES = sorted(p.stem for p in (REPO / "pipelines").glob("*.yaml"))
#: Shipped pipelines that take more than ~10 s here (still run, in full, as slow tests).
LONG = {"graphla", "sgp_tv", "svtv", "svtv_learned", "tikhonov", "tpv", "tv"}




@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in LONG else n for n in PIPELINES])
def test_every_shipped_pipeline_runs_from_an_empty_folder(name, tmp_path, monkeypatch, capsys):
    if not (REPO / "sample_data" / "shepp_logan_fan60.h5").is_file():
        pytest.skip("sample_data not generated")
    monkeypatch.chdir(tmp_path)
    code, out, err = recon(capsys, "run", str(REPO / "pipelines" / f"{name}.yaml"), "-o", "out/x.h5", "--json")
    assert code == 0, err
    with h5py.File(tmp_path / "out" / "x.h5") as f:
        assert np.isfinite(f["reconstruction"][()]).all()


def test_shipped_pipelines_name_models_and_use_paths_relative_to_themselves(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in PIPELINES:
        text = (REPO / "pipelines" / f"{name}.yaml").read_text()
        body = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        assert not any("recon_cli/models" in line for line in body), name  # models by name, not by repository path
        cfg = load_config(REPO / "pipelines" / f"{name}.yaml")
        assert Path(cfg.input.path).is_absolute() and Path(cfg.input.path).exists(), name
        assert Path(cfg.output.path).parent == REPO / "out", name
        code, out, err = recon(capsys, "validate", str(REPO / "pipelines" / f"{name}.yaml"))
        assert code == 0 and out.startswith("OK"), err


def make_case(folder: Path, **pipeline) -> Path:
    """A pipeline in ``folder``/pipes/ whose input is ../data/x.h5 (the shipped Shepp-Logan sample)."""
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "x.h5").symlink_to(REPO / "sample_data" / "shepp_logan_fan60.h5")
    (folder / "pipes").mkdir()
    path = folder / "pipes" / "p.yaml"
    raw = {"name": "rel", "input": {"path": "../data/x.h5"}, "solver": {"name": "fbp"},
           "output": {"path": "../results/rel.h5"}, **pipeline}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_relative_paths_follow_the_pipeline_file_and_command_line_paths_the_current_folder(
        tmp_path, monkeypatch, capsys):
    if not (REPO / "sample_data" / "shepp_logan_fan60.h5").is_file():
        pytest.skip("sample_data not generated")
    pipe = make_case(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = recon(capsys, "run", str(pipe), "--json")
    assert code == 0, err
    assert (tmp_path / "project" / "results" / "rel.h5").is_file()  # output.path: relative to the file
    (elsewhere / "in.h5").symlink_to(REPO / "sample_data" / "shepp_logan_fan60.h5")
    code, _, err = recon(capsys, "run", str(pipe), "-i", "in.h5", "-o", "mine/o.h5", "--json")
    assert code == 0, err
    assert (elsewhere / "mine" / "o.h5").is_file()  # -i / -o: relative to the current folder
    with h5py.File(elsewhere / "mine" / "o.h5") as f:
        assert "in.h5" in f["provenance"].attrs["pipeline"]


def test_validate_refuses_a_missing_input_or_model_naming_file_line_and_field(tmp_path, monkeypatch, capsys):
    pipe = make_case(tmp_path / "project", solver={"name": "unet", "params": {"model": "no_such_model"}})
    monkeypatch.chdir(tmp_path)
    code, _, err = recon(capsys, "validate", str(pipe))
    assert code == 2
    shipped = ", ".join(sorted(p.stem for p in (REPO / "recon_cli" / "models").glob("*.onnx")))
    assert "postproc_fan60" in shipped
    assert err.strip() == (f"Error: {pipe}:7: solver.params.model: no_such_model: model not found (neither a file "
                           f"nor a shipped model's name; shipped: {shipped})")
    code, out, err = recon(capsys, "validate", str(pipe), "--set", "solver.params.model=postproc_fan60")
    assert code == 0, err
    (tmp_path / "project" / "data" / "x.h5").unlink()
    code, _, err = recon(capsys, "validate", str(pipe), "--set", "solver.params.model=postproc_fan60")
    assert code == 2
    missing = tmp_path / "project" / "data" / "x.h5"
    assert err.strip() == f"Error: {pipe}:3: input.path: {missing}: not found"


def test_a_model_file_next_to_the_pipeline_is_found_by_a_relative_path(tmp_path, monkeypatch, capsys):
    pipe = make_case(tmp_path / "project", solver={"name": "unet", "params": {"model": "models/mine.onnx"}})
    (tmp_path / "project" / "pipes" / "models").mkdir()
    (tmp_path / "project" / "pipes" / "models" / "mine.onnx").symlink_to(
        REPO / "recon_cli" / "models" / "postproc_fan60.onnx")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(pipe)
    assert cfg.solver.params["model"] == str(tmp_path / "project" / "pipes" / "models" / "mine.onnx")
    code, out, err = recon(capsys, "validate", str(pipe))
    assert code == 0, err
