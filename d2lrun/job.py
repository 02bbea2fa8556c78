"""One run, start to finish: config -> data -> model -> fit -> the files of its folder.

However the run ends, its folder holds the last complete epoch and metrics.json says what happened.
"""

import contextlib
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from d2lrun.config import checked, given, new_overrides, resolve_device, searchpath
from d2lrun.data import Spec, build_data, check_log_rmse, table_file
from d2lrun.errors import Diverged, Interrupted, RunFailed, UsageError, note
from d2lrun.files import (
    atomic_write,
    completed,
    disk_full,
    save_torch,
    say,
    shell_arg,
    shown,
    write_csv,
    write_json,
)
from d2lrun.models import build_model, learned, load_state_dict_strict, loss_kind
from d2lrun.models.init import apply_init
from d2lrun.optim import Optimizer, build_optimizer
from d2lrun.plots import curves_png
from d2lrun.reload import FORMAT, MEANING, check_same_meaning, readable_best
from d2lrun.stopping import Stop, by, deferred_signals, interrupted
from d2lrun.tracking import experiment_name, open_tracker
from d2lrun.trainer import Trainer, compiled, fit, format_row, loss_for, rng_state, set_rng_state

# What a resumed run keeps: another optimizer has other state, another init is not how it began
KEPT = (*MEANING, "optim.name", "init")


@dataclass
class History:
    """What the run has done: its metrics rows, its best epoch and a checkpoint not yet on disk."""

    rows: list[dict] = field(default_factory=list)
    best: dict | None = None
    pending: dict | None = None  # the last complete epoch's, with trainer.checkpoint_every > 1


def train_job(cfg: DictConfig, run_dir: Path, overrides: list[str], ckpt=None, **job) -> dict:
    """One run: model.pt, last.pt, best.pt, metrics.csv and .json, curves.png in run_dir."""
    run = Run(cfg, run_dir, overrides, ckpt, **job)
    net = compiled(run.model, run.device, run.log) if run.cfg.trainer.compile else run.model
    try:
        fit(net, run.optimizer, run.loss, run.train, run.val, run.trainer, run.on_epoch)
        return run.end("completed")  # its files: a full disk there fails it as in an epoch
    except Diverged as e:
        return run.end("diverged", str(e))
    except KeyboardInterrupt as e:  # Ctrl-C, or a stop signal (d2lrun.stopping.stop_signals)
        return run.end("interrupted", signum=getattr(e, "signum", signal.SIGINT))
    except Exception as e:  # disk full, a bug: the tracked run ends too, then the error goes on
        if isinstance(e, Interrupted) or (error := run.failed(e)) is e:  # stopped as it ended
            raise
        raise error from e


