"""Procedural anatomy (recon_cli/learn/anatomy.py) against real CT slices: do the statistics match?

Real slices: the three the project may train on (pydicom / pydicom-data: neck ``bad_sequence.dcm``,
abdomen ``explicit_VR-UN.dcm``, head ``CT_small.dcm``; never the reserved acceptance files).
Procedural: ``--n`` anatomy phantoms (seeds 9000...) of a 256 mm field. Every image is area-averaged
to 1 mm pixels (recon_cli.simulate.resample_image) and converted to HU, then, inside the body
(HU > -500 after hole filling):

- HU histogram (-1000..1600 HU), compared by the 1-Wasserstein distance (HU);
- gradient-magnitude histogram (central differences, HU/mm), 1-Wasserstein distance (HU/mm);
- radially averaged power spectrum of the body's HU (mean removed, outside set to 0, 2D Hann
  window), normalised to unit total power, compared by the RMS difference of log10 power over
  0.02-0.5 cycles/mm (decades).

Writes ``<out>/anatomy_stats.md`` (table, machine, command) and ``<out>/anatomy_stats.png`` (the
three curves, real vs procedural, and sample images). ``--label`` names the row (e.g. before/after).

    .venv/bin/python benchmarks/anatomy_stats.py            # ~20 s
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_fill_holes, binary_opening, label as cc_label
from scipy.stats import wasserstein_distance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, md_kv, md_table  # noqa: E402

from recon_cli.learn.anatomy import anatomy_phantom  # noqa: E402
from recon_cli.learn.real_slices import load_slice, locate  # noqa: E402
from recon_cli.phantoms import MU_WATER  # noqa: E402
from recon_cli.simulate import resample_image  # noqa: E402

REAL = ("bad_sequence.dcm", "explicit_VR-UN.dcm", "CT_small.dcm")
PIXEL = 1.0  # mm, common pixel size of the comparison
FOV = 256.0  # mm, procedural field of view
HU_BINS = np.arange(-1000, 1625, 25.0)
GRAD_BINS = np.arange(0, 402, 4.0)
FREQ = np.linspace(0.0, 0.5, 51)  # cycles/mm, bin edges
FREQ_FIT = (0.02, 0.5)


def to_hu(mu: np.ndarray) -> np.ndarray:
    return (mu / MU_WATER - 1.0) * 1000.0


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The largest connected region above -500 HU with its holes (lungs, airways) filled."""
    m = binary_opening(hu > -500, iterations=1)
    lab, n = cc_label(m)
    if n == 0:
        return m
    sizes = np.bincount(lab.ravel())[1:]
    return binary_fill_holes(lab == 1 + int(np.argmax(sizes)))


