"""The job around the loop: its checkpoints (last.pt, best.pt), Ctrl-C, L1/L2, the random state."""

import json
import re

import pytest
import torch
from omegaconf import OmegaConf

import d2lrun.errors
import d2lrun.job
import d2lrun.kfold
import d2lrun.optim
import d2lrun.tracking
from d2lrun.config import compose
from d2lrun.data import Spec
from d2lrun.errors import Diverged, Interrupted, UsageError
from d2lrun.job import train_job
from d2lrun.models import build_model
from d2lrun.optim import build_optimizer
from d2lrun.reload import load_checkpoint
from d2lrun.trainer import rng_state, set_rng_state

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

    def save_torch(paths, obj):
        for path in paths if isinstance(paths, list) else [paths]:
            saved.append((path.name, obj.get("epoch")))  # model.pt: a state_dict, no epoch
        return original(paths, obj)

    monkeypatch.setattr(d2lrun.job, "save_torch", save_torch)
    run_job(tmp_path, "trainer.epochs=5", "trainer.checkpoint_every=2")
    assert [e for name, e in saved if name == "last.pt"] == [2, 4, 5]


def test_a_diverged_job_saves_no_checkpoint(tmp_path):
    with pytest.raises(Diverged, match=r"epoch 1, batch \d+\. Fix: lower optim.lr"):
        run_job(tmp_path, "optim.lr=1e6")
    assert not (tmp_path / "last.pt").exists()  # nothing saved from a diverged epoch
    assert not (tmp_path / "best.pt").exists()


def ctrl_c_at_step(monkeypatch, n: int) -> dict:
    """Ctrl-C (KeyboardInterrupt) as the optimizer takes its n-th step; the count (to reset)."""
    calls, original = {"n": 0}, d2lrun.optim.Optimizer.step

    def step(self):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(d2lrun.optim.Optimizer, "step", step)
    return calls


def test_ctrl_c_saves_the_last_complete_epoch(tmp_path, monkeypatch):
    ctrl_c_at_step(monkeypatch, 20 * 3 + 5)  # in epoch 4 (20 batches per epoch)
    with pytest.raises(Interrupted, match="interrupted after epoch 3"):
        run_job(tmp_path, "trainer.epochs=6", "trainer.checkpoint_every=10")
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize("stop", ["in its last epoch's save", "after it"])
def test_a_stop_once_the_last_epoch_is_saved_leaves_the_run_completed(tmp_path, monkeypatch, stop):
    """Every epoch trained and saved, the stop ended the run as 'interrupted after epoch 2' (of 2),
    without model.pt, as if it had more to train."""
    import signal

    from d2lrun.stopping import Stop

    on_epoch, fit = d2lrun.job.Run.on_epoch, d2lrun.job.fit

    def saved(self, row):  # SIGTERM as the epoch is saved, raised once it is
        on_epoch(self, row)
        if row["epoch"] == 2:
            raise Stop(signal.SIGTERM)

    def fitted(*args):  # SIGTERM as fit returns
        fit(*args)
        raise Stop(signal.SIGTERM)

    if stop == "after it":
        monkeypatch.setattr(d2lrun.job, "fit", fitted)
    else:
        monkeypatch.setattr(d2lrun.job.Run, "on_epoch", saved)
    with pytest.raises(Interrupted) as e:
        run_job(tmp_path, "trainer.epochs=2")
    assert e.value.exit_code == 143 and str(e.value) == (
        f"interrupted by SIGTERM as the run ended (completed); its files are all written in "
        f"{tmp_path}."
    )
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    assert (tmp_path / "model.pt").exists()


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


def test_the_k_fold_table_has_a_row_per_fold_and_their_mean():
    from d2lrun.kfold import fold_table

    finals = [{"train_loss": 0.25, "val_rmse": 0.1234567, "examples_per_s": 9.0},
              {"train_loss": 0.75, "val_rmse": 12345.0, "examples_per_s": 9.0}]  # fmt: skip
    mean = {"train_loss": 0.5, "val_rmse": 6172.56, "examples_per_s": 9.0}
    assert fold_table(finals, mean, 2).splitlines() == [
        "2-fold cross-validation:",
        "  fold      train_loss        val_rmse",
        "     1            0.25          0.1235",  # as the book and the lines 'fold 1/2' count
        "     2            0.75       1.234e+04",
        "  mean             0.5            6173",
    ]


