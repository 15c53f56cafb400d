"""``recon cache list|clear``: the on-disk cache of projection matrices."""
from __future__ import annotations

import click


@click.group("cache")
def cache() -> None:
    """The projection-matrix cache ($RECON_CACHE_DIR, else ~/.cache/recon-cli; cap: $RECON_CACHE_MAX)."""


@cache.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: folder, cap and entries.")
def list_cmd(as_json: bool) -> None:
    """Entries, most recently used first, with size and last use; then the total and the cap."""
    import datetime as dt
    import json

    from recon_cli.memory import format_size
    from recon_cli.projectors import matrix_cache

    entries = list(reversed(matrix_cache.list_entries()))
    total, cap = sum(e.size for e in entries), matrix_cache.cache_cap()
    if as_json:
        click.echo(json.dumps({"folder": str(matrix_cache.matrices_dir()), "cap_bytes": cap, "total_bytes": total,
                               "entries": [{"name": e.path.name, "bytes": e.size, "last_used": e.last_used,
                                            "complete": e.complete} for e in entries]}))
        return
    for e in entries:
        when = dt.datetime.fromtimestamp(e.last_used).isoformat(sep=" ", timespec="seconds")
        click.echo(f"{e.path.name}  {format_size(e.size):>9}  {when}{'' if e.complete else '  (incomplete)'}")
    click.echo(f"{len(entries)} entries, {format_size(total)} of {format_size(cap)} (cap) in "
               f"{matrix_cache.matrices_dir()}")


@cache.command("clear")
def clear_cmd() -> None:
    """Remove every cached matrix (they are rebuilt when needed)."""
    from recon_cli.memory import format_size
    from recon_cli.projectors import matrix_cache

    count, size = matrix_cache.clear()
    click.echo(f"removed {count} entries ({format_size(size)}) from {matrix_cache.matrices_dir()}")
