"""Reload a saved run: compose its config again through Hydra; evaluate, predict, resume it.

    run = load_run("outputs/2026-11-26/10-00-00")
    run.predict(new_rows)            # a DataFrame for CSV runs, uint8 images for Fashion-MNIST

Every checkpoint keeps the run's command-line overrides (with absolute paths). Reloading composes
`config.yaml` with those plus the new ones through Hydra's Compose API, exactly as the command line
would, then refuses only changes that would change what the weights mean: the model, the data's
features, the seed (and, to resume, the optimizer). Where the data lives may change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from d2lrun.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    load_full_checkpoint,
    load_state_dict_strict,
)
from d2lrun.config import PATH_KEYS, checked, resolve_device
from d2lrun.errors import UsageError
from d2lrun.files import remove_stale_temporaries

LOCATION_KEYS = (*PATH_KEYS, "download")  # the dataset keys that say where data is, not what it is
MEANING = ("model", "dataset", "seed")  # what a reloaded run must keep


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def merge_overrides(base: Sequence[str], new: Sequence[str]) -> list[str]:
    """base less the keys that new sets again, then new (flags such as -m pass through).

    When new picks another option of a group (logger=none for a run of logger=mlflow), base's keys
    of that group go too: they belonged to the other option (logger.tracking_uri).
    """
    again = {_key(o): o.partition("=")[2] for o in new if "=" in o and not o.startswith("-")}
    switched = {
        _key(o)
        for o in base
        if "." not in _key(o) and _key(o) in again and o.partition("=")[2] != again[_key(o)]
    }
    return [
        o for o in base if _key(o) not in again and _key(o).partition(".")[0] not in switched
    ] + list(new)


def saved_overrides(overrides: Sequence[str], cfg: DictConfig) -> list[str]:
    """A run's overrides as its checkpoints keep them: no resume=, the paths it uses absolute
    (the dataset's, and the MLflow store's, so that resume logs to the same one from anywhere)."""
    paths = {
        f"dataset.{k}": cfg.dataset[k] for k in PATH_KEYS if isinstance(cfg.dataset.get(k), str)
    }
    if isinstance(cfg.logger.get("tracking_uri"), str):
        paths["logger.tracking_uri"] = cfg.logger.tracking_uri
    quoted = {k: str(v).replace("\\", "\\\\").replace("'", "\\'") for k, v in paths.items()}
    return merge_overrides(
        [o for o in overrides if _key(o) != "resume"], [f"{k}='{v}'" for k, v in quoted.items()]
    )


def run_overrides(ckpt: dict, source: Path) -> list[str]:
    """The overrides a checkpoint's run was started with (less resume=)."""
    saved = ckpt.get("overrides")
    if saved is None:  # written by d2lrun 0.1: the run folder's .hydra/ has them
        hydra_file = source.parent / ".hydra" / "overrides.yaml"
        if not hydra_file.exists():
            raise UsageError(
                f"{source} does not say how its run was configured (d2lrun 0.1, without "
                f"its .hydra/ folder). Fix: give the run folder it came from."
            )
        saved = list(OmegaConf.load(hydra_file))
    return [o for o in saved if _key(o) != "resume"]


