"""Phantoms, simulated data (no inverse crime, noise statistics), CT slices and `recon simulate`."""
from __future__ import annotations

import math

import numpy as np
import pytest

from recon_cli.backend import gpu_available
from recon_cli.errors import DeviceError, InputError
from recon_cli.geometry import (Parallel3D, VolumeGrid, fan_beam_geometry, parallel_beam_geometry,
                                reference_geometry)
from recon_cli.io.dicom_image import hu_to_mu, mu_to_hu, read_ct_slice, read_ct_slice_mu
from recon_cli.phantoms import (MU_WATER, SHEPP_LOGAN_ELLIPSES, Ellipse, coule_phantom, ellipse_image,
                                ellipse_line_integrals, phantom_stack, shepp_logan)
from recon_cli.projectors.astra_cpu import AstraCPUProjector
from recon_cli.simulate import block_mean, resample_image, simulate_sinogram

CT_SMALL = pytest.importorskip("pydicom.data").get_testdata_file("CT_small.dcm")


def _row_col(n: int, x: float, y: float) -> tuple[int, int]:
    """Pixel holding the point (x, y) of [-1, 1]^2; row 0 is +y."""
    return int((1 - y) / 2 * n), int((x + 1) / 2 * n)


def _fan_rays(geometry, sub: int = 8):
    """Source points and directions of ``sub`` rays per detector element (ASTRA's fanflat convention)."""
    th = geometry.angles
    src = np.stack([np.sin(th), -np.cos(th)], -1) * geometry.source_origin
    centre = np.stack([-np.sin(th), np.cos(th)], -1) * geometry.origin_detector
    u = np.stack([np.cos(th), np.sin(th)], -1)
    n = geometry.detector_count
    offsets = ((np.arange(n * sub) + 0.5) / sub - n / 2) * geometry.detector_spacing
    points = centre[:, None, :] + offsets[None, :, None] * u[:, None, :]
    return np.broadcast_to(src[:, None, :], points.shape), points - src[:, None, :]


def _analytic_fan(ellipses, geometry, half_width, sub: int = 8):
    origins, directions = _fan_rays(geometry, sub)
    p = ellipse_line_integrals(ellipses, half_width, origins, directions)
    return p.reshape(geometry.n_angles, geometry.detector_count, sub).mean(-1)


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ----------------------------------------------------------------------------- phantoms
def test_shepp_logan_values_in_per_mm():
    img = shepp_logan(256)
    assert img.shape == (256, 256) and img.dtype == np.float32
    assert img.min() == 0.0 and img.max() == pytest.approx(2 * MU_WATER)
    assert img[_row_col(256, 0.0, -0.3)] == pytest.approx(MU_WATER)  # brain = water
    assert img[_row_col(256, 0.0, 0.9)] == pytest.approx(2 * MU_WATER)  # skull
    assert img[_row_col(256, 0.22, 0.0)] == pytest.approx(0.75 * MU_WATER)  # right dark ellipse
    assert img[0, 0] == 0.0 and img[-1, -1] == 0.0  # air
    assert shepp_logan(37).shape == (37, 37)  # any size, odd too


def test_shepp_logan_orientation_row0_is_plus_y():
    n = 256
    img = shepp_logan(n)
    small = img[_row_col(n, 0.0, -0.606)]  # the three small ellipses: lower half (large row index)
    mirror = img[_row_col(n, 0.0, 0.606)]
    assert small > 1.1 * MU_WATER and mirror == pytest.approx(MU_WATER)
    assert img[_row_col(n, 0.0, 0.35)] > 1.1 * MU_WATER  # the big bright ellipse: upper half
    # agrees with scikit-image's (display-oriented) phantom, not with its mirror image
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    ref = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)
    inner = (img > 0.5 * MU_WATER) & (img < 1.5 * MU_WATER)
    corr = np.corrcoef(ref[inner], img[inner])[0, 1]
    corr_flipped = np.corrcoef(ref[inner], np.flipud(img)[inner])[0, 1]
    assert corr > 0.8 > 0.4 > corr_flipped


def test_ellipse_rasterisation_is_area_weighted():
    e = Ellipse(1.0, 0.37, 0.21, 0.1, -0.2, 0.4)
    for n in (64, 200):
        img = ellipse_image(n, [e], supersample=8)
        area = float(img.sum()) * (2.0 / n) ** 2
        assert area == pytest.approx(math.pi * e.a * e.b, rel=2e-3)