def test_log_rmse_refuses_a_class_target_or_one_with_values_at_or_below_zero_in_its_own_units():
    from d2lrun.data import Split
    from d2lrun.errors import UsageError
    from d2lrun.job import check_log_rmse

    spec = Spec(dataset="csv", task="regression", num_inputs=1, num_outputs=1,
                target="price", target_scale={"mean": 10.0, "std": 2.0})  # fmt: skip
    x = torch.zeros(2, 1)
    fine = Split(x, torch.tensor([[-4.9], [1.0]]))  # 0.2 and 12 in the target's own units
    check_log_rmse(fine, fine, spec)
    low = Split(x, torch.tensor([[-5.5], [0.0]]))  # -1: in the validation rows only
    with pytest.raises(UsageError) as e:
        check_log_rmse(fine, low, spec)
    assert str(e.value) == (
        "trainer.log_rmse=true takes the log of the target, and price has values <= 0 "
        "(smallest -1). Fix: trainer.log_rmse=false."
    )
    unscaled = Spec(dataset="synthetic", task="regression", num_inputs=1, num_outputs=1)
    with pytest.raises(UsageError, match=r"and it has values <= 0 \(smallest -1\.5\)"):
        check_log_rmse(Split(x, torch.tensor([[-1.5], [3.0]])), Split(x, x + 1), unscaled)
    classes = Spec(dataset="csv", task="classification", num_inputs=1, num_outputs=2,
                   target="kind")  # fmt: skip
    with pytest.raises(UsageError) as e:  # it was silently not measured
        check_log_rmse(fine, fine, classes)
    assert str(e.value) == ("trainer.log_rmse=true measures a regression (§4.10), and this run "
                            "classifies kind. Fix: trainer.log_rmse=false.")  # fmt: skip


def test_a_run_on_generated_data_says_what_it_learned_against_the_truth(tmp_path):
    lines = []
    args = ["device=cpu", "trainer.progress=false"]  # the book's 1,000 examples, 3 epochs
    learned = train_job(compose(args), tmp_path, args, log=lines.append)["learned"]
    w, b = learned["w"], learned["b"]
    assert learned["w_error"] == pytest.approx([2 - w[0], -3.4 - w[1]], abs=1e-6)
    assert learned["b_error"] == pytest.approx(4.2 - b, abs=1e-6)
    assert learned["w_norm"] == pytest.approx((w[0] ** 2 + w[1] ** 2) ** 0.5, rel=1e-6)
    assert abs(w[0] - 2) < 0.1 and abs(w[1] + 3.4) < 0.1 and abs(b - 4.2) < 0.1
    errors = [round(x, 6) for x in learned["w_error"]]
    assert lines[-2:] == [
        f"error in estimating w: {errors}  (w = {[round(x, 4) for x in w]})",
        f"error in estimating b: {4.2 - b:.6f}  (b = {b:.4f})",
    ]


def test_a_model_without_bias_or_with_many_weights_says_it_in_one_line(tmp_path):
    lines = []
    args = ["experiment=ch4_weight_decay", "device=cpu", "trainer.progress=false",
            "trainer.epochs=2"]  # fmt: skip
    learned = train_job(compose(args), tmp_path / "wd", args, log=lines.append)["learned"]
    w = torch.tensor(learned["w"])
    assert len(w) == 200 and learned["w_norm"] == pytest.approx(w.norm().item(), rel=1e-6)
    assert lines[-1] == (
        f"‖w‖₂ = {w.norm().item():.4f}; error ‖w - w_true‖₂ = "
        f"{(0.01 - w).norm().item():.6f}; error in b: {0.05 - learned['b']:.6f}"
    )
    args = ["experiment=ch4_poly_third", "device=cpu", "trainer.progress=false", "trainer.epochs=2"]
    learned = train_job(compose(args), tmp_path / "poly", args, log=lines.append)["learned"]
    w = learned["w"]  # §4.4: no bias; the book prints the weights beside the true ones
    assert "b" not in learned and len(w) == 4
    assert learned["w_error"] == pytest.approx([5 - w[0], 1.2 - w[1], -3.4 - w[2], 5.6 - w[3]])
    assert lines[-1] == f"weight: {[round(x, 4) for x in w]}  (true: [5.0, 1.2, -3.4, 5.6])"


def test_resume_restores_the_history_and_the_best_epoch_so_far(tmp_path):
    run_job(tmp_path)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    args = ["device=cpu", "trainer.progress=false", "dataset.num_train=200", "trainer.epochs=5",
            f"resume={tmp_path}"]  # fmt: skip
    run = d2lrun.job.Run(compose(args), tmp_path, args, ckpt, log=lambda *_: None)
    history, model = run.history, run.model
    assert (history.rows, history.best, run.trainer.epoch) == (ckpt["history"], ckpt["best"], 3)
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())
    # Another init was taken and saved as the run's, though its weights began as the run's did
    with pytest.raises(UsageError) as e:
        d2lrun.job.Run(compose([*args, "init=xavier"]), tmp_path, [*args, "init=xavier"], ckpt)
    assert str(e.value) == (
        f"resume={tmp_path} cannot change init.name (the run has init.name=normal, asked "
        "init.name=xavier). Fix: drop init=xavier, or start a new run."
    )