class Run:
    """One run's setup, its on_epoch after each epoch of fit, and its end: the files of its folder.
    A stack (hydra/launcher=batched) trains several with one fit, each a Run with its own folder."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        overrides: list[str],
        ckpt: dict | None = None,
        log=say,
        fold: list[int] | None = None,
        sweep_dir: Path | None = None,
        experiment: str | None = None,
        draw=curves_png,
        parent: str | None = None,
    ):
        # ckpt: the one it resumes; fold=[k, i]: validated on fold i of k, parent: the k-fold
        # run's tracked id; draw: curves.png's bytes
        self.wall, self.run_dir, self.log, self.draw = time.perf_counter(), run_dir, log, draw
        in_place = False  # resumed in its own folder
        if ckpt is not None:
            check_same_meaning(ckpt["config"], cfg, f"resume={cfg.resume}", KEPT, overrides)
            source = Path(cfg.resume)  # a run folder, or a checkpoint in one
            source = (source if source.is_dir() else source.parent).resolve()
            in_place = source == run_dir.resolve()
            done, asked = ckpt["epoch"], cfg.trainer.epochs
            # No epoch to train: only a run killed while it wrote its last files finishes them.
            last_files = done == ckpt["config"]["trainer"]["epochs"] and not completed(source)
            if done > asked or (done == asked and not last_files):
                raise UsageError(f"resume={shown(cfg.resume)} has trained {done} epoch(s), and "
                                 f"trainer.epochs={asked} asks for no more (it counts all of "
                                 f"them). Fix: trainer.epochs={done + asked}.")  # fmt: skip
        self.cfg = cfg = checked(cfg)
        self.device = device = resolve_device(cfg.device)
        # Before any data: a logger whose package is missing or whose server is down fails now.
        name = experiment_name(cfg, given(overrides, "experiment"), experiment)
        self.tracker = open_tracker(cfg, run_dir, name, ckpt, sweep_dir, log, parent=parent)
        run_dir.mkdir(parents=True, exist_ok=True)

        torch.manual_seed(cfg.seed)
        saved = Spec(**ckpt["spec"]) if ckpt else None  # its statistics: the same features
        self.train, self.val, self.spec = build_data(cfg.dataset, cfg.seed, device, fold, saved)
        spec = self.spec
        if saved and saved.sha1 and spec.sha1 != saved.sha1:  # edited, or another file
            note(f"{shown(table_file(cfg.dataset))} is not the file the run trained on (its "
                 f"SHA-1 differs): its rows are split anew, and may validate on rows it trained "
                 f"on")  # fmt: skip
        # Higher accuracy, or lower loss (log RMSE where measured, §4.10's), is better; without a
        # validation split, the training one.
        self.classify = spec.task == "classification"
        kind = "acc" if self.classify else "log_rmse" if cfg.trainer.log_rmse else "loss"
        self.metric = ("val_" if len(self.val) else "train_") + kind
        if cfg.trainer.log_rmse:
            check_log_rmse(self.train, self.val, spec)
        self.model = model = build_model(cfg.model, spec)
        if ckpt is None:
            apply_init(model, cfg.init)
        model.to(device)
        self.loss = loss_for(spec.task, loss_kind(cfg.model))
        self.optimizer = build_optimizer(model, cfg.optim, cfg.regularizer.lambd)
        self.trainer = Trainer(**cfg.trainer, generator=torch.Generator().manual_seed(cfg.seed))
        self.history = History(list(ckpt["history"]), ckpt["best"]) if ckpt else History()
        if ckpt is not None:  # its weights, optimizer state, random state and epoch: it goes on
            load_state_dict_strict(model, ckpt["model"], "the checkpoint")
            self.optimizer.load_state_dict(ckpt["optimizer"])  # lr as configured now: optim.lr=0.01
            set_rng_state(ckpt["rng"], self.trainer.generator)
            self.trainer.epoch = ckpt["epoch"]
            if ckpt["best"]:  # judged as it began (val_loss before log RMSE judged §4.10's runs)
                self.metric = ckpt["best"]["metric"]
            if not in_place and ckpt["best"]:  # a new folder has the best
                best = readable_best(source)  # epoch's best.pt too
                if best and best["epoch"] == ckpt["best"]["epoch"]:
                    atomic_write(run_dir / "best.pt", (source / "best.pt").read_bytes())
            log(f"resuming {shown(cfg.resume)} from epoch {self.trainer.epoch}")
            self.wall -= ckpt.get("wall_seconds", 0)  # its wall time counts every attempt's

        config = OmegaConf.to_container(cfg, resolve=True)
        kept = [o for o in overrides if not o.startswith("resume=")]
        # In its own folder, last.pt is the run's until an epoch ends: what this command changes
        # (trainer.epochs=3) goes into the line that says how to go on (end)
        self.again = new_overrides(ckpt["overrides"], kept) if in_place else []
        extra = {"format": FORMAT, "config": config, "overrides": kept, "spec": asdict(spec)}
        extra["restarts"] = ckpt.get("restarts", 0) + 1 if ckpt else 0  # resumed or requeued
        extra["searchpath"] = searchpath()  # -cd's: its options, for resume, eval, predict
        tracked, best = [], None  # each row with best_<metric> as of its epoch, as on_epoch's
        for row in self.history.rows:
            best = self.better(row, best)
            tracked.append(row | {f"best_{self.metric}": best["value"]})
        extra["mlflow_run_id"] = self.tracker.start(config, tracked)  # resume goes on
        self.extra = extra
        if ckpt is not None and not in_place:  # resumable before its first epoch
            snapshot = checkpoint(model, self.optimizer, self.trainer, self.history, extra)
            snapshot["wall_seconds"] = ckpt.get("wall_seconds", 0)
            save_torch(run_dir / "last.pt", snapshot)
        self.title = f"{cfg.model.name} on {spec.dataset}"
        params = sum(p.numel() for p in model.parameters())
        log(f"{self.title} ({len(self.train):,} train / {len(self.val):,} val) on {device}, "
            f"{params:,} parameters -> {shown(run_dir)}")  # fmt: skip
        self.summary = {"status": "running", "model": cfg.model.name, "dataset": spec.dataset,
                        "device": str(device), "epochs": cfg.trainer.epochs, "metric": self.metric,
                        "run_dir": str(run_dir),
                        "resumed_from": cfg.resume and str(Path(cfg.resume).resolve()),
                        "restarts": extra["restarts"]}  # fmt: skip

    def on_epoch(self, row: dict) -> None:
        """The epoch's checkpoints, its row for the tracker, its line."""
        history, trainer = self.history, self.trainer
        rows, best = [*history.rows, row], self.better(row, history.best)
        snapshot = checkpoint(self.model, self.optimizer, trainer, History(rows, best), self.extra)
        snapshot["wall_seconds"] = round(time.perf_counter() - self.wall, 3)
        due = trainer.epoch % trainer.checkpoint_every == 0 or trainer.epoch == trainer.epochs
        names = ["best.pt"] * (best is not history.best) + ["last.pt"] * due
        # Ctrl-C or SIGTERM while the files are written: once the history is at their epoch too
        try:
            with deferred_signals():
                if names:
                    save_torch([self.run_dir / name for name in names], snapshot)
                history.rows, history.best, history.pending = rows, best, None if due else snapshot
                self.log(format_row(row, trainer.epochs))
                self.again = []  # last.pt has this command's config now, or at the end
        finally:  # the tracker has the epoch a signal held; one that comes as it logs waits for
            # a local store (TensorBoard, SQLite: else the epoch was cut off there, or SQLite's
            # write broken), not for a server, which may hang (up to 20 s: tracking.mlflow.TRAINING)
            if history.rows is rows:  # best_<metric> an epoch: a resumed run's series goes on
                with deferred_signals() if self.tracker.local else contextlib.nullcontext():
                    self.tracker.log_epoch(row | {f"best_{self.metric}": best["value"]})

    def better(self, row: dict, best: dict | None) -> dict:
        """The best epoch of the epochs best stands for and row's."""
        value = row[self.metric]
        if best is None or (value > best["value"] if self.classify else value < best["value"]):
            return {"epoch": row["epoch"], "metric": self.metric, "value": value}
        return best

    def failed(self, e: Exception) -> Exception:
        """The run's record on an error: failed, in metrics.json too while the disk takes it; the
        error to raise (a full disk's says how to go on)."""
        rows, best = self.history.rows, self.history.best
        summary = self.summary | {
            "status": "failed", "reason": str(e), "final": rows[-1] if rows else None,
            "epochs_completed": len(rows) and rows[-1]["epoch"], "best": best,
        }  # fmt: skip
        with contextlib.suppress(OSError):
            if rows:
                write_csv(self.run_dir / "metrics.csv", rows)
            write_json(self.run_dir / "metrics.json", summary)
        self.tracker.finish("failed", summary, self.run_dir)
        if isinstance(e, OSError) and (self.run_dir / "last.pt").exists():
            fix = "free disk space" if disk_full(e) else f"make {self.run_dir} writable again"
            fix += f", then d2lrun {shell_arg('resume', self.run_dir)} (its last.pt is kept)."
            return RunFailed(f"{e.strerror} ({e.filename}). Fix: {fix}")
        return e

    def end(self, status: str, reason: str | None = None, signum: int | None = None) -> dict:
        """The run's files as it ended (completed, diverged or interrupted); its summary."""
        history, run_dir, summary = self.history, self.run_dir, self.summary
        epoch = history.rows[-1]["epoch"] if history.rows else 0  # the last one saved
        # Ctrl-C or a stop signal now is handled once the files are written (ignored when the
        # run is stopping already: a second Ctrl-C); one as its last epoch was saved: completed
        stop = None
        if status == "interrupted" and epoch == self.trainer.epochs:
            status, stop = "completed", Stop(signum)
        try:
            with deferred_signals() as caught:
                if status == "interrupted":
                    summary["signal"] = signal.Signals(signum).name
                    when = f"after epoch {epoch}" if epoch else "before any epoch finished"
                    reason = f"stopped by {by(signum)} {when}"
                    if history.pending is not None:
                        save_torch(run_dir / "last.pt", history.pending)
                summary |= {
                    "status": status, "reason": reason, "epochs_completed": epoch,
                    "final": history.rows[-1] if history.rows else None, "best": history.best,
                    "wall_seconds": round(time.perf_counter() - self.wall, 3),
                }  # fmt: skip
                if history.rows:
                    write_csv(run_dir / "metrics.csv", history.rows)
                    atomic_write(run_dir / "curves.png", self.draw(history.rows, self.title))
                if status == "completed":
                    save_torch(run_dir / "model.pt", copied(self.model.state_dict()))
                    if (found := learned(self.model, self.spec, self.log)) is not None:
                        summary["learned"] = found
                write_json(run_dir / "metrics.json", summary)
                if status == "interrupted":
                    caught.clear()
        except KeyboardInterrupt as e:  # held back while the files were written
            stop = e
        try:  # held back for a local store, where a write cut off breaks it; not for a server
            with deferred_signals() if self.tracker.local else contextlib.nullcontext():
                self.tracker.finish(status, summary, run_dir)  # which may keep it waiting
        except KeyboardInterrupt as e:
            stop = stop or e
        if stop is not None and status != "interrupted":
            signum = getattr(stop, "signum", signal.SIGINT)
            raise Interrupted(
                f"{interrupted(signum)} as the run ended ({status}); its files are all "
                f"written in {shown(run_dir)}.",
                signum,
            ) from None
        if status == "diverged":
            raise Diverged(f"diverged: {reason}")
        if status == "interrupted":
            what = interrupted(signum)
            if epoch == 0:
                raise Interrupted(f"{what} before any epoch finished; nothing to resume.", signum)
            raise Interrupted(
                f"{what} after epoch {epoch}; the last complete epoch is saved. "
                f"Resume with: d2lrun {' '.join([shell_arg('resume', run_dir), *self.again])}",
                signum,
            )
        return summary


def checkpoint(model, optimizer: Optimizer, trainer: Trainer, history: History, extra: dict):
    """A resumable snapshot of the run, copied to the CPU (d2lrun.reload lists its keys)."""
    state = optimizer.state_dict()  # its tensors copied: training goes on changing them
    state["state"] = {i: copied(s) for i, s in state["state"].items()}
    return {
        "model": copied(model.state_dict()),
        "optimizer": state,
        "epoch": trainer.epoch,
        "history": [dict(r) for r in history.rows],
        "best": dict(history.best) if history.best else None,
        "rng": rng_state(trainer.generator),
        **extra,
    }


def copied(tensors: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}
