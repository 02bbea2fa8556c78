"""Scratch and concise are the same model: from the same parameters, with the same loss definition,
they trace the same loss curve; and the scratch path is the book's own code (§3.2, §4.5)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from d2lrun.data import Spec, Split
from d2lrun.data.synthetic import synthetic_data
from d2lrun.models import build_model
from d2lrun.models.init import apply_init
from d2lrun.optim import Optimizer, build_optimizer
from d2lrun.trainer import (
    cross_entropy_scratch,
    loss_for,
    squared_loss,
    sum_squared_loss,
    train_one_epoch,
)

REGRESSION = Spec(
    dataset="synthetic", task="regression", num_inputs=2, num_outputs=1, image_shape=None
)
IMAGES = Spec(
    dataset="fashion_mnist",
    task="classification",
    num_inputs=784,
    num_outputs=10,
    image_shape=[1, 28, 28],
)
MODELS = {
    "linreg": {"name": "linreg", "bias": True},
    "softmax": {"name": "softmax"},
    "mlp_sigmoid": {"name": "mlp", "num_hiddens": [32], "activation": "sigmoid", "dropout": 0.0},
    "mlp_tanh": {"name": "mlp", "num_hiddens": [32, 16], "activation": "tanh", "dropout": 0.0},
    "mlp": {"name": "mlp", "num_hiddens": [32], "activation": "relu", "dropout": 0.0},
    "mlp2": {"name": "mlp", "num_hiddens": [32, 16], "activation": "relu", "dropout": 0.0},
}


def regression_data(w: torch.Tensor | None = None, b: float = 4.2, n: int = 1000) -> Split:
    if w is None:
        w = torch.tensor([2.0, -3.4])
    X, y = synthetic_data(w, b, n, 0.01, torch.Generator().manual_seed(1))
    return Split(X, y)


def weight_decay_data() -> Split:
    """§4.5's data: 20 examples, 200 inputs, every true weight 0.01, bias 0.05."""
    return regression_data(torch.full((200,), 0.01), 0.05, n=20)


