"""The training loop, named as in the book: `fit` runs `train_one_epoch` and `evaluate` per epoch.

Data stays on the device as whole tensors, a batch a slice of a shuffled index; losses and correct
counts are device tensors read once per epoch. The loop writes no files: on_epoch (d2lrun.job) does.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from d2lrun.config import schema
from d2lrun.data import Split, prepare_batch
from d2lrun.errors import Diverged
from d2lrun.optim import Optimizer

EVAL_BATCH_SIZE = 1024  # evaluation needs no gradients, so bigger batches are only faster


def squared_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """§3.1: (y_hat - y)² / 2, averaged over the batch (the book sums, then divides in sgd)."""
    return ((y_hat - y.reshape(y_hat.shape)) ** 2 / 2).mean()


def cross_entropy_scratch(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """§3.6's softmax + -log(y_hat[y]), written in the stable log-sum-exp form (§3.7.2)."""
    shifted = logits - logits.max(dim=1, keepdim=True).values  # (B, q); exp can no longer overflow
    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    return -log_probs[torch.arange(len(y), device=y.device), y].mean()


def sum_squared_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """§6.2.4: (Y_hat - Y)² summed over the batch."""
    return ((y_hat - y.reshape(y_hat.shape)) ** 2).sum()


def loss_for(task: str, kind: str) -> Callable:
    """The book's loss for d2lrun.models.loss_kind: squared (§3.2), MSE (§3.3), summed (§6.2.4)."""
    if task == "regression":
        return {"scratch": squared_loss, "concise": F.mse_loss, "sum": sum_squared_loss}[kind]
    return cross_entropy_scratch if kind == "scratch" else F.cross_entropy


@dataclass
class Trainer(schema.Trainer):
    """cfg.trainer's keys, and where the loop stands: like d2l's Trainer, it counts its epochs."""

    epoch: int = 0  # epochs completed: fit goes on with the next one
    generator: torch.Generator = field(default_factory=torch.Generator)  # the shuffling order


def train_one_epoch(
    model: nn.Module,
    loss: Callable,
    optimizer: Optimizer,
    data: Split,
    batch_size: int,
    generator: torch.Generator,
    on_batch: Callable[[], None] = lambda: None,
) -> dict[str, torch.Tensor]:
    """One pass over shuffled minibatches: device tensors of loss sum, correct, batch losses."""
    model.train()
    device, n = data.X.device, len(data)
    perm = torch.randperm(n, generator=generator).to(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    batch_losses = torch.empty(math.ceil(n / batch_size), device=device)
    for i in range(len(batch_losses)):
        idx = perm[i * batch_size : (i + 1) * batch_size]
        X, y = prepare_batch(data.X[idx]), data.y[idx]
        y_hat = model(X)
        batch_loss = loss(y_hat, y)
        optimizer.zero_grad()
        batch_loss.backward()
        optimizer.step()
        batch_loss = batch_loss.detach()
        batch_losses[i] = batch_loss
        loss_sum += batch_loss * len(idx)
        if not torch.is_floating_point(y):
            correct += (y_hat.argmax(dim=1) == y).sum()
        on_batch()
    return {"loss_sum": loss_sum, "correct": correct, "batch_losses": batch_losses}


@torch.no_grad()
def evaluate(model: nn.Module, loss: Callable, data: Split, log_rmse: bool = False) -> dict:
    """Mean loss in eval mode; accuracy, or RMSE (and §4.10's log RMSE) in the target's units."""
    model.eval()
    device, classify, scale = data.X.device, not torch.is_floating_point(data.y), data.scale
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device).long()
    squares, log_squares = torch.zeros((), device=device), torch.zeros((), device=device)
    for start in range(0, len(data), EVAL_BATCH_SIZE):
        X = prepare_batch(data.X[start : start + EVAL_BATCH_SIZE])
        y = data.y[start : start + EVAL_BATCH_SIZE]
        y_hat = model(X)
        loss_sum += loss(y_hat, y) * len(y)
        if classify:
            correct += (y_hat.argmax(dim=1) == y).sum()
            continue
        pred, true = y_hat.reshape(y.shape), y
        if scale:
            pred, true = pred * scale["std"] + scale["mean"], true * scale["std"] + scale["mean"]
        squares += ((pred - true) ** 2).sum()
        if log_rmse:  # §4.10: predictions below 1 are clamped to 1 so that the log is defined
            log_squares += ((pred.clamp(min=1).log() - true.log()) ** 2).sum()
    if len(data) == 0:
        return {}
    if classify:
        return {"loss": loss_sum.item() / len(data), "acc": correct.item() / len(data)}
    metrics = {
        "loss": loss_sum.item() / len(data),
        "rmse": math.sqrt(squares.item() / data.y.numel()),
    }
    if log_rmse:
        metrics["log_rmse"] = math.sqrt(log_squares.item() / data.y.numel())
    return metrics


