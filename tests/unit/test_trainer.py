"""The training loop: learning, device-side accounting, divergence, Ctrl-C, the losses, compile.

What the job does with each epoch (checkpoints, L1/L2, ...) is in test_job.py."""

import math
import re

import pytest
import torch
from omegaconf import OmegaConf

from d2lrun.data import Spec, Split
from d2lrun.errors import Diverged
from d2lrun.models import build_model
from d2lrun.optim import build_optimizer
from d2lrun.trainer import (
    Trainer,
    compiled,
    cross_entropy_scratch,
    diverged,
    evaluate,
    fit,
    mse_loss,
    squared_loss,
    train_one_epoch,
)

SPEC = Spec(dataset="synthetic", task="regression", num_inputs=2, num_outputs=1, image_shape=None)


def regression_data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 2, generator=g)
    return Split(X, (X @ torch.tensor([2.0, -3.4]) + 4.2).reshape(-1, 1))


def linreg():
    torch.manual_seed(0)
    return build_model(OmegaConf.create({"name": "linreg", "impl": "concise", "bias": True}), SPEC)


def sgd(model, lr=0.03, wd=0.0, momentum=0.0):
    return build_optimizer(
        model, OmegaConf.create({"name": "sgd", "lr": lr, "momentum": momentum, "weight_decay": wd})
    )


def run_fit(model, opt, epochs=3, on_epoch=None):
    """fit on 200 noiseless examples (20 batches of 10 per epoch); returns the rows it handed to
    on_epoch and its Trainer."""
    data = regression_data()
    trainer = Trainer(
        epochs=epochs,
        batch_size=10,
        checkpoint_every=1,
        progress=False,
        compile=False,
        log_rmse=False,
        generator=torch.Generator().manual_seed(0),
    )
    rows = []

    def record(row):
        assert trainer.epoch == row["epoch"]  # the epoch is counted before the hook runs
        rows.append(row)
        if on_epoch:
            on_epoch(row)

    fit(model, opt, torch.nn.functional.mse_loss, data, data, trainer, record)
    return rows, trainer


def test_fit_learns_and_hands_each_epoch_to_on_epoch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = linreg()
    rows, trainer = run_fit(model, sgd(model, lr=0.1))
    assert [r["epoch"] for r in rows] == [1, 2, 3] and trainer.epoch == 3
    assert rows[-1]["val_loss"] < 1e-4 < 1 < rows[0]["train_loss"]
    assert list(tmp_path.iterdir()) == []  # the loop writes no files: the job does


def test_divergence_stops_with_epoch_and_batch():
    model = linreg()
    rows = []
    with pytest.raises(Diverged, match=r"epoch 1, batch \d+\. Fix: lower optim.lr"):
        run_fit(model, sgd(model, lr=1e6), on_epoch=rows.append)
    assert rows == []  # a diverged epoch is never handed on (so never saved)


def test_ctrl_c_leaves_the_trainer_at_the_last_complete_epoch():
    model = linreg()
    opt = sgd(model)
    calls = {"n": 0}
    original = opt.step

    def step(*a, **k):
        calls["n"] += 1
        if calls["n"] == 20 * 3 + 5:  # in epoch 4 (20 batches per epoch)
            raise KeyboardInterrupt
        return original(*a, **k)

    opt.step = step
    epochs = []
    with pytest.raises(KeyboardInterrupt):
        run_fit(model, opt, epochs=6, on_epoch=lambda row: epochs.append(row["epoch"]))
    assert epochs == [1, 2, 3]


def test_fit_goes_on_from_the_trainers_epoch():
    model = linreg()
    data = regression_data()
    trainer = Trainer(
        epochs=5,
        batch_size=10,
        checkpoint_every=1,
        progress=False,
        compile=False,
        log_rmse=False,
        epoch=3,
    )
    rows = []
    fit(model, sgd(model), torch.nn.functional.mse_loss, data, data, trainer, rows.append)
    assert [r["epoch"] for r in rows] == [4, 5] and trainer.epoch == 5


def test_train_one_epoch_accumulates_on_device_and_counts_correct():
    X = torch.randn(30, 4)
    y = (X[:, 0] > 0).long()
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = train_one_epoch(
        model,
        torch.nn.functional.cross_entropy,
        opt,
        Split(X, y),
        8,
        torch.Generator().manual_seed(0),
    )
    assert out["loss_sum"].ndim == 0
    assert out["batch_losses"].shape == (4,)  # last partial batch kept
    # The counts are of the predictions made while training: recompute them batch by batch, in the
    # same order.
    perm, correct, losses = torch.randperm(30, generator=torch.Generator().manual_seed(0)), 0, []
    model.load_state_dict(before)
    replay = torch.optim.SGD(model.parameters(), lr=0.1)
    for i in range(0, 30, 8):
        idx = perm[i : i + 8]
        y_hat = model(X[idx])
        loss = torch.nn.functional.cross_entropy(y_hat, y[idx])
        correct += (y_hat.argmax(1) == y[idx]).sum().item()
        losses.append(loss.item())
        replay.zero_grad()
        loss.backward()
        replay.step()
    assert out["correct"].item() == correct
    torch.testing.assert_close(out["batch_losses"], torch.tensor(losses))
    metrics = evaluate(model, torch.nn.functional.cross_entropy, Split(X, y))
    assert metrics["acc"] == pytest.approx((model(X).argmax(1) == y).float().mean().item())
    assert metrics["loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(model(X), y).item(), rel=1e-6
    )


