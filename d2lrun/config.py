"""The one schema: every group's keys, their types and ranges, registered in Hydra's ConfigStore.

Each YAML option begins with `defaults: [/schema_GROUP_OPTION]`, so Hydra refuses a value of the
wrong type while it composes (`optim.lr=fast`). `checked` then tests the ranges declared here and
the few rules that tie keys together. The values themselves live only in the YAML files: every
field below is MISSING, so no Python code re-defaults a key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from d2lrun.errors import UsageError


def key(
    example: Any = None, ge: float | None = None, gt: float | None = None, lt: float | None = None
) -> Any:
    """A field whose value comes from YAML; its allowed range, and an example value for the Fix."""
    return field(default=MISSING, metadata={"example": example, "ge": ge, "gt": gt, "lt": lt})


class Choice(str, Enum):
    """One of a key's allowed words; compares, hashes and prints as the word itself."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def choices(name: str, *words: str) -> type[Choice]:
    return Choice(name, {w: w for w in words})


Impl = choices("Impl", "concise", "scratch")  # nn layers | the book's raw tensors (§3.2)
Activation = choices("Activation", "relu", "sigmoid", "tanh")
Variant = choices("Variant", "classic", "modern")
Task = choices("Task", "auto", "regression", "classification")
Statistics = choices("Statistics", "train_and_test", "train")
Distribution = choices("Distribution", "uniform", "normal")
FanMode = choices("FanMode", "fan_in", "fan_out")


def folds() -> Any:
    """dataset.folds of every dataset of rows: k-fold cross-validation (§4.10); null: one split."""
    return key(5, ge=2)


@dataclass
class Synthetic:
    name: str = key()
    w: Any = key([2, -3.4])  # a list, or one number for all num_inputs
    b: float = key(4.2)
    noise: float = key(0.01, ge=0)
    num_inputs: int | None = key(200, ge=1)
    num_train: int = key(1000, ge=1)
    num_val: int = key(1000, ge=1)
    folds: int | None = folds()
    shuffle_folds: bool = key(False)  # False: fold i holds out the i-th contiguous slice (the book)


@dataclass
class Table:
    """Keys of every dataset read from a table (§2.2, §4.10)."""

    name: str = key()
    target: str = key("Price")
    drop: list[str] = key("[Id]")  # columns that are not features (ids): carried to predictions
    val_fraction: float = key(0.2, ge=0, lt=1)
    max_categories: int = key(50, ge=1)
    standardize_target: bool = key(True)
    folds: int | None = folds()
    shuffle_folds: bool = key(False)


@dataclass
class CSV(Table):
    path: str = key("data/house.csv")
    task: Task = key("auto")
    standardize: bool = key(True)


@dataclass
class KaggleHouse(Table):
    root: str = key("data")
    download: bool = key(True)
    statistics: Statistics = key("train_and_test")


@dataclass
class Polynomial:
    name: str = key()
    max_degree: int = key(20, ge=1)
    true_w: list[float] = key("[5,1.2,-3.4,5.6]")
    num_features: int = key(4, ge=1)
    num_train: int = key(100, ge=1)
    num_val: int = key(100, ge=1)
    noise: float = key(0.1, ge=0)
    folds: int | None = folds()
    shuffle_folds: bool = key(False)


@dataclass
class Kernel:
    name: str = key()
    kernel: list[float] = key("[1,-1]")  # the edge detector K that makes Y = corr2d(X, K)


@dataclass
class FashionMNIST:
    name: str = key()
    root: str = key("data")
    download: bool = key(True)


@dataclass
class Softmax:
    name: str = key()
    impl: Impl = key("concise")


@dataclass
class LinReg(Softmax):
    bias: bool = key(True)


@dataclass
class MLP(Softmax):
    num_hiddens: Any = key("[256]", ge=1)  # one width, or one per hidden layer
    activation: Activation = key("relu")
    dropout: Any = key(0.5, ge=0, lt=1)  # one rate, or one per hidden layer (§4.6)


