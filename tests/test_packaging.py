"""A non-editable install ships every config: the wheel holds configs/ and the experiment presets."""
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_folder_is_a_listed_package():
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {p.parent for p in (ROOT / "configs").glob("**/*.yaml")}
    for folder in folders:
        name = ".".join(["d2lrun", "configs", *folder.relative_to(ROOT / "configs").parts])
        assert name in packages, f"{name} is missing from pyproject.toml's packages: its YAML would not ship"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                        "-w", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return next(out.glob("d2lrun-*.whl"))


def test_wheel_holds_configs_and_presets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for yaml in ("d2lrun/configs/config.yaml", "d2lrun/configs/model/lenet.yaml", "d2lrun/configs/eval.yaml",
                 "d2lrun/configs/experiment/ch6_lenet.yaml", "d2lrun/configs/hydra/help/d2lrun.yaml",
                 "d2lrun/configs/hydra/launcher/slurm.yaml"):
        assert yaml in names, yaml


def test_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    """Unpacked alone (no source tree on the path), `python -m d2lrun` finds its configs and trains."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-m", "d2lrun", "experiment=ch3_linreg_concise", "trainer.progress=false",
                        f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "error in estimating w" in r.stdout and (tmp_path / "run" / "model.pt").exists()
    r = subprocess.run([sys.executable, "-c", "import d2lrun.cli as c; print(c.CONFIG_DIR)"], capture_output=True,
                       text=True, cwd=tmp_path, env=env)
    assert r.stdout.strip() == str(site / "d2lrun" / "configs")
