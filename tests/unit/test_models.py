"""Models: shapes, the book's parameter counts and state_dict keys, fit checks, dropout, init."""

import dataclasses
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from d2lrun.config import compose
from d2lrun.data import Spec, build_data
from d2lrun.errors import UsageError
from d2lrun.models import build_model
from d2lrun.models.init import apply_init
from d2lrun.models.mlp import MLPScratch

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


def test_a_classifier_on_a_csv_of_numbers_is_told_the_numbers_may_be_classes():
    """A CSV's 0/1 target reads as a regression: softmax on it said only 'Fix: model=linreg'."""
    csv = dataclasses.replace(TABLE, dataset="csv", target="y")
    with pytest.raises(UsageError) as e:
        build_model(model_cfg("softmax"), csv)
    assert str(e.value).endswith(
        "Fix: model=linreg, or dataset.task=classification if 'y' holds classes."
    )
    with pytest.raises(UsageError, match=r"Fix: model=linreg, or choose another dataset=\.$"):
        build_model(model_cfg("lenet"), csv)  # not a classifier of tables either


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


def near(value, expected, rel=0.01):
    return abs(float(value) / expected - 1) < rel


# The first weight matrix of model_cfg("mlp") is (256, 784): fan_in 784, fan_out 256, and its
# n = 200,704 draws estimate a std with relative standard error 1/sqrt(2n) = 0.16% (normal draws)
# or sqrt(0.2/n) = 0.10% (uniform ones): within 1% is 6 standard errors and more, while a formula
# with the wrong fan or gain is off by 15% (sqrt(2/1040) vs sqrt(2/784)) to 73% (fan_in vs out).
XAVIER_STD = (2 / (784 + 256)) ** 0.5  # both distributions; uniform: bound sqrt(3) std
KAIMING_BOUND = {"fan_in": (6 / 784) ** 0.5, "fan_out": (6 / 256) ** 0.5}  # ReLU gain sqrt(2)


@pytest.mark.parametrize(
    "init,check",
    [
        ({"name": "zeros"}, lambda w: torch.all(w == 0)),
        ({"name": "constant", "value": 42.0, "bias": 0.5}, lambda w: torch.all(w == 42)),
        (
            {"name": "normal", "mean": 0.0, "std": 0.01, "bias": 0.5},
            lambda w: near(w.std(), 0.01) and abs(w.mean()) < 6 * 0.01 / 200_704**0.5,
        ),
        (
            {"name": "normal", "mean": 0.5, "std": 0.01, "bias": -0.5},
            lambda w: near(w.std(), 0.01) and abs(w.mean() - 0.5) < 6 * 0.01 / 200_704**0.5,
        ),
        (
            {"name": "xavier", "distribution": "uniform", "bias": 0.5},  # U(±sqrt(6/(in+out)))
            lambda w: (
                3**0.5 * XAVIER_STD * 0.999 < w.abs().max() <= 3**0.5 * XAVIER_STD
                and near(w.std(), XAVIER_STD)
            ),
        ),
        (
            {"name": "xavier", "distribution": "normal", "bias": 0.5},
            lambda w: w.abs().max() > 3**0.5 * XAVIER_STD and near(w.std(), XAVIER_STD),
        ),
        (
            {"name": "kaiming", "distribution": "normal", "mode": "fan_out", "bias": 0.5},
            lambda w: near(w.std(), (2 / 256) ** 0.5),
        ),
        (
            {"name": "kaiming", "distribution": "normal", "mode": "fan_in", "bias": 0.5},
            lambda w: near(w.std(), (2 / 784) ** 0.5),
        ),
        (  # U(±sqrt(6/fan)): the largest of 200,704 draws is within 0.1% of the bound
            {"name": "kaiming", "distribution": "uniform", "mode": "fan_out", "bias": 0.5},
            lambda w: (
                KAIMING_BOUND["fan_out"] * 0.999 < w.abs().max() <= KAIMING_BOUND["fan_out"]
                and near(w.std(), (2 / 256) ** 0.5)
            ),
        ),
        (
            {"name": "kaiming", "distribution": "uniform", "mode": "fan_in", "bias": 0.5},
            lambda w: (
                KAIMING_BOUND["fan_in"] * 0.999 < w.abs().max() <= KAIMING_BOUND["fan_in"]
                and near(w.std(), (2 / 784) ** 0.5)
            ),
        ),
    ],
)
@pytest.mark.parametrize("impl", ["concise", "scratch"])
def test_init_schemes_set_weights_and_biases(init, check, impl):
    torch.manual_seed(0)
    net = build_model(model_cfg("mlp", impl=impl), IMAGES)
    for p in net.parameters():
        torch.nn.init.constant_(p, 7.0)
    apply_init(net, OmegaConf.create(init))
    weights = [p for p in net.parameters() if p.ndim == 2]
    first = weights[0] if impl == "concise" else weights[0].T  # scratch stores (fan_in, fan_out)
    assert check(first.detach())
    biases = [p for p in net.parameters() if p.ndim == 1]
    assert len(biases) == 2 and all(torch.all(b == init.get("bias", 0.0)) for b in biases)


