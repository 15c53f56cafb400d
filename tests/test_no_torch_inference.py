"""Issue 16, friction 9: inference needs no PyTorch (the CPU runtime image has none). The learned pipelines run
in a process where `import torch` fails, and no recon_cli module outside recon_cli.learn imports torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_BLOCK_TORCH = (
    "import sys\n"
    "class NoTorch:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ImportError('torch is not installed here')\n"
    "sys.meta_path.insert(0, NoTorch())\n"
    "from recon_cli.cli.main import main\n"
    "main(sys.argv[1:])\n"
)


@pytest.mark.parametrize("pipeline", ["unet", "rising", "svtv_learned"])
def test_learned_pipelines_run_without_torch(pipeline, tmp_path):
    out = tmp_path / f"{pipeline}.h5"
    proc = subprocess.run([sys.executable, "-c", _BLOCK_TORCH, "-q", "run", f"pipelines/{pipeline}.yaml", "-o",
                           str(out), "--set", "output.formats=[hdf5]"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file()
    check = subprocess.run([sys.executable, "-c", _BLOCK_TORCH.replace("from recon_cli.cli.main import main\n"
                                                                       "main(sys.argv[1:])\n", "import torch")],
                           capture_output=True, text=True)
    assert check.returncode != 0 and "torch is not installed here" in check.stderr  # the block works


def test_no_module_outside_learn_imports_torch_at_module_level():
    offenders = []
    for path in sorted((REPO / "recon_cli").rglob("*.py")):
        if "learn" in path.relative_to(REPO / "recon_cli").parts:
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: a function may import it for training-only paths
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "torch" or n.startswith("torch.") for n in names):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
