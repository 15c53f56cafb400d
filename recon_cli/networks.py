"""Trained networks at inference time: ONNX Runtime, no PyTorch.

A model is ``<name>.onnx`` (input ``x`` ``(batch, C, H, W)``: the image and any extra constant
planes, output ``y`` ``(batch, 1, H, W)``, float32 on the normalised scale) whose metadata (JSON) sits in the ONNX ``metadata_props`` under the
key ``"recon_cli"`` and, for people, in the sidecar ``<name>.json``. The metadata says what
the model was trained for (envelope of geometries, grids and noise; input solver) and how to
scale its input and output (``normalization.input_scale``, 1/mm per network unit, or
``normalization.mode: per_image``: each slice divided by its own intensity scale).

The metadata's ``envelope`` (recon_cli.model_envelope) states the acquisitions the model serves;
:meth:`Model.check_fits` refuses an input outside it (old metadata: the trained geometry, within
tolerances). :meth:`Model.apply` maps an image (ny, nx) or stack (nz, ny, nx) in 1/mm to the
network's output in 1/mm; a model with ``envelope.canonical_pixel_size_mm`` resamples its input to
that pixel size and back, and ``input_channels`` may add constant planes (noise level, view count).
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recon_cli.backend import array_module, gpu_available
from recon_cli.errors import ConfigError, InputError
from recon_cli.geometry import Geometry, VolumeGrid
from recon_cli.model_envelope import envelope_mismatches, envelope_of
from recon_cli.model_files import PACKAGED_MODELS, resolve_model_path  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

METADATA_KEY = "recon_cli"
METADATA_FORMAT = "recon-cli-model/1"
#: Slices per ONNX Runtime call when applying a model to a stack.
BATCH_SLICES = 8


def pad_to_multiple(x: np.ndarray, multiple: int, xp=np) -> tuple[Any, tuple[int, int]]:
    """Pad the last two axes at the bottom/right up to a multiple of ``multiple`` (reflect, else edge).

    Returns the padded array and the original (ny, nx), for :func:`crop`.
    """
    ny, nx = x.shape[-2:]
    py, px = (-ny) % multiple, (-nx) % multiple
    if py == 0 and px == 0:
        return x, (ny, nx)
    widths = [(0, 0)] * (x.ndim - 2) + [(0, py), (0, px)]
    mode = "reflect" if py < ny and px < nx else "edge"
    return xp.pad(x, widths, mode=mode), (ny, nx)


def crop(x, shape: tuple[int, int]):
    return x[..., : shape[0], : shape[1]]


def _to_numpy(x) -> np.ndarray:
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)


def _to_xp(x: np.ndarray, xp):
    return x if xp is np else xp.asarray(x)


def canonical_shape(shape: tuple[int, int], voxel_size: float, canonical: float) -> tuple[int, int]:
    """(ny, nx) covering the same field of view as ``shape`` at ``voxel_size`` mm with ``canonical`` mm pixels."""
    return tuple(max(1, int(round(n * float(voxel_size) / float(canonical)))) for n in shape)


def resample(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Images (ny, nx) or stacks (nz, ny, nx) resampled in-plane to ``shape`` over the same field of view.

    Linear interpolation; a Gaussian pre-filter against aliasing where the grid gets coarser
    (skimage.transform.resize). Values keep their units (1/mm): a constant image stays that constant.
    """
    from skimage.transform import resize

    shape = tuple(int(n) for n in shape)
    if tuple(x.shape[-2:]) == shape:
        return np.asarray(x, np.float32)
    out_shape = (*x.shape[:-2], *shape)
    shrinks = any(a > b for a, b in zip(x.shape[-2:], shape))
    out = resize(np.asarray(x, np.float32), out_shape, order=1, mode="edge", anti_aliasing=shrinks,
                 preserve_range=True)
    return np.asarray(out, np.float32)


#: Percentile of a slice's values taken as its intensity scale (per-image normalisation).
SCALE_PERCENTILE = 99.5


def image_scale(stack: np.ndarray, fallback: float) -> np.ndarray:
    """(nz,) intensity scale of each slice of (nz, ny, nx): its 99.5th percentile (``fallback`` if <= 0)."""
    flat = np.asarray(stack, np.float32).reshape(stack.shape[0], -1)
    scale = np.percentile(flat, SCALE_PERCENTILE, axis=1).astype(np.float32)
    bad = ~(np.isfinite(scale) & (scale > 1e-3 * float(fallback)))
    scale[bad] = np.float32(fallback)
    return scale


