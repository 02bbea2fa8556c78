"""d2lrun.sweeps without training (but for the one sweep that claims its folder): folder claiming,
resumable jobs, scores, the report of a sweep folder, presets."""

import csv
import json
import math
import os
import re
import signal
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from unittest import mock

import hydra.core.utils
import matplotlib
import numpy as np
import pytest
import torch
import yaml
from matplotlib.image import imread
from omegaconf import OmegaConf

from d2lrun import app, job, kfold
from d2lrun import sweeps as sweep
from d2lrun.config import checked, compose
from d2lrun.config.messages import explain
from d2lrun.errors import Interrupted, RunFailed, UsageError
from d2lrun.files import hold, save_torch
from d2lrun.plots import png
from d2lrun.reload import FORMAT


def compose_hydra(*overrides):
    return compose(list(overrides), with_hydra=True)


class OneSecond(datetime):
    """Hydra's ${now:...} at one fixed time: every sweep starts in the same second."""

    @classmethod
    def now(cls, tz=None):
        return cls(2026, 11, 26, 10, 0, 0)


def test_default_sweep_dir_is_claimed_once_per_sweep_and_shared_by_its_jobs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hydra.core.utils, "datetime", OneSecond)  # two sweeps in the same second
    fast = ["trainer.epochs=1", "dataset.num_train=50", "trainer.progress=false"]
    first, failure = app.sweep([*fast, "optim.lr=0.1,0.3"])
    assert failure is None
    second, failure = app.sweep([*fast, "optim.lr=0.1"])
    assert failure is None
    a = str(first)
    assert re.fullmatch(r"outputs/multirun/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d(_\d+)?", a)
    assert a == "outputs/multirun/2026-11-26/10-00-00" and str(second) == f"{a}_2"
    assert second != first
    for folder, lrs in ((first, ["0.1", "0.3"]), (second, ["0.1"])):  # each keeps its own jobs
        for num, lr in enumerate(lrs):
            assert json.loads((folder / str(num) / "metrics.json").read_text())["status"] == (
                "completed"
            )
            assert f"optim.lr={lr}" in OmegaConf.load(folder / str(num) / ".hydra/overrides.yaml")
        assert not (folder / str(len(lrs))).exists()
    assert len(list((tmp_path / "outputs" / "multirun").glob("*/*"))) == 2  # no folder per job


def test_a_sweep_has_hydra_compose_a_job_once_and_each_job_gets_its_own_values(
    tmp_path, monkeypatch
):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    composed = []  # jobs Hydra composed: its sweeper checks each, then its launcher composes it
    original = ConfigLoaderImpl.load_sweep_config
    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", lambda self, master_config,
                        sweep_overrides: composed.append(sweep_overrides)
                        or original(self, master_config, sweep_overrides))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    fast = ["trainer.epochs=1", "dataset.num_train=50"]  # (false: Hydra's sweeper writes False)
    folder, failure = app.sweep([*fast, "optim.lr=0.1,0.3", "seed=1,2"])
    assert failure is None and len(composed) == 1  # the others: its config copied, values set
    for num, (lr, seed) in enumerate([(0.1, 1), (0.1, 2), (0.3, 1), (0.3, 2)]):
        cfg = OmegaConf.load(folder / str(num) / ".hydra/config.yaml")
        assert (cfg.optim.lr, cfg.seed) == (lr, seed)
        hydra_cfg = OmegaConf.load(folder / str(num) / ".hydra/hydra.yaml").hydra
        assert hydra_cfg.job.num == num
        assert hydra_cfg.overrides.task == [*fast, f"optim.lr={lr}", f"seed={seed}"]
        assert hydra_cfg.job.override_dirname == ",".join(sorted(hydra_cfg.overrides.task))