def fit(
    model: nn.Module,
    optimizer: Optimizer,
    loss: Callable,
    train: Split,
    val: Split,
    trainer: Trainer,
    on_epoch: Callable[[dict], None],
) -> None:
    """Epochs trainer.epoch + 1 .. trainer.epochs, each row to on_epoch; Diverged on NaN."""
    classify = not torch.is_floating_point(train.y)
    bar = progress_bar(trainer.progress, math.ceil(len(train) / trainer.batch_size))
    with bar:
        for epoch in range(trainer.epoch + 1, trainer.epochs + 1):
            bar.reset(0, description=f"epoch {epoch}/{trainer.epochs}")
            start = time.perf_counter()
            out = train_one_epoch(model, loss, optimizer, train, trainer.batch_size,
                                  trainer.generator, lambda: bar.advance(0))  # fmt: skip
            train_loss = out["loss_sum"].item() / len(train)  # the one host sync of the epoch
            if not math.isfinite(train_loss):
                raise diverged(out["batch_losses"], trainer.batch_size, epoch, optimizer)
            seconds = time.perf_counter() - start
            row = {"epoch": epoch, "train_loss": train_loss}
            if classify:
                row["train_acc"] = out["correct"].item() / len(train)
            else:  # the book's train_ls: the training split evaluated after the epoch (§4.10)
                after = evaluate(model, loss, train, trainer.log_rmse)
                row |= {f"train_{k}": v for k, v in after.items() if k != "loss"}
            row |= {f"val_{k}": v for k, v in evaluate(model, loss, val, trainer.log_rmse).items()}
            row |= {"seconds": round(time.perf_counter() - start, 4),
                    "examples_per_s": round(len(train) / seconds, 1)}  # fmt: skip
            trainer.epoch = epoch
            on_epoch(row)


def progress_bar(show: bool, batches: int):
    """A rich progress bar over an epoch's batches (task 0) on stderr; terminal or Jupyter only."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.progress import TimeRemainingColumn as Remaining

    console = Console(stderr=True)  # stdout keeps the epoch lines
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Remaining(),
        console=console, transient=True,
        disable=not (show and (console.is_terminal or console.is_jupyter)),
        # Epoch lines printed while the bar runs: above it on a terminal, but into stdout itself
        # when that is a file or a pipe (`d2lrun | tee log`), not into the bar's stderr.
        redirect_stdout=sys.stdout.isatty(),
    )  # fmt: skip
    bar.add_task("", total=batches)
    return bar


def diverged(batch_losses: torch.Tensor, batch_size: int, epoch: int, optimizer) -> Diverged:
    """Where the loss stopped being finite: the first batch whose loss, or running sum, is not."""
    running = torch.cumsum(batch_losses * batch_size, 0)
    first = (~torch.isfinite(running)).nonzero()
    bad = int(first[0]) if len(first) else len(running) - 1
    return Diverged(
        f"the training loss became {batch_losses[bad].item():.4g} at epoch {epoch}, "
        f"batch {bad + 1}. Fix: lower optim.lr (now {optimizer.param_groups[0]['lr']:g})."
    )


def compiled(model: nn.Module, device: torch.device, log: Callable[[str], None]) -> nn.Module:
    """trainer.compile=true: torch.compile; eager, with a note, where it cannot apply."""
    # On CUDA with CUDA graphs ("reduce-overhead"): they remove the launch cost of tiny models.
    import shutil

    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("c++", "g++", "cc")):
        log("note: trainer.compile=true needs a C++ compiler on CPU; training eagerly")
        return model
    try:
        return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else "default")
    except Exception as e:  # unsupported Python or platform
        log(f"note: trainer.compile=true is not available here ({type(e).__name__}: {e}); "
            f"training eagerly")  # fmt: skip
        return model
