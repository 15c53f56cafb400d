"""The projection-matrix cache: size cap, least-recently-used eviction, `recon cache list|clear`."""
from __future__ import annotations

import json
import os
import time

import numpy as np
from click.testing import CliRunner

from recon_cli.cli.main import cli
from recon_cli.geometry import VolumeGrid, fan_beam_geometry
from recon_cli.projectors import matrix_cache
from recon_cli.projectors.astra_matrix import AstraMatrixProjector, matrix_cache_path


def _geometry(n_angles: int):
    return fan_beam_geometry(n_angles=n_angles, detector_count=40, detector_spacing=1.0,
                             source_origin=60.0, origin_detector=40.0)


GRID = VolumeGrid((24, 24), 1.0)


def _entry_sizes():
    return {e.path.name: e.size for e in matrix_cache.list_entries()}


def test_cap_is_enforced_least_recently_used_first(cache_dir, monkeypatch):
    geoms = [_geometry(n) for n in (8, 12, 16)]
    AstraMatrixProjector(geoms[0], GRID)
    one = sum(_entry_sizes().values())
    monkeypatch.setenv("RECON_CACHE_MAX", str(int(2.6 * one)))  # room for about two entries of this size
    time.sleep(0.02)
    AstraMatrixProjector(geoms[1], GRID)
    first, second = (matrix_cache_path(g, GRID) for g in geoms[:2])
    assert first.is_dir() and second.is_dir()
    os.utime(second / "meta.json", (time.time() - 100, time.time() - 100))  # second: least recently used
    AstraMatrixProjector(geoms[0], GRID)  # a load touches the first entry
    AstraMatrixProjector(geoms[2], GRID)
    assert sum(_entry_sizes().values()) <= matrix_cache.cache_cap()
    assert first.is_dir() and matrix_cache_path(geoms[2], GRID).is_dir()
    assert not second.exists()  # the least recently used went first


def test_matrix_larger_than_the_cap_is_not_cached(cache_dir, monkeypatch):
    monkeypatch.setenv("RECON_CACHE_MAX", "1k")
    op = AstraMatrixProjector(_geometry(8), GRID)
    assert not matrix_cache.list_entries()
    x = np.ones(GRID.shape, np.float32)
    assert np.isfinite(op.forward(x)).all() and op.forward(x).max() > 0


def test_default_cap_is_a_fraction_of_the_disk(cache_dir, monkeypatch):
    monkeypatch.delenv("RECON_CACHE_MAX", raising=False)
    cap = matrix_cache.cache_cap()
    import shutil

    free = shutil.disk_usage(cache_dir.parent).free
    assert 0 < cap <= matrix_cache.DEFAULT_CAP_FRACTION * free * 1.01 + 1


def test_incomplete_entry_is_ignored_and_evicted_first(cache_dir, monkeypatch):
    AstraMatrixProjector(_geometry(8), GRID)
    folder = matrix_cache_path(_geometry(8), GRID)
    (folder / "meta.json").unlink()  # as if a writer died before finishing
    entries = matrix_cache.list_entries()
    assert entries[0].path == folder and not entries[0].complete
    op = AstraMatrixProjector(_geometry(8), GRID)  # rebuilt, entry complete again
    assert (folder / "meta.json").is_file() and op.stored.nnz > 0


def test_cache_list_and_clear_commands(cache_dir, monkeypatch):
    monkeypatch.setenv("RECON_CACHE_MAX", "1G")
    AstraMatrixProjector(_geometry(8), GRID)
    AstraMatrixProjector(_geometry(12), GRID)
    runner = CliRunner()
    out = runner.invoke(cli, ["cache", "list"])
    assert out.exit_code == 0, out.output
    assert "2 entries" in out.output and "1.0 GiB (cap)" in out.output
    data = json.loads(runner.invoke(cli, ["cache", "list", "--json"]).output)
    assert len(data["entries"]) == 2 and data["cap_bytes"] == 1024**3
    assert data["total_bytes"] == sum(e["bytes"] for e in data["entries"]) > 0
    out = runner.invoke(cli, ["cache", "clear"])
    assert out.exit_code == 0 and "removed 2 entries" in out.output
    assert matrix_cache.list_entries() == []
    assert "0 entries" in runner.invoke(cli, ["cache", "list"]).output
