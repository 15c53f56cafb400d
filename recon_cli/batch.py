"""``recon batch``: one pipeline over many inputs, one output each, a summary of them all.

Inputs are paths (files, or folders such as DICOM series), glob patterns (``data/*.h5``,
``**`` recursive) or manifest CSV files (a ``path`` column and an optional ``output``
column; relative input paths are relative to the manifest's folder, outputs are relative to
OUTDIR and must stay inside it: absolute outputs and '..' are refused for that input). Each input gets ``OUTDIR/<input stem>.h5`` (plus the pipeline's other formats); equal
stems are told apart by their parent folder's name.

A failure in one input does not stop the others. ``--jobs N`` runs N inputs at once in
separate processes (``spawn`` start method: no thread or lock state is inherited), each with
1/N of the CPU threads and of the default memory limit. A re-run skips an input whose HDF5
output exists with the same resolved-pipeline hash (``/provenance@pipeline_sha256``) and all
its other outputs present; ``--force`` redoes it. An output made by another pipeline is
never replaced without ``--force``. An input whose run was interrupted continues from its
checkpoint when the pipeline and input are unchanged.

``OUTDIR/batch_summary.csv`` and ``.json`` list every input: status (ok, failed, skipped,
interrupted), one-line error, metrics and seconds. Exit code 0 only when every input is ok
or skipped. SIGINT / SIGTERM stop the batch: running inputs remove their temporary files,
finished outputs stay, the summary is written, exit code 130 / 143.

``--executor dask --scheduler tcp://HOST:PORT`` or ``--executor dask-local --workers N`` run the
inputs as units on a Dask cluster instead (recon_cli.executors): each unit reads its input and writes
its outputs atomically itself, only the small result comes back. ``--retries N`` runs a failed input
again up to N times (Dask: also after its worker died) before it is reported as failed.
"""
from __future__ import annotations

import csv
import datetime as _dt
import glob
import io
import json
import logging
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from recon_cli.errors import ConfigError, InputError, ReconError, RunError

log = logging.getLogger(__name__)

SUMMARY_NAME = "batch_summary"
STATUSES = ("ok", "failed", "skipped", "interrupted")
_GLOB_CHARS = set("*?[")
#: Input suffixes dropped to make the output stem (longest first).
_INPUT_SUFFIXES = (".nii.gz", ".h5", ".hdf5", ".hdf", ".nxs", ".nx", ".dcm", ".tif", ".tiff")


class BatchFailed(RunError):
    """Some inputs failed (exit code 1); the summary names them."""


@dataclass
class BatchItem:
    """One input and its HDF5 output path; ``error`` is set when the input was bad before running."""

    input: str
    output: str
    error: str | None = None


@dataclass
class ItemResult:
    input: str
    output: str
    status: str
    error: str = ""
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    signal: int | None = None


@dataclass
class BatchSettings:
    """Everything a worker needs to run one input (plain values: sent to spawned processes)."""

    pipeline: str
    overrides: tuple[str, ...] = ()
    device: str | None = None
    max_memory: int | None = None
    force: bool = False
    jobs: int = 1
    command_line: str | None = None
    log_level: int = logging.INFO
    log_format: str = "text"
    log_file: str | None = None
    threads: int | None = None
    executor: str = "local"
    scheduler: str | None = None
    workers: int | None = None
    retries: int | None = None
    timeout: float | None = None  # seconds per input (local executor); None: no limit, jobs=1 runs in-process


# ----------------------------------------------------------------------------- inputs


def _is_manifest(arg: str) -> bool:
    return arg.lower().endswith(".csv") and Path(arg).is_file()