def save_overrides(run_dir: Path, overrides: list[str]) -> None:
    """The last.pt a job with these overrides writes (only the keys finished_job reads)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(checked(compose(overrides)), resolve=True)
    save_torch(run_dir / "last.pt", {"format": FORMAT, "overrides": overrides, "config": config})


def test_a_job_counts_as_finished_only_when_completed_with_the_same_overrides(tmp_path):
    job, done = ["optim.lr=0.1", "trainer.epochs=2"], {"status": "completed", "epochs": 2}

    def finished(overrides, epochs=2, run_dir=tmp_path):  # the job's config as far as it is read
        return sweep.finished_job(
            run_dir, overrides, OmegaConf.create({"trainer": {"epochs": epochs}})
        )

    assert finished(job) is None  # a fresh start
    (tmp_path / "metrics.json").write_text(json.dumps(done))
    assert finished(job) is None  # no checkpoint says which job
    save_overrides(tmp_path, job)
    assert finished(job) == finished(job[::-1]) == done  # retyped in another order
    assert finished([*job, f"resume={tmp_path}"]) == done  # resume= is not kept in a checkpoint
    assert finished(["optim.lr=0.3", "trainer.epochs=2"]) is None  # the grid changed
    assert finished([*job, "trainer.epochs=3"], 3) is None  # more epochs: it trains on
    # Resumed in its folder to train on: resume=JOB trainer.epochs=3 hydra.run.dir=JOB; Hydra's
    # grid writes trainer.progress=False, the resumed run's checkpoint false
    save_overrides(tmp_path, ["optim.lr=0.1", "trainer.epochs=3", "trainer.progress=false"])
    (tmp_path / "metrics.json").write_text(json.dumps(done | {"epochs": 3}))
    assert finished([*job, "trainer.progress=False"]) == done | {"epochs": 3}
    assert finished(job) == done | {"epochs": 3}  # the bar shown: the same job (config.ANEW)
    assert finished([*job, "trainer.progress=False"], "${trainer.epoch}") is None  # runs, fails
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "diverged"}))
    assert finished(job) is None
    folds = tmp_path / "kfold"  # a k-fold job: its first fold's checkpoint
    save_overrides(folds / "fold_0", job)
    (folds / "metrics.json").write_text(json.dumps(done))
    assert finished(job, run_dir=folds) == done
    assert finished(["optim.lr=0.3", "trainer.epochs=2"], run_dir=folds) is None


def test_run_job_skips_a_finished_job_and_drops_an_earlier_attempts_result(
    tmp_path, monkeypatch, capsys
):
    job_overrides, calls = ["optim.lr=0.1", "trainer.epochs=2"], []
    done_metrics = {"status": "completed", "best": {"metric": "val_loss", "value": 0.25}}

    def train(cfg, run_dir, overrides, ckpt=None, **kwargs):
        calls.append((run_dir / "metrics.json").exists())
        return done_metrics

    monkeypatch.setattr(kfold, "train", train)
    cfg = compose(job_overrides)
    run_dir = tmp_path / "0"
    save_overrides(run_dir, job_overrides)
    (run_dir / "metrics.json").write_text(json.dumps(done_metrics))
    assert sweep.run_job(cfg, run_dir, job_overrides, tmp_path, 0) == -0.25
    assert calls == [] and "job 0: already completed" in capsys.readouterr().out
    (run_dir / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    assert sweep.run_job(cfg, run_dir, job_overrides, tmp_path, 0) == -0.25
    assert calls == [False]  # an earlier attempt's result no longer counts

    other = ["optim.lr=0.3", "trainer.epochs=2"]  # another grid: its job 0 is another job
    (run_dir / "metrics.json").write_text(json.dumps(done_metrics))
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(other))  # as Hydra writes
    OmegaConf.save(compose(other), run_dir / ".hydra" / "config.yaml")
    assert sweep.run_job(compose(other), run_dir, other, tmp_path, 0) == -math.inf
    assert calls == [False]  # refused: its completed record stays (it was written 'failed')
    assert json.loads((run_dir / "metrics.json").read_text()) == done_metrics
    # and the table shows it beside the values it ran with, not beside the other config's
    assert yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) == job_overrides
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").optim.lr == 0.1  # and its config
    assert capsys.readouterr().err == (
        f"d2lrun: error: {run_dir} holds a checkpoint of another config (optim.lr=0.1 there, 0.3 "
        f"now). Fix: delete it, or another hydra.sweep.dir.\n"
    )


def test_score_is_higher_is_better_and_the_worst_for_failed_jobs():
    assert sweep.score({"status": "completed", "best": {"metric": "val_acc", "value": 0.8}}) == 0.8
    # No validation split (dataset.val_fraction=0): the training accuracy, also higher-is-better
    train_acc = {"status": "completed", "best": {"metric": "train_acc", "value": 0.9}}
    assert sweep.score(train_acc) == 0.9
    assert (
        sweep.score({"status": "completed", "best": {"metric": "val_loss", "value": 0.25}}) == -0.25
    )
    assert (
        sweep.score({"status": "diverged", "best": {"metric": "val_loss", "value": 0.25}})
        == -math.inf
    )
    assert sweep.score({"status": "failed", "reason": "bad"}) == -math.inf
    assert sweep.score(None) == -math.inf


def write_job(sweep_dir, num, overrides, metrics=None):
    d = sweep_dir / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics:
        (d / "metrics.json").write_text(json.dumps(metrics))


def done(value, epoch=2, seconds=1.5):
    return {
        "status": "completed",
        "final": {"epoch": 2, "val_loss": value},
        "wall_seconds": seconds,
        "best": {"epoch": epoch, "metric": "val_loss", "value": value},
    }


def test_report_of_an_interrupted_grid_lists_missing_and_unfinished_jobs(tmp_path, capsys):
    s = tmp_path / "sweep"
    s.mkdir()
    OmegaConf.save(
        {
            "hydra": {
                "sweeper": {
                    "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "params": None,
                },
                "overrides": {
                    "task": ["optim.lr=0.1,0.01", "optim.weight_decay=0,1e-3", "trainer.epochs=2"]
                },
            }
        },
        s / "multirun.yaml",
    )
    write_job(s, 0, ["optim.lr=0.1", "optim.weight_decay=0", "trainer.epochs=2"], done(0.5))
    write_job(
        s, 1, ["optim.lr=0.1", "optim.weight_decay=0.001", "trainer.epochs=2"], done(0.1, epoch=1)
    )
    write_job(
        s, 2, ["optim.lr=0.01", "optim.weight_decay=0", "trainer.epochs=2"]
    )  # killed while training
    failure = sweep.report(s)  # job 3 never started

    assert (
        failure
        == f"2 of 4 sweep jobs did not complete (1 unfinished, 1 missing); see {s / 'summary.csv'}"
        f"; to finish them, run the same command again with hydra.sweep.dir={s}"  # it said not how
    )
    rows = list(csv.DictReader(open(s / "summary.csv")))
    assert [(r["job"], r["optim.lr"], r["optim.weight_decay"], r["status"]) for r in rows] == [
        ("1", "0.1", "0.001", "completed"),
        ("0", "0.1", "0", "completed"),
        ("2", "0.01", "0", "unfinished"),
        ("3", "0.01", "0.001", "missing"),
    ]
    assert list(rows[0]) == [
        "job",
        "optim.lr",
        "optim.weight_decay",
        "status",
        "final_val_loss",
        "best_val_loss",
        "best_epoch",
        "seconds",
        "reason",
    ]
    assert (rows[0]["best_val_loss"], rows[0]["best_epoch"], rows[0]["seconds"]) == (
        "0.1",
        "1",
        "1.5",
    )
    assert (s / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "2 completed, 1 unfinished, 1 missing" in out and "missing" in out.splitlines()[-3]
    lock = hold(s / "2")  # as its job holds it while it trains: it was 'unfinished' too
    assert sweep.report(s, show=False) == (
        f"2 of 4 sweep jobs did not complete (1 running, 1 missing); see {s / 'summary.csv'}"
    )  # not how to finish them while one runs
    lock.close()


def test_heatmap_colours_each_jobs_cell_by_its_best_value_and_failures_grey(tmp_path, monkeypatch):
    """A 3 x 2 grid of val_loss: each job's best value in its (lr, weight decay) cell, the lowest
    brightest (viridis' yellow end), the highest darkest (its purple end), a diverged job's cell
    light grey with its status, whatever its best epoch before diverging reached."""
    s = tmp_path / "sweep"
    s.mkdir()
    grid = [(lr, wd) for lr in ("0.01", "0.1", "1") for wd in ("0", "0.001")]
    values = [0.4, 0.3, 0.1, 0.2, 0.05, 0.9]
    for num, ((lr, wd), value) in enumerate(zip(grid, values, strict=True)):
        result = done(value, epoch=1)
        if num == 4:  # diverged in epoch 2: its best epoch does not make it a result
            result |= {"status": "diverged", "reason": "the training loss became nan"}
        write_job(s, num, [f"optim.lr={lr}", f"optim.weight_decay={wd}"], result)
    figures = []
    monkeypatch.setattr(sweep, "png", lambda fig: figures.append(fig) or png(fig))
    sweep.report(s, show=False)

    (ax, _colorbar) = figures[0].axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.01", "0.1", "1"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "0.001"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("optim.lr", "optim.weight_decay")
    cells = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)  # rows: weight decay
    np.testing.assert_array_equal(cells, [[0.4, 0.1, np.nan], [0.3, 0.2, 0.9]])
    texts = {tuple(t.get_position()): t.get_text() for t in ax.texts}
    assert texts == {(0, 0): "0.4", (0, 1): "0.3", (1, 0): "0.1", (1, 1): "0.2", (2, 0): "diverged",
                     (2, 1): "0.9"}  # fmt: skip
    ink = {tuple(t.get_position()): t.get_color() for t in ax.texts}  # readable on its cell
    assert (ink[(2, 1)], ink[(1, 0)], ink[(2, 0)]) == ("white", "black", "dimgray")
    assert tuple(figures[0].get_size_inches()) == pytest.approx((5.8, 3.5))  # 3 x 2 cells
    assert ax.get_title() == "best_val_loss (sweep)"
    monkeypatch.chdir(s)  # d2lrun-report . in the sweep's folder: its name still
    sweep.report(Path("."), show=False)
    assert figures[-1].axes[0].get_title() == "best_val_loss (sweep)"

    image = imread(s / "heatmap.png")[:, :, :3]  # png() writes 100 dots per inch
    scale = 100 / figures[0].dpi

    def colour(x, y):  # a cell's colour, off its centre's text
        px, py = ax.transData.transform((x + 0.3, y + 0.3)) * scale
        return image[image.shape[0] - 1 - int(py), int(px)]

    tol = 1.5 / 255
    np.testing.assert_allclose(colour(1, 0), matplotlib.colormaps["viridis"](1.0)[:3], atol=tol)
    np.testing.assert_allclose(colour(2, 1), matplotlib.colormaps["viridis"](0.0)[:3], atol=tol)
    np.testing.assert_allclose(colour(2, 0), [211 / 255] * 3, atol=tol)  # lightgray
    brightness = [colour(x, y) @ [0.299, 0.587, 0.114] for x, y in ((1, 0), (1, 1), (0, 1), (0, 0))]
    assert all(a > b for a, b in pairwise(brightness))  # 0.1, 0.2, 0.3, 0.4: lower is brighter


def test_a_job_whose_hydra_files_are_being_written_is_in_the_table_as_planned(tmp_path):
    """Hydra writes a job's .hydra/ in place as it starts (on Slurm, while d2lrun-report runs):
    a half-written overrides.yaml ended the report with 'ScannerError (a bug in d2lrun?)'."""
    s = tmp_path / "sweep"
    s.mkdir()
    sweeper = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}
    OmegaConf.save({"hydra": {"sweeper": sweeper, "overrides": {"task": ["optim.lr=0.1,0.01"]}}},
                   s / "multirun.yaml")  # fmt: skip
    write_job(s, 0, ["optim.lr=0.1"], done(0.5))
    write_job(s, 1, [])
    (s / "1" / ".hydra" / "overrides.yaml").write_text("- 'optim.lr")  # cut off mid-write
    sweep.report(s, show=False)
    rows = list(csv.DictReader(open(s / "summary.csv")))
    assert [(r["job"], r["optim.lr"], r["status"]) for r in rows] == [
        ("0", "0.1", "completed"),
        ("1", "0.01", "unfinished"),
    ]


def test_report_names_the_problem_and_the_fix(tmp_path):
    with pytest.raises(
        UsageError, match="is not a folder. Fix: d2lrun-report outputs/multirun/DATE/TIME"
    ):
        sweep.report(tmp_path / "nope")
    with pytest.raises(
        UsageError, match="holds no sweep.*Fix: give a folder that `d2lrun -m` wrote"
    ):
        sweep.report(tmp_path)
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")  # a job's folder: its sweep's named
    (tmp_path / "0").mkdir()
    with pytest.raises(
        UsageError, match=f"Fix: give a folder that `d2lrun -m` wrote, its sweep's, {tmp_path}\\.$"
    ):
        sweep.report(tmp_path / "0")


def test_the_table_shows_its_cells_and_reasons_as_written_not_as_rich_markup(capsys):
    """dataset.drop=[alley] showed an empty cell; a reason's Fix lost d2lrun[tensorboard]'s part."""
    import pandas as pd

    reason = "logger=tensorboard needs ... Fix: pip install 'd2lrun[tensorboard]', or logger=none."
    table = pd.DataFrame([{"job": "0", "dataset.drop": "[alley]", "status": "failed",
                           "reason": reason}])  # fmt: skip
    sweep.print_table(Path("s[x]"), table, table["status"].value_counts(sort=False))
    out = capsys.readouterr().out
    assert out.startswith("sweep s[x]: 1 failed\n") and out.endswith(f"job 0 failed: {reason}\n")
    assert " [alley] │" in out


SLURM_COMMANDS = mock.patch("shutil.which", lambda command: f"/usr/bin/{command}")


def test_slurm_preset_is_the_plugins_launcher_with_its_keys_and_readmes_sbatch_lines():
    """The preset's defaults as sbatch gets them (README "Sweeps"), through the launcher's own
    mapping; tests/e2e/test_slurm.py submits to a real cluster."""
    from hydra.utils import get_class
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from submitit.slurm import slurm

    from hydra_plugins.d2lrun_launcher.slurm import executor

    cfg = compose_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    # By name: Hydra's plugin scan runs the plugin's module again, which makes its classes anew.
    bases = [f"{c.__module__}.{c.__qualname__}" for c in get_class(params.pop("_target_")).__mro__]
    assert SlurmQueueConf._target_ in bases
    assert set(params) == set(SlurmQueueConf.__dataclass_fields__) - {"_target_"}
    params["name"] = cfg.hydra.launcher.name  # ${hydra.job.name}
    params["submitit_folder"] = "/tmp/unused/%j"
    with mock.patch.object(slurm.SlurmExecutor, "affinity", return_value=1), SLURM_COMMANDS:
        ex = executor(params)  # Slurm's commands need not exist
    script = ex._executor._make_submission_file_text("python -m d2lrun", "uid")
    for line in (
        "--partition=gpu",
        "--gpus-per-node=1",
        "--time=60",
        "--cpus-per-task=4",
        "--mem=16GB",
        "--job-name=d2lrun",
    ):
        assert f"#SBATCH {line}\n" in script


def test_slurm_settings_that_cannot_work_are_refused_before_sbatch_in_one_line():
    """+hydra.launcher.KEY unknown to submitit was NameError 'a bug in d2lrun?' (exit 1); a limit
    within the warning's delay warned and requeued each job as it started, for ever."""
    from submitit.slurm import slurm

    from hydra_plugins.d2lrun_launcher.slurm import check_time_limit, executor

    with mock.patch.object(slurm.SlurmExecutor, "affinity", return_value=1), SLURM_COMMANDS:
        with pytest.raises(UsageError) as e:
            executor({"submitit_folder": "/tmp/unused/%j", "max_num_timeout": 3, "foo": 1})
    assert str(e.value).startswith("hydra.launcher.foo is not a setting of Slurm's")
    assert str(e.value).endswith(" go in +hydra.launcher.additional_parameters={foo:VALUE}.")
    with pytest.raises(Exception) as e:  # its Fix without +: 'Fix: drop ...', as for a typo
        compose(["hydra/launcher=slurm", "hydra.launcher.additional_parameters={comment:hi}"],
                with_hydra=True)  # fmt: skip
    assert str(explain(e.value)) == (
        "hydra.launcher.additional_parameters has no key comment yet; + adds one. "
        "Fix: +hydra.launcher.additional_parameters={comment:hi}."
    )
    compose(["hydra/launcher=slurm", "+hydra.launcher.additional_parameters={comment:hi}"],
            with_hydra=True)  # fmt: skip
    srun_only = mock.patch("shutil.which", lambda c: "/usr/bin/srun" if c == "srun" else None)
    with srun_only, pytest.raises(UsageError) as e:  # 'cannot write the output directory sbatch'
        executor({"submitit_folder": "/tmp/unused/%j", "max_num_timeout": 3})
    assert "this machine lacks sbatch, squeue, scancel. Fix: run it on a login node" in str(e.value)
    with pytest.raises(UsageError) as e:
        check_time_limit({"timeout_min": 2, "signal_delay_s": 120})
    assert str(e.value).endswith("as it starts. Fix: hydra.launcher.signal_delay_s=30.")
    # timeout_min=-1 looped on 'Fix: signal_delay_s=-15'; each task ran the job, unsaid
    for params, fix in [({"timeout_min": -1, "signal_delay_s": 120}, "timeout_min=60"),
                        ({"tasks_per_node": 3}, "tasks_per_node=1")]:  # fmt: skip
        with pytest.raises(UsageError) as e:
            check_time_limit(params)
        assert str(e.value).endswith(f"Fix: hydra.launcher.{fix}.")
    check_time_limit({"timeout_min": 2, "signal_delay_s": 30})  # warned 30-90 s in: said
    check_time_limit({"timeout_min": 1, "signal_delay_s": 0})  # short jobs end before it
    check_time_limit({"timeout_min": 1, "signal_delay_s": None})  # submitit's own delay


def test_a_slurm_controller_that_cannot_be_reached_is_said_so_with_its_fix():
    """Its Fix named cpus_per_task, mem_gb, ...: nothing the user had asked for wrong."""
    from submitit.core.utils import FailedJobError

    from hydra_plugins.d2lrun_launcher.slurm import submit

    class Down:  # sbatch's own words, with slurmctld stopped
        def map_array(self, fn, *args):
            raise FailedJobError(
                "sbatch: error: Batch job submission failed: Unable to contact slurm controller "
                "(connect failure)"
            )

    with pytest.raises(UsageError) as e:
        submit(Down(), print, [(1,), (2,)])
    assert str(e.value) == (
        "sbatch refused the sweep: Batch job submission failed: Unable to contact slurm "
        "controller (connect failure). Fix: check that Slurm's controller answers from this "
        "machine (scontrol ping), or drop hydra/launcher=slurm to run the sweep here."
    )


def test_a_slurm_job_out_of_requeues_is_in_the_table_as_its_record_says(tmp_path, caplog):
    """submitit's 'timed-out too many times', raised on the node after d2lrun had recorded the
    job interrupted, was raised again by Hydra's sweeper: no table, 'a bug in d2lrun?'."""
    from types import SimpleNamespace

    from hydra.core.utils import JobReturn, JobStatus
    from submitit.core.utils import UncompletedJobError

    from hydra_plugins.d2lrun_launcher.slurm import collect

    def refused(*args):
        raise ValueError

    loader = SimpleNamespace(load_sweep_config=refused)  # Hydra's default folder: SWEEP/NUM
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    launcher = SimpleNamespace(config=config, hydra_context=SimpleNamespace(config_loader=loader))
    error = UncompletedJobError("Job not requeued because: timed-out too many times.")
    failed = JobReturn(status=JobStatus.FAILED, _return_value=error)
    job = SimpleNamespace(job_id="7_0", results=lambda: [failed],
                          paths=SimpleNamespace(stderr=tmp_path / "7_0_0_log.err"))  # fmt: skip
    record = {"status": "interrupted", "reason": "stopped by SIGUSR2 after epoch 65"}
    (tmp_path / "0").mkdir()
    job.paths.stderr.write_text("...")
    (tmp_path / "0" / "metrics.json").write_text(json.dumps(record))
    returned = collect(launcher, job, 0, ["optim.lr=0.1"], None)
    assert returned.status == JobStatus.COMPLETED and returned.return_value == -math.inf
    assert json.loads((tmp_path / "0" / "metrics.json").read_text()) == record  # kept
    said = f"job 0: Job not requeued because: timed-out too many times. Its log: {tmp_path}/7_0_0"
    assert said in caplog.text


def test_optuna_preset_maximizes_over_log_lr_and_weight_decay():
    cfg = compose_hydra("hydra/sweeper=optuna_lr_wd").hydra.sweeper
    assert cfg._target_.endswith("OptunaSweeper") and cfg.direction == "maximize"
    assert cfg.params["optim.lr"].startswith("tag(log,") and "optim.weight_decay" in cfg.params
    assert cfg.sampler._target_ == "optuna.samplers.TPESampler" and cfg.sampler.seed == 0


def test_a_failed_job_is_recorded_with_its_reason_and_exit_code(tmp_path, monkeypatch, capsys):
    """A job's error ends as metrics.json {status, reason, exit_code} and one line; a bug's
    traceback goes to error.txt; the sweep goes on (score -inf)."""
    overrides = ["optim.lr=0.1"]

    def refused(cfg, run_dir, overrides, ckpt=None, **kwargs):
        raise UsageError("dataset.path=nowhere.csv does not exist. Fix: a CSV file.")

    monkeypatch.setattr(kfold, "train", refused)
    assert sweep.run_job(compose(overrides), tmp_path / "0", overrides, tmp_path, 0) == -math.inf
    assert json.loads((tmp_path / "0" / "metrics.json").read_text()) == {
        "status": "failed", "exit_code": 2,
        "reason": "dataset.path=nowhere.csv does not exist. Fix: a CSV file.",
    }  # fmt: skip
    assert capsys.readouterr().err == (
        "d2lrun: error: dataset.path=nowhere.csv does not exist. Fix: a CSV file.\n"
    )
    assert not (tmp_path / "0" / "error.txt").exists()

    def bug(cfg, run_dir, overrides, ckpt=None, **kwargs):
        return {}["missing"]

    monkeypatch.setattr(kfold, "train", bug)
    assert sweep.run_job(compose(overrides), tmp_path / "1", overrides, tmp_path, 1) == -math.inf
    failure = json.loads((tmp_path / "1" / "metrics.json").read_text())
    assert failure["status"] == "failed" and failure["exit_code"] == 1
    assert failure["reason"].endswith("(traceback in error.txt)")
    traceback = (tmp_path / "1" / "error.txt").read_text()
    assert traceback.startswith("Traceback") and "KeyError: 'missing'" in traceback


def test_a_stopped_job_goes_on_from_its_last_epoch_when_run_again(tmp_path):
    """The same sweep run again (or Slurm's requeue): the job continues its own last.pt."""
    overrides = ["device=cpu", "trainer.progress=false", "dataset.num_train=100",
                 "trainer.epochs=4"]  # fmt: skip
    run_dir, lines = tmp_path / "0", []

    def stop_after_epoch_2(line):
        lines.append(line)
        if line.startswith("epoch 2/4"):
            raise KeyboardInterrupt

    with pytest.raises(Exception, match="interrupted after epoch 2"):
        job.train_job(compose(overrides), run_dir, overrides, log=stop_after_epoch_2)
    cfg = compose(overrides)
    assert sweep.run_job(cfg, run_dir, overrides, tmp_path, 0) > -math.inf
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["restarts"] == 1
    assert summary["resumed_from"] == str(run_dir) == cfg.resume
    with open(run_dir / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]


def test_a_stopped_job_of_a_resume_sweep_goes_on_from_its_own_last_epoch(tmp_path, capsys):
    """d2lrun -m resume=BASE ... stopped at epoch 3 of 4, run again: each job started over from
    BASE's epoch 1 ('resuming BASE from epoch 1'), its own epochs 2 and 3 trained twice."""
    from d2lrun.reload import resume_checkpoint

    common = ["device=cpu", "trainer.progress=false", "dataset.num_train=100"]
    base = tmp_path / "base"
    job.train_job(compose([*common, "trainer.epochs=1"]), base, common, log=lambda _: None)
    overrides, run_dir = [*common, f"resume={base}", "trainer.epochs=4"], tmp_path / "0"

    def stop_after_epoch_3(line):
        if line.startswith("epoch 3/4"):
            raise KeyboardInterrupt

    with pytest.raises(Exception, match="interrupted after epoch 3"):
        job.train_job(compose(overrides), run_dir, overrides, resume_checkpoint(base),
                      log=stop_after_epoch_3)  # fmt: skip
    capsys.readouterr()
    sweep.run_job(compose(overrides), run_dir, overrides, tmp_path, 0, resume_checkpoint(base))
    out = capsys.readouterr().out
    assert f"resuming {run_dir} from epoch 3" in out and "epoch 3/4" not in out
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["restarts"] == 2  # base's, then its own
    with open(run_dir / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]


@pytest.mark.parametrize("every", [2, 100], ids=["last.pt earlier", "best.pt alone"])
def test_a_job_killed_between_checkpoints_goes_on_from_its_later_best_pt_when_run_again(
    tmp_path, capsys, every
):
    """Killed (kill -9, OOM) after epoch 3 with trainer.checkpoint_every: run again, the job went on
    from last.pt's epoch 2, or trained anew without one, though best.pt held epoch 3."""

    class Killed(BaseException):  # the process ends where it is, writing nothing more
        pass

    overrides = ["device=cpu", "trainer.progress=false", "dataset.num_train=100",
                 "trainer.epochs=4", f"trainer.checkpoint_every={every}"]  # fmt: skip
    run_dir = tmp_path / "0"

    def killed_after_epoch_3(line):
        if line.startswith("epoch 3/4"):
            raise Killed

    with pytest.raises(Killed):
        job.train_job(compose(overrides), run_dir, overrides, log=killed_after_epoch_3)
    assert torch.load(run_dir / "best.pt", weights_only=True)["epoch"] == 3  # every epoch improved
    capsys.readouterr()
    assert sweep.run_job(compose(overrides), run_dir, overrides, tmp_path, 0) > -math.inf
    assert f"resuming {run_dir} from epoch 3" in capsys.readouterr().out
    assert json.loads((run_dir / "metrics.json").read_text())["restarts"] == 1


def test_resume_refuses_to_change_what_the_weights_mean_in_one_line():
    from d2lrun.reload import check_same_meaning, first_difference

    saved = OmegaConf.to_container(compose(["model=mlp", "dataset=fashion_mnist"]), resolve=True)
    moved = compose(["model=mlp", "dataset=fashion_mnist", "dataset.root=elsewhere"])
    check_same_meaning(saved, moved, "resume=RUN")  # where the data is may change
    with pytest.raises(UsageError) as e:
        check_same_meaning(saved, compose(["model=softmax", "dataset=fashion_mnist"]), "resume=R")
    assert str(e.value) == (
        "resume=R cannot change model.name (the run has model.name=mlp, asked "
        "model.name=softmax). Fix: drop model=softmax, or start a new run."
    )
    wider = compose(["model=mlp", "model.num_hiddens=512", "dataset=fashion_mnist"])
    with pytest.raises(UsageError) as e:
        check_same_meaning(saved, wider, "d2lrun-eval")
    assert str(e.value) == (
        "d2lrun-eval cannot change model.num_hiddens (the run has model.num_hiddens=[256], asked "
        "model.num_hiddens=512). Fix: model.num_hiddens=[256] (the run's), or start a new run."
    )
    dropout = compose(["model=mlp", "dataset=fashion_mnist", "regularizer=dropout"])
    with pytest.raises(UsageError) as e:  # it said "drop model.dropout=...", which was not typed
        check_same_meaning(saved, dropout, "resume=R")
    assert str(e.value).endswith("Fix: model.dropout=0.0 (the run's), or start a new run.")
    with pytest.raises(
        UsageError, match=r"cannot change seed \(the run has seed=0, asked seed=1\)"
    ):
        check_same_meaning(saved, compose(["model=mlp", "dataset=fashion_mnist", "seed=1"]), "x")
    # Values as they are typed on the command line, not as Python prints them.
    was = {"folds": None, "standardize": True, "w": [2.0, -3.4]}
    now = {"folds": 3, "standardize": False, "w": [2.0, -3.4]}
    assert first_difference(was, now, "dataset") == ("dataset.folds", "null", "3")
    assert first_difference(was | {"folds": 3}, now, "d") == ("d.standardize", "true", "false")


def test_the_printed_table_has_the_best_job_first_in_bold_and_failures_in_red(
    tmp_path, capsys, monkeypatch
):
    """What `d2lrun -m` prints at the end, line for line: counts, the table (4 significant digits,
    empty cells where a job has no value), the best row bold, a failure red with its reason."""
    import rich.console

    s = tmp_path / "sweep"
    s.mkdir()

    def acc(final, best, epoch, seconds):
        return {"status": "completed", "final": {"epoch": 3, "val_acc": final},
                "wall_seconds": seconds, "best": {"epoch": epoch, "metric": "val_acc",
                "value": best}}  # fmt: skip

    write_job(s, 0, ["optim.lr=0.01", "model=softmax"], acc(0.7123456, 0.7123456, 3, 12.3456))
    write_job(s, 1, ["optim.lr=0.1", "model=softmax"], acc(0.8012345, 0.8123456, 2, 11.0))
    reason = "the training loss became nan at epoch 1, batch 3. Fix: lower optim.lr (now 10)."
    write_job(s, 2, ["optim.lr=10", "model=softmax"],
              {"status": "diverged", "reason": reason, "wall_seconds": 0.5})  # fmt: skip
    assert (
        sweep.report(s) == f"1 of 3 sweep jobs did not complete (1 diverged); see {s}/summary.csv"
    )
    assert capsys.readouterr().out.splitlines() == [
        f"sweep {s}: 2 completed, 1 diverged",
        "┏━━━━━┳━━━━━━━━━━┳━━━━━━━━━━━┳━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━┳━━━━━━━━━━━━┳━━━━━━━━━┓",
        "┃ job ┃ optim.lr ┃ status    ┃ final_val_acc ┃ best_val_acc ┃ best_epoch ┃ seconds ┃",
        "┡━━━━━╇━━━━━━━━━━╇━━━━━━━━━━━╇━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━━┩",
        "│   1 │      0.1 │ completed │        0.8012 │       0.8123 │          2 │      11 │",
        "│   0 │     0.01 │ completed │        0.7123 │       0.7123 │          3 │   12.35 │",
        "│   2 │       10 │ diverged  │               │              │            │     0.5 │",
        "└─────┴──────────┴───────────┴───────────────┴──────────────┴────────────┴─────────┘",
        f"job 2 diverged: {reason}",
        f"wrote {s}/summary.csv",  # one swept key: no heatmap
    ]

    class Terminal(rich.console.Console):  # a terminal with colours, as a user sees it
        def __init__(self, **kw):
            super().__init__(**kw | {"force_terminal": True, "color_system": "standard",
                                     "width": 200})  # fmt: skip

    monkeypatch.setattr(rich.console, "Console", Terminal)
    sweep.report(s)
    lines = capsys.readouterr().out.splitlines()
    plain = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines]
    best, second, failed, why = (lines[plain.index(x)] for x in (
        "│   1 │      0.1 │ completed │        0.8012 │       0.8123 │          2 │      11 │",
        "│   0 │     0.01 │ completed │        0.7123 │       0.7123 │          3 │   12.35 │",
        "│   2 │       10 │ diverged  │               │              │            │     0.5 │",
        f"job 2 diverged: {reason}"))  # fmt: skip
    bold, red = "\x1b[1m", "\x1b[31m"
    assert bold in best and red not in best
    assert bold not in second and red not in second
    assert red in failed and red in why


