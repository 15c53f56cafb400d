"""Pipeline schema: defaults, FILE:LINE errors with suggestions, --set overrides, resolved form and hash."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from recon_cli import config as C
from recon_cli.errors import ConfigError
from recon_cli.solvers import registry as R

REPO = Path(__file__).resolve().parents[1]


class DummyParams(R.SolverParams):
    iterations: int = R.unit("1", "number of iterations", default=10, ge=1)
    lam: float = R.unit("1/mm", "regularisation weight", default=1e-2, gt=0)
    warm: Optional[R.SolverRef] = R.unit("-", "warm start solver", default=None)


@pytest.fixture(autouse=True)
def dummy_solver(monkeypatch):
    """A registered solver 'dummy' for the duration of one test."""
    R._load_all()
    spec = R.SolverSpec("dummy", DummyParams, lambda *a, **k: None, "test solver", True)
    monkeypatch.setitem(R.REGISTRY, "dummy", spec)
    return spec


BASE = """\
name: t
input: {path: a.h5}
solver:
  name: dummy
  params:
    iterations: 5
    lam: 1.0e-3
"""


def error_of(text: str, overrides=()) -> str:
    with pytest.raises(ConfigError) as exc:
        C.config_from_text(text, source="p.yaml", overrides=overrides)
    assert exc.value.exit_code == 2
    line = exc.value.one_line()
    assert "\n" not in line
    return line


def test_defaults_filled_and_resolved_round_trip():
    cfg = C.config_from_text(BASE, source="p.yaml")
    resolved = C.resolved_config(cfg)
    assert resolved["output"] == {"path": "out/t.h5", "formats": ["hdf5"], "png_window": None}
    assert resolved["device"] == "auto" and resolved["preprocess"] == []
    assert resolved["projector"] == {"kind": "auto", "type": "auto"}
    assert resolved["solver"]["params"] == {"iterations": 5, "lam": 1e-3, "warm": None}
    assert resolved["metrics"]["list"] == list(C.METRIC_NAMES) and resolved["metrics"]["mu_water"] == 0.0192
    again = C.config_from_dict(resolved)
    assert C.resolved_config(again) == resolved
    assert C.config_hash(again) == C.config_hash(cfg)
    assert cfg.output_paths() == {"hdf5": Path("out/t.h5")}


def test_empty_sections_take_defaults():
    cfg = C.config_from_text("name: t\ninput: {path: a.h5}\nsolver:\n  name: dummy\n  params:\n"
                             "preprocess:\noutput:\n")
    assert cfg.solver.params["iterations"] == 10 and cfg.preprocess == [] and cfg.output.path == "out/t.h5"


def test_hash_ignores_key_order_and_changes_with_values():
    reordered = "solver: {params: {lam: 0.001, iterations: 5}, name: dummy}\ninput: {path: a.h5}\nname: t\n"
    h = C.config_hash(C.config_from_text(BASE))
    assert C.config_hash(C.config_from_text(reordered)) == h
    assert C.config_hash(C.config_from_text(BASE, overrides=["solver.params.iterations=6"])) != h
    assert len(h) == 64


def test_misspelt_solver_param_names_line_and_suggestion():
    line = error_of(BASE.replace("iterations: 5", "iteratons: 5"))
    assert line == "p.yaml:6: solver.params.iteratons: unknown key 'iteratons'; did you mean 'iterations'?"


def test_misspelt_top_level_and_section_keys():
    assert error_of(BASE + "outptu: {path: x.h5}\n") == \
        "p.yaml:8: outptu: unknown key 'outptu'; did you mean 'output'?"
    assert error_of(BASE + "metrics:\n  mu_watr: 0.02\n") == \
        "p.yaml:9: metrics.mu_watr: unknown key 'mu_watr'; did you mean 'mu_water'?"
    with pytest.raises(C.ConfigErrors) as exc:  # every error at once, in file order
        C.config_from_text(BASE + "outptu: 1\ndevise: cpu\n", source="p.yaml")
    assert exc.value.lines() == ["p.yaml:8: outptu: unknown key 'outptu'; did you mean 'output'?",
                                 "p.yaml:9: devise: unknown key 'devise'; did you mean 'device'?"]


def test_nested_solver_reference_errors_point_inside_it():
    text = BASE + "    warm:\n      name: dummy\n      params: {lamb: 2}\n"
    assert error_of(text) == "p.yaml:10: solver.params.warm.params.lamb: unknown key 'lamb'; did you mean 'lam'?"
    text = BASE + "    warm: {name: dummy, lamb: 2}\n"
    assert error_of(text).startswith("p.yaml:8: solver.params.warm.lamb: unknown key 'lamb'")


def test_wrong_type_and_range():
    line = error_of(BASE.replace("iterations: 5", "iterations: many"))
    assert line.startswith("p.yaml:6: solver.params.iterations: ") and "integer" in line
    line = error_of(BASE.replace("iterations: 5", "iterations: 0"))
    assert line.startswith("p.yaml:6: solver.params.iterations: ") and "greater than or equal to 1" in line
    assert error_of(BASE + "device: gpuu\n") == "p.yaml:8: device: unknown value 'gpuu'; did you mean 'gpu'?"
    assert error_of(BASE + "metrics: {list: [psnr, ssmi]}\n") == \
        "p.yaml:8: metrics.list.1: unknown value 'ssmi'; did you mean 'ssim'?"


def test_missing_required_fields():
    assert error_of(BASE.replace("name: t\n", "")) == "p.yaml:1: name: missing required key"
    line = error_of("name: t\ninput: {format: hdf5}\nsolver: {name: dummy}\n")
    assert line == "p.yaml:2: input.path: missing required key"


def test_unknown_solver_and_preprocess_step():
    assert error_of(BASE.replace("name: dummy", "name: dumy")) == \
        "p.yaml:4: solver.name: unknown solver 'dumy'; did you mean 'dummy'?"
    assert error_of(BASE + "preprocess:\n  - {step: log_transfrom}\n") == \
        "p.yaml:9: preprocess.0: unknown step 'log_transfrom'; did you mean 'log_transform'?"
    cfg = C.config_from_text(BASE + "preprocess:\n  - {step: log_transform, I0: 1.0e+5}\n")
    assert isinstance(cfg.preprocess[0], C.LogTransformStep) and cfg.preprocess[0].I0 == 1e5
    assert "greater than 0" in error_of(BASE + "preprocess:\n  - {step: log_transform, I0: -1}\n")


def test_yaml_syntax_errors_and_duplicates():
    line = error_of("name: t\ninput: {path: a.h5\nsolver: {name: dummy}\n")
    assert line.startswith("p.yaml:3: YAML syntax error")
    assert error_of(BASE + "name: u\n") == "p.yaml:8: name: duplicate key 'name' (first on line 1)"
    assert error_of("") == "p.yaml:1: empty pipeline"
    assert error_of("- a\n- b\n").startswith("p.yaml:1: a pipeline must be a mapping")


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="pipeline file not found"):
        C.load_config(tmp_path / "missing.yaml")
    p = tmp_path / "x.yaml"
    p.write_text(BASE.replace("lam:", "lamda:"))
    with pytest.raises(ConfigError) as exc:
        C.load_config(p)
    assert exc.value.one_line() == f"{p}:7: solver.params.lamda: unknown key 'lamda'; did you mean 'lam'?"


def test_set_overrides_are_typed():
    cfg = C.config_from_text(BASE, overrides=["solver.params.lam=1e-3", "solver.params.iterations=7",
                                              "output.formats=[hdf5, png]", "device=cpu",
                                              "metrics.reference=ref.h5"])
    assert cfg.solver.params["lam"] == pytest.approx(1e-3) and isinstance(cfg.solver.params["lam"], float)
    assert cfg.solver.params["iterations"] == 7
    assert cfg.output.formats == ["hdf5", "png"] and cfg.device == "cpu"
    assert cfg.metrics.reference == "ref.h5"
    assert set(cfg.output_paths()) == {"hdf5", "png"}
    # new sections are created on the way
    cfg = C.config_from_text(BASE, overrides=["solver.params.warm.name=dummy", "solver.params.warm.params.lam=2"])
    assert cfg.solver.params["warm"]["params"]["lam"] == 2.0


def test_set_errors_name_the_override():
    assert error_of(BASE, ["solver.params.lamb=1"]) == "--set solver.params.lamb: unknown key 'lamb'; did you mean 'lam'?"
    line = error_of(BASE, ["solver.params.lam=abc"])
    assert line.startswith("--set solver.params.lam: ") and "number" in line
    assert error_of(BASE, ["solver.params={lamb: 1}"]) == \
        "--set solver.params: solver.params.lamb: unknown key 'lamb'; did you mean 'lam'?"
    assert error_of(BASE, ["noequals"]) == "--set: expected KEY.PATH=VALUE, got 'noequals'"
    assert error_of(BASE, ["input.path.x=1"]) == "--set input.path.x: 'input.path' is a value, not a section"
    assert error_of(BASE, ["preprocess.0.I0=3"]) == "--set preprocess.0.I0: 'preprocess' is not a list"


def test_with_overrides_revalidates():
    cfg = C.config_from_text(BASE, source="p.yaml")
    new = C.with_overrides(cfg, {"output.path": "o/x.h5", "device": None})
    assert new.output.path == "o/x.h5" and new.device == "auto"
    assert new.where("solver", "params", "iterations") == "p.yaml:6"
    with pytest.raises(ConfigError, match="--set device"):
        C.with_overrides(cfg, {"device": "tpu"})


def test_png_window_is_center_width():
    cfg = C.config_from_text(BASE + "output: {formats: [png], png_window: [40, 400]}\n")
    assert cfg.output.png_window == (40.0, 400.0)
    assert "width" in error_of(BASE + "output: {png_window: [40, 0]}\n")


def test_every_registered_solver_has_a_valid_pipeline(monkeypatch):
    monkeypatch.delitem(R.REGISTRY, "dummy")
    monkeypatch.chdir(REPO)
    names = R.solver_names()
    assert {"fbp"} <= set(names)
    missing = [n for n in names if not (REPO / "pipelines" / f"{n}.yaml").is_file()]
    assert not missing, f"solvers without pipelines/<name>.yaml: {missing}"
    from recon_cli.pipeline_checks import check_files

    for name in names:
        cfg = C.load_config(REPO / "pipelines" / f"{name}.yaml")
        assert cfg.solver.name == name
        check_files(cfg)
