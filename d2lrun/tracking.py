"""Run tracking where people compare runs: TensorBoard and MLflow (the `logger` config group).

open_tracker fails in one line before any data; then start, log_epoch and finish, never per batch.
Once training has started, a logging failure costs a note, never the run: its files are the record.
"""

import functools
import json
import logging
import os
import re
import textwrap
import threading
import time
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig

from d2lrun.errors import UsageError
from d2lrun.files import hold

NOT_METRICS = ("epoch", "seconds", "examples_per_s")  # columns of a metrics row that are not logged
# MLflow's HTTP client retries for minutes by default (7 times, backing off: a run whose server went
# away stood still 4 minutes); the check before training gives up at once, a run after two retries
# (about 5 s when the server refuses, up to 20 s when it hangs: 5 s a try), then goes on without.
QUICK = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
TRAINING = QUICK | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
RUN_STATUS = {"completed": "FINISHED", "diverged": "FAILED", "failed": "FAILED"}  # else KILLED


class Tracker:
    """logger=none: nothing beyond the run folder's own files. The other loggers override these."""

    local = True  # its writes end soon (no server to wait for)

    def start(self, config: dict, rows: list[dict]) -> str | None: ...  # rows: a resumed run's
    def log_epoch(self, row: dict) -> None: ...
    def finish(self, status: str, summary: dict, run_dir: Path) -> None: ...


class TensorBoard(Tracker):
    """Event files in RUN/tensorboard/: a scalar per metric per epoch, the config as hparams."""

    def __init__(self, run_dir: Path, log):
        from torch.utils.tensorboard import SummaryWriter

        self.SummaryWriter, self.folder, self.log = SummaryWriter, run_dir / "tensorboard", log
        # Its writer's thread prints the traceback of a failed write (a full disk) as it dies; the
        # writer raises that error again in the run's thread, where _writing makes it a note.
        if not getattr(threading.excepthook, "d2lrun", False):
            threading.excepthook = functools.partial(quiet_writer, threading.excepthook)
            threading.excepthook.d2lrun = True

    def start(self, config: dict, rows: list[dict]) -> None:
        self.config, self.writer = config, None  # None again once a write failed: no more logged
        # Resumed in place, its earlier epochs are logged already; purge_step hides those after
        # its checkpoint. Into a new folder, they are logged again: it has all, as metrics.csv.
        again = self.folder.is_dir() and rows
        purge = rows[-1]["epoch"] + 1 if again else None
        with self._writing():
            self.writer = self.SummaryWriter(log_dir=str(self.folder), purge_step=purge)
        for row in [] if again else rows:
            self.log_epoch(row)

    def log_epoch(self, row: dict) -> None:
        if self.writer is None:
            return
        with self._writing():
            for name, value in metrics_of(row).items():
                self.writer.add_scalar(name, value, row["epoch"])
            self.writer.flush()  # `tensorboard --logdir` shows the epoch now, not two minutes later

    def finish(self, status: str, summary: dict, run_dir: Path) -> None:
        """The HParams view: the config and status, with the final metrics and best_<metric>."""
        # Not SummaryWriter.add_hparams: it writes a second run folder, with a copy of each metric.
        from torch.utils.tensorboard.summary import hparams
        from torch.utils.tensorboard.writer import FileWriter

        if self.writer is None:
            return
        names = list(metrics_of(summary.get("final") or {}))
        if best := summary.get("best"):
            names.append(f"best_{best['metric']}")
        with self._writing():
            self.writer.close()
            # In a file of its own, which the next finish replaces: TensorBoard shows the first
            # hparams a folder holds, so a run resumed in place would stay "interrupted".
            before = list(self.folder.glob("*.hparams"))
            writer = FileWriter(str(self.folder), filename_suffix=".hparams")
            config = flatten(self.config) | {"status": status}
            for part in hparams(config, dict.fromkeys(names, 0.0)):
                writer.add_summary(part)
            writer.close()
            for path in before:
                path.unlink(missing_ok=True)

    @contextmanager
    def _writing(self):
        """Its writes while the run trains: a failure (a full disk, a folder made read-only) is a
        note, and the last: the run's own files are its record."""
        try:
            yield
        except Exception as e:
            self.log(f"note: TensorBoard logging to {self.folder} stopped ({why(e)}); training "
                     f"goes on")  # fmt: skip
            self.writer = None


def quiet_writer(hook, args) -> None:
    """threading.excepthook but for TensorBoard's writer thread, whose error is raised again."""
    if type(args.thread).__name__ != "_AsyncWriterThread":
        hook(args)


