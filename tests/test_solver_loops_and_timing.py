"""Layering of the solver package: one iteration loop (the driver) and one clock.

Every iterative method is an Algorithm run by ``recon_cli.solvers.algorithm.run``; no other module
in recon_cli/solvers may own an iteration loop. Iteration loops have the shape of a ``while`` or a
``for ... in range(...)``; loops over a collection (axes, views of a list, dict items) are not
iterations of a method. The few other ``while`` / ``for ... in range`` loops are listed below with
the reason they are not iterations of a solver. Timing (``perf_counter``) lives only in the driver's
module (its Stopwatch and TimedOperator).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOLVERS = Path(__file__).resolve().parents[1] / "recon_cli" / "solvers"

#: (module, function) -> why its loop is not a solver's iteration loop.
ALLOWED_LOOPS = {
    ("algorithm", "run"): "the driver itself",
    ("fbp", "quarter_turn_groups"): "over the views of the geometry (grouping quarter-turn rotations)",
    ("mmgks", "golub_kahan"): "a fixed number of bidiagonalisation steps building a basis (set-up: no "
                              "stopping rule, callback or state), with reorthogonalisation",
    ("regularisation_parameter", "estimate_noise_model"): "six fixed-point refinements of a noise fit",
    ("regularisation_parameter", "discrepancy_search"): "the trial lams of the lam search; each trial is a "
                                                        "full run through the driver",
    ("regularisation_parameter", "follow_discrepancy"): "the legs of the lam-auto controller; each leg "
                                                        "continues the chain through the driver",
    ("rising", "step_one"): "over the slices of a stack, each solved by the driver",
    ("sgp_tv", "SGP.step"): "Armijo backtracking inside one SGP iteration",
    ("tikhonov", "golub_kahan_tracked"): "a fixed number of bidiagonalisation steps building lam auto's basis "
                                         "(set-up, as mmgks.golub_kahan; U reorthogonalised, coefficients kept)",
    ("tikhonov", "GradientGram.extend"): "over the new basis vectors: one row of the regulariser's Gram matrix each",
    ("tikhonov", "KrylovBasis.deflation"): "over the deflation's Ritz vectors: one D^T D product each",
}

def iteration_shaped_loops(path: Path) -> list[tuple[str, int, str]]:
    """(enclosing function as Class.method, line, source) of each while / for-in-range loop in ``path``."""
    found = []

    def visit(node, names):
        for child in ast.iter_child_nodes(node):
            inner = names + [child.name] if isinstance(child, (ast.FunctionDef, ast.ClassDef)) else names
            if isinstance(child, ast.While) or (
                    isinstance(child, ast.For) and isinstance(child.iter, ast.Call)
                    and isinstance(child.iter.func, ast.Name) and child.iter.func.id == "range"):
                found.append((".".join(names), child.lineno, ast.unparse(child).splitlines()[0]))
            visit(child, inner)

    visit(ast.parse(path.read_text()), [])
    return found


def test_only_the_driver_has_an_iteration_loop():
    offending = []
    used = set()
    for path in sorted(SOLVERS.glob("*.py")):
        for function, line, source in iteration_shaped_loops(path):
            key = (path.stem, function)
            if key in ALLOWED_LOOPS:
                used.add(key)
            else:
                offending.append(f"{path.name}:{line} in {function or 'module'}: {source}")
    assert not offending, "iteration loops outside the driver:\n" + "\n".join(offending)
    assert used == set(ALLOWED_LOOPS), f"stale allow-list entries: {set(ALLOWED_LOOPS) - used}"


def test_the_loop_check_catches_a_hand_written_loop(tmp_path):
    module = tmp_path / "mine.py"
    module.write_text("def solve(op, y, n):\n    x = 0\n    for k in range(n):\n        x += 1\n"
                      "    while x > 0:\n        x -= 1\n    for ax in (0, 1):\n        pass\n")
    assert [(f, line) for f, line, _ in iteration_shaped_loops(module)] == [("solve", 3), ("solve", 5)]


@pytest.mark.parametrize("path", sorted(SOLVERS.glob("*.py")), ids=lambda p: p.name)
def test_timing_only_in_the_driver(path):
    if path.stem == "algorithm":
        return
    text = path.read_text()
    assert "perf_counter" not in text and "synchronize()" not in text, \
        f"{path.name} times or synchronises by itself; use algorithm.Stopwatch / TimedOperator"
