"""Start-up: the light commands import none of the heavy libraries, and the registry imports a
solver's module only when that solver is asked for. (Timings: benchmarks/results/speed.md.)"""
from __future__ import annotations

import pytest

from cli_helpers import recon_in_fresh_process

HEAVY = ("astra", "onnxruntime", "torch", "scipy.optimize", "scipy.sparse.linalg", "skimage", "h5py")


def modules_after(args: list[str]) -> tuple[int, set[str]]:
    code, _, modules = recon_in_fresh_process(args)
    return code, modules


@pytest.mark.parametrize("args", [["--version"], ["solvers"], ["solvers", "tv"],
                                  ["validate", "pipelines/fbp.yaml"], ["validate", "pipelines/svtv.yaml"]])
def test_light_commands_import_no_heavy_library(args):
    code, modules = modules_after(args)
    assert code == 0
    assert not [m for m in HEAVY if m in modules]


@pytest.mark.parametrize("args", [["solvers"], ["solvers", "rising"], ["validate", "pipelines/fbp.yaml"],
                                  ["validate", "pipelines/svtv.yaml"], ["validate", "pipelines/rising.yaml"],
                                  ["validate", "pipelines/unet.yaml"], ["validate", "pipelines/graphla.yaml"]])
def test_validate_and_solvers_import_no_numpy(args, tmp_path, monkeypatch):
    """The parameter models are declared without numpy (recon_cli.solvers.params), so checking a pipeline
    or listing the solvers (also on a first call, with no catalogue cached) imports no numerical code."""
    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path))
    code, modules = modules_after(args)
    assert code == 0
    assert "recon_cli.solvers.registry" in modules
    assert not {"numpy", "scipy", "recon_cli.geometry", "recon_cli.networks"} & modules
    assert not {m for m in modules if m.startswith("recon_cli.solvers.") and m.count(".") == 2} - {
        "recon_cli.solvers.registry", "recon_cli.solvers.params"}


def test_validate_imports_only_the_solvers_the_pipeline_names():
    code, modules = modules_after(["validate", "pipelines/fbp.yaml"])
    assert code == 0 and "recon_cli.solvers.params.fbp" in modules
    assert not {"recon_cli.solvers.params.tv", "recon_cli.solvers.params.graphla",
                "recon_cli.solvers.params.rising", "recon_cli.solvers.params.unet"} & modules


def test_the_registry_table_is_every_registered_solver():
    from recon_cli.solvers import registry

    names = registry.solver_names()
    registry._load_all()
    assert set(names) == set(registry.SOLVER_MODULES) <= set(registry.REGISTRY)
    for name, module in registry.SOLVER_MODULES.items():
        assert registry.REGISTRY[name].solve.__module__ == f"recon_cli.solvers.{module}"


def test_every_solver_is_registered_as_declared():
    """Each solver module registers the parameter model its numpy-free declaration names, with the
    declared description and kind; a registration with another model is refused."""
    from recon_cli.solvers import registry

    registry._load_all()
    for name in registry.SOLVER_MODULES:
        declared, spec = registry.DECLARED[name], registry.REGISTRY[name]
        assert spec.params_model is declared.params_model
        assert (spec.description, spec.iterative) == (declared.description, declared.iterative)
        assert declared.params_model.__module__ == f"recon_cli.solvers.params.{registry.SOLVER_MODULES[name]}"
    with pytest.raises(RuntimeError, match="another parameter model"):
        registry.register("fbp", registry.REGISTRY["tv"].params_model)
    with pytest.raises(RuntimeError, match="no declaration"):
        registry.register("not_declared_anywhere", registry.REGISTRY["tv"].params_model)


def test_solver_info_of_an_unknown_solver_names_the_closest():
    from recon_cli.errors import ConfigError
    from recon_cli.solvers.registry import solver_info

    with pytest.raises(ConfigError, match="did you mean 'svtv'"):
        solver_info("svtvv")