def gradient_magnitude(hu: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(hu, PIXEL)
    return np.hypot(gx, gy)


def power_spectrum(hu: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Radially averaged power (normalised to sum 1) in the FREQ bins."""
    a = np.where(mask, hu - hu[mask].mean(), 0.0)
    ny, nx = a.shape
    a = a * np.outer(np.hanning(ny), np.hanning(nx))
    p = np.abs(np.fft.fftshift(np.fft.fft2(a))) ** 2
    fy = np.fft.fftshift(np.fft.fftfreq(ny, PIXEL))
    fx = np.fft.fftshift(np.fft.fftfreq(nx, PIXEL))
    r = np.hypot(*np.meshgrid(fy, fx, indexing="ij"))
    idx = np.digitize(r.ravel(), FREQ) - 1
    ok = (idx >= 0) & (idx < len(FREQ) - 1)
    total = np.bincount(idx[ok], weights=p.ravel()[ok], minlength=len(FREQ) - 1)
    count = np.bincount(idx[ok], minlength=len(FREQ) - 1)
    spec = total / np.maximum(count, 1)
    return spec / spec.sum()


def image_stats(hu: np.ndarray) -> dict:
    mask = body_mask(hu)
    return {"hu": hu[mask], "grad": gradient_magnitude(hu)[mask], "spectrum": power_spectrum(hu, mask)}


def real_images() -> list[tuple[str, np.ndarray]]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in REAL:
            mu, spacing = load_slice(str(locate(name)))
            n = int(round(mu.shape[0] * spacing / PIXEL))
            out.append((name, to_hu(resample_image(mu, spacing, (n, n), PIXEL))))
    return out


def procedural_images(n: int, seed0: int = 9000) -> list[tuple[str, np.ndarray]]:
    size = int(round(FOV / PIXEL))
    return [(f"anatomy {seed0 + i}", to_hu(anatomy_phantom(size, np.random.default_rng(seed0 + i))))
            for i in range(n)]


def pooled(stats: list[dict]) -> dict:
    return {"hu": np.concatenate([s["hu"] for s in stats]), "grad": np.concatenate([s["grad"] for s in stats]),
            "spectrum": np.mean([s["spectrum"] for s in stats], axis=0)}


def compare(real: dict, proc: dict) -> dict:
    centres = 0.5 * (FREQ[1:] + FREQ[:-1])
    band = (centres >= FREQ_FIT[0]) & (centres <= FREQ_FIT[1])
    log_diff = np.log10(proc["spectrum"][band] + 1e-20) - np.log10(real["spectrum"][band] + 1e-20)
    return {"hu_w1": float(wasserstein_distance(real["hu"], proc["hu"])),
            "grad_w1": float(wasserstein_distance(real["grad"], proc["grad"])),
            "spectrum_rms_log10": float(np.sqrt(np.mean(log_diff**2))),
            "hu_median_real": float(np.median(real["hu"])), "hu_median_proc": float(np.median(proc["hu"])),
            "grad_median_real": float(np.median(real["grad"])), "grad_median_proc": float(np.median(proc["grad"]))}


def histogram(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    h, _ = np.histogram(values, bins=bins)
    return h / max(h.sum(), 1)


def figure(path: Path, real: dict, proc: dict, samples: list[tuple[str, np.ndarray]], label: str) -> None:
    """Three panels (HU histogram, gradient histogram, log power spectrum; black real, red procedural)
    above a row of sample images, drawn with Pillow."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    w, h, pad = 300, 200, 40
    tile = 150
    sheet = Image.new("RGB", (3 * (w + pad) + pad, h + 2 * pad + tile + 30), "white")
    draw = ImageDraw.Draw(sheet)
    centres = 0.5 * (FREQ[1:] + FREQ[:-1])
    panels = [("HU histogram (-1000..1600 HU)", 0.5 * (HU_BINS[1:] + HU_BINS[:-1]),
               [histogram(real["hu"], HU_BINS), histogram(proc["hu"], HU_BINS)], False),
              ("|grad| histogram (0..400 HU/mm, log)", 0.5 * (GRAD_BINS[1:] + GRAD_BINS[:-1]),
               [histogram(real["grad"], GRAD_BINS), histogram(proc["grad"], GRAD_BINS)], True),
              ("power spectrum (0..0.5 cyc/mm, log)", centres, [real["spectrum"], proc["spectrum"]], True)]
    for k, (title, x, curves, log_y) in enumerate(panels):
        x0, y0 = pad + k * (w + pad), pad
        draw.rectangle([x0, y0, x0 + w, y0 + h], outline="black")
        draw.text((x0, y0 - 14), title, fill="black", font=font)
        ys = [np.log10(np.maximum(c, 1e-8)) if log_y else c for c in curves]
        lo, hi = min(float(y.min()) for y in ys), max(float(y.max()) for y in ys)
        for y, colour in zip(ys, ("black", "red")):
            px = x0 + (x - x.min()) / (x.max() - x.min()) * w
            py = y0 + h - (y - lo) / (hi - lo + 1e-12) * h
            draw.line(list(zip(px.tolist(), py.tolist())), fill=colour, width=2)
    draw.text((pad, pad + h + 6), f"black: real slices ({', '.join(REAL)}); red: procedural anatomy ({label})",
              fill="black", font=font)
    for k, (name, hu) in enumerate(samples[:6]):
        a = np.clip((hu + 160) / 400, 0, 1)  # soft-tissue window W400 L40
        im = Image.fromarray((a * 255).astype(np.uint8)).resize((tile, tile), Image.BILINEAR).convert("RGB")
        sheet.paste(im, (pad + k * (tile + 10), 2 * pad + h))
        draw.text((pad + k * (tile + 10), 2 * pad + h + tile + 2), name, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12, help="procedural phantoms")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--label", default="current anatomy.py")
    ap.add_argument("--before", help="JSON of an earlier run's numbers (this script's --json) to show beside")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)
    out = Path(args.out)
    real_imgs, proc_imgs = real_images(), procedural_images(args.n)
    real = pooled([image_stats(hu) for _, hu in real_imgs])
    proc = pooled([image_stats(hu) for _, hu in proc_imgs])
    numbers = compare(real, proc)
    figure(out / "anatomy_stats.png", real, proc, real_imgs + proc_imgs[:3], args.label)
    rows = []
    if args.before:
        before = json.loads(Path(args.before).read_text())
        rows.append([before.get("label", "before"), *[before[k] for k in KEYS]])
    rows.append([args.label, *[numbers[k] for k in KEYS]])
    text = ["# Procedural anatomy against real CT slices", "",
            "Command: `.venv/bin/python benchmarks/anatomy_stats.py "
            + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])) + "`", "",
            "Distances between the pooled statistics of the real slices and of the procedural phantoms "
            "(smaller is closer; see the script's docstring for the definitions). Figure: `anatomy_stats.png`. "
            "A `--before` row comes from an earlier run's `--json` (e.g. with an older anatomy.py checked out).", "",
            md_table(["anatomy", *HEADERS], rows), "", "## Machine", "", md_kv(machine_info()), ""]
    (out / "anatomy_stats.md").write_text("\n".join(text))
    if args.json:
        Path(args.json).write_text(json.dumps({"label": args.label, **numbers}, indent=2))
    print(md_table(["anatomy", *HEADERS], rows))
    return 0


KEYS = ("hu_w1", "grad_w1", "spectrum_rms_log10", "hu_median_real", "hu_median_proc", "grad_median_real",
        "grad_median_proc")
HEADERS = ["HU W1 (HU)", "gradient W1 (HU/mm)", "spectrum RMS (log10)", "median HU real", "median HU proc.",
           "median gradient real (HU/mm)", "median gradient proc. (HU/mm)"]

if __name__ == "__main__":
    raise SystemExit(main())
