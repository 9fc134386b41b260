"""Static checks that run with the tests: the floors of docs/architecture.md (import-linter
contracts in pyproject.toml) and ruff."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import REPO


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    executable = Path(sys.executable).with_name(tool)  # installed beside this Python by the test extra
    if not executable.exists():
        pytest.fail(f"{tool} is not installed beside {sys.executable}: pip install -e '.[test]'")
    return subprocess.run([str(executable), *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_imports_keep_the_floors() -> None:
    result = _run("lint-imports")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_ruff_finds_nothing() -> None:
    result = _run("ruff", "check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_no_strategy_module_has_more_than_400_lines() -> None:
    """Each strategies/ module keeps one job (docs/architecture.md): a module past 400 lines
    has grown a second one."""
    long = {p.name: n for p in sorted((REPO / "strategies").glob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, f"strategies/ modules over 400 lines: {long}"


def test_no_module_reads_the_run_config_by_dotted_key() -> None:
    """Outside settings/, code reads the typed RunConfig's attributes, not dotted keys by index."""
    dotted_read = "cfg" + '["'  # spelled apart so that grepping the tree for it finds no code
    found = [f"{p.relative_to(REPO)}:{i}" for top in ("server_app", "client_app", "strategies", "fedmedlora",
                                                      "benchmarks", "modeling", "clinical_ie", "wire", "data_loaders")
             for p in sorted((REPO / top).rglob("*.py"))
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if dotted_read in line]
    assert not found, f"dotted run-config reads outside settings/: {found}"
