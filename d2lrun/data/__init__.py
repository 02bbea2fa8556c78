"""Datasets: `build_data(cfg, seed, device, fold) -> (train, val, spec)`, one module each; and
`read_inputs`, a saved run's new inputs to predict.

Every dataset fits in memory: each split is two whole tensors on the training device, batched by
slicing a shuffled index (d2lrun.trainer), no DataLoader. Checkpoints keep `spec` for predictions.
"""

import functools
import hashlib
import importlib
import json
import os
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from d2lrun.errors import UsageError, note

# dataset.name: its module d2lrun.data.<name> has load(cfg, seed) -> (train, val, spec).
# Tables fit their statistics on the training rows, so they split folds themselves, and a saved
# run's statistics transform them again: load(cfg, seed, fold, fitted).
TABLES = ("csv", "kaggle_house")


@dataclass
class Split:
    """One split as whole tensors: X features or uint8 images (N, C, H, W), y (N, 1) or (N,)."""

    X: torch.Tensor
    y: torch.Tensor
    # A regression target stored as (y - mean) / std: metrics and predictions scale it back.
    scale: dict | None = None  # {"mean": ..., "std": ...}

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.X.to(device), self.y.to(device), self.scale)


@dataclass
class Spec:
    """What the data decided. A checkpoint keeps it as a dict (dataclasses.asdict); Spec(**d)."""

    dataset: str
    task: str  # "regression" or "classification"
    num_inputs: int  # features after one-hot encoding, or pixels
    num_outputs: int  # classes, or values per example
    image_shape: list[int] | None = None  # (C, H, W)
    class_names: list[str] | None = None
    target_scale: dict | None = None  # {"mean", "std"} that a regression target was scaled by
    fold: list[int] | None = None  # [k, i]: validated on fold i of k (§4.10)
    target: str | None = None  # a table's target column
    drop: list[str] = field(default_factory=list)  # a table's id columns, kept in predictions
    preprocess: dict | None = None  # a table's fitted statistics (d2lrun.data.csv)
    sha1: str | None = None  # a table's file: d2lrun-eval tells it from another file
    na_values: list[str] | None = None  # the strings a table reads as missing
    true_w: list[float] | None = None  # generated data: the weights (§3.2, §4.4, §4.5)
    true_b: float | None = None
    true_kernel: list[list[float]] | None = None  # §6.2.4's edge detector


def build_data(
    cfg: DictConfig,
    seed: int,
    device: torch.device | str = "cpu",
    fold: list[int] | None = None,
    fitted: Spec | None = None,
) -> tuple[Split, Split, Spec]:
    """The dataset cfg.name on `device`; with fold=[k, i], validated on fold i of k (§4.10);
    fitted: a saved run's spec, whose statistics a table is transformed with (d2lrun.data.csv)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    if fitted is not None and cfg.name in TABLES:  # not cached: the key sorts dicts whose
        train, val, spec = read(config, seed, fold, fitted)  # order is the features' order
    else:
        # A file edited between two runs of one process (a notebook) is read again: the size and
        # modification time of a table's files are part of the key.
        splits = ("train", "test") if cfg.name in TABLES else ()
        files = sorted({table_file(cfg, split) for split in splits})
        stamp = [os.path.isfile(f) and [os.stat(f).st_mtime_ns, os.stat(f).st_size] for f in files]
        train, val, spec = load(json.dumps([config, seed, fold, stamp], sort_keys=True))
    return train.to(device), val.to(device), spec


def sha1_of(path: str | Path) -> str | None:
    """The SHA-1 of a file's bytes; None where it is no file."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest() if os.path.isfile(path) else None


def table_file(cfg: DictConfig, split: str = "train") -> str:
    """The file a table's rows are read from: dataset.path, or the Kaggle file of split (images:
    None)."""
    if cfg.name == "kaggle_house":
        from d2lrun.data.kaggle_house import book_file

        return str(book_file(cfg, split))
    return cfg.get("path")


@functools.lru_cache(maxsize=4)  # the jobs of a sweep in one process decode a dataset once
def load(key: str) -> tuple[Split, Split, Spec]:
    return read(*json.loads(key)[:3])


def read(config: dict, seed: int, fold: list[int] | None, fitted: Spec | None = None):
    cfg = OmegaConf.create(config)
    module = importlib.import_module(f"d2lrun.data.{cfg.name}")
    if cfg.name in TABLES:
        return module.load(cfg, seed, fold, fitted)
    train, val, spec = module.load(cfg, seed)
    if not fold:
        return train, val, spec
    rows = map(torch.from_numpy, fold_rows(len(train), *fold, cfg.shuffle_folds, seed))
    keep, held_out = (Split(train.X[r], train.y[r], train.scale) for r in rows)
    return keep, held_out, replace(spec, fold=list(fold))


