"""d2lrun.tracking without the packages: what is logged (flattened config, metric columns), the
experiment's name, the MLflow store's path, the quick start-up check, reload's merge when a
logger changes; and when a run calls its tracker (each epoch once, the end after the files, on
every exit)."""

import json
import os
import signal
import time

import pytest
import torch
from omegaconf import OmegaConf

from d2lrun.config import checked, compose
from d2lrun.errors import Interrupted, RunFailed, UsageError
from d2lrun.reload import merge_overrides, resume_checkpoint, run_overrides
from d2lrun.stopping import stop_signals
from d2lrun.tracking import Tracker, experiment_name, flatten, metrics_of, why
from d2lrun.tracking.mlflow import quick_requests, unreachable


def test_flatten_gives_dotted_keys_and_scalars_as_yaml_writes_them():
    config = {
        "seed": 0,
        "resume": None,
        "optim": {"lr": 0.1, "name": "sgd"},
        "model": {"num_hiddens": [256, 128], "nested": {"flag": True}},
    }
    assert flatten(config) == {
        "seed": 0,
        "resume": "null",
        "optim.lr": 0.1,
        "optim.name": "sgd",
        "model.num_hiddens": "[256, 128]",
        "model.nested.flag": "true",
    }


def test_only_metrics_are_logged_not_the_epoch_or_timings():
    row = {
        "epoch": 3,
        "train_loss": 0.5,
        "val_acc": 0.75,
        "val_rmse": 1,
        "seconds": 2.0,
        "examples_per_s": 9.0,
    }
    assert metrics_of(row) == {"train_loss": 0.5, "val_acc": 0.75, "val_rmse": 1.0}


class Opened(Exception):
    """Raised by the stand-in for open_tracker: the job stops before any data."""


def opened_as(monkeypatch, names: list):
    """d2lrun.job's open_tracker records the experiment name it is given, then stops the job."""
    import d2lrun.job as job

    def open_tracker(cfg, run_dir, name, *args, **kwargs):
        names.append(name)
        raise Opened(name)

    monkeypatch.setattr(job, "open_tracker", open_tracker)


def tracked_name(tmp_path, monkeypatch, *overrides) -> str:
    """The MLflow experiment of `d2lrun OVERRIDES` (d2lrun.job.train_job names it)."""
    from d2lrun.job import train_job

    names = []
    opened_as(monkeypatch, names)
    with pytest.raises(Opened):
        train_job(compose(list(overrides)), tmp_path / "run", list(overrides), log=lambda *_: None)
    return names[0]


def test_experiment_name_is_the_key_else_the_preset_else_model_and_dataset(tmp_path, monkeypatch):
    cfg = compose(["logger=mlflow"])
    assert experiment_name(cfg, None, None) == "linreg-synthetic"
    assert experiment_name(cfg, "ch6_lenet", None) == "ch6_lenet"
    assert tracked_name(tmp_path, monkeypatch, "logger=mlflow") == "linreg-synthetic"
    preset = ["logger=mlflow", "experiment=ch6_lenet", "trainer.epochs=1"]
    assert tracked_name(tmp_path, monkeypatch, *preset) == "ch6_lenet"
    cfg = compose(["logger=mlflow", "logger.experiment_name=mine"])
    assert experiment_name(cfg, "ch6_lenet", None) == "mine"
    mine = ["logger=mlflow", "logger.experiment_name=mine", "experiment=ch6_lenet"]
    assert tracked_name(tmp_path, monkeypatch, *mine) == "mine"


def plan(sweep, *overrides):
    """The multirun.yaml a sweep with these command-line overrides leaves in its folder."""
    from omegaconf import OmegaConf

    basic = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    hydra = {"sweeper": {"_target_": basic, "params": None}, "overrides": {"task": list(overrides)}}
    OmegaConf.save({"hydra": hydra}, sweep / "multirun.yaml")