def noise_std_of(noise: dict | None) -> float | None:
    """Standard deviation of one line integral's noise: 1/sqrt(I0) (Poisson, unattenuated) or sigma."""
    noise = noise or {}
    if noise.get("I0") is not None and float(noise["I0"]) > 0:
        return 1.0 / math.sqrt(float(noise["I0"]))
    if noise.get("sigma") is not None and float(noise["sigma"]) > 0:
        return float(noise["sigma"])
    return None


#: Channel value when the noise is unknown: that of I0 = 1e5 (the middle of the usual envelope).
DEFAULT_NOISE_STD = 1.0 / math.sqrt(1.0e5)


def condition_value(name: str, conditions: dict) -> float:
    """The constant value of an extra input channel: ``noise_level`` = log10(noise_std) + 2.5
    (I0 1e4..1e6 -> -0.5..0.5), ``n_views`` = views / 360."""
    if name == "noise_level":
        std = conditions.get("noise_std")
        if std is None:
            log.warning("noise level unknown (no I0 or sigma in the data): the network assumes I0 = 1e5")
            std = DEFAULT_NOISE_STD
        return float(math.log10(float(std)) + 2.5)
    if name == "n_views":
        if conditions.get("n_views") is None:
            raise InputError("the model needs the number of views as an input channel", field="n_views")
        return float(conditions["n_views"]) / 360.0
    raise InputError(f"unknown input channel {name!r} in the model metadata", field="metadata/input_channels")


def conditions_for(sino) -> dict:
    """The extra-channel conditions of a sinogram: its noise std and view count."""
    return {"noise_std": noise_std_of(sino.metadata), "n_views": int(sino.geometry.n_angles)}


