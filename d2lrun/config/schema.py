"""The one schema: every group's keys, their types and ranges, registered in Hydra's ConfigStore.

Each YAML option names its schema (`defaults: [/schema_GROUP_OPTION]`), so Hydra refuses a wrong
type as it composes (`optim.lr=fast`); every field is MISSING: the values live only in the YAML.
"""

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from d2lrun.errors import UsageError, alike

SIZE = 2**31  # counts and widths: far beyond any memory, and within torch's int64 sizes


def key(
    ge: float | None = None, gt: float | None = None, lt: float | None = None, words: str = ""
) -> Any:
    """A field whose value comes from YAML, with its allowed range or its allowed words."""
    return field(default=MISSING, metadata={"ge": ge, "gt": gt, "lt": lt, "words": words.split()})


def broken_rule(m: dict, v: float) -> str | None:
    """The rule of a key's range (its field's metadata m) that the number v breaks, else None."""
    return (
        "a finite number" if not math.isfinite(v)  # nan passes every <
        else f"at least {m['ge']}" if m["ge"] is not None and v < m["ge"]
        else f"greater than {m['gt']}" if m["gt"] is not None and v <= m["gt"]
        else f"less than {m['lt']}" if m["lt"] is not None and v >= m["lt"]
        else None
    )  # fmt: skip


@dataclass
class Option:
    """What every option of a group has: its own name (dataset.name is csv for dataset=csv)."""

    name: str = key()


@dataclass
class Synthetic(Option):
    w: Any = key()  # a list, or one number for all num_inputs
    b: float = key()
    noise: float = key(ge=0)
    num_inputs: int | None = key(ge=1, lt=SIZE)
    num_train: int = key(ge=1, lt=SIZE)
    num_val: int = key(ge=1, lt=SIZE)
    folds: int | None = key(ge=2)  # k-fold cross-validation (§4.10); null: one split
    shuffle_folds: bool = key()  # false: fold i holds out the i-th contiguous slice (the book)


@dataclass
class Table(Option):
    """Keys of every dataset read from a table (§2.2, §4.10)."""

    target: str = key()
    drop: list[str] = key()  # columns that are not features (ids): carried to predictions
    val_fraction: float = key(ge=0, lt=1)
    max_categories: int = key(ge=1)
    standardize_target: bool = key()
    folds: int | None = key(ge=2)  # k-fold cross-validation (§4.10); null: one split
    shuffle_folds: bool = key()


@dataclass
class CSV(Table):
    path: str = key()
    task: str = key(words="auto regression classification")
    standardize: bool = key()


@dataclass
class KaggleHouse(Table):
    root: str = key()
    download: bool = key()
    statistics: str = key(words="train_and_test train")


@dataclass
class Polynomial(Option):
    max_degree: int = key(ge=1, lt=36)  # float32 features: 35! is inf, and inf / inf is NaN
    true_w: list[float] = key()
    num_features: int = key(ge=1, lt=SIZE)
    num_train: int = key(ge=1, lt=SIZE)
    num_val: int = key(ge=1, lt=SIZE)
    noise: float = key(ge=0)
    folds: int | None = key(ge=2)  # k-fold cross-validation (§4.10); null: one split
    shuffle_folds: bool = key()


@dataclass
class Kernel(Option):
    kernel: list[float] = key()  # the edge detector K that makes Y = corr2d(X, K)


@dataclass
class FashionMNIST(Option):
    root: str = key()
    download: bool = key()


@dataclass
class Softmax(Option):
    impl: str = key(words="concise scratch")  # nn layers | the book's raw tensors (§3.2)


@dataclass
class LinReg(Softmax):
    bias: bool = key()


@dataclass
class MLP(Softmax):
    num_hiddens: Any = key(ge=1, lt=SIZE)  # one width, or one per hidden layer
    activation: str = key(words="relu sigmoid tanh")
    dropout: Any = key(ge=0, lt=1)  # one rate, or one per hidden layer (§4.6)


@dataclass
class LeNet(Option):
    variant: str = key(words="classic modern")
    batch_norm: bool = key()
    dropout: Any = key(ge=0, lt=1)  # after the two hidden dense layers


@dataclass
class Conv2D(Option):
    kernel_size: list[int] = key(ge=1, lt=SIZE)
    bias: bool = key()


@dataclass
class SGD(Option):
    lr: float = key(gt=0)
    momentum: float = key(ge=0, lt=1)
    weight_decay: float = key(ge=0)