def test_a_sweep_over_models_is_one_experiment_named_after_its_folder(tmp_path, monkeypatch):
    """The name a sweep's job (d2lrun.sweeps.run_job) gives its tracker."""
    from d2lrun.sweeps import run_job, sweep_experiment

    names = []
    opened_as(monkeypatch, names)
    job = ["logger=mlflow", "model=mlp", "dataset=synthetic"]
    plan(tmp_path, "model=linreg,mlp", "dataset=synthetic")
    run_job(compose(job), tmp_path / "1", ["model=mlp"], tmp_path, 1)
    assert names == [f"sweep {tmp_path}"]
    plan(tmp_path, "optim.lr=0.1,0.3", "model=mlp")
    swept = ["optim.lr=0.1", "model=mlp"]
    run_job(compose([*job, "optim.lr=0.1"]), tmp_path / "0", swept, tmp_path, 0)
    assert names[1] == "mlp-synthetic"
    assert experiment_name(compose(job), None, f"sweep {tmp_path}") == f"sweep {tmp_path}"
    for swept in ("dataset=synthetic,kernel", "experiment=ch3_linreg_scratch,ch3_linreg_concise",
                  "+model=linreg,mlp"):  # fmt: skip
        plan(tmp_path, swept)
        assert sweep_experiment(tmp_path) == f"sweep {tmp_path}"
    plan(tmp_path, "seed=0,1", "model=mlp")
    assert sweep_experiment(tmp_path) is None  # one model on one dataset: its usual experiment


def test_a_relative_sqlite_store_is_saved_absolute_for_resume_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = checked(compose(["logger=mlflow", "logger.tracking_uri=sqlite:///outputs/mlflow.db"]))
    assert cfg.logger.tracking_uri == f"sqlite:///{tmp_path}/outputs/mlflow.db"
    # A run's checkpoint keeps its command line as typed, and its config: resume composes from those
    typed = ["logger=mlflow", "logger.tracking_uri=sqlite:///outputs/mlflow.db"]
    ckpt = {"overrides": typed, "config": OmegaConf.to_container(cfg, resolve=True)}
    again = run_overrides(ckpt)
    assert f"logger.tracking_uri='sqlite:///{tmp_path}/outputs/mlflow.db'" in again
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert checked(compose(again)).logger.tracking_uri == f"sqlite:///{tmp_path}/outputs/mlflow.db"
    server = checked(compose(["logger=mlflow", "logger.tracking_uri=http://host:5000"]))
    assert server.logger.tracking_uri == "http://host:5000"


def test_picking_another_logger_on_resume_drops_the_old_ones_keys():
    saved = ["logger=mlflow", "logger.tracking_uri='sqlite:////x/mlflow.db'", "optim.lr=0.1"]
    assert merge_overrides(saved, ["logger=none"]) == ["optim.lr=0.1", "logger=none"]
    assert merge_overrides(saved, ["logger=mlflow", "trainer.epochs=4"]) == [
        "logger.tracking_uri='sqlite:////x/mlflow.db'",
        "optim.lr=0.1",
        "logger=mlflow",
        "trainer.epochs=4",
    ]
    assert merge_overrides(saved, ["optim.lr=0.3"]) == [*saved[:2], "optim.lr=0.3"]


