"""Reconstructions out as a TIFF stack, a folder of per-slice TIFFs (tifffile) or NIfTI-1 (nibabel), with voxel
sizes; written atomically.

TIFF: an ImageJ-compatible multi-page float32 file, one page per slice (z), row 0 = +y at the
top, values in 1/mm. Voxel size: X/YResolution = 1 / voxel_size pixels per mm (ImageJ ``unit``
mm) and ImageJ ``spacing`` = the slice spacing; the exact float is also kept as
``voxel_size_mm`` in the ImageJ description.

Per-slice TIFFs (``tiff_slices``, the usual layout at beamlines): a folder ``<stem>_tiff/`` holding
``slice_00000.tif``, ``slice_00001.tif``, ... (z order, zero-padded to at least 5 digits), each a
single-page float32 ImageJ TIFF written as above. The folder appears whole or not at all.

NIfTI: float32 data indexed [i, j, k] = [x, y, z] (NIfTI's order), so the array is the volume
transposed with rows flipped (NIfTI's j grows towards +y, our row 0 is +y). The affine
(sform and qform, code "scanner") is diag(voxel_size) with the origin chosen so that the
volume is centred on the rotation axis (x = y = z = 0); xyzt units mm. ``.nii.gz`` is
gzip-compressed. A 2-D image is written as one slice (nx, ny, 1).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from recon_cli.backend import to_numpy
from recon_cli.errors import InputError
from recon_cli.io.atomic import atomic_path


def _volume(volume, path) -> np.ndarray:
    image = np.ascontiguousarray(to_numpy(volume), dtype=np.float32)
    if image.ndim not in (2, 3):
        raise InputError(f"volume must be 2-D (ny, nx) or 3-D (nz, ny, nx), got shape {list(image.shape)}",
                         file=str(path))
    return image


def _voxel(voxel_size, path) -> float:
    v = float(voxel_size)
    if not (np.isfinite(v) and v > 0):
        raise InputError(f"voxel size must be a positive number of mm, got {voxel_size}", file=str(path))
    return v


# ----------------------------------------------------------------------------- TIFF


def write_tiff(path, volume, voxel_size: float, *, overwrite: bool = False) -> None:
    """Write (ny, nx) or (nz, ny, nx) float32 in 1/mm as a multi-page ImageJ TIFF (see module docstring)."""
    import tifffile

    image = _volume(volume, path)
    v = _voxel(voxel_size, path)
    stack = image[None] if image.ndim == 2 else image
    metadata = {"axes": "ZYX", "spacing": v, "unit": "mm", "voxel_size_mm": v, "units": "1/mm"}
    with atomic_path(path, overwrite=overwrite) as tmp:
        tifffile.imwrite(tmp, stack, imagej=True, resolution=(1.0 / v, 1.0 / v), metadata=metadata)


def read_tiff(path) -> tuple[np.ndarray, float]:
    """(volume float32 (nz, ny, nx), voxel size mm) of a TIFF written by :func:`write_tiff`
    (other TIFFs: voxel size from XResolution, 1.0 if absent)."""
    import tifffile

    path = str(path)
    if not Path(path).is_file():
        raise InputError("not found", file=path)
    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.asarray()
            meta = tif.imagej_metadata or {}
            res = tif.pages[0].tags.get("XResolution")
            res = res.value if res is not None else None
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise InputError(f"cannot read TIFF ({exc})", file=path) from None
    if "voxel_size_mm" in meta:
        voxel = float(meta["voxel_size_mm"])
    elif res is not None and res[0] > 0:
        voxel = float(res[1]) / float(res[0])
    else:
        voxel = 1.0
    data = np.asarray(data, dtype=np.float32)
    return (data[None] if data.ndim == 2 else data), voxel


def _slice_names(nz: int) -> list[str]:
    width = max(5, len(str(nz - 1)))
    return [f"slice_{k:0{width}d}.tif" for k in range(nz)]


def write_tiff_slices(folder, volume, voxel_size: float, *, overwrite: bool = False) -> list[Path]:
    """Write (ny, nx) or (nz, ny, nx) float32 in 1/mm as a folder of one TIFF per slice (see module docstring);
    an existing folder is replaced only with ``overwrite`` and only when it holds nothing but .tif files.
    Returns the file paths in slice order."""
    import tifffile

    image = _volume(volume, folder)
    v = _voxel(voxel_size, folder)
    stack = image[None] if image.ndim == 2 else image
    target = Path(folder)
    if target.exists() and not target.is_dir():
        raise InputError("exists and is not a folder; per-slice TIFFs are written as a folder", file=str(target))
    if target.is_dir():
        others = [p for p in target.iterdir() if not (p.is_file() and p.suffix.lower() in (".tif", ".tiff"))]
        if others:
            raise InputError(f"exists and holds other things than .tif files (e.g. {others[0].name}); not "
                             "replacing it", file=str(target))
    names = _slice_names(stack.shape[0])
    metadata = {"axes": "YX", "spacing": v, "unit": "mm", "voxel_size_mm": v, "units": "1/mm"}
    with atomic_path(target, overwrite=overwrite) as tmp:
        tmp.mkdir()
        for name, plane in zip(names, stack):
            tifffile.imwrite(tmp / name, np.ascontiguousarray(plane), imagej=True, resolution=(1.0 / v, 1.0 / v),
                             metadata=metadata)
    return [target / name for name in names]


def read_tiff_slices(folder) -> tuple[np.ndarray, float]:
    """(volume float32 (nz, ny, nx), voxel size mm) of a folder written by :func:`write_tiff_slices` (the
    .tif files in name order, one slice each, all of one shape)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("not a folder of TIFF slices", file=str(folder))
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".tif", ".tiff"))
    if not files:
        raise InputError("holds no .tif files", file=str(folder))
    planes, voxel = [], None
    for f in files:
        data, v = read_tiff(f)
        if data.shape[0] != 1:
            raise InputError(f"holds {data.shape[0]} pages; expected one slice per file", file=str(f))
        if planes and data.shape[1:] != planes[0].shape:
            raise InputError(f"slice shape {list(data.shape[1:])} differs from {list(planes[0].shape)}", file=str(f))
        planes.append(data[0])
        voxel = v if voxel is None else voxel
    return np.stack(planes), float(voxel)


