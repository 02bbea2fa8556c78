"""d2lrun from Python, as in a notebook: d2lrun.train gives the command line's numbers and run
folder and returns the run with its metrics, summary and plot; mistakes raise the command line's
one-line errors; d2lrun.sweep and d2lrun.report give a sweep's table; `d2lrun --help` lists the
loggers and imports none of them."""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import d2lrun
from d2lrun.errors import Diverged, Interrupted, UsageError
from tests.conftest import ROOT, run_module

TIMINGS = ["seconds", "examples_per_s"]


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    """A notebook's folder: runs go to outputs/ below it, as from the command line."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_folders(here: Path) -> list[Path]:
    return sorted(p for p in here.glob("outputs/*/*") if p.parent.name != "multirun")


def test_train_gives_the_command_lines_numbers_and_returns_the_run(here, fake_fmnist):
    args = [
        "model=softmax",
        f"dataset.root={fake_fmnist}",
        "dataset.download=false",
        "trainer.epochs=2",
        "trainer.batch_size=16",
        "trainer.progress=false",
    ]
    r = run_module(*args, f"hydra.run.dir={here / 'cli'}")
    assert r.returncode == 0, r.stderr
    argv, env = list(sys.argv), os.environ.get("HYDRA_FULL_ERROR")

    run = d2lrun.train(*args)
    assert (sys.argv, os.environ.get("HYDRA_FULL_ERROR")) == (argv, env)  # as they were
    assert run_folders(here) == [
        here / run.run_dir
    ]  # outputs/DATE/TIME, as the command line names it
    assert run.run_dir.parent.parent == Path("outputs")
    os.chdir(here / "cli")  # a notebook's %cd: its files are found still
    assert run.summary["status"] == "completed" and len(run.metrics) == 2
    assert run.run_dir == here / run_folders(here)[0]  # it led nowhere, as did load_run(its name)
    assert d2lrun.load_run(run.run_dir).summary == run.summary
    os.chdir(here)
    assert run.run_dir.parent.parent == Path("outputs")  # as named again
    cli = pd.read_csv(here / "cli" / "metrics.csv").drop(columns=TIMINGS)
    pd.testing.assert_frame_equal(
        run.metrics.drop(columns=TIMINGS), cli, check_exact=True
    )  # bit for bit
    assert run.summary["status"] == "completed" and run.summary["epochs_completed"] == 2
    assert run.summary["final"]["val_acc"] == run.metrics["val_acc"].iloc[-1]
    assert len(run.predict(fake_fmnist_images(fake_fmnist))) == 4  # the load_run object

    figure = run.plot()
    assert [ax.get_ylabel() for ax in figure.axes] == ["loss", "accuracy"]
    assert [line.get_label() for line in figure.axes[1].lines] == ["train accuracy", "val accuracy"]
    assert list(figure.axes[1].lines[1].get_ydata()) == run.metrics["val_acc"].tolist()
    assert figure._repr_png_()[:4] == b"\x89PNG"  # what Jupyter shows inline


def fake_fmnist_images(root: Path):
    from torchvision.datasets import FashionMNIST

    return FashionMNIST(str(root), train=False).data[:4]


@pytest.mark.parametrize(
    "args",
    [
        ["optim.lr=fast"],
        ["optim.lrr=0.1"],
        ["model=lenett"],
        ["resume=nowhere"],
        ["logger=tensorboard", "--foo"],
    ],
)
def test_a_mistake_raises_the_one_line_the_command_line_prints(here, args):
    r = run_module(*args, f"hydra.run.dir={here / 'cli'}")
    assert r.returncode == 2
    with pytest.raises(UsageError) as error:
        d2lrun.train(*args)
    if "--foo" not in args:  # argparse prints its own usage there
        assert r.stderr.strip() == f"d2lrun: error: {error.value}"
    assert run_folders(here) == []  # refused before it started: no folder left


def test_a_diverged_run_raises_diverged(here):
    with pytest.raises(
        Diverged, match=r"^diverged: the training loss became inf .* Fix: lower optim.lr"
    ):
        d2lrun.train("optim.lr=10", "trainer.progress=false")


def test_flags_are_refused_and_one_list_of_overrides_is_taken(here):
    with pytest.raises(UsageError, match=re.escape("Fix: d2lrun.sweep('optim.lr=0.1,0.2') (one")):
        d2lrun.train("optim.lr=0.1,0.2")  # said: Fix: d2lrun -m optim.lr=0.1,0.2, a shell's command
    with pytest.raises(UsageError, match=re.escape("or d2lrun.sweep('model=mlp,lenet') for a run")):
        d2lrun.train("model=[mlp,lenet]")
    with pytest.raises(UsageError) as e:  # its Fix, 'model=linreg' 'seed=1', pasted: one string
        d2lrun.train("model=linreg seed=1")
    assert str(e.value).endswith("Fix: one override per argument: 'model=linreg', 'seed=1'.")
    # A command line pasted: it said "cannot read the override d2lrun.sweep('optim.lr=0.1,0.2')",
    # text the user never wrote, and "Fix: ... '-m', ...", which train refuses
    pasted = {
        "d2lrun -m optim.lr=0.1,0.2": "d2lrun.sweep('optim.lr=0.1,0.2')",
        "d2lrun resume=r trainer.epochs=3": "d2lrun.train('resume=r', 'trainer.epochs=3')",
    }
    for line, fix in pasted.items():
        with pytest.raises(UsageError) as e:
            d2lrun.train(line)
        assert str(e.value) == (
            f"d2lrun.train takes overrides, not a command line ('{line}'). Fix: {fix}."
        )
    for args in (["-m optim.lr=0.1,0.2"], ["hydra.mode=MULTIRUN", "optim.lr=0.1,0.2"]):
        with pytest.raises(UsageError, match=re.escape("Fix: d2lrun.sweep('optim.lr=0.1,0.2').")):
            d2lrun.train(*args)  # said d2lrun '-m ...' in a shell; trained, then failed
    with pytest.raises(UsageError, match=r"^d2lrun.train takes overrides, not the command's flags"):
        d2lrun.train("--version")
    with pytest.raises(UsageError, match=r"Fix: d2lrun --cfg job optim\.lr=0\.1 in a shell, or "):
        d2lrun.train("--cfg", "job", "optim.lr=0.1")  # the whole command, its flag's value too
    with pytest.raises(UsageError, match=r"\(-cn\)\. Fix: overrides such as 'optim\.lr=0\.1'\.$"):
        d2lrun.train("-cn", "eval")  # said 'Fix: d2lrun -cn eval in a shell', which is refused
    for wrong in (("optim.lr", 0.1), (Path("x=1"),), (["trainer.epochs=1"], "seed=1")):
        with pytest.raises(UsageError, match=r"^d2lrun.train takes overrides as text, one KEY"):
            d2lrun.train(*wrong)  # it was AttributeError: ... has no attribute 'startswith'
    with pytest.raises(UsageError, match=r"^load_run needs a run folder\. Fix: load_run\('"):
        d2lrun.load_run()  # it was TypeError: expected str, bytes or os.PathLike, not NoneType
    run = d2lrun.train(["trainer.epochs=1", "trainer.progress=false"])
    assert run.summary["epochs_completed"] == 1
    # load_run's overrides as train's: Hydra's ConfigCompositionException was raised as it was
    for wrong, said in [("bogus=1", r"^bogus is not a key"), ("optim.lr=fast", r"^optim.lr=fast")]:
        with pytest.raises(UsageError, match=said):
            d2lrun.load_run(run.run_dir, overrides=[wrong])
    for call, fix in ((lambda: d2lrun.load_run(123), "load_run('outputs/DATE/TIME')"),
                      (lambda: d2lrun.report(None), "report('outputs/multirun/DATE/TIME')"),
                      (lambda: d2lrun.load_run(run.run_dir, overrides=[1]),
                       "load_run(RUN, overrides=['dataset.path=FILE'])")):  # fmt: skip
        with pytest.raises(UsageError, match=re.escape(f"Fix: d2lrun.{fix}.")):
            call()  # they were TypeError: expected str, bytes or os.PathLike object, not int
    loaded = d2lrun.load_run(run.run_dir, device=torch.device("cpu"))  # d2l.try_gpu() gives one
    assert loaded.device == torch.device("cpu")  # it was AttributeError: ... no 'partition'


def test_the_callers_logging_is_as_it_was_after_a_run_and_a_sweep(here):
    """Hydra's logging config left the root logger at INFO with its own handler: every library's
    and the notebook's INFO lines then printed to stdout, labelled [HYDRA]."""
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    d2lrun.train("trainer.epochs=1", "trainer.progress=false")
    d2lrun.sweep("trainer.epochs=1", "trainer.progress=false", "optim.lr=0.1,0.2")
    assert (root.level, list(root.handlers)) == before


