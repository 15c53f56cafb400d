"""Regenerate the sample data in this folder: sinograms (HDF5 layout v1, each with /reference) and a
small DICOM CT series (head_dicom/).

    .venv/bin/python sample_data/make_sample_data.py [--out DIR] [--only NAME ...]

Deterministic: fixed seeds, so the HDF5 files are identical on every run; head_dicom/ has the same
pixels and patient/study attributes every run, but new series/instance UIDs and creation dates.
See README.md here.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from recon_cli.geometry import Parallel2D, VolumeGrid, fan_beam_geometry, parallel_beam_geometry, reference_geometry
from recon_cli.io.dicom_image import mu_to_hu, read_ct_slice_mu
from recon_cli.io.hdf5 import write_sinogram
from recon_cli.phantoms import Ellipse, ellipse_image, phantom_stack, shepp_logan
from recon_cli.simulate import block_mean, resample_image, simulate_sinogram

UPSAMPLE = 2
I0 = 1e5

#: CT_small.dcm is a 128 x 128 crop (84.7 mm) around a thoracic vertebra; we magnify it to fill the
#: 256 mm grid (pixel taken as 2 mm) and keep a disk of this diameter so the object fits the scan circle.
HEAD_PIXEL_MM = 2.0
HEAD_DISK_DIAMETER_MM = 248.0

#: head_dicom/: the head image at these scales (slice 1 = head_fan60.h5's /reference), 5 mm apart.
HEAD_DICOM_SCALES = (1.0, 0.95, 0.9)
HEAD_DICOM_SLICE_MM = 5.0
#: Fixed, clearly fictitious patient and study of head_dicom/ (copied into DICOM outputs made from it).
HEAD_DICOM_IDENTITY = {
    "PatientName": "SAMPLE^HEAD", "PatientID": "RECON-SAMPLE-0001", "PatientBirthDate": "", "PatientSex": "O",
    "StudyID": "SAMPLE1", "StudyDate": "20240101", "StudyTime": "120000", "AccessionNumber": "",
    "ReferringPhysicianName": "", "StudyDescription": "recon-cli sample head series (simulated, not a patient)",
}


#: shepp_logan_nxtomo.nxs: a small beamline-like NXtomo scan (parallel beam, 181 views over 0..180 degrees
#: inclusive, 2 detector rows of 160 pixels of 1 mm), the rotation axis NXTOMO_COR_PX right of the detector
#: centre, NXTOMO_STRIPES detector columns whose gain drifted by 5-7% after the flat field (stripes
#: in the sinogram, rings in the image), Poisson counts with a flat of NXTOMO_FLAT counts.
NXTOMO_COR_PX = 3.3
NXTOMO_FLAT = 20000.0
NXTOMO_DARK = 100.0
NXTOMO_STRIPES = {37: 0.93, 58: 1.06, 71: 0.95, 88: 1.07, 96: 0.94, 117: 1.05}


def write_nxtomo_sample(out: Path, seed: int = 5) -> None:
    """shepp_logan_nxtomo.nxs (see NXTOMO_*): NXtomo entry /entry (detector data uint16 with image_key,
    rotation_angle in degrees, x_pixel_size in m) and /reference (2, 128, 128), 1/mm, for the metrics."""
    import h5py

    from recon_cli.preprocess import shift_detector

    n, n_det, n_rows = 128, 160, 2
    angles = np.linspace(0.0, np.pi, 181)
    geometry = Parallel2D(angles=angles, detector_spacing=1.0, detector_count=n_det)
    grid = VolumeGrid((n_rows, n, n), 1.0)
    stack = phantom_stack("shepp-logan", n * UPSAMPLE, n_rows)
    sino = simulate_sinogram(stack, grid.voxel_size / UPSAMPLE, geometry, grid, upsample=UPSAMPLE,
                             simulated_from="phantom shepp-logan, 2 slices")
    p = shift_detector(np.asarray(sino.data), -NXTOMO_COR_PX)  # axis NXTOMO_COR_PX right of the centre
    gain = np.ones(n_det)
    for col, g in NXTOMO_STRIPES.items():
        gain[col] = g
    rng = np.random.default_rng(seed)
    expected = NXTOMO_DARK + (NXTOMO_FLAT - NXTOMO_DARK) * gain[None, None, :] * np.exp(-p)  # (rows, views, det)
    projections = rng.poisson(expected).transpose(1, 0, 2)
    flats = rng.poisson(np.full((2, n_rows, n_det), NXTOMO_FLAT))
    darks = rng.poisson(np.full((1, n_rows, n_det), NXTOMO_DARK))
    frames = np.concatenate([darks, flats, projections]).clip(0, 65535).astype(np.uint16)
    keys = np.array([2] + [1] * 2 + [0] * angles.size, np.int8)
    rotation = np.concatenate([[0.0] * 3, np.rad2deg(angles)])
    path = out / "shepp_logan_nxtomo.nxs"
    with h5py.File(path, "w", track_order=True) as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.create_dataset("definition", data="NXtomo")
        det = entry.create_group("instrument").create_group("detector")
        det.attrs["NX_class"] = "NXdetector"
        det.create_dataset("data", data=frames, compression="gzip", compression_opts=9, shuffle=True,
                           chunks=(1, n_rows, n_det))
        det.create_dataset("image_key", data=keys)
        det.create_dataset("x_pixel_size", data=1.0e-3).attrs["units"] = "m"
        sample = entry.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        sample.create_dataset("rotation_angle", data=rotation).attrs["units"] = "degree"
        ref = f.create_dataset("reference", data=np.asarray(sino.reference, np.float32), compression="gzip",
                               compression_opts=9, shuffle=True)
        ref.attrs["voxel_size"] = 1.0
        ref.attrs["units"] = "1/mm"
        f.attrs["source"] = (f"recon-cli sample_data/make_sample_data.py: phantom shepp-logan (2 slices), axis "
                             f"{NXTOMO_COR_PX} px right of the detector centre, {len(NXTOMO_STRIPES)} drifted "
                             f"detector columns (stripes), Poisson counts (flat {NXTOMO_FLAT:g}), seed {seed}")
    print(f"{path}: frames {frames.shape} uint16, reference {sino.reference.shape}, "
          f"{path.stat().st_size / 1024:.0f} KiB")


def _write(out: Path, name: str, image, image_voxel, geometry, grid, seed: int, source: str) -> None:
    sino = simulate_sinogram(image, image_voxel, geometry, grid, upsample=UPSAMPLE, I0=I0, seed=seed,
                             simulated_from=source)
    sino.metadata["sample"] = name
    path = out / name
    write_sinogram(path, sino, overwrite=True)
    print(f"{path}: sinogram {sino.data.shape}, reference {sino.reference.shape}, "
          f"sigma {sino.metadata['sigma']:.4f}, {path.stat().st_size / 1024:.0f} KiB")


def ct_small_on_fine_grid(n_fine: int, fine_voxel: float, scale: float = 1.0) -> np.ndarray:
    """pydicom's CT_small.dcm slice in 1/mm on the fine grid: magnified (``scale`` times the usual), masked to
    a disk."""
    from pydicom.data import get_testdata_file

    mu, _spacing = read_ct_slice_mu(get_testdata_file("CT_small.dcm"))
    fine = resample_image(mu, HEAD_PIXEL_MM * scale, (n_fine, n_fine), fine_voxel)
    radius = HEAD_DISK_DIAMETER_MM * scale / (n_fine * fine_voxel)  # in units of the half-width
    disk = ellipse_image(n_fine, [Ellipse(1.0, radius, radius, 0.0, 0.0)])
    return (fine * disk).astype(np.float32)


def write_head_dicom(out: Path, n_fine: int, fine_voxel: float) -> None:
    """head_dicom/: the head image at HEAD_DICOM_SCALES on the 256 x 256 grid of 1 mm (each slice the area
    average of its fine image, as a /reference), as an int16 HU CT series, slices 5 mm apart."""
    from pydicom.uid import generate_uid

    from recon_cli.io.dicom_writer import write_series_hu

    slices = [block_mean(ct_small_on_fine_grid(n_fine, fine_voxel, scale), UPSAMPLE, (0, 1))
              for scale in HEAD_DICOM_SCALES]
    hu = mu_to_hu(np.stack(slices).astype(np.float32))
    n = len(slices)
    identity = {**HEAD_DICOM_IDENTITY,
                "StudyInstanceUID": generate_uid(entropy_srcs=["recon-cli sample_data head_dicom study"]),
                "FrameOfReferenceUID": generate_uid(entropy_srcs=["recon-cli sample_data head_dicom frame"])}
    ny, nx = hu.shape[1:]
    voxel = fine_voxel * UPSAMPLE
    origin = (-(nx - 1) / 2 * voxel, -(ny - 1) / 2 * voxel, -(n - 1) / 2 * HEAD_DICOM_SLICE_MM)
    path = out / "head_dicom"
    files = write_series_hu(path, hu, (HEAD_DICOM_SLICE_MM, voxel, voxel), identity=identity, origin=origin,
                            series_description="recon-cli sample head", series_number=1, window=(40.0, 400.0),
                            overwrite=True)
    size = sum(f.stat().st_size for f in files)
    print(f"{path}: DICOM CT series, {n} slices of {ny} x {nx}, {voxel} mm pixels, {HEAD_DICOM_SLICE_MM} mm apart, "
          f"{size / 1024:.0f} KiB")


#: Sample names, in the order they are made (--only chooses among them).
SAMPLES = ("shepp_logan_fan60.h5", "head_fan60.h5", "shepp_logan_parallel180.h5", "shepp_logan_stack_fan60.h5",
           "head_dicom", "shepp_logan_nxtomo.nxs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--only", nargs="+", choices=SAMPLES, metavar="NAME",
                        help=f"make only these samples ({', '.join(SAMPLES)}); default: all")
    args = parser.parse_args()
    out, wanted = args.out, set(args.only or SAMPLES)
    out.mkdir(parents=True, exist_ok=True)

    fan, grid = reference_geometry()  # 60 views / 2 pi, 512 x 1.2 mm, 595 + 490 mm; 256 x 256 of 1 mm
    n_fine, fine_voxel = grid.shape[0] * UPSAMPLE, grid.voxel_size / UPSAMPLE

    if "shepp_logan_fan60.h5" in wanted:
        _write(out, "shepp_logan_fan60.h5", shepp_logan(n_fine), fine_voxel, fan, grid, seed=1,
               source="phantom shepp-logan")
    if "head_fan60.h5" in wanted:
        _write(out, "head_fan60.h5", ct_small_on_fine_grid(n_fine, fine_voxel), fine_voxel, fan, grid, seed=2,
               source=f"pydicom CT_small.dcm (HU -> 1/mm, pixel taken as {HEAD_PIXEL_MM} mm, "
                      f"disk {HEAD_DISK_DIAMETER_MM} mm)")
    if "shepp_logan_parallel180.h5" in wanted:
        parallel = parallel_beam_geometry(n_angles=180, detector_count=256, detector_spacing=1.0, arc=math.pi)
        _write(out, "shepp_logan_parallel180.h5", shepp_logan(n_fine), fine_voxel, parallel, grid, seed=3,
               source="phantom shepp-logan")
    if "shepp_logan_stack_fan60.h5" in wanted:
        stack_grid = VolumeGrid((4, 128, 128), 2.0)
        stack_fan = fan_beam_geometry(n_angles=60, detector_count=256, detector_spacing=2.4)
        _write(out, "shepp_logan_stack_fan60.h5", phantom_stack("shepp-logan", 128 * UPSAMPLE, 4),
               stack_grid.voxel_size / UPSAMPLE, stack_fan, stack_grid, seed=4,
               source="phantom shepp-logan, 4 slices shrinking 100% -> 90%")
    if "head_dicom" in wanted:
        write_head_dicom(out, n_fine, fine_voxel)
    if "shepp_logan_nxtomo.nxs" in wanted:
        write_nxtomo_sample(out)


if __name__ == "__main__":
    main()
