"""kill -9 inside a checkpoint write, at each moment of it: the run folder keeps a checkpoint that
loads, resuming from it ends where an uninterrupted run ends, and no temporary file is left."""

import os
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import BIN, run_cli

PAUSE = Path(__file__).parent / "pause_in_write"  # its sitecustomize.py stops the chosen write
RUN = ["trainer.epochs=3", "trainer.progress=false", "dataset.num_train=2000", "optim.lr=0.01"]


def run_and_kill(run_dir: Path, file: str, stage: str, at: int) -> None:
    """Start a run whose `at`-th write of `file` stops at `stage`; kill -9 it there."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(PAUSE), os.environ.get("PYTHONPATH")) if p),
        "D2LRUN_PAUSE_FILE": file,
        "D2LRUN_PAUSE_STAGE": stage,
        "D2LRUN_PAUSE_AT": str(at),
    }
    cmd = [str(BIN / "d2lrun"), *RUN, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
    )
    try:
        for line in proc.stderr:
            if line.startswith(f"PAUSED {stage} {file}"):
                os.kill(proc.pid, signal.SIGKILL)
                break
        else:
            raise AssertionError(f"the run ended without reaching the pause (exit {proc.wait()})")
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> pd.DataFrame:
    run_dir = tmp_path_factory.mktemp("whole")
    r = run_cli(*RUN, f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr
    return pd.read_csv(run_dir / "metrics.csv")


@pytest.mark.parametrize(
    "file,stage,at,last_epoch",
    [
        ("last.pt", "half", 2, 1),  # half of epoch 2's bytes in the temporary: epoch 1 stays
        ("last.pt", "synced", 2, 1),  # complete temporary, not renamed: epoch 1 stays
        ("last.pt", "renamed", 2, 2),  # renamed, folder not synced: epoch 2 is there
        ("best.pt", "half", 2, 1),  # best.pt is written before last.pt: both stay at epoch 1
        ("metrics.json", "half", 1, 3),  # the run's last write
    ],
)
def test_kill_9_inside_a_write_then_resume(tmp_path, uninterrupted, file, stage, at, last_epoch):
    run_dir = tmp_path / "run"
    run_and_kill(run_dir, file, stage, at)

    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    assert ckpt["epoch"] == last_epoch and len(ckpt["history"]) == last_epoch
    if file == "best.pt":  # the old best.pt is whole
        assert torch.load(run_dir / "best.pt", weights_only=True)["epoch"] == 1
    if stage == "half":  # the killed writer's temporary holds half a file
        assert [p.name.split(".tmp")[0] for p in run_dir.glob(".*.tmp*")] == [f".{file}"]

    resumed_dir = tmp_path / "resumed"
    r = run_cli(f"resume={run_dir}", "trainer.progress=false", f"hydra.run.dir={resumed_dir}")
    assert r.returncode == 0, r.stderr
    assert not list(run_dir.glob(".*.tmp*")), "resume= left the killed run's temporary file"
    resumed = pd.read_csv(resumed_dir / "metrics.csv")
    assert list(resumed.columns) == list(uninterrupted.columns)
    # Bit for bit: every metric as the uninterrupted run's; only the timings may differ.
    metrics = [c for c in uninterrupted.columns if c not in ("seconds", "examples_per_s")]
    assert {"epoch", "train_loss", "val_loss", "val_rmse"} <= set(metrics)
    pd.testing.assert_frame_equal(resumed[metrics], uninterrupted[metrics], check_exact=True)


def test_resume_keeps_a_live_writers_temporary(tmp_path):
    """Only a dead process's temporary is removed: another live run may be writing it right now."""
    from d2lrun.files import remove_stale_temporaries

    with subprocess.Popen(["sleep", "30"]) as live:
        with subprocess.Popen(["true"]) as dead:
            pass  # exits, and is waited for
        kept = tmp_path / f".last.pt.tmp{live.pid}"
        stale = tmp_path / f".last.pt.tmp{dead.pid}"
        for p in (kept, stale, tmp_path / "last.pt"):
            p.write_bytes(b"x")
        remove_stale_temporaries(tmp_path)
        live.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([kept.name, "last.pt"])
