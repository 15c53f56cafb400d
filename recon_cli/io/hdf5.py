"""HDF5 layout v1: sinogram input files and reconstruction output files (docs/formats.md).

Input (``read_sinogram`` / ``write_sinogram``)::

    /                  attr layout_version = "1"
    /sinogram          float32 line integrals (n_angles, n_det) | (n_slices, n_angles, n_det)
                       | 3D geometries (det_rows, n_angles, det_cols); optional attrs I0, sigma
    /geometry          attrs type, detector_spacing (mm), detector_count, ... (Geometry.attrs())
    /geometry/angles   float64 (n_angles,) radians
    /volume            attrs shape [ny, nx] | [nz, ny, nx], voxel_size (mm)
    /reference         optional float32 true image on the grid (1/mm)
    /metadata          optional attrs: free-form description (phantom, seed, ...)

Output (``write_reconstruction``): ``/reconstruction`` (1/mm, attr voxel_size), ``/metrics``,
``/provenance``, ``/info`` (attrs) and ``/history/<name>`` (per-iteration values).

Every validation failure raises InputError naming the file and the field, with
fields written ``/group/dataset`` for objects and ``/group@attr`` for attributes.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from recon_cli.backend import to_numpy
from recon_cli.errors import InputError
from recon_cli.geometry import Geometry, VolumeGrid, geometry_from_attrs
from recon_cli.sinogram import Sinogram

LAYOUT_VERSION = "1"
NOISE_ATTRS = ("I0", "sigma")
#: Strings longer than this are stored as string datasets instead of attributes (HDF5 header limit).
_MAX_ATTR_CHARS = 16_000


# ---------------------------------------------------------------- opening and small readers

@contextmanager
def _open(path: str) -> Iterator[Any]:
    """Open ``path`` read-only; missing, non-HDF5, truncated or unreadable files raise InputError."""
    import h5py

    p = Path(path)
    if not p.exists():
        raise InputError("file not found", file=path)
    if p.is_dir():
        raise InputError("is a folder, expected an HDF5 file", file=path)
    from recon_cli.io.paths import check_regular_file

    check_regular_file(p)
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as exc:
        raise InputError(f"cannot read file ({exc})", file=path) from exc
    if not is_hdf5:
        raise InputError("not an HDF5 file", file=path)
    try:
        f = h5py.File(path, "r")
    except _H5PY_ERRORS as exc:
        if not _raised_by_h5py(exc):
            raise
        raise InputError(f"cannot open as HDF5, file truncated or corrupt ({_short(exc)})", file=path) from exc
    try:
        from recon_cli.io.hdf5_external import check_self_contained

        check_self_contained(f, path)
        yield f
    except _H5PY_ERRORS as exc:  # unreadable chunks, headers or datatypes of a damaged file
        if not _raised_by_h5py(exc):
            raise
        raise InputError(f"cannot read HDF5 data, file truncated or corrupt ({_short(exc)})", file=path) from exc
    finally:
        try:
            f.close()
        except _H5PY_ERRORS:
            pass


#: What h5py raises on damaged files: OSError mostly, but also KeyError (objects whose header cannot
#: be read), RuntimeError (attribute iteration, datatype queries) and ValueError (datatype conversion).
_H5PY_ERRORS = (OSError, KeyError, RuntimeError, ValueError)


def _raised_by_h5py(exc: BaseException) -> bool:
    """True when the traceback passes through h5py (so a bug of ours is not reported as a bad file)."""
    tb = exc.__traceback__
    while tb is not None:
        if "h5py" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return isinstance(exc, OSError)


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: " * (not isinstance(exc, OSError)) + " ".join(str(exc).split())[:200]


def _decode(value: Any) -> Any:
    """h5py attribute value -> plain Python (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in ("S", "O", "U"):
            return [_decode(v) for v in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _member(f, name: str, path: str, what: str, dataset: bool):
    """The dataset (``dataset=True``) or group ``name`` of ``f``; missing or the other kind raises InputError."""
    import h5py

    kind, other, cls = ("dataset", "group", h5py.Dataset) if dataset else ("group", "dataset", h5py.Group)
    if name not in f:
        raise InputError(f"missing {kind} ({what})", file=path, field=name)
    obj = f[name]
    if not isinstance(obj, cls):
        raise InputError(f"must be a {kind} ({what}), found a {other}", file=path, field=name)
    return obj


def _dataset(f, name: str, path: str, what: str):
    """The dataset ``name`` (e.g. '/sinogram'); missing or a group raises InputError."""
    return _member(f, name, path, what, dataset=True)


def _group(f, name: str, path: str, what: str):
    """The group ``name`` (e.g. '/geometry'); missing or a dataset raises InputError."""
    return _member(f, name, path, what, dataset=False)


def _scalar_attr(obj, key: str, path: str, *, required: bool = True) -> Any:
    """A scalar attribute (arrays of one element accepted) as plain Python, or None if optional and absent."""
    field = f"{obj.name.rstrip('/') or '/'}@{key}"
    if key not in obj.attrs:
        if required:
            raise InputError("missing attribute", file=path, field=field)
        return None
    value = obj.attrs[key]
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise InputError(f"must be a single value, got shape {value.shape}", file=path, field=field)
        value = value.reshape(-1)[0]
    return _decode(value)


def _number(value: Any, field: str, path: str, *, positive: bool = True, integer: bool = False,
            allow_zero: bool = False) -> float | int:
    """Validate a numeric attribute value: finite, > 0 (or >= 0), integer-valued if asked."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"must be a number, got {value!r}", file=path, field=field)
    value_f = float(value)
    if not math.isfinite(value_f):
        raise InputError(f"must be finite, got {value_f}", file=path, field=field)
    if positive and (value_f < 0 or (value_f == 0 and not allow_zero)):
        raise InputError(f"must be {'>= 0' if allow_zero else 'positive'}, got {value}", file=path, field=field)
    if integer:
        if value_f != int(value_f):
            raise InputError(f"must be an integer, got {value}", file=path, field=field)
        return int(value_f)
    return value_f


def check_fits_memory(shape, bytes_per_element: int, path: str, field: str, what: str) -> None:
    """Refuse (InputError) an array of ``shape`` larger than the memory available, before allocating it.

    Catches absurd sizes declared in a file's header (a 10^6 x 10^6 grid, a sparse dataset of
    terabytes) at once instead of failing, or swapping, halfway through.
    """
    from recon_cli.host_memory import available_host_memory, format_size

    need = math.prod(int(s) for s in shape) * int(bytes_per_element)
    have = available_host_memory()
    if need > have:
        raise InputError(f"{what} of shape {[int(s) for s in shape]} needs {format_size(need)} of memory, "
                         f"more than the {format_size(have)} available", file=path, field=field)


def _float_array(ds, path: str, what: str) -> np.ndarray:
    """Read a floating-point dataset as float32 C-contiguous, refusing other dtypes and NaN/Inf."""
    if ds.dtype.kind != "f":
        raise InputError(f"must be floating point ({what}), got dtype {ds.dtype}", file=path, field=ds.name)
    itemsize = 4 if ds.dtype.itemsize == 4 else 4 + ds.dtype.itemsize  # read, then a float32 copy
    check_fits_memory(ds.shape, itemsize, path, ds.name, what)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes Inf, reported below
        data = np.ascontiguousarray(ds[()], dtype=np.float32)
    if not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise InputError(f"contains {bad} NaN or Inf value(s) (after conversion to float32)",
                         file=path, field=ds.name)
    return data


def _geometry_field(field: str | None) -> str:
    """geometry.py's 'geometry/<key>' -> this layout's '/geometry/angles' or '/geometry@<key>'."""
    if not field:
        return "/geometry"
    key = field.split("/", 1)[-1]
    return "/geometry/angles" if key == "angles" else f"/geometry@{key}"


# ---------------------------------------------------------------- validation shared by read and write

def check_consistency(data_shape: tuple[int, ...], geometry: Geometry, grid: VolumeGrid,
                      reference_shape: tuple[int, ...] | None, path: str) -> None:
    """Check sinogram, geometry, volume and reference shapes agree; InputError naming the field."""
    shape = tuple(int(s) for s in data_shape)
    rank = len(shape)
    gtype = geometry.type
    if geometry.is_3d:
        if rank != 3:
            raise InputError(f"geometry {gtype!r} needs a 3-D array (detector_rows, n_angles, detector_count), "
                             f"got shape {list(shape)}", file=path, field="/sinogram")
        if shape[0] != geometry.detector_rows:
            raise InputError(f"is {geometry.detector_rows} but /sinogram has {shape[0]} detector rows "
                             f"(axis 0 of {list(shape)})", file=path, field="/geometry@detector_rows")
        if len(grid.shape) != 3:
            raise InputError(f"geometry {gtype!r} needs a 3-D volume [nz, ny, nx], got {list(grid.shape)}",
                             file=path, field="/volume@shape")
    elif rank not in (2, 3):
        raise InputError(f"must be 2-D (n_angles, n_det) or 3-D (n_slices, n_angles, n_det), "
                         f"got shape {list(shape)}", file=path, field="/sinogram")
    if shape[-2] != geometry.n_angles:
        raise InputError(f"has {geometry.n_angles} angles but /sinogram has {shape[-2]} along its angle axis "
                         f"(shape {list(shape)})", file=path, field="/geometry/angles")
    if shape[-1] != geometry.detector_count:
        raise InputError(f"is {geometry.detector_count} but /sinogram has {shape[-1]} detector columns "
                         f"(shape {list(shape)})", file=path, field="/geometry@detector_count")
    if not geometry.is_3d:
        n_slices = shape[0] if rank == 3 else None
        if n_slices != grid.n_slices:
            have = "one slice" if grid.n_slices is None else f"{grid.n_slices} slices"
            want = "one slice" if n_slices is None else f"a stack of {n_slices} slices"
            raise InputError(f"{list(grid.shape)} has {have} but /sinogram is {want} (shape {list(shape)})",
                             file=path, field="/volume@shape")
    if reference_shape is not None and tuple(int(s) for s in reference_shape) != grid.shape:
        raise InputError(f"shape {list(reference_shape)} differs from /volume@shape {list(grid.shape)}",
                         file=path, field="/reference")


def _read_layout_version(f, path: str) -> str:
    version = _scalar_attr(f["/"], "layout_version", path)
    if str(version) != LAYOUT_VERSION:
        raise InputError(f"unsupported layout version {version!r}; this reader knows {LAYOUT_VERSION!r}",
                         file=path, field="/@layout_version")
    return str(version)


def _read_geometry(f, path: str) -> Geometry:
    group = _group(f, "/geometry", path, "acquisition geometry")
    angles_ds = _dataset(f, "/geometry/angles", path, "projection angles in radians")
    if angles_ds.dtype.kind not in "fiu":
        raise InputError(f"must be numeric (radians), got dtype {angles_ds.dtype}", file=path,
                         field="/geometry/angles")
    if angles_ds.ndim != 1:
        raise InputError(f"must be 1-D (n_angles,), got shape {list(angles_ds.shape)}", file=path,
                         field="/geometry/angles")
    check_fits_memory(angles_ds.shape, 8 + angles_ds.dtype.itemsize, path, "/geometry/angles", "the angles")
    angles = np.asarray(angles_ds[()], dtype=np.float64)
    attrs: dict[str, Any] = {}
    for key in group.attrs:
        attrs[key] = _scalar_attr(group, key, path)
    gtype = attrs.get("type")
    if gtype is None:
        raise InputError("missing attribute", file=path, field="/geometry@type")
    for key in ("detector_count", "detector_rows"):
        if key in attrs:
            attrs[key] = _number(attrs[key], f"/geometry@{key}", path, integer=True)
    for key in ("detector_spacing", "detector_row_spacing", "source_origin", "origin_detector"):
        if key in attrs:
            attrs[key] = _number(attrs[key], f"/geometry@{key}", path)
    try:
        return geometry_from_attrs(attrs, angles)
    except InputError as exc:
        raise InputError(exc.message, file=path, field=_geometry_field(exc.field)) from None


def _read_grid(f, path: str) -> VolumeGrid:
    group = _group(f, "/volume", path, "reconstruction grid")
    if "shape" not in group.attrs:
        raise InputError("missing attribute ([ny, nx] or [nz, ny, nx])", file=path, field="/volume@shape")
    raw = np.asarray(group.attrs["shape"])
    if raw.dtype.kind not in "fiu" or raw.ndim != 1 or raw.size not in (2, 3):
        raise InputError(f"must be [ny, nx] or [nz, ny, nx], got {_decode(group.attrs['shape'])!r}",
                         file=path, field="/volume@shape")
    shape = tuple(_number(v, "/volume@shape", path, integer=True) for v in raw.tolist())
    check_fits_memory(shape, 4, path, "/volume@shape", "a float32 reconstruction grid")
    voxel_size = _number(_scalar_attr(group, "voxel_size", path), "/volume@voxel_size", path)
    try:
        return VolumeGrid(shape, voxel_size)
    except InputError as exc:
        raise InputError(exc.message, file=path, field="/volume@" + (exc.field or "shape").split("/")[-1]) from None


def _read_noise(ds, path: str) -> dict[str, float]:
    noise: dict[str, float] = {}
    for key in NOISE_ATTRS:
        value = _scalar_attr(ds, key, path, required=False)
        if value is not None:
            noise[key] = _number(value, f"/sinogram@{key}", path, allow_zero=(key == "sigma"))
    return noise


def _read_extra_metadata(f) -> dict[str, Any]:
    import h5py

    obj = f.get("/metadata")
    if not isinstance(obj, h5py.Group):
        return {}
    return {key: _decode(obj.attrs[key]) for key in obj.attrs}


# ---------------------------------------------------------------- public API: sinograms

def read_sinogram(path) -> Sinogram:
    """Read and validate a layout-v1 sinogram file.

    Returns a Sinogram with float32 C-contiguous ``data`` (and ``reference``), the
    geometry, the grid and ``metadata`` = /metadata attrs + noise attrs (I0, sigma) + ``source``.
    """
    path = str(path)
    with _open(path) as f:
        _read_layout_version(f, path)
        ds = _dataset(f, "/sinogram", path, "line integrals")
        if ds.dtype.kind != "f":
            raise InputError(f"must be floating point line integrals, got dtype {ds.dtype}", file=path,
                             field="/sinogram")
        if ds.ndim not in (2, 3):
            raise InputError(f"must be 2-D (n_angles, n_det) or 3-D (n_slices, n_angles, n_det), "
                             f"got shape {list(ds.shape)}", file=path, field="/sinogram")
        geometry = _read_geometry(f, path)
        grid = _read_grid(f, path)
        ref_ds = None
        if "/reference" in f:
            ref_ds = _dataset(f, "/reference", path, "true image on the grid")
        check_consistency(ds.shape, geometry, grid, None if ref_ds is None else ref_ds.shape, path)
        data = _float_array(ds, path, "line integrals")
        reference = None if ref_ds is None else _float_array(ref_ds, path, "true image in 1/mm")
        metadata = {**_read_extra_metadata(f), **_read_noise(ds, path), "source": path}
    return Sinogram(data=data, geometry=geometry, grid=grid, reference=reference, metadata=metadata)


def _attr_value(value: Any) -> Any:
    """A Python value -> something h5py stores as an attribute (dicts/lists as JSON strings)."""
    if isinstance(value, (str, bool, int, float, np.generic)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.size <= 1024:
        return value
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return json.dumps(value, default=str, sort_keys=True)


def _write_attrs(group, values: dict[str, Any] | None) -> None:
    """Store ``values`` as attributes of ``group``; None skipped, long strings as string datasets."""
    import h5py

    for key, value in (values or {}).items():
        if value is None:
            continue
        key = str(key).replace("/", "_")
        stored = _attr_value(value)
        if isinstance(stored, str) and len(stored) > _MAX_ATTR_CHARS:
            group.create_dataset(key, data=stored, dtype=h5py.string_dtype())
        else:
            group.attrs[key] = stored


def _create(f, name: str, data: np.ndarray):
    """Dataset with gzip compression (lossless; arrays read back bit-exact)."""
    if data.size == 0 or data.ndim == 0:
        return f.create_dataset(name, data=data)
    return f.create_dataset(name, data=data, compression="gzip", compression_opts=4, shuffle=True)


@contextmanager
def _h5_file_atomic(path: str, overwrite: bool) -> Iterator[Any]:
    """An HDF5 file built in memory, then written to ``path`` atomically with plain file I/O.

    HDF5 writing straight to a disk that fills up crashes the process (h5py 3.16: a segfault when
    the file is closed after a failed write). Built in memory, the file reaches the disk through
    :func:`recon_cli.io.atomic.write_bytes_atomic`: a full disk is one RunError, and nothing is left.
    """
    import io

    import h5py

    from recon_cli.io.atomic import check_writable, write_bytes_atomic

    check_writable(path, overwrite)  # refuse before building anything
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        yield f
    write_bytes_atomic(path, buffer.getbuffer(), overwrite=overwrite)


def write_sinogram(path, sino: Sinogram, overwrite: bool = False) -> None:
    """Write ``sino`` as a layout-v1 file (atomic). Shapes are checked first; nothing is written on error."""
    path = str(path)
    data = np.ascontiguousarray(to_numpy(sino.data), dtype=np.float32)
    reference = None if sino.reference is None else np.ascontiguousarray(to_numpy(sino.reference), dtype=np.float32)
    check_consistency(data.shape, sino.geometry, sino.grid, None if reference is None else reference.shape, path)
    if not np.all(np.isfinite(data)):
        raise InputError("sinogram contains NaN or Inf", file=path, field="/sinogram")
    metadata = dict(sino.metadata or {})
    noise = {k: float(metadata.pop(k)) for k in NOISE_ATTRS if metadata.get(k) is not None}
    metadata.pop("source", None)
    with _h5_file_atomic(path, overwrite) as f:
        f.attrs["layout_version"] = LAYOUT_VERSION
        ds = _create(f, "sinogram", data)
        for key, value in noise.items():
            ds.attrs[key] = value
        geo = f.create_group("geometry")
        _write_attrs(geo, sino.geometry.attrs())
        geo.create_dataset("angles", data=np.asarray(sino.geometry.angles, dtype=np.float64))
        vol = f.create_group("volume")
        vol.attrs["shape"] = np.asarray(sino.grid.shape, dtype=np.int64)
        vol.attrs["voxel_size"] = float(sino.grid.voxel_size)
        if reference is not None:
            _create(f, "reference", reference).attrs["units"] = "1/mm"
        if metadata:
            _write_attrs(f.create_group("metadata"), metadata)


# ---------------------------------------------------------------- public API: reconstructions

def _history_array(values) -> np.ndarray:
    values = to_numpy(values) if not isinstance(values, (list, tuple)) else values
    return np.asarray([np.nan if v is None else float(v) for v in np.ravel(np.asarray(values, dtype=object))],
                      dtype=np.float64)


def write_reconstruction(path, volume, voxel_size: float, *, metrics: dict, provenance: dict,
                         history: dict | None = None, info: dict | None = None, overwrite: bool = False) -> None:
    """Write a reconstruction file (atomic).

    ``/reconstruction``: float32 (ny, nx) or (nz, ny, nx), attrs voxel_size (mm), units "1/mm".
    ``/metrics``, ``/provenance``, ``/info``: attributes (dicts and lists stored as JSON strings).
    ``/history/<name>``: float64 per-iteration values (None -> NaN). If ``history`` is None and
    ``info`` has a dict under "history", that one is written and left out of ``/info``.
    """
    path = str(path)
    image = np.ascontiguousarray(to_numpy(volume), dtype=np.float32)
    if image.ndim not in (2, 3):
        raise InputError(f"volume must be 2-D or 3-D, got shape {list(image.shape)}", file=path,
                         field="/reconstruction")
    info = dict(info or {})
    if history is None and isinstance(info.get("history"), dict):
        history = info.pop("history")
    with _h5_file_atomic(path, overwrite) as f:
        f.attrs["layout_version"] = LAYOUT_VERSION
        ds = _create(f, "reconstruction", image)
        ds.attrs["voxel_size"] = float(voxel_size)
        ds.attrs["units"] = "1/mm"
        _write_attrs(f.create_group("metrics"), metrics)
        _write_attrs(f.create_group("provenance"), provenance)
        _write_attrs(f.create_group("info"), info)
        hist = f.create_group("history")
        for name, values in (history or {}).items():
            hist.create_dataset(str(name).replace("/", "_"), data=_history_array(values))


def read_image(path) -> tuple[np.ndarray, float]:
    """(image float32 C-contiguous, voxel_size mm) from ``/reconstruction``, else ``/reference``, else ``/image``.

    ``voxel_size`` comes from the dataset's attribute, else from ``/volume@voxel_size``.
    """
    path = str(path)
    with _open(path) as f:
        for name in ("/reconstruction", "/reference", "/image"):
            if name in f:
                break
        else:
            raise InputError("no image found: expected /reconstruction, /reference or /image", file=path,
                             field="/reconstruction")
        ds = _dataset(f, name, path, "image in 1/mm")
        if ds.ndim not in (2, 3):
            raise InputError(f"must be 2-D (ny, nx) or 3-D (nz, ny, nx), got shape {list(ds.shape)}",
                             file=path, field=name)
        if "voxel_size" in ds.attrs:
            voxel_size = _number(_scalar_attr(ds, "voxel_size", path), f"{name}@voxel_size", path)
        elif "/volume" in f and "voxel_size" in f["/volume"].attrs:
            voxel_size = _number(_scalar_attr(f["/volume"], "voxel_size", path), "/volume@voxel_size", path)
        else:
            raise InputError("missing attribute (voxel size in mm)", file=path, field=f"{name}@voxel_size")
        image = _float_array(ds, path, "image in 1/mm")
    return image, float(voxel_size)


# ---------------------------------------------------------------- summary for `recon info`

def _stats(a: np.ndarray) -> dict[str, float]:
    return {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean(dtype=np.float64))}


def _attrs_dict(obj) -> dict[str, Any]:
    import h5py

    out = {key: _decode(obj.attrs[key]) for key in obj.attrs}
    for key, item in obj.items():  # long strings stored as datasets
        if isinstance(item, h5py.Dataset) and item.shape == ():
            out[key] = _decode(item[()])
    return out


def describe_file(path) -> dict[str, Any]:
    """Summary of an HDF5 file for ``recon info`` (plain JSON-serialisable values).

    ``format`` is "hdf5-v1-sinogram" (fully validated, as by read_sinogram),
    "hdf5-v1-reconstruction", or "hdf5" for other layouts (then ``datasets`` lists
    every dataset's shape and dtype).
    """
    import h5py

    path = str(path)
    with _open(path) as f:
        is_v1 = str(_decode(f.attrs.get("layout_version", ""))) == LAYOUT_VERSION
        if is_v1 and "reconstruction" in f:
            ds = _dataset(f, "/reconstruction", path, "image in 1/mm")
            check_fits_memory(ds.shape, 4 + ds.dtype.itemsize, path, "/reconstruction", "the image")
            image = np.asarray(ds[()], dtype=np.float32)
            hist = f.get("history")
            return {
                "file": path, "format": "hdf5-v1-reconstruction", "layout_version": LAYOUT_VERSION,
                "reconstruction": {"shape": list(ds.shape), "dtype": str(ds.dtype),
                                   "voxel_size": _decode(ds.attrs.get("voxel_size")),
                                   "units": _decode(ds.attrs.get("units", "1/mm")), **_stats(image)},
                "metrics": _attrs_dict(f["metrics"]) if "metrics" in f else {},
                "provenance": _attrs_dict(f["provenance"]) if "provenance" in f else {},
                "info": _attrs_dict(f["info"]) if "info" in f else {},
                "history": {k: int(v.shape[0]) for k, v in hist.items()} if hist is not None else {},
            }
        if not (is_v1 or "sinogram" in f):
            datasets: dict[str, Any] = {}

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    datasets["/" + name] = {"shape": list(obj.shape), "dtype": str(obj.dtype)}

            f.visititems(visit)
            return {"file": path, "format": "hdf5", "layout_version": None, "datasets": datasets}
    sino = read_sinogram(path)
    meta = dict(sino.metadata)
    noise = {k: meta.pop(k) for k in NOISE_ATTRS if k in meta}
    meta.pop("source", None)
    angles = sino.geometry.angles
    return {
        "file": path, "format": "hdf5-v1-sinogram", "layout_version": LAYOUT_VERSION,
        "sinogram": {"shape": list(sino.data.shape), "dtype": str(sino.data.dtype), **_stats(sino.data)},
        "geometry": {**sino.geometry.attrs(), "n_angles": int(angles.size),
                     "angle_first": float(angles[0]), "angle_last": float(angles[-1])},
        "volume": {"shape": list(sino.grid.shape), "voxel_size": sino.grid.voxel_size},
        "has_reference": sino.reference is not None,
        "noise": noise,
        "metadata": meta,
    }
