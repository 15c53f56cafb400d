"""Input formats by content, and the one place that dispatches reading and ``recon info`` to them.

Detection (:func:`detect_format`), by content, never by file name:

- a folder: ``dicom-ctpd`` when its first DICOM file has the DICOM-CT-PD geometry tags
  ((7029,1010), (7031,1001)), else ``dicom`` when it holds DICOM files (an image series);
- an HDF5 file: ``hdf5`` with the root attribute ``layout_version`` (layout v1), ``nxtomo`` with an
  NXtomo entry, ``dxchange`` with ``/exchange/data``, else ``hdf5`` (the layout v1 reader explains);
- a DICOM file (``DICM`` at byte 128): ``dicom-ctpd`` (one view: ``recon info`` only) or ``dicom``
  (a one-slice series); a TIFF: ``tiff``; NIfTI-1 (``.nii``/``.nii.gz`` header): ``nifti``.

:func:`read_input` returns a :class:`~recon_cli.sinogram.Sinogram` for the input formats of
recon_cli.registries.INPUT_FORMATS that have a reader: the projection formats, and ``dicom`` (an
image series: its acquisition is simulated, recon_cli.simulate_dicom); options that a format does
not take are refused (InputError). :func:`describe` serves ``recon info`` through the same registry.
New formats add an entry to that registry, not to this module or the runner.
"""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Any

from recon_cli.errors import InputError
from recon_cli.io.paths import check_regular_file
from recon_cli.registries import INPUT_FORMATS, reader_formats, resolve
from recon_cli.sinogram import Sinogram

# ----------------------------------------------------------------------------- detection


def _is_dicom_file(path: Path) -> bool:
    from recon_cli.io.dicom_series import is_dicom_file

    return is_dicom_file(path)


def _is_ctpd_file(path: Path) -> bool:
    import pydicom

    from recon_cli.io.dicom_ctpd import has_ctpd_tags

    try:
        return has_ctpd_tags(pydicom.dcmread(path, stop_before_pixels=True))
    except Exception:
        return False


def _is_tiff(head: bytes) -> bool:
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _is_nifti(path: Path, head: bytes) -> bool:
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as f:
                head = f.read(348)
        except (OSError, EOFError):
            return False
    return len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00")


