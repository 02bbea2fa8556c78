"""Runs trained as one stack (hydra/launcher=batched): each member is its run alone, its files
those of a run, and a member that diverges stops without touching the others."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from d2lrun.batched import train_stack
from d2lrun.config import compose
from d2lrun.job import train_job
from d2lrun.reload import load_checkpoint

# Measured on this 2-core CPU: the largest relative difference between a member and its run alone
# was 4e-7 (float32 sums in another order: one matrix product for all members).
RTOL = 1e-4


def quiet(overrides: list[str], run_dir) -> dict:
    args = ["device=cpu", "trainer.progress=false", *overrides]
    return {"cfg": compose(args), "run_dir": run_dir, "overrides": args, "log": lambda *_: None}


def rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: float(v) for k, v in r.items() if k not in ("seconds", "examples_per_s")}
                for r in csv.DictReader(f)]  # fmt: skip


def assert_same_run(a, b, exact=False):
    """Two run folders with the same metrics per epoch and the same final weights."""
    ra, rb = rows(a), rows(b)
    assert [r.keys() for r in ra] == [r.keys() for r in rb] and len(ra) == len(rb)
    for x, y in zip(ra, rb, strict=True):
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=0 if exact else RTOL, abs=0 if exact else 1e-7)
    wa, wb = (torch.load(d / "last.pt", weights_only=False) for d in (a, b))
    assert wa["model"].keys() == wb["model"].keys() and wa["epoch"] == wb["epoch"]
    for k in wa["model"]:
        torch.testing.assert_close(wa["model"][k], wb["model"][k], rtol=RTOL, atol=1e-6)
    sa, sb = wa["optimizer"]["state"], wb["optimizer"]["state"]
    assert sa.keys() == sb.keys()  # momentum buffers where the run alone keeps them
    for i in sa:
        for k in sa[i]:
            torch.testing.assert_close(sa[i][k], sb[i][k], rtol=RTOL, atol=1e-6)
    assert wa["optimizer"]["param_groups"] == wb["optimizer"]["param_groups"]
    assert torch.equal(wa["rng"]["torch"], wb["rng"]["torch"])  # dropout masks drawn alike


CASES = {
    # §4.5 from scratch: weight decay on w only, and an L1 term, per member
    "linreg-scratch": (["experiment=ch4_weight_decay", "trainer.epochs=4"],
                       [["optim.weight_decay=0"], ["optim.weight_decay=3", "regularizer=l1"],
                        ["optim.weight_decay=1", "optim.lr=0.01"]]),
    "softmax-concise": (["model=softmax", "dataset=fashion_mnist", "trainer.epochs=3",
                         "trainer.batch_size=16"],
                        [["optim.lr=0.1"], ["optim.lr=0.3", "optim.momentum=0.9"],
                         ["optim.lr=0.1", "optim.weight_decay=0.01"]]),
    # dropout masks per member, drawn as each member alone draws them
    "mlp-scratch": (["model=mlp", "model.impl=scratch", "model.num_hiddens=[32,16]",
                     "dataset=fashion_mnist", "trainer.epochs=2", "trainer.batch_size=16"],
                    [["model.dropout=0"], ["model.dropout=[0.5,0.2]"], ["model.dropout=0.3",
                                                                       "optim.lr=0.05"]]),
    "mlp-concise-adam": (["model=mlp", "model.num_hiddens=32", "dataset=fashion_mnist",
                          "optim=adam", "trainer.epochs=2", "trainer.batch_size=16"],
                         [["model.dropout=0.5"], ["optim.lr=0.01"], ["optim.weight_decay=0.1"]]),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_each_member_trains_as_its_run_alone(case, tmp_path, fake_fmnist):
    common, members = CASES[case]
    common = [*common, f"dataset.root={fake_fmnist}"] if "fashion" in str(common) else common
    alone = [train_job(**quiet([*common, *m], tmp_path / f"alone{i}")) for i, m in
             enumerate(members)]  # fmt: skip
    jobs = [quiet([*common, *m], tmp_path / f"member{i}") for i, m in enumerate(members)]
    stacked = train_stack(jobs)
    for i, (one, member) in enumerate(zip(alone, stacked, strict=True)):
        assert member["status"] == one["status"] == "completed"
        assert_same_run(tmp_path / f"alone{i}", tmp_path / f"member{i}")
        for name in ("model.pt", "best.pt", "metrics.json", "curves.png"):
            assert (tmp_path / f"member{i}" / name).exists()
        saved = load_checkpoint(tmp_path / f"member{i}" / "last.pt")
        assert saved["overrides"] == jobs[i]["overrides"] and saved["config"] == json.loads(
            json.dumps(saved["config"])
        )


def test_a_member_that_diverges_stops_and_the_others_go_on_bit_for_bit(tmp_path):
    common = ["experiment=ch4_weight_decay", "trainer.epochs=5"]
    calm = train_stack([quiet([*common, f"optim.lr={lr}"], tmp_path / f"calm{i}")
                        for i, lr in enumerate((0.003, 0.001))])  # fmt: skip
    wild = train_stack([quiet([*common, f"optim.lr={lr}"], tmp_path / f"wild{i}")
                        for i, lr in enumerate((0.003, 1e6))])  # fmt: skip
    assert [r["status"] for r in calm] == ["completed", "completed"]
    assert wild[0]["status"] == "completed"
    assert str(wild[1]).startswith("diverged: the training loss became ")
    assert str(wild[1]).endswith("Fix: lower optim.lr (now 1e+06).")
    summary = json.loads((tmp_path / "wild1" / "metrics.json").read_text())
    assert summary["status"] == "diverged" and not (tmp_path / "wild1" / "model.pt").exists()
    assert_same_run(tmp_path / "calm0", tmp_path / "wild0", exact=True)


def test_jobs_group_by_all_but_the_member_keys_and_the_preset_is_the_launcher():
    from hydra.utils import get_class

    from d2lrun.batched import MEMBER_KEYS, grouped

    jobs = [
        ["optim.lr=0.1"], ["optim.lr=0.3", "optim.weight_decay=1e-3"],
        ["optim.momentum=0.9", "regularizer=l1", "regularizer.lambd=0.01"],
        ["trainer.batch_size=64"], ["seed=1"], ["model=mlp", "model.dropout=0.5"],
        ["model=mlp", "model.dropout=0.2", "optim.lr=1"],
    ]  # fmt: skip
    configs = [(i, compose(job, with_hydra=True)) for i, job in enumerate(jobs)]
    assert [[num for num, _ in group] for group in grouped(configs)] == [[0, 1], [2], [3], [4],
                                                                          [5, 6]]  # fmt: skip
    assert MEMBER_KEYS == ("optim.lr", "optim.weight_decay", "optim.momentum",
                           "regularizer.lambd", "model.dropout")  # fmt: skip
    launcher = compose(["hydra/launcher=batched"], with_hydra=True).hydra.launcher
    assert get_class(launcher._target_).__name__ == "BatchedLauncher"
    assert launcher.max_members is None


def test_jobs_whose_values_differ_once_resolved_do_not_stack():
    """seed=${hydra:job.num}: jobs 0 and 1 were one stack, trained on seed 0's data and order."""
    from omegaconf import open_dict

    from d2lrun.batched import grouped

    configs = []
    for num, job in enumerate([["seed=${hydra:job.num}"]] * 2 + [["optim.lr=${optim.momentum}"]]):
        cfg = compose([*job, "trainer.epochs=${seed}"], with_hydra=True)
        with open_dict(cfg):
            cfg.hydra.job.num = num
        configs.append((num, cfg))
    assert [[num for num, _ in group] for group in grouped(configs)] == [[0, 2], [1]]