def test_coule_phantom_range_and_determinism():
    a = coule_phantom(128, np.random.default_rng(5))
    b = coule_phantom(128, np.random.default_rng(5))
    c = coule_phantom(128, np.random.default_rng(6))
    assert a.shape == (128, 128) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() == 0.0 and 0.0 < a.max() <= 2.5 * MU_WATER
    assert a[0, 0] == 0.0 and a[64, 64] > 0  # background outside the body, something inside
    assert len(np.unique(np.round(a[a > 0] / MU_WATER, 3))) >= 4  # several contrasts


def test_phantom_stack_shapes_and_errors():
    sl = phantom_stack("shepp-logan", 64, 3)
    assert sl.shape == (3, 64, 64) and np.array_equal(sl[0], shepp_logan(64))
    assert sl[2].sum() < sl[0].sum()  # shrinking head
    assert phantom_stack("coule", 32, 2, np.random.default_rng(0)).shape == (2, 32, 32)
    with pytest.raises(InputError, match="unknown phantom"):
        phantom_stack("cube", 32, 1)


def test_ellipse_line_integrals_disk_chords():
    disk = [Ellipse(2.0, 0.5, 0.5, 0.0, 0.0)]
    origins = np.array([[-100.0, 0.0], [-100.0, 30.0], [0.0, -100.0], [-100.0, 60.0]])
    dirs = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    p = ellipse_line_integrals(disk, 100.0, origins, dirs)  # disk radius 50 mm
    assert p == pytest.approx([2 * 100.0, 2 * 2 * math.sqrt(50**2 - 30**2), 200.0, 0.0])


# ----------------------------------------------------------------------------- resampling
def test_resample_area_average_and_interpolation():
    rng = np.random.default_rng(0)
    x = rng.random((12, 12))
    assert np.allclose(resample_image(x, 1.0, (4, 4), 3.0), block_mean(x, 3, (0, 1)), atol=1e-6)
    padded = resample_image(x, 1.0, (20, 20), 1.0)  # same pixels, centred, zero around
    assert np.allclose(padded[4:16, 4:16], x, atol=1e-6) and padded[:4].sum() == 0
    fine = resample_image(x, 2.0, (24, 24), 1.0)  # linear interpolation keeps the support and mean
    assert fine.shape == (24, 24) and abs(fine.mean() - x.mean()) < 0.02
    flat = resample_image(np.full((5, 5), 3.0), 1.5, (15, 15), 0.5)
    assert np.allclose(flat, 3.0)


# ----------------------------------------------------------------------------- simulation
@pytest.fixture(scope="module")
def fan_setup():
    geometry = fan_beam_geometry(n_angles=24, detector_count=256, detector_spacing=1.2)
    grid = VolumeGrid((128, 128), 1.0)
    fine = shepp_logan(256)  # drawn on the 2x finer grid (0.5 mm)
    return geometry, grid, fine, simulate_sinogram(fine, 0.5, geometry, grid)


def test_simulate_matches_exact_line_integrals(fan_setup):
    geometry, grid, _, sino = fan_setup
    assert sino.data.shape == (24, 256) and sino.data.dtype == np.float32
    exact = _analytic_fan(SHEPP_LOGAN_ELLIPSES, geometry, half_width=64.0)
    assert _rel(sino.data, exact) < 5e-3
    scale = float(np.sum(sino.data * exact) / np.sum(exact * exact))
    assert scale == pytest.approx(1.0, abs=5e-4)  # units: line integrals in (1/mm) x mm
    flipped = [Ellipse(e.value, e.a, e.b, e.x0, -e.y0, -e.phi) for e in SHEPP_LOGAN_ELLIPSES]
    assert _rel(sino.data, _analytic_fan(flipped, geometry, half_width=64.0)) > 0.02  # orientation