def _norm_json(value):
    """JSON-normalised value for comparisons (floats rounded, tuples as lists)."""
    if isinstance(value, dict):
        return {str(k): _norm_json(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_norm_json(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.9g}")
    return value


def param_differences(want: dict | None, have: dict | None, defaults: dict | None = None,
                      renamed: dict | None = None) -> list[str]:
    """Names of solver parameters whose values differ between training (``want``) and this run.

    A parameter missing on one side counts as its default (``defaults``, JSON values): parameters added
    to a solver after a model was trained, left at their defaults, do not change what it computes.
    ``renamed``: the solver's former parameter names -> current ones (metadata written before a rename).
    """
    renamed = renamed or {}
    want, have = ({renamed.get(k, k): v for k, v in (side or {}).items()} for side in (want, have))
    defaults = defaults or {}
    return sorted(k for k in set(want) | set(have)
                  if _norm_json(want.get(k, defaults.get(k))) != _norm_json(have.get(k, defaults.get(k))))


@dataclass
class Model:
    """A loaded ONNX model with its metadata. ``providers``: ONNX Runtime execution providers in use."""

    path: Path
    meta: dict
    session: Any = field(repr=False)
    providers: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ description
    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.path.stem))

    @property
    def input_scale(self) -> float:
        return float(self.meta["normalization"]["input_scale"])

    @property
    def output_scale(self) -> float:
        return float(self.meta["normalization"].get("output_scale", self.input_scale))

    @property
    def pad_multiple(self) -> int:
        return int(self.meta.get("pad_multiple", 1))

    @property
    def trained_input(self) -> dict | None:
        """The input solver the model was trained on, ``{"name": ..., "params": {...}}``."""
        return self.meta.get("input")

    @property
    def correction_weight(self) -> float:
        """Weight a of the network's correction, output = x + a (net(x) - x) (metadata ``inference``; 1 if
        absent): chosen after training on tuning data, e.g. benchmarks/tuning/unet_correction_weight.py."""
        return float((self.meta.get("inference") or {}).get("correction_weight", 1.0))

    @property
    def trained_dihedral(self) -> bool:
        """Whether training turned and mirrored every patch with its target (``training.dihedral``)."""
        return bool(((self.meta.get("config") or {}).get("training") or {}).get("dihedral", False))

    # ------------------------------------------------------------------ checks
    @property
    def envelope(self) -> dict:
        """The acquisitions the model serves (recon_cli.model_envelope; derived for old metadata)."""
        return envelope_of(self.meta)

    def mismatches(self, geometry: Geometry, grid: VolumeGrid, *, expected_input: dict | None = None,
                   noise: dict | None = None, input_defaults: dict | None = None,
                   input_renamed: dict | None = None) -> list[tuple[str, str]]:
        """(field, explanation) for every way the input leaves the model's envelope or input solver.
        ``input_defaults`` / ``input_renamed``: the input solver's default parameters and former parameter
        names (see :func:`param_differences`)."""
        found = envelope_mismatches(self.envelope, geometry, grid, noise)
        if expected_input is not None and self.trained_input is not None:
            want, have = self.trained_input, expected_input
            if want.get("name") != have.get("name"):
                found.append(("input", f"trained on {want.get('name')!r} inputs, got {have.get('name')!r}"))
            elif diff := param_differences(want.get("params", {}), have.get("params", {}), input_defaults,
                                           input_renamed):
                found.append(("input", f"input solver {have.get('name')!r} parameters differ from training: "
                                       + ", ".join(f"{k}={have.get('params', {}).get(k)!r} "
                                                   f"(trained {want.get('params', {}).get(k)!r})" for k in diff)))
        return found

    def check_fits(self, geometry: Geometry, grid: VolumeGrid, *, expected_input: dict | None = None,
                   noise: dict | None = None, override: bool = False,
                   input_defaults: dict | None = None, input_renamed: dict | None = None) -> list[tuple[str, str]]:
        """Raise InputError (file = model, field = first mismatch) unless the input fits or ``override``.

        ``noise``: the sinogram's metadata (keys ``I0`` / ``sigma``); ``expected_input``: the
        input solver that will produce the network's input. Returns the mismatches (empty when it
        fits); with ``override`` they are logged as warnings instead of raised.
        """
        found = self.mismatches(geometry, grid, expected_input=expected_input, noise=noise,
                                input_defaults=input_defaults, input_renamed=input_renamed)
        return self.enforce_fit(found, override)

    def enforce_fit(self, found: list[tuple[str, str]], override: bool,
                    what: str = "model does not fit this input") -> list[tuple[str, str]]:
        """Raise InputError (file = model, field = first of ``found``) unless ``found`` is empty or
        ``override``; with ``override`` each (field, explanation) is logged as a warning. Returns ``found``."""
        if found and not override:
            text = "; ".join(f"{f}: {m}" for f, m in found)
            raise InputError(f"{what} ({text}); set allow_mismatch: true to run anyway",
                             file=str(self.path), field=found[0][0])
        for f, m in found:
            log.warning("model %s used outside its training conditions: %s: %s", self.path, f, m)
        return found

    # ------------------------------------------------------------------ inference
    @property
    def canonical_pixel_size(self) -> float | None:
        """mm: the network's pixel size when the model resamples its input (None: it does not)."""
        value = self.envelope.get("canonical_pixel_size_mm")
        return float(value) if value is not None else None

    @property
    def normalization_mode(self) -> str:
        """``fixed`` (divide by input_scale) or ``per_image`` (divide by each slice's intensity scale)."""
        return str(self.meta["normalization"].get("mode", "fixed"))

    @property
    def input_channels(self) -> list[str]:
        """The network's input planes: ``image`` then any of ``noise_level``, ``n_views`` (constant planes)."""
        return list(self.meta.get("input_channels") or ["image"])

    def apply(self, x, *, voxel_size: float | None = None, conditions: dict | None = None, residual: bool = False,
              native: bool = False):
        """Network output for an image (ny, nx) or stack (nz, ny, nx) in 1/mm (numpy, or cupy on the GPU).

        ``voxel_size`` (mm) is needed by a model with a canonical pixel size: the input is resampled
        (anti-aliased) to it, run, and resampled back to its own shape. ``conditions``: ``noise_std``
        (line-integral noise std, see :func:`noise_std_of`) and ``n_views``, for the extra input
        channels the metadata may name.

        ``residual`` (models with a canonical pixel size only): return x + resample(net(x_c) - x_c), x_c the
        input resampled to the canonical grid, instead of resample(net(x_c)): the network's correction is
        added to the input at its own resolution (then clipped at 0), so a grid finer than the canonical one keeps its
        detail. ``native``: no resampling at all, the network runs on the input's own grid (RISING's default:
        its k-iteration inputs look alike at any pixel size, while resampling them changes their character).
        """
        if x.ndim not in (2, 3):
            raise InputError(f"model input must be (ny, nx) or (nz, ny, nx), got shape {tuple(x.shape)}",
                             file=str(self.path))
        xp = array_module(x)
        stack = x[None] if x.ndim == 2 else x
        shape_in = tuple(stack.shape[-2:])
        canonical = None if native else self.canonical_pixel_size
        if canonical is not None:
            if voxel_size is None:
                raise InputError("this model resamples to its canonical pixel size and needs the input's "
                                 "voxel size", file=str(self.path), field="voxel_size")
            original = stack
            stack = _to_xp(resample(_to_numpy(stack), canonical_shape(shape_in, voxel_size, canonical)), xp)
        stack = stack.astype(np.float32, copy=False)
        resampled = stack
        if self.normalization_mode == "per_image":
            scales = xp.asarray(image_scale(_to_numpy(stack), fallback=self.input_scale), dtype=np.float32)
        else:
            scales = xp.full((stack.shape[0],), self.input_scale, dtype=np.float32)
        stack = stack / scales[:, None, None]
        padded, shape = pad_to_multiple(stack, self.pad_multiple, xp=xp)
        planes = [padded[:, None]]
        for name in self.input_channels[1:]:
            value = condition_value(name, conditions or {})
            planes.append(xp.full((padded.shape[0], 1, *padded.shape[1:]), value, dtype=np.float32))
        padded = xp.ascontiguousarray(xp.concatenate(planes, axis=1) if len(planes) > 1 else planes[0])
        out = xp.empty((padded.shape[0], 1, *padded.shape[2:]), dtype=np.float32)
        for s in range(0, padded.shape[0], BATCH_SLICES):
            chunk = padded[s:s + BATCH_SLICES]
            if xp is np:
                out[s:s + BATCH_SLICES] = self.session.run([self._output_name], {self._input_name: chunk})[0]
            else:
                self._run_cuda(chunk, out[s:s + BATCH_SLICES])
        scale_out = scales * np.float32(self.output_scale / self.input_scale)
        y = crop(out[:, 0], shape) * scale_out[:, None, None]
        if canonical is not None and residual:
            y = original.astype(np.float32) + _to_xp(resample(_to_numpy(y - resampled), shape_in), xp)
            y = xp.maximum(y, np.float32(0.0))  # attenuation stays >= 0, as the networks' own outputs
        elif canonical is not None:
            y = _to_xp(resample(_to_numpy(y), shape_in), xp)
        y = xp.ascontiguousarray(y, dtype=np.float32)
        return y[0] if x.ndim == 2 else y

    @property
    def _input_name(self) -> str:
        return self.session.get_inputs()[0].name

    @property
    def _output_name(self) -> str:
        return self.session.get_outputs()[0].name

    def _run_cuda(self, chunk, out) -> None:
        """Run on CuPy arrays in place through IOBinding (input and output stay on the GPU)."""
        import cupy

        if "CUDAExecutionProvider" not in self.providers:  # no CUDA in this ONNX Runtime: via the host
            out[...] = cupy.asarray(self.session.run([self._output_name], {self._input_name: chunk.get()})[0])
            return
        chunk = cupy.ascontiguousarray(chunk)
        binding = self.session.io_binding()
        device_id = chunk.device.id
        binding.bind_input(self._input_name, "cuda", device_id, np.float32, list(chunk.shape), chunk.data.ptr)
        binding.bind_output(self._output_name, "cuda", device_id, np.float32, list(out.shape), out.data.ptr)
        cupy.cuda.runtime.deviceSynchronize()
        self.session.run_with_iobinding(binding)
        cupy.cuda.runtime.deviceSynchronize()