def test_jobs_judged_by_other_metrics_are_each_ranked_among_their_own(tmp_path, capsys):
    """d2lrun -m dataset.val_fraction=0,0.2 ranked a train_acc of 0.9 above a val_acc of 0.85 in
    one list, its first row bold as the sweep's best, with nothing said."""
    s = tmp_path / "sweep"
    s.mkdir()

    def acc(metric, value):
        return {"status": "completed", "final": {"epoch": 1, metric: value}, "wall_seconds": 1,
                "best": {"epoch": 1, "metric": metric, "value": value}}  # fmt: skip

    write_job(s, 0, ["dataset.val_fraction=0.2", "optim.lr=0.1"], acc("val_acc", 0.85))
    write_job(s, 1, ["dataset.val_fraction=0", "optim.lr=0.1"], acc("train_acc", 0.9))
    write_job(s, 2, ["dataset.val_fraction=0.2", "optim.lr=1"], acc("val_acc", 0.8))
    write_job(s, 3, ["dataset.val_fraction=0", "optim.lr=1"], acc("train_acc", 0.95))
    table, _ = sweep.collect(s)
    assert list(table["job"]) == ["3", "1", "0", "2"]  # train_acc's best first, then val_acc's
    assert sweep.report(s) is None
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == (
        "note: these jobs are judged by 2 metrics (train_acc, val_acc); each is ranked among "
        "those of its own"
    )
    assert not (s / "heatmap.png").exists()  # one colour scale for two metrics: none drawn


