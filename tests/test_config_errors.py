"""Validation reports every error at once, each ``FILE:LINE: field: plain message``, without pydantic internals."""
from __future__ import annotations

import re

import pytest

from recon_cli.cli.main import main

BAD = """name: bad
input: {path: a.h5, rows: [a], simulate: 5}
solver:
  name: tv
  params:
    lam: abc
    iteratons: 5
output:
  formats: [hdf5, jpg]
preprocess:
  - {step: log_transform, I0: -1}
metrics:
  mu_water: x
"""

#: Internal names pydantic puts in its locations and messages.
INTERNALS = re.compile(r"constrained-|literal\[|list\[|function-|tagged-union|more error|SimulateSpec|"
                       r"instance of|Value error,")


def validate_errors(tmp_path, capsys, text: str, *args: str) -> list[str]:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--no-files", str(path), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    prefix = f"Error: {path}:"
    return [line.removeprefix(prefix) for line in err.strip().splitlines()]


def test_every_error_at_once_in_file_order(tmp_path, capsys):
    lines = validate_errors(tmp_path, capsys, BAD)
    assert lines == [
        "2: input.rows: Input should be a valid integer or a valid string or a list whose item 0 is a valid integer",
        "2: input.simulate: expected a mapping of keys (key: value)",
        "6: solver.params.lam: Input should be a valid number or 'auto'",
        "7: solver.params.iteratons: unknown key 'iteratons'; did you mean 'iterations'?",
        "9: output.formats.1: unknown value 'jpg'; did you mean 'png'?",
        "11: preprocess.0.I0: Input should be greater than 0",
        "13: metrics.mu_water: Input should be a valid number, unable to parse string as a number",
    ]
    for line in lines:
        assert re.fullmatch(r"\d+: [\w.]+: \S.*", line), line
        assert not INTERNALS.search(line), line


def test_set_errors_are_listed_with_the_file_errors(tmp_path, capsys):
    good = "name: t\ninput: {path: a.h5}\nsolver: {name: tv, params: {iterations: 5}}\ndevise: cpu\n"
    path = tmp_path / "p.yaml"
    path.write_text(good)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--no-files", str(path), "--set", "solver.params.lam=-1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "Error: --set solver.params.lam: Input should be greater than or equal to 0 or 'auto'"
    assert err[1] == f"Error: {path}:4: devise: unknown key 'devise'; did you mean 'device'?"
    assert len(err) == 2


def test_training_config_errors_are_all_reported(tmp_path, capsys):
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nepochs: 3\ngeometry: {type: parallel, n_angles: x}\ntraining: {lr: -1, epocs: 2}\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["train", str(path)])
    assert exc.value.code == 2
    lines = [line.removeprefix(f"Error: {path}:") for line in capsys.readouterr().err.strip().splitlines()]
    assert lines == ["2: epochs: unknown key 'epochs'",
                     "3: geometry.n_angles: Input should be a valid integer, unable to parse string as an integer",
                     "4: training.lr: Input should be greater than 0",
                     "4: training.epocs: unknown key 'epocs'"]


def test_short_lists_and_unknown_values_in_plain_words(tmp_path, capsys):
    text = ("name: t\ninput: {path: a.h5, grid_shape: [1]}\nsolver: {name: fbp}\n"
            "preprocess: [{step: nope}]\nmetrics: {list: [x]}\n")
    assert validate_errors(tmp_path, capsys, text) == [
        "2: input.grid_shape.1: missing list item 1 (too few items)",
        "4: preprocess.0: unknown step 'nope'; valid steps: log_transform, remove_stripes",
        "5: metrics.list.0: unknown value 'x'; valid values: psnr, ssim, rel_err, rmse, hu_rmse, residual, wall_time",
    ]
