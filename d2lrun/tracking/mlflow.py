"""logger=mlflow: a run in an MLflow store (a SQLite file or a server), checked before training."""

import logging
import os
import time
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig

from d2lrun.errors import UsageError
from d2lrun.files import held, hold, typed_arg
from d2lrun.stopping import deferred_signals
from d2lrun.tracking import Tracker, flatten, metrics_of, why

# MLflow's HTTP client retries for minutes by default (7 times, backing off: a run whose server went
# away stood still 4 minutes); the check before training gives up at once, a run after two retries
# (about 5 s when the server refuses, up to 20 s when it hangs: 5 s a try), then goes on without.
QUICK = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
TRAINING = QUICK | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
# The pip package of a database driver that SQLAlchemy imports by another name (else the same).
DRIVERS = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient"}
RUN_STATUS = {"completed": "FINISHED", "diverged": "FAILED", "failed": "FAILED"}  # else KILLED


class MLflow(Tracker):
    """One MLflow run per d2lrun run: params, metrics per epoch (step = epoch), artifacts, tags."""

    def __init__(
        self, cfg: DictConfig, run_dir: Path, name: str, ckpt, sweep_dir, log, check=False,
        kfold: int | None = None, parent: str | None = None,
    ):  # fmt: skip
        # MLflow 3's usage telemetry starts threads at import that slowed a softmax epoch here from
        # 0.14 s to 6-9 s (offline); off unless the user chose (MLFLOW_DISABLE_TELEMETRY=false).
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        with deferred_signals():  # Ctrl-C within: after it (a half-imported mlflow stays broken
            from mlflow import MlflowClient  # in a Python session; and a half-made store below)

        # A new SQLite store logs its migrations at INFO on stderr, which d2lrun keeps for errors.
        for logger in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(logger).setLevel(logging.WARNING)
        self.uri, self.run_dir, self.sweep_dir = cfg.logger.tracking_uri, run_dir, sweep_dir
        if not self.uri:  # MLflow would log to a store of its own choosing, in the current folder
            raise UsageError(
                "logger.tracking_uri is empty (MLFLOW_TRACKING_URI set to nothing?). Fix: "
                "logger.tracking_uri=sqlite:///outputs/mlflow.db, or unset MLFLOW_TRACKING_URI."
            )
        self.ckpt, self.log, self.run_id, self.kfold, self.parent = ckpt, log, None, kfold, parent
        self.local = local = self.uri.startswith("sqlite:")  # made here, artifacts beside it
        self.sqlite_dir = check_sqlite(self.uri) if local else None
        with quick_requests():
            try:
                if check:  # before a sweep's jobs: the server answers, name is not deleted
                    if not local or Path(self.uri.removeprefix("sqlite:///")).exists():
                        self.client = MlflowClient(self.uri)
                        self._experiment(name, create=False)
                    return
                lock = nullcontext()
                if self.sqlite_dir:  # a new store's tables are made by one of a sweep's
                    self.sqlite_dir.mkdir(parents=True, exist_ok=True)  # processes (joblib)
                    with suppress(OSError):  # another user's lock file: the store is made
                        lock = hold(self.sqlite_dir, True, f".{Path(self.uri).name}.lock")
                # while the others wait: their migrations clash ("table exists")
                with lock, deferred_signals() if local else nullcontext():
                    self.client = MlflowClient(self.uri)
                    self.continued = ckpt and (self._kfold_run if kfold else self._continued)(ckpt)
                    # A run that goes on stays in its experiment: no other made, empty
                    self.experiment_id = None if self.continued else self._experiment(name)
            except UsageError:
                raise
            except Exception as e:
                raise unreachable(self.uri, e) from None

    def _experiment(self, name: str, create: bool = True) -> str | None:
        """The id of the experiment `name`, created when new (next to a SQLite store's file)."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is None and create:
            where = str(self.sqlite_dir / "mlartifacts") if self.sqlite_dir else None
            try:
                return self.client.create_experiment(name, artifact_location=where)
            except MlflowException:  # a sweep job in another process created it first
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found is not None and found.lifecycle_stage == "deleted":
            raise UsageError(
                f"the MLflow experiment '{name}' was deleted. Fix: restore it (MLFLOW_TRACKING_URI="
                f"{self.uri} mlflow experiments restore --experiment-id {found.experiment_id}) or "
                f"logger.experiment_name=NEW."
            )
        return found.experiment_id if found else None  # None: new, and not create

    def _continued(self, ckpt: dict) -> str | None:
        """The checkpoint's MLflow run; None when it is gone or has later epochs (from best.pt)."""
        from mlflow.exceptions import MlflowException

        run_id, epoch = ckpt.get("mlflow_run_id"), ckpt["epoch"]
        if not run_id:
            return None
        try:
            if (run := self.client.get_run(run_id)).info.lifecycle_stage == "deleted":
                raise MlflowException("deleted")
        except MlflowException:
            self.log(f"note: the checkpoint's MLflow run {run_id} is not in {self.uri}; new run")
            return None
        # A run of its own, from the checkpoint's weights: a fold of a k-fold run going on as a
        # run elsewhere (resume=RUN/fold_i), or each job of a sweep over resume=RUN
        tags, here = run.data.tags, str(self.run_dir.resolve())
        nested = "mlflow.parentRunId" in tags and not self.parent
        if (nested or self.sweep_dir) and tags.get("d2lrun.run_dir") != here:
            return None
        steps = [m.step for m in self.client.get_metric_history(run_id, "train_loss")]
        if any(step > epoch for step in steps):
            self.log(f"note: MLflow run {run_id} has epochs after epoch {epoch}; new run")
            there = Path(tags.get("d2lrun.run_dir", here))  # its run goes on there, or was killed
            if run.info.status == "RUNNING" and (str(there) == here or not held(there)):
                self.client.set_terminated(run_id, "KILLED")  # kill -9: no process holds its lock
            return None
        self.logged = max(steps, default=0)  # fewer where its server was down: start sends them
        return run_id

    def _kfold_run(self, first: dict) -> str | None:
        """The k-fold run's MLflow run from before (resume=RUN, moved or not, a sweep's job run
        again): the one its first fold's run (first: that fold's checkpoint) is nested in."""
        from mlflow.exceptions import MlflowException

        self.logged = 0
        try:
            fold = self.client.get_run(first.get("mlflow_run_id") or "-")
            run = self.client.get_run(fold.data.tags.get("mlflow.parentRunId", "-"))
        except MlflowException:  # gone, or never tracked: a new run
            return None
        return run.info.run_id if run.info.lifecycle_stage == "active" else None

    def start(self, config: dict, rows: list[dict]) -> str | None:
        from mlflow.entities import Param, RunTag

        params = flatten(config)
        tags = {"d2lrun.status": "running", "d2lrun.run_dir": str(self.run_dir.resolve())}
        tags |= {"d2lrun.sweep_dir": str(Path(self.sweep_dir).resolve())} if self.sweep_dir else {}
        tags |= {"d2lrun.kfold": str(self.kfold)} if self.kfold else {}  # its folds' mean
        tags |= {"mlflow.parentRunId": self.parent} if self.parent else {}  # a fold: nested
        if self.ckpt and not self.kfold:  # a k-fold run's: its first fold's, to find its run
            tags["d2lrun.resumed_from"] = str(Path(config["resume"]).resolve())
        with self._sending():
            if self.continued:  # its earlier epochs are logged already, but for an outage's
                self.run_id, rows = self.continued, [r for r in rows if r["epoch"] > self.logged]
                logged = self.client.get_run(self.run_id).data.params
                params = {k: v for k, v in params.items() if k not in logged}  # never changes one
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                name = "/".join(self.run_dir.resolve().parts[-2:])  # DATE/TIME, or TIME/JOB
                self.run_id = self.client.create_run(self.experiment_id, run_name=name).info.run_id
            params = [Param(k, str(v)) for k, v in params.items()]  # log_batch chunks them itself
            self.client.log_batch(
                self.run_id, params=params, tags=[RunTag(*t) for t in tags.items()]
            )
            self._metrics(rows)
        return self.run_id

    def log_epoch(self, row: dict) -> None:
        self._metrics([row])

    def _metrics(self, rows: list[dict]) -> None:
        from mlflow.entities import Metric

        if self.run_id is None:
            return
        now = int(time.time() * 1000)
        items = [Metric(k, v, now, r["epoch"]) for r in rows for k, v in metrics_of(r).items()]
        with self._sending():
            self.client.log_batch(self.run_id, metrics=items)

    def finish(self, status: str, summary: dict, run_dir: Path) -> None:
        if self.run_id is None:
            return
        with self._sending():
            stopped = status == "interrupted" and not summary.get("epochs_completed")
            if stopped and not self.continued:  # before its first epoch: its folder goes too
                self.client.delete_run(self.run_id)
                return
            self.client.set_tag(self.run_id, "d2lrun.status", status)
            try:  # ended also when an upload fails (a read-only artifact folder): not RUNNING
                for name in ("curves.png", "metrics.json", "model.pt"):
                    if (run_dir / name).exists():
                        self.client.log_artifact(self.run_id, str(run_dir / name))
            finally:
                self.client.set_terminated(self.run_id, RUN_STATUS.get(status, "KILLED"))

    @contextmanager
    def _sending(self):
        """Calls to the server while training: few retries; a failure is a note, and the last."""
        with quick_requests(TRAINING):
            try:
                yield
            except Exception as e:
                self.log(f"note: MLflow logging to {self.uri} stopped ({why(e)}); training goes on")
                self.run_id = None


