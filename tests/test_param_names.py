"""One name per idea across solvers: the former names still load for one release, with a warning.

graphla's ``psi`` / ``graph_mode`` / ``tau`` are now ``pre_estimate`` (as svtv), ``mode`` (as tv) and
``discrepancy_tau`` (as tv, sgp_tv, tikhonov). The typed parameters validated at load time are what
reaches the solver, and the iteration budget comes from them, not from key names.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from recon_cli.config import load_config
from recon_cli.solvers.graphla import GraphLaParams
from recon_cli.solvers.registry import SolverRef, get_solver, solver_names

from cli_helpers import recon_quiet

ROOT = Path(__file__).resolve().parents[1]


def test_former_graphla_names_load_with_a_deprecation_warning():
    with pytest.warns(FutureWarning, match="'psi' is deprecated.*'pre_estimate'"):
        p = GraphLaParams(psi={"name": "tv", "params": {"lam": 2.0}})
    assert p.pre_estimate.name == "tv"
    with pytest.warns(FutureWarning) as record:
        q = GraphLaParams(tau=1.2, graph_mode="3d")
    assert {str(w.message).split("'")[1] for w in record} == {"tau", "graph_mode"}
    assert (q.discrepancy_tau, q.mode) == (1.2, "3d")
    assert q == GraphLaParams(discrepancy_tau=1.2, mode="3d")
    with pytest.warns(FutureWarning, match="'tau' is deprecated"):
        assert q.tau == 1.2  # read under the former name, too


def test_current_names_give_no_warning_and_of_both_names_the_later_wins():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = GraphLaParams(pre_estimate={"name": "fbp"}, discrepancy_tau=1.1, mode="slicewise")
        assert p.discrepancy_tau == 1.1
    with pytest.warns(FutureWarning):
        assert GraphLaParams.model_validate({"tau": 1.1, "discrepancy_tau": 1.2}).discrepancy_tau == 1.2
    with pytest.warns(FutureWarning):
        assert GraphLaParams.model_validate({"discrepancy_tau": 1.2, "tau": 1.1}).discrepancy_tau == 1.1


def test_a_former_name_set_on_the_command_line_overrides_the_pipeline(tmp_path):
    """pipelines/unet.yaml names ``pre_estimate``; ``--set solver.params.input=...`` (the former name) wins."""
    with pytest.warns(FutureWarning, match="'input' is deprecated"):
        cfg = load_config(str(ROOT / "pipelines" / "unet.yaml"),
                          ["solver.params.input={name: fbp, params: {filter: hann}}"])
    assert cfg.solver.params["pre_estimate"]["params"]["filter"] == "hann" and "input" not in cfg.solver.params


def test_former_names_in_a_pipeline_resolve_to_the_current_ones(tmp_path, caplog):
    pipe = tmp_path / "g.yaml"
    pipe.write_text(yaml.safe_dump({"name": "g", "input": {"path": str(ROOT / "sample_data" / "shepp_logan_fan60.h5")},
                                    "solver": {"name": "graphla", "params": {"psi": {"name": "fbp"}, "tau": 1.05}},
                                    "output": {"path": str(tmp_path / "o.h5")}}))
    with pytest.warns(FutureWarning):
        cfg = load_config(str(pipe))
    assert cfg.solver.params["pre_estimate"]["name"] == "fbp" and cfg.solver.params["discrepancy_tau"] == 1.05
    assert "psi" not in cfg.solver.params and "tau" not in cfg.solver.params


def test_recon_validate_accepts_a_former_name(tmp_path, capsys):
    pipe = tmp_path / "g.yaml"
    pipe.write_text(yaml.safe_dump({"name": "g", "input": {"path": str(ROOT / "sample_data" / "shepp_logan_fan60.h5")},
                                    "solver": {"name": "graphla", "params": {"graph_mode": "slicewise"}},
                                    "output": {"path": str(tmp_path / "o.h5")}}))
    code, _, err = recon_quiet(capsys, "validate", str(pipe))
    assert code == 0, err


def test_shipped_pipelines_use_no_former_name():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for path in sorted((ROOT / "pipelines").glob("*.yaml")):
            load_config(str(path))


def test_shipped_model_metadata_still_loads():
    """Solver references stored in the shipped models' metadata validate without a deprecation."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("name"), str) and isinstance(node.get("params"), dict) \
                    and node["name"] in solver_names():
                found.append(node)
            for value in node.values():
                walk(value)

    for path in sorted((ROOT / "recon_cli" / "models").glob("*.json")):
        walk(json.loads(path.read_text()))
    assert len(found) >= 4
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for ref in found:
            SolverRef(name=ref["name"], params=ref["params"])


def test_the_parsed_parameters_are_validated_once():
    ref = SolverRef(name="svtv", params={"lam": 3.0, "pre_estimate": {"name": "sirt", "params": {"iterations": 7}}})
    parsed = ref.parsed()
    assert ref.parsed() is parsed and parsed.lam == 3.0
    assert parsed.pre_estimate.parsed().iteration_budget() == 7


@pytest.mark.parametrize("name", solver_names())
def test_every_iterative_solver_states_its_iteration_budget(name):
    spec = get_solver(name)
    budget = spec.params_model.model_construct().iteration_budget()  # defaults, no required model file
    if spec.iterative:
        assert isinstance(budget, int) and budget > 0
    elif not spec.iterative:
        assert budget is None


def test_a_run_validates_the_solver_parameters_once(tmp_path, capsys, monkeypatch):
    """Loaded (with a --set override) and run with output/device overrides: one validation."""
    from recon_cli.solvers.sirt import SIRTParams

    calls = []
    original = SIRTParams.model_validate.__func__

    def counting(cls, *args, **kwargs):
        calls.append(args)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(SIRTParams, "model_validate", classmethod(counting))
    code, _, err = recon_quiet(capsys, "run", str(ROOT / "pipelines" / "sirt.yaml"), "--set",
                               "solver.params.iterations=3", "-o", str(tmp_path / "x.h5"), "--device", "cpu")
    assert code == 0, err
    assert len(calls) == 1


def test_model_metadata_written_with_former_names_still_fits():
    """A model trained before a rename stores the former parameter names; they compare as the current ones."""
    from recon_cli.networks import param_differences
    from recon_cli.solvers.rising import rising_mismatches

    assert param_differences({"tau": 1.05, "R": 5}, {"discrepancy_tau": 1.05, "R": 5}) == ["discrepancy_tau", "tau"]
    assert param_differences({"tau": 1.05, "R": 5}, {"discrepancy_tau": 1.05, "R": 5}, {},
                             GraphLaParams.renamed) == []
    assert param_differences({"tau": 1.05}, {"discrepancy_tau": 1.2}, {}, GraphLaParams.renamed) == ["discrepancy_tau"]
    ref = SolverRef(name="graphla", params={"discrepancy_tau": 1.05})
    former = {new: old for old, new in GraphLaParams.renamed.items()}
    # as training wrote it before the rename: the resolved parameters under their former names
    trained = {"name": "graphla", "params": {former.get(k, k): v for k, v in ref.params.items()}}
    assert {"tau", "psi", "graph_mode"} <= set(trained["params"])
    meta = {"target": {"kind": "converged", "solver": trained}, "input": trained}
    k = ref.params["iterations"]
    assert rising_mismatches(meta, ref, k) == []
    other = SolverRef(name="graphla", params={"discrepancy_tau": 1.2})
    assert [f for f, _ in rising_mismatches(meta, other, k)] == ["pre_estimate.params.discrepancy_tau"]
