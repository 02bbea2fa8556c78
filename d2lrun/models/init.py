"""Initialisation schemes (§4.8, §5.2) for every nn.Linear and nn.Conv2d, and scratch weights."""

import math

from omegaconf import DictConfig
from torch import nn


def apply_init(model: nn.Module, cfg: DictConfig) -> nn.Module:
    """Apply init scheme cfg.name to the model's weights; `default` is nn.Linear's own."""
    if hasattr(model, "layers"):
        # Scratch models lay their raw weights out (fan_in, fan_out): initialise the transpose.
        # `default` gives them nn.Linear's own initialisation, so both impls mean the same by it
        # (§4.6's from-scratch dropout net is built from nn.Linear layers and keeps that init).
        layers = [(W.T, b) for W, b in model.layers()]
    elif cfg.name == "default":
        return model  # nn's layers initialised themselves
    else:
        kinds = (nn.Linear, nn.Conv2d)
        layers = [(m.weight, m.bias) for m in model.modules() if isinstance(m, kinds)]
    name = cfg.name
    for w, b in layers:  # each w is laid out (fan_out, fan_in, ...) like nn.Linear's
        if name == "default":  # nn.Linear.reset_parameters: U(±1/sqrt(fan_in)) via Kaiming a=√5
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        elif name == "normal":
            nn.init.normal_(w, mean=cfg.mean, std=cfg.std)
        elif name in ("constant", "zeros"):  # init=zeros has no value key: 0
            nn.init.constant_(w, cfg.get("value", 0.0))
        elif name == "xavier":  # xavier_uniform_ or xavier_normal_
            getattr(nn.init, f"xavier_{cfg.distribution}_")(w)
        elif name == "kaiming":
            getattr(nn.init, f"kaiming_{cfg.distribution}_")(w, mode=cfg.mode, nonlinearity="relu")
        bias = None if name == "default" else cfg.get("bias", 0.0)  # init=zeros has no key: 0
        if b is not None and bias is not None:
            nn.init.constant_(b, bias)
        elif b is not None and hasattr(model, "layers"):  # null: as nn.Linear would (§3.7's)
            nn.init.uniform_(b, -1 / math.sqrt(w.shape[1]), 1 / math.sqrt(w.shape[1]))
    return model  # null, an nn layer's bias: as the layer initialised it