@dataclass
class Adam(Option):
    lr: float = key(gt=0)
    betas: list[float] = key(ge=0, lt=1)
    weight_decay: float = key(ge=0)


@dataclass
class Regularizer(Option):
    lambd: float = key(ge=0)  # L1 strength, a loss term (§4.5); 0 = none


@dataclass
class InitDefault(Option):
    """init=default (torch's own initialization) and init=zeros have no other keys."""


@dataclass
class InitNormal(InitDefault):
    mean: float = key()
    std: float = key(gt=0)
    bias: float | None = key()  # null: each layer's own (nn.Linear's U(±1/√fan_in))


@dataclass
class InitConstant(InitDefault):
    value: float = key()
    bias: float | None = key()  # null: each layer's own (nn.Linear's U(±1/√fan_in))


@dataclass
class InitXavier(InitDefault):
    distribution: str = key(words="uniform normal")
    bias: float | None = key()  # null: each layer's own (nn.Linear's U(±1/√fan_in))


@dataclass
class InitKaiming(InitXavier):
    mode: str = key(words="fan_in fan_out")


@dataclass
class Logger(Option):
    """logger=none and logger=tensorboard (event files in RUN/tensorboard/) have no other keys."""


@dataclass
class MLflow(Logger):
    tracking_uri: str = key()  # a SQLite file or a server http://HOST:5000
    experiment_name: str | None = key()  # null: the preset, or MODEL-DATASET


@dataclass
class BatchedLauncher:
    """hydra/launcher=batched (configs/hydra/launcher/batched.yaml): typed, so a typo is named."""

    _target_: str = key()
    max_members: int | None = None  # as the YAML: as many as fit in memory


@dataclass
class Trainer:
    epochs: int = key(ge=1, lt=SIZE)
    batch_size: int = key(ge=1, lt=SIZE)
    checkpoint_every: int = key(ge=1, lt=SIZE)
    progress: bool = key()
    compile: bool = key()
    log_rmse: bool = key()  # also report the book's log RMSE of a regression (§4.10)


@dataclass
class Config:
    device: str = key()
    seed: int = key(ge=0, lt=2**32)  # numpy's and torch's generators take 0 ... 2^32 - 1
    resume: str | None = key()
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

    root: str | None = key()
    path: str | None = key()
    download: bool | None = key()


@dataclass
class Eval:
    run: str | None = key()
    ckpt: str | None = key()
    device: str = key()
    dataset: DataLocation = field(default_factory=DataLocation)


@dataclass
class Predict(Eval):
    input: str = key()
    output: str | None = key()


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
HERE = Path(__file__).resolve().parent.parent
# A wheel ships configs/ and experiments/ inside the package (pyproject.toml); a checkout beside it.
ROOT = HERE if (HERE / "configs").is_dir() else HERE.parent
CONFIG_DIR = str(ROOT / "configs")
EXPERIMENTS_DIR = ROOT / "experiments"


def register(presets: bool = True) -> None:
    """Put the schemas, and the presets when asked, in Hydra's ConfigStore (once per process)."""
    cs = ConfigStore.instance()
    if "schema_config.yaml" not in cs.repo:
        for name, node in (("config", Config), ("eval", Eval), ("predict", Predict),
                           ("launcher_batched", BatchedLauncher)):  # fmt: skip
            cs.store(name=f"schema_{name}", node=node)
        for group, options in SCHEMAS.items():
            for option, node in options.items():
                cs.store(name=f"schema_{group}_{option}", node=node)
    # The presets live outside configs/, so they join the `experiment` group here: a file read each,
    # 0.07 s in all, which a command that names no preset does not spend (d2lrun.app.run).
    if presets and "experiment" not in cs.repo:
        for path in sorted(EXPERIMENTS_DIR.glob("*.yaml")):
            node = OmegaConf.load(path)
            cs.store(group="experiment", name=path.stem, node=node, package="_global_")