def test_the_start_up_check_uses_short_timeouts_and_puts_the_environment_back(monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")  # the user's own setting wins
    with quick_requests():
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"


def test_why_keeps_the_os_error_of_a_long_client_message():
    text = (
        "API request to http://127.0.0.1:1/api/2.0/mlflow/experiments/get-by-name "
        "failed with exception "
        "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded "
        "(Caused by NewConnectionError("
        "'<urllib3.connection.HTTPConnection object>: Failed to establish a new connection: "
        "[Errno 111] Connection refused'))"
    )
    assert why(Exception(text)) == "[Errno 111] Connection refused"
    assert why(Exception("first line\nsecond")) == "first line"


def test_a_store_that_mlflow_refuses_gets_a_fix_that_works(monkeypatch):
    """It said 'Fix: a writable place' for a folder that is writable, and 'a folder of files'
    for outputs/mlflow.db, meant as a SQLite file."""
    refusal = Exception(  # MLflow 3.17's MlflowException for file:./mlruns, abridged
        "The filesystem tracking backend (e.g., './mlruns') is in maintenance mode and will not "
        "receive further updates. Please migrate to a database backend (e.g., 'sqlite:///mlflow.db')"
        " ... If the filesystem backend is required for your workflow, set "
        "`MLFLOW_ALLOW_FILE_STORE=true` to opt out of this exception."
    )
    assert str(unreachable("file:./mlruns", refusal)) == (
        "logger.tracking_uri=file:./mlruns is a folder of files, which MLflow 3 no longer takes. "
        "Fix: logger.tracking_uri=sqlite:///outputs/mlflow.db (`mlflow migrate-filestore` moves "
        "its runs), or MLFLOW_ALLOW_FILE_STORE=true."
    )
    # A path is a folder store to MLflow: a database file's name was meant as sqlite:///FILE
    for typed, path in [
        ("outputs/mlflow.db", "outputs/mlflow.db"),
        ("file:///x/m.sqlite", "/x/m.sqlite"),
        ("m.sqlite3", "m.sqlite3"),
        ("~/m.db", "~/m.db"),  # it said sqlite:///~/m.db unquoted, which Hydra cannot read
    ]:
        fix = f"logger.tracking_uri=sqlite:///{path}"
        fix = f"\"logger.tracking_uri='sqlite:///{path}'\"" if "~" in path else fix
        assert str(unreachable(typed, refusal)) == (
            f"logger.tracking_uri={typed} is a path, which MLflow takes for a folder of files (a "
            f"store MLflow 3 no longer makes). Fix: {fix}."
        )
    # A server's database whose driver is missing: it said 'Fix: a writable place'
    missing = ModuleNotFoundError("No module named 'psycopg'", name="psycopg")
    assert str(unreachable("postgresql://me@db/mlflow", missing)) == (
        "logger.tracking_uri=postgresql://me@db/mlflow needs the database driver psycopg (No "
        "module named 'psycopg'). Fix: pip install 'psycopg[binary]', or "
        "logger.tracking_uri=sqlite:///outputs/mlflow.db."
    )
    denied = unreachable("sqlite:////ro/m.db", Exception("unable to open database file"))
    assert str(denied).endswith(
        "Fix: a writable place, e.g. logger.tracking_uri=sqlite:///outputs/mlflow.db."
    )
    # ftp://x: MLflow takes no such store at all, writable or not
    odd = unreachable("ftp://x", Exception("got unsupported URI 'ftp://x' for model registry"))
    assert str(odd).endswith(
        "Fix: a kind of store MLflow takes, e.g. logger.tracking_uri=sqlite:///outputs/mlflow.db."
    )
    # An address the command never typed says where it came from
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://h:5999")
    assert str(unreachable("http://h:5999", OSError("refused"))).startswith(
        "logger.tracking_uri=http://h:5999 (from MLFLOW_TRACKING_URI) cannot be reached (refused)"
    )


def test_an_empty_tracking_uri_is_refused_not_mlflows_own_store_in_the_cwd(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI= (set, empty): the run logged to ./mlflow.db and ./mlruns, not the
    documented outputs/mlflow.db, and saved '' in its checkpoint."""
    pytest.importorskip("mlflow")
    from d2lrun.tracking.mlflow import MLflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    cfg = checked(compose(["logger=mlflow"]))
    with pytest.raises(UsageError, match=r"^logger.tracking_uri is empty \(MLFLOW_TRACKING_URI"):
        MLflow(cfg, tmp_path / "run", "e", None, None, print)
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_store_that_cannot_be_a_database_is_refused_at_once(tmp_path, monkeypatch):
    """sqlite:///outputs (a folder) stood 110 s in MLflow's retries, 7 warnings, then failed."""
    pytest.importorskip("mlflow")
    from d2lrun.tracking.mlflow import MLflow

    (tmp_path / "outputs").mkdir()
    (tmp_path / "notes.txt").write_text("not a database")
    (tmp_path / "ro").mkdir(mode=0o555)  # refused as a user, not as root (who writes anyway)
    bad = {
        "outputs": f"names a folder, not a database file. Fix: logger.tracking_uri=sqlite:///"
        f"{tmp_path}/outputs/mlflow.db.",
        "notes.txt": f"cannot be used ({tmp_path}/notes.txt is not a SQLite database). Fix:",
        "notes.txt/x/m.db": f"cannot be used ({tmp_path}/notes.txt is not a writable folder). ",
        **({"ro/m.db": f"({tmp_path}/ro is not a writable folder)"} if os.getuid() else {}),
        # A store on a read-only disk (root too): 96 lines of MLflow's tracebacks, exit 0, nothing
        # tracked. As root only os.access tells it, which this test stands in for.
        "ro.db": f"cannot be used ({tmp_path}/ro.db is not writable). Fix:",
    }
    (tmp_path / "ro.db").write_bytes(b"SQLite format 3\0")
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: "ro" not in str(p) and access(p, mode))
    for path, says in bad.items():
        cfg = compose(["logger=mlflow", f"logger.tracking_uri=sqlite:///{tmp_path}/{path}"])
        start = time.monotonic()
        with pytest.raises(UsageError) as refused:
            MLflow(cfg, tmp_path / "run", "e", None, None, print)
        assert time.monotonic() - start < 5
        assert str(refused.value).startswith(f"logger.tracking_uri=sqlite:///{tmp_path}/{path} ")
        assert says in str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "outputs", "ro", "ro.db"]
    for uri in ("sqlite://", "sqlite:///:memory:"):  # its runs gone as the run ends, silently
        cfg = compose(["logger=mlflow", f"logger.tracking_uri={uri}"])
        with pytest.raises(UsageError, match=f"^logger.tracking_uri={uri} is a database in memory"):
            MLflow(cfg, tmp_path / "run", "e", None, None, print)
    cfg = compose(["logger=mlflow", "logger.tracking_uri=sqlite:x.db"])  # not said to be memory
    with pytest.raises(UsageError, match="^logger.tracking_uri=sqlite:x.db is not sqlite:///FILE"):
        MLflow(cfg, tmp_path / "run", "e", None, None, print)


