"""Compiled (numba) symmetric products: bit-identical to the SciPy path, adjoint, threads, fallback, cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recon_cli.geometry import FanFlat2D, VolumeGrid, parallel_beam_geometry
from recon_cli.ops.operator import adjoint_mismatch
from recon_cli.projectors import astra_matrix, symmetric_kernels
from recon_cli.projectors.astra_matrix import AstraMatrixProjector

pytest.importorskip("numba")

REPO = Path(__file__).resolve().parents[1]


def fan(n_angles: int) -> FanFlat2D:
    angles = np.linspace(0.0, 2 * np.pi, n_angles, endpoint=False)
    return FanFlat2D(angles=angles, detector_spacing=1.1, detector_count=48, source_origin=60.0, origin_detector=40.0)


# geometry, grid, projector type: 8 transforms on one slice (one group of 8 columns), 8 transforms x 3
# slices (3 groups), 2 transforms (half turn) x 2 slices (4 columns: SciPy's kernels, see _use_compiled),
# parallel (4 transforms: SciPy's kernels for one slice), parallel stack of 2 (4 x 2: compiled)
CASES = {
    "fan60-square": (fan(60), VolumeGrid((32, 32), 0.8), "line_fanflat"),
    "fan64-stack3": (fan(64), VolumeGrid((3, 32, 32), 0.8), "line_fanflat"),
    "fan60-nonsquare": (fan(60), VolumeGrid((2, 28, 32), 0.8), "line_fanflat"),
    "parallel180-linear": (parallel_beam_geometry(180, 40, 0.9), VolumeGrid((32, 32), 0.8), "linear"),
    "parallel180-stack2": (parallel_beam_geometry(180, 40, 0.9), VolumeGrid((2, 32, 32), 0.8), "linear"),
}


@pytest.fixture(params=list(CASES), scope="module")
def pair(request, tmp_path_factory):
    """(numba operator, SciPy operator) sharing one cached matrix."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RECON_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    geometry, grid, ptype = CASES[request.param]
    compiled = AstraMatrixProjector(geometry, grid, ptype, threads=1, kernel="numba")
    plain = AstraMatrixProjector(geometry, grid, ptype, threads=1, kernel="scipy")
    yield compiled, plain
    mp.undo()