@contextmanager
def quick_requests(settings: dict = QUICK):
    """Short HTTP timeouts and few retries for MLflow, unless the user set their own, then back;
    without urllib3's warning per retry (shown as Hydra's [HYDRA] lines): one line says it all."""
    added = [k for k in settings if k not in os.environ]
    os.environ.update({k: settings[k] for k in added})
    pool = logging.getLogger("urllib3.connectionpool")
    pool.addFilter(not_a_retry)
    try:
        yield
    finally:
        pool.removeFilter(not_a_retry)
        for k in added:
            os.environ.pop(k, None)


def not_a_retry(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Retrying (")


def check_sqlite(uri: str) -> Path:
    """The folder of a SQLite store; a file no database can be is refused now, where MLflow
    would retry for 100 s (10 times, backing off). It makes nothing: MLflow makes the store."""
    if uri.rstrip("/") == "sqlite:" or uri.endswith(":memory:"):  # sqlite://
        raise UsageError(
            f"logger.tracking_uri={uri} is a database in memory, gone as the run "
            f"ends. Fix: logger.tracking_uri=sqlite:///outputs/mlflow.db."
        )
    if not uri.startswith("sqlite:///"):  # sqlite:x.db: SQLAlchemy's 'Could not parse'
        raise UsageError(
            f"logger.tracking_uri={uri} is not sqlite:///FILE (three slashes, then the file). "
            f"Fix: logger.tracking_uri=sqlite:///outputs/mlflow.db."
        )
    path = Path(uri.removeprefix("sqlite:///"))
    try:
        if path.is_dir():
            raise UsageError(
                f"logger.tracking_uri={uri} names a folder, not a database file. "
                f"Fix: logger.tracking_uri=sqlite:///{path / 'mlflow.db'}."
            )
        folder = next(p for p in path.parents if p.exists())  # the one its folders are made in
        if path.exists():  # its header, read without a lock: a busy store is still a store
            with open(path, "rb") as f:
                if f.read(16) not in (b"", b"SQLite format 3\0"):
                    raise OSError(f"{path} is not a SQLite database")
            if not os.access(path, os.W_OK):  # read-only: MLflow's tracebacks at each epoch
                raise OSError(f"{path} is not writable")
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):  # SQLite's journal
            raise OSError(f"{folder} is not a writable folder")
    except OSError as e:
        raise unreachable(uri, e) from None
    return path.parent


def unreachable(uri: str, e: Exception) -> UsageError:
    if uri.startswith(("http://", "https://")):
        where = urlparse(uri)
        env = " (from MLFLOW_TRACKING_URI)" if os.environ.get("MLFLOW_TRACKING_URI") == uri else ""
        return UsageError(
            f"logger.tracking_uri={uri}{env} cannot be reached ({why(e)}). Fix: start the server "
            f"(mlflow server --host {where.hostname} --port {where.port or 80}) or correct the "
            f"address; logger.tracking_uri=sqlite:///outputs/mlflow.db logs to a local file."
        )
    if "MLFLOW_ALLOW_FILE_STORE" in str(e):  # MLflow 3 refuses a folder store, saying this key
        path = urlparse(uri).path  # file:./mlruns, outputs/mlflow.db: a path is a folder store
        if Path(path).suffix in (".db", ".sqlite", ".sqlite3") or Path(path).is_file():  # SQLite
            return UsageError(
                f"logger.tracking_uri={uri} is a path, which MLflow takes for a folder of files "
                f"(a store MLflow 3 no longer makes). Fix: "
                f"{typed_arg('logger.tracking_uri', f'sqlite:///{path}')}."  # '~/x.db' quoted
            )
        return UsageError(
            f"logger.tracking_uri={uri} is a folder of files, which MLflow 3 no longer takes. Fix: "
            f"logger.tracking_uri=sqlite:///outputs/mlflow.db (`mlflow migrate-filestore` moves "
            f"its runs), or MLFLOW_ALLOW_FILE_STORE=true."
        )
    if isinstance(e, ImportError) and e.name:  # postgresql://, mysql://: SQLAlchemy's driver
        package = DRIVERS.get(e.name, e.name)
        return UsageError(
            f"logger.tracking_uri={uri} needs the database driver {e.name} ({why(e)}). Fix: "
            f"pip install {package}, or logger.tracking_uri=sqlite:///outputs/mlflow.db."
        )
    fix = "a kind of store MLflow takes" if "unsupported URI" in str(e) else "a writable place"
    return UsageError(f"logger.tracking_uri={uri} cannot be used ({why(e)}). Fix: {fix}, e.g. "
                      f"logger.tracking_uri=sqlite:///outputs/mlflow.db.")  # fmt: skip
