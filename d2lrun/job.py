"""One training job, start to finish: config -> data -> model -> fit -> files in the run folder."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from d2lrun.checkpoint import load_state_dict_strict, save_torch
from d2lrun.config import checked, resolve_device
from d2lrun.data import build_data
from d2lrun.errors import Diverged, Interrupted, RunFailed, UsageError
from d2lrun.files import plot_curves, shown, write_csv, write_json
from d2lrun.kfold import mean_row
from d2lrun.models import build_model, loss_kind
from d2lrun.models.init import apply_init
from d2lrun.optim import build_optimizer
from d2lrun.reload import resume_checkpoint, saved_overrides
from d2lrun.tracking import open_tracker
from d2lrun.trainer import History, fit, loss_for, set_rng_state


def say(message: str) -> None:
    """Print a line at once, also when stdout is a file or a pipe (`d2lrun | tee log`)."""
    print(message, flush=True)


def train(
    cfg: DictConfig, run_dir: Path, overrides: list[str], log=say, sweep_dir: Path | None = None
) -> dict:
    """One run; with dataset.folds=K, K runs (run_dir/fold_0, ...) and their mean (§4.10)."""
    k = cfg.dataset.folds if "folds" in cfg.dataset else None
    if not k:
        return train_job(cfg, run_dir, overrides, log, sweep_dir=sweep_dir)
    if cfg.resume:
        raise UsageError(
            f"resume= continues one run, and dataset.folds={k} trains {k}. "
            f"Fix: resume one fold, e.g. resume=RUN/fold_0 dataset.folds=null."
        )
    wall, finals = time.perf_counter(), []
    for i in range(k):
        log(f"fold {i + 1}/{k}")
        try:
            finals.append(
                train_job(cfg, run_dir / f"fold_{i}", overrides, log, (k, i), sweep_dir)["final"]
            )
        except (UsageError, RunFailed) as e:
            status = "diverged" if isinstance(e, Diverged) else "failed"
            write_json(run_dir / "metrics.json", {"status": status, "reason": f"fold {i}: {e}"})
            raise
    mean = mean_row([{m: v for m, v in f.items() if m not in ("epoch", "seconds")} for f in finals])
    metric = next(m for m in ("val_acc", "val_loss", "train_acc", "train_loss") if m in mean)
    log(fold_table(finals, mean, k))
    summary = {
        "status": "completed", "model": cfg.model.name, "dataset": cfg.dataset.name,
        "epochs": cfg.trainer.epochs, "run_dir": str(run_dir), "resumed_from": None,
        "kfold": {"k": k, "mean": mean, "folds": finals}, "final": mean,
        "best": {"epoch": cfg.trainer.epochs, "metric": metric, "value": mean[metric]},
        "wall_seconds": round(time.perf_counter() - wall, 3),
    }  # fmt: skip
    write_json(run_dir / "metrics.json", summary)
    return summary


def fold_table(finals: list[dict], mean: dict, k: int) -> str:
    """Each fold's final metrics and their mean, as the book prints its k-fold result."""
    keys = [key for key in mean if key not in ("examples_per_s",)]
    lines = [f"{k}-fold cross-validation:", "  fold  " + "  ".join(f"{key:>14}" for key in keys)]
    lines += [
        f"  {i:>4}  " + "  ".join(f"{f[key]:>14.4g}" for key in keys) for i, f in enumerate(finals)
    ]
    lines.append("  mean  " + "  ".join(f"{mean[key]:>14.4g}" for key in keys))
    return "\n".join(lines)