def example(cfg: DictConfig | None, dotted: str, option: str | None = None) -> str:
    """A key's working value for a Fix: the chosen option's YAML's, else config.yaml's."""
    group, _, rest = dotted.partition(".")
    first, also = [], []
    if cfg is not None:  # the chosen options' files set keys beyond their group (trainer.*)
        option = cfg[group].name if group in SCHEMAS else None
        also = [f"{g}/{cfg[g].name}" for g in ("model", "dataset") if g in cfg]
        # regularizer=dropout's model.dropout and =l2's optim.weight_decay win over the model's and
        # optimizer's own (0.0: none), as in config.yaml's defaults, where regularizer comes later.
        first = [f"regularizer/{cfg.regularizer.name}"] if "regularizer" in cfg else []
    for name in [*first, f"{group}/{option}", *also, "config", "eval", "predict"]:
        path = Path(CONFIG_DIR, f"{name}.yaml")
        if not path.is_file():  # a key outside the groups (seed): config.yaml only
            continue
        text = path.read_text()
        within_group = path.parent.name == group and "@package _global_" not in text
        key = rest if within_group else dotted
        node = OmegaConf.create(text)  # hydra.run.dir: ${now:...}, unresolved outside Hydra
        value = OmegaConf.select(node, key, default=..., throw_on_resolution_failure=False)
        if value is not ... and value is not None:
            return yaml_value(value)
        # A key without a value (??? or null) shows one in its comment: `e.g. KEY=VALUE`.
        if shown := re.search(rf"e\.g\. {re.escape(dotted)}=(\S+)", text):
            return shown[1]
        if value is None:
            return "null"
    return "..."


def preset_keys(name: str) -> tuple[DictConfig, dict]:
    """A preset's keys and the options it picks (optim: adam), over those of the presets it
    builds on (ch4_poly_underfit on ch4_poly_third)."""
    text = OmegaConf.load(EXPERIMENTS_DIR / f"{name}.yaml")
    keys, picks = OmegaConf.create(), {}
    for d in text.get("defaults", []):
        if isinstance(d, str) and d != "_self_":  # another preset, then this one's own keys
            parent, more = preset_keys(d)
            keys, picks = OmegaConf.merge(keys, parent), picks | more
        elif isinstance(d, DictConfig):
            picks |= {k.removeprefix("override /"): v for k, v in d.items()}
    own = {k: v for k, v in text.items() if k != "defaults"}
    return OmegaConf.merge(keys, own), picks


def yaml_value(value) -> str:
    """A value as it is typed on the command line: true, null, [0.9,0.999]."""
    if OmegaConf.is_list(value) or isinstance(value, list):
        return "[" + ",".join(yaml_value(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


GROUPS = (*SCHEMAS, "experiment")  # what GROUP=OPTION picks: an option's file, or a preset


def options_of(group: str) -> list[str]:
    """The options of a config group (model, hydra/launcher), or the presets (experiment)."""
    folder = EXPERIMENTS_DIR if group == "experiment" else Path(CONFIG_DIR, group)
    return sorted(p.stem for p in folder.glob("*.yaml"))


def closest(name: str, options, default: str | None = None) -> str:
    """The option alike name (MLP: mlp, lenett: lenet), or the one that holds it (mnist:
    fashion_mnist) or that it holds (softmax_regression: softmax); none (model=foo): default, else
    the first."""

    def plain(s: str) -> str:  # Fashion-MNIST, FashionMNIST: fashionmnist
        return re.sub(r"[\W_]", "", s.lower())

    options, key = list(options), plain(name)
    held = [o for o in options if min(len(p := plain(o)), len(key)) > 2 and (p in key or key in p)]
    return alike(name, options) or (held[0] if len(held) == 1 else default) or sorted(options)[0]


# Which models can learn which kind of data, and each dataset's kind (a CSV's: its target's, once
# read), so that a sweep's pairs are refused before its first job, and a run's before its data
FITTING = {
    "a regression table": ("linreg", "mlp"),
    "a classification table": ("softmax", "mlp"),
    "images to classify": ("softmax", "mlp", "lenet"),
    "images to images": ("conv2d",),
}
KINDS = {"synthetic": "a regression table", "polynomial": "a regression table",
         "kaggle_house": "a regression table", "kernel": "images to images",
         "fashion_mnist": "images to classify"}  # fmt: skip


def check_pair(model: str, dataset: str, kind: str, target: str | None = None) -> None:
    """Refuse a model/dataset pair that cannot work, naming the models that would."""
    if model not in (fits := FITTING[kind]):  # a CSV's numbers read as a regression may be 0/1
        classes = dataset == "csv" and model in FITTING["a classification table"]
        other = f"dataset.task=classification if '{target}' holds classes" * classes
        raise UsageError(
            f"model={model} cannot learn dataset={dataset} ({kind}). Models that fit it: "
            f"{', '.join(fits)}. Fix: model={fits[0]}, or {other or 'choose another dataset='}."
        )
