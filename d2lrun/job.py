"""One training job, start to finish: config -> data -> model -> fit -> files in the run folder."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from d2lrun.checkpoint import load_state_dict_strict, save_torch
from d2lrun.config import checked, resolve_device
from d2lrun.data import build_data
from d2lrun.errors import Diverged, Interrupted
from d2lrun.files import plot_curves, shown, write_csv, write_json
from d2lrun.models import build_model, is_scratch
from d2lrun.models.init import apply_init
from d2lrun.optim import build_optimizer
from d2lrun.reload import resume_checkpoint, saved_overrides
from d2lrun.train import History, fit, loss_for, set_rng_state


def say(message: str) -> None:
    """Print a line at once, also when stdout is a file or a pipe (`d2lrun | tee log`)."""
    print(message, flush=True)


def train_job(cfg: DictConfig, run_dir: Path, overrides: list[str], log=say) -> dict:
    """Train as cfg says; write model.pt, last.pt, best.pt, metrics.csv/json, curves.png to run_dir.

    `overrides` are the command line's (Hydra's task overrides): with the config's absolute paths
    they go into every checkpoint, so that reload composes this run again from anywhere.
    """
    wall = time.perf_counter()
    ckpt = resume_checkpoint(cfg) if cfg.resume else None
    cfg = checked(cfg)
    device = resolve_device(cfg.device)
    run_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    train_split, val_split, spec = build_data(cfg.dataset, cfg.seed, device)
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
    loss_fn = loss_for(spec["task"], is_scratch(cfg.model))
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
        )
    except Diverged as e:
        status, reason = "diverged", str(e)
    except KeyboardInterrupt:
        status, reason = "interrupted", f"stopped by Ctrl-C after epoch {history.epoch}"
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
    write_json(run_dir / "metrics.json", summary)
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


def restore(ckpt: dict, model, optimizer, generator: torch.Generator) -> History:
    """Weights, optimizer state, random state and history from a checkpoint, to resume training."""
    load_state_dict_strict(model, ckpt["model"], "the checkpoint")
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])  # momentum buffers, Adam moments ...
    for group, h in zip(optimizer.param_groups, hyper):
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
