"""Synchrotron tomography HDF5 in: NXtomo (NeXus) and DXchange, as parallel-beam sinograms.

NXtomo (https://manual.nexusformat.org/classes/applications/NXtomo.html), in an entry found by
content: a group whose ``definition`` (attribute or dataset) is ``NXtomo``, or ``/entry``, or the
``/entry1/tomo_entry`` variant (Diamond):

    <entry>/instrument/detector/data         (n_frames, rows, cols) counts (any numeric type)
    <entry>/instrument/detector/image_key    (n_frames,) 0 projection, 1 flat, 2 dark, 3 invalid
                                             (image_key_control: -1 alignment, also skipped)
    <entry>/sample/rotation_angle            (n_frames,) degrees (attr units "rad" honoured)
    <entry>/instrument/detector/x_pixel_size optional, with a units attr (m, mm, um, nm)
    fallbacks: <entry>/data/data, <entry>/data/image_key, <entry>/data/rotation_angle

DXchange (https://dxchange.readthedocs.io, ``/exchange``):

    /exchange/data        (n_angles, rows, cols) projections
    /exchange/data_white  (n_flats, rows, cols) flat fields (required)
    /exchange/data_dark   (n_darks, rows, cols) dark fields (optional: zero)
    /exchange/theta       (n_angles,) degrees (attr units "rad" honoured)
    /measurement/instrument/detector/actual_pixel_size_x  optional, with a units attr

Conversion: flats and darks are averaged over frames; transmission (I - dark) / (flat - dark);
line integrals -log (values <= 0 refused unless ``clamp``); detector rows selected (``rows``:
int -> one 2-D sinogram, ``"start:stop[:step]"`` or a list -> a stack (nz, n_angles, n_det));
the centre-of-rotation offset ``cor_offset`` (pixels, axis at (n_det - 1) / 2 + offset; ``"auto"``:
estimated from views 180 degrees apart, recon_cli.centre_of_rotation) is removed by shifting the data. Views are sorted by angle. Detector column j is ASTRA's detector
element j and the file's angle theta is ASTRA's angle, in radians.
Pixel size: ``pixel_size`` (mm) if given, else the file's (with units), else 1 mm with a warning.
Grid: ``grid_shape`` [ny, nx] (default n_det x n_det), ``voxel_size`` (default the pixel size).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recon_cli.errors import InputError
from recon_cli.geometry import Parallel2D, VolumeGrid
from recon_cli.preprocess import RowSpec, average_frames, flat_dark_correct, minus_log, parse_rows, \
    shift_detector
from recon_cli.sinogram import Sinogram

log = logging.getLogger(__name__)

#: Length units (lower case) -> mm.
_LENGTH_UNITS = {"m": 1000.0, "meter": 1000.0, "metre": 1000.0, "meters": 1000.0, "mm": 1.0, "millimeter": 1.0,
                 "millimetre": 1.0, "um": 1e-3, "µm": 1e-3, "micron": 1e-3, "microns": 1e-3, "micrometer": 1e-3,
                 "micrometre": 1e-3, "nm": 1e-6, "nanometer": 1e-6, "cm": 10.0}
_NXTOMO_FIXED_ENTRIES = ("entry", "entry1/tomo_entry")
_DXCHANGE_PIXEL = ("/measurement/instrument/detector/actual_pixel_size_x",
                   "/measurement/instrument/detection_system/objective/resolution")


@dataclass
class RawFrames:
    """Projections before correction: ``projections`` (n_angles, n_rows, n_cols) float32 (selected rows),
    ``flat``/``dark`` (n_rows, n_cols) averages (dark None = 0), ``angles`` radians (sorted)."""

    projections: np.ndarray
    flat: np.ndarray
    dark: np.ndarray | None
    angles: np.ndarray
    rows: np.ndarray
    single: bool
    pixel_size: float | None
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- small helpers


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _decode(value[()])
    if isinstance(value, np.ndarray) and value.size == 1:
        return _decode(value.reshape(-1)[0])
    if isinstance(value, np.generic):
        return value.item()
    return value


def _open(path: str):
    import h5py

    p = Path(path)
    if not p.is_file():
        raise InputError("not found" if not p.exists() else "is not a file", file=path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"cannot open as HDF5 ({' '.join(str(exc).split())[:160]})", file=path) from None
    from recon_cli.io.hdf5_external import check_self_contained

    try:
        check_self_contained(f, path)
    except BaseException:
        f.close()
        raise
    return f


def _dataset(f, name: str, path: str, what: str, required: bool = True):
    import h5py

    obj = f.get(name)
    if obj is None:
        if required:
            raise InputError(f"missing dataset ({what})", file=path, field=name)
        return None
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"must be a dataset ({what}), found a group", file=path, field=name)
    return obj


def _units(ds) -> str | None:
    u = ds.attrs.get("units", ds.attrs.get("unit"))
    return None if u is None else str(_decode(u)).strip().lower()


def _angles_rad(ds, path: str) -> np.ndarray:
    """Rotation angles as float64 radians; degrees unless the units attribute says radians."""
    if ds.dtype.kind not in "fiu" or ds.ndim != 1:
        raise InputError(f"must be a 1-D numeric array of angles, got {ds.dtype} {list(ds.shape)}",
                         file=path, field=ds.name)
    values = np.asarray(ds[()], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise InputError("contains NaN or Inf", file=path, field=ds.name)
    units = _units(ds)
    if units in ("rad", "radian", "radians"):
        return values
    if units not in (None, "deg", "degree", "degrees", "°"):
        raise InputError(f"unknown angle units {units!r}; expected degree or rad", file=path, field=f"{ds.name}@units")
    return np.deg2rad(values)


def _dxchange_pixel_mm(f, path: str) -> float | None:
    """The detector pixel size (mm) from the first of the DXchange locations that holds a length, or None."""
    for name in _DXCHANGE_PIXEL:
        ds = f.get(name)
        if ds is not None and not _is_group(ds):
            pixel = _length_mm(ds, path)
            if pixel is not None:
                return pixel
    return None


def _length_mm(ds, path: str) -> float | None:
    """A scalar length dataset in mm, or None (with a warning) when its units are missing or unknown."""
    value = np.asarray(ds[()], dtype=np.float64).reshape(-1)
    if value.size < 1 or not math.isfinite(float(value[0])) or float(value[0]) <= 0:
        log.warning("%s: %s is not a positive length; ignored", path, ds.name)
        return None
    units = _units(ds)
    if units not in _LENGTH_UNITS:
        log.warning("%s: %s has %s; ignored (set the pixel size in mm with pixel_size)", path, ds.name,
                    "no units attribute" if units is None else f"unknown units {units!r}")
        return None
    return float(value[0]) * _LENGTH_UNITS[units]


def _read_rows(ds, rows: np.ndarray) -> np.ndarray:
    """ds[:, rows, :] as float32; a contiguous run of rows is read as one slice."""
    if rows.size > 1 and np.all(np.diff(rows) == 1):
        block = ds[:, int(rows[0]):int(rows[-1]) + 1, :]
    elif rows.size == 1:
        block = ds[:, int(rows[0]):int(rows[0]) + 1, :]
    else:
        block = ds[:, rows.tolist(), :]
    return np.asarray(block, dtype=np.float32)


def _check_frames(ds, path: str, what: str):
    if ds.ndim != 3:
        raise InputError(f"must be 3-D (frames, rows, columns) {what}, got shape {list(ds.shape)}",
                         file=path, field=ds.name)
    if ds.dtype.kind not in "fiu":
        raise InputError(f"must be numeric {what}, got dtype {ds.dtype}", file=path, field=ds.name)


# ----------------------------------------------------------------------------- layout detection


def _is_group(obj) -> bool:
    import h5py

    return isinstance(obj, h5py.Group)


def _definition(group) -> str | None:
    value = group.attrs.get("definition")
    if value is None and "definition" in group and not _is_group(group["definition"]):
        value = group["definition"][()]
    return None if value is None else str(_decode(value))


def find_nxtomo_entry(f) -> str | None:
    """Path of the NXtomo entry in an open h5py file: a group with definition NXtomo (depth <= 2),
    else /entry or /entry1/tomo_entry when they hold instrument/detector/data; None if there is none."""
    candidates = []
    for name, obj in f.items():
        if not _is_group(obj):
            continue
        candidates.append(obj)
        candidates.extend(sub for sub in obj.values() if _is_group(sub))
    for group in candidates:
        if (_definition(group) or "").upper() == "NXTOMO":
            return group.name
    for name in _NXTOMO_FIXED_ENTRIES:
        if name in f and _is_group(f[name]) and ("instrument/detector/data" in f[name] or "data/data" in f[name]):
            return f[name].name
    return None


def detect_layout(f) -> tuple[str, str | None] | None:
    """('nxtomo', entry path) or ('dxchange', None) for an open h5py file, or None."""
    entry = find_nxtomo_entry(f)
    if entry is not None:
        return "nxtomo", entry
    if "exchange" in f and _is_group(f["exchange"]) and "data" in f["exchange"]:
        return "dxchange", None
    return None


# ----------------------------------------------------------------------------- reading frames


def _nxtomo_paths(f, entry: str, path: str):
    e = f[entry]
    data = _first(e, ("instrument/detector/data", "data/data"))
    keys = _first(e, ("instrument/detector/image_key", "data/image_key", "instrument/detector/image_key_control"))
    angles = _first(e, ("sample/rotation_angle", "data/rotation_angle"))
    if data is None:
        raise InputError("missing detector frames", file=path, field=f"{entry}/instrument/detector/data")
    if keys is None:
        raise InputError("missing image_key (0 projection, 1 flat, 2 dark)", file=path,
                         field=f"{entry}/instrument/detector/image_key")
    if angles is None:
        raise InputError("missing rotation angles (degrees)", file=path, field=f"{entry}/sample/rotation_angle")
    return data, keys, angles


def _first(group, names: Sequence[str]):
    import h5py

    for name in names:
        obj = group.get(name)
        if isinstance(obj, h5py.Dataset):
            return obj
    return None


def _nxtomo_pixel(f, entry: str, path: str) -> float | None:
    ds = _first(f[entry], ("instrument/detector/x_pixel_size", "instrument/detector/pixel_size"))
    return None if ds is None else _length_mm(ds, path)


def read_nxtomo_frames(path, rows: RowSpec = None, entry: str | None = None) -> RawFrames:
    """Projections, flat and dark averages and angles of an NXtomo file (see the module docstring)."""
    path = str(path)
    with _open(path) as f:
        entry = entry or find_nxtomo_entry(f)
        if entry is None:
            raise InputError("no NXtomo entry (a group with definition NXtomo, /entry or /entry1/tomo_entry)",
                             file=path)
        data, keys_ds, angles_ds = _nxtomo_paths(f, entry, path)
        _check_frames(data, path, "detector frames")
        n_frames, n_rows, n_cols = data.shape
        keys = np.asarray(keys_ds[()]).astype(np.int64).reshape(-1)
        angles = _angles_rad(angles_ds, path)
        for ds, n in ((keys_ds, keys.size), (angles_ds, angles.size)):
            if n != n_frames:
                raise InputError(f"has {n} values but the detector has {n_frames} frames", file=path, field=ds.name)
        unknown = sorted(set(keys.tolist()) - {-1, 0, 1, 2, 3})
        if unknown:
            raise InputError(f"unknown image_key value(s) {unknown}; expected 0, 1, 2 (3, -1 skipped)",
                             file=path, field=keys_ds.name)
        row_idx, single = parse_rows(rows, n_rows)
        frames = _read_rows(data, row_idx)
        proj_mask, flat_mask, dark_mask = keys == 0, keys == 1, keys == 2
        if not proj_mask.any():
            raise InputError("no projections (image_key 0)", file=path, field=keys_ds.name)
        if not flat_mask.any():
            raise InputError("no flat fields (image_key 1); cannot normalise the projections",
                             file=path, field=keys_ds.name)
        pixel = _nxtomo_pixel(f, entry, path)
        info = {"format": "nxtomo", "entry": entry, "n_flats": int(flat_mask.sum()), "n_darks": int(dark_mask.sum()),
                "n_skipped": int(np.isin(keys, (-1, 3)).sum())}
    dark = average_frames(frames[dark_mask]) if dark_mask.any() else None
    if dark is None:
        log.warning("%s: no dark fields (image_key 2); dark current taken as 0", path)
    return _sorted(RawFrames(frames[proj_mask], average_frames(frames[flat_mask]), dark, angles[proj_mask],
                             row_idx, single, pixel, info))


def read_dxchange_frames(path, rows: RowSpec = None) -> RawFrames:
    """Projections, flat and dark averages and angles of a DXchange file (see the module docstring)."""
    path = str(path)
    with _open(path) as f:
        data = _dataset(f, "/exchange/data", path, "projections")
        white = _dataset(f, "/exchange/data_white", path, "flat fields")
        dark_ds = _dataset(f, "/exchange/data_dark", path, "dark fields", required=False)
        theta = _dataset(f, "/exchange/theta", path, "rotation angles (degrees)")
        _check_frames(data, path, "projections")
        n_angles, n_rows, n_cols = data.shape
        for ds in (white, dark_ds):
            if ds is None:
                continue
            _check_frames(ds, path, "frames")
            if ds.shape[1:] != data.shape[1:] or ds.shape[0] == 0:
                raise InputError(f"frames {list(ds.shape)} do not match the projections {list(data.shape)}",
                                 file=path, field=ds.name)
        angles = _angles_rad(theta, path)
        if angles.size != n_angles:
            raise InputError(f"has {angles.size} angles but /exchange/data has {n_angles} projections",
                             file=path, field="/exchange/theta")
        row_idx, single = parse_rows(rows, n_rows)
        projections = _read_rows(data, row_idx)
        flat = average_frames(_read_rows(white, row_idx))
        dark = average_frames(_read_rows(dark_ds, row_idx)) if dark_ds is not None else None
        pixel = _dxchange_pixel_mm(f, path)
        info = {"format": "dxchange", "n_flats": int(white.shape[0]),
                "n_darks": 0 if dark_ds is None else int(dark_ds.shape[0])}
    if dark is None:
        log.warning("%s: no /exchange/data_dark; dark current taken as 0", path)
    return _sorted(RawFrames(projections, flat, dark, angles, row_idx, single, pixel, info))


def _sorted(raw: RawFrames) -> RawFrames:
    order = np.argsort(raw.angles, kind="stable")
    if np.any(order != np.arange(order.size)):
        raw.projections = raw.projections[order]
        raw.angles = raw.angles[order]
    return raw


# ----------------------------------------------------------------------------- to a sinogram


def frames_to_sinogram(raw: RawFrames, source: str, *, cor_offset: float | str = 0.0,
                       pixel_size: float | None = None,
                       grid_shape: Sequence[int] | None = None, voxel_size: float | None = None,
                       clamp: float | None = None) -> Sinogram:
    """Flat/dark correction, -log, centre-of-rotation shift: a parallel-beam Sinogram
    (n_angles, n_det) for one row, else (nz, n_angles, n_det)."""
    try:
        transmission = flat_dark_correct(raw.projections, raw.flat, raw.dark, clamp=clamp)
        p = minus_log(transmission, clamp=clamp)
    except InputError as exc:
        raise InputError(exc.message, file=source, field=exc.field) from None
    sino = np.ascontiguousarray(np.transpose(p, (1, 0, 2)))  # (rows, n_angles, n_det)
    cor_estimated = isinstance(cor_offset, str)
    if cor_estimated:
        if cor_offset != "auto":
            raise InputError(f"must be a number of pixels or auto, got {cor_offset!r}", file=source,
                             field="input.cor_offset")
        from recon_cli.centre_of_rotation import METHOD, estimate_cor_offset

        try:
            cor_offset = estimate_cor_offset(sino, raw.angles)
        except InputError as exc:
            raise InputError(exc.message, file=source, field="input.cor_offset") from None
        log.info("%s: centre of rotation estimated at %+.2f px from the detector centre (%s)", source, cor_offset,
                 METHOD)
    sino = shift_detector(sino, cor_offset)
    if raw.single:
        sino = sino[0]
    n_det = sino.shape[-1]
    if pixel_size is None:
        pixel_size = raw.pixel_size
    if pixel_size is None:
        log.warning("%s: no detector pixel size in the file; using 1 mm (set pixel_size)", source)
        pixel_size = 1.0
    geometry = Parallel2D(angles=raw.angles, detector_spacing=float(pixel_size), detector_count=n_det)
    ny, nx = (n_det, n_det) if grid_shape is None else (int(grid_shape[0]), int(grid_shape[1]))
    shape = (ny, nx) if raw.single else (int(raw.rows.size), ny, nx)
    grid = VolumeGrid(shape, float(voxel_size if voxel_size is not None else pixel_size))
    metadata = {**raw.info, "source": source, "rows": raw.rows.tolist() if raw.rows.size <= 64 else
                f"{int(raw.rows[0])}..{int(raw.rows[-1])} ({raw.rows.size} rows)",
                "cor_offset": float(cor_offset), "pixel_size": float(pixel_size)}
    if cor_estimated:
        metadata["cor_offset_estimated"] = True
    return Sinogram(data=sino.astype(np.float32, copy=False), geometry=geometry, grid=grid, metadata=metadata)


def read_nxtomo(path, *, rows: RowSpec = None, cor_offset: float | str = 0.0, pixel_size: float | None = None,
                grid_shape: Sequence[int] | None = None, voxel_size: float | None = None,
                clamp: float | None = None, entry: str | None = None) -> Sinogram:
    """NXtomo file -> parallel-beam Sinogram (see the module docstring for options)."""
    raw = read_nxtomo_frames(path, rows, entry)
    return frames_to_sinogram(raw, str(path), cor_offset=cor_offset, pixel_size=pixel_size,
                              grid_shape=grid_shape, voxel_size=voxel_size, clamp=clamp)


def read_dxchange(path, *, rows: RowSpec = None, cor_offset: float | str = 0.0, pixel_size: float | None = None,
                  grid_shape: Sequence[int] | None = None, voxel_size: float | None = None,
                  clamp: float | None = None) -> Sinogram:
    """DXchange file -> parallel-beam Sinogram (see the module docstring for options)."""
    raw = read_dxchange_frames(path, rows)
    return frames_to_sinogram(raw, str(path), cor_offset=cor_offset, pixel_size=pixel_size,
                              grid_shape=grid_shape, voxel_size=voxel_size, clamp=clamp)


# ----------------------------------------------------------------------------- recon info


def _angle_summary(angles_rad: np.ndarray) -> dict[str, Any]:
    if angles_rad.size == 0:
        return {"n_angles": 0}
    deg = np.rad2deg(angles_rad)
    return {"n_angles": int(deg.size), "angle_first_deg": float(deg.min()), "angle_last_deg": float(deg.max())}


def describe_nexus(path) -> dict[str, Any]:
    """Summary of an NXtomo or DXchange file for ``recon info`` (headers and angles only; no frames read)."""
    path = str(path)
    with _open(path) as f:
        layout = detect_layout(f)
        if layout is None:
            raise InputError("neither NXtomo nor DXchange", file=path)
        kind, entry = layout
        if kind == "nxtomo":
            data, keys_ds, angles_ds = _nxtomo_paths(f, entry, path)
            keys = np.asarray(keys_ds[()]).astype(np.int64).reshape(-1)
            angles = _angles_rad(angles_ds, path)
            proj = angles[keys == 0] if angles.size == keys.size else angles
            out = {"file": path, "format": "nxtomo", "entry": entry,
                   "detector": {"frames": int(data.shape[0]), "rows": int(data.shape[1]) if data.ndim == 3 else None,
                                "columns": int(data.shape[-1]), "dtype": str(data.dtype),
                                "projections": int((keys == 0).sum()), "flats": int((keys == 1).sum()),
                                "darks": int((keys == 2).sum()), "pixel_size_mm": _nxtomo_pixel(f, entry, path)},
                   "angles": _angle_summary(proj)}
            energy = _first(f[entry], ("instrument/beam/incident_energy", "beam/incident_energy", "energy"))
            if energy is not None:
                value = float(np.asarray(energy[()]).reshape(-1)[0])
                out["detector"]["energy"] = f"{value:g} {_units(energy) or ''}".strip()
            return out
        data = _dataset(f, "/exchange/data", path, "projections")
        white = f.get("/exchange/data_white")
        dark = f.get("/exchange/data_dark")
        theta = f.get("/exchange/theta")
        pixel = _dxchange_pixel_mm(f, path)
        return {"file": path, "format": "dxchange",
                "detector": {"projections": int(data.shape[0]), "rows": int(data.shape[1]) if data.ndim == 3 else None,
                             "columns": int(data.shape[-1]), "dtype": str(data.dtype),
                             "flats": 0 if white is None else int(white.shape[0]),
                             "darks": 0 if dark is None else int(dark.shape[0]), "pixel_size_mm": pixel},
                "angles": _angle_summary(_angles_rad(theta, path)) if theta is not None else {"n_angles": None}}