def test_a_sweep_composes_each_job_as_hydra_does_once_and_copies_a_value_change():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from d2lrun.config.schema import CONFIG_DIR, register
    from hydra_plugins.d2lrun_launcher.composed import Composed

    register()  # the schema's configs
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        hydra = GlobalHydra.instance().config_loader()
        master = hydra.load_configuration(  # the sweep's, with a folder named by the overrides
            "config", ["hydra/launcher=batched", "hydra.job.config.override_dirname.exclude_keys="
                       "[seed]"], RunMode.MULTIRUN)  # fmt: skip

        class Counted:  # Hydra's config loader, counting what it composes
            calls = 0

            def load_sweep_config(self, master_config, sweep_overrides):
                self.calls += 1
                return hydra.load_sweep_config(master_config, sweep_overrides)

        loader = Composed(Counted())
        jobs = [["model=softmax", "optim.lr=0.1", "seed=1", "+trainer.note=a"],
                ["model=softmax", "optim.lr=1", "seed=2", "+trainer.note=a"],  # values: copied
                ["model=softmax", "optim.lr=${optim.momentum}", "seed=2", "+trainer.note=a"],
                ["model=mlp", "optim.lr=1", "seed=2", "+trainer.note=a"],  # a group: composed
                ["model=mlp", "optim.lr=1", "seed=2", "+trainer.note=b"],  # an added key too
                ["model=mlp", "init=xavier"], ["model=mlp", "init=kaiming"],  # a group's option
                ["model=mlp", "model.num_hiddens=[8]"],
                ["model=mlp", "model.num_hiddens=[8,4]"]]  # fmt: skip
        for job in jobs:
            expected = OmegaConf.to_container(hydra.load_sweep_config(master, job))
            checked = loader.load_sweep_config(master, job)  # as Hydra's basic sweeper checks it
            assert OmegaConf.to_container(checked) == expected, job
            launched = loader.load_sweep_config(master, job)  # as its launcher composes it
            assert launched is not checked and OmegaConf.to_container(launched) == expected
        assert loader.loader.calls == 6
    assert checked.hydra.job.override_dirname == "model.num_hiddens=[8,4],model=mlp"


