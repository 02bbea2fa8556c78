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

from d2lrun.errors import UsageError


class Optimizer:
    """What the loop needs of an optimizer: param_groups, zero_grad, step, state_dict and
    load_state_dict.

    d2lrun writes its two update rules out instead of using torch.optim: constructing any
    torch.optim optimizer imports torch._dynamo, 1.8 s of a 5.4 s default run measured on a 2-core
    CPU. The updates are torch.optim's own, operation for operation (tests/unit/test_optim.py
    checks they agree exactly), and the state_dict has torch.optim's layout.
    """

    def __init__(self, groups: list[dict], **defaults):
        self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        self.state: dict[torch.Tensor, dict] = {}

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict:
        index = {id(p): i for i, p in enumerate(self._params())}
        groups, start = [], 0
        for g in self.param_groups:
            groups.append(
                {
                    **{k: v for k, v in g.items() if k != "params"},
                    "params": list(range(start, start + len(g["params"]))),
                }
            )
            start += len(g["params"])
        return {
            "state": {index[id(p)]: dict(s) for p, s in self.state.items()},
            "param_groups": groups,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        params = self._params()
        if len(state_dict["param_groups"]) != len(self.param_groups):
            raise UsageError(
                "the checkpoint's optimizer has another number of parameter groups. "
                "Fix: resume with the run's own model and optimizer."
            )
        for group, saved in zip(self.param_groups, state_dict["param_groups"], strict=True):
            group.update({k: v for k, v in saved.items() if k != "params"})
        # State follows its parameter's device, except Adam's step count: torch.optim keeps it a
        # CPU scalar, so that reading it in step() never waits for the GPU.
        self.state = {
            params[int(i)]: {
                k: v.to(params[int(i)].device) if torch.is_tensor(v) and k != "step" else v
                for k, v in s.items()
            }
            for i, s in state_dict["state"].items()
        }


class SGD(Optimizer):
    """Minibatch SGD (§3.2) with momentum (§12.6) and per-group weight decay (§4.5):
    torch.optim.SGD's update.

    With momentum 0 this is the book's own `sgd`: param -= lr * grad. The book sums the batch loss
    and divides by batch_size; d2lrun's losses are already batch means, so the division is built
    in, and §4.5's λ/2·‖w‖² per example becomes weight_decay=λ on the weights.
    """

    def __init__(self, groups: list[dict], lr: float, momentum: float = 0.0):
        super().__init__(groups, lr=lr, momentum=momentum, weight_decay=0.0)

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                if momentum != 0:
                    buf = self.state.setdefault(p, {}).get("momentum_buffer")
                    if buf is None:
                        buf = self.state[p]["momentum_buffer"] = torch.clone(grad).detach()
                    else:
                        buf.mul_(momentum).add_(grad)
                    grad = buf
                p.add_(grad, alpha=-lr)


class Adam(Optimizer):
    """Adam (§12.10) with per-group L2 weight decay; torch.optim.Adam's update (no amsgrad)."""

    def __init__(
        self,
        groups: list[dict],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        super().__init__(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=0.0)

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = (
                group["lr"],
                group["betas"],
                group["eps"],
                group["weight_decay"],
            )
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                state = self.state.setdefault(p, {})
                if not state:
                    state.update(
                        step=torch.tensor(0.0),
                        exp_avg=torch.zeros_like(p),
                        exp_avg_sq=torch.zeros_like(p),
                    )
                state["step"] += 1
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = state["step"].item()  # a CPU scalar, as in torch.optim: no device sync
                bias_correction2_sqrt = (1 - beta2**step) ** 0.5
                denom = (state["exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(eps)
                p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1**step))


def decayed(p: torch.Tensor) -> bool:
    """Weights (matrices, kernels) are regularized; biases and norm scales (vectors) are not."""
    return p.ndim >= 2


def build_optimizer(model: nn.Module, cfg: DictConfig) -> Optimizer:
    """SGD or Adam over the model, weight decay on weights only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if decayed(p)], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if not decayed(p)], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.name == "sgd":
        return SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Σ|w| over the weights (not the biases), §4.5."""
    return sum(p.abs().sum() for p in model.parameters() if decayed(p))
