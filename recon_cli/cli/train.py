"""``recon train CONFIG.yaml``: simulate training pairs, train a U-Net, export .pt + .onnx + .json."""
from __future__ import annotations

import click


@click.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", metavar="DIR", help="Output folder (replaces the config's 'out').")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a config value, e.g. --set training.epochs=5 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue from <out>/<name>.checkpoint.pt.")
@click.option("--overwrite", is_flag=True, help="Replace existing model files.")
@click.pass_context
def train(ctx: click.Context, config: str, out_dir: str | None, overrides: tuple[str, ...], resume: bool,
          overwrite: bool) -> None:
    """Train the network described by CONFIG.yaml (needs PyTorch: pip install 'recon-ct-cli[train]').

    Writes <out>/<name>.pt (PyTorch checkpoint), <name>.onnx (for inference, metadata inside)
    and <name>.json (metadata: geometry, noise, input, metrics, reproduce command).
    """
    from recon_cli.cli.run import command_line
    from recon_cli.learn import require_torch
    from recon_cli.learn.config import load_train_config

    cfg = load_train_config(config, overrides)
    require_torch()
    from recon_cli.learn.train import train as run_training

    quiet = bool((ctx.obj or {}).get("quiet"))
    result = run_training(cfg, out_dir=out_dir, resume=resume, overwrite=overwrite,
                          command_line=command_line(ctx), progress=not quiet)
    meta = result.metadata
    val, base = meta["metrics"]["val"], meta["metrics"]["val_input"]
    click.echo(f"{cfg.name}: {meta['training']['stopped']}, best epoch {meta['training']['best_epoch']}, "
               f"training {meta['training']['wall_time_s']:.0f} s")
    click.echo(f"validation PSNR {val.get('psnr', float('nan')):.2f} dB (input {base.get('psnr', float('nan')):.2f}), "
               f"SSIM {val.get('ssim', float('nan')):.4f} (input {base.get('ssim', float('nan')):.4f})")
    for kind in ("onnx", "json", "pt"):
        click.echo(f"wrote {result.paths[kind]}")