def detect_format(path) -> str:
    """The format of ``path`` by content (see the module docstring); InputError when none fits."""
    p = Path(path)
    if not p.exists():
        raise InputError("file not found", file=str(p))
    check_regular_file(p)
    if p.is_dir():
        from recon_cli.io.dicom_ctpd import is_ctpd_folder

        if is_ctpd_folder(p):
            return "dicom-ctpd"
        if any(f.is_file() and _is_dicom_file(f) for f in sorted(p.rglob("*"))[:1000]):
            return "dicom"
        raise InputError("folder holds neither DICOM-CT-PD projections nor DICOM images", file=str(p))
    import h5py

    try:
        with open(p, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise InputError(f"cannot read ({exc})", file=str(p)) from None
    if h5py.is_hdf5(p):
        return _hdf5_kind(p)
    if _is_dicom_file(p):
        return "dicom-ctpd" if _is_ctpd_file(p) else "dicom"
    if _is_tiff(head):
        return "tiff"
    if _is_nifti(p, head):
        return "nifti"
    raise InputError("unknown file format: not an HDF5 file (layout v1, NXtomo, DXchange), a DICOM-CT-PD "
                     "folder, DICOM, TIFF or NIfTI", file=str(p))


def _hdf5_kind(path: Path) -> str:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            from recon_cli.io.hdf5_external import check_self_contained

            check_self_contained(f, str(path))  # before following any link to another file
            if "layout_version" in f.attrs:
                return "hdf5"
            from recon_cli.io.nexus import detect_layout  # (imports the NeXus reader only for other layouts)

            layout = detect_layout(f)
    except OSError as exc:
        raise InputError(f"cannot open as HDF5, file truncated or corrupt ({' '.join(str(exc).split())[:160]})",
                         file=str(path)) from None
    return layout[0] if layout is not None else "hdf5"


# ----------------------------------------------------------------------------- reading


def read_input(path, format: str = "auto", *, mu_water: float | None = None, **options: Any) -> Sinogram:
    """Read the input at ``path`` as a Sinogram; ``format`` 'auto' detects it by content.

    ``options`` (None values ignored): rows, cor_offset, pixel_size, clamp, grid_shape,
    voxel_size (nxtomo, dxchange); detector_row, grid_shape, voxel_size (dicom-ctpd);
    series_uid, simulate (dicom: a dict of recon_cli.simulate_dicom.simulation_defaults keys).
    ``mu_water`` (1/mm): HU -> 1/mm for the formats registered with ``hu=True`` (default 0.0192).
    """
    path = str(path)
    fmt = detect_format(path) if format in (None, "auto") else format
    if fmt not in reader_formats():
        known = ", ".join(sorted(reader_formats()))
        if format in (None, "auto"):
            raise InputError(f"{fmt} files are not projection data (input formats: {known})", file=path,
                             field="input.format")
        raise InputError(f"unknown input format {fmt!r} (known: {known})", file=path, field="input.format")
    entry = INPUT_FORMATS.get(fmt)
    accepted = tuple(entry.facts.get("options", ()))
    given = {k: v for k, v in options.items() if v is not None}
    extra = sorted(set(given) - set(accepted))
    if extra:
        raise InputError(f"option(s) {', '.join(extra)} do not apply to {fmt} input"
                         + (f" (it takes {', '.join(accepted)})" if accepted else ""),
                         file=path, field=f"input.{extra[0]}")
    if entry.facts.get("hu") and mu_water is not None:
        given["mu_water"] = float(mu_water)
    try:
        return entry.load()(path, **given)
    except InputError as exc:
        if exc.file is None:  # raised below the reader (geometry, grid): name the file it came from
            raise InputError(exc.message, file=path, field=exc.field) from None
        raise


# ----------------------------------------------------------------------------- recon info
# describe_<kind>(path, show_phi) -> dict: the describers the input formats name (recon_cli.registries).


def describe_hdf5(path: str, show_phi: bool) -> dict:
    from recon_cli.io.hdf5 import describe_file

    return describe_file(path)


def describe_nexus(path: str, show_phi: bool) -> dict:
    from recon_cli.io.nexus import describe_nexus

    return describe_nexus(path)


def describe_ctpd(path: str, show_phi: bool) -> dict:
    from recon_cli.io.dicom_ctpd import describe_ctpd

    return describe_ctpd(path, show_phi=show_phi)


def describe_dicom(path: str, show_phi: bool) -> dict:
    try:
        from recon_cli.io.dicom_series import describe_series
    except ImportError:  # pragma: no cover - written by another module's owner
        raise InputError("DICOM image series are not supported by this version", file=path) from None
    return describe_series(path, show_phi=show_phi)


def describe_image(path: str, show_phi: bool) -> dict:
    import numpy as np

    from recon_cli.io.tiff_nifti import read_nifti, read_tiff

    kind = detect_format(path)
    volume, voxel = read_tiff(path) if kind == "tiff" else read_nifti(path)
    finite = volume[np.isfinite(volume)]
    return {"file": path, "format": kind,
            "image": {"shape": list(volume.shape), "dtype": str(volume.dtype), "voxel_size": voxel,
                      "min": float(finite.min()) if finite.size else None,
                      "max": float(finite.max()) if finite.size else None}}


def describe(path, show_phi: bool = False) -> dict[str, Any]:
    """Summary of any supported file or folder for ``recon info`` (patient identifiers hidden unless ``show_phi``)."""
    path = str(path)
    return resolve(INPUT_FORMATS.get(detect_format(path))["describe"])(path, show_phi)


# ----------------------------------------------------------------------------- provenance


def _is_hdf5_file(path: Path) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def input_digest(path) -> str:
    """SHA-256 (hex) of a file's bytes, or of a folder: its files' relative names and digests, sorted.

    An HDF5 file that refers to other files (allowed with RECON_ALLOW_EXTERNAL_HDF5=1) hashes its own
    digest together with each referenced file's path and digest, so the hash covers what was read."""
    from recon_cli.provenance import file_sha256

    p = Path(path)
    if p.is_file():
        from recon_cli.io.hdf5_external import external_files

        extra = external_files(p) if _is_hdf5_file(p) else []
        if not extra:
            return file_sha256(p)
        digest = hashlib.sha256(file_sha256(p).encode() + b"\n")  # an opted-in input that reads other files
        for f in extra:
            digest.update(str(f).encode() + b"\0" + file_sha256(f).encode() + b"\n")
        return digest.hexdigest()
    digest = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        digest.update(f.relative_to(p).as_posix().encode() + b"\0" + file_sha256(f).encode() + b"\n")
    return digest.hexdigest()
