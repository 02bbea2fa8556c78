"""d2lrun.tracking without a run: what is logged (flattened config, metric columns), the experiment's
name, the MLflow store's path, the quick start-up check; and reload's merge when a logger changes."""

import os

from d2lrun.config import checked, compose
from d2lrun.reload import merge_overrides, saved_overrides
from d2lrun.tracking import experiment_name, flatten, metrics_of, quick_requests, why


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


def test_experiment_name_is_the_key_else_the_preset_else_model_and_dataset():
    cfg = compose(["logger=mlflow"])
    assert experiment_name(cfg, [], None) == "linreg-synthetic"
    assert experiment_name(cfg, ["experiment=ch6_lenet", "trainer.epochs=1"], None) == "ch6_lenet"
    cfg = compose(["logger=mlflow", "logger.experiment_name=mine"])
    assert experiment_name(cfg, ["experiment=ch6_lenet"], None) == "mine"


def plan(sweep, *overrides):
    """The multirun.yaml a sweep with these command-line overrides leaves in its folder."""
    from omegaconf import OmegaConf

    basic = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    hydra = {"sweeper": {"_target_": basic, "params": None}, "overrides": {"task": list(overrides)}}
    OmegaConf.save({"hydra": hydra}, sweep / "multirun.yaml")


def test_a_sweep_over_models_is_one_experiment_named_after_its_folder(tmp_path):
    cfg = compose(["logger=mlflow", "model=mlp", "dataset=synthetic"])
    plan(tmp_path, "model=linreg,mlp", "dataset=synthetic")
    assert experiment_name(cfg, ["model=mlp"], tmp_path) == f"sweep {tmp_path}"
    plan(tmp_path, "optim.lr=0.1,0.3", "model=mlp")
    assert experiment_name(cfg, ["optim.lr=0.1", "model=mlp"], tmp_path) == "mlp-synthetic"


def test_a_relative_sqlite_store_is_saved_absolute_for_resume_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = checked(compose(["logger=mlflow", "logger.tracking_uri=sqlite:///outputs/mlflow.db"]))
    assert cfg.logger.tracking_uri == f"sqlite:///{tmp_path}/outputs/mlflow.db"
    assert f"logger.tracking_uri='sqlite:///{tmp_path}/outputs/mlflow.db'" in saved_overrides(
        ["logger=mlflow"], cfg
    )
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
        "API request to http://127.0.0.1:1/api/2.0/mlflow/experiments/get-by-name failed with exception "
        "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded (Caused by NewConnectionError("
        "'<urllib3.connection.HTTPConnection object>: Failed to establish a new connection: "
        "[Errno 111] Connection refused'))"
    )
    assert why(Exception(text)) == "[Errno 111] Connection refused"
    assert why(Exception("first line\nsecond")) == "first line"
