"""Inference time of the default U-Net: ONNX Runtime (what `recon run` uses) vs PyTorch eager, CPU.

Both run the same weights on the same 256x256 input in one process, interleaved (so a
busy machine slows both alike), with as many threads as cores. Writes
benchmarks/results/onnx_vs_torch.md.

    .venv/bin/python benchmarks/onnx_vs_torch.py [--repeats 20] [--size 256]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from recon_cli.learn.config import UNetConfig
from recon_cli.learn.unet import UNet, count_parameters

RESULTS = Path(__file__).resolve().parent / "results" / "onnx_vs_torch.md"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    threads = os.cpu_count() or 1
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = UNet(UNetConfig()).eval()
    for p in model.head.parameters():  # non-zero head, so the net is not the identity
        torch.nn.init.normal_(p, std=0.01)
    x = torch.rand(args.batch, 1, args.size, args.size)
    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / "unet.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b", 2: "h", 3: "w"}},
                      opset_version=17, dynamo=False)
    xn = x.numpy()
    with torch.no_grad():
        ref = model(x).numpy()
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows, diff = [], 0.0
    for n_threads in sorted({1, threads}):
        torch.set_num_threads(n_threads)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = n_threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        diff = max(diff, float(np.max(np.abs(sess.run(None, {"x": xn})[0] - ref))))

        def t_torch():
            t0 = time.perf_counter()
            with torch.no_grad():
                model(x)
            return time.perf_counter() - t0

        def t_ort():
            t0 = time.perf_counter()
            sess.run(None, {"x": xn})
            return time.perf_counter() - t0

        for _ in range(3):
            t_torch(), t_ort()
        times = {"torch": [], "ort": []}
        for _ in range(args.repeats):
            times["torch"].append(t_torch())
            times["ort"].append(t_ort())
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(f"| {n_threads} | {med['torch'] * 1e3:.1f} ms | {med['ort'] * 1e3:.1f} ms | "
                    f"{med['ort'] / med['torch']:.2f} |")
    tmp.cleanup()
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = "\n".join(rows)
    text = f"""# ONNX Runtime vs PyTorch eager: default U-Net inference on the CPU

`python benchmarks/onnx_vs_torch.py --repeats {args.repeats} --size {args.size} --batch {args.batch}`

Network: U-Net depth 3, base 16 channels, batch norm ({count_parameters(model):,} parameters), eval mode.
Input {args.batch} x 1 x {args.size} x {args.size} float32. Machine: {platform.machine()}, {threads} cores,
load average {load0:.2f} -> {load1:.2f} (other processes running). torch {torch.__version__},
onnxruntime {ort.__version__}. Max |ORT - PyTorch| = {diff:.2e}.

| threads | PyTorch eager (no_grad), median of {args.repeats} | ONNX Runtime, median of {args.repeats} | ratio ORT / PyTorch |
|---|---|---|---|
{table}

Runs alternate (torch, ORT, torch, ...) so that load from other processes affects both alike.
With more threads than free cores, PyTorch's OpenMP threads degrade far more than ONNX Runtime's;
the 1-thread row is the comparison least affected by other processes.
"""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