def test_a_search_sweeps_heatmap_is_a_dot_per_trial_on_log_axes_failures_as_red_crosses(
    tmp_path, monkeypatch
):
    """Trials that do not fill a grid (Optuna's): one dot per trial coloured by its best value on a
    log colour scale when the values span more than a decade, log axes where the values do."""
    from matplotlib.colors import LogNorm

    s = tmp_path / "sweep"
    s.mkdir()
    trials = [("0.001", "1e-05", 0.5), ("0.01", "0.001", 0.04), ("0.1", "0.0001", 0.2)]
    for num, (lr, wd, value) in enumerate(trials):
        write_job(s, num, [f"optim.lr={lr}", f"optim.weight_decay={wd}"], done(value))
    write_job(s, 3, ["optim.lr=1", "optim.weight_decay=0.01"],
              {"status": "diverged", "reason": "nan", "wall_seconds": 0.1})  # fmt: skip
    figures = []
    monkeypatch.setattr(sweep, "png", lambda fig: figures.append(fig) or png(fig))
    sweep.report(s, show=False)

    ax, colorbar = figures[0].axes
    dots, crosses = ax.collections
    got = sorted(zip(map(tuple, dots.get_offsets().tolist()), dots.get_array(), strict=True))
    assert got == [((0.001, 1e-05), 0.5), ((0.01, 0.001), 0.04), ((0.1, 0.0001), 0.2)]
    assert isinstance(dots.norm, LogNorm)  # 0.04 .. 0.5: more than a decade
    assert crosses.get_offsets().tolist() == [[1.0, 0.01]]
    assert matplotlib.colors.to_hex(crosses.get_facecolor()[0]) == "#ff0000"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["diverged"]  # its status
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("optim.lr", "optim.weight_decay")
    assert ax.get_title() == "best_val_loss (sweep)" and colorbar.get_ylabel() == "best_val_loss"


@pytest.mark.parametrize("folds", [[], ["dataset.folds=3", "dataset.num_train=200"]])
def test_a_sweep_whose_every_job_diverged_keeps_its_metric_columns(tmp_path, folds):
    """d2lrun -m optim.lr=50,100: summary.csv had no final_val_loss or best_val_loss column, which
    a script reading several sweeps' tables then failed on (KeyError); a k-fold sweep's too."""
    s = tmp_path / "sweep"
    args = ["optim.lr=500,1000", "trainer.progress=false", f"hydra.sweep.dir={s}", *folds]
    _, failure = app.sweep(args)
    assert failure.startswith("2 of 2 sweep jobs did not complete (2 diverged)")
    with open(s / "summary.csv") as f:
        header = next(csv.reader(f))
    assert header == ["job", "optim.lr", "status", "final_val_loss", "best_val_loss", "best_epoch",
                      "seconds", "reason"]  # fmt: skip


def test_a_jobs_metrics_json_that_is_no_object_is_a_job_without_a_record(tmp_path):
    """A hand-edited metrics.json holding [1, 2]: d2lrun-report failed with "AttributeError ...
    (a bug in d2lrun?)"."""
    s = tmp_path / "sweep"
    s.mkdir()
    write_job(s, 0, ["optim.lr=0.1"], done(0.2))
    write_job(s, 1, ["optim.lr=1"], [1, 2])
    assert sweep.report(s, show=False) == (
        f"1 of 2 sweep jobs did not complete (1 unfinished); see {s / 'summary.csv'}"
        f"; to finish them, run the same command again with hydra.sweep.dir={s}"
    )


def test_a_search_over_under_two_decades_labels_its_log_axis_without_overlap(tmp_path, monkeypatch):
    """Optuna's lr from 0.0187 to 0.778: matplotlib labelled every minor tick, 2×10⁻²3×10⁻²4×10⁻²
    ... run together into one smear under the axis."""
    s = tmp_path / "sweep"
    s.mkdir()
    trials = [("0.0187", "1e-05"), ("0.05", "0.001"), ("0.3", "0.0001"), ("0.778", "0.003")]
    for num, (lr, wd) in enumerate(trials):
        write_job(s, num, [f"optim.lr={lr}", f"optim.weight_decay={wd}"], done(0.1 * (num + 1)))
    figures = []
    monkeypatch.setattr(sweep, "png", lambda fig: figures.append(fig) or png(fig))
    sweep.report(s, show=False)

    ax = figures[0].axes[0]
    figures[0].canvas.draw()  # the labels are made as the figure is drawn

    def labels(axis, limits):  # the labels shown, in order
        ticks = (*axis.get_majorticklabels(), *axis.get_minorticklabels())
        shown = [t.get_text() for t in ticks if t.get_text() and t.get_visible()]
        return sorted((t for t in shown if limits[0] <= float(t) <= limits[1]), key=float)

    assert labels(ax.xaxis, ax.get_xlim()) == ["0.02", "0.1", "0.2"]  # 1, 2 or 5 x a power of 10
    assert labels(ax.yaxis, ax.get_ylim()) == ["1e-5", "1e-4", "1e-3"]


def test_the_counts_line_follows_the_table_and_a_sweep_without_a_completed_job_says_so(
    tmp_path, capsys
):
    s = tmp_path / "sweep"
    s.mkdir()
    grid = [(lr, wd) for lr in ("0.1", "1") for wd in ("0", "0.001")]
    endings = [done(0.2), {"status": "failed"}, {"status": "diverged"}, {"status": "diverged"}]
    for num, ((lr, wd), ending) in enumerate(zip(grid, endings, strict=True)):
        write_job(s, num, [f"optim.lr={lr}", f"optim.weight_decay={wd}"], ending)
    assert sweep.report(s).startswith("3 of 4 sweep jobs did not complete (1 failed, 2 diverged)")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"sweep {s}: 1 completed, 1 failed, 2 diverged"  # the table's order
    assert out[-1] == f"wrote {s}/summary.csv, {s}/heatmap.png"  # two swept numbers: a heatmap

    none = tmp_path / "none"
    none.mkdir()
    for num in range(2):
        write_job(none, num, [f"optim.lr={num + 1}"], {"status": "diverged"})
    assert sweep.report(none, show=False) == (
        f"2 of 2 sweep jobs did not complete (2 diverged); see {none}/summary.csv"
    )


def test_a_search_sweep_stopped_early_lists_the_trials_it_did_not_run(tmp_path):
    """Optuna's n_trials: the trials that never started are rows of their own, 'missing'."""
    s = tmp_path / "sweep"
    s.mkdir()
    OmegaConf.save({"hydra": {
        "sweeper": {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
                    "n_trials": 4, "params": {"optim.lr": "tag(log, interval(0.001, 1))"}},
        "overrides": {"task": ["trainer.epochs=2"]}}}, s / "multirun.yaml")  # fmt: skip
    write_job(s, 0, ["optim.lr=0.01", "trainer.epochs=2"], done(0.3))
    write_job(s, 1, ["optim.lr=0.2", "trainer.epochs=2"], done(0.1))
    assert sweep.report(s, show=False) == (
        f"2 of 4 sweep jobs did not complete (2 missing); see {s}/summary.csv"
        f"; to finish them, run the same command again with hydra.sweep.dir={s}"
    )
    rows = list(csv.DictReader(open(s / "summary.csv")))
    assert [(r["job"], r["optim.lr"], r["status"]) for r in rows] == [
        ("1", "0.2", "completed"), ("0", "0.01", "completed"), ("2", "", "missing"),
        ("3", "", "missing")]  # fmt: skip


def test_a_job_stopped_by_a_signal_ends_the_sweep_with_its_exit_code_and_how_to_finish(tmp_path):
    import signal

    from d2lrun.errors import Interrupted

    saved = "interrupted by SIGTERM after epoch 2; the last complete epoch is saved."
    stop = Interrupted(f"{saved} Resume with: d2lrun resume={tmp_path}/sweep/3", signal.SIGTERM)
    with pytest.raises(Interrupted) as e:
        sweep.job_failed(stop, tmp_path / "sweep" / "3", tmp_path / "sweep", "job 3: ")
    assert e.value.exit_code == 143  # 128 + SIGTERM, as the job's own exit would be
    assert str(e.value) == (  # the sweep's way on, not the run's; which job, as its lines say
        f"job 3: {saved} To finish the sweep, run the same command again with "
        f"hydra.sweep.dir={tmp_path / 'sweep'}"
    )
    assert not (tmp_path / "sweep").exists()  # nothing recorded as failed: the job goes on later


def test_an_override_value_holding_an_equals_sign_stays_whole_in_the_table(tmp_path):
    s = tmp_path / "sweep"
    s.mkdir()
    for num, path in enumerate(["/data/a=1.csv", "/data/a=2.csv"]):
        write_job(s, num, [f"dataset.path={path}"], done(0.1 * (num + 1)))
    sweep.report(s, show=False)
    rows = list(csv.DictReader(open(s / "summary.csv")))
    assert [(r["job"], r["dataset.path"]) for r in rows] == [("0", "/data/a=1.csv"),
                                                             ("1", "/data/a=2.csv")]  # fmt: skip


def test_a_value_hydra_escaped_in_its_records_shows_as_typed(tmp_path):
    """`optim.weight_decay='${optim.lr}',0`: Hydra records `$\\{optim.lr\\}`; the table shows
    what the user typed."""
    s = tmp_path / "sweep"
    s.mkdir()
    # and a quoted value, nan (they showed as '"my data.csv"' and an empty cell)
    typed = [r"$\{optim.lr\}", r"a\,b", "0", '"my data.csv"', "'a b'", "nan"]
    for num, value in enumerate(typed):
        write_job(s, num, [f"optim.weight_decay={value}"], done(0.1 * (num + 1)))
    sweep.report(s, show=False)
    rows = list(csv.DictReader(open(s / "summary.csv")))
    assert [r["optim.weight_decay"] for r in rows] == [
        "${optim.lr}", "a,b", "0", "my data.csv", "a b", "nan"]  # fmt: skip


