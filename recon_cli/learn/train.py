"""Training loop: data -> U-Net -> checkpoints -> ``<name>.pt`` + ``<name>.onnx`` + ``<name>.json``.

Deterministic: seeds for torch, numpy and Python, ``torch.use_deterministic_algorithms``,
a fixed thread count and one ``torch.Generator`` for shuffling and cropping, all saved in
the checkpoint written after every epoch, so ``--resume`` continues exactly where an
interrupted run stopped (same final weights as an uninterrupted run).

Images are divided by ``input_scale`` (1/mm) before the network, padded (reflect) to a
multiple of ``2**depth`` and the output cropped back: exactly what
:meth:`recon_cli.networks.Model.apply` does at inference.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from recon_cli.errors import ConfigError, InputError, RunError
from recon_cli.geometry import fingerprint
from recon_cli.learn.config import TrainConfig
from recon_cli.learn.datasets import SplitArrays, build_dataset, describe_data
from recon_cli.learn.losses import make_loss
from recon_cli.learn.unet import UNet, count_parameters
from recon_cli.model_envelope import single_geometry_envelope
from recon_cli.networks import METADATA_FORMAT, METADATA_KEY, condition_value, image_scale, pad_to_multiple

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "recon-cli-checkpoint/1"
ONNX_OPSET = 17
#: Largest |ONNX - PyTorch| accepted at export, on the network's normalised scale.
ONNX_TOLERANCE = 1e-5


@dataclass
class TrainResult:
    paths: dict[str, Path]
    metadata: dict
    model: torch.nn.Module
    history: list[dict] = field(default_factory=list)


@dataclass
class Tensors:
    """One split on the normalised scale: ``x`` padded inputs (N,C,Py,Px), ``y`` targets (N,1,ny,nx).

    C = 1 + extra channels (constant planes); ``scale`` (N,): 1/mm per network unit of each sample.
    """

    x: torch.Tensor
    y: torch.Tensor
    x_raw: torch.Tensor  # unpadded inputs (N,C,ny,nx), for patches
    scale: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.y.shape[0])


def output_paths(cfg: TrainConfig, out_dir: str | os.PathLike | None) -> dict[str, Path]:
    out = Path(out_dir if out_dir is not None else cfg.out)
    return {"pt": out / f"{cfg.name}.pt", "onnx": out / f"{cfg.name}.onnx", "json": out / f"{cfg.name}.json",
            "checkpoint": out / f"{cfg.name}.checkpoint.pt"}


def set_determinism(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(threads)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _device(request: str) -> torch.device:
    if request == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device cuda requested but torch sees no CUDA device", field="training.device")
    if request in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def sample_scales(arrays: SplitArrays, cfg: TrainConfig) -> np.ndarray:
    """(N,) 1/mm per network unit: input_scale, or each input's intensity scale (as Model.apply computes it)."""
    n = arrays.inputs.shape[0]
    if cfg.envelope is not None and cfg.envelope.normalization == "per_image" and n:
        return image_scale(arrays.inputs, fallback=cfg.input_scale)
    return np.full((n,), cfg.input_scale, np.float32)


def extra_planes(arrays: SplitArrays, cfg: TrainConfig) -> list[np.ndarray]:
    """(N,) value of each extra input channel (recon_cli.networks.condition_value) per sample."""
    names = cfg.envelope.extra_channels if cfg.envelope is not None else []
    if not names:
        return []
    if arrays.inputs.shape[0] == 0:
        return [np.zeros((0,), np.float32) for _ in names]
    if arrays.conditions is None:
        raise RunError("extra input channels need per-pair conditions (envelope training data)")
    planes = []
    for name in names:
        values = []
        for noise_std, n_views in arrays.conditions:
            cond = {"noise_std": None if not np.isfinite(noise_std) else float(noise_std), "n_views": float(n_views)}
            values.append(condition_value(name, cond))
        planes.append(np.asarray(values, np.float32))
    return planes


def to_tensors(arrays: SplitArrays, cfg: TrainConfig, multiple: int, device: torch.device) -> Tensors:
    scale = sample_scales(arrays, cfg)
    x = arrays.inputs.astype(np.float32) / scale[:, None, None]
    y = arrays.targets.astype(np.float32) / scale[:, None, None]
    x = np.concatenate([x[:, None]] + [np.broadcast_to(v[:, None, None, None], (x.shape[0], 1, *x.shape[1:]))
                                       for v in extra_planes(arrays, cfg)], axis=1).astype(np.float32)
    xp, _ = pad_to_multiple(x, multiple)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    return Tensors(x=t(xp), y=t(y[:, None]), x_raw=t(x), scale=scale)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    t = cfg.training
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs, eta_min=t.min_lr)
    if t.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=t.step_size, gamma=t.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)


