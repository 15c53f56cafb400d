"""The cost model choosing ASTRA's direct projector or the matrix, and its override (projector.kind)."""
from __future__ import annotations

import logging

import h5py
import pytest

from recon_cli.projectors.cost_model import choose_cpu_projector, estimated_products
from test_memory import raw_pipeline, recon, stack, write_pipeline  # noqa: F401  (fixture)


def test_cost_model_prefers_direct_for_few_products_and_the_matrix_for_many():
    nnz = 10_000_000
    assert choose_cpu_projector(nnz, nnz // 8, estimated_products(False, None), 1, cached=False).kind == "astra"
    assert choose_cpu_projector(nnz, nnz // 8, estimated_products(True, 300), 1, cached=False).kind == "matrix"
    # a cached matrix pays from the first products; a stack amortises a build sooner
    assert choose_cpu_projector(nnz, nnz, 2, 1, cached=True).kind == "matrix"
    assert choose_cpu_projector(nnz, nnz, 4, 1, cached=False).kind == "astra"
    assert choose_cpu_projector(nnz, nnz, 4, 64, cached=False).kind == "matrix"
    assert estimated_products(True, 100) > estimated_products(True, 10) > estimated_products(False, None)


def _matrices(cache_dir):
    folder = cache_dir / "matrices"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_fbp_on_a_new_geometry_builds_no_matrix(tmp_path, stack, capsys, cache_dir, caplog):  # noqa: F811
    raw = raw_pipeline(stack, tmp_path / "fbp.h5", "fbp")
    with caplog.at_level(logging.INFO, logger="recon_cli.memory"):
        code, err = recon(capsys, "run", str(write_pipeline(tmp_path, raw)))
    assert code == 0, err
    assert _matrices(cache_dir) == []
    assert "projector: astra" in caplog.text and "set projector.kind to override" in caplog.text
    with h5py.File(tmp_path / "fbp.h5") as f:
        assert f["info"].attrs["projector_kind"] == "astra"


@pytest.mark.parametrize("solver, params, kind", [("sirt", {"iterations": 200}, "matrix"), ("fbp", {}, "astra")])
def test_long_runs_build_the_matrix_and_kind_overrides(tmp_path, stack, capsys, cache_dir,  # noqa: F811
                                                       solver, params, kind):
    raw = raw_pipeline(stack, tmp_path / "a.h5", solver, params)
    assert recon(capsys, "run", str(write_pipeline(tmp_path, raw)))[0] == 0
    with h5py.File(tmp_path / "a.h5") as f:
        assert f["info"].attrs["projector_kind"] == kind
    assert bool(_matrices(cache_dir)) == (kind == "matrix")
    other = "astra" if kind == "matrix" else "matrix"
    raw = dict(raw, name="override", projector={"kind": other}, output={"path": str(tmp_path / "b.h5")})
    assert recon(capsys, "run", str(write_pipeline(tmp_path, raw)))[0] == 0
    with h5py.File(tmp_path / "b.h5") as f:
        assert f["info"].attrs["projector_kind"] == other
