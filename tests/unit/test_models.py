"""Models: shapes, the book's parameter counts and state_dict keys, fit checks, dropout, init."""

import pytest
import torch
from omegaconf import OmegaConf

from d2lrun.data import Spec
from d2lrun.errors import UsageError
from d2lrun.models import build_model
from d2lrun.models.init import apply_init

IMAGES = Spec(
    dataset="fashion_mnist",
    task="classification",
    num_inputs=784,
    num_outputs=10,
    image_shape=[1, 28, 28],
    class_names=list("abcdefghij"),
)
TABLE = Spec(dataset="synthetic", task="regression", num_inputs=2, num_outputs=1, image_shape=None)


def model_cfg(name, **kw):
    defaults = {
        "linreg": {"impl": "concise", "bias": True},
        "softmax": {"impl": "concise"},
        "mlp": {"impl": "concise", "num_hiddens": [256], "activation": "relu", "dropout": 0.0},
        "lenet": {"variant": "classic", "batch_norm": False, "dropout": 0.0},
    }[name]
    return OmegaConf.create({"name": name, **defaults, **kw})


@pytest.mark.parametrize(
    "name,spec,x,out,impl",
    [
        (name, spec, x, out, impl)
        for name, spec, x, out in [
            ("linreg", TABLE, torch.randn(5, 2), (5, 1)),
            ("softmax", IMAGES, torch.rand(5, 1, 28, 28), (5, 10)),
            ("mlp", IMAGES, torch.rand(5, 1, 28, 28), (5, 10)),
        ]
        for impl in ("concise", "scratch")
    ]
    + [("lenet", IMAGES, torch.rand(5, 1, 28, 28), (5, 10), None)],
)
def test_output_shapes(name, spec, x, out, impl):
    kw = {"impl": impl} if impl else {}
    assert build_model(model_cfg(name, **kw), spec)(x).shape == out


def test_lenet_matches_the_book():
    net = build_model(model_cfg("lenet"), IMAGES)
    assert sum(p.numel() for p in net.parameters()) == 61_706
    assert sorted({k.split(".")[0] for k in net.state_dict()}) == ["0", "11", "3", "7", "9"]
    assert isinstance(net[1], torch.nn.Sigmoid) and isinstance(net[2], torch.nn.AvgPool2d)
    modern = build_model(model_cfg("lenet", variant="modern"), IMAGES)
    assert isinstance(modern[1], torch.nn.ReLU) and isinstance(modern[2], torch.nn.MaxPool2d)


def test_book_state_dict_keys():
    assert list(build_model(model_cfg("linreg"), TABLE).state_dict()) == ["0.weight", "0.bias"]
    assert list(build_model(model_cfg("softmax"), IMAGES).state_dict()) == ["1.weight", "1.bias"]
    assert list(build_model(model_cfg("mlp"), IMAGES).state_dict()) == [
        "1.weight",
        "1.bias",
        "3.weight",
        "3.bias",
    ]


@pytest.mark.parametrize(
    "name,spec,fits",
    [
        ("lenet", TABLE, "linreg, mlp"),
        ("softmax", TABLE, "linreg, mlp"),
        ("linreg", IMAGES, "softmax, mlp, lenet"),
    ],
)
def test_impossible_pairs_name_what_fits(name, spec, fits):
    with pytest.raises(UsageError, match=f"Models that fit it: {fits}"):
        build_model(model_cfg(name), spec)


def test_dropout_acts_only_in_training():
    net = build_model(model_cfg("mlp", num_hiddens=[256, 256], dropout=[0.2, 0.5]), IMAGES)
    assert [m.p for m in net if isinstance(m, torch.nn.Dropout)] == [0.2, 0.5]
    x = torch.rand(8, 1, 28, 28)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))
    lenet = build_model(model_cfg("lenet", dropout=0.3), IMAGES)
    assert [m.p for m in lenet if isinstance(m, torch.nn.Dropout)] == [0.3, 0.3]


@pytest.mark.parametrize(
    "init,check",
    [
        ({"name": "zeros"}, lambda w: torch.all(w == 0)),
        ({"name": "constant", "value": 42.0, "bias": 0.0}, lambda w: torch.all(w == 42)),
        (
            {"name": "normal", "mean": 0.0, "std": 0.01, "bias": 0.0},
            lambda w: 0.005 < w.std() < 0.015,
        ),
        (
            {
                "name": "xavier",
                "distribution": "uniform",
                "bias": 0.0,
            },  # U(±√(6/(in+out))): std √(2/(in+out))
            lambda w: (
                w.abs().max() <= (6 / (784 + 256)) ** 0.5 + 1e-6
                and abs(w.std() - (2 / 1040) ** 0.5) < 0.002
            ),
        ),
        (
            {"name": "xavier", "distribution": "normal", "bias": 0.0},
            lambda w: (
                w.abs().max() > (6 / 1040) ** 0.5 and abs(w.std() - (2 / 1040) ** 0.5) < 0.002
            ),
        ),
        (
            {"name": "kaiming", "distribution": "normal", "mode": "fan_out", "bias": 0.0},
            lambda w: abs(w.std() - (2 / 256) ** 0.5) < 0.005,
        ),
        (
            {"name": "kaiming", "distribution": "normal", "mode": "fan_in", "bias": 0.0},
            lambda w: abs(w.std() - (2 / 784) ** 0.5) < 0.005,
        ),
    ],
)
@pytest.mark.parametrize("impl", ["concise", "scratch"])
def test_init_schemes_set_weights_and_zero_biases(init, check, impl):
    torch.manual_seed(0)
    net = build_model(model_cfg("mlp", impl=impl), IMAGES)
    for p in net.parameters():
        torch.nn.init.constant_(p, 7.0)
    apply_init(net, OmegaConf.create(init))
    weights = [p for p in net.parameters() if p.ndim == 2]
    first = weights[0] if impl == "concise" else weights[0].T  # scratch stores (fan_in, fan_out)
    assert check(first)
    assert all(torch.all(p == 0) for p in net.parameters() if p.ndim == 1)


def test_modern_lenet_with_batch_norm_normalizes_in_training_only():
    net = build_model(model_cfg("lenet", variant="modern", batch_norm=True), IMAGES)
    kinds = [type(m).__name__ for m in net]
    assert kinds.count("BatchNorm2d") == 2 and kinds.count("BatchNorm1d") == 2 and "ReLU" in kinds
    x = torch.rand(16, 1, 28, 28)
    net.train()
    out = net(x)
    assert out.shape == (16, 10) and net[1].running_mean.abs().sum() > 0  # statistics were updated
    net.eval()
    assert not torch.allclose(net(x), out)  # running statistics, not the batch's, at evaluation