def train_job(
    cfg: DictConfig,
    run_dir: Path,
    overrides: list[str],
    log=say,
    fold: tuple[int, int] | None = None,
    sweep_dir: Path | None = None,
) -> dict:
    """Train as cfg says; write model.pt, last.pt, best.pt, metrics.csv/json, curves.png to run_dir.

    `overrides` are the command line's (Hydra's task overrides): with the config's absolute paths
    they go into every checkpoint, so that reload composes this run again from anywhere. fold=(k, i)
    trains on the other folds and validates on fold i. sweep_dir: the sweep this job belongs to.
    """
    wall = time.perf_counter()
    ckpt = resume_checkpoint(cfg) if cfg.resume else None
    cfg = checked(cfg)
    device = resolve_device(cfg.device)
    # Before any data: a logger whose package is missing or whose server is down fails now.
    tracker = open_tracker(cfg, run_dir, overrides, ckpt, sweep_dir, log)
    run_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    train_split, val_split, spec = build_data(cfg.dataset, cfg.seed, device, fold)
    if cfg.trainer.log_rmse and spec["task"] == "regression":
        check_positive_target(train_split, val_split, spec)
    model = build_model(cfg.model, spec)
    if ckpt is None:
        apply_init(model, cfg.init)
    model.to(device)
    optimizer = build_optimizer(model, cfg.optim)
    generator = torch.Generator().manual_seed(cfg.seed)  # the shuffling order, saved in checkpoints
    history = History()
    if ckpt is not None:
        history = restore(ckpt, model, optimizer, generator)
        log(f"resuming {shown(cfg.resume)} from epoch {history.epoch}")

    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    extra = {"config": config, "overrides": saved_overrides(overrides, cfg), "spec": spec}
    extra["mlflow_run_id"] = tracker.start(config, history.rows)  # resume continues that run
    sizes = f"{len(train_split):,} train / {len(val_split):,} val"
    params = sum(p.numel() for p in model.parameters())
    where = f"on {device}, {params:,} parameters -> {shown(run_dir)}"
    log(f"{cfg.model.name} on {spec['dataset']} ({sizes}) {where}")
    summary = {
        "status": "running",
        "model": cfg.model.name,
        "dataset": spec["dataset"],
        "device": str(device),
        "epochs": cfg.trainer.epochs,
        "run_dir": str(run_dir),
        "resumed_from": str(cfg.resume) if cfg.resume else None,
    }
    status, reason = "completed", None
    loss_fn = loss_for(spec["task"], loss_kind(cfg.model))
    try:
        fit(
            model,
            optimizer,
            loss_fn,
            train_split,
            val_split,
            cfg.trainer,
            cfg.regularizer.lambd,
            run_dir,
            generator,
            history,
            extra,
            log,
            tracker,
        )
    except Diverged as e:
        status, reason = "diverged", str(e)
    except KeyboardInterrupt:
        status, reason = "interrupted", f"stopped by Ctrl-C after epoch {history.epoch}"
    except Exception as e:  # disk full, a bug: the tracked run ends too, then the error goes on
        tracker.finish("failed", summary | {"status": "failed", "reason": str(e)}, run_dir)
        raise
    summary |= {
        "status": status,
        "reason": reason,
        "epochs_completed": history.epoch,
        "final": history.rows[-1] if history.rows else None,
        "best": history.best,
        "wall_seconds": round(time.perf_counter() - wall, 3),
    }
    if history.rows:
        write_csv(run_dir / "metrics.csv", history.rows)
        plot_curves(run_dir / "curves.png", history.rows, f"{cfg.model.name} on {spec['dataset']}")
    if status == "completed":
        save_torch(run_dir / "model.pt", {k: v.to("cpu") for k, v in model.state_dict().items()})
        if spec.get("true_w") is not None and hasattr(model, "get_w_b"):
            summary["learned"] = report_w_b(model, spec, log)
        if spec.get("true_kernel") is not None:
            kernel = [[round(x, 4) for x in row] for row in model.kernel.cpu().tolist()]
            log(f"learned kernel: {kernel}  (true: {spec['true_kernel']})")
            summary["learned"] = {"kernel": model.kernel.cpu().tolist()}
    write_json(run_dir / "metrics.json", summary)
    tracker.finish(status, summary, run_dir)
    if status == "diverged":
        raise Diverged(f"diverged: {reason}")
    if status == "interrupted":
        if history.epoch == 0:
            raise Interrupted("interrupted before any epoch finished; nothing to resume.")
        raise Interrupted(
            f"interrupted after epoch {history.epoch}; the last complete epoch is "
            f"saved. Resume with: d2lrun resume={shown(run_dir)}"
        )
    return summary


def check_positive_target(train_split, val_split, spec: dict) -> None:
    """§4.10's log RMSE takes the log of the target, so every target must be positive."""
    scale = spec.get("target_scale") or {"mean": 0.0, "std": 1.0}
    y = torch.cat([train_split.y, val_split.y]).reshape(-1) * scale["std"] + scale["mean"]
    if len(y) and y.min().item() <= 0:
        raise UsageError(
            f"trainer.log_rmse=true takes the log of the target, and "
            f"{spec.get('target', 'it')} has values <= 0 (smallest {y.min().item():.4g}). "
            f"Fix: trainer.log_rmse=false."
        )


def restore(ckpt: dict, model, optimizer, generator: torch.Generator) -> History:
    """Weights, optimizer state, random state and history from a checkpoint, to resume training."""
    load_state_dict_strict(model, ckpt["model"], "the checkpoint")
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])  # momentum buffers, Adam moments ...
    for group, h in zip(optimizer.param_groups, hyper, strict=True):
        group.update(
            h
        )  # ... but lr and weight decay as configured now (resume optim.lr=0.01 works)
    set_rng_state(ckpt["rng"], generator)
    return History(ckpt["epoch"], list(ckpt["history"]), ckpt["best"])


def report_w_b(model, spec: dict, log) -> dict:
    """§3.2's closing check: the learned w and b against the true ones."""
    w, b = model.get_w_b()
    true_w, true_b = torch.tensor(spec["true_w"]), spec["true_b"]
    w, b = w.cpu(), float(b.cpu().reshape(-1)[0])
    if true_b is None:  # a model without a bias (§4.4): its weights, as the book prints them
        log(f"weight: {[round(x, 4) for x in w.tolist()]}  (true: {spec['true_w']})")
        return {"w": w.tolist(), "w_error": (true_w - w).tolist(), "w_norm": w.norm().item()}
    if len(true_w) <= 10:
        log(
            f"error in estimating w: {[round(x, 6) for x in (true_w - w).tolist()]}  "
            f"(w = {[round(x, 4) for x in w.tolist()]})"
        )
        log(f"error in estimating b: {true_b - b:.6f}  (b = {b:.4f})")
    else:
        error = (true_w - w).norm().item()
        log(
            f"‖w‖₂ = {w.norm().item():.4f}; error ‖w - w_true‖₂ = {error:.6f}; "
            f"error in b: {true_b - b:.6f}"
        )
    return {
        "w": w.tolist(),
        "b": b,
        "w_error": (true_w - w).tolist(),
        "b_error": true_b - b,
        "w_norm": w.norm().item(),
    }
