"""Initialisation schemes (§5.2, §5.4), applied to every nn.Linear and nn.Conv2d with
`model.apply`."""

from __future__ import annotations

import math
from functools import partial

from omegaconf import DictConfig
from torch import nn


def _init_weight(w, cfg: DictConfig) -> None:
    """Initialise one weight tensor laid out as (fan_out, fan_in, ...) like nn.Linear's."""
    name = cfg.name
    if name == "normal":
        nn.init.normal_(w, mean=cfg.mean, std=cfg.std)
    elif name == "constant":
        nn.init.constant_(w, cfg.value)
    elif name == "xavier":
        (nn.init.xavier_normal_ if cfg.distribution == "normal" else nn.init.xavier_uniform_)(w)
    elif name == "kaiming":
        fn = nn.init.kaiming_normal_ if cfg.distribution == "normal" else nn.init.kaiming_uniform_
        fn(w, mode=cfg.mode, nonlinearity="relu")
    elif name == "zeros":
        nn.init.zeros_(w)


def _linear_default(w, b) -> None:
    """What nn.Linear.reset_parameters does: U(±1/sqrt(fan_in)) for weights (via Kaiming a=√5)
    and biases."""
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    bound = 1 / math.sqrt(w.shape[1])
    nn.init.uniform_(b, -bound, bound)


def _init_layer(m: nn.Module, cfg: DictConfig) -> None:
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        _init_weight(m.weight, cfg)
        if m.bias is not None:
            nn.init.constant_(m.bias, cfg.get("bias", 0.0))


def apply_init(model: nn.Module, cfg: DictConfig) -> nn.Module:
    """Apply init scheme cfg.name to the model's weights; `default` is nn.Linear's own, for scratch
    models too."""
    if hasattr(model, "layers"):
        # Scratch models list their raw tensors, weights laid out (fan_in, fan_out): initialise
        # the transpose.
        # `default` gives them nn.Linear's own initialisation, so both impls mean the same by it
        # (§4.6's from-scratch dropout net is built from nn.Linear layers and keeps that init).
        for W, b in model.layers():
            if cfg.name == "default":
                _linear_default(W.T, b)
            else:
                _init_weight(W.T, cfg)
                nn.init.constant_(b, cfg.get("bias", 0.0))
    elif cfg.name != "default":
        model.apply(partial(_init_layer, cfg=cfg))
    return model
