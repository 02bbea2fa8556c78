"""Reload a saved run: rebuild its model from the checkpoint alone, evaluate, predict, resume.

    run = load_run("outputs/2026-11-26/10-00-00")
    run.predict(new_rows)            # a DataFrame for CSV runs, uint8 images for Fashion-MNIST
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from d2lrun.checkpoint import find_checkpoint, is_full_checkpoint, load_checkpoint, load_state_dict_strict

# Overrides that would change what the checkpoint's weights (or optimizer state) mean; resuming refuses them.
FIXED_ON_RESUME = ("model", "dataset", "regularizer", "experiment", "seed")  # and every key below them
OPTIMIZER_CHOICE = ("optim", "optim.name")  # another optimizer: the saved state would not fit it


def resume_config(saved: dict, overrides: list[str], source: str):
    """The saved run's config with the user's compatible overrides applied (trainer.epochs=8, ...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.create(saved)
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group
        if key.startswith("hydra") or o.is_sweep_override():
            continue
        value = o.value()
        current = OmegaConf.select(cfg, key)
        if isinstance(current, dict) or OmegaConf.is_dict(current):  # a group choice like model=mlp
            current = current.get("name")
        fixed = key in OPTIMIZER_CHOICE or any(key == f or key.startswith(f + ".") for f in FIXED_ON_RESUME)
        if fixed and value != current:
            raise ValueError(f"resume={source} cannot change {key} (the checkpoint has {key}={current}, "
                             f"asked {key}={value}). Fix: drop {o.input_line}, or start a new run without resume=.")
        if key == "init" or key.startswith("init.") or value == current:
            continue  # initialisation no longer matters: the weights come from the checkpoint
        OmegaConf.update(cfg, key, value, merge=True, force_add=False)
    cfg.resume = source
    return cfg


@dataclass
class Run:
    """A reloaded run: the model (eval mode, on `device`), its config, the data spec, and where it came from."""

    model: nn.Module
    config: dict
    spec: dict
    checkpoint: Path
    device: torch.device

    def predict(self, inputs) -> list:
        """Predict raw inputs: a DataFrame of rows (CSV runs) or uint8 images (N, 28, 28) (image runs).

        Returns class names for classification and floats for regression.
        """
        X = self.prepare(inputs)
        with torch.no_grad():
            out = self.model(X)
        if self.spec["task"] == "classification":
            return [self.spec["class_names"][i] for i in out.argmax(dim=1).tolist()]
        return out.reshape(-1).tolist()

    def prepare(self, inputs) -> torch.Tensor:
        """Raw inputs -> the tensor the model was trained on, with the run's stored statistics."""
        from d2lrun.data import prepare_batch

        if self.spec["dataset"] == "csv":
            import pandas as pd

            from d2lrun.data.csv import transform

            if not isinstance(inputs, pd.DataFrame):
                raise ValueError(f"this run was trained on a CSV table; predict takes a pandas DataFrame, "
                                 f"not {type(inputs).__name__}.")
            return torch.from_numpy(transform(inputs, self.spec["preprocess"])).to(self.device)
        X = torch.as_tensor(inputs)
        if self.spec.get("image_shape"):
            shape = tuple(self.spec["image_shape"])
            if X.ndim == 2:
                X = X.unsqueeze(0)  # one image (H, W) -> (1, H, W)
            if X.ndim == 3:
                X = X.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
            if tuple(X.shape[1:]) != shape:
                raise ValueError(f"images must be (N, {shape[1]}, {shape[2]}) uint8; got {tuple(X.shape)}.")
        return prepare_batch(X.to(self.device))


def load_run(path: str | Path, ckpt: str | Path | None = None, device: str = "cpu") -> Run:
    """Rebuild a run's model from what it saved: run dir (final weights) or a checkpoint file."""
    from d2lrun.config import resolve_device
    from d2lrun.models import build_model

    source = Path(ckpt) if ckpt else find_checkpoint(path)
    saved = load_checkpoint(source)
    if not is_full_checkpoint(saved):
        raise ValueError(f"{source} is a bare state_dict without its config. Fix: pass the run directory, "
                         f"or ckpt=RUN/last.pt or RUN/best.pt.")
    weights = saved["model"]
    final = source.parent / "model.pt"
    if ckpt is None and final.exists():  # a finished run: its final weights
        weights = load_checkpoint(final)
    cfg = OmegaConf.create(saved["config"])
    dev = resolve_device(device)
    model = build_model(cfg.model, saved["spec"], cfg.regularizer)
    load_state_dict_strict(model, weights, str(source))
    return Run(model.to(dev).eval(), saved["config"], saved["spec"], source, dev)


def evaluate_run(run: Run) -> dict:
    """Metrics of the reloaded model on the held-out split of the run's own dataset."""
    from d2lrun.data import build_data
    from d2lrun.train import evaluate, loss_for

    cfg = OmegaConf.create(run.config)
    _, val, spec = build_data(cfg.dataset, cfg.seed, run.device)
    classify = spec["task"] == "classification"
    metrics = evaluate(run.model, loss_for(spec, getattr(run.model, "scratch", False)), val, classify)
    return {f"val_{k}": v for k, v in metrics.items()}


def read_inputs(run: Run, path: Path):
    """Read new inputs for `run`: CSV rows, or uint8 images from .npy / .pt."""
    if not path.exists():
        raise FileNotFoundError(f"input={path}: no such file. Fix: give a file of new inputs.")
    if run.spec["dataset"] == "csv" or path.suffix == ".csv":
        from d2lrun.data.csv import read_table

        return read_table(path)
    if path.suffix == ".npy":
        import numpy as np

        return np.load(path, allow_pickle=False)
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)
    raise ValueError(f"input={path}: unknown kind of file. Fix: give .csv rows, or .npy / .pt uint8 images.")


def predict_file(run: Run, path: Path, out: Path) -> int:
    """Predict every input in `path` and write them, one row each, to the CSV file `out`."""
    import pandas as pd

    from d2lrun.files import atomic_write

    inputs = read_inputs(run, path)
    predictions = run.predict(inputs)
    frame = inputs.copy() if isinstance(inputs, pd.DataFrame) else pd.DataFrame(index=range(len(predictions)))
    frame["prediction"] = predictions
    atomic_write(out, frame.to_csv(index=False).encode())
    return len(predictions)