def test_init_sets_every_conv_kernel_and_dense_layer_and_leaves_batch_norm_alone():
    """LeNet's and §6.2.4's conv kernels get the init scheme as the dense layers do; batch norm's
    scale and shift stay 1 and 0."""
    init = OmegaConf.create({"name": "constant", "value": 0.5, "bias": 0.25})
    net = build_model(model_cfg("lenet", variant="modern", batch_norm=True), IMAGES)
    apply_init(net, init)
    layers = [m for m in net if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert [type(m).__name__ for m in layers] == ["Conv2d"] * 2 + ["Linear"] * 3
    assert all(torch.all(m.weight == 0.5) and torch.all(m.bias == 0.25) for m in layers)
    norms = [m for m in net if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    assert len(norms) == 4
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
    conv2d = OmegaConf.create({"name": "conv2d", "kernel_size": [1, 2], "bias": False})
    conv = build_model(conv2d, Spec("kernel", "regression", 48, 42, [1, 6, 8]))
    assert torch.equal(apply_init(conv, init).kernel, torch.full((1, 2), 0.5))


@pytest.mark.parametrize(
    "init,bound",
    [  # a kernel (out, in, k, k) has fan_in = in·k·k and fan_out = out·k·k (PyTorch's fans)
        ({"name": "kaiming", "distribution": "uniform", "mode": "fan_in"}, lambda i, o: 6 / i),
        ({"name": "kaiming", "distribution": "uniform", "mode": "fan_out"}, lambda i, o: 6 / o),
        ({"name": "xavier", "distribution": "uniform"}, lambda i, o: 6 / (i + o)),
    ],
)
def test_uniform_inits_bound_each_lenet_layer_by_its_own_fans(init, bound):
    """Each layer's weights lie within its own ±sqrt(bound) and reach near it: the largest of the
    first conv's 150 draws is below 0.9·bound with probability 0.9^150 < 1e-6."""
    torch.manual_seed(0)
    net = build_model(model_cfg("lenet"), IMAGES)
    apply_init(net, OmegaConf.create({**init, "bias": 0.0}))
    weights = [m.weight for m in net if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    fans = [(w[0].numel(), w.shape[0] * w[0, 0].numel()) for w in weights]
    assert fans == [(25, 150), (150, 400), (400, 120), (120, 84), (84, 10)]
    for w, (fan_in, fan_out) in zip(weights, fans, strict=True):
        limit = bound(fan_in, fan_out) ** 0.5
        assert 0.9 * limit < w.abs().max() <= limit


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


def test_scratch_linear_regression_without_bias_has_none():
    """model.impl=scratch model.bias=false: only w, as the concise model's bias=False (§4.4)."""
    cfg = compose(["model.impl=scratch", "model.bias=false"])
    spec = build_data(cfg.dataset, cfg.seed)[2]
    net = apply_init(build_model(cfg.model, spec), cfg.init)
    assert [n for n, _ in net.named_parameters()] == ["w"]
    assert torch.equal(net(torch.ones(3, 2)), torch.ones(3, 2) @ net.w)
    assert net.get_w_b()[1].item() == 0


@pytest.mark.skipif(
    not any(shutil.which(cc) for cc in ("c++", "g++", "cc")),
    reason="torch.compile needs a C++ compiler",
)
def test_scratch_dropout_compiles_for_a_last_batch_of_another_size():
    """trainer.compile=true: a scratch MLP's dropout (§4.6) traced for 8 rows, then for 5."""
    net = torch.compile(MLPScratch(6, 3, [4], "relu", [0.5]))
    apply_init(net, compose(["model=mlp"]).init)
    for rows in (8, 5):
        assert net(torch.rand(rows, 6)).shape == (rows, 3)


@pytest.mark.parametrize("size,maps", [("[2,2]", "5x7"), ("[9,9]", "0x0")])
def test_a_conv2d_kernel_that_does_not_map_the_image_to_its_target_is_refused(size, maps):
    """§6.2.4: the learned kernel's output is compared with the edges the dataset's kernel finds."""
    cfg = compose(["experiment=ch6_learn_kernel", f"model.kernel_size={size}"])
    spec = build_data(cfg.dataset, cfg.seed)[2]
    with pytest.raises(UsageError) as e:
        build_model(cfg.model, spec)
    assert str(e.value) == (
        f"model.kernel_size={size} maps the 6x8 image to {maps} values, and the target has 42. "
        f"Fix: model.kernel_size=[1,2], the dataset's kernel's size."
    )


@pytest.mark.parametrize("impl", ["concise", "scratch"])
def test_bias_null_inits_the_weights_only_as_the_books_concise_code_does(impl):
    """§3.7, §4.3, §4.6, §6.6 initialise m.weight only: each bias keeps nn.Linear's own
    U(±1/√fan_in), which a scratch model draws to mean the same."""
    torch.manual_seed(0)
    net = build_model(model_cfg("mlp", impl=impl), IMAGES)
    built = [p.detach().clone() for p in net.parameters() if p.ndim == 1]
    apply_init(net, OmegaConf.create({"name": "normal", "mean": 0.0, "std": 0.01, "bias": None}))
    biases = [p.detach() for p in net.parameters() if p.ndim == 1]
    fan_ins = [784, 256]  # model_cfg's mlp: 784-256-10
    for b, fan_in, before in zip(biases, fan_ins, built, strict=True):
        assert 0 < b.abs().max() <= fan_in**-0.5
        if impl == "concise":
            assert torch.equal(b, before)  # as nn.Linear initialised it
    assert biases[0].abs().max() > 0.8 * 784**-0.5  # 256 draws: all below, p = 0.8^256
    weights = [p for p in net.parameters() if p.ndim == 2]
    assert all(abs(float(w.detach().std()) - 0.01) < 0.001 for w in weights)
