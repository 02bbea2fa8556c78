"""Dropout (§4.6), scratch and concise: the rate p, the 1 / (1 - p) scaling, off in eval mode, the
expectation kept, and a run that overfits less with it."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from d2lrun.config import compose
from d2lrun.data import Spec
from d2lrun.job import train_job
from d2lrun.models import build_model
from d2lrun.models.init import apply_init
from d2lrun.models.mlp import dropout_layer

IMPLS = ("concise", "scratch")
WIDTH = 256  # units per layer; with 400 examples, 102,400 hidden units per forward pass


def mlp(impl, dropout, num_hiddens=(WIDTH,), num_inputs=WIDTH, num_outputs=WIDTH):
    """d2lrun's MLP as model=mlp model.impl=IMPL model.dropout=DROPOUT builds it, default init."""
    cfg = {"name": "mlp", "impl": impl, "num_hiddens": list(num_hiddens), "activation": "relu"}
    spec = Spec("synthetic", "regression", num_inputs, num_outputs)
    model = build_model(OmegaConf.create({**cfg, "dropout": dropout}), spec)
    return apply_init(model, OmegaConf.create({"name": "default"}))


def layers(model):
    """(weight laid out (fan_in, fan_out), bias) per layer, for either impl."""
    if hasattr(model, "layers"):
        return model.layers()
    return [(m.weight.T, m.bias) for m in model if isinstance(m, nn.Linear)]


@torch.no_grad()
def pass_through(model, biases):
    """Every weight the identity and layer i's bias biases[i]: the output shows the last hidden
    layer's activation as dropout left it."""
    for (w, b), bias in zip(layers(model), biases, strict=True):
        w.copy_(torch.eye(*w.shape))
        b.fill_(bias)
    return model


def positive_inputs(seed=0, rows=400):
    """Inputs in [0.5, 1.5): relu keeps them and a zero can only come from dropout."""
    return torch.rand(rows, WIDTH, generator=torch.Generator().manual_seed(seed)) + 0.5