@dataclass
class LeNet:
    name: str = key()
    variant: Variant = key("classic")
    batch_norm: bool = key(False)
    dropout: Any = key(0.5, ge=0, lt=1)  # after the two hidden dense layers


@dataclass
class Conv2D:
    name: str = key()
    kernel_size: list[int] = key("[1,2]", ge=1)
    bias: bool = key(False)


@dataclass
class SGD:
    name: str = key()
    lr: float = key(0.1, gt=0)
    momentum: float = key(0.9, ge=0, lt=1)
    weight_decay: float = key(1e-3, ge=0)


@dataclass
class Adam:
    name: str = key()
    lr: float = key(0.001, gt=0)
    betas: list[float] = key("[0.9,0.999]", ge=0, lt=1)
    weight_decay: float = key(1e-3, ge=0)


@dataclass
class Regularizer:
    name: str = key()
    lambd: float = key(1e-3, ge=0)  # L1 strength, a loss term (§4.5); 0 = none


@dataclass
class InitDefault:
    name: str = key()


@dataclass
class InitNormal(InitDefault):
    mean: float = key(0.0)
    std: float = key(0.01, gt=0)
    bias: float = key(0.0)


@dataclass
class InitConstant(InitDefault):
    value: float = key(1.0)
    bias: float = key(0.0)


@dataclass
class InitXavier(InitDefault):
    distribution: Distribution = key("uniform")
    bias: float = key(0.0)


@dataclass
class InitKaiming(InitXavier):
    mode: FanMode = key("fan_in")


@dataclass
class Logger:
    """logger=none and logger=tensorboard (event files in RUN/tensorboard/) have no other keys."""

    name: str = key()


@dataclass
class MLflow(Logger):
    tracking_uri: str = key("sqlite:///outputs/mlflow.db")  # or http://HOST:5000, a server
    experiment_name: str | None = key("lenet-fashion_mnist")  # null: the preset, or MODEL-DATA


@dataclass
class Trainer:
    epochs: int = key(10, ge=1)
    batch_size: int = key(256, ge=1)
    checkpoint_every: int = key(1, ge=1)
    progress: bool = key(True)
    compile: bool = key(False)
    log_rmse: bool = key(True)  # also report the book's log RMSE of a regression (§4.10)


@dataclass
class Config:
    device: str = key("auto")
    seed: int = key(0)
    resume: str | None = key("outputs/DATE/TIME")
    trainer: Trainer = field(default_factory=Trainer)
    dataset: Any = MISSING
    model: Any = MISSING
    optim: Any = MISSING
    regularizer: Any = MISSING
    init: Any = MISSING
    logger: Any = MISSING


@dataclass
class DataLocation:
    """The dataset keys a reloaded run may change: where the files are, not what they hold."""

    root: str | None = key("data")
    path: str | None = key("data/house.csv")
    download: bool | None = key(False)


@dataclass
class Eval:
    run: str | None = key("outputs/DATE/TIME")
    ckpt: str | None = key("outputs/DATE/TIME/best.pt")
    device: str = key("cpu")
    dataset: DataLocation = field(default_factory=DataLocation)


@dataclass
class Predict(Eval):
    input: str = key("new.csv")
    output: str | None = key("predictions.csv")


