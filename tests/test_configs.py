"""Compose every option of every config group on disk: file stem = name = schema key (and, for a
dataset, a loader module d2lrun.data.NAME), every key commented, and the schema in force (a wrong
type fails while Hydra composes)."""

import pkgutil
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

import d2lrun.data
from d2lrun.config import CONFIG_DIR, EXPERIMENTS_DIR, SCHEMAS, checked, compose

# The options the code knows of each group: a dataset's loader module, else the group's schemas.
REGISTRIES = {
    "dataset": [m.name for m in pkgutil.iter_modules(d2lrun.data.__path__)],
    "model": SCHEMAS["model"],
    "optim": ("sgd", "adam"),
    "regularizer": ("none", "l1", "l2", "dropout"),
    "init": SCHEMAS["init"],
    "logger": SCHEMAS["logger"],
}
OPTIONS = [
    (group, p.stem)
    for group in REGISTRIES
    for p in sorted((Path(CONFIG_DIR) / group).glob("*.yaml"))
]
FILES = sorted(Path(CONFIG_DIR).glob("**/*.yaml")) + sorted(EXPERIMENTS_DIR.glob("*.yaml"))
NEEDS = {
    "csv": ["dataset.path=x.csv", "dataset.target=y"],
    "lenet": [],
    "dropout": ["model=mlp"],
    "fashion_mnist": ["model=softmax"],
    "kernel": ["model=conv2d"],
}  # not the default linreg


def test_every_group_has_options_on_disk_and_a_schema_for_each():
    assert {g for g, _ in OPTIONS} == set(REGISTRIES) == set(SCHEMAS)
    assert {(g, o) for g, o in OPTIONS} == {(g, o) for g in SCHEMAS for o in SCHEMAS[g]}


@pytest.mark.parametrize("group,option", OPTIONS)
def test_option_composes_checks_and_stem_is_name_and_registry_key(group, option):
    cfg = compose([f"{group}={option}", *NEEDS.get(option, [])])
    assert cfg[group].name == option
    assert option in REGISTRIES[group]
    assert OmegaConf.get_type(cfg[group]) is SCHEMAS[group][option]  # the schema is in force
    assert not OmegaConf.missing_keys(cfg[group])  # the YAML gives every key a value
    checked(cfg)


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_key_has_a_comment(path):
    """Each file explains itself: a header comment, and a comment on every line that sets a
    value."""
    text = path.read_text()
    assert text.lstrip().startswith("#"), f"{path.name} has no header comment"
    if path.parent.name == "help":
        return  # --help texts are prose
    for ln in text.splitlines():
        stripped = ln.strip()
        if not stripped or stripped.startswith(("#", "-", "defaults:")) or stripped.endswith(":"):
            continue  # comments, defaults-list entries and section headers
        if stripped.startswith("name:") or "|" in stripped:
            continue  # `name:` repeats the file stem
        assert "#" in ln, f"{path.name}: '{stripped}' has no comment"


def test_defaults_and_smart_dataset_choice():
    cfg = compose()
    assert (cfg.model.name, cfg.dataset.name, cfg.trainer.batch_size, cfg.optim.lr) == (
        "linreg",
        "synthetic",
        10,
        0.03,
    )
    cfg = compose(["model=lenet"])
    assert (cfg.dataset.name, cfg.trainer.batch_size, cfg.optim.lr, cfg.init.name) == (
        "fashion_mnist",
        256,
        0.9,
        "xavier",
    )
    assert compose(["model=linreg"]).dataset.name == "synthetic"
    assert (
        compose(["model=mlp", "dataset=synthetic"]).dataset.name == "synthetic"
    )  # explicit dataset wins
    assert compose(["model=lenet", "optim=adam"]).optim.lr == 0.001  # Adam's own step size
    assert compose(["regularizer=l2"]).optim.weight_decay == 0.001  # one knob for L2
    assert compose(["regularizer=l2", "optim.weight_decay=0.1"]).optim.weight_decay == 0.1


def test_regularizers_combine_where_they_act():
    cfg = compose(
        ["model=mlp", "regularizer=dropout", "regularizer.lambd=1e-3", "optim.weight_decay=1e-2"]
    )
    assert (cfg.model.dropout, cfg.regularizer.lambd, cfg.optim.weight_decay) == (0.5, 1e-3, 1e-2)
    assert compose(["model=mlp"]).model.dropout == 0.0 and compose().regularizer.lambd == 0.0


def test_every_preset_names_an_option_of_each_group_it_overrides():
    for path in sorted(EXPERIMENTS_DIR.glob("*.yaml")):
        cfg = compose([f"experiment={path.stem}"])
        for group in SCHEMAS:
            assert OmegaConf.get_type(cfg[group]) is SCHEMAS[group][cfg[group].name], (
                path.stem,
                group,
            )
        assert yaml.safe_load(path.read_text())  # plain YAML
