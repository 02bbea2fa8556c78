"""Synthetic regression data (§3.1-3.2, §4.5): y = Xw + b + ε, X ~ N(0, 1), ε ~ N(0, noise²)."""

import torch
from omegaconf import DictConfig, OmegaConf

from d2lrun.data import Spec, Split, data_generator


def synthetic_data(
    w: torch.Tensor, b: float, num_examples: int, noise: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's `synthetic_data` (§3.2), with an explicit generator for reproducibility."""
    X = torch.normal(0, 1, (num_examples, len(w)), generator=generator)  # (N, d)
    y = X @ w + b + torch.normal(0, noise, (num_examples,), generator=generator)
    return X, y.reshape(-1, 1)  # (N, d), (N, 1)


def load(cfg: DictConfig, seed: int) -> tuple[Split, Split, Spec]:
    # dataset.w: a list, or one number repeated num_inputs times
    w = list(cfg.w) if OmegaConf.is_list(cfg.w) else [cfg.w] * cfg.num_inputs
    w = torch.tensor(w, dtype=torch.float32)
    b = float(cfg.b)
    X, y = synthetic_data(w, b, cfg.num_train + cfg.num_val, cfg.noise, data_generator(seed))
    n = cfg.num_train
    spec = Spec("synthetic", "regression", len(w), 1, true_w=w.tolist(), true_b=b)
    return Split(X[:n], y[:n]), Split(X[n:], y[n:]), spec
