"""The cached solver catalogue behind ``recon solvers`` (recon_cli.cli.solver_catalogue): same
output as describing the solvers directly, no solver imported when cached, invalidated by code edits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import recon_in_fresh_process

from recon_cli.cli import solver_catalogue as sc

REPO = Path(__file__).resolve().parents[1]

def _recon(args: list[str], cache: Path) -> tuple[int, str, set[str]]:
    return recon_in_fresh_process(args, env=dict(os.environ, RECON_CACHE_DIR=str(cache)))


def test_second_call_uses_the_cache_with_the_same_output_and_no_solver_import(tmp_path):
    from recon_cli.cli.solvers_cmd import _describe_all

    for args in (["solvers", "--json"], ["solvers"], ["solvers", "sgp_tv", "--long"]):
        cache = tmp_path / ("c" + str(len(args)) + args[-1].strip("-"))
        code1, first, modules1 = _recon(args, cache)
        code2, second, modules2 = _recon(args, cache)
        assert code1 == code2 == 0 and first == second and first.strip()
        assert "recon_cli.solvers.registry" in modules1  # described directly, then stored
        assert not {"numpy", "pydantic", "recon_cli.solvers.registry", "recon_cli.solvers.tv"} & modules2
        assert len(list((cache / "catalogue").glob("solvers-*.json"))) == 1
    # the cached JSON is what describing the solvers in this process gives
    from recon_cli.cli.json_output import json_text

    _recon(["solvers", "--json"], tmp_path / "json")
    code, cached, _ = _recon(["solvers", "--json"], tmp_path / "json")
    assert code == 0 and json.loads(cached) == json.loads(json_text(_describe_all()))


def test_unknown_solver_name_still_fails_with_the_closest_name(tmp_path):
    _recon(["solvers", "--json"], tmp_path)  # fill the cache
    env = dict(os.environ, RECON_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "recon_cli", "solvers", "tvv"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "did you mean 'tv'" in proc.stderr


@pytest.fixture
def fresh_process(monkeypatch, tmp_path):
    """The catalogue as in a fresh process (registry not loaded), cached under tmp_path."""
    monkeypatch.setattr(sc, "usable", lambda: True)
    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_corrupt_catalogue_is_described_again_and_rewritten(fresh_process):
    calls = []

    def describe():
        calls.append(1)
        return [{"name": "x", "params": {"lam": {"default": 0.5}}}]

    expected = [{"name": "x", "params": {"lam": {"default": 0.5}}}]
    assert sc.described_solvers(describe) == expected and len(calls) == 1  # described, stored
    assert sc.described_solvers(describe) == expected and len(calls) == 1  # from the cache
    path = next((fresh_process / "catalogue").glob("solvers-*.json"))
    path.write_text("{not json")
    assert sc.described_solvers(describe) == expected and len(calls) == 2  # described again
    assert json.loads(path.read_text())["solvers"] == expected


def test_a_code_edit_makes_a_new_key_and_removes_the_old_catalogue(fresh_process, monkeypatch, tmp_path_factory):
    package = tmp_path_factory.mktemp("pkg")
    module = package / "mod.py"
    module.write_text("A = 1\n")
    monkeypatch.setattr(sc, "_PACKAGE", package)
    sc.described_solvers(lambda: [{"name": "a"}])
    old = list((fresh_process / "catalogue").glob("solvers-*.json"))
    module.write_text("A = 22\n")  # size (and mtime) change
    assert sc.described_solvers(lambda: [{"name": "b"}]) == [{"name": "b"}]
    new = list((fresh_process / "catalogue").glob("solvers-*.json"))
    assert len(old) == len(new) == 1 and old != new


def test_not_used_when_the_registry_is_loaded(monkeypatch, tmp_path):
    import recon_cli.solvers.registry  # noqa: F401  (loaded: a program may have registered its own solvers)

    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path))
    assert not sc.usable()
    assert sc.described_solvers(lambda: [{"name": "own"}]) == [{"name": "own"}]
    assert not (tmp_path / "catalogue").exists()


def test_unwritable_cache_folder_still_describes(fresh_process):
    (fresh_process / "catalogue").write_text("a file where the folder should be")
    assert sc.described_solvers(lambda: [{"name": "a"}]) == [{"name": "a"}]