def test_scratch_losses_match_torch():
    logits, y = torch.randn(6, 10) * 50, torch.randint(0, 10, (6,))
    assert torch.allclose(
        cross_entropy_scratch(logits, y), torch.nn.functional.cross_entropy(logits, y), atol=1e-5
    )
    y_hat, t = torch.randn(5, 1), torch.randn(5, 1)
    assert torch.allclose(squared_loss(y_hat, t) * 2, torch.nn.functional.mse_loss(y_hat, t))


def test_an_overflowing_sum_of_finite_losses_is_divergence_too(monkeypatch):
    import d2lrun.trainer as train_mod

    real = train_mod.train_one_epoch

    def huge(*a, **k):
        out = real(*a, **k)
        out["batch_losses"].fill_(3e37)  # each finite, their sum times the batch size is not
        out["loss_sum"].fill_(float("inf"))
        return out

    monkeypatch.setattr(train_mod, "train_one_epoch", huge)
    model = linreg()
    with pytest.raises(Diverged, match=r"became 3e\+37 at epoch 1, batch \d+"):
        run_fit(model, sgd(model))


def test_a_loss_that_overflows_after_the_epochs_last_step_is_divergence_too():
    """Each batch's loss was finite, the weights after the epoch's last step were not usable: the
    epoch (val_loss inf) went to on_epoch, so into best.pt, and metrics.json held
    Infinity, which is no JSON. A stack's member stops there; the others go on."""
    from d2lrun.stack import Stack, StackOptimizer

    data = Split(torch.full((10, 2), 1e10), torch.ones(10, 1))  # one step to weights of ~1e18

    def trainer():
        return Trainer(epochs=2, batch_size=10, checkpoint_every=1, progress=False,
                       compile=False, log_rmse=False, generator=torch.Generator())  # fmt: skip

    rows, model = [], linreg()
    why = "the val_loss became inf after epoch 1. Fix: lower optim.lr (now 1)."
    with pytest.raises(Diverged, match=f"^{re.escape(why)}$"):
        fit(model, sgd(model, lr=1), mse_loss, data, data, trainer(), rows.append)
    assert rows == []
    models = [linreg(), linreg()]
    cfg = OmegaConf.create({"name": "linreg", "impl": "concise", "bias": True})
    stack = Stack(models, [cfg, cfg], [torch.Generator(), torch.Generator()])
    optimizer = StackOptimizer(stack, [sgd(models[0], lr=1e-22), sgd(models[1], lr=1)], models)
    fit(stack, optimizer, mse_loss, data, data, trainer(), rows.append)
    assert [r["diverged"] for r in rows] == [[None, why], [None, None]]  # member 1: in epoch 1
    assert all(math.isfinite(r["val_loss"][0]) for r in rows)
    # With momentum, its Fix named only optim.lr: lowering optim.momentum is the other way out
    why = why.replace("(now 1).", "(now 1) or optim.momentum (now 0.9).")
    with pytest.raises(Diverged, match=f"^{re.escape(why)}$"):
        fit((m := linreg()), sgd(m, lr=1, momentum=0.9), mse_loss, data, data, trainer(), print)
    models = [linreg(), linreg()]
    stack = Stack(models, [cfg, cfg], [torch.Generator(), torch.Generator()])
    members = [sgd(models[0], lr=1e-22), sgd(models[1], lr=1, momentum=0.9)]
    rows.clear()
    fit(stack, StackOptimizer(stack, members, models), mse_loss, data, data, trainer(), rows.append)
    assert rows[0]["diverged"] == [None, why]


@pytest.mark.parametrize(
    "losses,batch",
    [
        ([1.0, 2.0, float("nan"), 3.0], 3),  # the first batch whose loss is not finite
        ([1.0, float("inf"), float("inf"), 3.0], 2),
        ([3e37, 3e37, 3e37, 3e37], 2),  # finite losses; their running sum x 10 overflows here
        ([1.0, 2.0, 3.0, 4.0], 4),  # all finite, yet the epoch's sum was not: the last batch
    ],
)
def test_divergence_names_the_batch_where_the_loss_stopped_being_finite(losses, batch):
    error = diverged(torch.tensor(losses), 10, 7, {"lr": 1e6})
    value = f"{losses[batch - 1]:.4g}"
    assert str(error) == (
        f"the training loss became {value} at epoch 7, batch {batch}. "
        "Fix: lower optim.lr (now 1e+06)."
    )


def test_compile_wraps_the_model_without_a_note():
    notes, model = [], torch.nn.Linear(2, 1)
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        fast = compiled(model, torch.device(device), notes.append)
        assert fast is not model and fast._orig_mod is model
    assert notes == []


def test_compile_falls_back_to_eager_with_one_note_where_torch_compile_fails(monkeypatch):
    def unsupported(*a, **k):
        raise RuntimeError("Python 3.14+ is not supported")

    monkeypatch.setattr(torch, "compile", unsupported)
    notes, model = [], torch.nn.Linear(2, 1)
    assert compiled(model, torch.device("cpu"), notes.append) is model
    assert notes == [
        (
            "note: trainer.compile=true is not available here (RuntimeError: Python 3.14+ is not "
            "supported); training eagerly"
        )
    ]


def test_an_epoch_line_has_each_metric_its_seconds_and_speed():
    from d2lrun.trainer import format_row

    row = {"epoch": 3, "train_loss": 0.0123456, "train_acc": 0.81234, "val_loss": 1234.5678,
           "val_acc": 0.8, "seconds": 1.2345, "examples_per_s": 48612.4}  # fmt: skip
    assert format_row(row, 10) == (
        "epoch  3/10  train_loss 0.01235  train_acc 0.812  val_loss 1235  val_acc 0.800  "
        "1.23s  48,612 ex/s"
    )
    assert format_row(row | {"epoch": 7}, 7).startswith("epoch 7/7  ")