SCHEMAS: dict[str, dict[str, type]] = {
    "dataset": {
        "synthetic": Synthetic,
        "csv": CSV,
        "fashion_mnist": FashionMNIST,
        "polynomial": Polynomial,
        "kaggle_house": KaggleHouse,
        "kernel": Kernel,
    },
    "model": {"linreg": LinReg, "softmax": Softmax, "mlp": MLP, "lenet": LeNet, "conv2d": Conv2D},
    "optim": {"sgd": SGD, "adam": Adam},
    "regularizer": {n: Regularizer for n in ("none", "l1", "l2", "dropout")},
    "init": {
        "default": InitDefault,
        "normal": InitNormal,
        "constant": InitConstant,
        "xavier": InitXavier,
        "kaiming": InitKaiming,
        "zeros": InitDefault,
    },
    "logger": {"none": Logger, "tensorboard": Logger, "mlflow": MLflow},
}
IMAGE_DATASETS = ("fashion_mnist", "kernel")
HERE = Path(__file__).resolve().parent
# A wheel ships configs/ and experiments/ inside the package (pyproject.toml); a checkout beside it.
CONFIG_DIR = str(HERE / "configs" if (HERE / "configs").is_dir() else HERE.parent / "configs")
EXPERIMENTS_DIR = (
    HERE / "experiments" if (HERE / "experiments").is_dir() else HERE.parent / "experiments"
)
PATH_KEYS = ("path", "root")  # dataset keys holding a path the user typed


def register() -> None:
    """Put the schemas and presets in Hydra's ConfigStore, the sweep folder resolver in OmegaConf.

    The YAML files name their schema in their defaults list. The presets live in experiments/,
    outside configs/, so they join the `experiment` group here: one small file read each.
    """
    from d2lrun.sweeps import register_resolvers

    register_resolvers()
    cs = ConfigStore.instance()
    if "schema_config.yaml" in cs.repo:  # already there: compose() calls this for every composition
        return
    for path in sorted(EXPERIMENTS_DIR.glob("*.yaml")):
        cs.store(group="experiment", name=path.stem, node=OmegaConf.load(path), package="_global_")
    for name, node in (("config", Config), ("eval", Eval), ("predict", Predict)):
        cs.store(name=f"schema_{name}", node=node)
    for group, options in SCHEMAS.items():
        for option, node in options.items():
            cs.store(name=f"schema_{group}_{option}", node=node)


def compose(overrides: Sequence[str] = (), name: str = "config") -> DictConfig:
    """The config of `d2lrun OVERRIDES...` through Hydra's Compose API (in a Hydra app: its own)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # e.g. d2lrun-eval's @hydra.main: the same configs
        return hydra_compose(name, overrides=list(overrides))
    register()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(name, overrides=list(overrides))


def options_with_key(group: str, name: str) -> list[str]:
    """The options of a group whose schema has this key (for "Fix: choose model=mlp")."""
    return [o for o, s in SCHEMAS.get(group, {}).items() if name in {f.name for f in fields(s)}]


def checked(cfg: DictConfig) -> DictConfig:
    """Check every declared range and the rules between keys; return a copy with absolute paths."""
    if cfg.model.name == "lenet" and cfg.dataset.name not in IMAGE_DATASETS:
        raise UsageError(
            f"model=lenet needs images, and dataset={cfg.dataset.name} is a table. "
            f"Fix: dataset=fashion_mnist, or model=mlp for dataset={cfg.dataset.name}."
        )
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        k = missing[0]
        group = k.split(".")[0]
        which = f" for {group}={cfg[group].name}" if group in SCHEMAS else ""
        raise UsageError(f"{k} is required{which}. Fix: {k}={_example(cfg, k) or '...'}.")
    for path, node in [("", cfg), ("trainer", cfg.trainer)] + [(g, cfg[g]) for g in SCHEMAS]:
        _check_ranges(path, node)
    _check_rules(cfg)
    cfg = cfg.copy()
    for k in PATH_KEYS:  # a run folder must work from any folder: store what the user meant
        if isinstance(cfg.dataset.get(k), str):
            cfg.dataset[k] = str(Path(cfg.dataset[k]).expanduser().absolute())
    if isinstance(cfg.logger.get("tracking_uri"), str):  # the same MLflow store from anywhere
        cfg.logger.tracking_uri = absolute_uri(cfg.logger.tracking_uri)
    return cfg


def absolute_uri(uri: str) -> str:
    """An MLflow tracking URI with a relative SQLite path made absolute; any other as it is."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).expanduser().absolute())
    return uri


