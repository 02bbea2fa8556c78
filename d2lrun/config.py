"""Type and range checks for the fixed config sections, and device resolution."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A bad config value; the message names the key, the value and the fix."""


@dataclass
class TrainerSchema:
    epochs: int = 3
    batch_size: int = 10
    checkpoint_every: int = 1
    progress: bool = True
    compile: bool = False


@dataclass
class SGDSchema:
    name: str = "sgd"
    lr: float = 0.03
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass
class AdamSchema:
    name: str = "adam"
    lr: float = 0.001
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0


OPTIMIZERS = {"sgd": SGDSchema, "adam": AdamSchema}
REGULARIZERS = ("none", "l1", "l2", "dropout")


def _typed(section: str, schema: type, node: DictConfig) -> DictConfig:
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as e:
        name = str(getattr(e, "key", "") or "")
        fields = {f.name: f for f in dataclasses.fields(schema)}
        if name not in fields:
            raise ConfigError(f"{section}.{name} is not a key of {section}; its keys are: {', '.join(fields)}.") from None
        example = schema().__dict__[name]
        kind = {"int": "a whole number", "float": "a number", "bool": "true or false"}.get(str(fields[name].type), "a list")
        raise ConfigError(f"{section}.{name}={getattr(e, 'value', '?')} is not {kind}. "
                          f"Fix: {section}.{name}={str(example).lower() if isinstance(example, bool) else example}.") from None


def _check(ok: bool, key: str, value, rule: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value} is invalid: {rule}. Fix: {key}={fix}.")


def validate(cfg: DictConfig) -> DictConfig:
    """Type-check and range-check trainer, optim and regularizer; return the checked config."""
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.trainer = _typed("trainer", TrainerSchema, cfg.trainer)
    name = cfg.optim.get("name")
    if name not in OPTIMIZERS:
        raise ConfigError(f"Unknown optim '{name}'. Choose one of: {', '.join(OPTIMIZERS)}.")
    cfg.optim = _typed("optim", OPTIMIZERS[name], cfg.optim)

    t, o = cfg.trainer, cfg.optim
    _check(t.epochs >= 1, "trainer.epochs", t.epochs, "must be at least 1", "10")
    _check(t.batch_size >= 1, "trainer.batch_size", t.batch_size, "must be at least 1", "256")
    _check(t.checkpoint_every >= 1, "trainer.checkpoint_every", t.checkpoint_every, "must be at least 1", "1")
    _check(o.lr > 0, "optim.lr", o.lr, "the learning rate must be positive", "0.1")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be 0 or more", "1e-3")
    if name == "sgd":
        _check(0 <= o.momentum < 1, "optim.momentum", o.momentum, "must be in [0, 1)", "0.9")

    if cfg.model.name == "lenet" and cfg.dataset.name != "fashion_mnist":
        raise ConfigError(f"model=lenet needs images, and dataset={cfg.dataset.name} is a table. "
                          f"Fix: dataset=fashion_mnist, or model=mlp for dataset={cfg.dataset.name}.")
    reg = cfg.regularizer
    if reg.name not in REGULARIZERS:
        raise ConfigError(f"Unknown regularizer '{reg.name}'. Choose one of: {', '.join(REGULARIZERS)}.")
    if reg.name == "l1":
        _check(_is_number(reg.lambd) and reg.lambd >= 0, "regularizer.lambd", reg.lambd, "must be 0 or more", "1e-3")
    if reg.name == "dropout":
        rates = reg.dropout if OmegaConf.is_list(reg.dropout) else [reg.dropout]
        for p in rates:
            _check(_is_number(p) and 0 <= p < 1, "regularizer.dropout", reg.dropout,
                   "each rate must be in [0, 1)", "0.5")
    if cfg.init.name == "normal":
        _check(_is_number(cfg.init.std) and cfg.init.std > 0, "init.std", cfg.init.std, "must be positive", "0.01")
    return cfg


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def resolve_device(name: str):
    """Turn `device=auto|cpu|cuda|cuda:N|mps` into a torch.device that exists on this machine."""
    import torch

    name = str(name)
    has_cuda = torch.cuda.is_available()
    has_mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    available = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] + (["mps"] if has_mps else [])
    if name == "auto":
        return torch.device("cuda" if has_cuda else "cpu")
    if name == "cpu" or (name == "mps" and has_mps):
        return torch.device(name)
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2]
        if has_cuda and (not index or (index.isdigit() and int(index) < torch.cuda.device_count())):
            return torch.device(name)
    if name in ("mps", "cuda") or name.startswith("cuda:"):
        raise ConfigError(f"device={name} does not exist on this machine; available: {', '.join(available)}. "
                          f"Fix: device=auto or device=cpu.")
    raise ConfigError(f"Unknown device '{name}'. Choose one of: auto, cpu, cuda, cuda:N, mps.")