def test_a_run_resumed_into_a_new_folder_has_the_best_epochs_best_pt(tmp_path, monkeypatch):
    """Its metrics.json names epoch 1 as the best: d2lrun-eval ckpt=NEW/best.pt finds it there;
    and the run it went on from by its whole path (it was resume=a as typed, here or not)."""
    run_job(tmp_path / "a", "trainer.epochs=1")
    ckpt = load_checkpoint(tmp_path / "a" / "last.pt")
    # a step too small to change a float32 weight: epoch 2 does not beat epoch 1
    args = ["device=cpu", "trainer.progress=false", "dataset.num_train=200", "trainer.epochs=2",
            "resume=a", "optim.lr=1e-30"]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    train_job(compose(args), tmp_path / "b", args, ckpt, log=lambda *_: None)
    summary = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert summary["epochs_completed"] == 2 and summary["best"]["epoch"] == 1
    assert summary["resumed_from"] == str(tmp_path / "a")
    assert (tmp_path / "b" / "best.pt").read_bytes() == (tmp_path / "a" / "best.pt").read_bytes()


def test_a_run_that_measures_log_rmse_is_judged_by_it_and_a_resumed_one_as_it_began(tmp_path):
    """§4.10's runs ranked, kept best.pt and were searched by the loss on raw prices; a run
    resumed from before that goes on judged by its val_loss, which its best epoch holds."""
    table = tmp_path / "t.csv"
    table.write_text("x,y\n" + "".join(f"{i},{2 * i + 1}\n" for i in range(60)))
    args = ["dataset=csv", f"dataset.path={table}", "dataset.target=y", "trainer.log_rmse=true",
            "trainer.progress=false"]  # fmt: skip
    train_job(compose([*args, "trainer.epochs=2"]), tmp_path / "a", args, log=lambda *_: None)
    ckpt = load_checkpoint(tmp_path / "a" / "last.pt")
    log_rmse = [row["val_log_rmse"] for row in ckpt["history"]]
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["best"] == {
        "epoch": 1 + log_rmse.index(min(log_rmse)), "metric": "val_log_rmse",
        "value": min(log_rmse)}  # fmt: skip
    # as a run saved before judged it
    ckpt["best"] = {"epoch": 2, "metric": "val_loss", "value": ckpt["history"][1]["val_loss"]}
    again = [*args, f"resume={tmp_path / 'a'}", "trainer.epochs=3"]
    train_job(compose(again), tmp_path / "b", again, ckpt, log=lambda *_: None)
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["best"]["metric"] == "val_loss"


def test_resuming_a_csv_run_whose_file_was_edited_says_so(tmp_path, capsys):
    """A table cut to half its rows was trained on, split anew, without a word."""
    table = tmp_path / "t.csv"
    table.write_text("x,y\n" + "".join(f"{i},{2 * i}\n" for i in range(60)))
    args = ["dataset=csv", f"dataset.path={table}", "dataset.target=y", "trainer.progress=false"]
    train_job(compose([*args, "trainer.epochs=1"]), tmp_path / "a", args, log=lambda *_: None)
    ckpt, again = load_checkpoint(tmp_path / "a" / "last.pt"), [*args, f"resume={tmp_path / 'a'}"]
    notes = []
    for rows, epochs in ((60, 2), (30, 3)):  # the same file written again: no note; then half
        table.write_text("x,y\n" + "".join(f"{i},{2 * i}\n" for i in range(rows)))
        capsys.readouterr()
        cfg = compose([*again, f"trainer.epochs={epochs}"])
        train_job(cfg, tmp_path / f"b{rows}", again, ckpt, log=lambda *_: None)
        notes.append(capsys.readouterr().err)
        ckpt = load_checkpoint(tmp_path / f"b{rows}" / "last.pt")
    assert notes == [
        "",
        f"note: {table} is not the file the run trained on (its SHA-1 differs): its rows are split "
        "anew, and may validate on rows it trained on\n",
    ]


