"""``recon solvers [NAME]``: every registered solver and its parameters (from the pydantic models)."""
from __future__ import annotations

from typing import Any

import click

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
    """Name, description and parameter table of a solver (JSON-friendly) from its registration or
    declaration (recon_cli.solvers.registry.solver_info)."""
    from pydantic import TypeAdapter

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
        kind = _type_text(prop, defs)
        params[name] = {"type": kind, "default": default, "required": field.is_required(),
                        "unit": extra.get("unit", "-" if kind.startswith("solver") else ""), "range": _range_text(prop),
                        "description": field.description or ""}
    return {"name": spec.name, "description": spec.description, "iterative": spec.iterative, "params": params}


def summarise_default(value: Any, width: int = 24) -> str:
    """A default as short text: a solver reference as its name (``fbp (…)``), other nested
    values as compact YAML cut to ``width`` characters (the full value: ``--long`` or ``--yaml``)."""
    if isinstance(value, dict) and isinstance(value.get("name"), str) and set(value) <= {"name", "params", "model"}:
        text = value["name"] + (" (\u2026)" if value.get("params") or value.get("model") else "")
    elif isinstance(value, (dict, list)):
        import yaml

        text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _print_table(console, solver: dict) -> None:
    """Parameter, type, default, unit, description; nested defaults summarised, narrow columns wrap, and
    below 120 columns the unit joins the description, so every column keeps its content from 80 columns up."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    unit_column = console.width >= 120
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("parameter", no_wrap=True, style="bold")
    table.add_column("type", min_width=6, max_width=12, overflow="fold")
    table.add_column("default", min_width=7, max_width=12, overflow="fold")
    if unit_column:
        table.add_column("unit", min_width=4, max_width=16, overflow="fold")
    table.add_column("description", min_width=24, ratio=1, overflow="fold")
    for pname, p in solver["params"].items():
        default = "required" if p["required"] else summarise_default(p["default"], width=12)
        kind = p["type"].removeprefix("one of ").replace(" | ", "|")
        text = p["description"] + (f" [{p['range']}]" if p["range"] else "")
        if unit_column:
            cells = (pname, kind, default, p["unit"], text)
        else:
            cells = (pname, kind, default, text + (f" (unit: {p['unit']})" if p["unit"] not in ("", "-", "1") else ""))
        table.add_row(*(Text(str(c)) for c in cells))
    console.print(table)
    if any(isinstance(p["default"], (dict, list)) and p["default"] for p in solver["params"].values()):
        console.print(Text("nested defaults in full: --long, or --yaml for a pipeline's solver section", style="dim"))


def _print_long(console, solver: dict) -> None:
    """Every parameter as a block: type, unit, range, the full default (YAML) and the description."""
    import yaml
    from rich.padding import Padding
    from rich.text import Text

    for pname, p in solver["params"].items():
        console.print(Text(pname, style="bold"))
        facts = [f"type: {p['type']}"] + ([f"unit: {p['unit']}"] if p["unit"] else []) + \
                ([f"range: {p['range']}"] if p["range"] else [])
        lines = ["; ".join(facts)]
        if p["required"]:
            lines.append("default: required")
        elif isinstance(p["default"], (dict, list)) and p["default"]:
            block = yaml.safe_dump(p["default"], sort_keys=False, default_flow_style=False).rstrip()
            lines.append("default:\n" + "\n".join("  " + line for line in block.splitlines()))
        else:
            lines.append(f"default: {p['default']}")
        if p["description"]:
            lines.append(p["description"])
        for line in lines:
            console.print(Padding(Text(line), (0, 0, 0, 4)))


def defaults_yaml(solver: dict) -> str:
    """The solver with every parameter at its default, as a pipeline ``solver:`` section (required
    parameters left null)."""
    import yaml

    params = {name: (None if p["required"] else p["default"]) for name, p in solver["params"].items()}
    return yaml.safe_dump({"solver": {"name": solver["name"], "params": params}}, sort_keys=False)


def _describe_all() -> list[dict[str, Any]]:
    """Every solver described (imports every solver's declaration, none of the solvers' numerical code)."""
    from recon_cli.solvers.registry import solver_info, solver_names

    return [describe_solver(solver_info(n)) for n in solver_names()]


@click.command("solvers")
@click.argument("name", required=False)
@click.option("--long", "long_form", is_flag=True,
              help="Every parameter as a block, with nested defaults in full (instead of the table).")
@click.option("--yaml", "as_yaml", is_flag=True, help="Print the defaults as a pipeline's solver: section (YAML).")
@click.option("--json", "as_json", is_flag=True, help="Print the solvers and their parameters as JSON.")
def solvers(name: str | None, long_form: bool, as_yaml: bool, as_json: bool) -> None:
    """List the registered solvers with every parameter's type, default, unit and meaning.

    The table summarises nested defaults (a solver reference shows its name); --long or --yaml
    show them in full."""
    from recon_cli.cli.solver_catalogue import described_solvers

    described = [s for s in described_solvers(_describe_all) if name is None or s["name"] == name]
    if name is not None and not described:  # not a solver: the registry's error, with the closest name
        from recon_cli.solvers.registry import solver_info

        described = [describe_solver(solver_info(name))]
    if as_json:
        from recon_cli.cli.json_output import json_text

        click.echo(json_text(described if name is None else described[0]))
        return
    if as_yaml:
        click.echo("\n".join(defaults_yaml(s) for s in described), nl=False)
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, emoji=False, markup=False)  # every cell is a Text: no parsing needed
    for solver in described:
        kind = "iterative" if solver["iterative"] else "direct"
        console.print(Text.assemble((solver["name"], "bold"), f" ({kind}): {solver['description']}"))
        if long_form:
            _print_long(console, solver)
        else:
            _print_table(console, solver)
        console.print()
