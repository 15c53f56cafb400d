"""Trained networks at inference time: ONNX Runtime, no PyTorch.

A model is ``<name>.onnx`` (input ``x``, output ``y``, both ``(batch, 1, H, W)`` float32 on
the normalised scale) whose metadata (JSON) sits in the ONNX ``metadata_props`` under the
key ``"recon_cli"`` and, for people, in the sidecar ``<name>.json``. The metadata says what
the model was trained for (geometry fingerprint, grid, noise, input solver) and how to
scale its input and output (``normalization.input_scale``, 1/mm per network unit).

:meth:`Model.check_fits` refuses an input the model was not trained for; :meth:`Model.apply`
maps an image (ny, nx) or stack (nz, ny, nx) in 1/mm to the network's output in 1/mm.
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
from recon_cli.geometry import Geometry, VolumeGrid, fingerprint

log = logging.getLogger(__name__)

METADATA_KEY = "recon_cli"
METADATA_FORMAT = "recon-cli-model/1"
#: Noise levels (I0 or sigma) within this factor of the trained level count as a fit.
NOISE_TOLERANCE = 2.0
#: Slices per ONNX Runtime call when applying a model to a stack.
BATCH_SLICES = 8
#: Folder of the models shipped with the package (found by bare name).
PACKAGED_MODELS = Path(__file__).resolve().parent / "models"


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


def resolve_model_path(path: str | os.PathLike) -> Path:
    """The .onnx file for ``path``: itself, its .onnx sibling (for .pt/.json), or a packaged model by name."""
    p = Path(path)
    candidates = [p] if p.suffix == ".onnx" else [p.with_suffix(".onnx"), Path(str(p) + ".onnx")]
    if p.parent == Path(".") and p.suffix in ("", ".onnx", ".pt", ".json"):
        candidates.append(PACKAGED_MODELS / (p.stem + ".onnx"))
    candidates = list(dict.fromkeys(candidates))
    for c in candidates:
        if c.is_file():
            return c
    raise InputError(f"model file not found (looked for {', '.join(str(c) for c in candidates)})",
                     file=str(path), field="model")


def _norm_json(value):
    """JSON-normalised value for comparisons (floats rounded, tuples as lists)."""
    if isinstance(value, dict):
        return {str(k): _norm_json(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_norm_json(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.9g}")
    return value


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

    # ------------------------------------------------------------------ checks
    def mismatches(self, geometry: Geometry, grid: VolumeGrid, *, expected_input: dict | None = None,
                   noise: dict | None = None) -> list[tuple[str, str]]:
        """(field, explanation) for every way the input differs from what the model was trained for."""
        found: list[tuple[str, str]] = []
        mg = self.meta.get("grid", {})
        want_shape, want_vs = list(mg.get("shape", [])), mg.get("voxel_size")
        have_shape = list(grid.slice_shape)
        if want_shape and (want_shape != have_shape or not math.isclose(float(want_vs), grid.voxel_size,
                                                                         rel_tol=1e-6)):
            found.append(("grid", f"trained for a {want_shape} grid of {want_vs} mm voxels, "
                                  f"got {have_shape} of {grid.voxel_size} mm"))
        want_fp = self.meta.get("geometry", {}).get("fingerprint")
        trained_grid = VolumeGrid(tuple(want_shape), float(want_vs)) if want_shape else grid.slice_grid()
        if want_fp and want_fp != fingerprint(geometry, trained_grid):  # the geometry alone
            found.append(("geometry", self._geometry_difference(geometry)))
        if noise is not None:
            msg = noise_mismatch(self.meta.get("noise") or {}, noise)
            if msg:
                found.append(("noise", msg))
        if expected_input is not None and self.trained_input is not None:
            want, have = self.trained_input, expected_input
            if want.get("name") != have.get("name"):
                found.append(("input", f"trained on {want.get('name')!r} inputs, got {have.get('name')!r}"))
            elif _norm_json(want.get("params", {})) != _norm_json(have.get("params", {})):
                diff = sorted(k for k in set(want.get("params", {})) | set(have.get("params", {}))
                              if _norm_json(want.get("params", {}).get(k)) != _norm_json(have.get("params", {}).get(k)))
                found.append(("input", f"input solver {have.get('name')!r} parameters differ from training: "
                                       + ", ".join(f"{k}={have.get('params', {}).get(k)!r} "
                                                   f"(trained {want.get('params', {}).get(k)!r})" for k in diff)))
        return found

    def _geometry_difference(self, geometry: Geometry) -> str:
        mgeo = self.meta.get("geometry", {})
        attrs = mgeo.get("attrs", {})
        parts = [f"{k}={v!r} (trained {attrs.get(k)!r})" for k, v in geometry.attrs().items()
                 if _norm_json(attrs.get(k)) != _norm_json(v)]
        angles = mgeo.get("angles")
        if not parts and angles is not None:
            if len(angles) != geometry.n_angles:
                parts.append(f"{geometry.n_angles} angles (trained {len(angles)})")
            else:
                parts.append("angles differ")
        return "trained for another geometry: " + ("; ".join(parts) or "fingerprint differs")

    def check_fits(self, geometry: Geometry, grid: VolumeGrid, *, expected_input: dict | None = None,
                   noise: dict | None = None, override: bool = False) -> list[tuple[str, str]]:
        """Raise InputError (file = model, field = first mismatch) unless the input fits or ``override``.

        ``noise``: the sinogram's metadata (keys ``I0`` / ``sigma``); ``expected_input``: the
        input solver that will produce the network's input. Returns the mismatches (empty when it
        fits); with ``override`` they are logged as warnings instead of raised.
        """
        found = self.mismatches(geometry, grid, expected_input=expected_input, noise=noise)
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
    def apply(self, x):
        """Network output for an image (ny, nx) or stack (nz, ny, nx) in 1/mm (numpy, or cupy on the GPU)."""
        if x.ndim not in (2, 3):
            raise InputError(f"model input must be (ny, nx) or (nz, ny, nx), got shape {tuple(x.shape)}",
                             file=str(self.path))
        xp = array_module(x)
        stack = x[None] if x.ndim == 2 else x
        stack = stack.astype(np.float32, copy=False) * np.float32(1.0 / self.input_scale)
        padded, shape = pad_to_multiple(stack, self.pad_multiple, xp=xp)
        padded = xp.ascontiguousarray(padded[:, None])
        out = xp.empty_like(padded)
        for s in range(0, padded.shape[0], BATCH_SLICES):
            chunk = padded[s:s + BATCH_SLICES]
            if xp is np:
                out[s:s + BATCH_SLICES] = self.session.run([self._output_name], {self._input_name: chunk})[0]
            else:
                self._run_cuda(chunk, out[s:s + BATCH_SLICES])
        y = crop(out[:, 0], shape) * np.float32(self.output_scale)
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


def noise_mismatch(trained: dict, data: dict) -> str | None:
    """Why the data's noise (sinogram metadata: I0 / sigma) differs from the trained noise, or None.

    Data without any noise description cannot be checked and counts as a fit.
    """
    t_i0, t_sigma = trained.get("I0"), trained.get("sigma")
    d_i0, d_sigma = data.get("I0"), data.get("sigma")
    if d_i0 is None and d_sigma is None:
        return None
    if d_i0 is not None:
        if t_i0 is None:
            return f"data has Poisson noise I0={d_i0:g}, the model was trained on {_noise_text(trained)}"
        ratio = float(d_i0) / float(t_i0)
        if not 1 / NOISE_TOLERANCE <= ratio <= NOISE_TOLERANCE:
            return f"data has I0={float(d_i0):g}, the model was trained on I0={float(t_i0):g}"
        return None
    if t_sigma is None:
        return f"data has Gaussian noise sigma={float(d_sigma):g}, the model was trained on {_noise_text(trained)}"
    ratio = float(d_sigma) / float(t_sigma) if float(t_sigma) > 0 else math.inf
    if not 1 / NOISE_TOLERANCE <= ratio <= NOISE_TOLERANCE:
        return f"data has sigma={float(d_sigma):g}, the model was trained on sigma={float(t_sigma):g}"
    return None


def _noise_text(noise: dict) -> str:
    if noise.get("I0") is not None:
        return f"Poisson noise I0={float(noise['I0']):g}"
    if noise.get("sigma") is not None:
        return f"Gaussian noise sigma={float(noise['sigma']):g}"
    return "noiseless data"


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
    return _load_cached(str(onnx_path), stat.st_mtime_ns, stat.st_size, tuple(providers or providers_for_device()))


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int, providers: tuple[str, ...]) -> Model:
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
