"""dataset.folds=K, §4.10's k-fold cross-validation: K runs (RUN/fold_i) and their mean.

A k-fold run stops and goes on as one (resume=RUN: its completed folds are kept, the stopped one
continues); a logger tracks it too, its mean as its metrics and its folds nested under it (MLflow).
"""

import signal
from contextlib import nullcontext
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from d2lrun.config import checked, given
from d2lrun.config.schema import SCHEMAS
from d2lrun.data import build_data
from d2lrun.errors import Diverged, Interrupted, RunFailed, UsageError
from d2lrun.files import (
    completed,
    read_json,
    remove_empty,
    saved_checkpoint,
    say,
    shell_arg,
    shown,
    write_json,
)
from d2lrun.job import KEPT, train_job
from d2lrun.reload import changed, check_same_meaning, continued, resume_checkpoint
from d2lrun.stopping import deferred_signals, interrupted
from d2lrun.tracking import experiment_name, open_tracker


def train(
    cfg: DictConfig, run_dir: Path, overrides: list[str], ckpt: dict | None = None, **job
) -> dict:
    """One run into run_dir; with dataset.folds=K, K runs (run_dir/fold_i) and their mean."""
    # Checked before any fold starts; a run that goes on keeps the config it was trained with.
    k = checked(cfg, overrides if ckpt is None else ()).dataset.get("folds")
    if ckpt is not None or not (k or cfg.resume):  # resume=RUN/fold_i: one fold as a run
        fold = ckpt["spec"].get("fold") if ckpt else None
        return train_job(cfg, run_dir, overrides, ckpt, fold=fold, **job)
    log, moved = job.get("log", say), bool(cfg.resume)  # resume=RUN: data may move
    # Its first fold's checkpoint, when it goes on (resume=RUN, a sweep's job run again)
    saved = saved_checkpoint(run_dir / "fold_0") and resume_checkpoint(run_dir / "fold_0")
    if cfg.resume:  # of a k-fold run (d2lrun.app.resumed): each fold is continued or trained anew
        # its k as trained: dataset.folds=null now is refused below, as another k is
        cfg, k = OmegaConf.merge(cfg, {"resume": None}), saved["config"]["dataset"]["folds"]
        if (done := completed(run_dir)) and done.get("kfold"):  # as one run that trained all
            fold, n = run_dir / "fold_0", done["epochs"]  # any other key: this line first
            more = cfg.trainer.epochs if cfg.trainer.epochs > n else 2 * n  # as asked, if more
            raise UsageError(f"resume={shown(run_dir)}: its {k} folds completed {n} epochs each. "
                             f"Fix: {shell_arg('resume', fold)} trainer.epochs={more} "
                             f"to go on with one fold as a run, "
                             f"or d2lrun-eval {shell_arg('run', fold)}.")  # fmt: skip
        if diff := changed(saved, cfg, moved):
            key, was, now = diff  # refused before any fold's files are touched
            group = key[:-5] if key.endswith(".name") and given(overrides, key[:-5]) else key
            if not given(overrides, group):  # set by an option typed: regularizer=l2 sets
                # optim.weight_decay, which 'drop' would not find: that option
                options = [g for g in SCHEMAS if saved["config"][g]["name"] != cfg[g].name]
                group = next((g for g in options if given(overrides, g)), group)
            typed = given(overrides, group)  # as typed: logger=tensorboard, not logger.name=...
            check_same_meaning(saved["config"], cfg, f"resume={shown(run_dir)}", KEPT, overrides)
            folds = [f for i in range(k) if saved_checkpoint(f := run_dir / f"fold_{i}")]
            last = resume_checkpoint(fold := next((f for f in folds if not completed(f)), folds[0]))
            asked = int(now) if key == "trainer.epochs" else last["config"]["trainer"]["epochs"]
            one = f", or {shell_arg('resume', fold)} {group}={typed} to go on with one fold"
            one = f"{one} as a run" if asked > last["epoch"] else ""  # where a fold's Run takes it
            # A key still not typed (an environment variable's, a preset's): the run's value, as
            # 'drop' would name nothing there is
            fix = f"drop {group}={typed}{one}" if typed else f"{key}={was} (the run's)"
            raise UsageError(
                f"resume={shown(run_dir)} goes on with a k-fold run as it was trained "
                f"({key}={was} there, {now} now). Fix: {fix}."
            )
    # Refused before 'fold 1/K': more folds than rows, or resume=RUN's test file gone (cached)
    if todo := [i for i in range(k) if not saved_checkpoint(run_dir / f"fold_{i}")]:
        build_data(checked(cfg).dataset, cfg.seed, fold=[k, todo[0]])
    # Tracked as one run too: the folds' mean its metrics, and its folds nested under it (MLflow)
    name = experiment_name(cfg, given(overrides, "experiment"), job.get("experiment"))
    tracker = open_tracker(checked(cfg), run_dir, name, saved, job.get("sweep_dir"), log, kfold=k)
    folds = None
    try:
        job["parent"] = tracker.start(OmegaConf.to_container(checked(cfg), resolve=True), [])
        folds = train_folds(cfg, run_dir, overrides, k, moved, **job)
    finally:
        summary, stop = end(folds, cfg, run_dir, log, tracker)
    if stop is not None:  # held back while its files and its tracked run's end were written
        signum = getattr(stop, "signum", signal.SIGINT)
        raise Interrupted(f"{interrupted(signum)} as the run ended (completed); its files "
                          f"are all written in {shown(run_dir)}.", signum)  # fmt: skip
    return summary


