"""Shared pytest set-up: GPU tests skip without a GPU (RECON_TEST_GPU=1 makes them fail instead),
and every test session uses its own projection-matrix cache, never the user's."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from recon_cli.backend import gpu_status

REPO = Path(__file__).resolve().parents[1]


def _gpu_forced() -> bool:
    return os.environ.get("RECON_TEST_GPU", "").strip() == "1"


def pytest_collection_modifyitems(config, items):
    """Mark ``@pytest.mark.gpu`` tests skipped when no GPU is usable, unless RECON_TEST_GPU=1."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    ok, reason = gpu_status()  # safe without a GPU: no CUDA call is made
    if ok or _gpu_forced():
        return
    skip = pytest.mark.skip(reason=f"no usable GPU ({reason}); RECON_TEST_GPU=1 forces these tests")
    for item in gpu_items:
        item.add_marker(skip)


def pytest_runtest_setup(item):
    """With RECON_TEST_GPU=1 and no GPU, fail GPU tests with a clear message before any CUDA call."""
    if item.get_closest_marker("gpu") and _gpu_forced():
        ok, reason = gpu_status()
        if not ok:
            pytest.fail(f"RECON_TEST_GPU=1 but no usable GPU: {reason}", pytrace=False)


@pytest.fixture(autouse=True, scope="session")
def _session_cache_dir(tmp_path_factory):
    """RECON_CACHE_DIR -> a temporary folder for the whole session (matrices are shared between tests)."""
    old = os.environ.get("RECON_CACHE_DIR")
    os.environ["RECON_CACHE_DIR"] = str(tmp_path_factory.mktemp("recon-cache"))
    yield
    if old is None:
        os.environ.pop("RECON_CACHE_DIR", None)
    else:
        os.environ["RECON_CACHE_DIR"] = old


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An empty cache folder of this test's own (RECON_CACHE_DIR points to it)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("RECON_CACHE_DIR", str(path))
    return path


@pytest.fixture
def run_sample_pipeline(tmp_path, monkeypatch):
    """A function ``run(pipeline) -> output path``: ``recon -q run <pipeline> -o <tmp>/<stem>.h5 --json`` from
    the repository root, for pipelines that read the Shepp-Logan sample (the test is skipped when
    sample_data is not generated); asserts exit status 0."""
    from recon_cli.cli.main import main

    def run(pipeline: str) -> Path:
        if not (REPO / "sample_data" / "shepp_logan_fan60.h5").is_file():
            pytest.skip("sample_data not generated")
        monkeypatch.chdir(REPO)
        out = tmp_path / f"{Path(pipeline).stem}.h5"
        with pytest.raises(SystemExit) as exc:
            main(["-q", "run", pipeline, "-o", str(out), "--json"])
        assert exc.value.code == 0
        return out

    return run


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A local Orthanc PACS for one test module (skips where Orthanc is not installed)."""
    from orthanc_server import running_orthanc, skip_reason

    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server
