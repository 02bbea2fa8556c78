"""The optimizer and the regularizers that change its update, built from config in one place.

L2 (§4.5) and L1 act on the weights only (matrices and kernels), not on biases or norm scales. L1
adds regularizer.lambd · sign(w) to their gradients: the gradient of the book's λ·Σ|w| loss term,
so the loss that is reported stays the data's own. Dropout is a layer of the model (d2lrun.models).
"""

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
        # the kernel's keywords that a group fills, as torch.optim's own step passes them
        kernel = sgd.sgd if kind is torch.optim.SGD else adam.adam
        self.keywords = [k for k in inspect.signature(kernel).parameters if k in defaults]

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            for p in params if g["l1"] else ():
                p.grad.add_(p.sign(), alpha=g["l1"])  # the gradient of l1 · Σ|w|
            hyper = {k: g[k] for k in self.keywords}
            if self.kind is torch.optim.SGD:
                buffers = [self.state.get(p, {}).get("momentum_buffer") for p in params]
                sgd.sgd(params, grads, buffers, **hyper)
                for p, buffer in zip(params, buffers, strict=True) if g["momentum"] else ():
                    self.state[p]["momentum_buffer"] = buffer  # without momentum, SGD keeps none
                continue
            for p in params:
                if not self.state[p]:  # as torch.optim.Adam: the step count is a CPU scalar
                    self.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                     "exp_avg_sq": torch.zeros_like(p)}  # fmt: skip
            state = {
                k: [self.state[p][k] for p in params] for k in ("exp_avg", "exp_avg_sq", "step")
            }
            adam.adam(params, grads, state["exp_avg"], state["exp_avg_sq"], [], state["step"],
                      beta1=g["betas"][0], beta2=g["betas"][1], **hyper)  # fmt: skip

    def state_dict(self) -> dict:
        index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        groups = [{**g, "params": [index[p] for p in g["params"]]} for g in self.param_groups]
        return {"state": {index[p]: dict(s) for p, s in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """The saved state on its parameters' devices; the hyperparameters stay as configured."""
        if len(state_dict["param_groups"]) != len(self.param_groups):
            raise UsageError(
                "the checkpoint's optimizer has another number of parameter groups. "
                "Fix: resume with the run's own model and optimizer."
            )
        params = [p for g in self.param_groups for p in g["params"]]
        self.state = defaultdict(dict)
        for i, s in state_dict["state"].items():
            p = params[int(i)]
            # but Adam's step count: a CPU scalar in torch.optim too, so step() never waits for it
            self.state[p] = {k: v if k == "step" else v.to(p.device, p.dtype) for k, v in s.items()}


def build_optimizer(model: nn.Module, cfg: DictConfig, l1: float = 0.0) -> Optimizer:
    """SGD or Adam over the model; weight decay and the L1 term on weights only."""
    params = [p for p in model.parameters() if p.requires_grad]
    weights = [p for p in params if p.ndim >= 2]  # biases and norm scales are vectors
    groups = [
        {"params": weights, "weight_decay": cfg.weight_decay, "l1": l1},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.name == "sgd":
        return Optimizer(torch.optim.SGD, groups, lr=cfg.lr, momentum=cfg.momentum)
    return Optimizer(torch.optim.Adam, groups, lr=cfg.lr, betas=tuple(cfg.betas))
