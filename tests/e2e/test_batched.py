"""`d2lrun -m hydra/launcher=batched`: the basic launcher's sweep, its jobs trained as one stack
where they can, each job a run of its own."""

import csv
import json
import signal
import subprocess
import time

import pytest

from tests.conftest import BIN, run_cli, write_fake_fashion_mnist
from tests.e2e.test_sweeps import summary, sweep  # the basic launcher's sweeps, run alike

BATCHED = "hydra/launcher=batched"


def test_batched_gives_the_basic_launchers_table_and_runs(tmp_path):
    grid = ["optim.lr=0.01,0.1,3", "optim.weight_decay=0,1e-3", "trainer.epochs=2"]
    basic, batched = tmp_path / "basic", tmp_path / "batched"
    r = sweep(basic, *grid)
    b = sweep(batched, BATCHED, *grid)
    assert r.returncode == b.returncode == 1, b.stderr
    assert "jobs 0, 1, 2, 3, 4, 5: linreg, trained as one stack of 6" in b.stdout
    assert f"sweep {batched}: 4 completed, 2 diverged" in b.stdout
    assert "job 4 diverged: the training loss became" in b.stdout
    # Its line as it diverged says which job it is (two members' read the same)
    assert "d2lrun: error: job 4: diverged: the training loss became" in b.stderr
    rows, alone = summary(batched), summary(basic)
    assert [(x["job"], x["status"]) for x in rows] == [(x["job"], x["status"]) for x in alone]
    for x, y in zip(rows, alone, strict=True):
        for key in ("final_val_loss", "best_val_loss"):
            if y[key]:
                assert float(x[key]) == pytest.approx(float(y[key]), rel=1e-4)
    assert (batched / "heatmap.png").exists()
    job = batched / "1"
    for name in ("model.pt", "last.pt", "best.pt", "metrics.csv", "curves.png", ".hydra"):
        assert (job / name).exists(), name
    e = run_cli(f"run={job}", "device=cpu", tool="d2lrun-eval")
    assert e.returncode == 0, e.stderr
    final = json.loads((job / "metrics.json").read_text())["final"]
    # its own weights, evaluated alone: the stack's numbers within float32 reordering
    assert json.loads(e.stdout.splitlines()[0])["val_loss"] == pytest.approx(final["val_loss"])


def test_models_that_do_not_stack_run_one_after_another(tmp_path):
    root = write_fake_fashion_mnist(tmp_path / "data")
    s = tmp_path / "sweep"
    r = run_cli("-m", BATCHED, "model=softmax,lenet", "optim.lr=0.1,0.3", "dataset=fashion_mnist",
                f"dataset.root={root}", "trainer.epochs=1", f"hydra.sweep.dir={s}")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "jobs 0, 1: softmax, trained as one stack of 2" in r.stdout
    assert "jobs 2, 3: one after another (model=lenet: convolutions do not stack" in r.stdout
    assert f"sweep {s}: 4 completed" in r.stdout
    # Each job's lines say which (a stack's members' do): it printed a lone job's bare
    lone = [ln for ln in r.stdout.splitlines() if ln.startswith("lenet on fashion_mnist")]
    assert not lone and "job 3: lenet on fashion_mnist" in r.stdout


