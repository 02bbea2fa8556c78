"""The layers contract of `make lint` (import-linter, pyproject.toml): the package keeps it, and an
import that points upward, even one inside a function, breaks it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINT = Path(sys.executable).parent / "lint-imports"


def lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT), "--no-cache"], cwd=tree, env={"PYTHONPATH": str(tree)},
        capture_output=True, text=True,
    )  # fmt: skip


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the package and its pyproject.toml, to break."""
    shutil.copytree(
        ROOT / "d2lrun", tmp_path / "d2lrun", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_package_keeps_its_layers(tree):
    r = lint(tree)
    assert r.returncode == 0 and "KEPT" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize(
    "module,upward",
    [
        ("trainer", "job"),  # the loop reaching for the job that runs it
        ("errors", "config"),  # the arrows that closed the old import circle
        ("config", "sweeps"),
        ("tracking", "sweeps"),
        ("data", "models"),  # one layer to a sibling above it
        ("sweeps", "app"),
        ("app", "cli"),  # between the two entry points' layers
    ],
)
def test_an_import_that_points_upward_fails_even_inside_a_function(tree, module, upward):
    path = (
        tree
        / "d2lrun"
        / (f"{module}/__init__.py" if module in ("config", "data", "tracking") else f"{module}.py")
    )
    with open(path, "a") as f:
        f.write(f"\n\ndef reach_up():\n    from d2lrun import {upward}  # noqa: F401\n")
    r = lint(tree)
    assert r.returncode != 0, r.stdout
    assert f"d2lrun.{module} is not allowed to import d2lrun.{upward}" in r.stdout, r.stdout
