"""``recon batch --sweep KEY=VALUES``: one batch per parameter value, a summary table and a contact sheet.

VALUES is a comma-separated list (``solver.params.lam=4,8,16``) or a numeric range START:STOP:STEP with
STOP included when the steps reach it (``input.cor_offset=-2:2:1`` -> -2, -1, 0, 1, 2). Several --sweep
options make the grid of all combinations. Each combination runs the ordinary batch (recon_cli.batch)
with its values added as ``--set`` overrides, into its own folder ``OUTDIR/<label>/`` (label
``lam=4``, or ``lam=4,cor_offset=-2`` for a grid; the last part of each key), so another sweep value never
meets the outputs of an earlier one, and a value already done with the same pipeline is skipped.

Written in OUTDIR: ``sweep_summary.csv`` and ``sweep_summary.md`` (one row per value and input: the values,
status, metrics, output) and ``sweep_contact_sheet.png`` (the middle slice of every output, one row per
input, one column per value, captioned, on one grey scale per input row).
"""
from __future__ import annotations

import csv
import itertools
import logging
import math
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Sequence

from recon_cli.errors import ConfigError

log = logging.getLogger(__name__)

SUMMARY_NAME = "sweep_summary"
SHEET_NAME = "sweep_contact_sheet.png"
MAX_VALUES = 1000


@dataclass
class SweepAxis:
    """One swept pipeline key and its values (as texts, passed on like ``--set KEY=VALUE``)."""

    key: str
    values: list[str]

    @property
    def short(self) -> str:
        return self.key.rsplit(".", 1)[-1]