def test_a_stopped_stack_saves_every_member_at_one_epoch_and_goes_on(tmp_path):
    """Two of three jobs stacked (max_members=2) and stopped: the third, never started, has no
    folder (the table's 'missing', as with the basic launcher), and the re-run trains all."""
    s = tmp_path / "sweep"
    args = ["-m", BATCHED, "experiment=ch4_weight_decay", "optim.weight_decay=0,1,3",
            "trainer.epochs=300", "trainer.progress=false", "hydra.launcher.max_members=2",
            f"hydra.sweep.dir={s}"]  # fmt: skip
    with subprocess.Popen([str(BIN / "d2lrun"), *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:  # fmt: skip
        for line in proc.stdout:
            if line.startswith("job 1: epoch   3/300"):
                break
        time.sleep(0.2)  # in the middle of an epoch, or of the members' saving of one
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    stopped = [json.loads((s / j / "metrics.json").read_text()) for j in "01"]
    assert not (s / "2").exists()  # it was left with .hydra/ and .lock: 'unfinished'
    assert out.splitlines()[-1] == (  # it said only "interrupted."
        f"d2lrun: error: jobs 0, 1: interrupted by SIGTERM after epoch "
        f"{stopped[0]['epochs_completed']}; the "
        f"last complete epoch is saved. To finish the sweep, run the same command again with "
        f"hydra.sweep.dir={s}"
    )
    assert {m["status"] for m in stopped} == {"interrupted"}
    assert len({m["epochs_completed"] for m in stopped}) == 1  # all at one epoch
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "trained as one stack of 2" in r.stdout and f"sweep {s}: 3 completed" in r.stdout
    for j in "012":
        assert json.loads((s / j / "metrics.json").read_text())["restarts"] == (j != "2")
        with open(s / j / "metrics.csv") as f:
            assert [int(row["epoch"]) for row in csv.DictReader(f)] == list(range(1, 301))


def test_a_refused_value_fails_alone_and_max_members_splits_the_stack(tmp_path):
    """As with the basic launcher: optim.lr=-1 refuses the sweep before any job, in one line; a
    job that fails later (its data, its ${...}) fails alone, and the rest of its group still
    trains as one stack."""
    s = tmp_path / "sweep"
    r = sweep(s, BATCHED, "optim.lr=-1,0.03,0.1", "trainer.epochs=1")
    assert r.returncode == 2 and r.stderr.strip() == (
        "d2lrun: error: optim.lr=-1.0 is out of range: it must be greater than 0. "
        "Fix: optim.lr=0.03,0.1.") and not s.exists()  # fmt: skip
    r = sweep(
        tmp_path / "parts", BATCHED, "optim.lr=0.01,0.02,0.03", "hydra.launcher.max_members=2"
    )
    assert r.returncode == 0, r.stderr
    lines = [line.partition("[HYDRA] ")[2] for line in r.stdout.splitlines() if "stack" in line]
    assert lines == ["jobs 0, 1: linreg, trained as one stack of 2",
                     "job 2: linreg, trained as one stack of 1"]  # fmt: skip
    # A group's data that cannot be read, a ${...} that cannot be resolved: their jobs fail, the
    # sweep goes on (the whole sweep ended, and the second said 'KeyError: 0 (a bug in d2lrun?)').
    (tmp_path / "t.csv").write_text("x,label\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(9)))
    g = tmp_path / "groups"
    r = run_cli("-m", BATCHED, "model=softmax", "dataset=csv", f"dataset.path={tmp_path / 't.csv'}",
                "dataset.target=labl,label", "optim.lr=0.1,0.3", "trainer.progress=false",
                "trainer.epochs=1,${trainer.epoch}", f"hydra.sweep.dir={g}")  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert sorted((x["job"], x["status"]) for x in summary(g)) == [
        ("0", "failed"), ("1", "failed"), ("2", "failed"), ("3", "failed"),
        ("4", "completed"), ("5", "failed"), ("6", "completed"), ("7", "failed")]  # fmt: skip
    assert "dataset.target=labl is not a column of" in r.stderr
    assert "cannot resolve a ${...} of the config: Interpolation key 'trainer.epoch'" in r.stderr
    r = sweep(tmp_path / "other", BATCHED, "optim.lr=0.1,0.3", "hydra.launcher.max_members=0")
    assert r.returncode == 2 and r.stderr.strip() == (
        "d2lrun: error: hydra.launcher.max_members=0 is not a whole number of at least 1. "
        "Fix: hydra.launcher.max_members=8, or null for as many as fit in memory.")  # fmt: skip


@pytest.mark.parametrize("launcher", ["basic", "batched"])
def test_a_sweep_whose_output_reader_is_gone_still_trains_every_job(tmp_path, launcher):
    """`d2lrun -m hydra/launcher=batched ... | head -1`: every job of the stack failed with
    "Broken pipe. Fix: free disk space ...", exit 1, and each [HYDRA] line after the reader left
    printed a traceback."""
    command = [str(BIN / "d2lrun"), "-m", f"hydra/launcher={launcher}", "optim.lr=0.1,0.2,0.3",
               "trainer.epochs=2", f"hydra.sweep.dir={tmp_path}"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "[HYDRA]" in process.stdout.readline()
    process.stdout.close()  # as head does after its line
    assert process.wait(timeout=300) == 0
    assert process.stderr.read() == ""
    assert [s["status"] for s in summary(tmp_path)] == ["completed"] * 3
