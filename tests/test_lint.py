"""The code passes ruff (lint and format) and keeps its layers (import-linter's contracts in
pyproject.toml: tools above services, services side by side, then the router, the runtime and
the wire, with no cycle between the modules of a package), so CI holds the house style and the
architecture, not only the tests. The tools are test dependencies: a missing one fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is not installed beside {sys.executable}: ./dev installs it"
    return str(path)


@pytest.mark.parametrize("arguments", [["check", "."], ["format", "--check", "."]])
def test_ruff(arguments):
    result = subprocess.run(
        [_tool("ruff"), *arguments], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_layers_hold():
    result = subprocess.run(
        [_tool("lint-imports"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" KEPT") == 2, result.stdout