def test_a_run_resumed_into_a_new_folder_and_stopped_at_once_resumes_from_there(
    tmp_path, monkeypatch
):
    """It said "Resume with: d2lrun resume=NEW", and NEW had no last.pt to resume."""
    import d2lrun.trainer

    def stopped(*args, **kwargs):  # in its first new epoch (Ctrl-C, SIGTERM)
        raise KeyboardInterrupt

    run_job(tmp_path / "a", "trainer.epochs=2")
    args = ["device=cpu", "trainer.progress=false", "dataset.num_train=200", "trainer.epochs=4"]
    again, ckpt = [*args, f"resume={tmp_path / 'a'}"], load_checkpoint(tmp_path / "a" / "last.pt")
    with monkeypatch.context() as m:
        m.setattr(d2lrun.trainer, "train_one_epoch", stopped)
        with pytest.raises(Interrupted, match=f"Resume with: d2lrun resume={tmp_path / 'b'}$"):
            train_job(compose(again), tmp_path / "b", again, ckpt, log=lambda *_: None)
    ckpt = load_checkpoint(tmp_path / "b" / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["trainer"]["epochs"] == 4  # the new run's config
    again = [*args, f"resume={tmp_path / 'b'}"]
    train_job(compose(again), tmp_path / "c", again, ckpt, log=lambda *_: None)
    run_job(tmp_path / "whole", "trainer.epochs=4")
    final, whole = (load_checkpoint(tmp_path / d / "last.pt") for d in ("c", "whole"))
    assert final["epoch"] == 4  # as if never stopped
    assert all(torch.equal(v, whole["model"][k]) for k, v in final["model"].items())


def test_resuming_a_folder_whose_best_pt_is_later_than_its_last_pt_goes_on_from_best_pt(tmp_path):
    """Killed (kill -9) after epoch 4 wrote best.pt, with trainer.checkpoint_every=3: resume=RUN
    went on from last.pt's epoch 3, and kept the lost epoch 4 as best.pt, unlike metrics.json."""
    from d2lrun.reload import resume_checkpoint

    run_job(tmp_path / "run", "trainer.epochs=4")  # every epoch improves: best.pt is epoch 4
    run_job(tmp_path / "three", "trainer.epochs=3")  # the same run's epoch 3
    (tmp_path / "run" / "last.pt").write_bytes((tmp_path / "three" / "last.pt").read_bytes())
    assert resume_checkpoint(str(tmp_path / "run"))["epoch"] == 4
    assert resume_checkpoint(str(tmp_path / "run" / "last.pt"))["epoch"] == 3  # as named


def signal_while_drawing(monkeypatch, signum):
    """curves.png's drawing sends signum to this process: it arrives while the run's files are
    being written."""
    import os
    import signal

    original = d2lrun.job.Run.end

    def end(self, *how, **kw):
        draw = self.draw
        self.draw = lambda rows, title: (os.kill(os.getpid(), signum), draw(rows, title))[1]
        return original(self, *how, **kw)

    monkeypatch.setattr(d2lrun.job.Run, "end", end)
    return signal.getsignal(signal.SIGINT)


def test_ctrl_c_while_a_completed_run_writes_its_files_waits_for_them(tmp_path, monkeypatch):
    import signal

    handler = signal_while_drawing(monkeypatch, signal.SIGINT)
    with pytest.raises(Interrupted, match=r"^interrupted as the run ended \(completed"):
        run_job(tmp_path, "trainer.epochs=2")
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "completed"
    assert {p.name for p in tmp_path.iterdir()} >= {"model.pt", "curves.png", "metrics.csv"}
    assert signal.getsignal(signal.SIGINT) is handler


def test_a_second_ctrl_c_while_an_interrupted_run_saves_is_ignored(tmp_path, monkeypatch):
    import signal

    signal_while_drawing(monkeypatch, signal.SIGINT)
    ctrl_c_at_step(monkeypatch, 20 + 5)  # in epoch 2
    with pytest.raises(Interrupted, match="interrupted after epoch 1; the last complete epoch"):
        run_job(tmp_path, "trainer.epochs=3")
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] == 1
    assert (tmp_path / "curves.png").exists()


@pytest.mark.filterwarnings("ignore:Creating legend")  # matplotlib times itself with this clock
def test_a_resumed_runs_wall_time_counts_the_epochs_before(tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 10))  # every reading 10 s after the one before
    monkeypatch.setattr(d2lrun.job.time, "perf_counter", lambda: next(clock))
    run_job(tmp_path / "a", "trainer.epochs=2")
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())["wall_seconds"]
    ckpt = load_checkpoint(tmp_path / "a" / "last.pt")
    args = ["device=cpu", "trainer.progress=false", "dataset.num_train=200", "trainer.epochs=3",
            f"resume={tmp_path / 'a'}"]  # fmt: skip
    train_job(compose(args), tmp_path / "a", args, ckpt, log=lambda *_: None)
    total = json.loads((tmp_path / "a" / "metrics.json").read_text())["wall_seconds"]
    assert ckpt["wall_seconds"] <= first < total and total - ckpt["wall_seconds"] < first


