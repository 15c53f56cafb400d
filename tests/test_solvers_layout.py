"""``recon solvers NAME`` reads at 80 and 160 columns: every column of every parameter row has content."""
from __future__ import annotations

import pytest
import yaml

from recon_cli.cli.main import main
from recon_cli.solvers.registry import solver_names


def solvers_output(capsys, monkeypatch, columns: int, *args: str) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["solvers", *args])
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    return out


def table_rows(out: str, headers: list[str]) -> list[dict[str, str]]:
    """Cells of the parameter table (continuation lines joined), found by the header's column positions."""
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:1] == ["parameter"])
    header = lines[head]
    assert header.split() == headers, header
    starts = [header.index(h) for h in headers] + [None]
    rows: list[dict[str, str]] = []
    for line in lines[head + 2:]:
        if not line.strip() or line.startswith("nested defaults"):
            break
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:])]
        if cells[0]:
            rows.append({h: c for h, c in zip(headers, cells)})
        else:
            for h, c in zip(headers, cells):
                rows[-1][h] = (rows[-1][h] + " " + c).strip()
    return rows


@pytest.mark.parametrize("columns", [80, 160])
@pytest.mark.parametrize("name", solver_names())
def test_every_column_has_content(capsys, monkeypatch, name, columns):
    out = solvers_output(capsys, monkeypatch, columns, name)
    assert max(len(line) for line in out.splitlines()) <= columns
    headers = ["parameter", "type", "default", "unit", "description"] if columns >= 120 else \
        ["parameter", "type", "default", "description"]
    rows = table_rows(out, headers)
    assert len(rows) >= 2
    for row in rows:
        for h in headers:
            assert row[h], f"{name} at {columns} columns: empty {h} in {row}"
        assert len(row["description"].split()) >= 3, row


def test_nested_defaults_summarised_and_given_in_full(capsys, monkeypatch):
    rows = table_rows(solvers_output(capsys, monkeypatch, 80, "svtv"),
                      ["parameter", "type", "default", "description"])
    assert {r["parameter"]: r["default"] for r in rows}["pre_estimate"] == "fbp (\u2026)"
    long_out = solvers_output(capsys, monkeypatch, 80, "svtv", "--long")
    assert "pre_estimate" in long_out and "filter: ram-lak" in long_out
    assert max(len(line.rstrip()) for line in long_out.splitlines()) <= 80
    section = yaml.safe_load(solvers_output(capsys, monkeypatch, 80, "svtv", "--yaml"))
    assert section["solver"]["name"] == "svtv"
    assert section["solver"]["params"]["pre_estimate"]["params"]["filter"] == "ram-lak"