def image_data(n: int = 256) -> Split:
    """Dim noisy uint8 images with a bright square where the class says, so the curves move."""
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 10, (n,), generator=g)
    X = torch.randint(0, 40, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    for i, c in enumerate(y.tolist()):
        r, col = divmod(c, 5)
        X[i, 0, 4 + 10 * r : 12 + 10 * r, 1 + 5 * col : 5 + 5 * col] = 255
    return Split(X, y)


def optim_cfg(lr: float, weight_decay: float = 0.0):
    return OmegaConf.create(
        {"name": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": weight_decay}
    )


def twins(key: str, spec: Spec) -> tuple[nn.Module, nn.Module]:
    """A scratch model and a concise one holding the very same parameters."""
    torch.manual_seed(0)
    scratch = build_model(OmegaConf.create({**MODELS[key], "impl": "scratch"}), spec)
    concise = build_model(OmegaConf.create({**MODELS[key], "impl": "concise"}), spec)
    apply_init(scratch, OmegaConf.create({"name": "normal", "mean": 0.0, "std": 0.1, "bias": 0.0}))
    linears = [m for m in concise.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == len(scratch.layers())
    with torch.no_grad():
        for (W, b), linear in zip(scratch.layers(), linears, strict=True):
            # scratch stores (fan_in, fan_out), nn.Linear (fan_out, fan_in)
            linear.weight.copy_(W.T)
            linear.bias.copy_(b)
    return scratch, concise


def loss_curve(
    model: nn.Module,
    loss_fn,
    data: Split,
    lr: float,
    epochs: int = 3,
    batch_size: int = 32,
    weight_decay: float = 0.0,
) -> torch.Tensor:
    """Every minibatch loss of d2lrun's own train_one_epoch, batches in a fixed shuffled order."""
    optimizer = build_optimizer(model, optim_cfg(lr, weight_decay))
    g = torch.Generator().manual_seed(0)
    return torch.cat(
        [
            train_one_epoch(model, loss_fn, optimizer, data, batch_size, g)["batch_losses"]
            for _ in range(epochs)
        ]
    )


def test_each_impl_gets_its_own_optimizer_and_loss():
    scratch, concise = twins("linreg", REGRESSION)
    # Both take torch.optim.SGD's exact steps (tests/unit/test_optim.py); with momentum 0 that is
    # the book's sgd.
    for model in (scratch, concise):
        optimizer = build_optimizer(model, optim_cfg(0.03))
        assert type(optimizer) is Optimizer and optimizer.kind is torch.optim.SGD
    assert loss_for("regression", "scratch") is squared_loss
    assert loss_for("regression", "sum") is sum_squared_loss  # §6.2.4
    assert loss_for("classification", "scratch") is cross_entropy_scratch
    # The concise ones are nn.MSELoss's and nn.CrossEntropyLoss's for one model (a stack of
    # models, d2lrun.stack, gets one loss per member).
    g = torch.Generator().manual_seed(0)
    y_hat, y = torch.randn(8, 1, generator=g), torch.randn(8, 1, generator=g)
    assert torch.equal(loss_for("regression", "concise")(y_hat, y), F.mse_loss(y_hat, y))
    logits, labels = torch.randn(8, 10, generator=g), torch.randint(10, (8,), generator=g)
    concise = loss_for("classification", "concise")
    assert torch.equal(concise(logits, labels), F.cross_entropy(logits, labels))


def test_linreg_same_loss_same_curve():
    data = regression_data()
    scratch, concise = twins("linreg", REGRESSION)
    a = loss_curve(scratch, squared_loss, data, lr=0.03, batch_size=10)  # §3.2's protocol
    b = loss_curve(concise, squared_loss, data, lr=0.03, batch_size=10)
    assert a[0] > 1 and a[-1] < 1e-3  # it learned: the curve spans three orders of magnitude
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_linreg_book_losses_differ_by_the_half():
    """§3.3's MSELoss has no ½: its loss is twice §3.2's, and so is its gradient (half the lr, same
    path)."""
    data = regression_data()
    scratch, concise = twins("linreg", REGRESSION)
    a = loss_curve(scratch, loss_for("regression", "scratch"), data, lr=0.03, batch_size=10)
    b = loss_curve(concise, loss_for("regression", "concise"), data, lr=0.015, batch_size=10)
    torch.testing.assert_close(2 * a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "key,lr",
    [("softmax", 0.1), ("mlp", 0.1), ("mlp2", 0.5), ("mlp_sigmoid", 0.5), ("mlp_tanh", 0.3)],
)
def test_classifier_same_loss_same_curve(key, lr):
    """Each impl with its own loss (hand-written stable cross-entropy vs F.cross_entropy) and
    optimizer."""
    data = image_data()
    scratch, concise = twins(key, IMAGES)
    a = loss_curve(scratch, loss_for("classification", "scratch"), data, lr)
    b = loss_curve(concise, loss_for("classification", "concise"), data, lr)
    assert a[-3:].mean() < a[:3].mean()  # it learned
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    scratch.eval(), concise.eval()
    X = data.X[:8].float() / 255
    torch.testing.assert_close(scratch(X), concise(X), atol=1e-5, rtol=0)


def book_sgd(params, lr, batch_size):
    """§3.2's sgd, verbatim: the gradient of a summed loss, divided by the batch size."""
    with torch.no_grad():
        for param in params:
            param -= lr * param.grad / batch_size
            param.grad.zero_()


def book_train(
    w, b, data: Split, lr: float, epochs: int, batch_size: int, lambd: float = 0.0
) -> torch.Tensor:
    """§3.2's training loop (with §4.5's `+ lambd * l2_penalty(w)`), batches in d2lrun's order."""
    w, b = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    g, losses = torch.Generator().manual_seed(0), []
    for _ in range(epochs):
        perm = torch.randperm(len(data), generator=g)
        for i in range(0, len(data), batch_size):
            X, y = data.X[perm[i : i + batch_size]], data.y[perm[i : i + batch_size]]
            data_loss = (X @ w + b - y.reshape(-1, 1)) ** 2 / 2  # linreg + squared_loss, (B, 1)
            # the book's `l`, broadcast over the batch as in §4.5
            batch_loss = data_loss + lambd * torch.sum(w.pow(2)) / 2
            batch_loss.sum().backward()
            book_sgd([w, b], lr, batch_size)
            losses.append(data_loss.mean().item())
    return torch.tensor(losses), w.detach()


@pytest.mark.parametrize("lambd", [0.0, 3.0])
def test_scratch_is_the_books_code(lambd):
    """d2lrun's scratch path (mean loss, SGD, weight decay on w only) = the book's
    sum-then-divide."""
    data = weight_decay_data()
    spec = replace(REGRESSION, num_inputs=200)
    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"name": "linreg", "impl": "scratch", "bias": True}), spec)
    apply_init(model, OmegaConf.create({"name": "normal", "mean": 0.0, "std": 1.0, "bias": 0.0}))
    book_losses, book_w = book_train(
        model.w, model.b, data, lr=0.003, epochs=20, batch_size=5, lambd=lambd
    )
    ours = loss_curve(
        model, squared_loss, data, lr=0.003, epochs=20, batch_size=5, weight_decay=lambd
    )
    torch.testing.assert_close(ours, book_losses, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.w.detach(), book_w, atol=1e-5, rtol=0)


