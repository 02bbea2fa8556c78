"""logger=tensorboard and logger=mlflow end to end with the real packages: what each run logged is
read back with each tool's own reader (TensorBoard's event accumulator and its HTTP data API,
MlflowClient), never by parsing files; and a logger that cannot work fails before training."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import ROOT, run_module

FAST = ["trainer.progress=false", "dataset.num_train=200"]
NOT_METRICS = ("epoch", "seconds", "examples_per_s")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("d2lrun: error: "), r.stderr
    return lines[0]


def metrics_csv(run: Path) -> pd.DataFrame:
    rows = pd.read_csv(run / "metrics.csv")
    return rows[[c for c in rows.columns if c not in NOT_METRICS or c == "epoch"]]


def wait_for(url: str, process: subprocess.Popen, log: Path, seconds: float = 90) -> str:
    """What url answers once the server that process runs is up; fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited: {log.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {seconds} s: {log.read_text()[-2000:]}")


def server(args: list, log: Path, cwd: Path) -> subprocess.Popen:
    """A server process in a session of its own, so that stop() ends its workers too."""
    with open(log, "w") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("tensorboard") / "run"
    r = run_module("logger=tensorboard", "trainer.epochs=3", *FAST, f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr
    return run


def test_tensorboard_event_files_hold_every_epoch_and_the_config_as_hparams(tensorboard_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    events = EventAccumulator(str(tensorboard_run / "tensorboard"))
    events.Reload()
    rows = metrics_csv(tensorboard_run)
    metrics = [c for c in rows.columns if c != "epoch"]
    assert set(events.Tags()["scalars"]) == {*metrics, "best_val_loss"}
    for name in metrics:  # float32 in the event file
        assert [e.step for e in events.Scalars(name)] == [1, 2, 3]
        assert [e.value for e in events.Scalars(name)] == pytest.approx(
            rows[name].tolist(), rel=1e-6
        )
    best = events.Scalars("best_val_loss")  # each epoch's best so far, once
    assert [e.step for e in best] == [1, 2, 3]
    assert [e.value for e in best] == pytest.approx(rows["val_loss"].cummin().tolist(), rel=1e-6)

    hparams = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(hparams["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optim.lr"].number_value == 0.03
    assert start.hparams["model.name"].string_value == "linreg"
    assert start.hparams["dataset.w"].string_value == "[2, -3.4]"
    assert start.hparams["status"].string_value == "completed"
    end = HParamsPluginData.FromString(hparams["_hparams_/session_end_info"]).session_end_info
    assert Status.Name(end.status) == "STATUS_SUCCESS"
    experiment = HParamsPluginData.FromString(hparams["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {*metrics, "best_val_loss"}


def test_a_run_resumed_in_place_shows_its_last_status_in_the_hparams_view(tmp_path):
    """Stopped, then resumed in its folder: TensorBoard showed the first status, interrupted."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    from d2lrun.tracking.tensorboard import TensorBoard

    rows, sessions = [], []
    # One epoch each, as a run, its resume, and their resume: TensorBoard's own session status
    # (the view's Status filter) said success for each; now as the run ended
    for status in ("interrupted", "diverged", "completed"):
        time.sleep(1.05 if rows else 0)  # apart as attempts are: TensorBoard orders a folder's
        tracker = TensorBoard(tmp_path, print)  # event files by their names' second, then uid
        tracker.start({"optim": {"lr": 0.1}}, list(rows))
        rows.append({"epoch": len(rows) + 1, "val_loss": 1.0 / (len(rows) + 1)})
        tracker.log_epoch(rows[-1])
        tracker.finish(status, {"final": rows[-1]}, tmp_path)
        events = EventAccumulator(str(tmp_path / "tensorboard"))
        events.Reload()
        hparams = events.PluginTagToContent("hparams")
        start = HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
        end = HParamsPluginData.FromString(hparams["_hparams_/session_end_info"])
        sessions.append((start.session_start_info.hparams["status"].string_value,
                         Status.Name(end.session_end_info.status)))  # fmt: skip
    assert sessions == [("interrupted", "STATUS_UNKNOWN"), ("diverged", "STATUS_FAILURE"),
                        ("completed", "STATUS_SUCCESS")]  # fmt: skip
    assert [e.step for e in events.Scalars("val_loss")] == [1, 2, 3]  # each epoch once


def test_a_tensorboard_write_that_fails_mid_run_is_a_note_not_a_failed_run(
    tmp_path, capfd, monkeypatch
):
    """A full disk (or a folder made read-only) under tensorboard/: 60 lines of its writer
    thread's traceback, then the run ended 'failed', and finish's own write failing in turn hid
    the error that said how to resume."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    from d2lrun.config import compose
    from d2lrun.job import train_job

    write, writes, lines = RecordWriter.write, [], []

    def full_after_two(self, data):  # the file version record and epoch 1's scalars
        writes.append(data)
        if len(writes) > 2:
            raise OSError(28, "No space left on device")
        return write(self, data)

    args = ["logger=tensorboard", "trainer.epochs=3", *FAST]
    monkeypatch.setattr(RecordWriter, "write", full_after_two)
    summary = train_job(compose(args), tmp_path / "run", args, log=lines.append)
    assert summary["status"] == "completed"
    notes = [line for line in lines if line.startswith("note:")]
    assert notes == [
        f"note: TensorBoard logging to {tmp_path / 'run' / 'tensorboard'} stopped ([Errno 28] No "
        f"space left on device); training goes on"
    ]
    time.sleep(0.5)  # the writer's thread has ended
    assert "Traceback" not in capfd.readouterr().err


def test_a_tensorboard_server_shows_the_runs_scalars(tensorboard_run, tmp_path):
    port, log = free_port(), tmp_path / "tensorboard.log"
    exe = BIN / "tensorboard"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "tensorboard.main"]
    process = server(
        [
            *command,
            "--logdir",
            str(tensorboard_run.parent),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast=false",
        ],
        log,
        tmp_path,
    )
    try:
        base = f"http://127.0.0.1:{port}/data/plugin/scalars"
        deadline = time.monotonic() + 90
        while "val_loss" not in json.loads(wait_for(f"{base}/tags", process, log)).get(
            "run/tensorboard", {}
        ):
            assert time.monotonic() < deadline, "tensorboard did not load the run"
            time.sleep(0.5)
        query = urllib.parse.urlencode({"run": "run/tensorboard", "tag": "val_loss"})
        points = json.loads(wait_for(f"{base}/scalars?{query}", process, log))
        rows = metrics_csv(tensorboard_run)
        assert [step for _, step, _ in points] == rows["epoch"].tolist()
        assert [value for _, _, value in points] == pytest.approx(
            rows["val_loss"].tolist(), rel=1e-6
        )
    finally:
        stop(process)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store: creating one takes seconds (its migrations), copying it
    none."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def store(empty_store: Path, path: Path) -> str:
    """A copy of the empty store at path, as a tracking URI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_store, path)
    return f"sqlite:///{path}"


def mlflow_history(client, run_id: str, rows: pd.DataFrame) -> None:
    """Each metric's MLflow history, step by step, is the metrics.csv column."""
    for name in [c for c in rows.columns if c != "epoch"]:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
        assert history == list(zip(rows["epoch"], rows[name], strict=True)), name


def test_an_mlflow_run_has_params_per_epoch_metrics_artifacts_and_tags(tmp_path, empty_store):
    from mlflow import MlflowClient

    uri, run = store(empty_store, tmp_path / "mlflow.db"), tmp_path / "run"
    r = run_module(
        "logger=mlflow",
        f"logger.tracking_uri={uri}",
        "trainer.epochs=2",
        *FAST,
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""

    client = MlflowClient(uri)
    run_id = torch.load(run / "last.pt", weights_only=True)["mlflow_run_id"]
    logged = client.get_run(run_id)
    assert client.get_experiment(logged.info.experiment_id).name == "linreg-synthetic"
    assert logged.info.status == "FINISHED"
    assert logged.data.tags["d2lrun.status"] == "completed"
    assert logged.data.tags["d2lrun.run_dir"] == str(run)
    assert "d2lrun.sweep_dir" not in logged.data.tags
    params = logged.data.params
    assert (params["optim.lr"], params["model.name"], params["trainer.epochs"]) == (
        "0.03",
        "linreg",
        "2",
    )
    assert params["logger.tracking_uri"] == uri
    mlflow_history(client, run_id, metrics_csv(run))
    assert (
        logged.data.metrics["best_val_loss"]
        == json.loads((run / "metrics.json").read_text())["best"]["value"]
    )
    assert {a.path for a in client.list_artifacts(run_id)} == {
        "curves.png",
        "metrics.json",
        "model.pt",
    }
    assert not (
        tmp_path / "mlruns"
    ).exists()  # artifacts go beside the SQLite file, not into the cwd


def test_resume_continues_the_checkpoints_mlflow_run_from_another_folder(tmp_path, empty_store):
    from mlflow import MlflowClient

    store(empty_store, tmp_path / "start" / "store" / "mlflow.db")
    (tmp_path / "elsewhere").mkdir()
    r = run_module(
        "logger=mlflow",
        "logger.tracking_uri=sqlite:///store/mlflow.db",
        "trainer.epochs=2",
        *FAST,
        "hydra.run.dir=../runs/first",
        cwd=tmp_path / "start",
    )
    assert r.returncode == 0, r.stderr
    # No logger= or tracking URI given again: the run's own, and its store, with its relative path.
    r = run_module(
        "resume=../runs/first",
        "trainer.epochs=4",
        "logger.experiment_name=other",  # it made 'other', and left it empty
        "hydra.run.dir=../runs/resumed",
        *FAST,
        cwd=tmp_path / "elsewhere",
    )
    assert r.returncode == 0, r.stderr
    first, resumed = (
        torch.load(tmp_path / "runs" / d / "last.pt", weights_only=True)["mlflow_run_id"]
        for d in ("first", "resumed")
    )
    assert first == resumed

    client = MlflowClient(f"sqlite:///{tmp_path / 'start' / 'store' / 'mlflow.db'}")
    assert (
        len(client.search_runs([client.get_experiment_by_name("linreg-synthetic").experiment_id]))
        == 1
    )
    logged = client.get_run(resumed)
    mlflow_history(
        client, resumed, metrics_csv(tmp_path / "runs" / "resumed")
    )  # epochs 1-4, once each
    best = sorted(m.step for m in client.get_metric_history(resumed, "best_val_loss"))
    assert best == [1, 2, 3, 4]  # each epoch's best so far, once: the attempts' ends add none
    assert logged.info.status == "FINISHED"
    assert logged.data.tags["d2lrun.run_dir"] == str(tmp_path / "runs" / "resumed")
    assert logged.data.tags["d2lrun.resumed_from"] == str(tmp_path / "runs" / "first")
    assert logged.data.params["trainer.epochs"] == "2"  # MLflow keeps a param's first value
    assert client.get_experiment_by_name("other") is None  # it goes on in its experiment


def test_each_job_of_a_sweep_over_resume_is_an_mlflow_run_of_its_own(tmp_path, empty_store):
    """Job 0 of `d2lrun -m resume=RUN optim.lr=...` went on with RUN's own MLflow run: RUN's
    record became job 0's (its run_dir tag, its metrics.json), beside RUN's params."""
    from mlflow import MlflowClient

    uri = store(empty_store, tmp_path / "mlflow.db")
    base = tmp_path / "base"
    args = ["logger=mlflow", f"logger.tracking_uri={uri}", *FAST]
    r = run_module(*args, "trainer.epochs=2", f"hydra.run.dir={base}")
    assert r.returncode == 0, r.stderr
    first = torch.load(base / "last.pt", weights_only=True)["mlflow_run_id"]
    sweep = ["-m", f"resume={base}", "optim.lr=0.01,0.1", "trainer.epochs=3"]
    r = run_module(*sweep, *FAST, f"hydra.sweep.dir={tmp_path / 'sw'}")
    assert r.returncode == 0, r.stderr
    ids = [torch.load(tmp_path / "sw" / j / "last.pt", weights_only=True)["mlflow_run_id"]
           for j in "01"]  # fmt: skip
    assert len({first, *ids}) == 3
    client = MlflowClient(uri)
    kept = client.get_run(first)
    assert kept.data.tags["d2lrun.run_dir"] == str(base)
    assert max(m.step for m in client.get_metric_history(first, "train_loss")) == 2
    for job, run_id in enumerate(ids):
        run = client.get_run(run_id)
        assert run.data.params["optim.lr"] == ["0.01", "0.1"][job]
        assert run.data.tags["d2lrun.resumed_from"] == str(base)


def test_a_killed_run_resumed_from_an_earlier_epoch_ends_its_old_mlflow_run(
    tmp_path, empty_store, monkeypatch, capsys
):
    """kill -9 after the store had an epoch that last.pt had not: resume= started a new MLflow
    run, as it says, and the old one stayed RUNNING for ever."""
    from mlflow import MlflowClient

    from d2lrun import app
    from d2lrun.files import hold

    uri, run = store(empty_store, tmp_path / "mlflow.db"), tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    app.train(["logger=mlflow", f"logger.tracking_uri={uri}", "trainer.epochs=3", *FAST,
               f"hydra.run.dir={run}"])  # fmt: skip
    ckpt = torch.load(run / "last.pt", weights_only=True)
    client, old = MlflowClient(uri), ckpt["mlflow_run_id"]
    client.update_run(old, "RUNNING")  # as kill -9 in epoch 3 leaves it, last.pt at epoch 1
    ckpt |= {"epoch": 1, "history": ckpt["history"][:1]}
    torch.save(ckpt, run / "last.pt")
    for name in ("best.pt", "model.pt", "metrics.json"):
        (run / name).unlink()
    lock = hold(run)  # its run goes on (resume= into another folder branches off it): left be
    app.train([f"resume={run}", f"hydra.run.dir={tmp_path / 'branch'}"])
    assert client.get_run(old).info.status == "RUNNING"
    lock.close()  # killed: ended as such, where resume= says it starts a new run
    resumed = app.train([f"resume={run}"])
    assert f"note: MLflow run {old} has epochs after epoch 1; new run" in capsys.readouterr().out
    new = torch.load(resumed / "last.pt", weights_only=True)["mlflow_run_id"]
    assert new != old and client.get_run(new).info.status == "FINISHED"
    assert client.get_run(old).info.status == "KILLED"


def test_a_k_fold_run_is_one_mlflow_run_its_folds_nested_and_resumed_under_it(
    tmp_path, empty_store, monkeypatch
):
    """§4.10's k-fold run logged K runs named TIME/fold_i, unlinked, and its mean nowhere."""
    from mlflow import MlflowClient

    import d2lrun.optim
    from d2lrun import app
    from d2lrun.errors import Interrupted

    uri, run = store(empty_store, tmp_path / "mlflow.db"), tmp_path / "run"
    args = ["logger=mlflow", f"logger.tracking_uri={uri}", "dataset.folds=3", "trainer.epochs=2",
            *FAST, f"hydra.run.dir={run}"]  # fmt: skip
    step, calls = d2lrun.optim.Optimizer.step, {"n": 0}

    def ctrl_c_in_fold_2(self):  # in its second epoch (14 batches of 10 an epoch)
        calls["n"] += 1
        if calls["n"] == 2 * 14 + 14 + 5:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(d2lrun.optim.Optimizer, "step", ctrl_c_in_fold_2)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Interrupted, match="^fold 2/3: interrupted after epoch 1"):
        app.train(args)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("linreg-synthetic").experiment_id
    [stopped] = client.search_runs([experiment], "tags.`d2lrun.kfold` = '3'")
    assert stopped.info.status == "KILLED"

    monkeypatch.setattr(d2lrun.optim.Optimizer, "step", step)
    run = run.rename(tmp_path / "moved")  # found by its first fold's run, not by its path
    app.train([f"resume={run}"])
    runs = client.search_runs([experiment])
    [whole] = [r for r in runs if r.data.tags["d2lrun.run_dir"] == str(run)]
    folds = sorted((r for r in runs if r is not whole), key=lambda r: r.info.run_name[-6:])
    assert whole.info.run_id == stopped.info.run_id and len(runs) == 4  # one run, as resumed
    assert whole.info.status == "FINISHED" and whole.data.tags["d2lrun.status"] == "completed"
    assert [r.data.tags["d2lrun.run_dir"] for r in folds] == [  # fold 1 completed before
        str(tmp_path / "run" / "fold_0"), str(run / "fold_1"), str(run / "fold_2")]  # fmt: skip
    assert {r.data.tags["mlflow.parentRunId"] for r in folds} == {whole.info.run_id}
    mean = json.loads((run / "metrics.json").read_text())["kfold"]["mean"]
    assert whole.data.metrics == pytest.approx(
        {k: v for k, v in mean.items() if k not in NOT_METRICS}
        | {"best_val_loss": mean["val_loss"]}
    )
    assert [m.step for m in client.get_metric_history(whole.info.run_id, "val_loss")] == [2]
    assert whole.data.params["dataset.folds"] == "3"

    # One fold going on as a run of its own: its own MLflow run, the nested fold's left as it was
    one = tmp_path / "one"
    app.train([f"resume={run / 'fold_1'}", "trainer.epochs=3", f"hydra.run.dir={one}"])
    [alone] = client.search_runs([experiment], f"tags.`d2lrun.run_dir` = '{one}'")
    assert "mlflow.parentRunId" not in alone.data.tags
    assert [m.step for m in client.get_metric_history(alone.info.run_id, "val_loss")] == [1, 2, 3]
    fold = client.get_run(folds[1].info.run_id)
    assert fold.data.tags["d2lrun.run_dir"] == str(run / "fold_1")
    assert [m.step for m in client.get_metric_history(fold.info.run_id, "val_loss")] == [1, 2]
    # Going on in the fold's own folder: the fold's run, still nested, no other
    app.train([f"resume={run / 'fold_2'}", "trainer.epochs=3", f"hydra.run.dir={run / 'fold_2'}"])
    fold = client.get_run(folds[2].info.run_id)
    assert [m.step for m in client.get_metric_history(fold.info.run_id, "val_loss")] == [1, 2, 3]
    assert fold.data.tags["mlflow.parentRunId"] == whole.info.run_id
    assert len(client.search_runs([experiment])) == 5  # the 4, and the fold alone in one/
    # A new k-fold run into the folder of one deleted: a new MLflow run, not the old one's
    shutil.rmtree(run)
    app.train([*args[:-1], f"hydra.run.dir={run}"])
    assert len(client.search_runs([experiment], "tags.`d2lrun.kfold` = '3'")) == 2


def test_an_artifact_upload_that_fails_still_ends_the_mlflow_run(
    tmp_path, empty_store, monkeypatch
):
    """A read-only mlartifacts/: the note, then the MLflow run stayed RUNNING for ever."""
    from mlflow import MlflowClient

    from d2lrun.config import compose
    from d2lrun.job import train_job

    uri, lines = store(empty_store, tmp_path / "mlflow.db"), []
    args = ["logger=mlflow", f"logger.tracking_uri={uri}", "trainer.epochs=1", *FAST]

    def refused(self, run_id, local_path, artifact_path=None):
        raise PermissionError(1, "Operation not permitted", str(tmp_path / "mlartifacts"))

    monkeypatch.setattr(MlflowClient, "log_artifact", refused)
    summary = train_job(compose(args), tmp_path / "run", args, log=lines.append)
    assert summary["status"] == "completed"
    assert [line for line in lines if line.startswith("note:")] == [
        f"note: MLflow logging to {uri} stopped ([Errno 1] Operation not permitted); training "
        f"goes on"
    ]
    run_id = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["mlflow_run_id"]
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"


def test_a_sweep_into_a_deleted_mlflow_experiment_is_refused_before_its_jobs(tmp_path, empty_store):
    """Each job failed with the Fix to restore it, in a sweep folder: one line, exit 1."""
    from mlflow import MlflowClient

    uri = store(empty_store, tmp_path / "mlflow.db")
    args = ["logger=mlflow", f"logger.tracking_uri={uri}", "trainer.epochs=1", *FAST]
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("div"))
    client.delete_experiment(client.create_experiment("linreg-synthetic"))  # the default name
    for named in (["logger.experiment_name=div"], []):
        r = run_module("-m", *args, *named, "optim.lr=0.1,0.2", "hydra.sweep.dir=s", cwd=tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        name = "div" if named else "linreg-synthetic"
        assert one_error_line(r).startswith(f"d2lrun: error: the MLflow experiment '{name}' was "
                                            f"deleted. Fix: restore it")  # fmt: skip
        assert not (tmp_path / "s").exists()
    r = run_module("-m", *args, "model=linreg,mlp", "dataset=synthetic", "hydra.sweep.dir=s",
                   cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr  # a sweep over models: a new experiment of its own


def test_a_diverged_run_is_a_failed_mlflow_run_tagged_diverged(tmp_path):
    from mlflow import MlflowClient

    # A new store in a new folder: created, and its INFO lines kept off stderr (one error line).
    uri, run = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}", tmp_path / "run"
    r = run_module(
        "logger=mlflow", f"logger.tracking_uri={uri}", "optim.lr=10", *FAST, f"hydra.run.dir={run}"
    )
    assert r.returncode == 1 and "diverged" in one_error_line(r)
    client = MlflowClient(uri)
    [logged] = client.search_runs([client.get_experiment_by_name("linreg-synthetic").experiment_id])
    assert (logged.info.status, logged.data.tags["d2lrun.status"]) == ("FAILED", "diverged")
    assert {a.path for a in client.list_artifacts(logged.info.run_id)} == {"metrics.json"}


def test_processes_that_open_a_new_sqlite_store_at_once_all_log_to_it(tmp_path):
    """A joblib sweep's jobs each made the new store's tables: all but one failed ('table
    experiments already exists') with a Fix that named the store in use."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    code = (
        "import sys; from pathlib import Path; from omegaconf import OmegaConf; "
        "from d2lrun.tracking.mlflow import MLflow; "
        f"cfg = OmegaConf.create({{'logger': {{'tracking_uri': '{uri}'}}}}); "
        "MLflow(cfg, Path(sys.argv[1]), 'sweep', None, None, print).start({}, [])"
    )
    jobs = [
        subprocess.Popen([sys.executable, "-c", code, str(i)], stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    errors = [job.communicate()[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 3, errors
    client = MlflowClient(uri)
    assert len(client.search_runs([client.get_experiment_by_name("sweep").experiment_id])) == 3


def test_a_deleted_experiments_fix_restores_it_as_typed(tmp_path):
    """Its Fix named no store: as typed, `mlflow experiments restore` looked in ./mlflow.db."""
    from mlflow import MlflowClient
    from omegaconf import OmegaConf

    from d2lrun.errors import UsageError
    from d2lrun.tracking.mlflow import MLflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("gone"))
    cfg = OmegaConf.create({"logger": {"tracking_uri": uri}})
    with pytest.raises(UsageError, match="was deleted") as e:
        MLflow(cfg, tmp_path / "run", "gone", None, None, print)
    fix = str(e.value).partition("Fix: restore it (")[2].partition(")")[0]
    (tmp_path / "elsewhere").mkdir()
    command = fix.replace(" mlflow ", f" {BIN / 'mlflow'} ", 1)
    assert subprocess.run(command, shell=True, cwd=tmp_path / "elsewhere").returncode == 0
    assert client.get_experiment_by_name("gone").lifecycle_stage == "active"


def test_a_run_stopped_before_its_first_epoch_leaves_no_mlflow_run(tmp_path, empty_store):
    """Its folder went, but a KILLED MLflow run named it, one more each time it was run again."""
    from mlflow import MlflowClient
    from omegaconf import OmegaConf

    from d2lrun.tracking.mlflow import MLflow

    uri = store(empty_store, tmp_path / "mlflow.db")
    cfg = OmegaConf.create({"logger": {"tracking_uri": uri}})
    for status, epochs in [("interrupted", 0), ("interrupted", 1), ("diverged", 0)]:
        tracker = MLflow(cfg, tmp_path / status, "e", None, None, print)
        tracker.start({}, [])
        tracker.finish(status, {"epochs_completed": epochs}, tmp_path)
    client = MlflowClient(uri)
    kept = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert sorted(r.info.status for r in kept) == ["FAILED", "KILLED"]


def test_ctrl_c_as_mlflow_is_imported_leaves_it_whole_for_the_next_run(tmp_path):
    """In a Python session (a notebook), Ctrl-C during mlflow's first import left it half
    imported: every later run with logger=mlflow failed, 'partially initialized module 'mlflow'
    has no attribute ...' or 'cannot be used', until the kernel restarted."""
    script = """if True:
        import os, signal, sys
        import d2lrun
        from d2lrun.errors import Interrupted

        class CtrlC:  # pressed as mlflow, importing itself, imports mlflow.tracking
            def find_spec(self, name, path=None, target=None):
                if name == "mlflow.tracking" and not sys.meta_path.remove(self):
                    os.kill(os.getpid(), signal.SIGINT)

        sys.meta_path.insert(0, CtrlC())
        args = ["logger=mlflow", "trainer.epochs=1", "trainer.progress=false"]
        try:
            d2lrun.train(*args)
        except Interrupted as e:
            print("first:", e)
        print("then:", d2lrun.train(*args).summary["status"])
    """
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    lines = r.stdout.splitlines()
    assert lines[0] == "first: interrupted before anything was saved.", r.stderr
    assert lines[-1] == "then: completed", r.stderr


def test_a_sweep_logs_over_http_to_an_mlflow_server_in_one_experiment(tmp_path):
    from mlflow import MlflowClient

    port, log = free_port(), tmp_path / "mlflow-server.log"
    exe = BIN / "mlflow"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]
    process = server(
        [
            *command,
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        log,
        tmp_path,
    )
    uri, sweep = f"http://127.0.0.1:{port}", tmp_path / "sweep"
    try:
        wait_for(f"{uri}/health", process, log)
        r = run_module(
            "-m",
            "logger=mlflow",
            f"logger.tracking_uri={uri}",
            "optim.lr=0.01,0.03",
            "trainer.epochs=2",
            *FAST,
            f"hydra.sweep.dir={sweep}",
        )
        assert r.returncode == 0, r.stderr

        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("linreg-synthetic")
        runs = {
            run.data.tags["d2lrun.run_dir"]: run
            for run in client.search_runs([experiment.experiment_id])
        }
        assert set(runs) == {str(sweep / "0"), str(sweep / "1")}
        for job, lr in (("0", "0.01"), ("1", "0.03")):
            logged = runs[str(sweep / job)]
            assert logged.data.tags["d2lrun.sweep_dir"] == str(sweep)
            assert (logged.data.params["optim.lr"], logged.info.status) == (lr, "FINISHED")
            mlflow_history(client, logged.info.run_id, metrics_csv(sweep / job))
            assert {a.path for a in client.list_artifacts(logged.info.run_id)} == {
                "curves.png",
                "metrics.json",
                "model.pt",
            }

        # A sweep over models gets its own experiment, named after it: the check before its
        # jobs looked up the experiment "", which a server (not SQLite) refuses, and the
        # sweep ended "cannot be reached ... Fix: start the server" with the server up.
        sweep = tmp_path / "models"
        models = ["model=linreg,mlp", "dataset=synthetic", f"hydra.sweep.dir={sweep}"]
        r = run_module("-m", "logger=mlflow", f"logger.tracking_uri={uri}", *FAST, *models)
        assert r.returncode == 0, r.stderr
        experiment = client.get_experiment_by_name(f"sweep {sweep}")
        assert {
            r.data.tags["d2lrun.run_dir"] for r in client.search_runs([experiment.experiment_id])
        } == {
            str(sweep / "0"),
            str(sweep / "1"),
        }
    finally:
        stop(process)


def test_a_missing_package_fails_before_training_naming_the_install_command(tmp_path):
    for package in ("mlflow", "tensorboard"):  # an installed package hidden behind one that fails
        (tmp_path / "hide" / package).mkdir(parents=True)
        (tmp_path / "hide" / package / "__init__.py").write_text(
            f"raise ImportError('No module named {package}')"
        )
    for logger in ("mlflow", "tensorboard"):
        run = tmp_path / logger
        r = run_module(
            f"logger={logger}", *FAST, f"hydra.run.dir={run}", pythonpath=(tmp_path / "hide",)
        )
        assert r.returncode == 2
        assert one_error_line(r).endswith(f"Fix: pip install 'd2lrun[{logger}]', or logger=none.")
        assert r.stdout == "" and not run.exists()  # nothing trained, no folder left
    # A sweep too, before its folder: TensorBoard's made each job fail in it (MLflow's did not)
    sweep = tmp_path / "sweep"
    r = run_module("-m", "logger=tensorboard", "optim.lr=0.1,0.2", *FAST,
                   f"hydra.sweep.dir={sweep}", pythonpath=(tmp_path / "hide",))  # fmt: skip
    assert r.returncode == 2 and not sweep.exists()
    assert one_error_line(r).startswith("d2lrun: error: logger=tensorboard needs the tensorboard")


def test_an_unreachable_tracking_server_fails_quickly_before_training(tmp_path):
    """A sweep ran every job, each failing so, and ended 'N failed' with exit 1."""
    port, run, sweep = free_port(), tmp_path / "run", tmp_path / "sweep"  # nobody listens on it
    start = time.monotonic()
    uri = ["logger=mlflow", f"logger.tracking_uri=http://127.0.0.1:{port}", *FAST]
    r = run_module(*uri, f"hydra.run.dir={run}")
    swept = run_module("-m", *uri, "optim.lr=0.1,0.2,0.3", f"hydra.sweep.dir={sweep}")
    assert (swept.returncode, one_error_line(swept), swept.stdout) == (2, one_error_line(r), "")
    assert not sweep.exists()
    assert r.returncode == 2
    line = one_error_line(r)
    assert line.startswith(
        f"d2lrun: error: logger.tracking_uri=http://127.0.0.1:{port} cannot be reached ("
    )
    assert "Connection refused" in line
    assert line.endswith(
        f"Fix: start the server (mlflow server --host 127.0.0.1 --port {port}) or correct the "
        f"address; logger.tracking_uri=sqlite:///outputs/mlflow.db logs to a local file."
    )
    assert r.stdout == "" and not run.exists()
    assert time.monotonic() - start < 40


def test_a_tracking_server_gone_during_training_costs_seconds_then_a_note(tmp_path, caplog):
    """MLflow's own retries (7, backing off) held a run whose server stopped for 4 minutes; and
    urllib3 logged each retry, which a run showed as [HYDRA] lines before the note."""
    from mlflow import MlflowClient

    from d2lrun.config import compose
    from d2lrun.tracking import open_tracker

    cfg = compose(["logger=mlflow", f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    notes = []
    tracker = open_tracker(cfg, tmp_path / "run", "gone", None, None, notes.append)
    tracker.start({"optim": {"lr": 0.1}}, [])
    tracker.client = MlflowClient(f"http://127.0.0.1:{free_port()}")  # its server went away
    start = time.monotonic()
    tracker.log_epoch({"epoch": 1, "train_loss": 0.5})
    assert time.monotonic() - start < 30
    assert "Connection refused" in notes[-1] and notes[-1].endswith("; training goes on")
    tracker.log_epoch({"epoch": 2, "train_loss": 0.4})  # and no more tries
    assert len(notes) == 1
    assert [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")] == []


def test_a_run_resumed_after_its_servers_outage_sends_the_epochs_the_server_missed(tmp_path):
    """The server down from epoch 3 until the run was stopped after epoch 4: the resumed run went
    on in the same MLflow run, whose history then lacked epochs 3 and 4 for good."""
    from mlflow import MlflowClient

    from d2lrun.config import compose
    from d2lrun.tracking import open_tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg, notes = compose(["logger=mlflow", f"logger.tracking_uri={uri}"]), []
    rows = [{"epoch": e, "train_loss": 1 / e, "best_train_loss": 1 / e} for e in range(1, 6)]
    tracker = open_tracker(cfg, tmp_path / "run", "outage", None, None, notes.append)
    run_id = tracker.start({"optim": {"lr": 0.1}}, [])
    for row in rows[:2]:
        tracker.log_epoch(row)
    tracker.client = MlflowClient(f"http://127.0.0.1:{free_port()}")  # its server went away
    for row in rows[2:4]:
        tracker.log_epoch(row)
    assert len(notes) == 1 and "training goes on" in notes[0]

    ckpt = {"mlflow_run_id": run_id, "epoch": 4}  # resumed from its last.pt, the server back
    tracker = open_tracker(cfg, tmp_path / "run", "outage", ckpt, None, notes.append)
    assert tracker.start({"resume": str(tmp_path / "run")}, rows[:4]) == run_id
    tracker.log_epoch(rows[4])
    history = MlflowClient(uri).get_metric_history(run_id, "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(e, 1 / e) for e in range(1, 6)]


def test_tensorboard_in_a_sweep_a_diverged_job_and_a_resumed_run(tmp_path):
    """Each sweep job writes its own events and hparams (status included, so HParams shows the
    diverged job); a resumed run's events hold every epoch once, the ones before the resume too."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    def events(run):
        accumulator = EventAccumulator(str(run / "tensorboard"))
        accumulator.Reload()
        start = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        status = HParamsPluginData.FromString(start).session_start_info.hparams["status"]
        return accumulator, status.string_value

    s = tmp_path / "sweep"
    r = run_module("-m", "logger=tensorboard", "optim.lr=0.03,100", "trainer.epochs=2", *FAST,
                   f"hydra.sweep.dir={s}")  # fmt: skip
    assert r.returncode == 1, r.stderr  # the diverged job
    done, status = events(s / "0")
    assert status == "completed" and [e.step for e in done.Scalars("val_loss")] == [1, 2]
    diverged, status = events(s / "1")
    assert (
        status == "diverged"
        and json.loads((s / "1" / "metrics.json").read_text())["status"] == "diverged"
    )

    r = run_module(
        f"resume={s / '0'}", "trainer.epochs=4", f"hydra.run.dir={tmp_path / 'more'}", *FAST
    )
    assert r.returncode == 0, r.stderr
    resumed, status = events(tmp_path / "more")
    rows = pd.read_csv(tmp_path / "more" / "metrics.csv")
    assert status == "completed" and [e.step for e in resumed.Scalars("val_loss")] == [1, 2, 3, 4]
    assert [e.value for e in resumed.Scalars("val_loss")] == pytest.approx(
        rows["val_loss"].tolist(), rel=1e-6
    )
    # in place: the events before the resume are there already, and logged once
    r = run_module(f"resume={s / '0'}", "trainer.epochs=3", f"hydra.run.dir={s / '0'}", *FAST)
    assert r.returncode == 0, r.stderr
    again, status = events(s / "0")
    assert status == "completed" and [e.step for e in again.Scalars("val_loss")] == [1, 2, 3]
