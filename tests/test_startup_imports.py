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


def test_validate_imports_only_the_solvers_the_pipeline_names():
    code, modules = modules_after(["validate", "pipelines/fbp.yaml"])
    assert code == 0 and "recon_cli.solvers.fbp" in modules
    assert not {"recon_cli.solvers.tv", "recon_cli.solvers.graphla", "recon_cli.solvers.rising",
                "recon_cli.solvers.unet"} & modules


def test_the_registry_table_is_every_registered_solver():
    from recon_cli.solvers import registry

    names = registry.solver_names()
    registry._load_all()
    assert set(names) == set(registry.SOLVER_MODULES) <= set(registry.REGISTRY)
    for name, module in registry.SOLVER_MODULES.items():
        assert registry.REGISTRY[name].solve.__module__ == f"recon_cli.solvers.{module}"