def read_manifest(path: str | Path) -> list[tuple[str, str | None]]:
    """(input path, output or None) rows of a manifest CSV with a ``path`` and optional ``output`` column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the manifest ({exc})", file=str(path)) from None
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if "path" not in fields:
        raise ConfigError(f"manifest needs a 'path' column (found: {', '.join(fields) or 'none'})", file=str(path))
    rows = []
    for line_no, row in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        if not row.get("path"):
            if any(row.values()):
                raise ConfigError("empty 'path'", file=f"{path}:{line_no}")
            continue
        src = Path(row["path"])
        if not src.is_absolute():
            src = path.parent / src
        rows.append((str(src), row.get("output") or None))
    return rows


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _INPUT_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return path.stem if path.suffix and not path.is_dir() else name


#: The error of a glob pattern that matches no file (an item of its own; alone, the batch exits 2).
NO_MATCH = "no input matches this pattern"


def _outside(out: str, outdir: Path) -> str | None:
    """Why a manifest's output may not be used (absolute, or leaving OUTDIR), or None when it is fine."""
    from recon_cli.config import check_safe_name

    path = Path(out)
    if path.is_absolute() or path.drive:
        return f"manifest output {out!r} is an absolute path; outputs stay inside OUTDIR ({outdir})"
    if ".." in path.parts:
        return f"manifest output {out!r} leaves OUTDIR ({outdir}); outputs stay inside it"
    try:
        for part in path.parts:
            check_safe_name(part)
    except ValueError as exc:
        return f"manifest output {out!r}: {exc}"
    base = outdir.resolve()
    if base not in (outdir / path).resolve().parents:  # a symbolic link inside OUTDIR pointing out
        return f"manifest output {out!r} resolves outside OUTDIR ({outdir}); outputs stay inside it"
    return None


def expand_inputs(args: Sequence[str], outdir: str | Path) -> list[BatchItem]:
    """Paths, globs and manifests -> items with their outputs in ``outdir`` (order kept, duplicates dropped)."""
    outdir = Path(outdir)
    entries: list[tuple[str, str | None, str | None]] = []  # (input, output, error)
    for arg in args:
        if _is_manifest(arg):
            entries.extend((src, out, None) for src, out in read_manifest(arg))
        elif _GLOB_CHARS & set(arg) and not Path(arg).exists():
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                entries.append((arg, None, NO_MATCH))
            entries.extend((m, None, None) for m in matches)
        else:
            entries.append((arg, None, None))
    seen: set[str] = set()
    unique = []
    for src, out, error in entries:
        key = str(Path(src).resolve()) if error is None else src
        if key in seen:
            continue
        seen.add(key)
        unique.append((src, out, error))
    # output names: <stem>.h5; equal stems get their parent folders' names in front
    stems = {}
    for src, out, error in unique:
        if out is None and error is None:
            stems.setdefault(_stem(Path(src)), []).append(src)
    items = []
    taken: set[str] = set()
    for src, out, error in unique:
        if error is not None:
            items.append(BatchItem(src, "", error))
            continue
        if out is not None:
            problem = _outside(out, outdir)
            if problem:
                items.append(BatchItem(src, "", problem))
                continue
            target = outdir / out
            if target.suffix.lower() not in (".h5", ".hdf5", ".nxs"):
                target = target.with_name(target.name + ".h5")
        else:
            stem = _stem(Path(src))
            if len(stems[stem]) > 1:
                parent = Path(src).resolve().parent.name
                stem = f"{parent}_{stem}" if parent else stem
            name, n = stem, 2
            while name in taken:
                name, n = f"{stem}_{n}", n + 1
            target = outdir / f"{name}.h5"
        taken.add(target.with_suffix("").name)
        items.append(BatchItem(src, str(target)))
    return items


# ----------------------------------------------------------------------------- skipping


def item_config(settings: BatchSettings, item: BatchItem, cfg=None):
    """The pipeline as run for ``item`` (input, output and device set), validated."""
    from recon_cli.config import load_config, with_overrides

    cfg = cfg if cfg is not None else load_config(settings.pipeline, settings.overrides)
    return with_overrides(cfg, {"input.path": item.input, "output.path": item.output, "device": settings.device})


def stored_pipeline_hash(path: str | Path, key: str = "pipeline_sha256") -> str | None:
    """``/provenance@<key>`` (default the pipeline's hash; ``input_sha256`` the input's) of a
    reconstruction file, or None when it has none or is unreadable."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            value = f["provenance"].attrs.get(key) if "provenance" in f else None
    except Exception:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    return str(value) if value is not None else None


def _same_input(h5: Path, input_path: str) -> bool:
    """The output was made from the input's present content (its recorded input hash matches)."""
    from recon_cli.io.formats import input_digest

    stored = stored_pipeline_hash(h5, "input_sha256")
    try:
        return stored is not None and stored == input_digest(input_path)
    except OSError:
        return False


