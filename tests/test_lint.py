"""The ground rules the code keeps: ruff (lint and format) and mypy --strict, as CI runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy-strict"],
)
def test_the_code_is_clean(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_file_holds_a_merge_conflict_marker() -> None:
    """A half-resolved merge in a script or a document breaks CI or misleads a reader without any
    lint noticing (.ci/run once kept both sides of a conflict)."""
    marker = ("<" * 7 + " ", "=" * 7 + "\n", ">" * 7 + " ")
    skip = {".git", ".venv", "node_modules", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"}
    found = []
    for path in ROOT.rglob("*"):
        if skip & set(path.relative_to(ROOT).parts) or not path.is_file() or path.stat().st_size > 1 << 20:
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        except (UnicodeDecodeError, OSError):
            continue
        found += [
            f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(lines, 1) if line.startswith(marker)
        ]
    assert not found, "merge conflict markers left in: " + ", ".join(found)