def test_simulate_has_no_inverse_crime(fan_setup):
    geometry, grid, fine, sino = fan_setup
    assert np.allclose(sino.reference, block_mean(fine, 2, (0, 1)), atol=1e-7)
    coarse = AstraCPUProjector(geometry, grid).forward(sino.reference)
    rel = _rel(sino.data, coarse)
    assert 1e-3 < rel < 2e-2, rel  # close, but not the model used to reconstruct
    crime = simulate_sinogram(sino.reference, 1.0, geometry, grid, upsample=1)  # the inverse crime
    assert np.allclose(crime.data, AstraCPUProjector(geometry, grid, "line_fanflat").forward(sino.reference),
                       rtol=1e-5, atol=1e-5)
    assert sino.metadata["sigma"] == 0.0 and "I0" not in sino.metadata


def test_simulate_parallel_and_image_resampling():
    geometry = parallel_beam_geometry(n_angles=30, detector_count=96, detector_spacing=1.0)
    grid = VolumeGrid((64, 64), 1.0)
    coarse_input = simulate_sinogram(shepp_logan(32), 2.0, geometry, grid)  # 32 px of 2 mm, interpolated
    fine_input = simulate_sinogram(shepp_logan(128), 0.5, geometry, grid)  # drawn on the fine grid
    assert coarse_input.reference.shape == (64, 64)
    assert _rel(coarse_input.data, fine_input.data) < 0.05
    # parallel exact line integrals: rays along -u_perp, t = x cos + y sin
    th, n = geometry.angles, geometry.detector_count
    t = ((np.arange(n * 8) + 0.5) / 8 - n / 2) * geometry.detector_spacing
    u = np.stack([np.cos(th), np.sin(th)], -1)
    ray = np.stack([np.sin(th), -np.cos(th)], -1)
    origins = t[None, :, None] * u[:, None, :] - 500 * ray[:, None, :]
    exact = ellipse_line_integrals(SHEPP_LOGAN_ELLIPSES, 32.0, origins,
                                   np.broadcast_to(ray[:, None, :], origins.shape))
    assert _rel(fine_input.data, exact.reshape(30, n, 8).mean(-1)) < 1e-2


def test_poisson_noise_statistics():
    # a uniform disk in parallel beam: every view sees the same profile p(t)
    geometry = parallel_beam_geometry(n_angles=400, detector_count=48, detector_spacing=1.0)
    grid = VolumeGrid((48, 48), 1.0)
    disk = ellipse_image(96, [Ellipse(0.03, 0.8, 0.8, 0.0, 0.0)])
    clean = simulate_sinogram(disk, 0.5, geometry, grid).data.astype(np.float64)
    I0 = 2000.0
    noisy = simulate_sinogram(disk, 0.5, geometry, grid, I0=I0, seed=7)
    assert noisy.metadata["I0"] == I0
    p = clean.mean(axis=0)
    inside = p > 0.3
    var = noisy.data.astype(np.float64).var(axis=0)
    ratio = var[inside] / (np.exp(p[inside]) / I0)
    assert 0.93 < ratio.mean() < 1.07 and np.all((ratio > 0.6) & (ratio < 1.4))
    assert np.abs(noisy.data.mean(axis=0) - p).max() < 0.01  # unbiased to first order
    assert noisy.metadata["sigma"] == pytest.approx(math.sqrt(np.mean(np.exp(clean) / I0)), rel=1e-6)


def test_zero_counts_are_clamped():
    geometry = parallel_beam_geometry(n_angles=4, detector_count=16, detector_spacing=1.0)
    grid = VolumeGrid((16, 16), 1.0)
    dense = np.full((16, 16), 2.0, np.float32)  # p ~ 32 -> exp(-p) I0 ~ 0 counts
    sino = simulate_sinogram(dense, 1.0, geometry, grid, I0=10.0, seed=0)
    assert np.all(np.isfinite(sino.data))
    assert sino.data.max() == pytest.approx(math.log(10.0 / 0.5), rel=1e-6)


