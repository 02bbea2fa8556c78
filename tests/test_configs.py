"""Compose every option of every config group on disk, and check the file stem = name = registry key."""
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from d2lrun.cli import CONFIG_DIR
from d2lrun.config import OPTIMIZERS, REGULARIZERS, validate
from d2lrun.data import DATASETS
from d2lrun.models import MODELS
from d2lrun.models.init import INITS

REGISTRIES = {"dataset": DATASETS, "model": MODELS, "optim": OPTIMIZERS, "regularizer": REGULARIZERS, "init": INITS}
OPTIONS = [(group, p.stem) for group in REGISTRIES for p in sorted((Path(CONFIG_DIR) / group).glob("*.yaml"))]


def compose_with(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_every_group_has_options_on_disk():
    assert {g for g, _ in OPTIONS} == set(REGISTRIES)


@pytest.mark.parametrize("group,option", OPTIONS)
def test_option_composes_and_stem_is_name_and_registry_key(group, option):
    extra = ["dataset.path=x.csv", "dataset.target=y"] if option == "csv" else []
    cfg = compose_with(f"{group}={option}", *extra)
    assert cfg[group].name == option
    assert option in REGISTRIES[group]
    if not (group == "model" and option == "lenet") and not (group == "dataset" and option != "fashion_mnist"
                                                             and cfg.model.name == "lenet"):
        validate(cfg)


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_key_has_a_comment(group, option):
    """Each option file explains itself: a header comment, and a comment on every key line."""
    text = (Path(CONFIG_DIR) / group / f"{option}.yaml").read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "-", "defaults"))]
    assert text.lstrip().startswith("#")
    data = yaml.safe_load(text)
    for ln in lines:
        key = ln.split(":")[0].strip()
        if ln.rstrip().endswith(":") or key in ("name",) or key in data:
            continue  # section headers and `name:` are self-explanatory
        assert "#" in ln, f"{group}/{option}.yaml: '{ln.strip()}' has no comment"


def test_defaults_and_smart_dataset_choice():
    cfg = compose_with()
    assert (cfg.model.name, cfg.dataset.name, cfg.trainer.batch_size, cfg.optim.lr) == ("linreg", "synthetic", 10, 0.03)
    cfg = compose_with("model=lenet")
    assert (cfg.dataset.name, cfg.trainer.batch_size, cfg.optim.lr, cfg.init.name) == ("fashion_mnist", 256, 0.9, "xavier")
    assert compose_with("model=linreg").dataset.name == "synthetic"
    assert compose_with("model=mlp", "dataset=synthetic").dataset.name == "synthetic"  # explicit dataset wins
    assert compose_with("model=lenet", "optim=adam").optim.lr == 0.001  # Adam's own step size
    assert compose_with("regularizer=l2").optim.weight_decay == 0.001  # one knob for L2
    assert compose_with("regularizer=l2", "optim.weight_decay=0.1").optim.weight_decay == 0.1
