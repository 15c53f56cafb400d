"""The registries of input formats, output formats, projector kinds and preprocessing steps
(recon_cli.registries): a reader and a writer registered from this file work end to end through
``recon run``; the schema's choices and its one-line errors come from the registries."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import recon_quiet
from recon_cli import config as C
from recon_cli.errors import ConfigError
from recon_cli.registries import INPUT_FORMATS, OUTPUT_FORMATS, PREPROCESS_STEPS, PROJECTOR_KINDS, Registry, \
    reader_formats

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "shepp_logan_fan60.h5"


def read_npz_sinogram(path, *, scale: float | None = None):
    """Example reader: ``data`` (60, 512) and ``reference`` (256, 256) in an .npz, on the reference geometry;
    ``scale`` multiplies the data (an option only this format takes)."""
    from recon_cli.geometry import reference_geometry
    from recon_cli.sinogram import Sinogram

    geometry, grid = reference_geometry()
    with np.load(path) as f:
        data, reference = f["data"].astype(np.float32), f["reference"].astype(np.float32)
    if scale is not None:
        data = data * np.float32(scale)
    return Sinogram(data=data, geometry=geometry, grid=grid, reference=reference, metadata={"source": str(path)})


def write_npy(path, volume, voxel_size, facts, *, overwrite):
    """Example writer: the volume as .npy (written to a temporary name, then renamed)."""
    if Path(path).exists() and not overwrite:
        raise FileExistsError(path)
    tmp = Path(path).with_name(Path(path).name + ".part.npy")
    np.save(tmp, np.asarray(volume, np.float32))
    os.replace(tmp, path)


@pytest.fixture
def example_formats():
    INPUT_FORMATS.add("npz-sino", read_npz_sinogram, options=("scale",), hu=False)
    OUTPUT_FORMATS.add("npy", write_npy, suffix=".npy", folder=False, description="npy (.npy)")
    try:
        yield
    finally:
        INPUT_FORMATS.remove("npz-sino")
        OUTPUT_FORMATS.remove("npy")


def sample_as_npz(folder: Path) -> Path:
    from recon_cli.io.hdf5 import read_sinogram

    sino = read_sinogram(str(SAMPLE))
    path = folder / "sample.npz"
    np.savez(path, data=sino.data, reference=sino.reference)
    return path


def pipeline(folder: Path, name: str, input_path: Path, input_format: str, formats: list[str],
             extra_input: str = "") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\n"
                    f"input: {{path: {input_path}, format: {input_format}{extra_input}}}\n"
                    "solver: {name: fbp}\n"
                    f"output: {{path: {folder / 'out' / name}.h5, formats: [{', '.join(formats)}]}}\n"
                    "metrics: {list: [psnr, residual]}\n")
    return path


def test_a_registered_reader_and_writer_run_end_to_end(tmp_path, capsys, example_formats):
    npz = sample_as_npz(tmp_path)
    code, _, err = recon_quiet(capsys, "run", str(pipeline(tmp_path, "viaplugin", npz, "npz-sino", ["hdf5", "npy"])))
    assert code == 0, err
    code, _, err = recon_quiet(capsys, "run", str(pipeline(tmp_path, "viahdf5", SAMPLE, "hdf5", ["hdf5"])))
    assert code == 0, err
    import h5py

    with h5py.File(tmp_path / "out" / "viaplugin.h5", "r") as f:
        via_plugin = f["reconstruction"][()]
        psnr = float(f["metrics"].attrs["psnr"])
    with h5py.File(tmp_path / "out" / "viahdf5.h5", "r") as f:
        via_hdf5 = f["reconstruction"][()]
    written = np.load(tmp_path / "out" / "viaplugin.npy")
    # the same sinogram read by either reader gives the same reconstruction, bit for bit, in both writers
    assert written.shape == (256, 256) and written.dtype == np.float32
    assert np.array_equal(written, via_plugin) and np.array_equal(via_plugin, via_hdf5)
    assert psnr > 15  # the sample's FBP: 18.39 dB against the reference the reader supplied


def test_a_registered_reader_takes_only_its_options(tmp_path, example_formats):
    from recon_cli.io.formats import read_input

    npz = sample_as_npz(tmp_path)
    sino = read_input(npz, "npz-sino", scale=0.5)
    assert np.array_equal(sino.data, np.float32(0.5) * read_npz_sinogram(npz).data)
    with pytest.raises(Exception, match="series_uid do not apply to npz-sino input"):
        read_input(npz, "npz-sino", series_uid="1.2.3")


def test_the_schema_accepts_registered_names_only(tmp_path, example_formats):
    base = "name: p\ninput: {path: x.h5, format: %s}\nsolver: {name: fbp}\noutput: {formats: [%s]}\n"
    cfg = C.config_from_text(base % ("npz-sino", "hdf5, npy"))
    assert cfg.input.format == "npz-sino" and cfg.output_paths()["npy"] == Path("out/p.npy")
    with pytest.raises(ConfigError) as exc:
        C.config_from_text(base % ("auto", "hdf5, jpeg"), source="p.yaml")
    line = exc.value.one_line()
    assert "\n" not in line
    assert line == ("p.yaml:4: output.formats.1: unknown value 'jpeg'; valid values: hdf5, png, tiff, nifti, dicom, "
                    "tiff_slices, npy")
    with pytest.raises(ConfigError) as exc:
        C.config_from_text(base % ("npz_sin", "hdf5"), source="p.yaml")
    assert exc.value.one_line() == "p.yaml:2: input.format: unknown value 'npz_sin'; did you mean 'npz-sino'?"


def test_an_unregistered_name_is_refused_once_removed(tmp_path, capsys):
    """Without the example formats (the fixture not used) the same pipeline is bad input: exit 2, one line."""
    pipe = pipeline(tmp_path, "gone", SAMPLE, "hdf5", ["hdf5", "npy"])
    code, _, err = recon_quiet(capsys, "run", str(pipe))
    assert code == 2
    assert err.strip().splitlines() == [f"Error: {pipe}:4: output.formats.1: unknown value 'npy'; valid values: "
                                        "hdf5, png, tiff, nifti, dicom, tiff_slices"]
    assert not (tmp_path / "out").exists()


def test_schema_choices_are_the_registries():
    assert reader_formats() == ["hdf5", "nxtomo", "dxchange", "dicom-ctpd", "dicom"]
    assert PROJECTOR_KINDS.names() == ["astra", "matrix", "cuda"]
    assert PREPROCESS_STEPS.names() == ["log_transform", "remove_stripes"]
    steps = [PREPROCESS_STEPS.get(n)["model"] for n in PREPROCESS_STEPS.names()]
    assert steps == [C.LogTransformStep, C.RemoveStripesStep]
    with pytest.raises(ConfigError) as exc:
        C.config_from_text("name: p\ninput: {path: x.h5}\nprojector: {kind: matrx}\nsolver: {name: fbp}\n",
                           source="p.yaml")
    assert exc.value.one_line() == "p.yaml:3: projector.kind: unknown value 'matrx'; did you mean 'matrix'?"


def test_every_registered_target_exists():
    """Every built-in entry names an importable implementation (the registries import nothing until asked)."""
    for registry in (INPUT_FORMATS, OUTPUT_FORMATS, PREPROCESS_STEPS):
        for name in registry.names():
            entry = registry.get(name)
            if entry.target is not None:
                assert callable(entry.load()), name
            if "describe" in entry.facts:
                from recon_cli.registries import resolve

                assert callable(resolve(entry["describe"])), name
    for name in PROJECTOR_KINDS.names():
        target = PROJECTOR_KINDS.get(name).target
        module, _, cls = target.partition(":")
        source = (REPO / (module.replace(".", "/") + ".py")).read_text()
        assert f"class {cls}(" in source  # not imported: the CUDA module needs a GPU


def test_registry_refuses_a_name_twice_and_names_the_closest():
    registry = Registry("thing", "things")
    registry.add("alpha", "math:sqrt")
    with pytest.raises(RuntimeError, match="registered twice"):
        registry.add("alpha", "math:floor")
    assert registry.get("alpha").load()(9.0) == 3.0
    with pytest.raises(ConfigError) as exc:
        registry.get("alpah")
    assert exc.value.one_line() == "things: unknown thing 'alpah'; did you mean 'alpha'?"
    with pytest.raises(ConfigError) as exc:
        registry.get("zzz")
    assert exc.value.one_line() == "things: unknown thing 'zzz'; available: alpha"