def fold_rows(n: int, k: int, i: int, shuffle: bool, seed: int) -> tuple[np.ndarray, ...]:
    """(training rows, held-out rows) of fold i of k over n rows (§4.10), shuffled if shuffle."""
    if n < k:  # a fold holds out a row and trains on another: 1 row fits no k (2 or more)
        rows, fix = (f"{n} rows", f"dataset.folds={n}") if n > 1 else (f"{n} row", "add rows")
        raise UsageError(f"dataset.folds={k} is more folds than the {rows}. Fix: {fix}.")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    # The book's `get_k_fold_data` holds out slices of n // k rows and never the last n % k; here
    # the first n % k folds hold one row more, so every row is held out once (the book's if k | n).
    folds = np.array_split(order, k)
    return np.concatenate(folds[:i] + folds[i + 1 :]), folds[i]


def data_generator(seed: int) -> torch.Generator:
    """The random stream of generated data (synthetic, polynomial), apart from torch's global."""
    # Seeded alike, the two drew the same normals: a model's initial weights came out 0.96
    # correlated with the first training example (§4.5's ‖w‖ then fell from 13.7 to 3.6 at λ = 0).
    return torch.Generator().manual_seed(seed + 0xDA7A)


def prepare_batch(X: torch.Tensor) -> torch.Tensor:
    """Images are stored as uint8 and scaled to [0, 1] per batch, as ToTensor would (§3.5)."""
    return X.float().div_(255) if X.dtype == torch.uint8 else X


def as_inputs(inputs, spec: Spec, source: str, device: torch.device) -> torch.Tensor:
    """New inputs of a run on numbers or images as the float32 tensor its model takes, on device,
    else one line that says how to make them so."""
    is_tensor = isinstance(inputs, torch.Tensor)  # taken as it is (on a GPU, or needing grad)
    try:  # anything else through numpy, as a copy: pandas 3 arrays are read-only
        X = inputs.detach() if is_tensor else torch.as_tensor(np.array(inputs))
    except (TypeError, ValueError, RuntimeError) as e:  # a DataFrame of text, ragged lists
        raise UsageError(
            f"predict takes an array of inputs; {type(inputs).__name__} cannot be one ({e}). "
            f"Fix: a numpy array or torch tensor."
        ) from None
    if spec.image_shape:  # §6.2.4's 0/1 images are numbers, not pixels out of 255
        X = as_images(X, spec).to(device)
        X = (prepare_batch(X) if spec.class_names else X).float()
    else:
        X = X.reshape(-1, X.numel() or spec.num_inputs) if X.ndim == 1 else X  # one, or []
        if X.ndim != 2 or X.shape[1] != spec.num_inputs:
            raise UsageError(
                f"inputs must be (N, {spec.num_inputs}), one row per example; got "
                f"{tuple(X.shape)}. Fix: {spec.num_inputs} numbers per example."
            )
        X = X.to(device, torch.float32)
    if not torch.isfinite(X).all():  # predicted nan or inf, written as if all were well
        raise UsageError(
            f"{source} holds NaN, inf or numbers beyond float32's range (about 3.4e38), which "
            f"the model cannot use. Fix: give finite numbers."
        )
    return X


def as_images(X: torch.Tensor, spec: Spec) -> torch.Tensor:
    """New inputs of an image run (one or N, with or without channels) as (N, C, H, W) of the
    run's pixels, else one line that says how to make them so."""
    shape, given = tuple(spec.image_shape), tuple(X.shape)  # as the caller passed them
    X = X.reshape(1, *X.shape) if X.ndim == 2 else X  # one image (H, W) -> (1, H, W)
    X = X.unsqueeze(1) if X.ndim == 3 else X  # (N, H, W) -> (N, 1, H, W)
    pixels = torch.uint8 if spec.class_names else X.dtype  # §6.2.4's are floats
    if tuple(X.shape[1:]) == shape and X.dtype == pixels:
        return X
    (h, w), fix = shape[1:], "images of the run's size"
    if given[-1:] == (h * w,):  # rows of pixels, as a CSV of Fashion-MNIST has them
        fix = f"images.reshape(-1, {h}, {w})"
    elif spec.class_names and X.is_floating_point() and X.numel() and X.max() <= 1:
        # ToTensor's 0-1 floats: as uint8 they would be 0s and 1s, and predict one class
        fix = "np.asarray((images * 255).round(), np.uint8), pixels from 0 to 255 as the dataset's"
    elif spec.class_names:
        fix += ", from 0 to 255 as the dataset's (np.asarray(images, np.uint8))"
    raise UsageError(
        f"images must be (N, {h}, {w}) {str(pixels).removeprefix('torch.')}; got {given} "
        f"{str(X.dtype).removeprefix('torch.')}. Fix: {fix}."
    )