class Recorder(Tracker):
    """A tracker that records what the run tells it, and when."""

    def __init__(self):
        self.calls = []

    def start(self, config, rows):
        self.calls.append(("start", [r["epoch"] for r in rows]))
        return "run-1"

    def log_epoch(self, row):
        self.calls.append(("epoch", row["epoch"]))

    def finish(self, status, summary, run_dir):
        self.calls.append(
            ("finish", status, summary["status"], sorted(p.name for p in run_dir.iterdir()))
        )


def recorder(monkeypatch) -> Recorder:
    """The Recorder that d2lrun.job.train_job opens as its tracker from now on."""
    import d2lrun.job as job

    tracker = Recorder()
    monkeypatch.setattr(job, "open_tracker", lambda *args, **kwargs: tracker)
    return tracker


def train(run, *overrides):
    """train_job in this process, as `d2lrun OVERRIDES` composes it."""
    from d2lrun.job import train_job

    args = ["dataset.num_train=100", "trainer.progress=false", *overrides]
    resume = [a.partition("=")[2] for a in args if a.startswith("resume=")]
    ckpt = resume_checkpoint(resume[0]) if resume else None
    args = run_overrides(ckpt, args) if ckpt else args
    return train_job(compose(args), run, args, ckpt, log=lambda *_: None)


def test_the_tracker_gets_each_epoch_once_and_the_end_after_the_files(tmp_path, monkeypatch):
    tracker, run = recorder(monkeypatch), tmp_path / "run"
    train(run, "trainer.epochs=3")
    assert tracker.calls[:4] == [("start", []), ("epoch", 1), ("epoch", 2), ("epoch", 3)]
    assert tracker.calls[4][:3] == ("finish", "completed", "completed") and len(tracker.calls) == 5
    assert {"metrics.json", "metrics.csv", "curves.png", "model.pt"} <= set(tracker.calls[4][3])
    assert torch.load(run / "last.pt", weights_only=True)["mlflow_run_id"] == "run-1"

    tracker = recorder(monkeypatch)
    train(tmp_path / "more", f"resume={run}", "trainer.epochs=5")
    assert tracker.calls[:3] == [("start", [1, 2, 3]), ("epoch", 4), ("epoch", 5)]  # it has 1-3


def test_best_metric_is_a_series_a_resumed_run_goes_on_with(tmp_path, monkeypatch):
    """best_<metric> was logged at its epoch as each attempt ended: a run interrupted and resumed
    had two points at one step, and points that the same run uninterrupted did not have."""
    import pandas as pd

    logged = {}
    monkeypatch.setattr(Recorder, "start", lambda self, config, rows: logged.update(
        {r["epoch"]: r["best_val_loss"] for r in rows}))  # fmt: skip
    monkeypatch.setattr(Recorder, "log_epoch", lambda self, row: logged.update(
        {row["epoch"]: logged.get(row["epoch"], []) + [row["best_val_loss"]]}))  # fmt: skip
    recorder(monkeypatch)
    train(tmp_path / "first", "trainer.epochs=2", "optim.lr=0.01")
    logged.clear()  # a new folder's tracked run has its earlier epochs again, then the new ones
    train(tmp_path / "more", f"resume={tmp_path / 'first'}", "trainer.epochs=5")
    val_loss = pd.read_csv(tmp_path / "more" / "metrics.csv")["val_loss"]
    assert logged == {1: val_loss[0], 2: val_loss[:2].min(), 3: [val_loss[:3].min()],
                      4: [val_loss[:4].min()], 5: [val_loss.min()]}  # fmt: skip


