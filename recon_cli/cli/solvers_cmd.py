"""``recon solvers [NAME]``: every registered solver and its parameters (from the pydantic models)."""
from __future__ import annotations

from typing import Any

import click
from pydantic import TypeAdapter

_BOUNDS = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))


def _type_text(prop: dict, defs: dict) -> str:
    """A short human type from a JSON-schema property (number, integer, one of a|b, solver, ...)."""
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return "solver" if name == "SolverRef" else name
    if "enum" in prop:
        return "one of " + " | ".join(str(v) for v in prop["enum"])
    if "const" in prop:
        return repr(prop["const"])
    if "anyOf" in prop:
        kinds = [_type_text(p, defs) for p in prop["anyOf"] if p.get("type") != "null"]
        optional = any(p.get("type") == "null" for p in prop["anyOf"])
        return " or ".join(kinds) + (" or null" if optional else "")
    kind = prop.get("type", "any")
    if kind == "array":
        if "prefixItems" in prop:
            return "[" + ", ".join(_type_text(p, defs) for p in prop["prefixItems"]) + "]"
        return f"list of {_type_text(prop.get('items', {}), defs)}"
    return str(kind)


def _range_text(prop: dict) -> str:
    for sub in [prop, *prop.get("anyOf", [])]:
        parts = [f"{op} {sub[key]}" for key, op in _BOUNDS if key in sub]
        if parts:
            return ", ".join(parts)
    return ""


def describe_solver(spec) -> dict[str, Any]:
    """Name, description and parameter table of a registered solver (JSON-friendly)."""
    model = spec.params_model
    schema = model.model_json_schema()
    props, defs = schema.get("properties", {}), schema.get("$defs", {})
    params = {}
    for name, field in model.model_fields.items():
        prop = props.get(name, {})
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if field.is_required():
            default: Any = None
        else:
            value = field.get_default(call_default_factory=True)
            try:
                default = TypeAdapter(field.annotation).dump_python(value, mode="json")
            except Exception:
                default = str(value)
        params[name] = {"type": _type_text(prop, defs), "default": default, "required": field.is_required(),
                        "unit": extra.get("unit", ""), "range": _range_text(prop),
                        "description": field.description or ""}
    return {"name": spec.name, "description": spec.description, "iterative": spec.iterative, "params": params}


@click.command("solvers")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the solvers and their parameters as JSON.")
def solvers(name: str | None, as_json: bool) -> None:
    """List the registered solvers with every parameter's type, default, unit and meaning."""
    from recon_cli.solvers.registry import get_solver, solver_names

    specs = [get_solver(name)] if name else [get_solver(n) for n in solver_names()]
    described = [describe_solver(s) for s in specs]
    if as_json:
        from recon_cli.cli.run import json_text

        click.echo(json_text(described if name is None else described[0]))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    for solver in described:
        kind = "iterative" if solver["iterative"] else "direct"
        console.print(Text.assemble((solver["name"], "bold"), f" ({kind}): {solver['description']}"))
        table = Table()
        table.add_column("parameter", no_wrap=True, style="bold")
        table.add_column("type", max_width=18, overflow="fold")
        table.add_column("default", no_wrap=True)
        table.add_column("unit", max_width=14)
        table.add_column("description", ratio=1)
        for pname, p in solver["params"].items():
            default = "required" if p["required"] else str(p["default"])
            text = p["description"] + (f" [{p['range']}]" if p["range"] else "")
            table.add_row(*(Text(str(c)) for c in (pname, p["type"], default, p["unit"], text)))
        console.print(table)