def test_gaussian_noise_level_and_seeds(fan_setup):
    geometry, grid, fine, clean = fan_setup
    a = simulate_sinogram(fine, 0.5, geometry, grid, gaussian_rel=0.02, seed=3)
    b = simulate_sinogram(fine, 0.5, geometry, grid, gaussian_rel=0.02, seed=3)
    c = simulate_sinogram(fine, 0.5, geometry, grid, gaussian_rel=0.02, seed=4)
    e = a.data.astype(np.float64) - clean.data
    assert np.linalg.norm(e) / np.linalg.norm(clean.data) == pytest.approx(0.02, rel=1e-4)
    assert a.metadata["gaussian_rel"] == 0.02
    assert a.metadata["sigma"] == pytest.approx(0.02 * np.linalg.norm(clean.data) / math.sqrt(clean.data.size),
                                                rel=1e-3)
    assert np.array_equal(a.data, b.data) and not np.array_equal(a.data, c.data)
    p1 = simulate_sinogram(fine, 0.5, geometry, grid, I0=1e4, seed=1).data
    assert np.array_equal(p1, simulate_sinogram(fine, 0.5, geometry, grid, I0=1e4, seed=1).data)
    assert not np.array_equal(p1, simulate_sinogram(fine, 0.5, geometry, grid, I0=1e4, seed=2).data)


def test_simulate_slice_stack_equals_slices():
    geometry = fan_beam_geometry(n_angles=10, detector_count=64, detector_spacing=2.4)
    stack = phantom_stack("shepp-logan", 64, 3)
    grid = VolumeGrid((3, 32, 32), 2.0)
    sino = simulate_sinogram(stack, 1.0, geometry, grid)
    assert sino.data.shape == (3, 10, 64) and sino.reference.shape == (3, 32, 32)
    one = simulate_sinogram(stack[1], 1.0, geometry, grid.slice_grid())
    assert np.allclose(sino.data[1], one.data, atol=1e-6)
    assert not np.allclose(sino.data[0], sino.data[2])


def test_simulate_rejects_bad_input():
    geometry, grid = reference_geometry()
    img = shepp_logan(64)
    with pytest.raises(InputError, match="negative"):
        simulate_sinogram(-img, 4.0, geometry, grid)
    bad = img.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        simulate_sinogram(bad, 4.0, geometry, grid)
    with pytest.raises(InputError, match="dimensions"):
        simulate_sinogram(img[None], 4.0, geometry, grid)
    with pytest.raises(InputError):
        simulate_sinogram(img, 4.0, geometry, grid, upsample=0)
    with pytest.raises(InputError):
        simulate_sinogram(img, 4.0, geometry, grid, I0=-5.0)


@pytest.mark.skipif(gpu_available(), reason="checks the error raised without a GPU")
def test_3d_geometry_needs_gpu():
    geometry = Parallel3D(angles=np.linspace(0, np.pi, 8, endpoint=False), detector_spacing=1.0,
                          detector_count=16, detector_rows=8, detector_row_spacing=1.0)
    with pytest.raises(DeviceError, match="GPU"):
        simulate_sinogram(np.zeros((8, 16, 16), np.float32), 1.0, geometry, VolumeGrid((8, 16, 16), 1.0))


# ----------------------------------------------------------------------------- DICOM slices
def test_read_ct_small_slice():
    hu, spacing = read_ct_slice(CT_SMALL)
    assert hu.shape == (128, 128) and hu.dtype == np.float32
    assert spacing == pytest.approx(0.661468)
    assert hu.min() == -896.0 and hu.max() == 1167.0  # stored 128..2191, intercept -1024
    mu, _ = read_ct_slice_mu(CT_SMALL)
    assert mu.min() >= 0 and mu.max() == pytest.approx(0.0192 * 2.167, rel=1e-5)


def test_hu_mu_conversion():
    assert float(hu_to_mu(0.0)) == pytest.approx(0.0192)
    assert float(hu_to_mu(-1000.0)) == pytest.approx(0.0, abs=1e-9)
    assert float(mu_to_hu(0.0384)) == pytest.approx(1000.0)
    hu = np.array([-1000.0, -500.0, 0.0, 40.0, 1500.0], np.float32)
    assert np.allclose(mu_to_hu(hu_to_mu(hu)), hu, atol=1e-2)
    assert float(hu_to_mu(1000.0, mu_water=0.02)) == pytest.approx(0.04)