def test_ctrl_c_before_the_first_epoch_raises_interrupted_and_leaves_no_folder(here, monkeypatch):
    import d2lrun.job

    def stopped(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(d2lrun.job, "build_data", stopped)  # Ctrl-C while the data loads
    with pytest.raises(Interrupted, match="^interrupted before anything was saved"):
        d2lrun.train("trainer.progress=false")
    assert run_folders(here) == []


@pytest.mark.parametrize("call", ["train('trainer.progress=false')", "load_run(RUN)"])
def test_ctrl_c_in_torchs_first_import_leaves_the_session_working(tmp_path, call):
    """The first call imports torch (about a second): a Ctrl-C (Jupyter's interrupt) in it left
    torch half-registered, and every later call, and the notebook's own import torch, failed."""
    first = run_module("trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert first.returncode == 0, first.stderr
    code = f"""if True:
        import importlib.abc, os, signal, sys
        class CtrlC(importlib.abc.MetaPathFinder):  # the interrupt, midway through torch's import
            def find_spec(self, name, *_):
                if name == "torch.nn":
                    sys.meta_path.remove(self)
                    os.kill(os.getpid(), signal.SIGINT)
        sys.meta_path.insert(0, CtrlC())
        import d2lrun
        from d2lrun.errors import Interrupted
        RUN = {str(tmp_path / "run")!r}
        try:
            d2lrun.{call}
        except Interrupted as e:
            print("interrupted:", e)
        print(d2lrun.{call}.summary["status"])
        import torch; print(torch.zeros(1).sum().item())"""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)  # fmt: skip
    lines = r.stdout.splitlines()
    assert r.returncode == 0, r.stdout + r.stderr
    assert lines[0] == "interrupted: interrupted before anything was saved."
    assert lines[-2:] == ["completed", "0.0"]


def test_a_run_stopped_by_ctrl_c_can_be_resumed_from_the_same_notebook(here, monkeypatch):
    """Its folder stayed locked until the kernel restarted: the 'Resume with:' it printed was
    refused as 'being written by another run now', here and from any shell."""
    import signal

    import d2lrun.job

    shown, format_row = [], d2lrun.job.format_row

    def ctrl_c_in_epoch_2(row, epochs):
        shown.append(row)
        if len(shown) == 2:
            signal.raise_signal(signal.SIGINT)
        return ""

    monkeypatch.setattr(d2lrun.job, "format_row", ctrl_c_in_epoch_2)
    with pytest.raises(Interrupted, match=r"after epoch \d; .* Resume with: d2lrun.train\(") as e:
        d2lrun.train("trainer.epochs=4", "trainer.progress=false")
    run_dir = re.search(r"d2lrun.train\('resume=(.+)'\)$", str(e.value))[1]  # as Python's call
    monkeypatch.setattr(d2lrun.job, "format_row", format_row)
    run = d2lrun.train(f"resume={run_dir}", f"hydra.run.dir={run_dir}", "trainer.progress=false")
    assert run.summary["status"] == "completed" and len(run.metrics) == 4


def test_a_k_fold_run_returns_its_folds(here):
    folds = d2lrun.train("dataset.folds=2", "trainer.epochs=1", "trainer.progress=false")
    assert [run.spec.fold for run in folds] == [[2, 0], [2, 1]]
    assert [run.run_dir.name for run in folds] == ["fold_0", "fold_1"]
    assert all(run.summary["status"] == "completed" for run in folds)


def test_a_csv_edited_between_two_runs_is_read_again(here):
    """One process (a notebook): the second run trains on the file as it is now."""
    args = ["dataset=csv", "dataset.path=t.csv", "dataset.target=y", "trainer.epochs=1",
            "trainer.progress=false"]  # fmt: skip
    Path("t.csv").write_text("x,y\n" + "".join(f"{i},{2 * i}\n" for i in range(100)))
    first = d2lrun.train(*args)
    Path("t.csv").write_text("x,y\n" + "".join(f"{i},{-i}\n" for i in range(20)))
    second = d2lrun.train(*args)
    # the first file's targets are 0 ... 198, the second's 0 ... -19
    assert first.spec.target_scale["mean"] > 0 > second.spec.target_scale["mean"]


def test_sweep_and_report_return_one_row_per_job(here):
    with pytest.warns(UserWarning, match=r"1 of 3 sweep jobs did not complete \(1 diverged\)"):
        table = d2lrun.sweep(
            "optim.lr=0.01,0.03,10",
            "trainer.epochs=2",
            "dataset.num_train=100",
            "trainer.progress=false",
        )
    assert table[["job", "optim.lr", "status"]].values.tolist() == [
        [1, 0.03, "completed"],
        [0, 0.01, "completed"],
        [2, 10, "diverged"],
    ]  # best first
    assert table["best_val_loss"].iloc[0] < table["best_val_loss"].iloc[1]
    [folder] = here.glob("outputs/multirun/*/*")
    pd.testing.assert_frame_equal(d2lrun.report(folder), table)
    with pytest.raises(UsageError, match=r"is not a folder\. Fix: d2lrun\.report\('outputs/multi"):
        d2lrun.report(here / "nowhere")


def test_a_second_joblib_sweep_runs_in_the_notebooks_folder_and_environment_of_its_time(
    here, monkeypatch
):
    """joblib's workers were reused: they kept the first sweep's cwd and environment, and the
    second sweep's jobs trained into the first folder's outputs/ (its table: 2 missing)."""
    args = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.epochs=${oc.env:EPOCHS}",
            "dataset.num_train=100", "trainer.progress=false"]  # fmt: skip
    for folder, epochs in (("a", 1), ("b", 2)):
        (here / folder).mkdir()
        monkeypatch.chdir(here / folder)  # %cd
        monkeypatch.setenv("EPOCHS", str(epochs))  # %env
        table = d2lrun.sweep(*args, "optim.lr=0.1,0.2")
        assert list(table["status"]) == ["completed"] * 2
        jobs = sorted(Path().glob("outputs/multirun/*/*/*/metrics.csv"))
        assert [len(pd.read_csv(j)) for j in jobs] == [epochs] * 2


