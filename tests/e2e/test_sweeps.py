"""`d2lrun -m` sweeps end to end: the results table, failures, resuming, launchers, search,
folders."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from tests.conftest import BIN, run_cli, write_fake_fashion_mnist

FAST = ["trainer.progress=false", "dataset.num_train=200"]


def sweep(sweep_dir, *args, **kwargs):
    return run_cli("-m", *args, *FAST, f"hydra.sweep.dir={sweep_dir}", **kwargs)


def summary(sweep_dir):
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def metrics(job_dir):
    return json.loads((job_dir / "metrics.json").read_text())


def test_grid_sweep_prints_a_table_writes_csv_and_heatmap_and_exits_1_when_jobs_diverge(tmp_path):
    s = tmp_path / "sweep"
    r = sweep(s, "optim.lr=0.01,0.1,3", "optim.weight_decay=0,1e-3", "trainer.epochs=2")
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines()[-1] == (
        f"d2lrun: error: 2 of 6 sweep jobs did not complete (2 diverged); see {s / 'summary.csv'}"
    )
    assert f"sweep {s}: 4 completed, 2 diverged" in r.stdout and "best_val_loss" in r.stdout
    assert "job 4 diverged: the training loss became" in r.stdout
    for n in range(6):  # each job is a normal run folder
        assert (s / str(n) / ".hydra" / "overrides.yaml").exists() and (
            s / str(n) / "metrics.json"
        ).exists()
    rows = summary(s)
    assert [(r["optim.lr"], r["status"]) for r in rows] == [("0.1", "completed")] * 2 + [
        ("0.01", "completed")
    ] * 2 + [("3", "diverged")] * 2  # best first, failures last
    jobs = {r["job"]: metrics(s / r["job"]) for r in rows}
    assert sorted(jobs) == [str(n) for n in range(6)]
    assert [r["status"] for r in rows] == [jobs[r["job"]]["status"] for r in rows]

    def rank(job):  # the lowest best val_loss first; jobs that did not complete last, in job order
        done = jobs[job]["status"] == "completed"
        return (not done, jobs[job]["best"]["value"] if done else 0, int(job))

    assert [r["job"] for r in rows] == sorted(jobs, key=rank)
    assert [float(r["best_val_loss"]) for r in rows[:4]] == [
        jobs[r["job"]]["best"]["value"] for r in rows[:4]
    ]
    assert float(rows[0]["best_val_loss"]) < 1e-3 < float(rows[2]["best_val_loss"])
    assert rows[0]["best_epoch"] == "2" and float(rows[0]["seconds"]) > 0
    assert "Fix: lower optim.lr" in rows[-1]["reason"]
    image = imread(s / "heatmap.png")[:, :, :3]  # a cell per job: lr 3's column is grey (diverged)
    grey = (np.abs(image - 211 / 255) < 1 / 255).all(axis=2)
    half = image.shape[1] // 2
    assert grey[:, half:].mean() > 0.2 and grey[:, :half].mean() < 0.01  # text edges: a few


def test_rerun_skips_completed_jobs_and_report_shows_a_partial_sweep(tmp_path):
    s = tmp_path / "sweep"
    grid = ["optim.lr=0.1,0.03,1000", "trainer.epochs=1"]  # (lr -1 is refused before any job)
    r = sweep(s, *grid)
    assert r.returncode == 1 and "1 of 3 sweep jobs did not complete (1 diverged)" in r.stderr
    assert metrics(s / "2")["status"] == "diverged"
    assert metrics(s / "2")["reason"].endswith("Fix: lower optim.lr (now 1000).")

    shutil.rmtree(s / "1")  # as if the sweep had been stopped before job 1
    r = run_cli(str(s), tool="d2lrun-report")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].startswith(
        "2 of 3 sweep jobs did not complete (1 missing, 1 diverged)"
    )
    assert [(row["job"], row["optim.lr"], row["status"]) for row in summary(s)] == [
        ("0", "0.1", "completed"),
        ("1", "0.03", "missing"),
        ("2", "1000", "diverged"),
    ]

    first = (s / "0" / "model.pt").stat().st_mtime_ns
    r = sweep(s, *grid)
    assert r.returncode == 1
    assert f"job 0: already completed in {s / '0'}; skipped" in r.stdout
    assert (
        "job 1: already" not in r.stdout and "job 2: already" not in r.stdout
    )  # missing and failed ones run
    assert (s / "0" / "model.pt").stat().st_mtime_ns == first
    assert [(row["job"], row["status"]) for row in summary(s)] == [
        ("0", "completed"),
        ("1", "completed"),
        ("2", "diverged"),
    ]


def test_a_job_resumed_in_its_folder_stays_the_sweeps_job(tmp_path):
    """README's `resume=JOB trainer.epochs=N hydra.run.dir=JOB` on a sweep's job: d2lrun-report
    listed it 'missing' (its overrides.yaml gained resume=), and the same sweep run again
    refused it: 'holds a checkpoint of another config ... Fix: delete it'."""
    s, grid = tmp_path / "sweep", ["optim.lr=0.01,0.03", "trainer.epochs=1"]
    assert sweep(s, *grid).returncode == 0
    r = run_cli(f"resume={s / '1'}", f"hydra.run.dir={s / '1'}", "trainer.epochs=2", *FAST)
    assert r.returncode == 0, r.stderr
    r = run_cli(str(s), tool="d2lrun-report")
    assert r.returncode == 0 and f"sweep {s}: 2 completed" in r.stdout, r.stdout
    rows = [(row["job"], row["trainer.epochs"], row["status"]) for row in summary(s)]
    assert sorted(rows) == [("0", "1", "completed"), ("1", "2", "completed")]
    trained = (s / "1" / "model.pt").read_bytes()
    r = sweep(s, *grid)
    assert r.returncode == 0, r.stderr
    assert f"job 1: already completed in {s / '1'}; skipped" in r.stdout
    assert (s / "1" / "model.pt").read_bytes() == trained
    assert sorted((row["job"], row["trainer.epochs"]) for row in summary(s)) == [
        ("0", "1"),
        ("1", "2"),
    ]


def test_fashion_mnist_sweep_decodes_the_data_once(tmp_path):
    """Jobs in one process share the decoded dataset (d2lrun.data caches it by config)."""
    root = write_fake_fashion_mnist(tmp_path / "data")
    s = tmp_path / "sweep"
    count_loads = (
        "import atexit, sys\n"
        "import d2lrun.data.fashion_mnist as fm\n"
        "calls, load = [], fm.load\n"
        "fm.load = lambda *a, **k: calls.append(1) or load(*a, **k)\n"
        "atexit.register(lambda: print('decoded', len(calls), 'time(s)'))\n"
        "from d2lrun.cli import train_main\n"
        "sys.argv[0] = 'd2lrun'\n"
        "train_main()\n"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            count_loads,
            "-m",
            "model=softmax",
            "optim.lr=0.1,0.3",
            "optim.weight_decay=0,1e-3",
            "trainer.epochs=2",
            "trainer.progress=false",
            "dataset.download=false",
            f"hydra.sweep.dir={s}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "D2LRUN_DATA": str(root)},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "decoded 1 time(s)"
    rows = summary(s)
    assert len(rows) == 4 and {row["status"] for row in rows} == {"completed"}
    acc = [float(row["best_val_acc"]) for row in rows]
    assert acc == [metrics(s / row["job"])["best"]["value"] for row in rows]  # each job's own
    assert acc == sorted(acc, reverse=True) and acc[0] >= 0.5  # best first; chance is 0.1
    assert "final_val_acc" in rows[0]
    assert (s / "heatmap.png").exists()


def test_joblib_launcher_gives_the_same_results_as_sequential_jobs(tmp_path):
    grid = ["optim.lr=0.03,0.1", "trainer.epochs=2"]
    seq, par = tmp_path / "sequential", tmp_path / "joblib"
    assert sweep(seq, *grid).returncode == 0
    r = sweep(par, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *grid)
    assert r.returncode == 0, r.stderr
    assert "Joblib.Parallel(n_jobs=2" in r.stdout + r.stderr
    # Side by side, each job's lines say whose they are (they came interleaved, unlabelled).
    epochs = [ln.split(":")[0] for ln in r.stdout.splitlines() if ": epoch " in ln]
    assert sorted(epochs) == ["job 0"] * 2 + ["job 1"] * 2
    for n in ("0", "1"):
        a, b = metrics(seq / n), metrics(par / n)
        assert (a["status"], a["final"]["val_loss"], a["best"]) == (
            b["status"],
            b["final"]["val_loss"],
            b["best"],
        )

    def drop_seconds(rows):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert drop_seconds(summary(seq)) == drop_seconds(summary(par))


# ~15 s: submitit starts a Python process per job and polls them; in the default suite, so CI runs
# it
def test_submitit_local_launcher_runs_each_job_in_its_own_process(tmp_path):
    s = tmp_path / "sweep"
    r = sweep(s, "hydra/launcher=submitit_local", "optim.lr=0.03,0.1", "trainer.epochs=1")
    assert r.returncode == 0, r.stderr
    logs = sorted((s / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 and all("epoch 1/1" in log.read_text() for log in logs)
    assert [row["status"] for row in summary(s)] == ["completed", "completed"]


def test_optuna_preset_searches_lr_and_weight_decay_and_maximizes_the_score(tmp_path):
    s = tmp_path / "sweep"
    # A wider lr range than the preset's, so that some trials diverge: they score -inf and the
    # search goes on.
    r = sweep(
        s,
        "hydra/sweeper=optuna_lr_wd",
        "optim.lr=tag(log, interval(0.05, 50))",
        "hydra.sweeper.n_trials=4",
        "trainer.epochs=2",
    )
    assert "alembic" not in r.stdout + r.stderr
    rows = summary(s)
    statuses = [row["status"] for row in rows]
    assert len(rows) == 4 and "completed" in statuses and "diverged" in statuses
    assert (
        r.returncode == 1
        and f"{statuses.count('diverged')} of 4 sweep jobs did not complete" in r.stderr
    )
    assert all(
        0.05 <= float(row["optim.lr"]) <= 50 and 0 <= float(row["optim.weight_decay"]) <= 0.01
        for row in rows
    )
    best = yaml.safe_load((s / "optimization_results.yaml").read_text())
    # regression: each job returned minus its best val_loss, so the study's best is the table's
    # first row
    assert best["best_value"] == pytest.approx(-float(rows[0]["best_val_loss"]))
    assert best["best_params"]["optim.lr"] == pytest.approx(float(rows[0]["optim.lr"]))
    assert (s / "heatmap.png").exists()


def test_an_optuna_sweep_is_finished_in_its_folder_and_another_is_refused_there(tmp_path):
    """Optuna's sweeper saves no multirun.yaml: d2lrun writes the plan, with the task's overrides
    as Hydra's basic sweeper does, so the printed `hydra.sweep.dir=` finishes the same sweep and
    refuses another."""
    search = ["-m", "hydra/sweeper=optuna_lr_wd", "hydra.sweeper.n_trials=2", "trainer.epochs=1",
              *FAST]  # fmt: skip
    r = run_cli(*search, cwd=tmp_path)  # into the default folder, outputs/multirun/DATE/TIME
    assert r.returncode == 0, r.stderr
    (s,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    r = run_cli(*search, f"hydra.sweep.dir={s}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("already completed in") == 2 and f"sweep {s}: 2 completed" in r.stdout
    r = run_cli(*search[:3], "trainer.epochs=2", *FAST, f"hydra.sweep.dir={s}")
    assert r.returncode == 2 and f"hydra.sweep.dir={s} holds another sweep" in r.stderr
    given = tmp_path / "given"  # named from the start: its plan too, which lists unrun trials
    assert sweep(given, *search[1:3]).returncode == 0 and (given / "multirun.yaml").exists()


def test_optuna_preset_improves_on_its_random_start(tmp_path):
    """TPE samples its first 10 trials at random (optuna's n_startup_trials), then models them: over
    16 seeded trials, the trials it chose beat the random ones and find the study's best."""
    s = tmp_path / "sweep"
    r = sweep(s, "hydra/sweeper=optuna_lr_wd", "hydra.sweeper.n_trials=16", "trainer.epochs=1")
    assert r.returncode == 0, r.stderr
    loss = {int(row["job"]): float(row["best_val_loss"]) for row in summary(s)}
    assert sorted(loss) == list(range(16))
    random_start = sorted(loss[j] for j in range(10))
    chosen = sorted(loss[j] for j in range(10, 16))
    best = yaml.safe_load((s / "optimization_results.yaml").read_text())["best_value"]
    assert best == pytest.approx(-min(loss.values())) and -best < loss[0] / 100
    assert min(chosen) < min(random_start)  # the study's best is one TPE chose
    assert chosen[len(chosen) // 2] < random_start[len(random_start) // 2] / 10  # medians


def test_two_sweeps_started_in_the_same_second_get_their_own_folders(tmp_path):
    """Both start at once with the default hydra.sweep.dir (outputs/multirun/DATE/TIME): in one
    second the second sweep gets TIME_2; either way each keeps its own job."""
    cmd = [str(BIN / "d2lrun"), "-m", "optim.lr=0.1", "trainer.epochs=1", *FAST]
    procs = [
        subprocess.Popen(
            [*cmd, f"seed={i}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for i in (1, 2)
    ]  # fmt: skip
    for p in procs:
        p.communicate(timeout=300)
        assert p.returncode == 0
    folders = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    if folders[0].name == folders[-1].name.removesuffix("_2"):  # the same second
        assert [f.name for f in folders] == [folders[0].name, f"{folders[0].name}_2"]
    configs = [f / "0" / ".hydra" / "config.yaml" for f in folders]
    assert {yaml.safe_load(c.read_text())["seed"] for c in configs} == {1, 2}