def test_a_k_fold_run_stopped_in_a_fold_goes_on_with_resume_of_the_run(tmp_path, monkeypatch):
    """Its completed folds are kept, the stopped one continues, the rest train: the folds end as
    in a run never stopped."""
    import pandas as pd

    from d2lrun import app

    args = ["device=cpu", "trainer.progress=false", "dataset.num_train=200", "dataset.folds=3",
            "trainer.epochs=3"]  # fmt: skip
    d2lrun.kfold.train(compose(args), tmp_path / "whole", args, log=lambda *_: None)
    original = d2lrun.optim.Optimizer.step
    ctrl_c_at_step(monkeypatch, 3 * 14 + 14 + 5)  # in fold 2's second epoch (14 batches of 10)
    with pytest.raises(Interrupted) as e:
        d2lrun.kfold.train(compose(args), tmp_path / "run", args, log=lambda *_: None)
    assert str(e.value) == (
        "fold 2/3: interrupted after epoch 1; the last complete epoch is saved. "
        f"Resume with: d2lrun resume={tmp_path / 'run'}"
    )
    # The run's own record says so: a sweep's table showed the job 'unfinished', as if running
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == {
        "status": "interrupted", "reason": "fold 2/3: stopped by Ctrl-C after epoch 1",
        "signal": "SIGINT"}  # fmt: skip
    monkeypatch.setattr(d2lrun.optim.Optimizer, "step", original)
    record = (tmp_path / "run" / "metrics.json").read_bytes()
    build_data = d2lrun.job.build_data

    def moved(dataset, seed, device="cpu", fold=None, saved=None):  # gone by the stopped fold
        if fold == [3, 1]:
            raise UsageError("data.csv: no such file. Fix: dataset.path=<where it is now>.")
        return build_data(dataset, seed, device, fold, saved)

    monkeypatch.setattr(d2lrun.job, "build_data", moved)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError):  # refused: the record stays (it said failed, 'no such file')
        app.train([f"resume={tmp_path / 'run'}"])
    assert (tmp_path / "run" / "metrics.json").read_bytes() == record
    monkeypatch.setattr(d2lrun.job, "build_data", build_data)
    app.train([f"resume={tmp_path / 'run'}"])
    record = (tmp_path / "run" / "metrics.json").read_bytes()
    with pytest.raises(UsageError, match=r": its 3 folds completed 3 epochs each\. Fix: resume="):
        app.train([f"resume={tmp_path / 'run'}"])  # it went on as a no-op, its wall time rewritten
    assert (tmp_path / "run" / "metrics.json").read_bytes() == record
    for i in range(3):
        a, b = (pd.read_csv(tmp_path / r / f"fold_{i}" / "metrics.csv") for r in ("run", "whole"))
        timings = ["seconds", "examples_per_s"]
        pd.testing.assert_frame_equal(a.drop(columns=timings), b.drop(columns=timings))
    means = [json.loads((tmp_path / r / "metrics.json").read_text())["kfold"]["mean"]
             for r in ("run", "whole")]  # fmt: skip
    run, whole = ({k: v for k, v in m.items() if k not in timings} for m in means)
    assert run == whole and "val_loss" in run


def test_a_k_fold_run_stopped_as_a_fold_starts_says_how_to_go_on(tmp_path):
    """A stop signal as 'fold 2/3' printed said "interrupted before anything was saved." with no
    Resume line, though fold 1 was complete (and resume=RUN kept it)."""
    args = ["device=cpu", "trainer.progress=false", "dataset.num_train=60", "dataset.folds=3",
            "trainer.epochs=1"]  # fmt: skip

    def log(line: str) -> None:
        if line == "fold 2/3":
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as e:
        d2lrun.kfold.train(compose(args), tmp_path / "run", args, log=log)
    assert str(e.value) == (
        "fold 2/3: interrupted before its first epoch. "
        f"Resume with: d2lrun resume={tmp_path / 'run'}"
    )
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["fold_0", "metrics.json"]