def test_a_key_given_twice_is_planned_once_with_its_last_value_as_hydra_runs_it(tmp_path):
    """hydra.sweeper.params sweeps optim.lr and the command line sets it again: Hydra's basic
    sweeper runs one job (the last value wins), so the table plans one, not a phantom second."""
    s = tmp_path / "sweep"
    s.mkdir()
    sweeper = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
               "params": {"optim.lr": "0.1,0.01"}}  # fmt: skip
    task = ["optim.lr=0.3", "seed=1,2", "seed=3"]
    OmegaConf.save(
        {"hydra": {"sweeper": sweeper, "overrides": {"task": task}}}, s / "multirun.yaml"
    )
    write_job(s, 0, ["optim.lr=0.3", "seed=3"], done(0.5))
    assert sweep.report(s, show=False) is None  # nothing missing
    rows = list(csv.DictReader(open(s / "summary.csv")))
    assert [(r["job"], r["optim.lr"], r["status"]) for r in rows] == [("0", "0.3", "completed")]


def test_what_hydras_sweepers_fail_on_is_one_line_before_any_folder(tmp_path):
    from importlib.metadata import version

    s = tmp_path / "sweep"
    with pytest.raises(UsageError) as e:
        app.sweep(["optim.lr=interval(0,1)", f"hydra.sweep.dir={s}"])
    assert str(e.value) == (
        "optim.lr=interval(0,1) is a range to search, which Hydra's basic sweeper cannot list as "
        "a grid. Fix: list values (optim.lr=0,0.333,0.667,1), or search it with "
        "hydra/sweeper=optuna_lr_wd."
    )
    with pytest.raises(UsageError) as e:
        app.sweep(
            ["hydra/sweeper=optuna_lr_wd", "hydra.sweeper.n_trials=0", f"hydra.sweep.dir={s}"]
        )
    assert str(e.value) == (
        "hydra.sweeper.n_trials=0 is out of range: it must be at least 1. "
        "Fix: hydra.sweeper.n_trials=20."
    )
    # Optuna's ZeroDivisionError, ValueError and InstantiationException: 'a bug in d2lrun?'
    for key, line in (
        ("n_jobs=0", "hydra.sweeper.n_jobs=0 is out of range: it must be at least 1. "
                     "Fix: hydra.sweeper.n_jobs=1."),
        ("max_failure_rate=2", "hydra.sweeper.max_failure_rate=2.0 is out of range: it must be "
                               "from 0 to 1. Fix: hydra.sweeper.max_failure_rate=1.0."),
        ("sampler.seed=-1", "hydra.sweeper.sampler.seed=-1 is out of range: it must be at least 0. "
                            "Fix: hydra.sweeper.sampler.seed=0."),
        ("direction=minimize", "hydra.sweeper.direction=minimize: a job's score is higher for "
                               "better settings (accuracy, or minus the loss). Fix: "
                               "hydra.sweeper.direction=maximize."),
        ("storage=sqlite:///o.db",  # an AssertionError, 'a bug in d2lrun?', o.db left behind
         f"hydra.sweeper.storage=sqlite:///o.db: Optuna {version('optuna')} cannot keep a study "
         f"in a database with SQLAlchemy {version('sqlalchemy')}. Fix: drop it; the sweep's "
         f"folder keeps every trial, and the same command finishes a stopped sweep."),
    ):  # fmt: skip
        with pytest.raises(UsageError) as e:
            app.sweep(["hydra/sweeper=optuna_lr_wd", f"hydra.sweeper.{key}",
                       f"hydra.sweep.dir={s}"])  # fmt: skip
        assert str(e.value) == line
    assert not s.exists()
    # The plugin's own option: 'hydra.sweeper.direction=Direction.minimize ... Fix: maximize',
    # after which its 20 trials trained one config; with a range, the direction in YAML's words
    for args, start in ((["hydra/sweeper=optuna"], "the Optuna sweeper has nothing to search: "),
                        (["hydra/sweeper=optuna", "optim.lr=interval(0.01,0.1)"],
                         "hydra.sweeper.direction=minimize: ")):  # fmt: skip
        with pytest.raises(UsageError, match=f"^{re.escape(start)}"):
            app.sweep([*args, f"hydra.sweep.dir={s}"])


def stopped_at(stopped: int | None, error: BaseException | None):
    """A sweep's run_job whose jobs complete at once, but job `stopped`, which raises error."""

    def run_job(cfg, run_dir, overrides, sweep_dir, num, ckpt):
        if num == stopped:
            raise error
        (run_dir / "metrics.json").write_text(json.dumps({"status": "completed"}))
        return 0.0

    return run_job


def test_ctrl_c_between_jobs_says_how_to_finish_the_sweep(tmp_path, monkeypatch):
    """Not 'nothing was saved': job 0 completed before Ctrl-C came, outside any job's training."""
    from d2lrun.errors import Interrupted

    monkeypatch.setattr(sweep, "run_job", stopped_at(1, KeyboardInterrupt()))
    s = tmp_path / "sweep"
    with pytest.raises(Interrupted) as e:
        app.sweep(["optim.lr=0.1,0.3", f"hydra.sweep.dir={s}"])
    assert e.value.exit_code == 130 and str(e.value) == (
        f"interrupted. To finish the sweep, run the same command again with hydra.sweep.dir={s}"
    )
    assert (s / "multirun.yaml").exists() and (s / "0").is_dir()


def test_a_signal_inside_omegaconfs_code_between_jobs_is_an_interruption(tmp_path, monkeypatch):
    """SIGTERM while Hydra composed job 1 (OmegaConf's flag_override): its finally failed on the
    half-set node, so the sweep ended on ConfigCompositionException, explained with a TypeError's
    traceback and exit 1, not 143 and the line that finishes the sweep (2 tries in 25 here)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.errors import ConfigCompositionException

    from d2lrun.stopping import Stop

    calls, apply = [], ConfigLoaderImpl._apply_overrides_to_config

    def apply_overrides(overrides, cfg):  # a job's values set on its config
        calls.extend(o for o in overrides if o.input_line == "optim.lr=0.3")
        if len(calls) == 3:  # job 1 checked by d2lrun, by Hydra's sweeper, then launched
            try:
                raise Stop(signal.SIGTERM)
            except Stop:
                try:
                    None._invalidate_flags_cache()
                except AttributeError as e:
                    raise ConfigCompositionException("Error merging override") from e
        return apply(overrides, cfg)

    monkeypatch.setattr(ConfigLoaderImpl, "_apply_overrides_to_config", apply_overrides)
    monkeypatch.setattr(sweep, "run_job", stopped_at(None, None))  # job 0, before the signal
    s = tmp_path / "sweep"
    with pytest.raises(Interrupted) as e:
        app.sweep(["optim.lr=0.1,0.3", f"hydra.sweep.dir={s}"])
    assert e.value.exit_code == 143 and str(e.value).startswith("interrupted by SIGTERM. To finish")


def test_a_stop_as_hydra_made_a_jobs_folder_leaves_it_missing_not_unfinished(tmp_path, monkeypatch):
    """joblib kills its workers as a stop ends the sweep: one that had just been handed a queued
    job left Hydra's .hydra/ of it, and the table called the job unfinished (seen in one CI run)."""
    # stopped after Hydra made job 1's folder, before its task began
    monkeypatch.setattr(
        sweep, "run_job", stopped_at(1, Interrupted("interrupted.", signal.SIGTERM))
    )
    s = tmp_path / "sweep"
    with pytest.raises(Interrupted) as e:
        app.sweep(["optim.lr=0.1,0.3,1", f"hydra.sweep.dir={s}"])
    assert e.value.exit_code == 143
    assert sorted(p.name for p in s.iterdir() if p.is_dir()) == ["0"]  # 1 started nothing
    assert list(sweep.collect(s)[0].set_index("job")["status"][["0", "1", "2"]]) == [
        "completed", "missing", "missing"]  # fmt: skip


def test_jobs_without_hydras_folder_are_matched_to_the_grid_by_number(tmp_path):
    """hydra.output_subdir=null: no job has .hydra/overrides.yaml; each is its grid job still."""
    s = tmp_path / "sweep"
    s.mkdir()
    sweeper = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}
    OmegaConf.save(
        {"hydra": {"sweeper": sweeper, "overrides": {"task": ["optim.lr=0.1,0.2"]}}},
        s / "multirun.yaml",
    )
    for num in (0, 1):
        (s / str(num)).mkdir()
        (s / str(num) / "metrics.json").write_text(json.dumps(done(0.1 * (num + 1))))
    assert sweep.report(s, show=False) is None  # nothing missing
    rows = list(csv.DictReader(open(s / "summary.csv")))
    assert [(r["job"], r["optim.lr"], r["status"]) for r in rows] == [
        ("0", "0.1", "completed"), ("1", "0.2", "completed")]  # fmt: skip


def test_a_sweep_without_hydra_folders_is_not_finished_with_other_values(tmp_path):
    """hydra.output_subdir=null: its jobs have no .hydra/, and another sweep is refused still."""
    s = tmp_path / "sweep"
    common = ["trainer.epochs=1", "trainer.progress=false", "hydra.output_subdir=null",
              f"hydra.sweep.dir={s}"]  # fmt: skip
    app.sweep(["optim.lr=0.01,0.02", *common])
    with pytest.raises(
        UsageError,
        match=r"holds another sweep \(optim.lr=0.01,0.02 there, "
        r"0.5,0.6 now\)\. Fix: the same overrides \(hydra.output_",
    ):
        app.sweep(["optim.lr=0.5,0.6", *common])
    rows = list(csv.DictReader(open(s / "summary.csv")))
    assert sorted(r["optim.lr"] for r in rows) == ["0.01", "0.02"]


def test_a_sweep_run_again_with_its_swept_keys_in_another_order_is_refused(tmp_path):
    """Hydra numbers the jobs in the order of the swept keys: jobs 1 and 2 were refused ("holds a
    checkpoint of another config"), their old results shown under the new values, and it exited 0
    with "4 completed". Other keys may come in any order."""
    s = tmp_path / "sweep"
    common = ["trainer.epochs=1", "trainer.progress=false", f"hydra.sweep.dir={s}"]
    app.sweep(["optim.lr=0.01,0.1", "optim.weight_decay=0,1", *common])
    before = {p: p.read_bytes() for p in s.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(UsageError) as e:
        app.sweep(["optim.weight_decay=0,1", "optim.lr=0.01,0.1", *common])
    assert str(e.value) == (
        f"hydra.sweep.dir={s} holds this sweep with its swept keys in another order "
        f"(optim.lr=0.01,0.1 optim.weight_decay=0,1), which numbers its jobs 0/, 1/, ... Fix: give "
        f"them in that order, or another hydra.sweep.dir."
    )
    assert {p: p.read_bytes() for p in s.rglob("*") if p.is_file() and p.name != ".lock"} == before
    app.sweep(["optim.lr=0.01,0.1", "optim.weight_decay=0,1", *reversed(common)])  # all skipped


def test_a_sweep_is_finished_with_its_values_written_otherwise_and_where_it_runs_anew(
    tmp_path, capsys
):
    """optim.weight_decay=0.0,0.001 for 0,1e-3 was 'holds another sweep', and so was device=,
    trainer.progress= or dataset.root= (the Kaggle files' Fix) given to finish it, as resume= takes
    them. Its completed jobs stay as they were; the one left trains."""
    s = tmp_path / "sweep"
    app.sweep(["optim.lr=0.01,0.1", "optim.weight_decay=0,1e-3", "trainer.epochs=1",
               "trainer.progress=false", f"hydra.sweep.dir={s}"])  # fmt: skip
    (s / "3" / "metrics.json").unlink()  # stopped in its first epoch, say
    done = {n: (s / n / "metrics.json").read_bytes() for n in "012"}
    capsys.readouterr()
    app.sweep(["optim.lr=0.010,0.1", "optim.weight_decay=0.0,0.001", "trainer.epochs=1",
               "device=cpu", f"hydra.sweep.dir={s}"])  # fmt: skip
    assert capsys.readouterr().out.count(": already completed in") == 3
    assert {n: (s / n / "metrics.json").read_bytes() for n in "012"} == done
    assert json.loads((s / "3" / "metrics.json").read_text())["status"] == "completed"
    with pytest.raises(
        UsageError,
        match=r"another sweep \(optim.weight_decay=0.0,0.001 there, "
        r"0,1e-2 now\)\. Fix: the same overrides \(optim.lr=0.010",
    ):
        app.sweep(["optim.lr=0.01,0.1", "optim.weight_decay=0,1e-2", "trainer.epochs=1",
                   f"hydra.sweep.dir={s}"])  # fmt: skip


def test_a_sweep_folder_that_names_none_or_cannot_be_made_is_one_line(tmp_path):
    """hydra.sweep.dir= was "ValueError ... (a bug in d2lrun?)"; a file's path said "File exists.
    Fix: free disk space or choose a writable folder (hydra.run.dir=DIR)"."""
    with pytest.raises(UsageError) as e:
        app.sweep(["optim.lr=0.1,0.2", "hydra.sweep.dir="])
    assert str(e.value) == (
        "hydra.sweep.dir= names no folder. Fix: hydra.sweep.dir=outputs/multirun/NAME."
    )
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFailed) as e:
        app.sweep(["optim.lr=0.1,0.2", f"hydra.sweep.dir={tmp_path / 'file'}"])
    assert str(e.value).startswith(f"cannot write the output directory {tmp_path / 'file'} (")
    assert "(hydra.sweep.dir=DIR with -m)" in str(e.value)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("when", ["the table is drawn", "the last job ends"])
