"""Model registry: `build_model(cfg, spec) -> nn.Module`, checking that the model fits the data."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from torch import nn

from d2lrun.models.init import apply_init
from d2lrun.models.lenet import LeNet
from d2lrun.models.linear import (LinearRegression, LinearRegressionScratch, SoftmaxRegression,
                                  SoftmaxRegressionScratch)
from d2lrun.models.mlp import ACTIVATIONS, MLP, MLPScratch

MODELS = ("linreg", "softmax", "mlp", "lenet")
# Which models can learn which kind of data.
FITTING = {"regression": ("linreg", "mlp"), "classification": ("softmax", "mlp"), "images": ("softmax", "mlp", "lenet")}


def check_fit(name: str, spec: dict) -> None:
    """Refuse a model/dataset pair that cannot work, naming the models that would."""
    kind = "images" if spec.get("image_shape") else spec["task"]
    if name not in FITTING[kind]:
        what = "images to classify" if kind == "images" else f"a {kind} table"
        fits = FITTING[kind]
        raise ValueError(f"model={name} cannot learn dataset={spec['dataset']} ({what}). "
                         f"Models that fit it: {', '.join(fits)}. Fix: model={fits[0]}, or choose another dataset=.")


def _dropouts(reg: DictConfig, num_hidden_layers: int, name: str) -> list[float] | None:
    if reg.name != "dropout":
        return None
    if num_hidden_layers == 0:
        raise ValueError(f"regularizer=dropout acts on hidden layers, and model={name} has none. "
                         f"Fix: model=mlp, or another regularizer (l1, l2).")
    p = OmegaConf.to_object(reg.dropout) if OmegaConf.is_list(reg.dropout) else [reg.dropout] * num_hidden_layers
    if len(p) != num_hidden_layers:
        raise ValueError(f"regularizer.dropout={p} has {len(p)} rate(s) but model={name} has {num_hidden_layers} "
                         f"hidden layer(s). Fix: give one rate, or {num_hidden_layers}.")
    return [float(x) for x in p]


def build_model(cfg: DictConfig, spec: dict, regularizer: DictConfig | None = None,
                init: DictConfig | None = None) -> nn.Module:
    """Build model cfg.name sized by the data spec, with dropout and initialisation from config."""
    name = cfg.get("name")
    if name not in MODELS:
        raise ValueError(f"Unknown model '{name}'. Choose one of: {', '.join(MODELS)}.")
    check_fit(name, spec)
    reg = regularizer if regularizer is not None else OmegaConf.create({"name": "none"})
    d, q = spec["num_inputs"], spec["num_outputs"]
    impl = cfg.get("impl", "concise")
    if impl not in ("concise", "scratch"):
        raise ValueError(f"model.impl={impl} must be concise or scratch. Fix: model.impl=concise.")
    if name == "linreg":
        _dropouts(reg, 0, name)
        model = LinearRegressionScratch(d) if impl == "scratch" else LinearRegression(d)
    elif name == "softmax":
        _dropouts(reg, 0, name)
        model = SoftmaxRegressionScratch(d, q) if impl == "scratch" else SoftmaxRegression(d, q)
    elif name == "mlp":
        hiddens = list(cfg.num_hiddens) if OmegaConf.is_list(cfg.num_hiddens) else [cfg.num_hiddens]
        if not hiddens or any(not isinstance(h, int) or h < 1 for h in hiddens):
            raise ValueError(f"model.num_hiddens={hiddens} must list positive layer widths. Fix: model.num_hiddens=[256].")
        if cfg.activation not in ACTIVATIONS:
            raise ValueError(f"model.activation={cfg.activation} is unknown. Choose one of: {', '.join(ACTIVATIONS)}.")
        cls = MLPScratch if impl == "scratch" else MLP
        model = cls(d, q, hiddens, cfg.activation, _dropouts(reg, len(hiddens), name))
    else:
        if cfg.variant not in ("classic", "modern"):
            raise ValueError(f"model.variant={cfg.variant} must be classic or modern. Fix: model.variant=modern.")
        if cfg.batch_norm and cfg.variant == "classic":
            raise ValueError("model.batch_norm=true belongs to the modern LeNet (§8.5). Fix: model.variant=modern.")
        if spec["image_shape"][1:] != [28, 28]:
            raise ValueError(f"model=lenet expects 28x28 images; the data has {spec['image_shape']}.")
        model = LeNet(q, cfg.variant, bool(cfg.batch_norm), _dropouts(reg, 2, name), spec["image_shape"][0])
    if init is not None:
        apply_init(model, init)
    return model