def test_a_resumed_k_fold_run_whose_later_folds_cannot_load_is_refused_before_any_fold(
    tmp_path, monkeypatch
):
    """resume= of a §4.10 run from a folder without the test file (which folds not yet trained
    fit their statistics with) trained the stopped fold to its end, then failed at the next."""
    from d2lrun import app

    args = ["device=cpu", "trainer.progress=false", "dataset.num_train=200", "dataset.folds=3",
            "trainer.epochs=2", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    original = d2lrun.optim.Optimizer.step
    ctrl_c_at_step(monkeypatch, 2 * 14 + 14 + 5)  # in fold 2's second epoch (14 batches of 10)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Interrupted, match="^fold 2/3: interrupted after epoch 1"):
        app.train(args)
    monkeypatch.setattr(d2lrun.optim.Optimizer, "step", original)
    build_data, stopped = d2lrun.job.build_data, tmp_path / "run" / "fold_1" / "last.pt"
    before = stopped.read_bytes()

    def moved(dataset, seed, device="cpu", fold=None, saved=None):
        if fold == [3, 2]:  # fits its statistics anew, with a file that is gone
            raise UsageError("test.csv is not in there. Fix: place the file there.")
        return build_data(dataset, seed, device, fold, saved)

    monkeypatch.setattr(d2lrun.job, "build_data", moved)
    monkeypatch.setattr(d2lrun.kfold, "build_data", moved)  # its check before the folds
    with pytest.raises(UsageError, match="^test.csv is not in there"):
        app.train([f"resume={tmp_path / 'run'}"])
    assert stopped.read_bytes() == before  # fold 2 did not go on, to fail after it
    assert not (tmp_path / "run" / "fold_2").exists()


@pytest.mark.filterwarnings("ignore:Creating legend")  # matplotlib times itself with this clock
def test_a_resumed_k_fold_runs_wall_time_restarts_and_device_are_its_folds(tmp_path, monkeypatch):
    """RUN/metrics.json, which a sweep's table reads, had only the last attempt's wall time, and
    no restarts or device, where the README promises every attempt's."""
    from d2lrun import app

    clock = iter(range(0, 100_000, 10))  # every reading 10 s after the one before
    monkeypatch.setattr(d2lrun.job.time, "perf_counter", lambda: next(clock))
    args = ["device=cpu", "trainer.progress=false", "dataset.num_train=200", "dataset.folds=3",
            "trainer.epochs=3"]  # fmt: skip
    on_epoch = d2lrun.job.Run.on_epoch

    def stopped(self, row):
        on_epoch(self, row)
        if self.run_dir.name == "fold_1" and self.trainer.epoch == 2:
            raise KeyboardInterrupt  # SIGTERM, after the epoch is saved

    with monkeypatch.context() as m:
        m.setattr(d2lrun.job.Run, "on_epoch", stopped)
        with pytest.raises(Interrupted, match="fold 2/3: interrupted after epoch 2"):
            d2lrun.kfold.train(compose(args), tmp_path / "run", args, log=lambda *_: None)
    monkeypatch.chdir(tmp_path)
    app.train([f"resume={tmp_path / 'run'}"])
    run = json.loads((tmp_path / "run" / "metrics.json").read_text())
    folds = [json.loads((tmp_path / "run" / f"fold_{i}" / "metrics.json").read_text())
             for i in range(3)]  # fmt: skip
    assert run["wall_seconds"] == sum(f["wall_seconds"] for f in folds)  # all attempts'
    assert [f["restarts"] for f in folds] == [0, 1, 0] and run["restarts"] == 1
    assert run["device"] == "cpu"


class Killed(BaseException):
    """kill -9 or the OOM killer: the process ends where it is, writing nothing more."""


@pytest.mark.parametrize(
    "fold, epoch, every",
    [(2, 2, 100), (1, 3, 2), (0, 2, 100)],
    ids=["fold 3 before its first last.pt", "fold 2 after last.pt", "fold 1 without last.pt"],
)
def test_a_k_fold_run_killed_between_checkpoints_resumes_from_its_later_best_pt(
    tmp_path, monkeypatch, capsys, fold, epoch, every
):
    """The README's "resumes from the later of last.pt and best.pt" held for one run only: a k-fold
    run retrained the killed fold from epoch 1, or went on from its earlier last.pt, or (killed in
    fold 1) was refused as "a k-fold run: ... Fix: give one fold"."""
    import pandas as pd

    from d2lrun import app

    args = ["device=cpu", "trainer.progress=false", "dataset.num_train=200", "dataset.folds=3",
            "trainer.epochs=4", f"trainer.checkpoint_every={every}"]  # fmt: skip
    d2lrun.kfold.train(compose(args), tmp_path / "whole", args, log=lambda *_: None)
    on_epoch = d2lrun.job.Run.on_epoch

    def killed(self, row):
        on_epoch(self, row)
        if self.run_dir.name == f"fold_{fold}" and self.trainer.epoch == epoch:
            raise Killed

    monkeypatch.setattr(d2lrun.job.Run, "on_epoch", killed)
    with pytest.raises(Killed):
        d2lrun.kfold.train(compose(args), tmp_path / "run", args, log=lambda *_: None)
    monkeypatch.undo()
    stopped = tmp_path / "run" / f"fold_{fold}"
    assert load_checkpoint(stopped / "best.pt")["epoch"] == epoch  # every epoch improved
    last = load_checkpoint(stopped / "last.pt") if (stopped / "last.pt").exists() else {"epoch": 0}
    assert last["epoch"] < epoch
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    app.train([f"resume={tmp_path / 'run'}"])
    assert f"resuming run/fold_{fold} from epoch {epoch}" in capsys.readouterr().out
    for i in range(3):
        a, b = (pd.read_csv(tmp_path / r / f"fold_{i}" / "metrics.csv") for r in ("run", "whole"))
        timings = ["seconds", "examples_per_s"]
        pd.testing.assert_frame_equal(a.drop(columns=timings), b.drop(columns=timings))


def test_ctrl_c_while_a_later_fold_loads_its_data_says_how_to_go_on(tmp_path, monkeypatch):
    args = ["device=cpu", "trainer.progress=false", "dataset.num_train=200", "dataset.folds=3"]
    original, calls = d2lrun.job.build_data, {"n": 0}

    def build_data(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # fold 2's (the first: folds checked against rows, before fold 1)
            raise KeyboardInterrupt
        return original(*a, **kw)

    monkeypatch.setattr(d2lrun.job, "build_data", build_data)
    monkeypatch.setattr(d2lrun.kfold, "build_data", build_data)  # its check before the folds
    with pytest.raises(Interrupted) as e:
        d2lrun.kfold.train(compose(args), tmp_path, args, log=lambda *_: None)
    assert str(e.value) == (
        f"fold 2/3: interrupted before its first epoch. Resume with: d2lrun resume={tmp_path}"
    )
    assert not (tmp_path / "fold_1").exists()  # it was left empty


def test_a_signal_while_the_tracker_finishes_leaves_the_run_completed(tmp_path, monkeypatch):
    from d2lrun.tracking import Tracker

    def finish(self, *_):
        raise KeyboardInterrupt

    monkeypatch.setattr(Tracker, "finish", finish)
    with pytest.raises(Interrupted, match=r"^interrupted as the run ended \(completed"):
        run_job(tmp_path, "trainer.epochs=1")
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "completed"


def test_a_run_that_goes_on_keeps_its_preset_and_optimizer(tmp_path):
    """Trained before presets refused another optimizer without optim.lr: resumed as it was."""
    args = ["device=cpu", "trainer.progress=false", "experiment=ch3_linreg_concise",
            "optim=adam", "trainer.epochs=1"]  # fmt: skip
    with pytest.raises(d2lrun.errors.UsageError, match="^experiment=ch3_linreg_concise sets"):
        d2lrun.kfold.train(compose(args), tmp_path / "new", args, log=lambda *_: None)
    train_job(compose(args), tmp_path / "old", args, log=lambda *_: None)  # as before the check
    again = [*args[:-1], "trainer.epochs=2", f"resume={tmp_path / 'old'}"]
    ckpt = load_checkpoint(tmp_path / "old" / "last.pt")
    assert d2lrun.kfold.train(compose(again), tmp_path / "old", again, ckpt, log=lambda *_: None)[
        "epochs_completed"] == 2  # fmt: skip


def test_ignored_signals_stay_ignored(monkeypatch):
    import signal

    from d2lrun.stopping import signals

    assert signal.SIGINT in signals()
    monkeypatch.setattr(
        signal, "getsignal", lambda n: signal.SIG_IGN if n == signal.SIGINT else None
    )
    assert signal.SIGINT not in signals() and signal.SIGTERM in signals()


def test_a_k_fold_run_refused_for_its_data_leaves_no_fold_folder_and_no_fold_line(tmp_path):
    """It printed 'fold 1/5' before refusing the run's 5 folds."""
    (tmp_path / "t.csv").write_text("x,y\n1,2\n2,3\n3,4\n")
    args = ["device=cpu", "trainer.progress=false", "dataset=csv", "dataset.target=y",
            f"dataset.path={tmp_path / 't.csv'}", "dataset.folds=5"]  # fmt: skip
    lines = []
    with pytest.raises(d2lrun.errors.UsageError) as e:
        d2lrun.kfold.train(compose(args), tmp_path / "run", args, log=lines.append)
    assert str(e.value) == "dataset.folds=5 is more folds than the 3 rows. Fix: dataset.folds=3."
    assert lines == [] and not (tmp_path / "run").exists()  # nor a fold_0 in it


def test_a_signal_as_an_epochs_checkpoint_is_written_leaves_the_record_at_that_epoch(
    tmp_path, monkeypatch
):
    """SIGTERM between last.pt's rename and the history's update: last.pt held epoch 2 while
    metrics.json, metrics.csv and the message said epoch 1 ('nothing to resume' in epoch 1)."""
    import os
    import signal

    save = d2lrun.job.save_torch

    def save_then_signal(paths, obj):
        save(paths, obj)
        if obj["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    logged = []  # what a tracker (TensorBoard, MLflow) was given: epoch 2 was missing there
    monkeypatch.setattr(d2lrun.job, "save_torch", save_then_signal)
    monkeypatch.setattr(d2lrun.tracking.Tracker, "log_epoch", lambda _, row: logged.append(row))
    with pytest.raises(Interrupted, match="interrupted after epoch 2; the last complete epoch"):
        run_job(tmp_path, "trainer.epochs=4")
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["epochs_completed"] == load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    assert [row["epoch"] for row in logged] == [1, 2]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 1 + 2


def test_a_signal_as_the_tracker_logs_an_epoch_waits_until_it_has_logged_it(tmp_path, monkeypatch):
    """SIGTERM while MLflow (SQLite) logged epoch 3: metrics.csv had it, MLflow not (or its write
    broke off with 'database is locked' and a traceback)."""
    import os
    import signal

    logged = []

    def log_epoch(_, row):
        logged.append((row["epoch"], "loss"))
        if row["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        logged.append((row["epoch"], "accuracy"))

    monkeypatch.setattr(d2lrun.tracking.Tracker, "log_epoch", log_epoch)
    with pytest.raises(Interrupted, match="interrupted after epoch 2; the last complete epoch"):
        run_job(tmp_path, "trainer.epochs=4")
    assert logged == [(1, "loss"), (1, "accuracy"), (2, "loss"), (2, "accuracy")]


@pytest.mark.parametrize("extra", [[], ["logger=tensorboard"], ["dataset.folds=2"]])
def test_a_run_stopped_in_its_first_epoch_leaves_no_folder_and_the_command_runs_again(
    tmp_path, monkeypatch, extra
):
    """It left RUN/metrics.json alone: the same command was then refused ('already holds a run
    (metrics.json)'), and its Fix resume=RUN said 'has no last.pt'. So did a tensorboard/ folder
    that no epoch wrote to, and a k-fold run's fold_0/ stopped in its first epoch."""
    if extra == ["logger=tensorboard"]:
        pytest.importorskip("torch.utils.tensorboard")
    from d2lrun import app

    calls = ctrl_c_at_step(monkeypatch, 5)  # in epoch 1
    for named in ([f"hydra.run.dir={tmp_path / 'run'}"], []):
        monkeypatch.chdir(tmp_path)
        calls["n"] = 0
        with pytest.raises(Interrupted, match="before any epoch finished; nothing to resume"):
            app.train(["trainer.progress=false", *extra, *named])
        assert not (tmp_path / "run").exists() and not list(tmp_path.glob("outputs/*"))
    app.train(
        ["trainer.progress=false", "trainer.epochs=1", *extra, f"hydra.run.dir={tmp_path / 'run'}"]
    )
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("folds", [[], ["dataset.folds=3", "dataset.num_train=200"]])
def test_a_named_folder_of_a_run_that_diverged_in_its_first_epoch_takes_the_command_again(
    tmp_path, monkeypatch, folds
):
    """d2lrun optim.lr=10 hydra.run.dir=R diverges in epoch 1; its Fix, lower optim.lr, into R was
    refused ('already holds a run (metrics.json)'), whose Fix resume=R said 'has no last.pt'; and
    so was a k-fold run's, whose first fold diverged."""
    from d2lrun import app

    monkeypatch.chdir(tmp_path)
    named = ["trainer.progress=false", f"hydra.run.dir={tmp_path / 'run'}", *folds]
    with pytest.raises(Diverged, match="at epoch 1, batch"):
        app.train(["optim.lr=1000", *named])
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())  # kept, as it says why
    assert record["status"] == "diverged" and record.get("epochs_completed", 0) == 0
    # resume=R said 'Fix: give a run folder that finished an epoch' (a k-fold run's: 'give one
    # fold, e.g. R/fold_0', which then said that): the Fix is the divergence's
    with pytest.raises(UsageError) as e:
        app.train([f"resume={tmp_path / 'run'}"])
    fold = "fold 1/3: diverged: " if folds else ""
    said = (f"{tmp_path / 'run'} has no last.pt: it diverged in its first epoch ({fold}the "
            f"training loss became inf at epoch 1, batch N). Fix: lower optim.lr (now 1000), and "
            f"train it anew.")  # fmt: skip
    assert re.sub(r"batch \d+", "batch N", str(e.value)) == said
    app.train(["optim.lr=0.03", "trainer.epochs=1", *named])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"
    with pytest.raises(UsageError, match="already holds a run"):  # a run that trained: never
        app.train(["optim.lr=0.03", "trainer.epochs=1", *named])


def test_a_record_of_a_run_stopped_in_its_first_epoch_says_so(tmp_path, monkeypatch):
    """A sweep's job keeps it: d2lrun-report said 'stopped by Ctrl-C after epoch 0'."""

    def step(self):
        raise KeyboardInterrupt  # Ctrl-C in the first epoch

    monkeypatch.setattr(d2lrun.optim.Optimizer, "step", step)
    args = ["device=cpu", "trainer.progress=false"]
    with pytest.raises(Interrupted, match="before any epoch finished"):
        d2lrun.kfold.train(compose(args), tmp_path, args, log=lambda *_: None)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["reason"] == "stopped by Ctrl-C before any epoch finished"


def test_a_k_fold_runs_record_counts_its_folds_as_its_lines_do(tmp_path):
    """Its lines said 'fold 1/3', its table and metrics.json 'fold 0' for the same fold."""
    args = ["device=cpu", "trainer.progress=false", "dataset.folds=3", "optim.lr=1e6"]
    with pytest.raises(Diverged) as e:
        d2lrun.kfold.train(compose(args), tmp_path, args, log=lambda *_: None)
    reason = json.loads((tmp_path / "metrics.json").read_text())["reason"]
    assert reason.startswith("fold 1/3: diverged: the training loss became")
    assert str(e.value) == reason  # its line too, which said only 'diverged: ...'
