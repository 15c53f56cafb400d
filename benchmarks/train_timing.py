"""Estimate the wall time of a training config from a short measured run (a few steps).

Measures, with the config's own geometry, solvers, network, loss, batch and patch:
seconds per training pair (simulation + input + target solvers, one process), seconds per
optimiser step, seconds per validation image; then extrapolates to the full config
(data on ``data.workers`` processes, ``training.epochs`` epochs, no early stopping).

Timing uses ONE torch thread and the process's CPU time, which other processes on a
shared machine hardly change (wall time with 2 OpenMP threads on a loaded 2-core machine
was 3-10x worse and meaningless). The single-thread figure is an upper bound for an idle
2-core machine with ``threads: 2``; the second core typically brings 1.5-1.8x.
Results go to benchmarks/results/train_timing.md (appended, one section per config).

    .venv/bin/python benchmarks/train_timing.py training/postproc_fan60.yaml [--pairs 6] [--steps 6]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from recon_cli.learn.config import load_train_config
from recon_cli.learn.datasets import build_dataset
from recon_cli.learn.losses import make_loss
from recon_cli.learn.train import _batches, predict, set_determinism, to_tensors
from recon_cli.learn.unet import UNet, count_parameters

RESULTS = Path(__file__).resolve().parent / "results" / "train_timing.md"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--pairs", type=int, default=6, help="training pairs to simulate for the measurement")
    ap.add_argument("--steps", type=int, default=6, help="optimiser steps to time (the first is a warm-up)")
    args = ap.parse_args()
    cfg = load_train_config(args.config)
    full = cfg.model_copy(deep=True)
    threads = cfg.training.threads or os.cpu_count() or 1
    set_determinism(cfg.training.seed, 1)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        small = cfg.model_copy(deep=True)
        small.data.cache_dir = tmp
        small.data.train, small.data.val, small.data.test, small.data.workers = args.pairs - 2, 2, 0, 1
        t0 = time.process_time()
        arrays, _ = build_dataset(small)
        s_pair = (time.process_time() - t0) / args.pairs
    model = UNet(cfg.model)
    train_t = to_tensors(arrays["train"], cfg, model.pad_multiple, torch.device("cpu"))
    val_t = to_tensors(arrays["val"], cfg, model.pad_multiple, torch.device("cpu"))
    loss_fn = make_loss(cfg.training.loss)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.training.lr)
    gen = torch.Generator().manual_seed(0)
    small.training.max_steps_per_epoch = None
    steps = []
    model.train()
    while len(steps) < args.steps:
        for xb, yb in _batches(train_t, small, gen):
            if xb.shape[0] < cfg.training.batch_size:  # time full batches only
                reps = math.ceil(cfg.training.batch_size / xb.shape[0])
                bs = cfg.training.batch_size
                xb, yb = xb.repeat(reps, 1, 1, 1)[:bs], yb.repeat(reps, 1, 1, 1)[:bs]
            t0 = time.process_time()
            loss = loss_fn(model(xb)[..., : yb.shape[-2], : yb.shape[-1]], yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps.append(time.process_time() - t0)
            if len(steps) >= args.steps:
                break
    t0 = time.process_time()
    predict(model, val_t, cfg.training.batch_size)
    s_val = (time.process_time() - t0) / val_t.n
    s_step = statistics.median(steps[1:])
    s_step_min = min(steps[1:])
    d = full.data
    n_pairs = d.train + d.val + d.test
    t = full.training
    steps_per_epoch = math.ceil(d.train / t.batch_size)
    if t.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    per_epoch = steps_per_epoch * s_step + d.val * s_val
    est_train = t.epochs * per_epoch
    est_data = n_pairs * s_pair / min(d.workers, os.cpu_count() or 1)
    load1 = os.getloadavg()[0]
    text = f"""
## {cfg.name} (`{args.config}`)

CPU seconds of one thread (`time.process_time`, torch.set_num_threads(1)); load average
{load0:.1f} -> {load1:.1f} during the measurement. Network {count_parameters(model):,} parameters;
batch {t.batch_size}, patch {t.patch}; loss {t.loss.kind}; config threads {threads}.

| quantity | CPU time, 1 thread | |
|---|---|---|
| one training pair (simulate + input + target) | {s_pair:.2f} s | mean of {args.pairs} pairs |
| one optimiser step (median / min of {len(steps) - 1}) | {s_step:.2f} s / {s_step_min:.2f} s | |
| one validation image (full grid, PyTorch eager) | {s_val:.3f} s | |

Estimate for the full config on an idle 2-core machine: {n_pairs} pairs on {d.workers} processes =
**{est_data / 60:.1f} min** of data (once, then cached); {t.epochs} epochs x ({steps_per_epoch} steps +
{d.val} validation images) = **{est_train / 60:.1f} min** of training with one core (upper bound;
about {est_train / 60 / 1.6:.0f} min with 2 threads), less with early stopping.
"""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if not RESULTS.exists():
        RESULTS.write_text("# Training time estimates (benchmarks/train_timing.py)\n")
    with RESULTS.open("a") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
