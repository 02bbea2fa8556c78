"""Config checks: wrong types and out-of-range values fail at start-up with the key and the fix."""
import pytest
from hydra import compose, initialize_config_dir

from d2lrun.cli import CONFIG_DIR
from d2lrun.config import ConfigError, resolve_device, validate


def composed(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("override,match", [
    ("optim.lr=fast", r"optim.lr=fast is not a number. Fix: optim.lr=0.03"),
    ("optim.lr=0", r"optim.lr=0.0 is invalid: the learning rate must be positive. Fix: optim.lr=0.1"),
    ("optim.lr=-1", "optim.lr=-1.0 is invalid"),
    ("trainer.epochs=0", "trainer.epochs=0 is invalid: must be at least 1"),
    ("trainer.batch_size=0", "trainer.batch_size=0 is invalid"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1 is invalid: must be 0 or more"),
    ("optim.momentum=1.5", "optim.momentum=1.5 is invalid"),
    ("trainer.epochs=ten", "trainer.epochs=ten is not a whole number. Fix: trainer.epochs=3"),
    ("trainer.progress=maybe", "trainer.progress=maybe is not true or false"),
])
def test_bad_values_name_key_value_and_fix(override, match):
    with pytest.raises(ConfigError, match=match):
        validate(composed(override))


@pytest.mark.parametrize("overrides,match", [
    (["regularizer=dropout", "regularizer.dropout=1.0"], r"regularizer.dropout=1.0 is invalid: each rate must be in \[0, 1\)"),
    (["regularizer=dropout", "regularizer.dropout=[0.2,-0.1]"], "regularizer.dropout"),
    (["regularizer=l1", "regularizer.lambd=-1"], "regularizer.lambd=-1 is invalid"),
    (["init=normal", "init.std=0"], "init.std=0 is invalid: must be positive"),
    (["model=lenet", "dataset=synthetic"], "model=lenet needs images"),
])
def test_bad_regularizer_init_and_pairs(overrides, match):
    with pytest.raises(ConfigError, match=match):
        validate(composed(*overrides))


def test_good_config_passes_and_is_typed():
    cfg = validate(composed("optim.lr=1", "trainer.epochs=2"))
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


def test_devices():
    assert str(resolve_device("cpu")) == "cpu"
    assert str(resolve_device("auto")) in ("cpu", "cuda")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device=cuda:3 does not exist on this machine; available: cpu"):
            resolve_device("cuda:3")
    with pytest.raises(ConfigError, match="Unknown device 'tpu'"):
        resolve_device("tpu")
