"""Runs of one sweep trained as one model (hydra/launcher=batched, d2lrun.batched).

M linear models or MLPs that differ only in their hyperparameters, weights stacked along a member
dimension: Stack.forward returns (M, B, q), and StackOptimizer takes each member's own torch.optim
step. Only the loss sum that backward starts from adds members together, so a member whose loss
stops being finite stops (`live`) and the others go on as they would alone.
"""

import copy
import os

import torch
from omegaconf import DictConfig
from torch import nn

from d2lrun.config import checked, resolve_device
from d2lrun.data import build_data
from d2lrun.models import build_model, dropouts, is_scratch
from d2lrun.models.mlp import ACTIVATIONS, MLPScratch, dropout_layer
from d2lrun.optim import Optimizer


def layers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight laid out (fan_in, fan_out), bias) per layer: views of the model's own parameters."""
    if hasattr(model, "layers"):  # the scratch models lay their weights out so
        return model.layers()
    return [(m.weight.T, m.bias) for m in model.modules() if isinstance(m, nn.Linear)]


class Stack(nn.Module):
    """The members' layers stacked: the first weight (d, M, h), so that the shared input takes one
    matrix product; the later ones (M, fan_in, fan_out); biases (M, fan_out)."""

    def __init__(self, models: list[nn.Module], cfgs: list, generators: list[torch.Generator]):
        super().__init__()
        self.members, stacked = len(models), list(zip(*map(layers, models), strict=True))
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([w for w, _ in layer], dim=1 if i == 0 else 0).detach())
            for i, layer in enumerate(stacked)
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([b for _, b in layer]).detach())
            for layer in stacked
            if layer[0][1] is not None
        )
        self.rates = [dropouts(c.get("dropout", 0.0), len(stacked) - 1) for c in cfgs]
        self.scratch = is_scratch(cfgs[0])
        self.activation = cfgs[0].get("activation")
        self.generators = generators  # each member's dropout masks, as drawn alone

    def act(self, H: torch.Tensor) -> torch.Tensor:
        if self.scratch:
            return MLPScratch.act(self, H)  # §4.2's hand-written ones
        return ACTIVATIONS[self.activation]()(H)

    def drop(self, H: torch.Tensor, layer: int) -> torch.Tensor:
        """Each member's own dropout mask, drawn from its generator as it would draw it alone."""
        rates = [r[layer] for r in self.rates]
        if not self.training or not any(rates):
            return H
        out = []
        for h, p, g in zip(H, rates, self.generators, strict=True):
            if p == 0:
                out.append(h)
            elif self.scratch:
                out.append(dropout_layer(h, p, g))
            else:  # F.dropout on the CPU: bernoulli_(1 - p), divided by 1 - p
                out.append(h * torch.empty_like(h).bernoulli_(1 - p, generator=g).div_(1 - p))
        return torch.stack(out)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """(B, ...) -> (M, B, q)."""
        batch, members = len(X), self.members
        W, bias = self.weights[0], self.biases[0].flatten() if len(self.biases) else None
        H = X.reshape(batch, W.shape[0])
        H = torch.addmm(bias, H, W.flatten(1)) if bias is not None else H @ W.flatten(1)
        H = H.view(batch, members, -1).transpose(0, 1)  # (M, B, h)
        for i in range(1, len(self.weights)):
            H = self.drop(self.act(H), i - 1)
            H = torch.baddbmm(self.biases[i].unsqueeze(1), H, self.weights[i])
        return H

    @torch.no_grad()
    def write_back(self, member: int, model: nn.Module) -> None:
        """Member's weights into its own model, whose state_dict its files then hold."""
        biases = iter(self.biases)
        for i, (w, b) in enumerate(layers(model)):
            w.copy_(self.weights[i][:, member] if i == 0 else self.weights[i][member])
            if b is not None:
                b.copy_(next(biases)[member])