def test_a_stop_signal_while_the_members_write_their_files_waits_for_all_of_them(
    tmp_path, monkeypatch
):
    import os
    import signal

    import d2lrun.job

    original = d2lrun.job.Run.end

    def end(self, *how, **kw):  # SIGTERM arrives as the first member writes its files
        if self.run_dir.name == "m0":
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *how, **kw)

    monkeypatch.setattr(d2lrun.job.Run, "end", end)
    last = tmp_path / "m2" / "metrics.json"
    caught = []
    before = signal.signal(signal.SIGTERM, lambda signum, _: caught.append((signum, last.exists())))
    try:
        train_stack([quiet(["experiment=ch4_weight_decay", "trainer.epochs=2",
                            f"optim.lr={lr}"], tmp_path / f"m{i}")
                     for i, lr in enumerate((0.003, 0.001, 0.002))])  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, before)
    assert caught == [(signal.SIGTERM, True)]  # handled once, after the last member's files
    for i in range(3):
        summary = json.loads((tmp_path / f"m{i}" / "metrics.json").read_text())
        assert summary["status"] == "completed" and (tmp_path / f"m{i}" / "model.pt").exists()


@pytest.mark.parametrize("stop", ["in the last epoch's save", "as fit returns"])
def test_a_stop_once_the_last_epoch_is_saved_leaves_every_member_completed(
    tmp_path, monkeypatch, stop
):
    """Held back until every member had saved the last epoch, the stop ended them all as
    'interrupted after epoch 2' (of 2), without model.pt, as if they had more to train; as fit
    returned, it left them with no metrics.json at all ('unfinished')."""
    import os
    import signal

    import d2lrun.batched
    import d2lrun.job
    from d2lrun.stopping import stop_signals

    on_epoch, fit = d2lrun.job.Run.on_epoch, d2lrun.batched.fit

    def saved(self, row):  # SIGTERM as the first member saves the last epoch
        if row["epoch"] == 2 and self.run_dir.name == "m0":
            os.kill(os.getpid(), signal.SIGTERM)
        on_epoch(self, row)

    def fitted(*args):
        fit(*args)
        os.kill(os.getpid(), signal.SIGTERM)

    if stop == "as fit returns":
        monkeypatch.setattr(d2lrun.batched, "fit", fitted)
    else:
        monkeypatch.setattr(d2lrun.job.Run, "on_epoch", saved)
    with stop_signals():
        ended = train_stack([quiet(["experiment=ch4_weight_decay", "trainer.epochs=2",
                                    f"optim.lr={lr}"], tmp_path / f"m{i}")
                             for i, lr in enumerate((0.003, 0.001))])  # fmt: skip
    assert [str(e) for e in ended] == [
        f"interrupted by SIGTERM as the run ended (completed); its files are all written in "
        f"{tmp_path / f'm{i}'}."
        for i in range(2)
    ]
    for i in range(2):
        summary = json.loads((tmp_path / f"m{i}" / "metrics.json").read_text())
        assert summary["status"] == "completed" and (tmp_path / f"m{i}" / "model.pt").exists()