def test_help_lists_the_logger_group_and_imports_no_logger():
    r = run_module("--help")
    assert r.returncode == 0, r.stderr
    assert "logger: mlflow, none, tensorboard" in r.stdout
    assert "logger=mlflow logger.tracking_uri=http://HOST:5000" in r.stdout
    code = (
        "import sys; sys.argv = ['d2lrun', '--help']; "
        "from d2lrun.cli import train_main; train_main(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'mlflow', 'tensorboard'}))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "[]"


def test_a_notebooks_python_random_stream_is_as_it_was_after_its_first_run(tmp_path):
    """The first d2lrun.train in a process imported rich, which draws from Python's random."""
    code = (
        "import random; random.seed(0); expected = random.random(); random.seed(0); import d2lrun; "
        f"d2lrun.train('trainer.epochs=1', 'trainer.progress=false', 'hydra.run.dir={tmp_path}'); "
        "print(random.random() == expected)"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "True", r.stdout + r.stderr


def test_a_notebooks_torch_settings_neither_change_a_run_nor_are_changed_by_it(here):
    """float64 by default and no_grad in the notebook: the run failed with a RuntimeError (addmv
    ... Double); and the notebook's random draws after d2lrun.train followed d2lrun's seed."""
    args = ["trainer.epochs=2", "trainer.progress=false"]
    plain = d2lrun.train(*args).metrics.drop(columns=TIMINGS)
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            torch.manual_seed(42)
            expected = torch.randn(3)
            torch.manual_seed(42)
            run = d2lrun.train(*args)
            assert torch.equal(torch.randn(3), expected)  # the notebook's stream, as it was
            torch.manual_seed(42)
            d2lrun.load_run(run.run_dir, overrides="seed=0")  # one override as a string too
            assert torch.equal(torch.randn(3), expected)
            assert not torch.is_grad_enabled()
        with torch.inference_mode():
            d2lrun.train(*args)
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)
    pd.testing.assert_frame_equal(run.metrics.drop(columns=TIMINGS), plain, check_exact=True)
    assert len(run.predict(torch.zeros(4, 2, dtype=torch.float64))) == 4