class StackOptimizer:
    """Each member's torch.optim.SGD or Adam step (d2lrun.optim.Optimizer, whose groups give its
    hyperparameters) on its slice of the stack, written out with the member dimension broadcast."""

    def __init__(self, stack: Stack, optimizers: list[Optimizer], models: list[nn.Module]):
        self.optimizers, self.kind = optimizers, optimizers[0].kind
        device = stack.weights[0].device
        self.live = torch.ones(stack.members, dtype=torch.bool, device=device)
        self.param_groups = [{k: [o.param_groups[0].get(k, 0.0) for o in optimizers]
                              for k in ("lr", "momentum")}]  # fmt: skip
        # The stack's parameters, each with its member dimension and its members' own parameters.
        own = [[w for w, _ in layers(m)] + [b for _, b in layers(m) if b is not None]
               for m in models]  # fmt: skip
        self.params = [
            (p, 1 if p is stack.weights[0] else 0, [o[i] for o in own])
            for i, p in enumerate([*stack.weights, *stack.biases])
        ]
        self.state: dict[torch.Tensor, dict] = {}
        for p, dim, members in self.params:
            values = [self.hyper(o, q) for o, q in zip(optimizers, members, strict=True)]
            shape = [-1 if d == dim else 1 for d in range(p.ndim)]
            # The first weight's (d, M, h) as (1, M, h), not (1, M, 1), where h is small: torch's
            # CPU addcmul_ then takes 9 µs, not 39 (16 members, softmax's h = 10; an epoch 8%
            # less); 80 µs, not 94, for h = 128; but 455, not 253, for h = 256.
            whole = (1, *p.shape[1:]) if dim and p.shape[-1] <= 128 else shape
            self.state[p] = {
                k: torch.tensor([v[k] for v in values], device=device).view(shape).expand(whole)
                for k in ("lr", "weight_decay", "momentum", "l1")
            }
            self.state[p] |= {k: t.contiguous() for k, t in self.state[p].items()}
            saved = [o.state.get(own_param(q)) for o, q in zip(optimizers, members, strict=True)]
            for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):  # a resumed member's
                if any(s and key in s for s in saved):
                    self.state[p][key] = torch.stack(
                        [laid_out(s[key], q) if s and key in s else torch.zeros_like(q) for s, q in
                         zip(saved, members, strict=True)], dim=dim).to(device)  # fmt: skip
            # Terms every member has at 0 are left out, as torch.optim leaves them.
            self.state[p]["terms"] = {k for k in ("weight_decay", "momentum", "l1")
                                      if any(v[k] for v in values)}  # fmt: skip
            steps = [s["step"] for s in saved if s and "step" in s]
            self.state[p]["step"] = steps[0].clone() if steps else torch.tensor(0.0)
        group = optimizers[0].param_groups[0]
        self.betas, self.eps = group.get("betas"), group.get("eps")

    @staticmethod
    def hyper(optimizer: Optimizer, param: torch.Tensor) -> dict:
        """The member's hyperparameters for param: its group's (weight decay: weights only)."""
        target = own_param(param)
        group = next(g for g in optimizer.param_groups if any(q is target for q in g["params"]))
        return {"lr": group["lr"], "weight_decay": group["weight_decay"],
                "momentum": group.get("momentum", 0.0), "l1": group["l1"]}  # fmt: skip

    def zero_grad(self) -> None:
        for p, _, _ in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """In place, one pass over each parameter where it can: the stack's are M times a
        model's, and extra passes over them cost more than the matrix products save (MLPs)."""
        for p, dim, _ in self.params:
            s, g = self.state[p], p.grad  # the gradient is ours: zero_grad drops it next
            live = self.live.view([-1 if d == dim else 1 for d in range(p.ndim)])
            # A member that diverged gets no step (lr 0); its weights in the stack are read
            # no more: its files keep its last complete epoch.
            lr = torch.where(live, s["lr"], 0)
            if "l1" in s["terms"]:  # the gradient of l1 · Σ|w|
                g.addcmul_(p.sign(), s["l1"])
            if "weight_decay" in s["terms"]:  # L2 (§4.5) on weights: torch.optim's weight_decay
                g.addcmul_(p, s["weight_decay"])
            if self.kind is torch.optim.SGD:
                if "momentum" in s["terms"]:
                    if "momentum_buffer" not in s:
                        s["momentum_buffer"] = g.clone()  # torch.optim.SGD's first step
                    else:  # momentum 0: the gradient itself, as torch.optim.SGD without a buffer
                        torch.addcmul(g, s["momentum_buffer"], s["momentum"],
                                      out=s["momentum_buffer"])  # fmt: skip
                    g = s["momentum_buffer"]
                p.addcmul_(g, lr, value=-1)
            else:
                self.adam(s, g, p, lr)

    def adam(self, s: dict, g: torch.Tensor, p: torch.Tensor, lr: torch.Tensor) -> None:
        """torch.optim.Adam's step for every member (its single-tensor code, lr per member)."""
        beta1, beta2 = self.betas
        s["step"] += 1
        step = s["step"].item()
        if "exp_avg" not in s:
            s["exp_avg"], s["exp_avg_sq"] = torch.zeros_like(g), torch.zeros_like(g)
        s["exp_avg"].lerp_(g, 1 - beta1)
        s["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (s["exp_avg_sq"].sqrt() / (1 - beta2**step) ** 0.5).add_(self.eps)
        p.addcdiv_(s["exp_avg"] * (lr / (1 - beta1**step)), denom, value=-1)

    @torch.no_grad()
    def write_back(self, member: int) -> None:
        """Member's optimizer state into its own optimizer, whose state_dict its files hold."""
        optimizer = self.optimizers[member]
        for p, dim, members in self.params:
            s, view = self.state[p], members[member]
            target = own_param(view)
            own = {k: laid_out(s[k].select(dim, member), view).clone()  # as its own parameter
                   for k in ("momentum_buffer", "exp_avg", "exp_avg_sq") if k in s}  # fmt: skip
            if self.kind is torch.optim.SGD:
                if self.hyper(optimizer, view)["momentum"]:  # without, torch.optim keeps none
                    optimizer.state[target] = own
            elif own:
                optimizer.state[target] = {"step": s["step"].clone(), **own}


def laid_out(t: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """t in the layout of view or of the parameter behind it: a concise weight's is transposed."""
    return t.T if view._base is not None else t


def own_param(view: torch.Tensor) -> torch.Tensor:
    """The parameter behind view, the optimizer's key (a concise weight.T is a view of it)."""
    return view._base if view._base is not None else view


def stackable(cfg) -> str | None:
    """Why the runs of cfg do not train as one stack, or None when they can."""
    if cfg.model.name not in ("linreg", "softmax", "mlp"):  # LeNet's would turn into grouped ones
        return f"model={cfg.model.name}: convolutions do not stack (grouped ones are slow on CPU)"
    if cfg.dataset.get("folds"):
        return f"dataset.folds={cfg.dataset.folds}: each fold is a run of its own"
    if cfg.trainer.compile:
        return "trainer.compile=true compiles one model"
    if cfg.resume:
        return "resume= continues one run"
    return None


def most_members(cfg: DictConfig) -> int:
    """How many members of cfg's model fit in half the free memory of its device, with their
    activations, gradients and optimizer state: a stack holds at most this many."""
    cfg = checked(copy.deepcopy(cfg))  # as its Run will: the data is decoded once
    model = build_model(cfg.model, build_data(cfg.dataset, cfg.seed)[2])
    device, batch_size = resolve_device(cfg.device), cfg.trainer.batch_size
    widths = sum(w.shape[1] for w, _ in layers(model))
    params = sum(p.numel() for p in model.parameters())
    per_member = 4 * (4 * params + 3 * max(batch_size, 1024) * widths)  # float32 bytes
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(1, free // 2 // per_member)
