"""One training run, start to finish: config -> data -> model -> fit -> files in the run directory."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from d2lrun.checkpoint import (find_checkpoint, is_full_checkpoint, load_checkpoint, load_state_dict_strict,
                                save_torch)
from d2lrun.config import resolve_device, validate
from d2lrun.data import build_data
from d2lrun.files import plot_curves, write_csv, write_json
from d2lrun.models import build_model
from d2lrun.optim import build_optimizer
from d2lrun.train import Diverged, History, Interrupted, Options, fit, loss_for, set_rng_state


def say(message: str) -> None:
    """Print a line at once, also when stdout is a file or a pipe (`d2lrun | tee log`)."""
    print(message, flush=True)


def train_run(cfg: DictConfig, run_dir: Path, log=say, resume_overrides: list[str] | None = None) -> dict:
    """Train as cfg says, writing model.pt, last.pt, best.pt, metrics.csv/json and curves.png to run_dir."""
    wall = time.perf_counter()
    ckpt = None
    if cfg.get("resume"):
        from d2lrun.reload import resume_config

        ckpt_path = find_checkpoint(cfg.resume)
        ckpt = load_checkpoint(ckpt_path)
        if not is_full_checkpoint(ckpt):
            raise ValueError(f"{ckpt_path} is a bare state_dict (model.pt); resuming needs last.pt or best.pt. "
                             f"Fix: resume={shown(ckpt_path.parent)} (its last.pt).")
        cfg = resume_config(ckpt["config"], resume_overrides or [], str(ckpt_path))
    cfg = validate(cfg)
    device = resolve_device(cfg.device)
    run_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    train, val, spec = build_data(cfg.dataset, cfg.seed, device)
    model = build_model(cfg.model, spec, cfg.regularizer, cfg.init).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    generator = torch.Generator().manual_seed(cfg.seed)  # the shuffling order, saved in checkpoints
    history = History()
    if ckpt is not None:
        load_state_dict_strict(model, ckpt["model"], "the checkpoint")
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        optimizer.load_state_dict(ckpt["optimizer"])  # momentum buffers, Adam moments ...
        for group, h in zip(optimizer.param_groups, hyper):
            group.update(h)  # ... but lr and weight decay as configured now (resume optim.lr=0.01 works)
        set_rng_state(ckpt["rng"], generator)
        history = History(ckpt["epoch"], list(ckpt["history"]), ckpt["best"])
        log(f"resuming {cfg.resume} from epoch {history.epoch}")

    classify = spec["task"] == "classification"
    config = OmegaConf.to_container(cfg, resolve=True)
    opts = Options(cfg.trainer.epochs, cfg.trainer.batch_size, cfg.regularizer.get("lambd", 0.0)
                   if cfg.regularizer.name == "l1" else 0.0, cfg.trainer.checkpoint_every, cfg.trainer.progress,
                   cfg.trainer.compile)
    log(f"{cfg.model.name} on {spec['dataset']} ({len(train):,} train / {len(val):,} val) on {device}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters -> {shown(run_dir)}")

    summary = {"status": "running", "model": cfg.model.name, "dataset": spec["dataset"], "device": str(device),
               "epochs": cfg.trainer.epochs, "run_dir": str(run_dir),
               "resumed_from": str(cfg.resume) if cfg.get("resume") else None}
    status, reason = "completed", None
    try:
        fit(model, optimizer, loss_for(spec, getattr(model, "scratch", False)), train, val, opts, run_dir,
            generator, history, {"config": config, "spec": spec}, classify, log)
    except Diverged as e:
        status, reason = "diverged", str(e)
    except Interrupted:
        status, reason = "interrupted", f"stopped by Ctrl-C after epoch {history.epoch}"
    summary |= {"status": status, "reason": reason, "epochs_completed": history.epoch,
                "final": history.rows[-1] if history.rows else None, "best": history.best,
                "wall_seconds": round(time.perf_counter() - wall, 3)}
    if history.rows:
        write_csv(run_dir / "metrics.csv", history.rows)
        plot_curves(run_dir / "curves.png", history.rows, f"{cfg.model.name} on {spec['dataset']}")
    if status == "completed":
        save_torch(run_dir / "model.pt", {k: v.to("cpu") for k, v in model.state_dict().items()})
        if spec.get("true_w") is not None and hasattr(model, "get_w_b"):
            summary["learned"] = report_w_b(model, spec, log)
    write_json(run_dir / "metrics.json", summary)
    if status == "diverged":
        raise Diverged(reason)
    if status == "interrupted":
        raise Interrupted(history.epoch)
    return summary


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when it is below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def report_w_b(model, spec: dict, log) -> dict:
    """§3.2's closing check: the learned w and b against the true ones."""
    w, b = model.get_w_b()
    true_w, true_b = torch.tensor(spec["true_w"]), spec["true_b"]
    w, b = w.cpu(), float(b.cpu().reshape(-1)[0])
    if len(true_w) <= 10:
        log(f"error in estimating w: {[round(x, 6) for x in (true_w - w).tolist()]}  (w = {[round(x, 4) for x in w.tolist()]})")
        log(f"error in estimating b: {true_b - b:.6f}  (b = {b:.4f})")
    else:
        log(f"‖w‖₂ = {w.norm().item():.4f}; error ‖w - w_true‖₂ = {(true_w - w).norm().item():.6f}; error in b: {true_b - b:.6f}")
    return {"w": w.tolist(), "b": b, "w_error": (true_w - w).tolist(), "b_error": true_b - b,
            "w_norm": w.norm().item()}