def assert_dropped_at_rate(out, p):
    """A share of the units zeroed within 5 binomial standard deviations of p."""
    zeroed = (out == 0).float().mean().item()
    assert abs(zeroed - p) <= 5 * math.sqrt(p * (1 - p) / out.numel()), (zeroed, p)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_layer_zeroes_a_share_p_and_scales_the_rest_by_1_over_1_minus_p(p):
    """§4.6's dropout_layer: each unit zeroed with probability p, the others x / (1 - p)."""
    torch.manual_seed(0)
    X = positive_inputs()
    out = dropout_layer(X, p)
    assert_dropped_at_rate(out, p)
    kept = out != 0
    torch.testing.assert_close(out[kept], X[kept] / (1 - p), rtol=1e-6, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_a_training_mlp_drops_hidden_units_at_rate_p_and_scales_the_rest(impl, p):
    """model.dropout=p: in training a share p of the hidden activations is zeroed, the rest are
    the activation times 1 / (1 - p)."""
    torch.manual_seed(0)
    model = pass_through(mlp(impl, p), [0.0, 0.0]).train()
    X = positive_inputs()
    out = model(X)  # = dropout(relu(X)) = dropout(X)
    assert_dropped_at_rate(out, p)
    kept = out != 0
    torch.testing.assert_close(out[kept], X[kept] / (1 - p), rtol=1e-6, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_each_hidden_layer_drops_at_its_own_rate(impl):
    """model.dropout=[0.2, 0.5]: the first hidden layer drops a share 0.2, the second 0.5."""
    p1, p2 = 0.2, 0.5
    torch.manual_seed(0)
    # The second layer's bias of 1 makes each of its units positive, so a zero in the output
    # is the second dropout's, and an output of exactly 1 / (1 - p2) is a unit the first dropped.
    model = pass_through(mlp(impl, [p1, p2], num_hiddens=(WIDTH, WIDTH)), [0.0, 1.0, 0.0]).train()
    X = positive_inputs()
    out = model(X)  # = dropout2(dropout1(X) + 1)
    assert_dropped_at_rate(out, p2)
    kept = out != 0
    first_dropped = torch.isclose(out, torch.full_like(out, 1 / (1 - p2)), rtol=1e-6, atol=0)
    assert_dropped_at_rate(torch.where(first_dropped, 0.0, out)[kept], p1)
    both_kept = kept & ~first_dropped
    expected = (X / (1 - p1) + 1) / (1 - p2)
    torch.testing.assert_close(out[both_kept], expected[both_kept], rtol=1e-5, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_in_eval_mode_dropout_is_the_identity(impl):
    """model.eval(): the output is the same network's without dropout, every time."""
    torch.manual_seed(0)
    with_dropout = mlp(impl, [0.5, 0.8], num_hiddens=(64, 32), num_inputs=20, num_outputs=3)
    without = mlp(impl, 0.0, num_hiddens=(64, 32), num_inputs=20, num_outputs=3)
    with torch.no_grad():
        for (w, b), (w0, b0) in zip(layers(with_dropout), layers(without), strict=True):
            w0.copy_(w)
            b0.copy_(b)
    with_dropout.eval()
    X = torch.randn(50, 20)
    assert torch.equal(with_dropout(X), without(X))
    assert torch.equal(with_dropout(X), with_dropout(X))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("p", [0.2, 0.6])
def test_training_outputs_vary_but_average_to_the_eval_output(impl, p):
    """Inverted dropout keeps the expectation: training-mode outputs of one input differ from
    pass to pass, and their mean over many passes is the eval-mode output."""
    torch.manual_seed(0)
    model = mlp(impl, p, num_hiddens=(64,), num_inputs=20, num_outputs=3)
    x = torch.randn(1, 20)
    with torch.no_grad():
        expected = model.eval()(x)[0]
        model.train()
        assert not torch.equal(model(x), model(x))
        outs = model(x.expand(20_000, 20))  # 20,000 passes of x, each with its own mask
    # Within 5 standard errors of the mean: a wrong scale is off by far more than that.
    error = (outs.mean(0) - expected).abs()
    assert torch.all(error <= 5 * outs.std(0) / math.sqrt(len(outs))), (error, outs.std(0))


def no_png(rows, title):
    """No curves.png: matplotlib would add most of a second, and the curves are not tested here."""
    return b""


@pytest.mark.parametrize("impl", IMPLS)
def test_dropout_narrows_the_gap_between_training_and_validation(tmp_path, impl):
    """An MLP that overfits 20 rows of 200 features: with regularizer=dropout its validation RMSE
    is lower, and nearer its training RMSE, than without."""
    final = {}
    for reg in ("none", "dropout"):
        args = [
            "device=cpu",
            "trainer.progress=false",
            "model=mlp",
            f"model.impl={impl}",
            f"regularizer={reg}",  # dropout: model.dropout=0.5
            "dataset=synthetic",  # §3.7's high-dimensional regression: few rows, many features
            "dataset.w=0.01",
            "dataset.b=0.05",
            "dataset.num_inputs=200",
            "dataset.num_train=20",
            "dataset.num_val=100",
            "init=default",  # the book's N(0, 0.01) is too slow to overfit in 20 epochs
            "optim.lr=0.01",  # the book's 0.1 diverges on 200 features
            "trainer.epochs=20",
        ]
        summary = train_job(compose(args), tmp_path / reg, args, log=lambda *_: None, draw=no_png)
        final[reg] = summary["final"]
    gap = {reg: row["val_rmse"] - row["train_rmse"] for reg, row in final.items()}
    assert gap["dropout"] < gap["none"], gap  # both RMSEs in eval mode, after the epoch
    assert final["dropout"]["val_rmse"] < final["none"]["val_rmse"], final