def compose_run(ckpt: dict, source: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The saved run's config, composed again from its overrides plus new ones (Compose API)."""
    from d2lrun.config import compose

    return compose(merge_overrides(run_overrides(ckpt, source), overrides))


def check_same_meaning(
    saved: dict, cfg: DictConfig, what: str, keys: Sequence[str] = MEANING
) -> None:
    """Refuse, in one line, a change to what the weights mean; where the data is may change."""
    now = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in keys:
        section, _, name = key.partition(".")
        a, b = saved.get(section), now.get(section)
        if name:
            a, b = (a or {}).get(name), (b or {}).get(name)
        if section == "dataset":
            a, b = ({k: v for k, v in d.items() if k not in LOCATION_KEYS} for d in (a, b))
        diff = _first_difference(a, b, key)
        if diff:
            k, was, asked = diff
            drop = f"{k[:-5]}={asked}" if k.endswith(".name") else f"{k}=..."  # a group's option
            raise UsageError(
                f"{what} cannot change {k} (the run has {k}={was}, asked {k}={asked}). "
                f"Fix: drop {drop}, or start a new run."
            )


def _first_difference(a, b, prefix: str):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in dict.fromkeys([*a, *b]):
            diff = _first_difference(a.get(k), b.get(k), f"{prefix}.{k}")
            if diff:
                return diff
        return None
    return None if a == b else (prefix, a, b)


def resume_arguments(resume: str, args: Sequence[str]) -> list[str]:
    """The command line of `d2lrun resume=RUN ...`: the run's own overrides, then the new ones."""
    source = find_checkpoint(resume)
    return merge_overrides(run_overrides(load_full_checkpoint(source, "resuming"), source), args)


def resume_checkpoint(cfg: DictConfig) -> dict:
    """The checkpoint that cfg.resume names, after checking cfg keeps what its weights mean."""
    source = find_checkpoint(cfg.resume)
    # A run killed inside a checkpoint write (kill -9, power loss) left a temporary file there.
    remove_stale_temporaries(source.parent)
    ckpt = load_full_checkpoint(source, "resuming")
    # Another optimizer could not take the saved state (momentum buffers, Adam moments).
    check_same_meaning(ckpt["config"], cfg, f"resume={cfg.resume}", (*MEANING, "optim.name"))
    return ckpt


@dataclass
class SavedRun:
    """A reloaded run: the model (eval mode, on `device`), its config, data spec and source; and
    its folder's record: `metrics` (a DataFrame of the epochs), `summary`, `plot()`."""

    model: nn.Module
    config: DictConfig
    spec: dict
    checkpoint: Path
    device: torch.device

    @property
    def run_dir(self) -> Path:
        """The run folder: where the checkpoint is, with metrics.csv, metrics.json, curves.png."""
        return self.checkpoint.parent

    @property
    def metrics(self):
        """One row per epoch, as metrics.csv has them: a pandas DataFrame."""
        import pandas as pd

        return pd.read_csv(self._file("metrics.csv"))

    @property
    def summary(self) -> dict:
        """metrics.json: status, final and best metrics, wall time, device."""
        import json

        return json.loads(self._file("metrics.json").read_text())

    def plot(self):
        """The loss (and accuracy) curves as a matplotlib Figure, as curves.png draws them."""
        from d2lrun.files import curves_figure

        title = f"{self.config.model.name} on {self.spec['dataset']}"
        return curves_figure(self.metrics.to_dict("records"), title)

    def _file(self, name: str) -> Path:
        if not (self.run_dir / name).exists():
            raise UsageError(
                f"{self.run_dir} has no {name}. Fix: load_run the run folder that d2lrun wrote."
            )
        return self.run_dir / name

    def predict(self, inputs) -> list:
        """Predict raw inputs: a DataFrame of rows (CSV runs) or uint8 images (N, 28, 28).

        Returns class names for classification and floats for regression.
        """
        X = self.prepare(inputs)
        with torch.no_grad():
            out = self.model(X)
        if self.spec["task"] == "classification":
            return [self.spec["class_names"][i] for i in out.argmax(dim=1).tolist()]
        scale = self.spec.get("target_scale")  # predictions in the target's own units
        return (
            (out * scale["std"] + scale["mean"] if scale else out)
            .reshape(len(X), -1)
            .squeeze(1)
            .tolist()
        )

    def prepare(self, inputs) -> torch.Tensor:
        """Raw inputs -> the tensor the model was trained on, with the run's stored statistics."""
        from d2lrun.data import prepare_batch

        if self.spec.get("preprocess"):  # a table: the statistics fitted when it trained
            import pandas as pd

            from d2lrun.data.csv import transform

            if not isinstance(inputs, pd.DataFrame):
                raise UsageError(
                    f"this run was trained on a CSV table; predict takes a pandas "
                    f"DataFrame, not {type(inputs).__name__}. Fix: pd.read_csv(FILE)."
                )
            return torch.from_numpy(transform(inputs, self.spec["preprocess"])).to(self.device)
        X = torch.as_tensor(inputs)
        shape = tuple(self.spec["image_shape"] or ())
        if shape:
            X = X.reshape(1, *X.shape) if X.ndim == 2 else X  # one image (H, W) -> (1, H, W)
            X = X.unsqueeze(1) if X.ndim == 3 else X  # (N, H, W) -> (N, 1, H, W)
            if tuple(X.shape[1:]) != shape:
                raise UsageError(
                    f"images must be (N, {shape[1]}, {shape[2]}) uint8; got "
                    f"{tuple(X.shape)}. Fix: give images of the run's size."
                )
        return prepare_batch(X.to(self.device))


def load_run(
    path: str | Path | None = None,
    ckpt: str | Path | None = None,
    device: str = "cpu",
    overrides: Sequence[str] = (),
) -> SavedRun:
    """Rebuild a run's model: from a run folder (its final weights) or one checkpoint file.

    `overrides` may say where the run's data is now (`dataset.root=...`, `dataset.path=...`).
    """
    from d2lrun.models import build_model

    source = Path(ckpt) if ckpt else find_checkpoint(path)
    saved = load_full_checkpoint(source, "reloading")
    weights = saved["model"]
    if ckpt is None and (source.parent / "model.pt").exists():  # a finished run: its final weights
        weights = load_checkpoint(source.parent / "model.pt")
    cfg = compose_run(saved, source, overrides)
    check_same_meaning(saved["config"], cfg, str(source))
    cfg = checked(cfg)
    dev = resolve_device(device)
    model = build_model(cfg.model, saved["spec"])
    load_state_dict_strict(model, weights, str(source))
    return SavedRun(model.to(dev).eval(), cfg, saved["spec"], source, dev)


def evaluate_run(run: SavedRun) -> dict:
    """Metrics of the reloaded model on the held-out split of the run's own dataset."""
    from d2lrun.data import build_data
    from d2lrun.models import loss_kind
    from d2lrun.trainer import evaluate, loss_for

    fold = tuple(run.spec["fold"]) if run.spec.get("fold") else None  # a fold of a k-fold run
    _, val, spec = build_data(run.config.dataset, run.config.seed, run.device, fold)
    loss_fn = loss_for(spec["task"], loss_kind(run.config.model))
    scale, log_rmse = spec.get("target_scale"), run.config.trainer.log_rmse
    metrics = evaluate(run.model, loss_fn, val, spec["task"] == "classification", scale, log_rmse)
    return {f"val_{k}": v for k, v in metrics.items()}


def read_inputs(run: SavedRun, path: Path):
    """Read new inputs for `run`: CSV rows, or uint8 images from .npy / .pt."""
    if not path.exists():
        raise UsageError(f"input={path}: no such file. Fix: give a file of new inputs.")
    if run.spec.get("preprocess") or path.suffix == ".csv":
        from d2lrun.data.csv import read_table

        return read_table(path, "input", run.spec.get("na_values"))
    if path.suffix == ".npy":
        import numpy as np

        return np.load(path, allow_pickle=False)
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)
    raise UsageError(
        f"input={path}: unknown kind of file. Fix: give .csv rows, or .npy / .pt uint8 images."
    )


def predict_file(run: SavedRun, path: Path, out: Path) -> int:
    """Predict every input in `path` and write them, one row each, to the CSV file `out`.

    A table's rows keep their identifying columns (dataset.drop, e.g. Id; all of them when it drops
    none) beside the prediction, named after the target: Kaggle's submission format (§4.10).
    """
    import pandas as pd

    from d2lrun.files import atomic_write

    inputs = read_inputs(run, path)
    predictions = run.predict(inputs)
    if isinstance(inputs, pd.DataFrame):
        missing = [c for c in run.spec.get("drop", []) if c not in inputs.columns]
        if missing:
            raise UsageError(f"input={path} lacks the column(s) {missing} the run carries into its "
                             f"predictions (dataset.drop). Fix: add them.")  # fmt: skip
        kept = run.spec.get("drop") or list(inputs.columns)
        frame = inputs[kept].copy()
        frame[run.spec.get("target") or "prediction"] = predictions
    else:
        frame = pd.DataFrame({"prediction": predictions})
    atomic_write(out, frame.to_csv(index=False).encode())
    return len(predictions)