def test_read_ct_slice_errors(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    with pytest.raises(InputError, match="Modality"):
        read_ct_slice(get_testdata_file("MR_small.dcm"))
    text = tmp_path / "notes.dcm"
    text.write_text("not a dicom file")
    with pytest.raises(InputError, match="not a readable DICOM"):
        read_ct_slice(text)
    with pytest.raises(InputError, match="no such file"):
        read_ct_slice(tmp_path / "missing.dcm")
    ds = pydicom.dcmread(CT_SMALL)
    del ds.PixelSpacing
    no_spacing = tmp_path / "no_spacing.dcm"
    ds.save_as(no_spacing)
    with pytest.raises(InputError) as err:
        read_ct_slice(no_spacing)
    assert err.value.field == "PixelSpacing"


# ----------------------------------------------------------------------------- recon simulate
def _recon(argv) -> int:
    from recon_cli.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    return int(done.value.code)


def test_cli_simulate_writes_readable_file(tmp_path, capsys):
    hdf5 = pytest.importorskip("recon_cli.io.hdf5")
    out = tmp_path / "sim.h5"
    argv = ["simulate", str(out), "--phantom", "coule", "--size", "64", "--voxel-size", "2", "--angles", "20",
            "--detector-count", "128", "--detector-spacing", "2.4", "--I0", "1e4", "--seed", "5"]
    assert _recon(argv) == 0
    sino = hdf5.read_sinogram(out)
    assert sino.data.shape == (20, 128) and sino.reference.shape == (64, 64)
    assert sino.geometry.type == "fanflat" and sino.geometry.source_origin == 595.0
    assert sino.grid.voxel_size == 2.0 and sino.metadata["I0"] == 1e4 and sino.metadata["sigma"] > 0
    assert sino.reference.max() <= 2.5 * MU_WATER
    assert _recon(argv) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert _recon(argv + ["--overwrite", "--seed", "6"]) == 0
    assert not np.array_equal(hdf5.read_sinogram(out).data, sino.data)


def test_cli_simulate_dicom_stack_parallel(tmp_path):
    hdf5 = pytest.importorskip("recon_cli.io.hdf5")
    out = tmp_path / "ct.h5"
    argv = ["simulate", str(out), "--image", CT_SMALL, "--image-voxel-size", "1.0", "--geometry", "parallel",
            "--size", "64", "--voxel-size", "2", "--angles", "16", "--slices", "2", "--gaussian", "0.01"]
    assert _recon(argv) == 0
    sino = hdf5.read_sinogram(out)
    assert sino.data.shape == (2, 16, 64) and sino.geometry.type == "parallel"
    assert sino.geometry.detector_spacing == 2.0 and sino.geometry.angles[-1] < math.pi
    assert np.array_equal(sino.reference[0], sino.reference[1]) and sino.reference.max() > 0.03


def test_cli_simulate_errors(tmp_path, capsys):
    from pydicom.data import get_testdata_file

    out = str(tmp_path / "x.h5")
    assert _recon(["simulate", out, "--image", get_testdata_file("MR_small.dcm")]) == 2
    assert "Modality" in capsys.readouterr().err
    assert _recon(["simulate", out, "--phantom", "coule", "--image", CT_SMALL]) == 2
    assert _recon(["simulate", out, "--size", "0"]) == 2
    assert _recon(["simulate", out, "--I0", "-3"]) == 2
    assert not (tmp_path / "x.h5").exists()


def test_cli_simulate_from_hdf5_image(tmp_path):
    hdf5 = pytest.importorskip("recon_cli.io.hdf5")
    image = tmp_path / "image.h5"
    stack = phantom_stack("shepp-logan", 32, 2)
    hdf5.write_reconstruction(image, stack, 2.0, metrics={}, provenance={})
    out = tmp_path / "sim.h5"
    argv = ["simulate", str(out), "--image", str(image), "--size", "32", "--voxel-size", "2",
            "--angles", "12", "--detector-count", "64", "--detector-spacing", "2.4"]
    assert _recon(argv) == 0
    sino = hdf5.read_sinogram(out)
    assert sino.data.shape == (2, 12, 64) and sino.reference.shape == stack.shape
    # the image is interpolated linearly onto the 2x finer grid: /reference is its area average,
    # i.e. the image filtered by [1/8, 3/4, 1/8] along each axis (its border pixels are air)
    from scipy.ndimage import convolve1d

    smooth = convolve1d(convolve1d(stack, [0.125, 0.75, 0.125], axis=1), [0.125, 0.75, 0.125], axis=2)
    assert np.allclose(sino.reference, smooth, atol=1e-6)
    assert _recon(argv + ["--overwrite", "--slices", "3"]) == 2  # the image has 2 slices