#: The 8 symmetries of the square: quarter turns k, then a mirror of the last axis.
DIHEDRAL = tuple((k, mirror) for k in range(4) for mirror in (False, True))


def dihedral_mean(apply, x):
    """Mean of ``apply`` over the 8 turns / mirrors of x's last two axes, each undone on its output.

    x: (ny, nx) or (nz, ny, nx) (numpy or cupy); ``apply`` maps such an array (its last two axes possibly
    swapped) to one of the same shape. The result is equivariant under those 8 symmetries."""
    xp = array_module(x)
    total = None
    for k, mirror in DIHEDRAL:
        t = xp.rot90(x, k, axes=(-2, -1))
        y = apply(xp.ascontiguousarray(t[..., ::-1] if mirror else t))
        y = xp.rot90(y[..., ::-1] if mirror else y, -k, axes=(-2, -1)).astype(np.float32)
        total = y if total is None else total + y
    return xp.ascontiguousarray(total / np.float32(len(DIHEDRAL)))


def read_metadata(onnx_path: Path, session=None) -> dict:
    """The model's metadata: from the ONNX file, else from the sidecar ``<name>.json``."""
    if session is not None:
        text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if text:
            return json.loads(text)
    sidecar = onnx_path.with_suffix(".json")
    if sidecar.is_file():
        return json.loads(sidecar.read_text())
    raise InputError(f"no recon-cli metadata (no {METADATA_KEY!r} entry and no {sidecar.name})",
                     file=str(onnx_path), field="metadata")


