"""Model registry: `build_model(cfg, spec) -> nn.Module`, sized by what the data decided."""

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from d2lrun.config import check_pair, hidden_sizes
from d2lrun.data import Spec
from d2lrun.errors import UsageError
from d2lrun.models.lenet import Conv2D, LeNet
from d2lrun.models.linear import (
    LinearRegression,
    LinearRegressionScratch,
    SoftmaxRegression,
    SoftmaxRegressionScratch,
)
from d2lrun.models.mlp import MLP, MLPScratch


def is_scratch(cfg: DictConfig) -> bool:
    """model.impl=scratch: the book's from-scratch code, trained with its hand-written losses."""
    return cfg.get("impl") == "scratch"


def loss_kind(cfg: DictConfig) -> str:
    """The book's loss for it (d2lrun.trainer.loss_for); §6.2.4 sums conv2d's squared errors."""
    return "sum" if cfg.name == "conv2d" else "scratch" if is_scratch(cfg) else "concise"


def dropouts(p, num_layers: int) -> list[float]:
    """model.dropout as one rate per hidden layer."""
    rates = list(p) if OmegaConf.is_list(p) else [p]
    return [float(r) for r in (rates * num_layers if len(rates) == 1 else rates)]


def build_model(cfg: DictConfig, spec: Spec) -> nn.Module:
    """Model cfg.name sized by the data spec; the weights are set by init (d2lrun.models.init)."""
    # Refused: a model/dataset pair that cannot work, as the data decided (a CSV's target)
    kind = f"a {spec.task} table"
    if spec.image_shape:
        kind = "images to images" if spec.task == "regression" else "images to classify"
    check_pair(cfg.name, spec.dataset, kind, spec.target)
    d, q = spec.num_inputs, spec.num_outputs
    scratch = is_scratch(cfg)
    if cfg.name == "linreg":
        return (LinearRegressionScratch if scratch else LinearRegression)(d, cfg.bias)
    if cfg.name == "conv2d":
        (h, w), (kh, kw) = spec.image_shape[1:], cfg.kernel_size
        out_h, out_w = max(h - kh + 1, 0), max(w - kw + 1, 0)
        if out_h * out_w != q:  # §6.2.4: its output is compared with the target
            fits = f"[1,{len(spec.true_kernel[0])}]" if spec.true_kernel else "..."
            raise UsageError(
                f"model.kernel_size=[{kh},{kw}] maps the {h}x{w} image to {out_h}x{out_w} "
                f"values, and the target has {q}. Fix: model.kernel_size={fits}, the dataset's "
                f"kernel's size."
            )
        return Conv2D(list(cfg.kernel_size), cfg.bias)
    if cfg.name == "softmax":
        return SoftmaxRegressionScratch(d, q) if scratch else SoftmaxRegression(d, q)
    if cfg.name == "mlp":
        hiddens = hidden_sizes(cfg)
        return (MLPScratch if scratch else MLP)(
            d, q, hiddens, cfg.activation, dropouts(cfg.dropout, len(hiddens))
        )
    return LeNet(q, cfg.variant, cfg.batch_norm, dropouts(cfg.dropout, 2))


def load_state_dict_strict(model: nn.Module, state: dict, source: str) -> None:
    """load_state_dict(strict=True), with one readable line when the architectures differ."""
    own = model.state_dict()
    mismatches = {  # the first few of each kind
        "missing keys": [k for k in own if k not in state][:6],
        "unexpected keys": [k for k in state if k not in own][:6],
        "shape mismatches": [
            f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and hasattr(state[k], "shape") and state[k].shape != v.shape
        ][:4],
    }
    if found := "; ".join(f"{kind} {keys}" for kind, keys in mismatches.items() if keys):
        raise UsageError(
            f"{source} was saved from another architecture: {found}. "
            f"Fix: rebuild the model with the run's own config (d2lrun-eval run=DIR does)."
        )
    model.load_state_dict(state)


def learned(model, spec: Spec, log) -> dict | None:
    """What generated data lets a run check: learned w and b (§3.2, §4.4), the kernel (§6.2.4)."""
    if spec.true_kernel is not None:
        kernel = model.kernel.cpu().tolist()
        rounded = [[round(x, 4) for x in r] for r in kernel]
        log(f"learned kernel: {rounded}  (true: {spec.true_kernel})")
        return {"kernel": kernel}
    if spec.true_w is None or not hasattr(model, "get_w_b"):
        return None
    w, b = model.get_w_b()
    true_w, true_b = torch.tensor(spec.true_w), spec.true_b
    w, b = w.cpu(), float(b.cpu().reshape(-1)[0])
    if true_b is None:  # §4.4: x⁰ is a feature, whose weight is the constant term (no bias)
        biased = any(n.rsplit(".", 1)[-1] in ("b", "bias") for n, _ in model.named_parameters())
        w = w.clone()  # model.bias=true splits the constant between w[0] and b: compared as one
        w[0] += b if biased else 0.0
        said = f"; w[0] is w[0] + b, b = {b:.4f}" if biased else ""
        log(f"weight: {[round(x, 4) for x in w.tolist()]}  (true: {spec.true_w}{said})")
        return {"w": w.tolist(), "w_error": (true_w - w).tolist(), "w_norm": w.norm().item(),
                **({"b": b} if biased else {})}  # fmt: skip
    if len(true_w) <= 10:
        errors = [round(x, 6) for x in (true_w - w).tolist()]
        log(f"error in estimating w: {errors}  (w = {[round(x, 4) for x in w.tolist()]})")
        log(f"error in estimating b: {true_b - b:.6f}  (b = {b:.4f})")
    else:
        log(f"‖w‖₂ = {w.norm().item():.4f}; error ‖w - w_true‖₂ = "
            f"{(true_w - w).norm().item():.6f}; error in b: {true_b - b:.6f}")  # fmt: skip
    return {"w": w.tolist(), "b": b, "w_error": (true_w - w).tolist(), "b_error": true_b - b,
            "w_norm": w.norm().item()}  # fmt: skip
