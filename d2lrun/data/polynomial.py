"""§4.4 Model selection, underfitting and overfitting: a cubic fitted with 2, 4 or 20 features.

x ~ N(0, 1),  features x^i / i! for i < max_degree,  y = features · true_w + N(0, noise²)
"""

import math

import torch
from omegaconf import DictConfig

from d2lrun.data import Spec, Split, data_generator
from d2lrun.errors import UsageError


def poly_data(
    max_degree: int,
    true_w: list[float],
    num_examples: int,
    noise: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's features and labels, with an explicit generator for reproducibility."""
    w = torch.zeros(max_degree)
    w[: len(true_w)] = torch.tensor(true_w)
    x = torch.normal(0, 1, (num_examples, 1), generator=generator)  # (N, 1)
    # Divide by i! (gamma(i + 1)) so that large powers do not dominate the gradients.
    factorials = torch.tensor([math.factorial(i) for i in range(max_degree)], dtype=torch.float32)
    features = x ** torch.arange(max_degree) / factorials  # (N, max_degree)
    labels = features @ w + torch.normal(0, noise, (num_examples,), generator=generator)
    return features, labels.reshape(-1, 1)  # (N, max_degree), (N, 1)


def load(cfg: DictConfig, seed: int) -> tuple[Split, Split, Spec]:
    if cfg.num_features > cfg.max_degree or len(cfg.true_w) > cfg.max_degree:
        raise UsageError(
            f"dataset.num_features={cfg.num_features} and dataset.true_w "
            f"({len(cfg.true_w)} values) must not exceed dataset.max_degree={cfg.max_degree}. "
            f"Fix: dataset.max_degree={max(cfg.num_features, len(cfg.true_w))}."
        )
    g = data_generator(seed)
    n, d = cfg.num_train, cfg.num_features
    features, labels = poly_data(cfg.max_degree, list(cfg.true_w), n + cfg.num_val, cfg.noise, g)
    true_w = (list(cfg.true_w) + [0.0] * d)[:d]
    spec = Spec("polynomial", "regression", d, 1, true_w=true_w)  # no bias: true_b None
    X = features[:, :d]  # the model sees only the first num_features columns
    return Split(X[:n], labels[:n]), Split(X[n:], labels[n:]), spec
