"""The training loop: learning, device-side accounting, divergence, checkpoints, interrupts,
L1/L2."""

import pytest
import torch
from omegaconf import OmegaConf

from d2lrun.checkpoint import load_checkpoint
from d2lrun.config import Trainer
from d2lrun.data import Split
from d2lrun.errors import Diverged
from d2lrun.models import build_model
from d2lrun.optim import build_optimizer, l1_penalty
from d2lrun.trainer import (
    History,
    compiled,
    cross_entropy_scratch,
    diverged,
    evaluate,
    fit,
    rng_state,
    set_rng_state,
    squared_loss,
    train_one_epoch,
)

SPEC = {
    "dataset": "synthetic",
    "task": "regression",
    "num_inputs": 2,
    "num_outputs": 1,
    "image_shape": None,
}


def regression_data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 2, generator=g)
    return Split(X, (X @ torch.tensor([2.0, -3.4]) + 4.2).reshape(-1, 1))


def linreg():
    torch.manual_seed(0)
    return build_model(OmegaConf.create({"name": "linreg", "impl": "concise", "bias": True}), SPEC)


def sgd(model, lr=0.03, wd=0.0):
    return build_optimizer(
        model, OmegaConf.create({"name": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": wd})
    )


def run_fit(tmp_path, model, opt, epochs=3, checkpoint_every=1, l1=0.0):
    data = regression_data()
    trainer = Trainer(
        epochs=epochs,
        batch_size=10,
        checkpoint_every=checkpoint_every,
        progress=False,
        compile=False,
    )
    return fit(
        model,
        opt,
        torch.nn.functional.mse_loss,
        data,
        data,
        trainer,
        l1,
        tmp_path,
        torch.Generator().manual_seed(0),
        History(),
        {"config": {}, "spec": SPEC},
        log=lambda *_: None,
    )


def test_fit_learns_and_writes_checkpoints(tmp_path):
    model = linreg()
    history = run_fit(tmp_path, model, sgd(model, lr=0.1))
    assert [r["epoch"] for r in history.rows] == [1, 2, 3]
    assert history.rows[-1]["val_loss"] < 1e-4 < 1 < history.rows[0]["train_loss"]
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 3 and ckpt["best"]["metric"] == "val_loss" and len(ckpt["history"]) == 3
    assert (tmp_path / "best.pt").exists()
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_checkpoint_every_skips_epochs_but_always_saves_the_last(tmp_path):
    model = linreg()
    saved = []
    import d2lrun.trainer as train_mod

    original = train_mod.save_checkpoint
    train_mod.save_checkpoint = lambda path, ck: (
        saved.append((path.name, ck["epoch"])) or original(path, ck)
    )
    try:
        run_fit(tmp_path, model, sgd(model), epochs=5, checkpoint_every=2)
    finally:
        train_mod.save_checkpoint = original
    assert [e for name, e in saved if name == "last.pt"] == [2, 4, 5]


def test_divergence_stops_with_epoch_and_batch(tmp_path):
    model = linreg()
    with pytest.raises(Diverged, match=r"epoch 1, batch \d+\. Fix: lower optim.lr"):
        run_fit(tmp_path, model, sgd(model, lr=1e6))
    assert not (tmp_path / "last.pt").exists()  # nothing saved from a diverged epoch


def test_ctrl_c_saves_the_last_complete_epoch(tmp_path):
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
    with pytest.raises(KeyboardInterrupt):
        run_fit(tmp_path, model, opt, epochs=6, checkpoint_every=10)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 3


def test_weight_decay_applies_to_weights_not_biases():
    model = linreg()
    opt = sgd(model, wd=0.5)
    groups = {tuple(p.shape): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert groups == {(1, 2): 0.5, (1,): 0.0}


def test_l1_penalty_sums_absolute_weights_only():
    model = linreg()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0]]))
        model[0].bias.fill_(100.0)
    assert l1_penalty(model).item() == 3.0


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
        classify=True,
    )
    assert out["loss_sum"].ndim == 0 and out["batch_losses"].shape == (
        4,
    )  # last partial batch kept
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
    metrics = evaluate(model, torch.nn.functional.cross_entropy, Split(X, y), classify=True)
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