def _data(op, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random(op.domain_shape, dtype=np.float32), rng.random(op.range_shape, dtype=np.float32)


def test_compiled_path_is_used_with_compact_indices(pair):
    compiled, plain = pair
    assert compiled.kernel == "numba" and plain.kernel == "scipy"
    m = compiled._compiled.matrix
    assert m.indices.dtype == np.uint16 and m.data.dtype == np.float32  # < 65536 stored rays
    assert compiled.nbytes == m.nnz * 6 + m.indptr.nbytes < plain.nbytes


def test_compiled_equals_scipy_bit_for_bit(pair):
    compiled, plain = pair
    x, y = _data(compiled)
    assert np.array_equal(compiled.forward(x), plain.forward(x))
    assert np.array_equal(compiled.adjoint(y), plain.adjoint(y))
    assert np.abs(compiled.forward(x)).max() > 0 and np.abs(compiled.adjoint(y)).max() > 0


def test_compiled_adjoint(pair):
    compiled, _ = pair
    for seed in (0, 1):
        assert adjoint_mismatch(compiled, seed=seed) < 1e-6


def test_compiled_threads_equal_one_thread(pair, monkeypatch):
    compiled, _ = pair
    monkeypatch.setattr(astra_matrix.CompiledSymmetricProduct, "min_work", 0)  # split even tiny products
    two = compiled.with_threads(2)
    assert two.kernel == "numba" and len(two._compiled.ranges) == 2
    x, y = _data(compiled, 3)
    assert np.array_equal(two.adjoint(y), compiled.adjoint(y))  # each thread owns its rows
    f1, f2 = compiled.forward(x), two.forward(x)  # partial sinograms summed: rounding only
    assert np.linalg.norm(f2 - f1) <= 1e-6 * np.linalg.norm(f1)
    assert adjoint_mismatch(two) < 1e-6


def test_blocks_of_slices_equal_one_product(cache_dir):
    geometry, grid = fan(60), VolumeGrid((5, 24, 24), 1.0)
    whole = AstraMatrixProjector(geometry, grid, threads=1, kernel="numba")
    whole.max_columns = 1000
    blocked = AstraMatrixProjector(geometry, grid, threads=1, kernel="numba")
    blocked.max_columns = 16
    x, y = _data(whole, 5)
    assert np.array_equal(blocked.forward(x), whole.forward(x))
    assert np.array_equal(blocked.adjoint(y), whole.adjoint(y))


def test_scipy_without_numba_or_when_asked(cache_dir, monkeypatch):
    geometry, grid = fan(60), VolumeGrid((24, 24), 1.0)
    monkeypatch.setenv("RECON_PRODUCT_KERNEL", "scipy")
    assert AstraMatrixProjector(geometry, grid).kernel == "scipy"
    assert AstraMatrixProjector(geometry, grid, kernel="numba").kernel == "numba"  # the argument wins
    monkeypatch.delenv("RECON_PRODUCT_KERNEL")
    assert AstraMatrixProjector(geometry, grid).kernel == "numba"  # the default when numba is there
    monkeypatch.setattr(symmetric_kernels, "_KERNELS", None)
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` now raises ImportError
    op = AstraMatrixProjector(geometry, grid)
    assert op.kernel == "scipy"
    assert adjoint_mismatch(op) < 1e-6


def test_no_symmetry_keeps_scipy(cache_dir):
    angles = np.sort(np.random.default_rng(0).uniform(0, 2 * np.pi, 20))  # no view maps onto another
    geometry = FanFlat2D(angles=angles, detector_spacing=1.1, detector_count=48, source_origin=60.0,
                         origin_detector=40.0)
    op = AstraMatrixProjector(geometry, VolumeGrid((24, 24), 1.0))
    assert op.trivial and op.kernel == "scipy"


_CHILD = """
import json, sys
import numpy as np
import recon_cli.projectors, recon_cli.projectors.astra_matrix, recon_cli.solvers.fbp
before = 'numba' in sys.modules
from recon_cli.geometry import VolumeGrid, FanFlat2D
from recon_cli.projectors.astra_matrix import AstraMatrixProjector
g = FanFlat2D(angles=np.linspace(0, 2 * np.pi, 60, endpoint=False), detector_spacing=1.1, detector_count=48,
              source_origin=60.0, origin_detector=40.0)
op = AstraMatrixProjector(g, VolumeGrid((24, 24), 1.0), use_cache=False)
op.adjoint(op.forward(np.ones((24, 24), np.float32)))
print(json.dumps({"numba_at_import": before, "kernel": op.kernel}))
"""


def _child(env_update: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(env_update)
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_numba_is_lazy_and_caches_in_the_users_cache(tmp_path):
    result = _child({"XDG_CACHE_HOME": str(tmp_path / "xdg"), "RECON_CACHE_DIR": str(tmp_path / "cache")})
    assert result == {"numba_at_import": False, "kernel": "numba"}
    assert list((tmp_path / "xdg" / "recon-cli" / "numba").rglob("*.nbi"))  # compiled code cached there


def _blocker(tmp_path) -> Path:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # no folder can be made below it, even as root
    return blocker


def test_read_only_home_caches_in_the_recon_cache_dir(tmp_path):
    result = _child({"XDG_CACHE_HOME": str(_blocker(tmp_path) / "xdg"), "RECON_CACHE_DIR": str(tmp_path / "cache")})
    assert result["kernel"] == "numba"
    assert list((tmp_path / "cache" / "numba").rglob("*.nbi"))


def test_unwritable_cache_dirs_compile_in_memory(tmp_path):
    blocker = _blocker(tmp_path)
    result = _child({"XDG_CACHE_HOME": str(blocker / "xdg"), "RECON_CACHE_DIR": str(blocker / "cache")})
    assert result["kernel"] == "numba"
    assert not list((REPO / "recon_cli").rglob("*.nbi"))  # nothing written beside the package


def test_padding_lanes_give_the_scipy_columns(cache_dir):
    """2 transforms x 1 slice = 2 of 8 lanes used: the compiled group products, called directly, equal
    SciPy's (the projector itself routes such blocks to SciPy)."""
    geometry, grid = fan(60), VolumeGrid((28, 32), 0.8)
    op = AstraMatrixProjector(geometry, grid, threads=1, kernel="numba")
    assert len(op.symmetry.transforms) == 2 and not op._use_compiled(1) and op._use_compiled(4)
    rng = np.random.default_rng(7)
    x = rng.random((1, 28 * 32), dtype=np.float32)
    z = op._compiled.forward_groups(x, 1)  # (1, n_rays, 8): lanes 0-1 used
    cols = np.stack([np.ascontiguousarray(astra_matrix.transform_image(x.reshape(28, 32), g)).ravel()
                     for g in op.symmetry.transforms], axis=1)
    assert np.array_equal(z[0, :, :2], op.stored.T @ cols)
    y = np.zeros_like(z)
    y[0, :, :2] = rng.random((z.shape[1], 2), dtype=np.float32)
    w = op.stored @ y[0, :, :2]
    expected = sum(astra_matrix.inverse_transform_image(w[:, k].reshape(28, 32), g)
                   for k, g in enumerate(op.symmetry.transforms))
    assert np.allclose(op._compiled.adjoint_groups(y, 1).reshape(28, 32), expected, rtol=1e-6, atol=1e-6)
