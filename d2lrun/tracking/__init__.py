"""Run tracking where people compare runs: TensorBoard and MLflow (the `logger` config group).

open_tracker fails in one line before any data; then start, log_epoch and finish, never per batch.
Once training has started, a logging failure costs a note, never the run: its files are the record.
tensorboard.py and mlflow.py hold the two trackers, imported when a run names one.
"""

import json
import re
import textwrap
from pathlib import Path

from omegaconf import DictConfig

from d2lrun.errors import UsageError

NOT_METRICS = ("epoch", "seconds", "examples_per_s")  # columns of a metrics row that are not logged


class Tracker:
    """logger=none: nothing beyond the run folder's own files. The other loggers override these."""

    local = True  # its writes end soon (no server to wait for)

    def start(self, config: dict, rows: list[dict]) -> str | None: ...  # rows: a resumed run's
    def log_epoch(self, row: dict) -> None: ...
    def finish(self, status: str, summary: dict, run_dir: Path) -> None: ...


def open_tracker(
    cfg: DictConfig,
    run_dir: Path,
    name: str,
    ckpt: dict | None,
    sweep_dir: Path | None,
    log,
    check: bool = False,
    kfold: int | None = None,
    parent: str | None = None,
) -> Tracker:
    """The tracker cfg.logger names (name: MLflow's experiment); a missing package fails here.
    check: what each job of a sweep would refuse, refused once before they start, in the same
    line; it makes no store, experiment or run (the jobs do, on Slurm's nodes too). kfold: the
    k of a k-fold run tracked as a whole; parent: a fold's, the id that start gave that run."""
    logger = cfg.logger.name
    try:
        if logger == "tensorboard" and check:  # a sweep's: its package, not torch's import
            import tensorboard  # noqa: F401  (5 ms)
        elif logger == "tensorboard":
            from d2lrun.tracking.tensorboard import TensorBoard

            return TensorBoard(run_dir, log)
        if logger == "mlflow":
            from d2lrun.tracking.mlflow import MLflow

            return MLflow(cfg, run_dir, name, ckpt, sweep_dir, log, check, kfold, parent)
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


def why(e: Exception) -> str:
    """The gist of a client error: the OS error of a connection, else its first line."""
    text = str(e)
    found = re.search(r"\[Errno -?\d+\] [^'\")\]]+|(?:Read|Connect)TimeoutError|timed out", text)
    first = (text.strip().splitlines() or [type(e).__name__])[0]
    return found[0].rstrip(": ") if found else textwrap.shorten(first, 160, placeholder=" ...")