def check_log_rmse(train: Split, val: Split, spec: Spec) -> None:
    """§4.10's log RMSE is a regression's, and takes the log of the target: each is positive."""
    if spec.task != "regression":  # not left unmeasured and unsaid
        raise UsageError(
            f"trainer.log_rmse=true measures a regression (§4.10), and this run classifies "
            f"{spec.target or spec.dataset}. Fix: trainer.log_rmse=false."
        )
    scale = spec.target_scale or {"mean": 0.0, "std": 1.0}
    y = torch.cat([train.y, val.y]).reshape(-1) * scale["std"] + scale["mean"]
    if len(y) and y.min().item() <= 0:
        raise UsageError(
            f"trainer.log_rmse=true takes the log of the target, and {spec.target or 'it'} has "
            f"values <= 0 (smallest {y.min().item():.4g}). Fix: trainer.log_rmse=false."
        )


def read_inputs(spec: Spec, path: Path):
    """New inputs for a saved run (d2lrun-predict): CSV rows, or uint8 images from .npy / .pt."""
    if not path.exists():
        raise UsageError(f"input={path}: no such file. Fix: give a file of new inputs.")
    kind = {".pth": ".pt"}.get(path.suffix.lower(), path.suffix.lower())  # IMAGES.NPY, x.pth
    if spec.preprocess:  # a table: CSV rows, whatever the file is named
        from d2lrun.data.table import read_table

        if kind in (".npy", ".pt"):
            raise UsageError(
                f"input={path}: this run was trained on a CSV table; it takes CSV rows, not a "
                f"{path.suffix} array. Fix: give a .csv file with the training file's columns."
            )
        as_text = [*spec.preprocess["categorical"], *spec.drop]  # ids kept as written: 007
        return read_table(path, "input", spec.na_values, as_text)
    takes = "uint8 images" if spec.image_shape else "arrays of inputs"
    save = "np.save(FILE, array), or torch.save(tensor, FILE) (torch.from_numpy(array))"
    if kind == ".csv":
        raise UsageError(
            f"input={path}: this run was not trained on a CSV table; it takes {takes} in .npy "
            f"or .pt. Fix: save them with {save}."
        )
    if kind not in (".npy", ".pt"):
        raise UsageError(f"input={path}: unknown kind of file. Fix: give {takes} in .npy or .pt.")
    try:  # never unpickling: a file of Python objects could run code when loaded
        if kind == ".npy":
            loaded = np.load(path, allow_pickle=False)
        else:
            loaded = torch.load(path, weights_only=True)
    except (ValueError, pickle.UnpicklingError, RuntimeError, OSError) as e:
        # A file cut short or damaged (EOF, a bad zip) is said as such, not as one that unpickles
        if not isinstance(e, pickle.UnpicklingError) and "pickle" not in str(e).lower():
            said = (str(e).strip().splitlines() or [type(e).__name__])[0].partition(". ")[0]
            raise UsageError(f"input={path} cannot be read ({said}). Fix: save {takes} again "
                             f"with {save}.") from None  # fmt: skip
        raise UsageError(  # torch.save of a numpy array pickles it
            f"input={path} cannot be read as {takes} without unpickling Python objects "
            f"({type(e).__name__}), which d2lrun never does. Fix: save them with {save}."
        ) from None
    if not isinstance(loaded, (np.ndarray, torch.Tensor)):  # a dict of tensors (a state_dict)
        raise UsageError(f"input={path} holds a {type(loaded).__name__}, not a tensor of {takes}. "
                         f"Fix: save them with {save}.")  # fmt: skip
    if loaded.shape[:1] == (0,):  # it wrote a header alone over the run's predictions.csv
        raise UsageError(f"input={path} holds no inputs (shape {tuple(loaded.shape)}). Fix: give "
                         f"a file of one or more.")  # fmt: skip
    return loaded


def predictions_table(spec: Spec, inputs, predictions: list, path: Path):
    """d2lrun-predict's output: the predictions beside the inputs' ids (a DataFrame)."""
    import pandas as pd

    from d2lrun.data.table import read_table

    if not isinstance(inputs, pd.DataFrame):
        return pd.DataFrame({"prediction": predictions})
    kept = [c for c in spec.drop if c in inputs.columns]  # new rows may lack a leaky one
    if lacks := [c for c in spec.drop if c not in kept]:
        note(f"input={path} lacks the dataset.drop column(s) {lacks}: predictions without them")
    # Rows keep their ids (dataset.drop; all columns when it drops none) and the truth when the
    # input has it, as written (2, not the 2.0 pandas reads in an integer column with an empty
    # cell), beside the prediction named after the target: Kaggle's submission (§4.10).
    name = spec.target or "prediction"
    truth = [name] * (name in inputs.columns and name not in spec.drop)
    written = read_table(path, "input", spec.na_values, list(inputs.columns))
    frame = written[[*kept, *truth] if spec.drop else list(inputs.columns)].copy()
    column = f"{name}_predicted" if name in frame else name  # truth kept beside
    if column in frame:  # an earlier d2lrun-predict's output, given again
        note(f"input={path} has a column '{column}' already: this run's predictions replace it")
    frame[column] = predictions
    return frame