class MLflow(Tracker):
    """One MLflow run per d2lrun run: params, metrics per epoch (step = epoch), artifacts, tags."""

    def __init__(
        self, cfg: DictConfig, run_dir: Path, name: str, ckpt, sweep_dir, log, check=False
    ):
        # MLflow 3's usage telemetry starts threads at import that slowed a softmax epoch here from
        # 0.14 s to 6-9 s (offline); off unless the user chose (MLFLOW_DISABLE_TELEMETRY=false).
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        # A new SQLite store logs its migrations at INFO on stderr, which d2lrun keeps for errors.
        for logger in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(logger).setLevel(logging.WARNING)
        self.uri, self.run_dir, self.sweep_dir = cfg.logger.tracking_uri, run_dir, sweep_dir
        if not self.uri:  # MLflow would log to a store of its own choosing, in the current folder
            raise UsageError(
                "logger.tracking_uri is empty (MLFLOW_TRACKING_URI set to nothing?). Fix: "
                "logger.tracking_uri=sqlite:///outputs/mlflow.db, or unset MLFLOW_TRACKING_URI."
            )
        self.ckpt, self.log, self.run_id = ckpt, log, None
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
                with lock:  # while the others wait: their migrations clash ("table exists")
                    self.client = MlflowClient(self.uri)
                    self.experiment_id = self._experiment(name)
                self.continued = self._continued(ckpt) if ckpt else None
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
            if self.client.get_run(run_id).info.lifecycle_stage == "deleted":
                raise MlflowException("deleted")
        except MlflowException:
            self.log(f"note: the checkpoint's MLflow run {run_id} is not in {self.uri}; new run")
            return None
        steps = [m.step for m in self.client.get_metric_history(run_id, "train_loss")]
        if any(step > epoch for step in steps):
            self.log(f"note: MLflow run {run_id} has epochs after epoch {epoch}; new run")
            return None
        self.logged = max(steps, default=0)  # fewer where its server was down: start sends them
        return run_id

    def start(self, config: dict, rows: list[dict]) -> str | None:
        from mlflow.entities import Param, RunTag

        params = flatten(config)
        tags = {"d2lrun.status": "running", "d2lrun.run_dir": str(self.run_dir.resolve())}
        tags |= {"d2lrun.sweep_dir": str(Path(self.sweep_dir).resolve())} if self.sweep_dir else {}
        if self.ckpt:
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


def open_tracker(
    cfg: DictConfig,
    run_dir: Path,
    name: str,
    ckpt: dict | None,
    sweep_dir: Path | None,
    log,
    check: bool = False,
) -> Tracker:
    """The tracker cfg.logger names (name: MLflow's experiment); a missing package fails here.
    check: what each job of a sweep would refuse, refused once before they start, in the same
    line; it makes no store, experiment or run (the jobs do, on Slurm's nodes too)."""
    logger = cfg.logger.name
    try:
        if logger == "tensorboard":
            return TensorBoard(run_dir, log)
        if logger == "mlflow":
            return MLflow(cfg, run_dir, name, ckpt, sweep_dir, log, check)
    except ImportError as e:  # the logger's package: MLflow's client errors are caught in MLflow
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(
            f"logger={logger} needs the {logger} package ({reason}). "
            f"Fix: pip install 'd2lrun[{logger}]', or logger=none."
        ) from None
    return Tracker()


def metrics_of(row: dict) -> dict[str, float]:
    """The metrics of a metrics row: every number but the epoch and the timings."""
    return {
        k: float(v)
        for k, v in row.items()
        if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def flatten(config: dict, prefix: str = "") -> dict[str, str | int | float]:
    """A nested config as dotted keys (optim.lr); lists, booleans and null as YAML writes them."""
    flat: dict[str, str | int | float] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            flat |= flatten(v, f"{prefix}{k}.")
        else:
            plain = isinstance(v, (int, float, str)) and not isinstance(v, bool)
            flat[f"{prefix}{k}"] = v if plain else json.dumps(v)
    return flat


def experiment_name(cfg: DictConfig, preset: str | None, sweep: str | None) -> str:
    """logger.experiment_name, else the sweep's, else the preset's name, else MODEL-DATASET."""
    default = f"{cfg.model.name}-{cfg.dataset.name}"
    return cfg.logger.get("experiment_name") or sweep or preset or default


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
        return UsageError(
            f"logger.tracking_uri={uri} cannot be reached ({why(e)}). Fix: start the server "
            f"(mlflow server --host {where.hostname} --port {where.port or 80}) or correct the "
            f"address; logger.tracking_uri=sqlite:///outputs/mlflow.db logs to a local file."
        )
    if "MLFLOW_ALLOW_FILE_STORE" in str(e):  # MLflow 3 refuses a folder store, saying this key
        return UsageError(
            f"logger.tracking_uri={uri} is a folder of files, which MLflow 3 no longer takes. Fix: "
            f"logger.tracking_uri=sqlite:///outputs/mlflow.db (`mlflow migrate-filestore` moves "
            f"its runs), or MLFLOW_ALLOW_FILE_STORE=true."
        )
    fix = "a kind of store MLflow takes" if "unsupported URI" in str(e) else "a writable place"
    return UsageError(f"logger.tracking_uri={uri} cannot be used ({why(e)}). Fix: {fix}, e.g. "
                      f"logger.tracking_uri=sqlite:///outputs/mlflow.db.")  # fmt: skip


def why(e: Exception) -> str:
    """The gist of a client error: the OS error of a connection, else its first line."""
    text = str(e)
    found = re.search(r"\[Errno -?\d+\] [^'\")\]]+|(?:Read|Connect)TimeoutError|timed out", text)
    first = (text.strip().splitlines() or [type(e).__name__])[0]
    return (
        found.group(0).rstrip(": ") if found else textwrap.shorten(first, 160, placeholder=" ...")
    )