@pytest.mark.parametrize(
    "error,status,raised",
    [
        (KeyboardInterrupt, "interrupted", Interrupted),
        (OSError(28, "No space"), "failed", RunFailed),
    ],
)
def test_an_interrupted_or_failed_run_still_ends_its_tracked_run(
    tmp_path, monkeypatch, error, status, raised
):
    import d2lrun.trainer as trainer

    tracker, real, epochs = recorder(monkeypatch), trainer.train_one_epoch, []

    def train_one_epoch(*args, **kwargs):
        epochs.append(1)
        if len(epochs) == 2:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", train_one_epoch)
    with pytest.raises(raised):  # the run still ends as it would untracked (Ctrl-C: Interrupted)
        train(tmp_path / "run", "trainer.epochs=3")
    assert tracker.calls[:2] == [("start", []), ("epoch", 1)]
    assert tracker.calls[2][:3] == ("finish", status, status) and len(tracker.calls) == 3
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())  # the record says so
    assert (summary["status"], summary["epochs_completed"]) == (status, 1)


def test_a_k_fold_run_is_tracked_as_one_run_its_mean_its_metrics_its_folds_under_it(
    tmp_path, monkeypatch
):
    """Its folds were tracked as unrelated runs, and the mean, §4.10's result, in none of them."""
    import d2lrun.job
    import d2lrun.kfold

    opened = []

    def open_tracker(cfg, run_dir, name, ckpt, sweep_dir, log, kfold=None, parent=None):
        calls, tracker = [], Tracker()
        tracker.start = lambda config, rows: calls.append(("start", rows)) or run_dir.name
        tracker.log_epoch = lambda row: calls.append(("epoch", row))
        tracker.finish = lambda status, summary, folder: calls.append(
            (status, summary.get("epochs_completed"), sorted(p.name for p in folder.iterdir()))
        )
        opened.append((run_dir.name, kfold, parent, calls))  # fmt: skip
        return tracker

    for module in (d2lrun.job, d2lrun.kfold):
        monkeypatch.setattr(module, "open_tracker", open_tracker)
    args = ["dataset.num_train=100", "trainer.progress=false", "dataset.folds=2"]
    summary = d2lrun.kfold.train(compose(args), tmp_path / "run", args, log=lambda *_: None)
    assert [o[:3] for o in opened] == [("run", 2, None), ("fold_0", None, "run"),
                                       ("fold_1", None, "run")]  # fmt: skip
    mean, best = summary["kfold"]["mean"], summary["best"]
    assert best == {"epoch": 3, "metric": "val_loss", "value": mean["val_loss"]}
    assert opened[0][3] == [
        ("start", []),
        ("epoch", mean | {"epoch": 3, "best_val_loss": mean["val_loss"]}),
        ("completed", 1, ["fold_0", "fold_1", "metrics.json"]),
    ]

    # A signal as the mean prints waits for its metrics.json and the tracked run's end: it said
    # 'interrupted before anything was saved', and the tracked run stayed running
    def log(line):
        if line.startswith("2-fold cross-validation"):
            signal.raise_signal(signal.SIGTERM)

    opened.clear()
    with stop_signals(), pytest.raises(Interrupted) as e:
        d2lrun.kfold.train(compose(args), tmp_path / "late", args, log=log)
    assert (str(e.value), e.value.exit_code) == (
        f"interrupted by SIGTERM as the run ended (completed); its files are all written in "
        f"{tmp_path / 'late'}.", 143)  # fmt: skip
    assert json.loads((tmp_path / "late" / "metrics.json").read_text())["status"] == "completed"
    assert [c[0] for c in opened[0][3]] == ["start", "epoch", "completed"]
    # Stopped in fold 2, it ends to go on; in fold 1's first epoch, as a run that never started
    step = d2lrun.optim.Optimizer.step
    for steps, epochs in [(3 * 5 + 2, 1), (2, 0)]:  # 5 batches an epoch
        opened.clear()
        calls = {"n": 0}

        def stopped(self, steps=steps, calls=calls):
            calls["n"] += 1
            if calls["n"] == steps:
                raise KeyboardInterrupt
            return step(self)

        monkeypatch.setattr(d2lrun.optim.Optimizer, "step", stopped)
        with pytest.raises((Interrupted, KeyboardInterrupt)):
            d2lrun.kfold.train(compose(args), tmp_path / str(steps), args, log=lambda *_: None)
        assert opened[0][3][-1][:2] == ("interrupted", epochs)
