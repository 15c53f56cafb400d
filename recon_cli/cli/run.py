"""``recon run PIPELINE.yaml``: run one pipeline, print its metrics and outputs."""
from __future__ import annotations

import math
import shlex

import click
from click.core import ParameterSource

from recon_cli.cli.executor_options import executor_options, executor_spec
from recon_cli.cli.json_output import json_text
from recon_cli.config import load_config


def command_line(ctx: click.Context) -> str:
    """The invocation rebuilt from what was given on the command line (defaults left out)."""
    chain = []
    while ctx is not None:
        chain.append(ctx)
        ctx = ctx.parent
    parts = ["recon"]
    for c in reversed(chain):
        if c.parent is not None:
            parts.append(c.info_name)
        for param in c.command.params:
            if c.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
                continue
            value = c.params.get(param.name)
            if isinstance(param, click.Argument):
                parts.extend(str(v) for v in (value if param.multiple or param.nargs != 1 else [value]))
                continue
            opt = max(param.opts, key=len)
            if getattr(param, "is_flag", False):
                if value:
                    parts.append(opt)
            elif param.multiple:
                for v in value:
                    parts.extend([opt, str(v)])
            else:
                parts.extend([opt, str(value)])
    return shlex.join(parts)


def parse_window(text: str) -> tuple[float, float]:
    """'40,400' -> (40.0, 400.0): a CT window (center, width) in HU; ConfigError otherwise."""
    from recon_cli.errors import ConfigError

    parts = [p.strip() for p in str(text).split(",")]
    try:
        center, width = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"expected CENTER,WIDTH in HU (e.g. 40,400), got {text!r}", field="--window") from None
    if not (math.isfinite(center) and math.isfinite(width) and width > 0):
        raise ConfigError(f"expected a finite center and a positive width, got {text!r}", field="--window")
    return center, width


def with_png_window(cfg, window: str):
    """``cfg`` with output.png_window set from ``--window`` and png added to the output formats."""
    from recon_cli.config import with_overrides

    center, width = parse_window(window)
    formats = list(cfg.output.formats) + ([] if "png" in cfg.output.formats else ["png"])
    return with_overrides(cfg, {"output.png_window": [center, width], "output.formats": formats})


@click.command("run")
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("-i", "--input", "input_path", metavar="FILE", help="Input file (replaces input.path).")
@click.option("-o", "--output", "output_path", metavar="FILE", help="Output HDF5 file (replaces output.path).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a pipeline value, e.g. --set solver.params.iterations=50 (repeatable).")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), help="Replaces the pipeline's device.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--window", metavar="CENTER,WIDTH",
              help="CT window in HU for the PNG preview, e.g. 40,400 (adds png to the outputs).")
@click.option("--json", "as_json", is_flag=True, help="Print metrics and outputs as JSON (nothing else on stdout).")
@click.option("--max-memory", metavar="SIZE",
              help="Memory limit, e.g. 2G or 500M (default: 80% of the available RAM, or GPU memory on a GPU); "
                   "stacks are split into chunks that fit, jobs that cannot fit are refused.")
@click.option("--resume", is_flag=True,
              help="Continue from the last checkpoint of this run (refused if the pipeline or input changed).")
@executor_options
@click.pass_context
def run(ctx: click.Context, pipeline: str, input_path: str | None, output_path: str | None,
        overrides: tuple[str, ...], device: str | None, overwrite: bool, window: str | None, as_json: bool,
        max_memory: str | None, resume: bool, executor: str, scheduler: str | None, workers: int | None,
        retries: int | None) -> None:
    """Run PIPELINE.yaml: reconstruct, compute metrics, write outputs (relative paths: current folder).

    A 2D slice stack can be solved in units of slices on worker processes or a Dask cluster
    (--executor, --workers, --scheduler; see docs/scaling.md)."""
    from recon_cli.runner import run_pipeline

    from recon_cli.memory import parse_size

    max_memory = parse_size(max_memory) if max_memory is not None else None
    spec = executor_spec(executor, scheduler, workers, retries)
    if spec.kind == "local" and spec.n_workers == 1:
        spec = None  # solved here, in chunks, with checkpoints (the default)
    elif resume:
        from recon_cli.errors import ConfigError

        raise ConfigError("--resume is for runs solved here (no --workers / Dask executor)", field="--resume")
    cfg = load_config(pipeline, overrides)
    if window is not None:
        cfg = with_png_window(cfg, window)
    quiet = bool((ctx.obj or {}).get("quiet"))
    result = run_pipeline(cfg, input_override=input_path, output_override=output_path, device_override=device,
                          overwrite=overwrite, command_line=command_line(ctx), progress=not (quiet or as_json),
                          max_memory=max_memory, resume=resume, executor=spec,
                          jobs=spec.n_workers if spec is not None else 1)
    outputs = {fmt: str(path) for fmt, path in result.output_paths.items()}
    if as_json:
        click.echo(json_text({"name": result.config.name, "solver": result.config.solver.name,
                              "device": result.info.get("device"), "metrics": result.metrics, "outputs": outputs}))
        return
    from rich.console import Console

    from recon_cli.metrics import metrics_table

    console = Console()
    console.print(metrics_table(result.metrics, title=f"{result.config.name} ({result.config.solver.name}, "
                                                      f"{result.info.get('device')})"))
    for fmt, path in outputs.items():
        console.print(f"wrote {fmt}: {path}", highlight=False)