def test_a_signal_as_the_sweep_ends_says_every_job_completed(tmp_path, monkeypatch, signum, when):
    """It said "interrupted before training started; nothing was saved." (Ctrl-C), or nothing
    (SIGTERM), or the last job's 'interrupted as the run ended (completed); ...', each then 'To
    finish the sweep', with every job saved and nothing left to finish. The table is written
    all the same."""
    from d2lrun.stopping import Stop

    report, run_job = sweep.report, sweep.run_job

    def drawn(sweep_dir, show=True):  # as the table is drawn; once
        monkeypatch.setattr(sweep, "report", report)
        raise KeyboardInterrupt if signum == signal.SIGINT else Stop(signum)

    def ended(cfg, run_dir, overrides, sweep_dir, num, ckpt=None):  # as job.Run ends the last
        value = run_job(cfg, run_dir, overrides, sweep_dir, num, ckpt)
        if num < 1:
            return value
        line = f"interrupted as the run ended (completed); its files are all written in {run_dir}."
        sweep.job_failed(Interrupted(line, signum), run_dir, sweep_dir)

    s = tmp_path / "sweep"
    if when == "the table is drawn":
        monkeypatch.setattr(sweep, "report", drawn)
    else:
        monkeypatch.setattr(sweep, "run_job", ended)
    with pytest.raises(Interrupted) as e:
        app.sweep(["optim.lr=0.1,0.2", "trainer.epochs=1", "trainer.progress=false",
                   f"hydra.sweep.dir={s}"])  # fmt: skip
    by = " by SIGTERM" if signum == signal.SIGTERM else ""
    assert e.value.exit_code == 128 + signum and str(e.value) == (
        f"interrupted{by} as the sweep ended: every job had completed; see {s}/summary.csv"
    )
    with open(s / "summary.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["completed"] * 2


def test_flags_and_null_in_a_sweeps_list_are_read_as_hydra_reads_them(tmp_path):
    with pytest.raises(UsageError, match=r"^logger=null picks none of logger's options"):
        app.sweep(["logger=none,null", f"hydra.sweep.dir={tmp_path / 's'}"])
    with pytest.raises(UsageError, match=r"^--cfg and --info show one run's config, not a swe"):
        app.sweep(["optim.lr=0.1,0.2", f"hydra.sweep.dir={tmp_path / 's'}", "--cfg", "job"])
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "override,line,fixed",
    [
        ("hydra.launcher.max_member=2",  # it said "(its keys: none). Fix: drop ..."
         "hydra.launcher.max_member is not a key of hydra.launcher (its keys: _target_, "
         "max_members). Fix: write hydra.launcher.max_members instead of "
         "hydra.launcher.max_member.", "hydra.launcher.max_members=2"),
        ("hydra.launcher.max_members=x",  # "Fix: hydra.launcher.max_members=...."
         "hydra.launcher.max_members=x is not a whole number. "
         "Fix: hydra.launcher.max_members=null.", "hydra.launcher.max_members=null"),
        ("hydra.sweeper.sampler.seed=abc",  # "not a key of hydra.sweeper.sampler. Fix: drop it"
         "hydra.sweeper.sampler.seed=abc is not a whole number. "
         "Fix: hydra.sweeper.sampler.seed=0.", "hydra.sweeper.sampler.seed=0"),
    ],
)  # fmt: skip
def test_a_launcher_or_sweeper_key_mistyped_gets_a_fix_that_works(override, line, fixed):
    option = "hydra/sweeper=optuna_lr_wd" if "sweeper" in override else "hydra/launcher=batched"
    with pytest.raises(Exception) as e:
        compose_hydra(option, override)
    assert str(explain(e.value)) == line
    assert compose_hydra(option, fixed).hydra[override.split(".")[1]]


@pytest.mark.parametrize(
    "override,launcher",
    [("hydra.launcher.n_jobs=2", "hydra/launcher=joblib"),
     ("hydra.launcher.max_members=2", "hydra/launcher=batched"),
     ("hydra.launcher.qos=high", "hydra/launcher=slurm"),  # submitit_slurm's, which slurm builds on
     ("hydra.sweeper.n_trials=3", "hydra/sweeper=optuna_lr_wd")],
)  # fmt: skip
def test_a_key_of_another_launcher_or_sweeper_names_the_option_that_has_it(override, launcher):
    """It said 'Fix: drop hydra.launcher.n_jobs': the user meant joblib's, and forgot to pick it."""
    with pytest.raises(Exception) as e:
        compose_hydra(override)
    assert str(explain(e.value)).endswith(f"Fix: choose {launcher}.")
    compose_hydra(launcher, override)


@pytest.mark.parametrize("direction", ["maximize", "MAXIMIZE", "[maximize]"])
def test_optunas_spellings_of_maximize_are_taken(direction):
    """Optuna reads MAXIMIZE and [maximize] as maximize (d2lrun refused them)."""
    sweeper = OmegaConf.create({"_target_": "hydra_plugins.optuna.OptunaSweeper", "n_trials": 2,
                                "direction": OmegaConf.create(f"d: {direction}").d,
                                "params": {"optim.lr": "interval(0.01, 0.1)"}})  # fmt: skip
    from d2lrun.config.sweeper import check_sweep

    check_sweep(OmegaConf.create({"sweeper": sweeper, "launcher": {}}), [])


OPTUNA = ["hydra/sweeper=optuna_lr_wd", "hydra.sweeper.n_trials=2"]


@pytest.mark.parametrize(
    "given,line",
    [  # each was 'ValueError: ... (a bug in d2lrun?)' and exit 1, or Optuna's own reading
        ([*OPTUNA, "optim.weight_decay=tag(log, interval(0, 0.01))"],
         "an interval runs from low to high, and on a log scale from above 0. "
         "Fix: 'optim.weight_decay=tag(log, interval(1e-05, 0.01))'."),
        ([*OPTUNA, "optim.lr=interval(1, 0.001)"], "Fix: 'optim.lr=interval(0.001, 1)'."),
        ([*OPTUNA, "trainer.batch_size=int(interval(64,8))"],  # it dropped int(): 41.75 refused
         "Fix: 'trainer.batch_size=int(interval(8, 64))'."),
        ([*OPTUNA, "trainer.batch_size=tag(log, int(interval(0,64)))"],
         "Fix: 'trainer.batch_size=tag(log, int(interval(1, 64)))'."),
        ([*OPTUNA, "optim=glob(*)"],
         "Optuna's sweeper searches values, not glob(). Fix: 'optim=choice(adam,sgd)'."),
        ([*OPTUNA, "trainer.epochs=range(1,3)"],  # Optuna's gave 3 too
         "with its end included, unlike Python's range and the basic sweeper. "
         "Fix: 'trainer.epochs=choice(1,2)'."),
        ([*OPTUNA, "optim.lr=range(0.05,0.08,0.01)"],  # Hydra's sums: 0.060000000000000005
         "Fix: 'optim.lr=choice(0.05,0.06,0.07)'."),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=0", "optim.lr=0.1,1"],
         "hydra.launcher.n_jobs=0 runs no job: it is the number of processes (-1: one per CPU). "
         "Fix: hydra.launcher.n_jobs=2."),
        # The sweep's own folder (its jobs waited on its lock for ever, silent), or out of it
        (["optim.lr=0.1", "hydra.sweep.subdir=."],
         "hydra.sweep.subdir=. puts a job in the sweep's folder itself, not in a folder of its "
         "own inside it. Fix: 'hydra.sweep.subdir=${hydra.job.num}'."),
        (["optim.lr=0.1,1", "hydra.sweep.subdir=${hydra.job.num}/.."],
         "hydra.sweep.subdir=${hydra.job.num}/.. puts a job in the sweep's folder itself, not in "
         "a folder of its own inside it. Fix: 'hydra.sweep.subdir=${hydra.job.num}'."),
        (["optim.lr=0.1,1", "hydra.sweep.subdir=../j${hydra.job.num}"],
         "hydra.sweep.subdir=../j${hydra.job.num} puts a job outside the sweep's folder, not in a "
         "folder of its own inside it. Fix: 'hydra.sweep.subdir=${hydra.job.num}'."),
        (["optim.lr=0.1,1", "optim.weight_decay=0,1", "hydra.sweep.subdir=${optim.weight_decay}"],
         "hydra.sweep.subdir=${optim.weight_decay} puts jobs 0 and 2 into one folder (0.0): "
         "the second would write over the first. "
         "Fix: 'hydra.sweep.subdir=${optim.weight_decay}_${hydra.job.num}'."),
    ],
)  # fmt: skip
def test_a_sweeps_own_settings_are_checked_before_any_job_with_a_fix_that_works(given, line):
    """The subdir one lost files: job 2 wrote over job 0's folder, which then said failed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from d2lrun.config.sweeper import check_sweep

    def check(args):
        overrides = OverridesParser.create().parse_overrides(args)
        cfg = compose(
            [o.input_line for o in overrides if not o.is_sweep_override()], with_hydra=True
        )
        check_sweep(cfg.hydra, overrides)

    with pytest.raises(UsageError) as e:
        check(given)
    assert str(e.value).endswith(line)
    fix = str(e.value).split("Fix: ")[1].rstrip(".").strip("'")
    key = fix.split("=")[0]
    check([a for a in given if not a.startswith(key + "=")] + [fix])


def test_a_search_run_again_with_another_seed_or_subdir_is_refused_untouched(tmp_path):
    """hydra.sweeper.sampler.seed=1 into an Optuna sweep's folder: its trials 0, 1, ... were other
    settings, each refused there and recorded failed over its completed metrics.json."""
    s = tmp_path / "sweep"
    common = [*OPTUNA, "trainer.epochs=1", "trainer.progress=false", f"hydra.sweep.dir={s}"]
    app.sweep(common)
    before = {p: p.read_bytes() for p in s.rglob("*") if p.is_file() and p.name != ".lock"}
    for other, line in (
        ("hydra.sweeper.sampler.seed=1", "(hydra.sweeper.sampler.seed=0 there, 1 now). Fix: "
         "hydra.sweeper.sampler.seed=0 to finish that one"),
        ("hydra.sweep.subdir=x${hydra.job.num}", "(hydra.sweep.subdir=${hydra.job.num} there, "
         "x${hydra.job.num} now). Fix: 'hydra.sweep.subdir=${hydra.job.num}' to finish that one"),
        # TPE asked for 2 trials at a time draws others past its random start-up trials: they
        # failed as 'holds a checkpoint of another config', and the sweep exited 0 all completed
        ("hydra.sweeper.n_jobs=2", "(hydra.sweeper.n_jobs=1 there, 2 now). Fix: "
         "hydra.sweeper.n_jobs=1 to finish that one"),
    ):  # fmt: skip
        with pytest.raises(UsageError) as e:
            app.sweep([*common, other])
        assert str(e.value).startswith(f"hydra.sweep.dir={s} holds another sweep {line}")
    assert {p: p.read_bytes() for p in s.rglob("*") if p.is_file() and p.name != ".lock"} == before
    with pytest.raises(UsageError, match=r"\(hydra/sweeper/sampler=tpe there, random now\)\. "
                       r"Fix: hydra/sweeper/sampler=tpe to finish"):  # fmt: skip
        app.sweep([*common, "hydra/sweeper/sampler=random"])  # its Fixes went in a circle
    _, failure = app.sweep([*common, "hydra.sweeper.n_trials=3"])  # more trials: it goes on
    rows = list(csv.DictReader(open(s / "summary.csv")))  # the third too, past the plan's 2
    assert failure is None and sorted(r["job"] for r in rows) == ["0", "1", "2"]
    t = tmp_path / "trials"  # trials in a subdir of their own: matched by their job number
    _, failure = app.sweep(
        [*common, f"hydra.sweep.dir={t}", "hydra.sweep.subdir=t${hydra.job.num}"]
    )
    assert failure is None, failure  # it said '2 missing'


def test_the_table_finds_jobs_in_nested_subdirs_and_only_the_sweeps_jobs(tmp_path, monkeypatch):
    """hydra.sweep.subdir=lr_${optim.lr}/run: both jobs completed, the table said '2 missing'
    and exit 1; a run folder put into the sweep's folder was ranked among its jobs."""
    monkeypatch.chdir(tmp_path)
    common = ["trainer.epochs=1", "trainer.progress=false", "optim.lr=0.01,0.1"]
    s, failure = app.sweep([*common, "hydra.sweep.subdir=lr_${optim.lr}/run", "hydra.sweep.dir=a"])
    rows = list(csv.DictReader(open(s / "summary.csv")))
    assert failure is None and {(r["job"], r["status"]) for r in rows} == {
        ("lr_0.01/run", "completed"), ("lr_0.1/run", "completed")}  # fmt: skip
    app.train(["trainer.epochs=1", "trainer.progress=false", "optim.lr=0.5", "hydra.run.dir=b/x"])
    monkeypatch.setenv("B", "20")  # deeper, its overrides not resolvable there; and a link up
    app.train(["trainer.epochs=1", "trainer.progress=false", "trainer.batch_size=${oc.env:B}",
               "hydra.run.dir=b/notes/run"])  # fmt: skip
    monkeypatch.delenv("B")
    (tmp_path / "b" / "up").symlink_to(tmp_path)
    s, failure = app.sweep([*common, "hydra.sweep.dir=b"])  # its run is not a job
    assert failure is None and [r["job"] for r in csv.DictReader(open(s / "summary.csv"))] == [
        "1", "0"]  # fmt: skip
    app.train(["trainer.epochs=1", "trainer.progress=false", "hydra.run.dir=runs/12-00-00"])
    with pytest.raises(UsageError, match=r"runs holds no sweep"):  # ordinary runs: no sweep
        sweep.report(Path("runs"), show=False)