def _batches(data: Tensors, cfg: TrainConfig, gen: torch.Generator):
    """(input, target) batches of one epoch: shuffled, random crops of ``patch`` when set."""
    t = cfg.training
    perm = torch.randperm(data.n, generator=gen)
    n_batches = math.ceil(data.n / t.batch_size)
    if t.max_steps_per_epoch:
        n_batches = min(n_batches, t.max_steps_per_epoch)
    ny, nx = data.y.shape[-2:]
    for b in range(n_batches):
        idx = perm[b * t.batch_size:(b + 1) * t.batch_size]
        if t.patch is None:
            yield data.x[idx], data.y[idx]
            continue
        p = t.patch
        oy = torch.randint(0, ny - p + 1, (len(idx),), generator=gen).tolist()
        ox = torch.randint(0, nx - p + 1, (len(idx),), generator=gen).tolist()
        xs = torch.stack([data.x_raw[i, :, a:a + p, c:c + p] for i, a, c in zip(idx.tolist(), oy, ox)])
        ys = torch.stack([data.y[i, :, a:a + p, c:c + p] for i, a, c in zip(idx.tolist(), oy, ox)])
        if t.dihedral:
            turns = torch.randint(0, 4, (len(idx),), generator=gen).tolist()
            mirrors = torch.randint(0, 2, (len(idx),), generator=gen).tolist()
            xs = torch.stack([dihedral(x, k, m) for x, k, m in zip(xs, turns, mirrors)])
            ys = torch.stack([dihedral(y, k, m) for y, k, m in zip(ys, turns, mirrors)])
        yield xs, ys


