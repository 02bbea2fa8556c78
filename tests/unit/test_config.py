"""The schema: wrong types fail while Hydra composes, out-of-range values in `checked`; every
message is one line naming the key, the value and a working fix."""

import pytest

from d2lrun.config import checked, compose, resolve_device
from d2lrun.errors import UsageError, translate


def message(*overrides) -> str:
    """The one line a user sees for these overrides (what d2lrun.cli.handle prints after 'error:
    ')."""
    with pytest.raises(BaseException) as info:
        checked(compose(list(overrides)))
    error = translate(info.value)
    assert isinstance(error, UsageError), info.value
    assert "\n" not in str(error)
    return str(error)


@pytest.mark.parametrize(
    "override,expected",
    [
        ("optim.lr=fast", "optim.lr=fast is not a number. Fix: optim.lr=0.1."),
        (
            "optim.lr=0",
            "optim.lr=0.0 is out of range: it must be greater than 0. Fix: optim.lr=0.1.",
        ),
        (
            "optim.lr=-1",
            "optim.lr=-1.0 is out of range: it must be greater than 0. Fix: optim.lr=0.1.",
        ),
        (
            "trainer.epochs=0",
            "trainer.epochs=0 is out of range: it must be at least 1. Fix: trainer.epochs=10.",
        ),
        (
            "trainer.batch_size=0",
            "trainer.batch_size=0 is out of range: it must be at least 1. "
            "Fix: trainer.batch_size=256.",
        ),
        (
            "optim.weight_decay=-0.1",
            "optim.weight_decay=-0.1 is out of range: it must be at least 0. "
            "Fix: optim.weight_decay=0.001.",
        ),
        (
            "optim.momentum=1.5",
            "optim.momentum=1.5 is out of range: it must be less than 1. Fix: optim.momentum=0.9.",
        ),
        ("trainer.epochs=ten", "trainer.epochs=ten is not a whole number. Fix: trainer.epochs=10."),
        (
            "trainer.progress=maybe",
            "trainer.progress=maybe is not true or false. Fix: trainer.progress=True.",
        ),
        (
            "model.impl=foo",
            "model.impl=foo is not one of concise, scratch. Fix: model.impl=concise.",
        ),
        (
            "model=lenett",
            "Unknown model 'lenett'. Choose one of: conv2d, lenet, linreg, mlp, softmax. "
            "Fix: model=lenet.",
        ),
        (
            "experiment=ch6_lenett",
            "Unknown experiment 'ch6_lenett'. Choose one of: ch3_linreg_concise",
        ),
        (
            "dataset.root=data",
            "dataset.root is not a key of dataset=synthetic (its keys: name, w, b, noise, "
            "num_inputs, num_train, num_val, folds, shuffle_folds). "
            "Fix: choose dataset=fashion_mnist or dataset=kaggle_house.",
        ),
        ("dataset.num_train=0", "dataset.num_train=0 is out of range: it must be at least 1"),
    ],
)
def test_bad_values_name_key_value_and_fix(override, expected):
    assert message(override).startswith(expected)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (
            ["regularizer=dropout"],
            "regularizer=dropout sets model.dropout, which is not a key of model=linreg "
            "(its keys: name, impl, bias). Fix: choose model=mlp or model=lenet.",
        ),
        (
            ["model=mlp", "regularizer=dropout", "model.dropout=1.0"],
            "model.dropout=1.0 is out of range: it must be less than 1",
        ),
        (
            ["model=mlp", "model.dropout=[0.2,-0.1]"],
            "model.dropout=[0.2, -0.1] is out of range: it must be at least 0",
        ),
        (
            ["model=mlp", "model.dropout=[0.2,0.5]"],
            "model.dropout=[0.2, 0.5] has 2 rates and model=mlp has 1 hidden",
        ),
        (["regularizer=l1", "regularizer.lambd=-1"], "regularizer.lambd=-1.0 is out of range"),
        (["init=normal", "init.std=0"], "init.std=0.0 is out of range: it must be greater than 0"),
        (["model=lenet", "dataset=synthetic"], "model=lenet needs images"),
        (
            ["model=lenet", "model.batch_norm=true"],
            "model.batch_norm=true belongs to the modern LeNet",
        ),
        (
            ["dataset=csv"],
            "dataset.path is required for dataset=csv. Fix: dataset.path=data/house.csv.",
        ),
        (["dataset.w=0.5"], "dataset.w=0.5 is one number, so dataset.num_inputs must say how many"),
        (["dataset.num_inputs=3"], "dataset.num_inputs=3 but dataset.w has 2 values"),
    ],
)
def test_bad_combinations(overrides, expected):
    assert message(*overrides).startswith(expected)


def test_good_config_passes_is_typed_and_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = checked(compose(["optim.lr=1", "trainer.epochs=2", "model=softmax", "dataset.root=here"]))
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.dataset.root == str(tmp_path / "here")


def test_devices():
    import torch

    assert str(resolve_device("cpu")) == "cpu"
    assert str(resolve_device("auto")) == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(
            UsageError, match=r"device=cuda:3 does not exist on this machine; available: cpu"
        ):
            resolve_device("cuda:3")
    with pytest.raises(UsageError, match="Unknown device 'tpu'"):
        resolve_device("tpu")