def stored_metrics(path: str | Path) -> dict[str, float]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {k: float(v) for k, v in f["metrics"].attrs.items()} if "metrics" in f else {}
    except Exception:
        return {}


def previous_outcome(cfg_item, force: bool) -> tuple[str, str] | None:
    """('skip', why) when the outputs exist from this very pipeline, ('fail', why) when an output
    exists from something else (without ``force``), None to run (with overwrite when outputs exist)."""
    from recon_cli.config import config_hash

    outputs = cfg_item.output_paths()
    existing = [p for p in outputs.values() if p.exists()]
    if not existing:
        return None
    h5 = outputs.get("hdf5")
    stored = stored_pipeline_hash(h5) if h5 is not None and h5.exists() else None
    same = stored is not None and stored == config_hash(cfg_item)
    if same and len(existing) == len(outputs) and not force:
        if _same_input(h5, cfg_item.input.path):
            return "skip", "outputs exist from the same pipeline"
        log.info("%s: the input changed since %s was made; running it again", cfg_item.input.path, h5)
        return None
    if force or same:
        return None
    if stored is not None:
        why = f"{h5} exists, written by a different pipeline (sha256 {stored[:12]}); use --force to redo it"
    else:
        why = f"{existing[0]} exists (no recon-cli pipeline hash in it); use --force to replace it"
    return "fail", why


# ----------------------------------------------------------------------------- running one input


_busy = {"value": False}  # a worker is running an input (SIGTERM then raises Interrupted)
_stopping = {"value": False}  # a worker was told to stop: inputs already queued to it are not started


def _one_line(exc: BaseException) -> str:
    from recon_cli.logging_setup import redact

    text = exc.one_line() if isinstance(exc, ReconError) else f"{type(exc).__name__}: {exc}"
    return redact(" ".join(str(text).split()))


def run_item(settings: BatchSettings, item: BatchItem, cfg=None) -> ItemResult:
    """Run one input (never raises: failures and interruptions become the result's status)."""
    from recon_cli.signals import Interrupted

    t0 = time.perf_counter()
    result = ItemResult(input=item.input, output=item.output, status="failed")
    if _stopping["value"]:
        result.status, result.error = "interrupted", "not run: the batch was stopped"
        return result
    _busy["value"] = True
    try:
        if item.error:
            raise InputError(item.error, file=item.input)
        if not Path(item.input).exists():
            raise InputError("not found", file=item.input)
        cfg_item = item_config(settings, item, cfg)
        outcome = previous_outcome(cfg_item, settings.force)
        if outcome is not None and outcome[0] == "skip":
            result.status, result.error = "skipped", ""
            result.metrics = stored_metrics(cfg_item.output_paths()["hdf5"])
            result.outputs = [str(p) for p in cfg_item.output_paths().values()]
            return result
        if outcome is not None:
            raise InputError(outcome[1])
        from recon_cli.runner import run_pipeline

        overwrite = any(p.exists() for p in cfg_item.output_paths().values())
        run = run_pipeline(cfg_item, input_override=item.input, output_override=item.output,
                           device_override=settings.device, overwrite=overwrite,
                           command_line=settings.command_line, progress=False, max_memory=settings.max_memory,
                           resume="auto", jobs=settings.jobs)
        result.status = "ok"
        result.metrics = {k: float(v) for k, v in run.metrics.items() if isinstance(v, (int, float))}
        result.outputs = [str(p) for p in run.output_paths.values()]
    except Interrupted as exc:
        result.status, result.error, result.signal = "interrupted", str(exc), exc.signum
    except ReconError as exc:
        result.error = _one_line(exc)
    except Exception as exc:  # an unexpected failure in this input only
        log.debug("input %s failed", item.input, exc_info=True)
        result.error = _one_line(exc)
    finally:
        _busy["value"] = False
        result.seconds = time.perf_counter() - t0
    return result


def _worker_init(settings: BatchSettings) -> None:
    """Set up a spawned worker: logging, threads, signals (SIGINT ignored: the parent decides;
    SIGTERM raises Interrupted inside an input, else ends the idle worker at once)."""
    if settings.threads:
        os.environ["RECON_NUM_THREADS"] = str(settings.threads)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(settings.threads))
    from recon_cli.logging_setup import configure_logging
    from recon_cli.signals import Interrupted

    configure_logging(settings.log_level, settings.log_format, settings.log_file)
    from recon_cli import worker_cache

    worker_cache.enable()  # one projector kept between inputs of the same geometry

    def on_term(signum, frame):
        _stopping["value"] = True
        if _busy["value"]:
            _busy["value"] = False  # raise once; cleanup is not interrupted again
            raise Interrupted(signum)
        os._exit(128 + signum)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)