def test_a_subdir_of_the_job_id_or_resolved_only_later_is_not_refused():
    """${hydra.job.id} was refused: 'cannot resolve a ${...}: MissingMandatoryValue'."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from d2lrun.config.sweeper import check_sweep

    for subdir in ("${hydra.job.id}", "run_${hydra.job.id}", "${oc.env:NOT_SET_ANYWHERE}"):
        given = ["optim.lr=0.1,1", f"hydra.sweep.subdir={subdir}"]  # as app.sweep parses them
        cfg = compose(given[1:], with_hydra=True)
        check_sweep(cfg.hydra, OverridesParser.create().parse_overrides(given))


@pytest.mark.parametrize(
    "swept, fix",
    [  # the Fix was 'list values (KEY=0.01,0.1,1)' for every key: no whole numbers, no option
        ("trainer.batch_size=interval(8,64)", "list values (trainer.batch_size=8,16,32,64)"),
        ("seed=interval(0,5)", "list values (seed=0,1,2,3,4,5)"),
        ("dataset.noise=interval(0,1)", "list values (dataset.noise=0,0.333,0.667,1)"),
        ("optim.lr=interval(0.001,0.1)", "list values (optim.lr=0.001,0.00464,0.0215,0.1)"),
        ("model=interval(0,1)", "list values (model=conv2d,lenet,linreg,mlp,softmax)"),
        # glob() of nothing: it said 'model=a,b', two options there are not
        ("model=glob(x*)", "'model=glob(*)'"),
        ("optim.lr=glob(*)", "list values (optim.lr=0.03,...)"),
    ],
)
def test_a_sweep_a_grid_cannot_list_gets_values_that_the_key_takes(swept, fix):
    from d2lrun.config.sweeper import sweep_config

    with pytest.raises(UsageError) as e:
        sweep_config([swept])
    assert str(e.value).partition(" Fix: ")[2].startswith(fix)
    if fix.startswith("list values") and not fix.endswith("...)") and "model" not in fix:
        sweep_config([fix.removeprefix("list values (").removesuffix(")")])  # taken


def test_a_run_or_sweep_folder_under_home_is_there_not_in_a_folder_named_tilde(
    tmp_path, monkeypatch
):
    """hydra.run.dir='~/runs/a' (quoted, as the Fix for the unquoted one says) made ./~/runs/a:
    a student cleaning up with rm -rf ~/runs then removed something else."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    quick = ["trainer.epochs=1", "trainer.progress=false"]
    app.train([*quick, "hydra.run.dir='~/runs/a'"])
    app.sweep([*quick, "optim.lr=0.1", "hydra.sweep.dir='~/s'"])
    assert (tmp_path / "home" / "runs" / "a" / "model.pt").exists()
    assert (tmp_path / "home" / "s" / "0" / "model.pt").exists() and not (tmp_path / "~").exists()


FOO_KEYS = "device, seed, resume, trainer, dataset, model, optim, regularizer, init, logger"


