"""The book's synthetic regression data (§3.1-3.2, §4.5): y = Xw + b + ε, X ~ N(0, 1),
ε ~ N(0, noise²)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from d2lrun.data import Spec, Split, data_generator


def true_params(cfg: DictConfig) -> tuple[torch.Tensor, float]:
    """w as a tensor (a list as given, or one number repeated num_inputs times) and b."""
    if OmegaConf.is_list(cfg.w):
        return torch.tensor(list(cfg.w), dtype=torch.float32), float(cfg.b)
    return torch.full((cfg.num_inputs,), float(cfg.w)), float(cfg.b)


def synthetic_data(
    w: torch.Tensor, b: float, num_examples: int, noise: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's `synthetic_data` (§3.2), with an explicit generator for reproducibility."""
    X = torch.normal(0, 1, (num_examples, len(w)), generator=generator)  # (N, d)
    y = X @ w + b + torch.normal(0, noise, (num_examples,), generator=generator)
    return X, y.reshape(-1, 1)  # (N, d), (N, 1)


def load(cfg: DictConfig, seed: int) -> tuple[Split, Split, Spec]:
    w, b = true_params(cfg)
    X, y = synthetic_data(w, b, cfg.num_train + cfg.num_val, cfg.noise, data_generator(seed))
    n = cfg.num_train
    spec = Spec("synthetic", "regression", len(w), 1, true_w=w.tolist(), true_b=b)
    return Split(X[:n], y[:n]), Split(X[n:], y[n:]), spec
