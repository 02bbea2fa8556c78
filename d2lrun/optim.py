"""The optimizer and the regularizers that change its update, built from config in one place.

L2 is weight decay on weights only (§4.5): parameters with two or more dimensions (the weight
matrices and kernels) get optim.weight_decay, biases and batch-norm scales get none.
L1 adds regularizer.lambd · sign(w) to the same weights' gradients: the gradient of the book's
λ·Σ|w| loss term, so the loss that is reported stays the data's own.
Dropout is a layer, built into the model (d2lrun.models).
"""

from __future__ import annotations

import inspect
from collections import defaultdict

import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim import adam, sgd

from d2lrun.errors import UsageError


class Optimizer:
    """torch.optim.SGD's or Adam's step by torch's functional kernel, in torch.optim's layout."""

    # Why not torch.optim.SGD itself: constructing it imports torch._dynamo, 2.3 s of start-up on
    # a 2-core CPU; its functional kernel does not. torch.optim.SGD(...).load_state_dict() takes
    # this one's state_dict (tests/unit/test_optim.py).

    def __init__(self, kind: type[torch.optim.Optimizer], groups: list[dict], **hyper):
        defaults = {  # every key torch.optim's own groups have, so that it can load our state_dict
            k: p.default
            for k, p in inspect.signature(kind.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        self.kind, self.state = kind, defaultdict(dict)
        self.param_groups = [
            {**defaults, "l1": 0.0, **hyper, **g, "params": list(g["params"])} for g in groups
        ]

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            for grad, p in zip(grads, params, strict=True) if g["l1"] else ():
                grad.add_(p.sign(), alpha=g["l1"])  # the gradient of l1 · Σ|w|
            if self.kind is torch.optim.SGD:
                self.sgd_step(g, params, grads)
            else:
                self.adam_step(g, params, grads)

    def sgd_step(self, g: dict, params: list, grads: list) -> None:
        momentum = g["momentum"] != 0  # without momentum, torch.optim.SGD keeps no state
        buffers = [self.state[p].get("momentum_buffer") if momentum else None for p in params]
        sgd.sgd(params, grads, buffers, weight_decay=g["weight_decay"], momentum=g["momentum"],
                lr=g["lr"], dampening=g["dampening"], nesterov=g["nesterov"],
                maximize=g["maximize"], foreach=g["foreach"], fused=g["fused"])  # fmt: skip
        for p, buffer in zip(params, buffers, strict=True) if momentum else ():
            self.state[p]["momentum_buffer"] = buffer

    def adam_step(self, g: dict, params: list, grads: list) -> None:
        for p in params:
            if not self.state[p]:  # as torch.optim.Adam: the step count is a CPU scalar
                self.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                 "exp_avg_sq": torch.zeros_like(p)}  # fmt: skip
        state = [self.state[p] for p in params]
        adam.adam(params, grads, [s["exp_avg"] for s in state], [s["exp_avg_sq"] for s in state],
                  [], [s["step"] for s in state], foreach=g["foreach"], fused=g["fused"],
                  amsgrad=g["amsgrad"], beta1=g["betas"][0], beta2=g["betas"][1], lr=g["lr"],
                  weight_decay=g["weight_decay"], eps=g["eps"], maximize=g["maximize"])  # fmt: skip

    def state_dict(self) -> dict:
        index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        groups = [{**g, "params": [index[p] for p in g["params"]]} for g in self.param_groups]
        return {"state": {index[p]: dict(s) for p, s in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """The saved state and hyperparameters, each tensor on its parameter's device."""
        if len(state_dict["param_groups"]) != len(self.param_groups):
            raise UsageError(
                "the checkpoint's optimizer has another number of parameter groups. "
                "Fix: resume with the run's own model and optimizer."
            )
        for group, saved in zip(self.param_groups, state_dict["param_groups"], strict=True):
            group.update({k: v for k, v in saved.items() if k != "params"})
        params = [p for g in self.param_groups for p in g["params"]]
        self.state = defaultdict(dict)
        for i, s in state_dict["state"].items():
            p = params[int(i)]
            # but Adam's step count: a CPU scalar in torch.optim too, so step() never waits for it
            self.state[p] = {k: v if k == "step" else v.to(p.device, p.dtype) for k, v in s.items()}


def decayed(p: torch.Tensor) -> bool:
    """Weights (matrices, kernels) are regularized; biases and norm scales (vectors) are not."""
    return p.ndim >= 2


def build_optimizer(model: nn.Module, cfg: DictConfig, l1: float = 0.0) -> Optimizer:
    """SGD or Adam over the model; weight decay and the L1 term on weights only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if decayed(p)], "weight_decay": cfg.weight_decay, "l1": l1},
        {"params": [p for p in params if not decayed(p)], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.name == "sgd":
        return Optimizer(torch.optim.SGD, groups, lr=cfg.lr, momentum=cfg.momentum)
    return Optimizer(torch.optim.Adam, groups, lr=cfg.lr, betas=tuple(cfg.betas))