def _example(cfg: DictConfig, dotted: str):
    section, _, name = dotted.rpartition(".")
    schema = OmegaConf.get_type(OmegaConf.select(cfg, section) if section else cfg)
    meta = {f.name: f.metadata for f in fields(schema)} if is_dataclass(schema) else {}
    return meta.get(name, {}).get("example")


def _check_ranges(path: str, node: DictConfig) -> None:
    schema = OmegaConf.get_type(node)
    for f in fields(schema) if is_dataclass(schema) else ():
        m, value = f.metadata, node[f.name]
        if not m or value is None or is_dataclass(f.type):
            continue
        name = f"{path}.{f.name}" if path else f.name
        for v in value if OmegaConf.is_list(value) else [value]:
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if (m.get("ge") is not None or m.get("gt") is not None) and not number:
                raise UsageError(f"{name}={value} is not a number. Fix: {name}={m['example']}.")
            rule = (
                f"at least {m['ge']}"
                if m.get("ge") is not None and v < m["ge"]
                else f"greater than {m['gt']}"
                if m.get("gt") is not None and v <= m["gt"]
                else f"less than {m['lt']}"
                if m.get("lt") is not None and v >= m["lt"]
                else None
            )
            if rule:
                raise UsageError(
                    f"{name}={value} is out of range: it must be {rule}. "
                    f"Fix: {name}={m['example']}."
                )


def _check_rules(cfg: DictConfig) -> None:
    """The rules that tie one key to another."""
    model, data = cfg.model, cfg.dataset
    if model.name == "lenet" and model.batch_norm and model.variant == "classic":
        raise UsageError(
            "model.batch_norm=true belongs to the modern LeNet (§8.5). Fix: model.variant=modern."
        )
    if "dropout" in model and OmegaConf.is_list(model.dropout):
        layers = len(hidden_sizes(model)) if model.name == "mlp" else 2
        if len(model.dropout) not in (1, layers):
            raise UsageError(
                f"model.dropout={list(model.dropout)} has {len(model.dropout)} rates "
                f"and model={model.name} has {layers} hidden layers. "
                f"Fix: give one rate, or {layers}."
            )
    if data.name == "synthetic":
        if OmegaConf.is_list(data.w) and data.num_inputs not in (None, len(data.w)):
            raise UsageError(
                f"dataset.num_inputs={data.num_inputs} but dataset.w has {len(data.w)} "
                f"values. Fix: dataset.num_inputs=null, or one number as dataset.w."
            )
        if not OmegaConf.is_list(data.w) and data.num_inputs is None:
            raise UsageError(
                f"dataset.w={data.w} is one number, so dataset.num_inputs must say "
                f"how many inputs. Fix: dataset.num_inputs=200."
            )


def hidden_sizes(model: DictConfig) -> list[int]:
    """model.num_hiddens as a list: one width per hidden layer."""
    h = model.num_hiddens
    return list(h) if OmegaConf.is_list(h) else [h]


def resolve_device(name: str):
    """`device=auto|cpu|cuda|cuda:N|mps` as a torch.device that exists on this machine."""
    import torch

    has_cuda = torch.cuda.is_available()
    has_mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if has_cuda else "cpu")
    index = name.partition(":")[2]
    if (
        name == "cpu"
        or (name == "mps" and has_mps)
        or (
            has_cuda
            and name.split(":")[0] == "cuda"
            and (not index or index.isdigit() and int(index) < torch.cuda.device_count())
        )
    ):
        return torch.device(name)
    if name in ("mps", "cuda") or name.startswith("cuda:"):
        have = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        raise UsageError(
            f"device={name} does not exist on this machine; available: "
            f"{', '.join(have + ['mps'] * has_mps)}. Fix: device=auto or device=cpu."
        )
    raise UsageError(
        f"Unknown device '{name}'. Choose one of: auto, cpu, cuda, cuda:N, mps. Fix: device=auto."
    )