def test_concise_weight_decay_is_the_books_param_groups():
    """§4.5 concise: SGD([{weight, weight_decay: wd}, {bias}]) with MSELoss; d2lrun builds the same
    groups."""
    data = weight_decay_data()
    spec = replace(REGRESSION, num_inputs=200)
    torch.manual_seed(0)
    ours = build_model(OmegaConf.create({"name": "linreg", "impl": "concise", "bias": True}), spec)
    book = nn.Sequential(nn.Linear(200, 1))
    book.load_state_dict(ours.state_dict())
    trainer = torch.optim.SGD(
        [{"params": book[0].weight, "weight_decay": 3.0}, {"params": book[0].bias}], lr=0.003
    )
    g, book_losses = torch.Generator().manual_seed(0), []
    for _ in range(10):
        perm = torch.randperm(20, generator=g)
        for i in range(0, 20, 5):
            X, y = data.X[perm[i : i + 5]], data.y[perm[i : i + 5]]
            trainer.zero_grad()
            batch_loss = nn.MSELoss(reduction="none")(book(X), y)  # the book's `l`
            batch_loss.mean().backward()
            trainer.step()
            book_losses.append(batch_loss.mean().item())
    curve = loss_curve(ours, F.mse_loss, data, lr=0.003, epochs=10, batch_size=5, weight_decay=3.0)
    torch.testing.assert_close(curve, torch.tensor(book_losses), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[0].weight, book[0].weight, atol=1e-5, rtol=0)


def test_default_init_is_nn_linear_for_scratch_too():
    """init=default means PyTorch's U(±1/√fan_in) for both impls (§4.6's scratch net keeps it)."""
    torch.manual_seed(0)
    net = build_model(OmegaConf.create({**MODELS["mlp2"], "impl": "scratch"}), IMAGES)
    apply_init(net, OmegaConf.create({"name": "default"}))
    for W, b in net.layers():
        bound = 1 / math.sqrt(W.shape[0])  # scratch W is (fan_in, fan_out)
        assert W.abs().max() <= bound and W.abs().max() > 0.9 * bound
        assert b.abs().max() <= bound and b.abs().max() > 0.5 * bound
