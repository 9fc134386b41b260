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
