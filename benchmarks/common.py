"""Small helpers shared by the benchmark scripts: machine info, Markdown tables, timing, image sheets.

Nothing here is part of the ``recon_cli`` package; benchmarks import it as ``benchmarks.common``
(run them from the repository root) or as ``common`` (run as scripts).
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- machine and versions
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def package_version(name: str) -> str:
    from recon_cli import DISTRIBUTION

    try:
        return importlib.metadata.version(DISTRIBUTION if name == "recon-cli" else name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(packages=("recon-cli", "numpy", "scipy", "astra-toolbox", "scikit-image", "odl")) -> dict:
    """Date, host, CPU, cores, memory, Python and package versions, git commit."""
    mem = memory_gib()
    return {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_model(),
        "cores": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "memory": f"{mem:.1f} GiB" if mem else "unknown",
        "os": platform.platform(),
        "python": platform.python_version(),
        **{name: package_version(name) for name in packages},
        "git commit": git_commit(),
    }


# ----------------------------------------------------------------------------- Markdown
def fmt(value, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` significant digits, None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not np.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:.0f}"
    return str(value)


def md_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A Markdown table; ``align`` one char per column ('l' or 'r'), default: first left, rest right."""
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---" if a == "l" else "--:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |")
    return "\n".join(lines)


def md_kv(info: dict) -> str:
    return md_table(["item", "value"], [[k, str(v)] for k, v in info.items()], "ll")


# ----------------------------------------------------------------------------- timing
class Stopwatch:
    """Accumulates wall time of named sections: ``with sw('projector'): ...``."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0


def best_time(fn, repeats: int = 5) -> float:
    """Smallest wall time of ``repeats`` calls of ``fn()`` (s)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def timed_call(fn, label: str):
    """(fn(), wall s, None), or (None, wall s, "Type: message") when ``fn`` raises: the failure is logged
    with its traceback, so that one broken row does not stop a benchmark."""
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # report and continue
        wall = time.perf_counter() - t0
        error = f"{type(exc).__name__}: {exc}"
        log(f"  !! {label} failed: {error}")
        traceback.print_exc(file=sys.stdout)
        return None, wall, error
    return out, time.perf_counter() - t0, None


def log(msg: str) -> None:
    """Progress line on stdout with a timestamp, flushed."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- contact sheets
def contact_sheet(images: list[tuple[str, np.ndarray]], path: Path, *, vmin: float, vmax: float,
                  columns: int = 5, tile: int | None = None, title: str | None = None) -> Path:
    """Tile labelled grey-scale images (same window [vmin, vmax]) into one PNG with Pillow."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    label_h, pad = 28, 4
    first = np.asarray(images[0][1])
    tile = tile or max(max(first.shape), 192)
    rows = (len(images) + columns - 1) // columns
    title_h = label_h if title else 0
    sheet = Image.new("L", (columns * (tile + pad) + pad, title_h + rows * (tile + label_h + pad) + pad), 255)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 6), title, fill=0, font=font)
    for k, (label, img) in enumerate(images):
        a = np.asarray(img, np.float64)
        a = np.clip((a - vmin) / (vmax - vmin), 0, 1)
        im = Image.fromarray((a * 255 + 0.5).astype(np.uint8))
        if im.size != (tile, tile):
            im = im.resize((tile, tile), Image.NEAREST)
        r, c = divmod(k, columns)
        x0, y0 = pad + c * (tile + pad), title_h + pad + r * (tile + label_h + pad)
        sheet.paste(im, (x0, y0 + label_h))
        for i, line in enumerate(str(label).split("\n")[:2]):
            draw.text((x0 + 2, y0 + 2 + 12 * i), line, fill=0, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


FINDINGS_START, FINDINGS_END = "<!-- findings: hand-written, kept on rerun -->", "<!-- end of findings -->"


def kept_findings(path: Path) -> str | None:
    """The hand-written findings block of an earlier report at ``path`` (None if there is none)."""
    if not path.is_file():
        return None
    text = path.read_text()
    if FINDINGS_START not in text or FINDINGS_END not in text:
        return None
    return text.split(FINDINGS_START, 1)[1].split(FINDINGS_END, 1)[0].strip("\n")
