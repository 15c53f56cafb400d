"""Regenerate the sample sinograms in this folder (HDF5 layout v1, each with /reference).

    .venv/bin/python sample_data/make_sample_data.py [--out DIR]

Deterministic: fixed seeds, so the data are identical on every run. See README.md here.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from recon_cli.geometry import VolumeGrid, fan_beam_geometry, parallel_beam_geometry, reference_geometry
from recon_cli.io.dicom_image import read_ct_slice_mu
from recon_cli.io.hdf5 import write_sinogram
from recon_cli.phantoms import Ellipse, ellipse_image, phantom_stack, shepp_logan
from recon_cli.simulate import resample_image, simulate_sinogram

UPSAMPLE = 2
I0 = 1e5

#: CT_small.dcm is a 128 x 128 crop (84.7 mm) around a thoracic vertebra; we magnify it to fill the
#: 256 mm grid (pixel taken as 2 mm) and keep a disk of this diameter so the object fits the scan circle.
HEAD_PIXEL_MM = 2.0
HEAD_DISK_DIAMETER_MM = 248.0


def _write(out: Path, name: str, image, image_voxel, geometry, grid, seed: int, source: str) -> None:
    sino = simulate_sinogram(image, image_voxel, geometry, grid, upsample=UPSAMPLE, I0=I0, seed=seed,
                             simulated_from=source)
    sino.metadata["sample"] = name
    path = out / name
    write_sinogram(path, sino, overwrite=True)
    print(f"{path}: sinogram {sino.data.shape}, reference {sino.reference.shape}, "
          f"sigma {sino.metadata['sigma']:.4f}, {path.stat().st_size / 1024:.0f} KiB")


def ct_small_on_fine_grid(n_fine: int, fine_voxel: float) -> np.ndarray:
    """pydicom's CT_small.dcm slice in 1/mm on the fine grid: magnified, masked to a disk."""
    from pydicom.data import get_testdata_file

    mu, _spacing = read_ct_slice_mu(get_testdata_file("CT_small.dcm"))
    fine = resample_image(mu, HEAD_PIXEL_MM, (n_fine, n_fine), fine_voxel)
    radius = HEAD_DISK_DIAMETER_MM / (n_fine * fine_voxel)  # in units of the half-width
    disk = ellipse_image(n_fine, [Ellipse(1.0, radius, radius, 0.0, 0.0)])
    return (fine * disk).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)

    fan, grid = reference_geometry()  # 60 views / 2 pi, 512 x 1.2 mm, 595 + 490 mm; 256 x 256 of 1 mm
    n_fine, fine_voxel = grid.shape[0] * UPSAMPLE, grid.voxel_size / UPSAMPLE

    _write(out, "shepp_logan_fan60.h5", shepp_logan(n_fine), fine_voxel, fan, grid, seed=1,
           source="phantom shepp-logan")
    _write(out, "head_fan60.h5", ct_small_on_fine_grid(n_fine, fine_voxel), fine_voxel, fan, grid, seed=2,
           source=f"pydicom CT_small.dcm (HU -> 1/mm, pixel taken as {HEAD_PIXEL_MM} mm, "
                  f"disk {HEAD_DISK_DIAMETER_MM} mm)")
    parallel = parallel_beam_geometry(n_angles=180, detector_count=256, detector_spacing=1.0, arc=math.pi)
    _write(out, "shepp_logan_parallel180.h5", shepp_logan(n_fine), fine_voxel, parallel, grid, seed=3,
           source="phantom shepp-logan")
    stack_grid = VolumeGrid((4, 128, 128), 2.0)
    stack_fan = fan_beam_geometry(n_angles=60, detector_count=256, detector_spacing=2.4)
    _write(out, "shepp_logan_stack_fan60.h5", phantom_stack("shepp-logan", 128 * UPSAMPLE, 4),
           stack_grid.voxel_size / UPSAMPLE, stack_fan, stack_grid, seed=4,
           source="phantom shepp-logan, 4 slices shrinking 100% -> 90%")


if __name__ == "__main__":
    main()