def test_a_full_disk_fails_each_member_with_the_fix_that_goes_on_from_its_own_last_pt(
    tmp_path, monkeypatch
):
    """As for a run alone (tests/test_errors.py): it said 'choose a writable folder
    (hydra.run.dir=DIR)', which a sweep's job cannot take, and the stack's error went up."""
    import d2lrun.files as files

    real_fsync, calls = files.os.fsync, []

    def failing_fsync(fd):  # epoch 1 wrote best.pt and last.pt of both (files and folders)
        calls.append(fd)
        if len(calls) > 8:
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", failing_fsync)
    ended = train_stack([quiet(["trainer.epochs=3", f"optim.lr={lr}"], tmp_path / f"m{i}")
                         for i, lr in enumerate((0.01, 0.02))])  # fmt: skip
    monkeypatch.undo()
    for i, error in enumerate(ended):
        assert str(error).startswith("No space left on device (")
        assert str(error).endswith(
            f"Fix: free disk space, then d2lrun resume={tmp_path / f'm{i}'} (its last.pt is kept)."
        )
        assert load_checkpoint(tmp_path / f"m{i}" / "last.pt")["epoch"] == 1


def test_a_stack_stopped_as_it_is_set_up_leaves_no_job_folders(tmp_path, monkeypatch):
    """Ctrl-C while Hydra made the job folders or the stack's runs were set up left folders of
    .hydra/ alone, which the table called 'unfinished', not 'missing' (not started)."""
    from d2lrun import app, batched
    from d2lrun.errors import Interrupted

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(batched, "Run", stopped)
    s = tmp_path / "sweep"
    with pytest.raises((KeyboardInterrupt, Interrupted)):
        app.sweep(["hydra/launcher=batched", "optim.lr=0.1,0.3", "trainer.epochs=1",
                   "trainer.progress=false", f"hydra.sweep.dir={s}"])  # fmt: skip
    assert not list(s.glob("[0-9]*"))


def test_a_stopped_sweep_removes_no_folder_another_sweep_holds(tmp_path):
    """Ctrl-C on a sweep waiting for the lock of a job another sweep into the same folder was
    training deleted that job's folder: the other's epoch was lost and its members failed."""
    from d2lrun.batched import remove_unstarted
    from d2lrun.files import hold

    for num in range(2):
        (tmp_path / str(num) / ".hydra").mkdir(parents=True)
    with hold(tmp_path / "1"):  # held as another process holds it (flock: per open file)
        remove_unstarted({num: {"run_dir": tmp_path / str(num)} for num in range(2)})
        assert [p.name for p in tmp_path.iterdir()] == ["1"]


def test_each_job_of_a_stack_is_running_in_the_table_once_hydra_has_made_its_folder(
    tmp_path, monkeypatch
):
    """The members' folders were locked once Hydra had made all of them (about 0.1 s a job):
    d2lrun-report meanwhile called the first ones 'unfinished', as jobs killed by kill -9."""
    from d2lrun import app, batched
    from d2lrun.files import held

    run, seen, s = batched.run, [], tmp_path / "sweep"

    def made(launcher, cfg, task):  # Hydra made the job's folder and ran task in it
        returned = run(launcher, cfg, task)
        seen.append(held(s / str(cfg.hydra.job.num)))
        return returned

    monkeypatch.setattr(batched, "run", made)
    app.sweep(["hydra/launcher=batched", "optim.lr=0.1,0.3", "trainer.epochs=1",
               "trainer.progress=false", f"hydra.sweep.dir={s}"])  # fmt: skip
    assert seen == [True, True]