def _worker_run(settings: BatchSettings, item: BatchItem) -> ItemResult:
    return run_item(settings, item)


# ----------------------------------------------------------------------------- the batch


@dataclass
class BatchSummary:
    results: list[ItemResult]
    summary_paths: dict[str, Path]
    interrupted: int | None = None  # the signal number when the batch was stopped

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.results) for s in STATUSES}

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 128 + self.interrupted
        return 0 if all(r.status in ("ok", "skipped") for r in self.results) else 1


def run_batch(settings: BatchSettings, inputs: Sequence[str], outdir: str | Path, *,
              progress: bool = False) -> BatchSummary:
    """Run every input, write the summaries, return them (the caller raises for failures).

    Raises Interrupted (after writing the summary) when stopped by SIGINT / SIGTERM.
    """
    from recon_cli.config import load_config
    from recon_cli.signals import Interrupted

    outdir = Path(outdir)
    cfg = load_config(settings.pipeline, settings.overrides)  # bad pipelines fail here, exit 2
    items = expand_inputs(inputs, outdir)
    if not items:
        raise ConfigError("no inputs given", field="INPUTS")
    if all(item.error == NO_MATCH for item in items):  # nothing to run: a usage error (exit 2), no summary
        raise ConfigError(f"no input matches {', '.join(repr(item.input) for item in items)}", field="INPUTS")
    from recon_cli.io.atomic import check_writable

    check_writable(outdir / f"{SUMMARY_NAME}.csv", overwrite=True)  # an unwritable OUTDIR: one line, exit 2
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder ({exc.strerror or exc})", file=str(outdir)) from None
    started = _utc_now()
    results: list[ItemResult | None] = [None] * len(items)
    jobs = max(1, min(int(settings.jobs), len(items)))
    if jobs > 1 and settings.threads is None:
        from recon_cli.projectors.astra_matrix import default_threads

        settings.threads = max(1, default_threads() // jobs)
    stop_signal: int | None = None
    with _ItemProgress(len(items), enabled=progress) as bar:
        def record(i: int, res: ItemResult) -> None:
            results[i] = res
            _log_result(i, len(items), res)
            bar.advance(res)

        try:
            if settings.executor != "local":
                _run_on_executor(settings, items, record)
            elif settings.timeout:
                stop_signal = _run_watched(settings, items, range(len(items)), jobs, record)
            elif jobs == 1:
                for i, item in enumerate(items):
                    record(i, run_item(settings, item, cfg))
                    if results[i].status == "interrupted":
                        stop_signal = results[i].signal
                        break
            else:
                stop_signal = _run_parallel(settings, items, jobs, record)
            if settings.executor == "local" and stop_signal is None:
                stop_signal = _retry_failed(settings, items, results, record, cfg)
        except Interrupted as exc:
            stop_signal = exc.signum
    for i, item in enumerate(items):
        if results[i] is None:
            results[i] = ItemResult(item.input, item.output, "interrupted", "not run: the batch was stopped")
    summary = BatchSummary(results=list(results), summary_paths={}, interrupted=stop_signal)
    summary.summary_paths = write_summary(outdir, summary, settings, started)
    if stop_signal:
        raise Interrupted(stop_signal)
    return summary


def _run_parallel(settings: BatchSettings, items: list[BatchItem], jobs: int,
                  record: Callable[[int, ItemResult], None]) -> int | None:
    """Run items on ``jobs`` spawned processes; returns the signal number if the batch was stopped."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from recon_cli.signals import Interrupted

    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(settings,))
    futures = {pool.submit(_worker_run, settings, item): i for i, item in enumerate(items)}
    recorded: set[int] = set()

    def take(fut, i: int) -> ItemResult:
        try:
            res = fut.result(timeout=0)
        except BrokenProcessPool:
            res = ItemResult(items[i].input, items[i].output, "failed",
                             "the worker process died (killed by the system, e.g. out of memory?)")
        recorded.add(i)
        record(i, res)
        return res

    stop: int | None = None
    try:
        for fut in as_completed(futures):
            res = take(fut, futures[fut])
            if res.status == "interrupted" and stop is None:
                stop = res.signal
    except Interrupted as exc:
        stop = exc.signum
        for fut in futures:
            fut.cancel()
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the worker removes its temporary files and reports
        pool.shutdown(wait=True, cancel_futures=True)
        for fut, i in futures.items():
            if i not in recorded and fut.done() and not fut.cancelled():
                try:
                    take(fut, i)
                except BaseException:  # noqa: BLE001 - whatever a dying worker left
                    pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return stop


def _run_watched(settings: BatchSettings, items: list[BatchItem], indices, jobs: int,
                 record: Callable[[int, ItemResult], None]) -> int | None:
    """Run ``items[indices]`` on ``jobs`` worker processes, each input stopped after ``settings.timeout``
    seconds (recon_cli.watchdog: a hung input is killed, even one deaf to SIGTERM). Returns the signal
    number if the batch was stopped."""
    from recon_cli.watchdog import run_watched

    indices = list(indices)
    stop: dict[str, int | None] = {"signal": None}

    def on_done(outcome) -> bool:
        i = indices[outcome.index]
        item = items[i]
        if outcome.kind == "ok":
            res = outcome.value
        elif outcome.kind == "timeout":
            res = ItemResult(item.input, item.output, "failed",
                             f"timed out after {settings.timeout:g} s (--timeout); the worker was stopped")
            _remove_stale_temporaries(item.output)
        elif outcome.kind == "killed":
            res = ItemResult(item.input, item.output, "interrupted",
                             f"the batch was stopped; this input did not stop within {outcome.value:g} s and "
                             "its worker was killed")
            _remove_stale_temporaries(item.output)
        elif outcome.kind == "died":
            res = ItemResult(item.input, item.output, "failed",
                             "the worker process died (killed by the system, e.g. out of memory?)")
            _remove_stale_temporaries(item.output)
        else:
            res = ItemResult(item.input, item.output, "failed", str(outcome.value))
        res.seconds = res.seconds or outcome.seconds
        record(i, res)
        if res.status == "interrupted" and stop["signal"] is None:
            stop["signal"] = res.signal
            return True
        return False

    signum = run_watched([(settings, items[i]) for i in indices], _watched_run, on_done, n_workers=jobs,
                         timeout=settings.timeout, initializer=_worker_init, initargs=(settings,))
    return signum or stop["signal"]


def _watched_run(task: tuple[BatchSettings, BatchItem]) -> ItemResult:
    settings, item = task
    return run_item(settings, item)


def _remove_stale_temporaries(output: str) -> None:
    """The temporary files a killed worker left next to the outputs of ``output`` (any format)."""
    from recon_cli.io.atomic import remove_stale_temporaries

    if output:
        remove_stale_temporaries(Path(output).parent, stem=Path(output).stem)


def _retry_failed(settings: BatchSettings, items: list[BatchItem], results: list, record, cfg) -> int | None:
    """Local executor: run failed inputs again, one at a time, up to ``settings.retries`` times.
    Returns the signal number if the batch was stopped meanwhile."""
    for attempt in range(int(settings.retries or 0)):
        again = [i for i, r in enumerate(results) if r is not None and r.status == "failed" and not items[i].error]
        if not again:
            return None
        log.info("retry %d: %d failed inputs", attempt + 1, len(again))
        if settings.timeout:
            signum = _run_watched(settings, items, again, 1, record)
            if signum is not None:
                return signum
            continue
        for i in again:
            record(i, run_item(settings, items[i], cfg))
    return None


_unit_ready = {"done": False}


def batch_unit(task: tuple[BatchSettings, BatchItem]) -> ItemResult:
    """One input on an executor's worker; a failed input raises UnitFailed so that it is retried."""
    from recon_cli.executors import UnitFailed

    settings, item = task
    if not _unit_ready["done"]:
        from recon_cli.logging_setup import configure_logging

        configure_logging(settings.log_level, settings.log_format, settings.log_file)
        _unit_ready["done"] = True
    res = run_item(settings, item)
    if res.status == "failed":
        raise UnitFailed(res.error, payload=res)
    return res


def _run_on_executor(settings: BatchSettings, items: list[BatchItem],
                     record: Callable[[int, ItemResult], None]) -> None:
    """Run the inputs as units on settings.executor (recon_cli.executors); each is recorded as it ends."""
    import dataclasses

    from recon_cli.executors import ExecutorSpec, run_units

    spec = ExecutorSpec(settings.executor, settings.scheduler, settings.workers, settings.retries)
    if spec.kind == "dask-local":  # the memory limit of each input: a share of this machine
        settings = dataclasses.replace(settings, jobs=spec.n_workers,
                                       threads=settings.threads or spec.worker_threads())

    def on_done(outcome) -> None:
        item = items[outcome.index]
        if outcome.ok:
            res = outcome.value
        elif isinstance(outcome.value, ItemResult):
            res = outcome.value
        else:
            res = ItemResult(item.input, item.output, "failed", outcome.error)
        if not outcome.ok and outcome.attempts > 1:
            res.error = f"{res.error} ({outcome.attempts} attempts)"
        record(outcome.index, res)

    run_units(spec, batch_unit, [(settings, item) for item in items], on_done)


def _log_result(i: int, n: int, res: ItemResult) -> None:
    where = f"[{i + 1}/{n}] {res.input}"
    if res.status == "ok":
        log.info("%s: ok (%.1f s) -> %s", where, res.seconds, res.output)
    elif res.status == "skipped":
        log.info("%s: skipped (outputs exist from the same pipeline)", where)
    elif res.status == "interrupted":
        log.warning("%s: interrupted", where)
    else:
        log.error("%s: failed: %s", where, res.error)


class _ItemProgress:
    """A rich progress bar over the inputs on stderr; nothing unless enabled and on a terminal."""

    def __init__(self, total: int, enabled: bool):
        import sys

        self.total = total
        self.show = enabled and sys.stderr.isatty() and sys.stdout.isatty()
        self._progress = None

    def __enter__(self):
        if self.show:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                                      console=Console(stderr=True), transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("batch", total=self.total, status="")
            self._counts = {s: 0 for s in STATUSES}
        return self

    def advance(self, res: ItemResult) -> None:
        if self._progress is None:
            return
        self._counts[res.status] += 1
        status = "  ".join(f"{k} {v}" for k, v in self._counts.items() if v)
        self._progress.update(self._task, advance=1, status=status)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False


# ----------------------------------------------------------------------------- the summary


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _finite(value: Any) -> Any:
    return value if not (isinstance(value, float) and not math.isfinite(value)) else None


def write_summary(outdir: Path, summary: BatchSummary, settings: BatchSettings, started: str) -> dict[str, Path]:
    """``batch_summary.csv`` (one row per input) and ``batch_summary.json`` in ``outdir`` (atomic, replaced)."""
    from recon_cli.io.atomic import atomic_path

    metric_names = sorted({k for r in summary.results for k in r.metrics})
    paths = {"csv": outdir / f"{SUMMARY_NAME}.csv", "json": outdir / f"{SUMMARY_NAME}.json"}
    with atomic_path(paths["csv"], overwrite=True) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["input", "output", "status", "error", "seconds", *metric_names])
            for r in summary.results:
                writer.writerow([r.input, r.output, r.status, r.error, f"{r.seconds:.3f}",
                                 *[_fmt_metric(r.metrics.get(m)) for m in metric_names]])
    data = {
        "pipeline": settings.pipeline, "overrides": list(settings.overrides), "device": settings.device,
        "jobs": settings.jobs, "executor": settings.executor, "scheduler": settings.scheduler,
        "workers": settings.workers, "retries": settings.retries, "force": settings.force,
        "command_line": settings.command_line,
        "started_utc": started, "finished_utc": _utc_now(), "counts": summary.counts,
        "exit_code": summary.exit_code,
        "items": [{**{k: v for k, v in asdict(r).items() if k != "signal"},
                   "seconds": round(r.seconds, 3),
                   "metrics": {k: _finite(v) for k, v in r.metrics.items()}} for r in summary.results],
    }
    with atomic_path(paths["json"], overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False, default=str) + "\n", encoding="utf-8")
    return paths


def _fmt_metric(value: float | None) -> str:
    if value is None:
        return ""
    return repr(float(value)) if math.isfinite(value) else ""
