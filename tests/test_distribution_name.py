"""The distribution name is ours on package indexes ("recon-cli" on PyPI is an unrelated project)."""
from __future__ import annotations

import re
from pathlib import Path

import recon_cli
from recon_cli.provenance import package_versions

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_name_is_the_free_distribution_name():
    text = (ROOT / "pyproject.toml").read_text()
    name = re.search(r'^name\s*=\s*"([^"]+)"', text, re.M).group(1)
    assert name == "recon-ct-cli" == recon_cli.DISTRIBUTION
    assert re.search(r'^recon\s*=\s*"recon_cli\.cli\.main:main"', text, re.M)  # the command stays `recon`


def test_no_doc_or_message_installs_the_foreign_package():
    texts = [p for p in [*ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md"), *ROOT.glob("Dockerfile*"),
                         *(ROOT / "recon_cli").rglob("*.py")] if p.is_file()]
    pattern = re.compile(r"pip install\s+['\"]?recon-cli\b")
    offenders = [f"{p.relative_to(ROOT)}" for p in texts if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_provenance_records_this_package_version():
    assert package_versions(("recon-cli",))["recon-cli"] == recon_cli.__version__
