"""A batch whose glob patterns match nothing is a usage error: exit 2, one line, nothing written."""
from __future__ import annotations

import pytest
import yaml

from recon_cli.cli.main import main


def test_glob_matching_nothing_exits_2(tmp_path, capsys):
    pipe = tmp_path / "p.yaml"
    pipe.write_text(yaml.safe_dump({"name": "b", "input": {"path": "x.h5"}, "solver": {"name": "fbp"}}))
    pattern = str(tmp_path / "data" / "*.h5")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["-q", "batch", str(pipe), pattern, str(tmp_path / "*.nothing"), "-o", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"Error: INPUTS: no input matches {pattern!r}, {str(tmp_path / '*.nothing')!r}"
    assert not (tmp_path / "out").exists()
