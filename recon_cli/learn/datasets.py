"""Training pairs (network input, target) simulated in the target acquisition, cached on disk.

For each sample: an image (COULE-like, anatomy-like or a slice of a user HDF5 volume) is
projected on a finer grid with noise by :func:`recon_cli.simulate.simulate_sinogram` (no
inverse crime); the *input* is the output of a named solver of the registry on that
sinogram (FBP, or k iterations of an iterative solver); the *target* is the ground truth on
the reconstruction grid, or the output of another named solver ("converged", RISING).

Every pair is stored as ``<cache>/<key>.npz`` where the key hashes everything that
determines it (image source and seed, geometry fingerprint, grid, noise, upsampling, input
and target solver specs), so retraining or adding samples recomputes nothing already there.
A "converged" target (the expensive part) is also stored on its own as
``<cache>/target_<target_key>.npz``, keyed without the input solver, so that another input
(e.g. RISING with another k) reuses the converged solutions.
Splits are fixed by the seed: procedural images of split s, index i come from the seed
sequence (seed, s, i); HDF5 slices are permuted once by the seed and dealt out as
val, test, then train, so changing one split's count never moves another's samples.

No torch here: worker processes only need numpy, ASTRA and the solvers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np

from recon_cli.errors import InputError
from recon_cli.geometry import fingerprint
from recon_cli.learn.config import TrainConfig

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Bumped when the way pairs are computed changes, so old cache entries are not reused.
CACHE_VERSION = 2  # 2: anatomy phantoms with fine texture and fat (benchmarks/anatomy_stats.py)


@dataclass(frozen=True)
class SampleSpec:
    """One training pair to compute: where its image comes from and its cache key."""

    split: str
    index: int
    source: dict  # {"kind": "coule"|"anatomy", "seed": [..]} or {"kind": "hdf5", "path", "slice"}
    noise_seed: int
    key: str
    target_key: str | None = None  # converged targets only: the key without the input solver
    acquisition: dict | None = None  # envelope training: this pair's geometry, grid and noise (draw_acquisition)


@dataclass
class SplitArrays:
    """Pairs of one split: ``inputs``/``targets``/``references`` (N, ny, nx) float32 in 1/mm."""

    inputs: np.ndarray
    targets: np.ndarray
    references: np.ndarray
    sigma: np.ndarray  # per-sample std of one line integral (simulate's estimate)
    conditions: np.ndarray | None = None  # (N, 2): noise std of a line integral (networks.noise_std_of), views


def default_cache_dir() -> Path:
    from recon_cli.projectors.matrix_cache import cache_dir

    return cache_dir() / "training"


def cache_folder(cfg: TrainConfig) -> Path:
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()


#: Solver parameters that act only when another parameter has a given value: (parameter, (switch, value)).
#: A pair's key leaves such a parameter out when its switch is off, so that adding one to a solver (with its
#: effect confined to that setting) keeps the keys of pairs computed without it (e.g. sgp_tv's
#: ``auto_lam_factor``, added after the RISING pairs with lam 'noise' were cached, acts on lam 'auto' only).
INERT_UNLESS = {"auto_lam_factor": ("lam", "auto")}


def solver_key(spec: dict) -> dict:
    """A solver spec ({"name", "params"}, JSON) as it enters a cache key: parameters inert in it left out."""
    params = dict(spec.get("params") or {})
    for name, (switch, value) in INERT_UNLESS.items():
        if name in params and params.get(switch) != value:
            del params[name]
    return {**spec, "params": params}


def augment_key(augment: dict) -> dict:
    """A real slice's augmentation as it enters a pair's key: ``fill`` left out when off, so the pairs cached
    before it existed keep their keys (fill 0 draws nothing: the same images)."""
    if not augment.get("fill"):
        return {k: v for k, v in augment.items() if k != "fill"}
    return augment


def _target_payload(cfg: TrainConfig) -> dict:
    spec = cfg.target_spec()
    return {**spec, "solver": solver_key(spec["solver"])} if "solver" in spec else spec


def _common_key_payload(cfg: TrainConfig) -> dict:
    solvers = {"input": solver_key(cfg.input.model_dump(mode="json", exclude_none=True)), "target": _target_payload(cfg)}
    if cfg.envelope is not None:  # geometry and noise are drawn per pair (and part of each pair's key)
        return {"version": CACHE_VERSION, "projector": ENVELOPE_PAIR_PROJECTOR,
                "envelope": cfg.envelope.model_dump(mode="json"),
                "grid": cfg.grid.model_dump(mode="json"), "upsample": cfg.data.upsample, **solvers}
    geometry, grid = cfg.geometry.build(), cfg.grid.build()
    return {"version": CACHE_VERSION, "geometry": fingerprint(geometry, grid), "grid": cfg.grid.model_dump(mode="json"),
            "noise": cfg.noise.model_dump(mode="json"), "upsample": cfg.data.upsample, **solvers}


def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _target_key(cfg: TrainConfig, payload: dict) -> str | None:
    """Key of a converged target alone (the payload without the input solver), None for the ground truth."""
    if cfg.target == "ground_truth":
        return None
    return _key({k: v for k, v in payload.items() if k != "input"})


def _hdf5_slices(paths: list[str]) -> list[dict]:
    """Every 2D slice of the given files as {"path", "slice", "stamp"} (stamp: size + mtime)."""
    from recon_cli.io.hdf5 import read_image

    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise InputError("training image file not found", file=str(p), field="data.sources.paths")
        image, _ = read_image(path)
        st = path.stat()
        stamp = f"{st.st_size}-{st.st_mtime_ns}"
        n = 1 if image.ndim == 2 else image.shape[0]
        out += [{"kind": "hdf5", "path": str(path.resolve()), "slice": i, "stamp": stamp} for i in range(n)]
    return out


def plan_samples(cfg: TrainConfig) -> dict[str, list[SampleSpec]]:
    """The samples of each split (deterministic given the config)."""
    common = _common_key_payload(cfg)
    counts = {"train": cfg.data.train, "val": cfg.data.val, "test": cfg.data.test}
    plan: dict[str, list[SampleSpec]] = {s: [] for s in SPLITS}
    procedural = [s for s in cfg.data.sources if s.kind != "hdf5"]
    if procedural:
        weights = np.array([s.weight for s in procedural], float)
        weights /= weights.sum()
        for split_id, split in enumerate(SPLITS):
            for i in range(counts[split]):
                seq = [cfg.data.seed, split_id, i]
                rng = np.random.default_rng(np.random.SeedSequence(seq + [1]))
                chosen = procedural[rng.choice(len(procedural), p=weights)]
                source = {"kind": chosen.kind, "seed": seq}
                if chosen.kind == "dicom":
                    files = [*chosen.names, *chosen.paths]
                    source.update(file=files[int(rng.integers(len(files)))],
                                  augment=augment_key(chosen.augment.model_dump(mode="json")))
                noise_seed = int(np.random.SeedSequence(seq + [2]).generate_state(1)[0])
                acq = draw_acquisition(cfg, seq) if cfg.envelope is not None else None
                payload = {**common, "source": source, "noise_seed": noise_seed}
                if acq is not None:
                    payload["acquisition"] = acq
                plan[split].append(SampleSpec(split, i, source, noise_seed, _key(payload),
                                              _target_key(cfg, payload), acq))
        return plan
    pool = _hdf5_slices([p for s in cfg.data.sources for p in s.paths])
    order = np.random.default_rng(cfg.data.seed).permutation(len(pool))
    needed = sum(counts.values())
    if needed > len(pool):
        raise InputError(f"{needed} samples requested (train+val+test) but the HDF5 sources hold "
                         f"{len(pool)} slices", field="data.sources")
    offsets = {"val": 0, "test": counts["val"], "train": counts["val"] + counts["test"]}
    for split in SPLITS:
        for i in range(counts[split]):
            j = int(order[offsets[split] + i])
            source = pool[j]
            noise_seed = int(np.random.SeedSequence([cfg.data.seed, 3, j]).generate_state(1)[0])
            acq = draw_acquisition(cfg, [cfg.data.seed, 3, j]) if cfg.envelope is not None else None
            payload = {**common, "source": source, "noise_seed": noise_seed}
            if acq is not None:
                payload["acquisition"] = acq
            plan[split].append(SampleSpec(split, i, source, noise_seed, _key(payload), _target_key(cfg, payload),
                                          acq))
    return plan


# ----------------------------------------------------------------------------- computing one pair


def draw_acquisition(cfg: TrainConfig, seq: list[int]) -> dict:
    """One pair's acquisition drawn across ``cfg.envelope`` (deterministic in ``seq``; JSON values).

    The field of view is the grid's (shape x voxel size); the pixel size, view count and dose are
    log-uniform in their ranges; the detector covers the field of view's circle. Fan beam: source
    1.8-2.6 fields of view from the axis, detector 0.5-1.0 times that beyond it, full circle; parallel
    beam: half circle. ``envelope.max_train_n`` caps the grid side (the pixel size then grows).
    """
    env = cfg.envelope
    rng = np.random.default_rng(np.random.SeedSequence(list(seq) + [4]))
    log_uniform = lambda lo, hi: float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # noqa: E731
    kind = env.geometry_types[int(rng.integers(len(env.geometry_types)))]
    n_views = int(round(log_uniform(*env.n_views)))
    fov = max(cfg.grid.shape) * cfg.grid.voxel_size
    if env.native_grid:  # the drawn pixel on the grid's shape: the field of view is what varies
        pixel = log_uniform(*env.pixel_size_mm)
        n = max(cfg.grid.shape)
        fov = n * pixel
    else:
        n = max(8, int(round(fov / log_uniform(*env.pixel_size_mm))))
        if env.max_train_n is not None:  # finer pixels cost (2n)^2 simulations and end resampled to the canonical grid
            n = min(n, env.max_train_n)
        pixel = fov / n
    radius = fov / np.sqrt(2.0)  # the field's corners
    acq = {"type": kind, "n_views": n_views, "n": n, "pixel_size": pixel}
    if kind == "parallel":
        acq.update(detector_spacing=pixel, detector_count=int(np.ceil(2 * radius / pixel)) + 2)
    else:
        so = fov * rng.uniform(1.8, 2.6)
        od = so * rng.uniform(0.5, 1.0)
        mag = (so + od) / so
        half = radius * so / np.sqrt(so**2 - radius**2) * mag  # detector half-width seeing the corners
        acq.update(detector_spacing=pixel * mag, detector_count=int(np.ceil(2 * half / (pixel * mag))) + 2,
                   source_origin=float(so), origin_detector=float(od))
    if env.gaussian_fraction > 0 and rng.uniform() < env.gaussian_fraction:
        acq["gaussian_rel"] = log_uniform(*env.gaussian_rel)
    else:
        acq["I0"] = log_uniform(*env.I0)
    return acq


def acquisition_setup(acq: dict):
    """(geometry, grid) of a drawn acquisition."""
    from recon_cli.geometry import FanFlat2D, Parallel2D, VolumeGrid

    if acq["type"] == "parallel":
        geometry = Parallel2D(angles=np.linspace(0.0, np.pi, acq["n_views"], endpoint=False),
                              detector_spacing=acq["detector_spacing"], detector_count=acq["detector_count"])
    else:
        geometry = FanFlat2D(angles=np.linspace(0.0, 2 * np.pi, acq["n_views"], endpoint=False),
                             detector_spacing=acq["detector_spacing"], detector_count=acq["detector_count"],
                             source_origin=acq["source_origin"], origin_detector=acq["origin_detector"])
    return geometry, VolumeGrid((acq["n"], acq["n"]), acq["pixel_size"])


def make_image(source: dict, cfg: TrainConfig, n: int | None = None, fov: float | None = None
               ) -> tuple[np.ndarray, float]:
    """(image (n, n) float32 in 1/mm, pixel size mm) for a sample's source, covering the grid's field of view.

    ``n``: image size (default: the grid's larger side); hdf5 slices come as stored.
    """
    if source["kind"] == "hdf5":
        from recon_cli.io.hdf5 import read_image

        image, voxel = read_image(source["path"])
        image = image if image.ndim == 2 else image[source["slice"]]
        return np.clip(np.asarray(image, np.float32), 0.0, None), voxel
    fov = float(fov or max(cfg.grid.shape) * cfg.grid.voxel_size)
    n = int(n or max(cfg.grid.shape))
    rng = np.random.default_rng(np.random.SeedSequence(source["seed"]))
    if source["kind"] == "dicom":
        from recon_cli.learn.config import Augment
        from recon_cli.learn.real_slices import augment_slice, load_slice, locate

        file = source["file"]
        path = str(locate(file)) if Path(file).name == file and not Path(file).is_file() else file
        mu, spacing = load_slice(path)
        aug = Augment.model_validate(source["augment"])
        for _ in range(AUGMENT_TRIES):  # a small field (fine pixels) can fall in the air: draw the next crop
            image = augment_slice(mu, spacing, n, fov / n, aug, rng)
            if not empty_field(image):
                break
        return image, fov / n
    if source["kind"] == "coule":
        from recon_cli.phantoms import coule_phantom

        return coule_phantom(n, rng), fov / n
    from recon_cli.learn.anatomy import anatomy_phantom

    return anatomy_phantom(n, rng), fov / n


_WORKER: dict = {}


def _context(cfg_json: str) -> dict:
    """Per-process objects (config, geometry, grid, projector), built once per worker."""
    if _WORKER.get("json") != cfg_json:
        from recon_cli.backend import Device
        from recon_cli.projectors import make_projector

        cfg = TrainConfig.model_validate_json(cfg_json)
        geometry, grid = cfg.geometry.build(), cfg.grid.build()
        _WORKER.clear()
        _WORKER.update(json=cfg_json, cfg=cfg, geometry=geometry, grid=grid,
                       op=make_projector(geometry, grid, Device("cpu")))
    return _WORKER


def compute_pair(cfg_json: str, spec: SampleSpec, cache: str) -> str:
    """Simulate, run the input (and target) solver for one sample; write its .npz; return the key."""
    from recon_cli.simulate import simulate_sinogram
    from recon_cli.solvers.registry import run_ref

    ctx = _context(cfg_json)
    cfg: TrainConfig = ctx["cfg"]
    if spec.acquisition is not None:
        return _compute_envelope_pair(cfg, spec, cache)
    image, voxel = make_image(spec.source, cfg)
    sino = simulate_sinogram(image, voxel, ctx["geometry"], ctx["grid"], upsample=cfg.data.upsample,
                             I0=cfg.noise.I0, gaussian_rel=cfg.noise.gaussian_rel, seed=spec.noise_seed)
    x_in = np.asarray(run_ref(cfg.input, ctx["op"], sino).volume, np.float32)
    if cfg.target == "ground_truth":
        target = sino.reference
    else:
        target_path = Path(cache) / f"target_{spec.target_key}.npz"
        target = _load_target(target_path)
        if target is None:
            target = np.asarray(run_ref(cfg.target.converged, ctx["op"], sino).volume, np.float32)
            save_npz(target_path, target=target)
    save_npz(Path(cache) / f"{spec.key}.npz", input=x_in, target=np.asarray(target, np.float32),
             reference=sino.reference, sigma=np.float32(sino.metadata.get("sigma", 0.0)))
    return spec.key


#: How an envelope pair's solvers project (part of every envelope pair's cache key): ASTRA's matrix built in
#: memory for that pair alone (not written to the matrix cache: one geometry per pair), 12-25x faster per
#: forward + adjoint than ASTRA's direct CPU projector at 256^2 (60-360 views; build 0.2-0.5 s), and the
#: projector ``make_projector`` picks at inference for such grids. Above the size limit: ASTRA direct.
ENVELOPE_PAIR_PROJECTOR = "matrix_uncached"


def pair_projector(geometry, grid):
    """The projector of one envelope pair (see ENVELOPE_PAIR_PROJECTOR)."""
    from recon_cli.backend import Device
    from recon_cli.projectors import MATRIX_BYTES_LIMIT, make_projector
    from recon_cli.projectors.astra_matrix import AstraMatrixProjector, estimated_matrix_bytes

    if estimated_matrix_bytes(geometry, grid, building=True) <= MATRIX_BYTES_LIMIT:
        return AstraMatrixProjector(geometry, grid, None, use_cache=False, threads=1)
    return make_projector(geometry, grid, Device("cpu"), "astra")


def _compute_envelope_pair(cfg: TrainConfig, spec: SampleSpec, cache: str) -> str:
    """An envelope pair: simulate and reconstruct in the drawn acquisition, resample to the canonical grid."""
    from recon_cli.backend import Device
    from recon_cli.networks import noise_std_of, resample
    from recon_cli.projectors import make_projector
    from recon_cli.simulate import resample_image, simulate_sinogram
    from recon_cli.solvers.registry import run_ref

    acq = spec.acquisition
    geometry, grid = acquisition_setup(acq)
    canonical = tuple(cfg.grid.shape)
    native = bool(cfg.envelope.native_grid)
    out_pixel = acq["pixel_size"] if native else cfg.grid.voxel_size  # native: shape = the drawn grid's
    image, voxel = make_image(spec.source, cfg, n=max(acq["n"], max(canonical)),
                              fov=acq["n"] * acq["pixel_size"] if native else None)
    sino = simulate_sinogram(image, voxel, geometry, grid, upsample=cfg.data.upsample, I0=acq.get("I0"),
                             gaussian_rel=acq.get("gaussian_rel"), seed=spec.noise_seed)
    op = pair_projector(geometry, grid)
    x_in = resample(np.asarray(run_ref(cfg.input, op, sino).volume, np.float32), canonical)
    truth = resample_image(image, voxel, canonical, out_pixel)
    if cfg.target == "ground_truth":
        target = truth
    else:
        target_path = Path(cache) / f"target_{spec.target_key}.npz"
        target = _load_target(target_path)
        if target is None:
            target = resample(np.asarray(run_ref(cfg.target.converged, op, sino).volume, np.float32), canonical)
            save_npz(target_path, target=target)
    noise_std = noise_std_of(sino.metadata)
    save_npz(Path(cache) / f"{spec.key}.npz", input=x_in, target=np.asarray(target, np.float32), reference=truth,
             sigma=np.float32(sino.metadata.get("sigma", 0.0)),
             conditions=np.array([noise_std if noise_std is not None else np.nan, acq["n_views"]], np.float32))
    return spec.key


def save_npz(path: Path, **arrays) -> None:
    """Write ``arrays`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_target(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            return np.asarray(z["target"], np.float32)
    except Exception as exc:  # truncated or foreign file: recompute it
        log.warning("ignoring unreadable cache entry %s (%s)", path, exc)
        return None


def _load(path: Path) -> dict | None:
    try:
        with np.load(path) as z:
            item = {k: z[k] for k in ("input", "target", "reference", "sigma")}
            item["conditions"] = z["conditions"] if "conditions" in z.files else None
            return item
    except Exception as exc:  # truncated or foreign file: recompute it
        log.warning("ignoring unreadable cache entry %s (%s)", path, exc)
        return None


def build_dataset(cfg: TrainConfig, *, progress: Callable[[int, int], None] | None = None) -> tuple[
        dict[str, SplitArrays], dict]:
    """All splits' arrays, computing missing pairs (in ``cfg.data.workers`` processes).

    Returns (arrays by split, info: {"computed", "cached", "seconds", "cache_dir"}).
    ``progress(done, total)`` is called as pairs complete.
    """
    cache = cache_folder(cfg)
    cache.mkdir(parents=True, exist_ok=True)
    plan = plan_samples(cfg)
    specs = [s for split in SPLITS for s in plan[split]]
    missing = list({s.key: s for s in specs if not (cache / f"{s.key}.npz").is_file()}.values())
    t0 = time.perf_counter()
    cfg_json = cfg.model_dump_json()
    total = len(missing)
    if progress:
        progress(0, total)
    if missing:
        log.info("computing %d training pairs (%d cached) in %d process(es); cache %s", total,
                 len(specs) - total, cfg.data.workers, cache)
        if cfg.data.workers == 1 or total == 1:
            for done, spec in enumerate(missing, 1):
                compute_pair(cfg_json, spec, str(cache))
                if progress:
                    progress(done, total)
        else:
            with ProcessPoolExecutor(max_workers=min(cfg.data.workers, total),
                                     mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(compute_pair, cfg_json, spec, str(cache)) for spec in missing]
                try:
                    for done, fut in enumerate(futures, 1):
                        fut.result()
                        if progress:
                            progress(done, total)
                except BaseException:  # a failed pair or Ctrl-C: drop the queued ones, keep what is cached
                    for fut in futures:
                        fut.cancel()
                    raise
    seconds = time.perf_counter() - t0
    arrays = {}
    dropped: dict[str, int] = {}
    for split in SPLITS:
        items = []
        for spec in plan[split]:
            item = _load(cache / f"{spec.key}.npz")
            if item is None:
                compute_pair(cfg_json, spec, str(cache))
                item = _load(cache / f"{spec.key}.npz")
            if empty_field(item["reference"]):
                dropped[split] = dropped.get(split, 0) + 1
                continue
            items.append(item)
        shape = tuple(cfg.grid.shape)
        arrays[split] = SplitArrays(
            inputs=np.stack([i["input"] for i in items]) if items else np.zeros((0, *shape), np.float32),
            targets=np.stack([i["target"] for i in items]) if items else np.zeros((0, *shape), np.float32),
            references=np.stack([i["reference"] for i in items]) if items else np.zeros((0, *shape), np.float32),
            sigma=np.array([float(i["sigma"]) for i in items], np.float32),
            conditions=(np.stack([i["conditions"] for i in items]).astype(np.float32)
                        if items and all(i["conditions"] is not None for i in items) else None))
    if dropped:
        log.info("left out %s pair(s) whose field holds almost no tissue (%s)", sum(dropped.values()),
                 ", ".join(f"{k} {v}" for k, v in dropped.items()))
    info = {"computed": total, "cached": len(specs) - total, "seconds": round(seconds, 2), "cache_dir": str(cache),
            "dropped_empty": dropped}
    return arrays, info


#: Augmentations drawn for a real slice until its field holds tissue (the same seed gives the same draws).
AUGMENT_TRIES = 8
#: A pair's field is empty when fewer than 1% of its pixels reach EMPTY_TISSUE x water's attenuation.
EMPTY_TISSUE = 0.1


def empty_field(reference: np.ndarray) -> bool:
    """True when the true image holds almost no tissue (an augmented crop of a real slice that fell in the
    air at a fine pixel size): such a pair teaches nothing and its PSNR (data range ~0) swamps a mean."""
    from recon_cli.phantoms import MU_WATER

    return bool(np.percentile(np.asarray(reference, np.float32), 99.0) < EMPTY_TISSUE * MU_WATER)


def describe_data(cfg: TrainConfig, arrays: dict[str, SplitArrays]) -> dict:
    """The training-data record for the model metadata."""
    sigma = np.concatenate([a.sigma for a in arrays.values()])
    return {
        "sources": [s.model_dump(mode="json") for s in cfg.data.sources],
        "counts": {s: int(arrays[s].inputs.shape[0]) for s in SPLITS},
        "seed": cfg.data.seed,
        "seeds": "procedural: SeedSequence([seed, split(0 train, 1 val, 2 test), index]); "
                 "hdf5: slices permuted by seed, dealt val, test, train",
        "upsample": cfg.data.upsample,
        "simulator": "recon_cli.simulate.simulate_sinogram",
        "sigma_mean": float(sigma.mean()) if sigma.size else 0.0,
    }