def test_an_overflowing_sum_of_finite_losses_is_divergence_too(tmp_path, monkeypatch):
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
        run_fit(tmp_path, model, sgd(model))


def test_l1_training_drives_the_useless_weights_to_zero(tmp_path):
    """§4.5's L1 term in the loop: with 10 inputs of which only the first matters, lambd 0.3 leaves
    the other nine weights far smaller than plain training does, and still learns the first."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 10, generator=g)
    data = Split(X, (3 * X[:, :1] + 0.5 * torch.randn(200, 1, generator=g)))
    spec = {**SPEC, "num_inputs": 10}
    weights = {}
    for l1 in (0.0, 0.3):
        torch.manual_seed(0)
        model = build_model(
            OmegaConf.create({"name": "linreg", "impl": "concise", "bias": True}), spec
        )
        (tmp_path / str(l1)).mkdir()
        trainer = Trainer(
            epochs=20, batch_size=10, checkpoint_every=20, progress=False, compile=False
        )
        fit(
            model,
            sgd(model, lr=0.02),
            torch.nn.functional.mse_loss,
            data,
            data,
            trainer,
            l1,
            tmp_path / str(l1),
            torch.Generator().manual_seed(0),
            History(),
            {"config": {}, "spec": spec},
            log=lambda *_: None,
        )
        weights[l1] = model[0].weight.detach().reshape(-1)
    assert weights[0.3][1:].abs().sum() < 0.5 * weights[0.0][1:].abs().sum()
    assert abs(weights[0.3][0] - 3) < 0.25  # the L1 optimum: 3 - λ/2


def test_best_pt_holds_the_best_epoch(tmp_path):
    """best.pt is the epoch with the lowest validation loss, not the last one."""
    model = linreg()
    history = run_fit(
        tmp_path, model, sgd(model, lr=0.6), epochs=6
    )  # a large step: the loss bounces
    best = min(history.rows, key=lambda r: r["val_loss"])
    saved = load_checkpoint(tmp_path / "best.pt")
    assert saved["epoch"] == best["epoch"] == history.best["epoch"]
    assert saved["best"]["value"] == best["val_loss"]


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
    model = build_model(
        OmegaConf.create({"name": "linreg", "impl": "concise", "bias": False}), SPEC
    )
    error = diverged(torch.tensor(losses), 10, 7, sgd(model, lr=1e6))  # one parameter group
    value = f"{losses[batch - 1]:.4g}"
    assert str(error) == (
        f"the training loss became {value} at epoch 7, batch {batch}. "
        "Fix: lower optim.lr (now 1e+06)."
    )


def test_compile_wraps_the_model_on_cpu_and_cuda_without_a_note():
    notes, model = [], torch.nn.Linear(2, 1)
    for device in ("cpu", "cuda"):  # torch.compile is lazy: nothing runs on the device here
        fast = compiled(model, torch.device(device), notes.append)
        assert fast is not model and fast._orig_mod is model
    assert notes == []


@pytest.mark.parametrize("found", ["c++", "g++", "cc"])
def test_compile_on_cpu_needs_any_one_c_compiler(monkeypatch, found):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}" if name == found else None)
    notes, model = [], torch.nn.Linear(2, 1)
    assert compiled(model, torch.device("cpu"), notes.append)._orig_mod is model and notes == []


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


@pytest.mark.gpu
def test_a_checkpoints_rng_state_restores_the_cuda_generator_too():
    """Dropout on a GPU draws from CUDA's generator: a resume must restore it to be bit for bit."""
    generator = torch.Generator().manual_seed(0)
    saved = rng_state(generator)
    first = torch.rand(3, device="cuda")
    torch.rand(5, device="cuda")
    set_rng_state(saved, generator)
    assert torch.equal(torch.rand(3, device="cuda"), first)