@pytest.mark.parametrize(
    "given,line",
    [  # each job failed, or trained before the bad one failed; exit 1 and a folder of records
        (["optim.lr=0.1,0.2", "seed=-1"],
         "seed=-1 is out of range: it must be at least 0. Fix: seed=0."),
        (["optim.lr=0.1,-1"],
         "optim.lr=-1.0 is out of range: it must be greater than 0. Fix: optim.lr=0.1,0.03."),
        (["trainer.epochs=0,1"],  # the Fix keeps the list (it replaced it by one value)
         "trainer.epochs=0 is out of range: it must be at least 1. Fix: trainer.epochs=3,1."),
        (["optim.momentum=0.5,1.5"], "optim.momentum=1.5 is out of range: it must be less than 1. "
                                     "Fix: optim.momentum=0.5,0.0."),
        (["optim.weight_decay=0,-1"],  # not 0,0.0: the same job twice
         "optim.weight_decay=-1.0 is out of range: it must be at least 0. "
         "Fix: optim.weight_decay=0."),
        (["device=cpu,tpu"],
         "Unknown device 'tpu'. Choose one of: auto, cpu, cuda, cuda:N, mps. Fix: device=auto."),
        pytest.param(
            ["device=cuda", "optim.lr=0.1,0.2"],
            "device=cuda does not exist on this machine; available: cpu. "
            "Fix: device=auto or device=cpu.",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
        (["dataset=csv,synthetic"],
         "dataset.path is required for dataset=csv. Fix: dataset.path=data/house_tiny.csv."),
        (["+foo=1,2"], f"foo is not a key of the config (its keys: {FOO_KEYS}). Fix: drop foo."),
        (["model=linreg,mlp", "model.dropout=0.1"],  # a key that job 0 lacks: one line still
         "model.dropout is not a key of model=linreg (its keys: name, impl, bias). "
         "Fix: choose model=mlp or model=lenet."),
        (["optim=sgd,adamw"],  # it said 'Fix: optim=adam', the sweep's other option gone
         "Unknown optim 'adamw'. Choose one of: adam, sgd. Fix: optim=sgd,adam."),
        (["model=softmax,linreg", "dataset=synthetic"],  # job 0 failed as it ran, job 1 trained
         "model=softmax cannot learn dataset=synthetic (a regression table). Models that fit it: "
         "linreg, mlp. Fix: model=linreg, or choose another dataset=."),
        (["optim.lr=shuffle(0.01,0.1)"],  # run again: 'holds a checkpoint of another config'
         "optim.lr=shuffle(0.01,0.1) numbers the jobs in a new order each time, so the sweep run "
         "again (to finish it) would find other jobs in its folders 0/, 1/, ... Fix: "
         "'optim.lr=0.01,0.1'."),
        (["model=glob(lin*)", "optim.lr=0.01,0.1"],  # 'ConfigLoader is not set (a bug?)'
         "model=glob(lin*): a grid lists values, not glob(). Fix: 'model=linreg'."),
        (["optim.lr=glob(*)"], "optim.lr=glob(*) matches no option of optim.lr (it is a key, not "
                               "a group). Fix: list values (optim.lr=0.03,...)."),
        # no job: said d2lrun-report's 'holds no sweep ... give a folder that d2lrun -m wrote'
        (["trainer.epochs=range(5,1)"], "trainer.epochs=range(5,1) gives no value, so the sweep "
                                        "would have no job. Fix: trainer.epochs=range(5,1,-1)."),
        (["hydra/launcher=batched", "hydra.launcher.max_members=1,2"],  # Hydra's own words
         "hydra.launcher.max_members=1,2 sweeps a setting of Hydra's, which takes one value per "
         "sweep. Fix: hydra.launcher.max_members=1, and a sweep per value."),
        (["optim.lr=range(1,0)"],  # it said range(0,1): a sweep of lr 0, which is refused
         "optim.lr=range(1,0) gives no value, so the sweep would have no job. "
         "Fix: optim.lr=range(1,0,-1)."),
        (["optim.lr=range(0.1,0.5,-0.1)"],
         "optim.lr=range(0.1,0.5,-0.1) gives no value, so the sweep would have no job. "
         "Fix: optim.lr=range(0.1,0.5,0.1)."),
        ([*OPTUNA, "seed=range(0,0)"], "seed=range(0,0) gives no value, so the sweep would have "
                                       "no job. Fix: seed=range(0,1)."),
        ([*OPTUNA, "trainer.epochs=choice(1,2.5)"],  # trial 0 trained, then the search ended
         "trainer.epochs=2.5 is not a whole number. Fix: trainer.epochs=1,3."),
        ([*OPTUNA, "optim.lr=interval(-1,1)"],  # 'Fix: optim.lr=0.03': no search left
         "optim.lr=-1.0 is out of range: it must be greater than 0. "
         "Fix: 'optim.lr=interval(0.03,1.0)'."),
        ([*OPTUNA, "trainer.batch_size=interval(8,64)"],  # 'Fix: trainer.batch_size=10'
         "trainer.batch_size=interval(8,64): trainer.batch_size is a whole number, which "
         "int(interval(...)) draws. Fix: 'trainer.batch_size=int(interval(8, 64))'."),
    ],
)  # fmt: skip
def test_a_value_any_job_would_refuse_ends_the_sweep_before_any_job_in_one_line(
    tmp_path, monkeypatch, given, line
):

    monkeypatch.chdir(tmp_path)  # the default sweep folder: outputs/multirun/DATE/TIME
    monkeypatch.setattr(kfold, "train", mock.Mock(side_effect=AssertionError("a job started")))
    with pytest.raises(Exception) as e:
        app.sweep(["trainer.epochs=1", *given])
    error = explain(e.value)
    assert (str(error), error.exit_code) == (line, 2)
    assert not (tmp_path / "outputs").exists()
    key, _, values = line.rpartition(" Fix: ")[2].removesuffix(".").partition("=")
    # a list kept: pasted, it is taken
    if "," in values and not set("(') ") & set(key + values):
        sweep.checked_sweep(["trainer.epochs=1", *[a for a in given if a.split("=")[0] != key],
                             f"{key}={values}"])  # fmt: skip


def test_a_fixed_key_that_only_the_swept_presets_have_is_set_in_each_job(tmp_path):
    """'dataset.num_features is not a key of dataset=synthetic': the default, which no job has."""
    s = tmp_path / "s"
    app.sweep(["experiment=ch4_poly_third,ch4_poly_overfit", "dataset.num_features=3",
               "trainer.epochs=1", "trainer.progress=false", "hydra/launcher=batched",
               f"hydra.sweep.dir={s}"])  # fmt: skip
    for n in (0, 1):
        assert OmegaConf.load(s / f"{n}/.hydra/config.yaml").dataset.num_features == 3
        assert "dataset.num_features=3" in OmegaConf.load(s / f"{n}/.hydra/overrides.yaml")
    rows = list(csv.DictReader(open(s / "summary.csv")))  # no column of the one value 3
    assert [r["status"] for r in rows] == ["completed"] * 2 and list(rows[0])[:3] == [
        "job", "experiment", "status"]  # fmt: skip
    # Run again with another list: the sweep there as typed, launcher too, for a shell; it said
    # 'dataset.num_features=choice(3)' (a bash syntax error pasted) and left out the launcher
    with pytest.raises(UsageError) as e:
        app.sweep(["experiment=ch4_poly_third", "dataset.num_features=3", "trainer.epochs=1",
                   "trainer.progress=false", f"hydra.sweep.dir={s}"])  # fmt: skip
    assert str(e.value) == (  # and what differs, which it left to be found by eye
        f"hydra.sweep.dir={s} holds another sweep (experiment=ch4_poly_third,ch4_poly_overfit "
        f"there, ch4_poly_third now). Fix: the same overrides (hydra/launcher=batched "
        f"experiment=ch4_poly_third,ch4_poly_overfit dataset.num_features=3 trainer.epochs=1 "
        f"trainer.progress=false) to finish that one, or another hydra.sweep.dir."
    )


def test_a_sweep_over_resume_is_one_line_naming_its_values(tmp_path, monkeypatch):
    """It said 'ChoiceSweep(tags=set(), list=['A', 'B'], ...): no such run folder'."""
    monkeypatch.chdir(tmp_path)
    for run in (app.sweep, app.train):
        with pytest.raises(UsageError) as e:
            run(["resume=A,B", "optim.lr=0.1"])
        assert str(e.value) == ("resume=A,B gives several values, and resume= goes on with one "
                                "run. Fix: run d2lrun once per value.")  # fmt: skip
    assert not (tmp_path / "outputs").exists()


def test_a_search_without_a_seed_run_again_is_refused_and_a_completed_job_keeps_its_record(
    tmp_path, capsys
):
    """hydra.sweeper.sampler.seed=null, run again with n_trials=3: its trials 0 and 1 were other
    settings, each 'holds a checkpoint of another config', and recorded failed over its completed
    metrics.json."""
    s = tmp_path / "sweep"
    common = [*OPTUNA, "hydra.sweeper.sampler.seed=null", "trainer.epochs=1",
              "trainer.progress=false", f"hydra.sweep.dir={s}"]  # fmt: skip
    app.sweep(common)
    before = {p: p.read_bytes() for p in s.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(UsageError) as e:
        app.sweep([*common, "hydra.sweeper.n_trials=3"])
    assert str(e.value) == (
        f"hydra.sweep.dir={s} holds an Optuna sweep run without a sampler seed "
        f"(hydra.sweeper.sampler.seed=null), so its trials cannot be drawn again to finish it. "
        f"Fix: another hydra.sweep.dir, with hydra.sweeper.sampler.seed=0 to be able to finish "
        f"that one later."
    )
    assert {p: p.read_bytes() for p in s.rglob("*") if p.is_file() and p.name != ".lock"} == before
    record = (s / "0" / "metrics.json").read_bytes()  # a job refused there all the same
    refused = UsageError(f"{s}/0 holds a checkpoint of another config. Fix: another folder.")
    assert sweep.job_failed(refused, s / "0", s) == -math.inf
    assert (s / "0" / "metrics.json").read_bytes() == record
    assert capsys.readouterr().err.endswith(f"d2lrun: error: {refused}\n")


def test_a_signal_to_one_sweep_does_not_stop_another_sweep_into_its_folder(tmp_path, monkeypatch):
    """Two sweeps into one folder (B started as A's command stops, or beside A's Slurm jobs):
    Ctrl-C on A wrote .stopping, which B took for its own: its next job was 'interrupted before it
    started', exit 143, the table said 'unfinished', and .stopping stayed in the folder."""
    import contextlib
    import signal
    import sys

    from d2lrun.stopping import STOP_MARKER, Stop, stopping_workers

    s = tmp_path / "sweep"
    monkeypatch.delitem(sys.modules, "joblib.externals.loky.reusable_executor", raising=False)
    train, a_stopped = kfold.train, []

    def train_as_a_is_stopped(*args, **kwargs):  # A, another process, gets Ctrl-C during B's job 0
        if not a_stopped:
            a_stopped.append(signal.SIGINT)
            with contextlib.suppress(Stop):
                a_handler(signal.SIGINT, None)
        return train(*args, **kwargs)

    monkeypatch.setattr(kfold, "train", train_as_a_is_stopped)
    with contextlib.ExitStack() as a:
        with mock.patch("os.getpid", return_value=4242):
            a.enter_context(stopping_workers(s))
        a_handler = signal.getsignal(signal.SIGINT)
        _, failure = app.sweep(["optim.lr=0.01,0.1", "trainer.epochs=1", "trainer.progress=false",
                                f"hydra.sweep.dir={s}"])  # fmt: skip
        assert [p.name for p in s.glob(".stopping*")] == [".stopping.4242"]  # A's, while it ends
    assert failure is None and a_stopped  # B: both jobs completed
    assert [p.name for p in s.glob(".stopping*")] == []  # A ended: its marker goes with it
    with stopping_workers(s), pytest.raises(Interrupted, match="interrupted before it started"):
        (s / os.environ[STOP_MARKER]).touch()  # as a signal to this process's sweep leaves it
        sweep.run_job(compose([]), s / "2", [], s, 2)  # a job its pool hands out then


def test_a_search_run_again_with_fewer_trials_plans_only_those(tmp_path, monkeypatch):
    """n_trials=4 stopped during trial 2, run again with n_trials=2: its table said '2 completed,
    1 unfinished, 1 missing' and exit 1, from the first run's plan (multirun.yaml)."""
    s = tmp_path / "sweep"
    common = [*OPTUNA, "trainer.epochs=1", "trainer.progress=false", f"hydra.sweep.dir={s}"]
    train, calls = kfold.train, []

    def stopped_in_trial_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C
        return train(*args, **kwargs)

    monkeypatch.setattr(kfold, "train", stopped_in_trial_2)
    with pytest.raises(Interrupted):
        app.sweep([*common, "hydra.sweeper.n_trials=4"])
    _, failure = app.sweep(common)  # n_trials=2: both completed, skipped
    assert failure is None and len(calls) == 3
    rows = list(csv.DictReader(open(s / "summary.csv")))
    assert sorted((r["job"], r["status"]) for r in rows) == [("0", "completed"), ("1", "completed")]
    assert OmegaConf.load(s / "multirun.yaml").hydra.sweeper.n_trials == 2


def test_a_folder_of_sweeps_is_refused_naming_them_and_writing_nothing(tmp_path, monkeypatch):
    """d2lrun-report outputs (or outputs/multirun/DATE) ranked the jobs of unrelated sweeps as one
    table and wrote outputs/summary.csv (or failed with 'KeyError: best_val_loss')."""
    monkeypatch.chdir(tmp_path)
    day = Path("outputs/multirun/2026-12-05")
    for time, key in (("10-00-00", "optim.lr"), ("11-00-00", "optim.weight_decay"),
                      ("12-00-00", "optim.lr"), ("13-00-00", "optim.lr")):  # fmt: skip
        for num in (0, 1):
            write_job(day / time, num, [f"{key}={num}"], done(0.1 + num))
            OmegaConf.save(
                {"hydra": {"job": {"num": num}}}, day / time / f"{num}/.hydra/hydra.yaml"
            )
        basic = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
        plan = {"hydra": {"sweeper": {"_target_": basic}, "overrides": {"task": [f"{key}=0,1"]}}}
        OmegaConf.save(plan, day / time / "multirun.yaml")
    before = sorted(Path().rglob("*"))
    for folder in (day, Path("outputs/multirun"), Path("outputs")):
        with pytest.raises(UsageError) as e:
            sweep.report(folder)
        assert str(e.value) == (
            f"{folder} is no sweep folder (it has no multirun.yaml) but holds sweeps, whose jobs "
            f"it would rank as one. Fix: d2lrun-report one of them: {day}/11-00-00, "
            f"{day}/12-00-00, {day}/13-00-00 (the last 3 of 4)."
        )
        assert e.value.exit_code == 2
    assert sorted(Path().rglob("*")) == before  # no summary.csv, no heatmap.png
    assert sweep.report(day / "13-00-00", show=False) is None  # a sweep folder: as before
    (day / "13-00-00" / "multirun.yaml").unlink()  # one that lost its plan: its jobs 0/, 1/
    assert sweep.report(day / "13-00-00", show=False) is None


def test_a_sweep_that_resumes_a_k_fold_run_is_refused_before_any_job(tmp_path, monkeypatch):
    """Each job looked for the run's fold_0/ in its own sweep folder and failed there: exit 1 and
    a sweep folder of failures."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kf" / "fold_0").mkdir(parents=True)
    (tmp_path / "kf" / "fold_0" / "last.pt").write_bytes(b"")  # a k-fold run's first fold
    with pytest.raises(UsageError) as e:
        sweep.checked_sweep(["resume=kf", "trainer.epochs=3,4"])
    assert str(e.value) == (
        "resume=kf is a k-fold run, which goes on as one run in its own folder, not as a sweep's "
        "jobs. Fix: d2lrun resume=kf without -m, or resume=kf/fold_0 (one fold as a run) in the "
        "sweep."
    )
    # Completed, it goes on only as one of its folds: 'd2lrun resume=kf' was offered, and refused
    (tmp_path / "kf" / "metrics.json").write_text(json.dumps({"status": "completed"}))
    with pytest.raises(UsageError) as e:
        sweep.checked_sweep(["resume=kf", "trainer.epochs=3,4"])
    assert str(e.value).endswith(" Fix: resume=kf/fold_0 (one fold as a run) in the sweep.")


def test_a_completed_k_fold_job_keeps_its_record_when_another_config_meets_it(tmp_path, capsys):
    """Its checkpoints are in fold_i/: the job's own folder had none, so its completed record
    went before the folds refused the other config, and the table then said 'failed'."""
    done = {"status": "completed", "best": {"metric": "val_loss", "value": 0.25}}
    ran, other = ["optim.lr=0.1", "dataset.folds=2"], ["optim.lr=0.3", "dataset.folds=2"]
    save_overrides(tmp_path / "0" / "fold_0", ran)
    (tmp_path / "0" / "metrics.json").write_text(json.dumps(done))
    assert sweep.run_job(compose(other), tmp_path / "0", other, tmp_path, 0) == -math.inf
    assert json.loads((tmp_path / "0" / "metrics.json").read_text()) == done
    assert "holds a checkpoint of another config (optim.lr=0.1 there" in capsys.readouterr().err
