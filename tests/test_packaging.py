"""A non-editable install ships every config: the wheel holds configs/ and the experiment
presets, and none of the experiments/ scripts (reproduce.py included)."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(ROOT),
            "-w",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return next(out.glob("d2lrun-*.whl"))


def test_wheel_holds_every_config_and_preset_and_nothing_else_of_theirs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        f"d2lrun/configs/{p.relative_to(ROOT / 'configs')}"
        for p in (ROOT / "configs").glob("**/*.yaml")
    }
    presets = {f"d2lrun/experiments/{p.name}" for p in (ROOT / "experiments").glob("*.yaml")}
    assert configs <= names and presets <= names and len(presets) >= 12
    shipped = {n for n in names if n.startswith(("d2lrun/configs/", "d2lrun/experiments/"))}
    assert shipped == configs | presets  # no benchmark.py, README.md or bench-*.json
    # experiments/reproduce.py is a tool of the checkout (`make reproduce`), not of the package
    assert not [n for n in names if n.endswith("/reproduce.py") or n == "reproduce.py"]
    assert not [n for n in names if n.startswith("experiments/")]


def test_wheel_holds_every_module_of_the_package_and_config_as_a_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "d2lrun").glob("**/*.py")}
    assert sources <= names
    assert {"d2lrun/config/__init__.py", "d2lrun/config/schema.py"} <= names
    assert "d2lrun/config.py" not in names


def test_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    """Unpacked alone (no source tree on the path), `python -m d2lrun` finds its configs and
    trains."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "d2lrun",
            "experiment=ch3_linreg_concise",
            "trainer.progress=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "error in estimating w" in r.stdout and (tmp_path / "run" / "model.pt").exists()
    r = subprocess.run(
        [sys.executable, "-c", "import d2lrun.config as c; print(c.CONFIG_DIR, c.EXPERIMENTS_DIR)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert r.stdout.split() == [
        str(site / "d2lrun" / "configs"),
        str(site / "d2lrun" / "experiments"),
    ]


def test_wheel_holds_the_slurm_launcher_where_hydra_looks_for_launchers(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "hydra_plugins/d2lrun_launcher/slurm_launcher.py" in names
    assert "hydra_plugins/d2lrun_launcher/slurm.py" in names  # what the launcher hands its work
    # hydra_plugins is a namespace package, shared with the other plugins
    assert "hydra_plugins/__init__.py" not in names
