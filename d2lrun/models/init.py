"""Initialisation schemes (§5.2, §5.4), applied to every nn.Linear and nn.Conv2d with `model.apply`."""
from __future__ import annotations

from functools import partial

from omegaconf import DictConfig
from torch import nn

INITS = ("default", "normal", "constant", "xavier", "kaiming", "zeros")


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


def _init_layer(m: nn.Module, cfg: DictConfig) -> None:
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        _init_weight(m.weight, cfg)
        if m.bias is not None:
            nn.init.constant_(m.bias, cfg.get("bias", 0.0))


def apply_init(model: nn.Module, cfg: DictConfig) -> nn.Module:
    """Apply init scheme cfg.name to the model's weights; `default` keeps the model's own."""
    if cfg.name not in INITS:
        raise ValueError(f"Unknown init '{cfg.name}'. Choose one of: {', '.join(INITS)}.")
    if cfg.name == "xavier" and cfg.distribution not in ("uniform", "normal"):
        raise ValueError(f"init.distribution={cfg.distribution} must be uniform or normal. Fix: init.distribution=uniform.")
    if cfg.name == "kaiming" and cfg.mode not in ("fan_in", "fan_out"):
        raise ValueError(f"init.mode={cfg.mode} must be fan_in or fan_out. Fix: init.mode=fan_in.")
    if cfg.name == "default":
        return model
    if getattr(model, "scratch", False):
        # Scratch models hold raw tensors: weights (fan_in, fan_out), so initialise their transpose.
        for p in model.parameters():
            if p.ndim == 2:
                _init_weight(p.T, cfg)
            else:
                nn.init.constant_(p, cfg.get("bias", 0.0))
    else:
        model.apply(partial(_init_layer, cfg=cfg))
    return model
