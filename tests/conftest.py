"""Shared fixtures: a tiny Fashion-MNIST written in the real IDX format, the real files when
present, and a helper that runs the installed command-line tools."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Tests send Ctrl-C to runs in this process and in the commands they start: a test run started in
# the background by a shell script ignores it (SIG_IGN, which d2lrun honours), so it is reset.
signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parents[1]
# The real data sits beside the checkout; D2LRUN_TEST_DATA points there from a copy of the tests
# run elsewhere (`make mutation` runs them from mutants/, one folder deeper).
SHARED_DATA = Path(os.environ.get("D2LRUN_TEST_DATA") or ROOT.parent / "shared" / "data")
REAL_FASHION_MNIST = SHARED_DATA / "fashion-mnist"
KAGGLE_HOUSE = SHARED_DATA / "kaggle-house"


def missing_data(what: str, where: Path) -> None:
    """Skip a test whose real data is not on this machine; under CI (CI=true) that is a failure."""
    unavailable(f"{what} not found in {where}")


def unavailable(message: str) -> None:
    """Skip a test that this machine cannot run; under CI (CI=true) that is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}, and CI must run this test")
    pytest.skip(message)


BIN = Path(sys.executable).parent


def write_fake_fashion_mnist(
    root: Path, num_train: int = 64, num_test: int = 32, seed: int = 0
) -> Path:
    """Write uncompressed IDX files under root/FashionMNIST/raw, as torchvision expects after
    download.

    Each class gets a bright square in its own place, so a model can learn it in an epoch or two.
    """
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            r, col = divmod(int(c), 5)
            images[i, 4 + 10 * r : 12 + 10 * r, 1 + 5 * col : 5 + 5 * col] = 255
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 0x801, n) + labels.tobytes()
        )
    return Path(root)


@pytest.fixture(autouse=True)
def outside_any_hydra_run(monkeypatch):
    """Each test starts outside any Hydra run: an in-process sweep (app.sweep) leaves its last
    job's HydraConfig set, and d2lrun reads it (a batched job's lines start `job N:`)."""
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)


@pytest.fixture
def fake_fmnist(tmp_path_factory) -> Path:
    """Root folder of a tiny IDX-format Fashion-MNIST (64 train, 32 test images)."""
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="session")
def real_fmnist(tmp_path_factory) -> Path:
    """A root with the real Fashion-MNIST .gz files copied in; skips when they are not on this
    machine (fails under CI=true)."""
    if not all(
        (REAL_FASHION_MNIST / f).exists()
        for f in (
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        )
    ):
        missing_data("the real Fashion-MNIST files", REAL_FASHION_MNIST)
    root = tmp_path_factory.mktemp("real_fmnist")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in REAL_FASHION_MNIST.glob("*.gz"):
        shutil.copy(f, raw / f.name)
    return root


@pytest.fixture(scope="session")
def kaggle_house() -> Path:
    """The folder of §4.10's two CSV files (read only); skips when they are not on this machine."""
    if not all(
        (KAGGLE_HOUSE / f).exists()
        for f in ("kaggle_house_pred_train.csv", "kaggle_house_pred_test.csv")
    ):
        missing_data("the book's Kaggle house files", KAGGLE_HOUSE)
    return KAGGLE_HOUSE


def run_cli(
    *args: str, tool: str = "d2lrun", env: dict | None = None, timeout: float = 300, **kwargs
) -> subprocess.CompletedProcess:
    """Run an installed d2lrun command; returns the completed process (never raises on exit
    code)."""
    exe = BIN / tool
    cmd = [str(exe) if exe.exists() else shutil.which(tool) or tool, *args]
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR") if full_env["HYDRA_FULL_ERROR"] == "0" else None
    return subprocess.run(
        cmd, capture_output=True, text=True, env=full_env, timeout=timeout, **kwargs
    )


def run_module(
    *args: str, pythonpath: tuple = (), timeout: float = 300, **kwargs
) -> subprocess.CompletedProcess:
    """`d2lrun ARGS` as `python -m d2lrun` from this checkout (ROOT first on PYTHONPATH, after the
    folders in pythonpath), so that it tests these sources wherever the tests run from."""
    path = [*map(str, pythonpath), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "d2lrun", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        **kwargs,
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA; without it they are skipped, not failed."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
