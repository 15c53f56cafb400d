"""``recon batch PIPELINE.yaml INPUTS... -o OUTDIR``: one pipeline over many inputs (see recon_cli.batch)."""
from __future__ import annotations

import click

from recon_cli.cli.executor_options import executor_options, executor_spec

#: Default time limit per input (seconds): far above any 2D run here, short enough that a hung input
#: cannot hold a nightly batch.
DEFAULT_TIMEOUT_S = 3600.0


@click.command("batch")
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output-dir", "outdir", required=True, metavar="OUTDIR",
              help="Folder for the outputs (OUTDIR/<input stem>.h5, ...) and batch_summary.csv/.json.")
@click.option("-j", "--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Inputs run at once, in separate processes.")
@click.option("--force", is_flag=True, help="Redo inputs whose outputs exist (replacing them).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a pipeline value for every input (repeatable).")
@click.option("--sweep", "sweeps", multiple=True, metavar="KEY.PATH=VALUES",
              help="Run once per value, each into OUTDIR/<key>=<value>/, plus sweep_summary.csv/.md and "
                   "sweep_contact_sheet.png: VALUES is V1,V2,... or START:STOP:STEP (STOP included), e.g. "
                   "solver.params.lam=4,8,16 or input.cor_offset=-2:2:1. Repeat for a grid.")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), help="Replaces the pipeline's device.")
@click.option("--max-memory", metavar="SIZE",
              help="Memory limit per input, e.g. 2G (default: 80% of the available memory / jobs).")
@click.option("--timeout", "timeout", default=DEFAULT_TIMEOUT_S, show_default=True, type=click.FloatRange(min=0),
              metavar="SECONDS", help="Time limit per input: an input still running after it is stopped (killed "
              "if it does not stop) and reported as failed; 0: no limit. Local executor only.")
@executor_options
@click.pass_context
def batch(ctx: click.Context, pipeline: str, inputs: tuple[str, ...], outdir: str, jobs: int, force: bool,
          overrides: tuple[str, ...], sweeps: tuple[str, ...], device: str | None, max_memory: str | None,
          timeout: float, executor: str,
          scheduler: str | None, workers: int | None, retries: int | None) -> None:
    """Run PIPELINE.yaml on every input (paths, globs such as 'data/*.h5', or manifest CSVs with a
    'path' column). A failed input does not stop the others; exit code 0 only when all succeed.
    Re-running skips inputs already done with the same pipeline (--force redoes them).
    With --executor dask / dask-local the inputs run on a Dask cluster (see docs/scaling.md)."""
    from recon_cli.batch import BatchFailed, BatchSettings, run_batch
    from recon_cli.cli.run import command_line
    from recon_cli.logging_setup import level_for
    from recon_cli.memory import parse_size

    obj = ctx.find_root().obj or {}
    quiet = bool(obj.get("quiet"))
    spec = executor_spec(executor, scheduler, workers, retries)
    if spec.kind == "local" and workers is not None:
        jobs = workers  # --workers N is --jobs N for local processes
    settings = BatchSettings(
        pipeline=pipeline, overrides=tuple(overrides), device=device,
        max_memory=parse_size(max_memory) if max_memory is not None else None, force=force, jobs=jobs,
        command_line=command_line(ctx), log_level=level_for(bool(obj.get("verbose")), quiet),
        log_format=obj.get("log_format") or "text", log_file=obj.get("log_file"),
        executor=spec.kind, scheduler=spec.scheduler, workers=spec.workers, retries=spec.retries,
        timeout=timeout or None)
    if sweeps:
        from recon_cli.sweep import run_sweep

        result = run_sweep(settings, list(inputs), outdir, sweeps, progress=not quiet)
        statuses = [r.status for r in result.rows]
        text = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
        if not quiet:
            click.echo(f"{len(result.rows)} runs: {text}; summary: {result.paths['md']}"
                       + (f", contact sheet: {result.paths['png']}" if "png" in result.paths else ""))
        if result.exit_code != 0:
            failed = sum(s not in ("ok", "skipped") for s in statuses)
            raise BatchFailed(f"{failed} of {len(result.rows)} runs failed (see {result.paths['csv']})")
        return
    summary = run_batch(settings, list(inputs), outdir, progress=not quiet)
    counts = summary.counts
    text = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if not quiet:
        click.echo(f"{len(summary.results)} inputs: {text}; summary: {summary.summary_paths['csv']}")
    if summary.exit_code != 0:
        failed = counts["failed"] + counts["interrupted"]
        raise BatchFailed(f"{failed} of {len(summary.results)} inputs failed (see {summary.summary_paths['csv']})")
