"""``recon run PIPELINE.yaml``: run one pipeline, print its metrics and outputs."""
from __future__ import annotations

import json
import math
import shlex
from typing import Any

import click
from click.core import ParameterSource

from recon_cli.config import load_config


def json_text(data: Any) -> str:
    """JSON with non-finite floats as null (strict JSON parsers reject Infinity/NaN)."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(data), indent=2, default=str, allow_nan=False)


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


@click.command("run")
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("-i", "--input", "input_path", metavar="FILE", help="Input file (replaces input.path).")
@click.option("-o", "--output", "output_path", metavar="FILE", help="Output HDF5 file (replaces output.path).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a pipeline value, e.g. --set solver.params.iterations=50 (repeatable).")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), help="Replaces the pipeline's device.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics and outputs as JSON (nothing else on stdout).")
@click.pass_context
def run(ctx: click.Context, pipeline: str, input_path: str | None, output_path: str | None,
        overrides: tuple[str, ...], device: str | None, overwrite: bool, as_json: bool) -> None:
    """Run PIPELINE.yaml: reconstruct, compute metrics, write outputs (relative paths: current folder)."""
    from recon_cli.runner import run_pipeline

    cfg = load_config(pipeline, overrides)
    quiet = bool((ctx.obj or {}).get("quiet"))
    result = run_pipeline(cfg, input_override=input_path, output_override=output_path, device_override=device,
                          overwrite=overwrite, command_line=command_line(ctx), progress=not (quiet or as_json))
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