def update_metadata(onnx_path: Path, key: str, value) -> dict:
    """Set metadata entry ``key`` (a dict value is merged into the existing one) of a model, inside its .onnx
    and in its .json sidecar (kept equal); returns the new metadata. Needs the ``onnx`` package."""
    import onnx

    onnx_path = Path(onnx_path)
    proto = onnx.load(str(onnx_path))
    entry = next((e for e in proto.metadata_props if e.key == METADATA_KEY), None)
    if entry is None:
        raise InputError(f"no {METADATA_KEY!r} metadata entry to update", file=str(onnx_path), field="metadata")
    meta = json.loads(entry.value)
    meta[key] = {**meta.get(key, {}), **value} if isinstance(value, dict) else value
    entry.value = json.dumps(meta, indent=2, allow_nan=False)
    tmp = onnx_path.with_suffix(".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(onnx_path)
    onnx_path.with_suffix(".json").write_text(entry.value + "\n")
    load_cached.cache_clear()
    return meta


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("running a trained model needs ONNX Runtime: pip install onnxruntime "
                          "(onnxruntime-gpu for CUDA)", field="model") from None
    return onnxruntime


def providers_for_device() -> list[str]:
    """CUDA first when a GPU is usable and this ONNX Runtime has it, then the CPU."""
    ort = _onnxruntime()
    available = ort.get_available_providers()
    if gpu_available() and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def load_model(path: str | os.PathLike, providers: list[str] | None = None) -> Model:
    """Load ``path`` (.onnx, or a .pt/.json whose .onnx sibling exists, or a packaged model's name)."""
    onnx_path = resolve_model_path(path).resolve()
    stat = onnx_path.stat()
    return load_cached(str(onnx_path), stat.st_mtime_ns, stat.st_size, tuple(providers or providers_for_device()))


@functools.lru_cache(maxsize=8)
def load_cached(path: str, mtime_ns: int, size: int, providers: tuple[str, ...]) -> Model:
    """The ONNX session of ``path``, one per (path, mtime, size, providers) in this process (its
    ``cache_info()`` counts the sessions built, recon_cli.worker_cache.stats)."""
    ort = _onnxruntime()

    opts = ort.SessionOptions()
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    opts.intra_op_num_threads = len(cores)
    # no busy-waiting of the worker threads between operators: on a CPU shared with other jobs spinning
    # threads made a 256 x 256 U-Net pass ~1.5x slower (112 ms against 75 ms, 2 threads, load ~3)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(path, sess_options=opts, providers=list(providers))
    except Exception as exc:  # not an ONNX file, or a corrupt one
        raise InputError(f"cannot load the ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0]})",
                         file=path, field="model") from None
    meta = read_metadata(Path(path), session)
    if meta.get("format") != METADATA_FORMAT:
        raise InputError(f"unknown model metadata format {meta.get('format')!r}; expected {METADATA_FORMAT!r}",
                         file=path, field="metadata/format")
    if "normalization" not in meta:
        raise InputError("metadata lacks 'normalization'", file=path, field="metadata/normalization")
    return Model(Path(path), meta, session, list(session.get_providers()))