# ----------------------------------------------------------------------------- NIfTI


def nifti_affine(shape_zyx: tuple[int, int, int], voxel_size: float) -> np.ndarray:
    """4x4 affine of voxel [i, j, k] = [x, y, z] index -> mm, volume centred on the origin."""
    nz, ny, nx = shape_zyx
    v = float(voxel_size)
    affine = np.diag([v, v, v, 1.0])
    affine[:3, 3] = [-(nx - 1) / 2.0 * v, -(ny - 1) / 2.0 * v, -(nz - 1) / 2.0 * v]
    return affine


def write_nifti(path, volume, voxel_size: float, *, overwrite: bool = False) -> None:
    """Write (ny, nx) or (nz, ny, nx) float32 in 1/mm as NIfTI-1 (``.nii`` or ``.nii.gz``; see module docstring)."""
    import nibabel as nib

    image = _volume(volume, path)
    v = _voxel(voxel_size, path)
    stack = image[None] if image.ndim == 2 else image
    data = np.ascontiguousarray(stack[:, ::-1, :].transpose(2, 1, 0))  # [x, y (up), z]
    affine = nifti_affine(stack.shape, v)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units(xyz="mm")
    img.header.set_sform(affine, code="scanner")
    img.header.set_qform(affine, code="scanner")
    img.header["descrip"] = b"recon-cli reconstruction, 1/mm"
    payload = img.to_bytes()
    if str(path).lower().endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    with atomic_path(path, overwrite=overwrite) as tmp:
        Path(tmp).write_bytes(payload)


def read_nifti(path) -> tuple[np.ndarray, float]:
    """(volume float32 (nz, ny, nx) with row 0 = +y, voxel size mm) of a file written by :func:`write_nifti`."""
    import nibabel as nib

    path = str(path)
    if not Path(path).is_file():
        raise InputError("not found", file=path)
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises several types for bad files
        raise InputError(f"cannot read NIfTI ({exc})", file=path) from None
    if data.ndim == 2:
        data = data[:, :, None]
    zooms = img.header.get_zooms()[:3]
    volume = np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, :])
    return volume, float(zooms[0])
