"""Dataset registry: `build_data(cfg, seed, device) -> (train, val, spec)`.

Every dataset here fits in memory, so each split is held as two whole tensors on the training
device and batched by slicing a shuffled index (see d2lrun.trainer) — no DataLoader, no per-sample
transforms. `spec` is a plain dict of what the data decides (inputs, classes, image shape,
preprocessing statistics); models read it and it is saved in every checkpoint.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

DATASETS = {
    "synthetic": "d2lrun.data.synthetic",
    "csv": "d2lrun.data.csv",
    "fashion_mnist": "d2lrun.data.fashion_mnist",
    "polynomial": "d2lrun.data.polynomial",
    "kaggle_house": "d2lrun.data.kaggle_house",
    "kernel": "d2lrun.data.kernel",
}
# Tables fit their statistics on the training rows, so they split folds themselves: load(..., fold).
SPLIT_FOLDS_THEMSELVES = ("csv", "kaggle_house")


@dataclass
class Split:
    """One split as whole tensors: X is float features or uint8 images (N, C, H, W); y is (N, 1)
    or (N,)."""

    X: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> Split:
        return Split(self.X.to(device), self.y.to(device))


# Decoded datasets, keyed by their config: the jobs of a sweep in one process decode each once.
_CACHE: dict[str, tuple[Split, Split, dict]] = {}
_CACHE_SIZE = 4


def build_data(
    cfg: DictConfig,
    seed: int,
    device: torch.device | str = "cpu",
    fold: tuple[int, int] | None = None,
) -> tuple[Split, Split, dict]:
    """Load (or reuse) the dataset named by cfg.name and move both splits to `device`.

    With fold=(k, i), the validation split is the i-th of k folds of the training rows (§4.10).
    """
    name = cfg.name
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    key = json.dumps([config, seed, fold], sort_keys=True)
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        module = importlib.import_module(DATASETS[name])
        if fold and name in SPLIT_FOLDS_THEMSELVES:
            _CACHE[key] = module.load(cfg, seed, fold)
        else:
            train, val, spec = build_data(cfg, seed) if fold else module.load(cfg, seed)
            _CACHE[key] = fold_splits(train, cfg, seed, fold, spec) if fold else (train, val, spec)
    train, val, spec = _CACHE[key]
    return train.to(device), val.to(device), spec


def fold_splits(train: Split, cfg: DictConfig, seed: int, fold: tuple[int, int], spec: dict):
    """Fold i of k over generated training examples; the held-out part is the validation split."""
    from d2lrun.kfold import fold_rows

    keep, held_out = (
        torch.from_numpy(a) for a in fold_rows(len(train), *fold, cfg.shuffle_folds, seed)
    )
    return (
        Split(train.X[keep], train.y[keep]),
        Split(train.X[held_out], train.y[held_out]),
        {
            **spec,
            "fold": list(fold),
        },
    )


def data_generator(seed: int) -> torch.Generator:
    """The random stream of generated data (synthetic, polynomial), apart from torch's global one.

    Seeded alike, the two draw the same normals, and the initial weights of a model came out 0.96
    correlated with the first training example (§4.5's ‖w‖ then fell from 13.7 to 3.6 at λ = 0).
    """
    return torch.Generator().manual_seed(seed + 0xDA7A)


def prepare_batch(X: torch.Tensor) -> torch.Tensor:
    """Images are stored as uint8 and scaled to [0, 1] per batch, as ToTensor would (§3.5)."""
    return X.float().div_(255) if X.dtype == torch.uint8 else X