def _number(text: str, spec: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ConfigError(f"{text.strip()!r} is not a number (a range is START:STOP:STEP)", field=f"--sweep {spec}") \
            from None
    if not value.is_finite():
        raise ConfigError(f"{text.strip()!r} is not a finite number", field=f"--sweep {spec}")
    return value


def parse_sweep(spec: str) -> SweepAxis:
    """``KEY=V1,V2,...`` or ``KEY=START:STOP:STEP`` (STOP included when reached) -> SweepAxis.
    ConfigError (exit 2) naming the option for anything else."""
    key, sep, rhs = spec.partition("=")
    key, rhs = key.strip(), rhs.strip()
    if not sep or not key or not rhs:
        raise ConfigError("expected KEY.PATH=V1,V2,... or KEY.PATH=START:STOP:STEP", field=f"--sweep {spec}")
    if ":" in rhs and "," not in rhs:
        parts = rhs.split(":")
        if len(parts) != 3:
            raise ConfigError("a range is START:STOP:STEP", field=f"--sweep {spec}")
        start, stop, step = (_number(p, spec) for p in parts)
        if step == 0 or (stop - start) * step < 0:
            raise ConfigError(f"step {step} does not lead from {start} to {stop}", field=f"--sweep {spec}")
        count = int((stop - start) / step) + 1
        if count > MAX_VALUES:
            raise ConfigError(f"{count} values; at most {MAX_VALUES}", field=f"--sweep {spec}")
        values = [format((start + k * step).normalize(), "f") for k in range(count)]
        values = ["0" if v == "-0" else v for v in values]
    else:
        values = [v.strip() for v in rhs.split(",")]
        if any(not v for v in values):
            raise ConfigError("an empty value in the list", field=f"--sweep {spec}")
    return SweepAxis(key, list(dict.fromkeys(values)))


def combinations(axes: Sequence[SweepAxis]) -> list[tuple[str, tuple[str, ...]]]:
    """(label, overrides) for every combination of the axes' values, in order."""
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError("the same key is swept twice", field="--sweep")
    shorts = [a.short for a in axes]
    names = shorts if len(set(shorts)) == len(shorts) else keys
    out = []
    for values in itertools.product(*(a.values for a in axes)):
        label = ",".join(f"{n}={v}" for n, v in zip(names, values))
        label = label.replace("/", "_").replace("\\", "_")
        out.append((label, tuple(f"{k}={v}" for k, v in zip(keys, values))))
    return out


@dataclass
class SweepRow:
    label: str
    values: dict[str, str]
    input: str
    output: str
    status: str
    error: str
    metrics: dict[str, float]


@dataclass
class SweepResult:
    rows: list[SweepRow]
    paths: dict[str, Path]

    @property
    def exit_code(self) -> int:
        return 0 if all(r.status in ("ok", "skipped") for r in self.rows) else 1


def run_sweep(settings, inputs: Sequence[str], outdir, sweeps: Sequence[str], *,
              progress: bool = False) -> SweepResult:
    """Run the batch once per combination of the ``sweeps`` values (see the module docstring).

    Every combination's pipeline is validated before anything runs (a bad value: ConfigError, exit 2).
    """
    from recon_cli.batch import run_batch
    from recon_cli.config import load_config

    axes = [parse_sweep(s) for s in sweeps]
    combos = combinations(axes)
    for label, extra in combos:
        load_config(settings.pipeline, (*settings.overrides, *extra))
    outdir = Path(outdir)
    rows: list[SweepRow] = []
    for n, (label, extra) in enumerate(combos, start=1):
        log.info("sweep %d/%d: %s", n, len(combos), ", ".join(extra))
        run_settings = replace(settings, overrides=(*settings.overrides, *extra))
        summary = run_batch(run_settings, inputs, outdir / label, progress=progress)
        values = dict(zip((a.key for a in axes), (e.partition("=")[2] for e in extra)))
        for r in summary.results:
            rows.append(SweepRow(label, values, r.input, r.output, r.status, r.error, dict(r.metrics)))
    paths = write_sweep_summary(outdir, rows, [a.key for a in axes])
    sheet = write_contact_sheet(outdir / SHEET_NAME, rows)
    if sheet is not None:
        paths["png"] = sheet
    return SweepResult(rows, paths)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_sweep_summary(outdir: Path, rows: list[SweepRow], keys: list[str]) -> dict[str, Path]:
    """``sweep_summary.csv`` and ``sweep_summary.md`` in ``outdir`` (atomic, replaced)."""
    from recon_cli.io.atomic import atomic_path

    metric_names = sorted({m for r in rows for m in r.metrics})
    header = [*keys, "input", "status", *metric_names, "output", "error"]
    table = [[*(r.values[k] for k in keys), r.input, r.status, *(_fmt(r.metrics.get(m)) for m in metric_names),
              r.output, r.error] for r in rows]
    paths = {"csv": outdir / f"{SUMMARY_NAME}.csv", "md": outdir / f"{SUMMARY_NAME}.md"}
    outdir.mkdir(parents=True, exist_ok=True)
    with atomic_path(paths["csv"], overwrite=True) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(table)

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table]
    with atomic_path(paths["md"], overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def write_contact_sheet(path: Path, rows: list[SweepRow]) -> Path | None:
    """The middle slice of every readable output as one PNG (rows: inputs, columns: values); None if none."""
    from recon_cli.io.hdf5 import read_image
    from recon_cli.io.png import write_contact_sheet as write_sheet

    grid: dict[str, dict[str, object]] = {}
    labels: list[str] = []
    for r in rows:
        if r.label not in labels:
            labels.append(r.label)
        if r.status not in ("ok", "skipped") or not r.output or not Path(r.output).is_file():
            continue
        try:
            image, _ = read_image(r.output)
        except Exception as exc:  # an unreadable output leaves its tile empty
            log.warning("contact sheet: %s not shown (%s)", r.output, exc)
            continue
        grid.setdefault(r.input, {})[r.label] = image[image.shape[0] // 2] if image.ndim == 3 else image
    if not grid:
        return None
    tiles = [[grid[inp].get(label) for label in labels] for inp in grid]
    row_names = [Path(inp).name for inp in grid]
    write_sheet(path, tiles, column_labels=labels, row_labels=row_names)
    return path


__all__ = ["parse_sweep", "combinations", "run_sweep", "SweepAxis", "SweepResult"]
