"""Layering of recon_cli, read from the source (AST, every import including those inside functions):
imports point down, no module imports a private name of another, and no import cycle exists.

The layers (DESIGN.md, README "Architecture"): the CLI on top; the orchestration (runner, batch, sweep,
stack_units) under it; then config and learn; then solvers, simulation, checkpoints and planning;
then projectors, ops, networks; io beside them; constants, errors, geometry, backend, sinogram and
the registries at the bottom. Each rule below names who may not import what.
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recon_cli"

#: Orchestration: only the CLI (and the orchestration among itself) imports these.
ORCHESTRATION = ("runner", "batch", "sweep", "stack_units")
#: The bottom: these import nothing of recon_cli but each other.
BOTTOM = ("constants", "errors", "registries", "host_memory", "hounsfield", "backend", "geometry", "sinogram")

#: (who, what it must not import, why). Names are dotted paths below recon_cli; a name covers its submodules.
RULES: list[tuple[tuple[str, ...], tuple[str, ...], str]] = [
    (("io",), ("solvers", "simulate", "simulate_dicom", "projectors", "networks", "config", "learn", "cli",
               *ORCHESTRATION, "solving", "checkpoint", "memory", "progress", "executors", "worker_cache"),
     "io reads and writes files: it computes no reconstruction and knows no pipeline"),
    (("solvers", "ops"), ("io", "cli", "config", "learn", *ORCHESTRATION, "solving", "checkpoint", "memory",
                          "simulate", "simulate_dicom", "executors", "worker_cache"),
     "solvers and ops are pure maths on arrays (no I/O, no pipeline)"),
    (("projectors",), ("solvers", "io", "cli", "config", "learn", *ORCHESTRATION, "solving", "checkpoint", "memory",
                       "progress", "simulate", "simulate_dicom"),
     "projectors sit below the solvers that use them"),
    (("networks",), ("solvers", "io", "cli", "config", "learn", *ORCHESTRATION),
     "networks run a model for the solvers"),
    (("config",), ("io", "cli", "learn", *ORCHESTRATION, "solving", "simulate", "simulate_dicom", "projectors"),
     "the schema validates, it runs nothing"),
    (("simulate", "simulate_dicom", "phantoms", "metrics", "preprocess", "stripes", "solving", "checkpoint",
      "memory", "progress", "executors", "worker_cache", "health", "provenance"),
     ("cli", "learn", *ORCHESTRATION), "only the CLI and the orchestration drive a run"),
    (BOTTOM, ("",), "the bottom layer imports only the bottom layer"),
]
#: Allowed exceptions of the bottom rule: the bottom modules among themselves.
BOTTOM_ALLOWED = BOTTOM
#: Who may import learn/ (training only, with torch): the CLI.
LEARN_IMPORTERS = ("cli", "learn")


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name below the package ('' for its __init__, 'io' for io/__init__) -> file."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted name (below the package) lies in: the longest known prefix."""
    while name not in modules:
        if "." not in name:
            return name if name in modules else None
        name = name.rpartition(".")[0]
    return name


def imports_of(module: str, path: Path, modules: dict[str, Path], package_name: str) -> list[tuple[str, str, int]]:
    """(imported module below the package, imported name or '', line) for each import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    here = module.split(".") if module else []
    base_pkg = here if is_package else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package_name or alias.name.startswith(package_name + "."):
                    target = _resolve(alias.name[len(package_name) + 1:], modules)
                    if target is not None:
                        found.append((target, "", node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base_pkg[:len(base_pkg) - (node.level - 1)] if node.level > 1 else base_pkg
                base = ".".join([*parts, *([node.module] if node.module else [])])
            elif node.module == package_name or (node.module or "").startswith(package_name + "."):
                base = node.module[len(package_name) + 1:]
            else:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}" if base else alias.name
                if full in modules:  # a submodule imported by name
                    found.append((full, "", node.lineno))
                else:
                    target = _resolve(base, modules) if base else ""
                    if target is not None:
                        found.append((target, alias.name, node.lineno))
    return found


def import_graph(package: Path) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> the modules it imports, every private name imported from another module as 'file:line')."""
    modules = module_files(package)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for module, path in modules.items():
        for target, name, line in imports_of(module, path, modules, package.name):
            if target != module:
                graph[module].add(target)
            if name.startswith("_") and not name.startswith("__") and target != module:
                private.append(f"{path.relative_to(package.parent)}:{line}: {name} from {package.name}.{target}")
    return graph, private


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(p == "" or module == p or module.startswith(p + ".") for p in prefixes)


def layer_violations(graph: dict[str, set[str]], package_name: str = "recon_cli") -> list[str]:
    """One line per import that points up (see RULES)."""
    bad = []
    for module, targets in graph.items():
        for target in sorted(targets):
            for who, forbidden, why in RULES:
                if not _within(module, who):
                    continue
                if who is BOTTOM and target in BOTTOM_ALLOWED:
                    continue
                if _within(target, forbidden):
                    bad.append(f"{package_name}.{module} imports {package_name}.{target} ({why})")
            if _within(target, ("learn",)) and not _within(module, LEARN_IMPORTERS):
                bad.append(f"{package_name}.{module} imports {package_name}.{target} (learn/ is for training; "
                           "only the CLI uses it)")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.fixture(scope="module")
def graph_and_private():
    return import_graph(PACKAGE)


def test_no_import_points_up_a_layer(graph_and_private):
    graph, _ = graph_and_private
    assert layer_violations(graph) == []


def test_no_import_cycle_among_modules(graph_and_private):
    graph, _ = graph_and_private
    assert cycles(graph) == []


def test_no_private_name_is_imported_from_another_module(graph_and_private):
    _, private = graph_and_private
    assert private == []


def test_the_graph_sees_imports_inside_functions(graph_and_private):
    """The runner imports the stack units lazily, inside a function: the graph has that edge."""
    graph, _ = graph_and_private
    assert "stack_units" in graph["runner"] and "solvers.registry" in graph["config"]


# ----------------------------------------------------------------------------- the checks can fail


def _fake_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "recon_cli"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return package


def test_an_upward_import_is_reported(tmp_path):
    package = _fake_package(tmp_path, {
        "__init__.py": "", "io/__init__.py": "", "solvers/__init__.py": "", "solvers/tv.py": "",
        "io/hdf5.py": "def read():\n    from recon_cli.solvers.tv import solve\n    return solve\n",
        "constants.py": "from . import runner\n", "runner.py": "",
    })
    graph, _ = import_graph(package)
    bad = layer_violations(graph)
    assert any(line.startswith("recon_cli.io.hdf5 imports recon_cli.solvers.tv") for line in bad)
    assert any(line.startswith("recon_cli.constants imports recon_cli.runner") for line in bad)
    assert len(bad) == 2


def test_a_cycle_and_a_private_import_are_reported(tmp_path):
    package = _fake_package(tmp_path, {
        "__init__.py": "", "a.py": "from recon_cli.b import _helper\n", "b.py": "import recon_cli.c\n",
        "c.py": "def f():\n    from recon_cli import a\n", "d.py": "from recon_cli import __version__\n",
    })
    graph, private = import_graph(package)
    assert cycles(graph) == [["a", "b", "c"]]
    assert private == ["recon_cli/a.py:1: _helper from recon_cli.b"]
