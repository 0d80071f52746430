"""The tree keeps one code style: `ruff format --check` (configured in pyproject.toml) finds nothing to change."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_tree_is_formatted():
  ruff = shutil.which("ruff")
  if ruff is None:
    pytest.skip("ruff not installed (pip install -e '.[test]' installs it)")
  out = subprocess.run([ruff, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stdout + out.stderr