def dihedral(image: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    """``image`` (..., H, W) turned by ``turns`` x 90 degrees, then mirrored left-right when ``mirror``
    (the 8 symmetries of a square patch; H = W)."""
    out = torch.rot90(image, turns, dims=(-2, -1))
    return out.flip(-1) if mirror else out


def predict(model: torch.nn.Module, data: Tensors, batch_size: int) -> torch.Tensor:
    """Network output (N,1,ny,nx) on the normalised scale, eval mode, no gradients."""
    model.eval()
    ny, nx = data.y.shape[-2:]
    outs = []
    with torch.no_grad():
        for s in range(0, data.n, batch_size):
            outs.append(model(data.x[s:s + batch_size])[..., :ny, :nx])
    return torch.cat(outs) if outs else data.y[:0]


def image_metrics(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over images (N, ny, nx) in 1/mm; data range per reference image."""
    from recon_cli.metrics import compute_metrics

    if pred.shape[0] == 0:
        return {}
    rows = []
    for p, r in zip(pred, ref):
        dr = float(r.max() - r.min()) or 1.0
        rows.append(compute_metrics(p, r, names=["psnr", "ssim"], data_range=dr))
    return {k: round(float(np.mean([row[k] for row in rows])), 4) for k in rows[0]}


def evaluate(model, data: Tensors, arrays: SplitArrays, cfg: TrainConfig, loss_fn) -> dict[str, float]:
    """Loss (normalised scale) and PSNR/SSIM in 1/mm against the target (and the ground truth when different)."""
    pred = predict(model, data, cfg.training.batch_size)
    ny, nx = data.y.shape[-2:]
    out = {"loss": float(loss_fn(pred, data.y, data.x[:, :1, :ny, :nx]))} if data.n else {}
    pred_mu = pred[:, 0].cpu().numpy() * data.scale[:, None, None]
    out.update(image_metrics(pred_mu, arrays.targets))
    if cfg.target != "ground_truth":
        out.update({f"{k}_gt": v for k, v in image_metrics(pred_mu, arrays.references).items()})
    return out


def input_metrics(arrays: SplitArrays, cfg: TrainConfig) -> dict[str, float]:
    """The same metrics for the network's input itself (what the network improves on)."""
    out = image_metrics(arrays.inputs, arrays.targets)
    if cfg.target != "ground_truth":
        out.update({f"{k}_gt": v for k, v in image_metrics(arrays.inputs, arrays.references).items()})
    return out


# ----------------------------------------------------------------------------- checkpoints


def _rng_state(gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "generator": gen.get_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def _set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["generator"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(f"cannot read checkpoint ({type(exc).__name__}: {exc})", file=str(path)) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError("not a recon-cli training checkpoint", file=str(path), field="format")
    return ckpt


# ----------------------------------------------------------------------------- progress


@contextmanager
def _progress(enabled: bool):
    """``update(kind, done, total, text)`` driving a rich progress bar on stderr (no-op when disabled);
    ``done`` may be fractional (epochs: 1.5 = half-way through the second)."""
    if not enabled:
        yield lambda *a, **k: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[text]}"), console=Console(stderr=True), transient=False) as bar:
        def update(kind: str, done: int, total: int, text: str = "") -> None:
            if kind not in tasks:
                tasks[kind] = bar.add_task(kind, total=total, text=text)
            bar.update(tasks[kind], completed=done, total=total, text=text)

        yield update


# ----------------------------------------------------------------------------- main entry


def train(cfg: TrainConfig, *, out_dir: str | os.PathLike | None = None, resume: bool = False,
          overwrite: bool = False, command_line: str | None = None, progress: bool = False,
          on_epoch_end: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Generate/cache the data, train, export. ``on_epoch_end(epoch, record)`` runs after each checkpoint."""
    paths = output_paths(cfg, out_dir)
    if not resume and not overwrite:
        for kind in ("pt", "onnx", "json"):
            if paths[kind].exists():
                raise InputError("exists; use --overwrite (or --resume to continue its training)",
                                 file=str(paths[kind]))
    ckpt = None
    if not resume and paths["checkpoint"].exists():
        log.warning("starting afresh over %s (--resume would continue it)", paths["checkpoint"])
    if resume:
        if not paths["checkpoint"].exists():
            raise InputError("no checkpoint to resume from", file=str(paths["checkpoint"]))
        ckpt = load_checkpoint(paths["checkpoint"])
        if ckpt["config_hash"] != cfg.hash():
            raise ConfigError("the checkpoint was made with a different configuration; train without --resume "
                              "or restore the original config", file=str(paths["checkpoint"]), field="config")
    t_cfg = cfg.training
    threads = ckpt["threads"] if ckpt else (t_cfg.threads or os.cpu_count() or 1)
    set_determinism(t_cfg.seed, threads)
    device = _device(t_cfg.device)

    with _progress(progress) as update:
        arrays, data_info = build_dataset(cfg, progress=lambda d, n: update("pairs", d, n))
        model = UNet(cfg.model).to(device)
        multiple = model.pad_multiple
        tensors = {s: to_tensors(a, cfg, multiple, device) for s, a in arrays.items()}
        loss_fn = make_loss(t_cfg.loss)
        opt = torch.optim.Adam(model.parameters(), lr=t_cfg.lr, weight_decay=t_cfg.weight_decay)
        sched = make_scheduler(opt, cfg)
        gen = torch.Generator().manual_seed(t_cfg.seed)
        state = {"epoch": 0, "history": [], "best": None, "bad_epochs": 0, "wall_time": 0.0, "stopped": None}
        if ckpt:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            _set_rng_state(ckpt["rng"], gen)
            state.update({k: ckpt[k] for k in state})
            log.info("resuming %s after epoch %d", cfg.name, state["epoch"])

        baseline = input_metrics(arrays["val"], cfg)
        n_batches = math.ceil(tensors["train"].n / t_cfg.batch_size)
        if t_cfg.max_steps_per_epoch:
            n_batches = min(n_batches, t_cfg.max_steps_per_epoch)
        while state["stopped"] is None and state["epoch"] < t_cfg.epochs:
            epoch = state["epoch"] + 1
            t0 = time.perf_counter()
            model.train()
            total, count = 0.0, 0
            for b, (xb, yb) in enumerate(_batches(tensors["train"], cfg, gen), 1):
                pred = model(xb)[..., : yb.shape[-2], : yb.shape[-1]]
                loss = loss_fn(pred, yb, xb[:, :1, : yb.shape[-2], : yb.shape[-1]])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(xb)
                count += len(xb)
                # the bar counts epochs (total = epochs); the batch within the epoch is in the text
                update("epochs", epoch - 1 + b / n_batches, t_cfg.epochs,
                       f"epoch {epoch}/{t_cfg.epochs}, batch {b}/{n_batches}, loss {total / count:.3e}")
            lr = opt.param_groups[0]["lr"]
            sched.step()
            val = evaluate(model, tensors["val"], arrays["val"], cfg, loss_fn)
            seconds = time.perf_counter() - t0
            state["wall_time"] += seconds
            record = {"epoch": epoch, "train_loss": total / max(count, 1), "lr": lr,
                      **{f"val_{k}": v for k, v in val.items()}, "seconds": round(seconds, 2)}
            state["history"].append(record)
            if state["best"] is None or val["loss"] < state["best"]["val_loss"]:
                state["best"] = {"epoch": epoch, "val_loss": val["loss"],
                                 "state": copy.deepcopy(model.state_dict())}
                state["bad_epochs"] = 0
            else:
                state["bad_epochs"] += 1
            if t_cfg.early_stopping and state["bad_epochs"] >= t_cfg.early_stopping:
                state["stopped"] = f"early stopping: no better validation loss for {state['bad_epochs']} epochs"
            state["epoch"] = epoch
            log.info("epoch %d/%d: train loss %.4e, val loss %.4e, val PSNR %.2f dB, SSIM %.4f (%.1f s)",
                     epoch, t_cfg.epochs, record["train_loss"], val["loss"], val.get("psnr", float("nan")),
                     val.get("ssim", float("nan")), seconds)
            _save_atomic({"format": CHECKPOINT_FORMAT, "config_hash": cfg.hash(), "config": cfg.resolved(),
                          "threads": threads, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "rng": _rng_state(gen), **state}, paths["checkpoint"])
            if on_epoch_end:
                on_epoch_end(epoch, record)
        if state["stopped"] is None:
            state["stopped"] = f"completed {t_cfg.epochs} epochs"

        model.load_state_dict(state["best"]["state"])
        model = model.cpu().eval()
        tensors = {s: to_tensors(a, cfg, multiple, torch.device("cpu")) for s, a in arrays.items()}
        metrics = {"val": evaluate(model, tensors["val"], arrays["val"], cfg, loss_fn), "val_input": baseline}
        if tensors["test"].n:
            metrics["test"] = evaluate(model, tensors["test"], arrays["test"], cfg, loss_fn)
            metrics["test_input"] = input_metrics(arrays["test"], cfg)
        meta = build_metadata(cfg, model, arrays, data_info, metrics, state, threads, command_line)
        export(model, tensors["val"], meta, paths, overwrite=overwrite or resume)
    return TrainResult(paths=paths, metadata=meta, model=model, history=state["history"])


def build_metadata(cfg: TrainConfig, model: UNet, arrays: dict[str, SplitArrays], data_info: dict,
                   metrics: dict, state: dict, threads: int, command_line: str | None) -> dict:
    from recon_cli.provenance import package_versions, utc_timestamp

    geometry, grid = cfg.geometry.build(), cfg.grid.build()
    t = cfg.training
    noise = {k: v for k, v in cfg.noise.model_dump().items() if v is not None}
    described = describe_data(cfg, arrays)
    if cfg.noise.gaussian_rel is not None and cfg.noise.I0 is None:
        noise["sigma"] = described["sigma_mean"]  # what sinogram files record (std of one line integral)
    versions = package_versions(("recon-cli", "torch", "onnx", "onnxruntime", "numpy", "astra-toolbox"))
    normalization = {"input_scale": cfg.input_scale, "output_scale": cfg.input_scale, "units": "1/mm",
                     "note": "network input = image / input_scale; image = network output * output_scale"}
    if cfg.envelope is not None:
        envelope = envelope_metadata(cfg, arrays)
        if cfg.envelope.normalization == "per_image":
            normalization.update(mode="per_image", note="each slice divided by its intensity scale (the 99.5th "
                                                        "percentile, recon_cli.networks.image_scale); the output "
                                                        "multiplied by it; input_scale is the fallback")
    else:
        envelope = single_geometry_envelope(geometry.attrs(), geometry.angles, cfg.grid.shape, cfg.grid.voxel_size,
                                            noise)
    return {
        "format": METADATA_FORMAT,
        "name": cfg.name,
        "description": cfg.description,
        "architecture": {"kind": "unet", **cfg.model.model_dump(mode="json")},
        "n_parameters": count_parameters(model),
        "normalization": normalization,
        "pad_multiple": model.pad_multiple,
        "input_channels": ["image", *(cfg.envelope.extra_channels if cfg.envelope is not None else [])],
        "envelope": envelope,
        "geometry": None if cfg.envelope is not None else {
            "attrs": geometry.attrs(), "angles": geometry.angles.tolist(), "fingerprint": fingerprint(geometry, grid)},
        "grid": {"shape": list(cfg.grid.shape), "voxel_size": cfg.grid.voxel_size},
        "noise": None if cfg.envelope is not None else noise,
        "input": cfg.input.model_dump(mode="json", exclude_none=True),
        "target": cfg.target_spec(),
        "training": {
            "loss": t.loss.model_dump(mode="json"), "optimizer": "Adam", "lr": t.lr, "weight_decay": t.weight_decay,
            "schedule": t.schedule, "epochs": t.epochs, "epochs_run": state["epoch"],
            "best_epoch": state["best"]["epoch"],
            "stopped": state["stopped"], "batch_size": t.batch_size, "patch": t.patch, "seed": t.seed,
            "threads": threads, "wall_time_s": round(state["wall_time"], 1),
            "history": state["history"],
        },
        "data": {**described, "generation_s": data_info["seconds"], "dropped_empty": data_info.get("dropped_empty", {})},
        "metrics": metrics,
        "versions": versions,
        "command": command_line,
        "config": cfg.resolved(),
        "created": utc_timestamp(),
    }


def envelope_metadata(cfg: TrainConfig, arrays: dict[str, SplitArrays]) -> dict:
    """The ``envelope`` of a model trained across ``cfg.envelope`` (recon_cli.model_envelope's layout)."""
    env = cfg.envelope
    out = {"geometry_types": list(env.geometry_types), "n_views": list(env.n_views), "grid": list(env.grid),
           "pixel_size_mm": list(env.pixel_size_mm), "I0": list(env.I0) if env.gaussian_fraction < 1 else None,
           "sigma": None, "canonical_pixel_size_mm": None if env.native_grid else cfg.grid.voxel_size}
    if env.gaussian_fraction > 0:  # the line-integral noise std seen in the Gaussian pairs, widened 2x
        stds = [c[0] for a in arrays.values() if a.conditions is not None for c in a.conditions
                if np.isfinite(c[0])]
        if stds:
            out["sigma"] = [float(min(stds)) / 2, float(max(stds)) * 2]
    return out


def export(model: UNet, val: Tensors, meta: dict, paths: dict[str, Path], *, overwrite: bool) -> float:
    """Write .pt, .onnx (metadata inside) and .json; raise RunError unless ONNX matches torch within 1e-5."""
    import onnx
    import onnxruntime as ort

    from recon_cli.io.atomic import atomic_path

    model = model.cpu().eval()
    probe = val.x[:1].cpu()
    if probe.shape[0] == 0:
        raise RunError("no validation image to verify the export with")
    with torch.no_grad():
        probe_out = model(probe)
        pair = val.x[: min(2, val.n)].cpu()
        pair_out = model(pair)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (probe,), str(raw), input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"},
                                            "y": {0: "batch", 2: "height", 3: "width"}},
                              opset_version=ONNX_OPSET, dynamo=False)
        proto = onnx.load(str(raw))
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        diffs = [float(np.max(np.abs(sess.run(None, {"x": t.numpy()})[0] - o.numpy())))
                 for t, o in ((probe, probe_out), (pair, pair_out))]
        diff = max(diffs)
        if not diff <= ONNX_TOLERANCE:
            raise RunError(f"ONNX export differs from PyTorch by {diff:.3g} (> {ONNX_TOLERANCE:g})")
        meta["export"] = {"onnx_opset": ONNX_OPSET, "onnx_max_abs_diff": diff, "tolerance": ONNX_TOLERANCE}
        text = json.dumps(meta, indent=2, allow_nan=False, default=_json_default)
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, text
        proto.producer_name = "recon-cli"
        with atomic_path(paths["onnx"], overwrite=overwrite) as tmp_path:
            onnx.save(proto, str(tmp_path))
    with atomic_path(paths["pt"], overwrite=overwrite) as tmp_path:
        torch.save({"format": "recon-cli-model/1", "architecture": meta["architecture"],
                    "state_dict": model.state_dict(), "metadata": meta,
                    "probe": {"input": probe, "output": probe_out}}, tmp_path)
    with atomic_path(paths["json"], overwrite=overwrite) as tmp_path:
        tmp_path.write_text(text + "\n")
    log.info("wrote %s, %s, %s (ONNX vs PyTorch max |diff| %.2e)", paths["pt"], paths["onnx"], paths["json"], diff)
    return diff


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def load_torch_model(path: str | os.PathLike) -> tuple[UNet, dict]:
    """(UNet in eval mode with the saved weights, saved dict) from a ``<name>.pt`` file."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    from recon_cli.learn.config import UNetConfig

    arch = {k: v for k, v in saved["architecture"].items() if k != "kind"}
    model = UNet(UNetConfig(**arch))
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved
