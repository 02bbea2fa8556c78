"""The optimizer and the regularizers that change it, built from config in one place.

L2 is weight decay on weights only (§4.5): parameters with two or more dimensions (the weight
matrices and kernels) get optim.weight_decay, biases and batch-norm scales get none.
L1 adds regularizer.lambd · Σ|w| over the same weights to the training loss.
Dropout is a layer, built into the model (d2lrun.models).
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn


class MinibatchSGD(torch.optim.Optimizer):
    """The book's `sgd` (§3.2): param -= lr * grad, with L2 added as weight decay (§4.5).

    The book sums the batch loss and divides the gradient by batch_size; d2lrun's losses are
    already means over the batch, so the division is built in. §4.5 adds λ/2·‖w‖² to every
    example's loss, which after that division is λ·w in the gradient: weight_decay=λ.
    tests/unit/test_scratch_concise.py checks both against the book's code.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    grad = p.grad if group["weight_decay"] == 0 else p.grad + group["weight_decay"] * p
                    p.sub_(group["lr"] * grad)


def decayed(p: torch.Tensor) -> bool:
    """Weights (matrices, kernels) are regularized; biases and norm scales (vectors) are not."""
    return p.ndim >= 2


def build_optimizer(model: nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """SGD or Adam over the model, weight decay on weights only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if decayed(p)], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if not decayed(p)], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.name == "sgd":
        if getattr(model, "scratch", False) and cfg.momentum == 0:
            return MinibatchSGD(groups, lr=cfg.lr)
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    raise ValueError(f"Unknown optim '{cfg.name}'. Choose one of: sgd, adam.")


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Σ|w| over the weights (not the biases), §4.5."""
    return sum(p.abs().sum() for p in model.parameters() if decayed(p))
