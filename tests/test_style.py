"""The tree stays lint-clean: syntax errors, pyflakes' findings (unused or undefined names) and lines over
pyproject's 120 characters fail here rather than in review."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RULES = "E9,F,E501"  # chosen explicitly: ruff's default rule set changes between its versions


def ruff() -> str:
    exe = Path(sys.executable).with_name("ruff")
    found = str(exe) if exe.exists() else shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (pip install -e .[test])")
    return found


def test_tree_is_lint_clean():
    done = subprocess.run([ruff(), "check", "--no-cache", "--select", RULES, "--output-format", "concise",
                           "src", "tests", "benchmarks", "examples", "scripts"],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_lint_check_catches_a_long_line(tmp_path):
    """The check above can fail: the same command flags a line of 121 characters."""
    bad = tmp_path / "bad.py"
    bad.write_text("x = " + repr("a" * 115) + "\n")
    done = subprocess.run([ruff(), "check", "--no-cache", "--select", RULES, "--line-length", "120", str(bad)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "E501" in done.stdout
