"""The job around the loop: its checkpoints (last.pt, best.pt), Ctrl-C, L1/L2, the random state."""

import json

import pytest
import torch
from omegaconf import OmegaConf

import d2lrun.job
import d2lrun.optim
from d2lrun.config import compose
from d2lrun.data import Spec
from d2lrun.errors import Diverged, Interrupted
from d2lrun.job import rng_state, set_rng_state, train_job
from d2lrun.models import build_model
from d2lrun.optim import build_optimizer
from d2lrun.reload import load_checkpoint

SPEC = Spec(dataset="synthetic", task="regression", num_inputs=2, num_outputs=1, image_shape=None)


def run_job(run_dir, *overrides):
    """train_job on 200 synthetic examples (20 batches of 10 per epoch) into run_dir, on the CPU
    wherever the tests run."""
    args = ["device=cpu", "trainer.progress=false", "dataset.num_train=200", *overrides]
    return train_job(compose(args), run_dir, args, log=lambda *_: None)


def linreg(spec=SPEC):
    torch.manual_seed(0)
    return build_model(OmegaConf.create({"name": "linreg", "impl": "concise", "bias": True}), spec)


def sgd(model, lr=0.03, wd=0.0, l1=0.0):
    cfg = {"name": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": wd}
    return build_optimizer(model, OmegaConf.create(cfg), l1)


def test_the_job_writes_last_and_best_checkpoints(tmp_path):
    run_job(tmp_path)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 3 and ckpt["best"]["metric"] == "val_loss" and len(ckpt["history"]) == 3
    assert (tmp_path / "best.pt").exists()
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_checkpoint_every_skips_epochs_but_always_saves_the_last(tmp_path, monkeypatch):
    saved = []
    original = d2lrun.job.save_torch

    def save_torch(path, obj):
        saved.append((path.name, obj.get("epoch")))  # model.pt: a state_dict, no epoch
        return original(path, obj)

    monkeypatch.setattr(d2lrun.job, "save_torch", save_torch)
    run_job(tmp_path, "trainer.epochs=5", "trainer.checkpoint_every=2")
    assert [e for name, e in saved if name == "last.pt"] == [2, 4, 5]


def test_a_diverged_job_saves_no_checkpoint(tmp_path):
    with pytest.raises(Diverged, match=r"epoch 1, batch \d+\. Fix: lower optim.lr"):
        run_job(tmp_path, "optim.lr=1e6")
    assert not (tmp_path / "last.pt").exists()  # nothing saved from a diverged epoch
    assert not (tmp_path / "best.pt").exists()


def test_ctrl_c_saves_the_last_complete_epoch(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = d2lrun.optim.Optimizer.step

    def step(self):
        calls["n"] += 1
        if calls["n"] == 20 * 3 + 5:  # in epoch 4 (20 batches per epoch)
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(d2lrun.optim.Optimizer, "step", step)
    with pytest.raises(Interrupted, match="interrupted after epoch 3"):
        run_job(tmp_path, "trainer.epochs=6", "trainer.checkpoint_every=10")
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "interrupted"


def test_weight_decay_applies_to_weights_not_biases():
    model = linreg()
    opt = sgd(model, wd=0.5)
    groups = {tuple(p.shape): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert groups == {(1, 2): 0.5, (1,): 0.0}


def test_l1_applies_to_weights_not_biases():
    """The L1 term λ·Σ|w| sums the weights only: its gradient moves w = [1, -2] by lr·λ·sign(w)
    toward zero and leaves the bias (100) where it is."""
    model = linreg()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0]]))
        model[0].bias.fill_(100.0)
    opt = sgd(model, lr=0.5, l1=0.25)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no data gradient: the step is the L1 term's alone
    opt.step()
    assert torch.equal(model[0].weight.detach(), torch.tensor([[0.875, -1.875]]))
    assert torch.equal(model[0].bias.detach(), torch.tensor([100.0]))


def test_l1_training_drives_the_useless_weights_to_zero(tmp_path):
    """§4.5's L1 term, set by regularizer.lambd: with 10 inputs of which only the first matters,
    lambd 0.3 leaves the other nine weights far smaller than the same run without it, and moves
    the first from 3 to the L1 optimum 3 - λ/2 (the loss is the mean squared error)."""
    data = ["dataset.w=[3,0,0,0,0,0,0,0,0,0]", "dataset.noise=0.5", "trainer.epochs=10"]
    plain, l1 = (
        run_job(tmp_path / name, *data, "optim.lr=0.02", *regularizer)["learned"]
        for name, regularizer in (
            ("plain", ["regularizer=none"]),
            ("l1", ["regularizer=l1", "regularizer.lambd=0.3"]),
        )
    )
    useless = [sum(abs(w) for w in run["w"][1:]) for run in (plain, l1)]
    assert useless[1] < 0.4 * useless[0]  # 0.06 vs 0.2
    assert abs(plain["w"][0] - l1["w"][0] - 0.3 / 2) < 0.05  # 3.04 vs 2.90
    assert abs(plain["b"] - l1["b"]) < 0.01  # the bias has no L1 term


def test_best_pt_holds_the_best_epoch(tmp_path):
    """best.pt is the epoch with the lowest validation loss, not the last one."""
    summary = run_job(tmp_path, "trainer.epochs=6", "optim.lr=0.6")  # a large step: it bounces
    history = load_checkpoint(tmp_path / "last.pt")["history"]
    best = min(history, key=lambda r: r["val_loss"])
    saved = load_checkpoint(tmp_path / "best.pt")
    assert saved["epoch"] == best["epoch"] == summary["best"]["epoch"] < 6
    assert saved["best"]["value"] == best["val_loss"]


@pytest.mark.gpu
def test_a_checkpoints_rng_state_restores_the_cuda_generator_too():
    """Dropout on a GPU draws from CUDA's generator: a resume must restore it to be bit for bit."""
    generator = torch.Generator().manual_seed(0)
    saved = rng_state(generator)
    first = torch.rand(3, device="cuda")
    torch.rand(5, device="cuda")
    set_rng_state(saved, generator)
    assert torch.equal(torch.rand(3, device="cuda"), first)