def end(folds: list[dict] | None, cfg: DictConfig, run_dir: Path, log, tracker):
    """The k-fold run's end: the folds' mean (completed), then its tracked run's end, as its
    metrics.json says (none: stopped in fold 1's first epoch, or refused: a new one goes). A
    signal waits for them (for a server, only for the mean); (summary, the signal's error)."""
    summary = stop = None
    try:
        with deferred_signals():
            summary = folds and mean_of(folds, cfg, run_dir, log)
    except KeyboardInterrupt as e:
        stop = e
    finally:  # a full disk's error goes on, once the tracked run has ended
        try:
            with deferred_signals() if tracker.local else nullcontext():
                if summary:  # the mean at the last epoch; best_<metric> the mean's
                    best = summary["best"]
                    best = {"epoch": best["epoch"], f"best_{best['metric']}": best["value"]}
                    tracker.log_epoch(summary["final"] | best)
                record = summary or read_json(run_dir / "metrics.json") or {"status": "interrupted"}
                started = int(bool(saved_checkpoint(run_dir / "fold_0")))
                tracker.finish(record["status"], {"epochs_completed": started} | record, run_dir)
        except KeyboardInterrupt as e:
            stop = stop or e
    return summary, stop


def train_folds(cfg: DictConfig, run_dir: Path, overrides: list[str], k: int, moved: bool, **job):
    """The folds of a k-fold run, each trained, continued or kept: their summaries."""
    folds, log = [], job.get("log", say)
    for i in range(k):
        folder, fold_cfg = run_dir / f"fold_{i}", cfg.copy()
        try:  # resume=RUN, or a sweep's job run again (Slurm requeued it): its folds go on
            log(f"fold {i + 1}/{k}")  # a signal as it prints: the folds before it are saved
            if (ckpt := continued(fold_cfg, folder, moved)) and (fold := completed(folder)):
                log(f"fold {i + 1}/{k}: completed before in {shown(folder)}; kept")
            else:
                fold = train_job(fold_cfg, folder, overrides, ckpt, fold=[k, i], **job)
        except (Interrupted, KeyboardInterrupt) as e:  # the whole k-fold run goes on, not a fold
            remove_empty([folder])  # stopped as its data loaded
            if not saved_checkpoint(run_dir / "fold_0"):
                raise
            signum = getattr(e, "signum", signal.SIGINT)  # Ctrl-C while a fold's data loads
            said = f"{interrupted(signum)} before its first epoch."
            if isinstance(e, Interrupted):
                signum, said = e.exit_code - 128, str(e).partition(" Resume with:")[0]
            said = said.replace("; nothing to resume.", ".")
            if not completed(run_dir):  # a sweep's table says why, as of one run: not 'unfinished'
                reason = (read_json(folder / "metrics.json") or {}).get("reason") or said
                name, reason = signal.Signals(signum).name, f"fold {i + 1}/{k}: {reason}"
                write_json(run_dir / "metrics.json", {"status": "interrupted", "reason": reason,
                                                      "signal": name})  # fmt: skip
            raise Interrupted(f"fold {i + 1}/{k}: {said} Resume with: d2lrun "
                              f"{shell_arg('resume', run_dir)}", signum) from None  # fmt: skip
        except UsageError:  # refused: the run's record as it was (resume= of one whose data
            remove_empty(run_dir.glob("fold_*"))  # moved), and no empty folder
            raise
        except RunFailed as e:
            status = "diverged" if isinstance(e, Diverged) else "failed"
            if not completed(run_dir):  # a completed run's record stays: each fold is complete
                record = {"status": status, "reason": f"fold {i + 1}/{k}: {e}"}
                record["metric"] = (read_json(folder / "metrics.json") or {}).get("metric")
                write_json(run_dir / "metrics.json", record)  # metric: a sweep table's columns
            raise type(e)(f"fold {i + 1}/{k}: {e}") from e  # its line says which, as its record
        folds.append(fold)  # its metrics.json: the run's wall time and restarts sum the folds'
    return folds


def mean_of(folds: list[dict], cfg: DictConfig, run_dir: Path, log) -> dict:
    """The k-fold run's summary from its folds': their mean, printed and in its metrics.json."""
    k, finals = len(folds), [fold["final"] for fold in folds]
    keys = [m for m, v in finals[0].items() if m not in ("epoch", "seconds") and v is not None]
    mean = {m: sum(f[m] for f in finals) / k for m in keys}
    judged = [f"{s}_{m}" for s in ("val", "train") for m in ("acc", "log_rmse", "loss")]
    metric = next(m for m in judged if m in mean)  # as each fold's (d2lrun.job.Run.metric)
    log(fold_table(finals, mean, k))
    summary = {
        "status": "completed", "model": cfg.model.name, "dataset": cfg.dataset.name,
        "device": ", ".join(dict.fromkeys(f.get("device", "unknown") for f in folds)),
        "epochs": cfg.trainer.epochs, "run_dir": str(run_dir), "resumed_from": None,
        "kfold": {"k": k, "mean": mean, "folds": finals}, "final": mean,
        "best": {"epoch": cfg.trainer.epochs, "metric": metric, "value": mean[metric]},
        **{n: round(sum(f.get(n) or 0 for f in folds), 3) for n in ("wall_seconds", "restarts")},
    }  # fmt: skip
    write_json(run_dir / "metrics.json", summary)
    return summary


def fold_table(finals: list[dict], mean: dict, k: int) -> str:
    """Each fold's final metrics and their mean, as the book prints its k-fold result."""
    keys = [key for key in mean if key != "examples_per_s"]
    lines = [f"{k}-fold cross-validation:", "  fold  " + "  ".join(f"{key:>14}" for key in keys)]
    for name, row in [*enumerate(finals, 1), ("mean", mean)]:  # fold 1/k is fold_0/, as printed
        lines.append(f"  {name:>4}  " + "  ".join(f"{row[key]:>14.4g}" for key in keys))
    return "\n".join(lines)
