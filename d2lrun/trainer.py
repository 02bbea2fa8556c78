"""The training loop, named as in the book: `fit` runs `train_one_epoch` and `evaluate` per epoch.

Data stays on the device, a batch a slice of a shuffled index; losses and correct counts are device
tensors read once per epoch. The loop writes no files: on_epoch (d2lrun.job) does.
"""

import contextlib
import functools
import logging
import math
import os
import random
import stat
import sys
import textwrap
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
from d2lrun.tracking import NOT_METRICS

EVAL_BATCH_SIZE = 1024  # evaluation needs no gradients, so bigger batches are only faster


@contextlib.contextmanager
def own_torch(cuda: bool = True):
    """Within: torch as a fresh process has it (float32 by default, gradients on), so a run from a
    notebook trains as the command does; after: the caller's dtype, grad mode and random state
    (cuda: the GPUs' too, which torch.manual_seed seeds, on a machine that has them; Python's, which
    rich's import draws from)."""
    dtype, python_random = torch.get_default_dtype(), random.getstate()
    devices = list(range(torch.cuda.device_count())) if cuda and torch.cuda.is_available() else []
    torch.set_default_dtype(torch.float32)
    try:
        with torch.random.fork_rng(devices), torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        torch.set_default_dtype(dtype)
        random.setstate(python_random)


# Each loss takes y_hat (B, q), or a stack's (M, B, q) (d2lrun.stack): then one loss per member.


def squared_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """§3.1: (y_hat - y)² / 2, averaged over the batch. The book sums, then divides in §3.2's
    sgd by batch_size: the same step but for a last, shorter batch, which the book scales down
    and d2lrun averages over its own rows, as §3.6's train_ch3 does (X.shape[0])."""
    return ((y_hat - y.reshape(y_hat.shape[-2:])) ** 2 / 2).mean(dim=(-2, -1))


def mse_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """§3.3's nn.MSELoss."""
    # a stack's, per member: halving and doubling are exact, so bit for bit what F.mse_loss gives
    return F.mse_loss(y_hat, y) if y_hat.ndim == 2 else 2 * squared_loss(y_hat, y)


def cross_entropy_scratch(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """§3.6's softmax + -log(y_hat[y]), written in the stable log-sum-exp form (§3.7.2)."""
    shifted = logits - logits.max(dim=-1, keepdim=True).values  # exp can no longer overflow
    log_probs = shifted - shifted.exp().sum(dim=-1, keepdim=True).log()
    return -log_probs.gather(-1, y.expand(log_probs.shape[:-1]).unsqueeze(-1)).mean(dim=(-2, -1))


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """§3.7's nn.CrossEntropyLoss."""
    if logits.ndim == 2:
        return F.cross_entropy(logits, y)
    # (M, B, q) as (B, q, M): torch's CPU log-softmax over a last dimension of 10 classes is 5x
    # slower than over the classes as dimension 1 (measured: 16 members, batch 256)
    members, batch, _ = logits.shape
    target = y.unsqueeze(1).expand(batch, members)
    return F.cross_entropy(logits.permute(1, 2, 0), target, reduction="none").mean(dim=0)


def sum_squared_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """§6.2.4: (Y_hat - Y)² summed over the batch."""
    return ((y_hat - y.reshape(y_hat.shape)) ** 2).sum()


def loss_for(task: str, kind: str) -> Callable:
    """The book's loss for d2lrun.models.loss_kind: squared (§3.2), MSE (§3.3), summed (§6.2.4)."""
    if task == "regression":
        return {"scratch": squared_loss, "concise": mse_loss, "sum": sum_squared_loss}[kind]
    return cross_entropy_scratch if kind == "scratch" else cross_entropy


@dataclass
class Trainer(schema.Trainer):
    """cfg.trainer's keys, and where the loop stands: like d2l's Trainer, it counts its epochs."""

    epoch: int = 0  # epochs completed: fit goes on with the next one
    generator: torch.Generator = field(default_factory=torch.Generator)  # the shuffling order


def rng_state(generator: torch.Generator) -> dict:
    """torch's random state (init, dropout), the shuffling order's and CUDA's, for a checkpoint."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "shuffle": generator.get_state(), "cuda": cuda}


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_one_epoch(
    model: nn.Module,
    loss: Callable,
    optimizer: Optimizer,
    data: Split,
    batch_size: int,
    generator: torch.Generator,
    on_batch: Callable[[], None] = lambda: None,
) -> dict[str, torch.Tensor]:
    """One pass over shuffled minibatches: loss sum, correct, batch losses; a stack's per member."""
    model.train()
    perm = torch.randperm(len(data), generator=generator).to(data.X.device)
    loss_sum, correct, batch_losses = 0, 0, []
    for idx in perm.split(batch_size):
        y = data.y[idx]
        y_hat = model(prepare_batch(data.X.index_select(0, idx)))  # 5x X[idx]'s speed (uint8)
        batch_loss = loss(y_hat, y)
        if batch_loss.ndim:  # a stack: a member whose loss is not finite stops training
            optimizer.live &= torch.isfinite(batch_loss.detach())
        optimizer.zero_grad()
        batch_loss.sum().backward()  # each member's parameters get their own loss's gradient
        optimizer.step()
        batch_losses.append(batch_loss.detach())
        loss_sum = loss_sum + batch_losses[-1] * len(idx)
        if not torch.is_floating_point(y):
            correct = correct + (y_hat.argmax(dim=-1) == y).sum(dim=-1)
        on_batch()
    return {"loss_sum": loss_sum, "correct": correct, "batch_losses": torch.stack(batch_losses)}


@torch.no_grad()
def evaluate(model: nn.Module, loss: Callable, data: Split, log_rmse: bool = False) -> dict:
    """Mean loss; accuracy, or RMSE (and §4.10's log RMSE) in target units; a stack's per member."""
    model.eval()
    classify, scale, n = not torch.is_floating_point(data.y), data.scale, len(data)
    if n == 0:
        return {}
    lead = (model.members,) if hasattr(model, "members") else ()  # a stack's member dimension

    def squared(t: torch.Tensor) -> torch.Tensor:  # summed, per member
        return (t**2).flatten(len(lead)).sum(-1)

    loss_sum, correct, squares, log_squares = 0, 0, 0, 0
    for X, y in zip(data.X.split(EVAL_BATCH_SIZE), data.y.split(EVAL_BATCH_SIZE), strict=True):
        y_hat = model(prepare_batch(X))
        loss_sum = loss_sum + loss(y_hat, y) * len(y)
        if classify:
            correct = correct + (y_hat.argmax(dim=-1) == y).sum(dim=-1)
            continue
        pred, true = y_hat.reshape(*lead, *y.shape), y
        if scale:
            pred, true = pred * scale["std"] + scale["mean"], true * scale["std"] + scale["mean"]
        squares = squares + squared((pred - true).double())  # 1e20 off: no inf in float32
        if log_rmse:  # §4.10: predictions below 1 are clamped to 1 so that the log is defined
            log_squares = log_squares + squared(pred.clamp(min=1).log() - true.log())
    # In float64, as Python's floats: a run alone gets the same numbers as from .item().
    metrics = {"loss": loss_sum.double() / n}
    if classify:
        metrics["acc"] = correct.double() / n
    else:
        metrics["rmse"] = (squares.double() / data.y.numel()).sqrt()
        if log_rmse:
            metrics["log_rmse"] = (log_squares.double() / data.y.numel()).sqrt()
    return {k: v.tolist() for k, v in metrics.items()}


def fit(
    model: nn.Module,
    optimizer: Optimizer,
    loss: Callable,
    train: Split,
    val: Split,
    trainer: Trainer,
    on_epoch: Callable[[dict], None],
) -> None:
    """Epochs trainer.epoch + 1 .. trainer.epochs, each row to on_epoch; Diverged on NaN.

    A stack (d2lrun.stack) gets rows of lists, one per member, "diverged" saying why a member
    stopped in this epoch (else None); it goes on until every member stopped."""
    classify = not torch.is_floating_point(train.y)
    live = getattr(optimizer, "live", None)  # a stack's members that still train
    with progress_bar(trainer.progress, math.ceil(len(train) / trainer.batch_size)) as bar:
        for epoch in range(trainer.epoch + 1, trainer.epochs + 1):
            bar.reset(0, description=f"epoch {epoch}/{trainer.epochs}")
            start = time.perf_counter()
            was = None if live is None else live.tolist()
            out = train_one_epoch(model, loss, optimizer, train, trainer.batch_size,
                                  trainer.generator, lambda: bar.advance(0))  # fmt: skip
            train_loss = (out["loss_sum"].double() / len(train)).tolist()  # the one host sync
            group = optimizer.param_groups[0]  # a stack's: lr and momentum one per member
            why = functools.partial(diverged, out["batch_losses"], trainer.batch_size, epoch, group)
            if live is None and not math.isfinite(train_loss):
                raise why()
            seconds = time.perf_counter() - start
            row = {"epoch": epoch, "train_loss": train_loss}
            if classify:
                row["train_acc"] = (out["correct"].double() / len(train)).tolist()
            else:  # the book's train_ls: the training split evaluated after the epoch (§4.10)
                after = evaluate(model, loss, train, trainer.log_rmse)
                row |= {f"train_{k}": v for k, v in after.items() if k != "loss"}
            row |= {f"val_{k}": v for k, v in evaluate(model, loss, val, trainer.log_rmse).items()}
            row |= {"seconds": round(time.perf_counter() - start, 4),
                    "examples_per_s": round(len(train) / seconds, 1)}  # fmt: skip
            if live is None and (blown := overflowed(row, epoch, group)):
                raise blown
            if live is not None:  # why each member that stops in this epoch stops
                now = live.tolist()
                stops = [(why(m) if not now[m] else overflowed(row, epoch, group, m)) if was[m]
                         else None for m in range(len(now))]  # fmt: skip
                live &= torch.tensor([s is None for s in stops], device=live.device)
                row["diverged"], now = [s and str(s) for s in stops], live.tolist()
            trainer.epoch = epoch
            on_epoch(row)
            if live is not None and not any(now):
                return


def format_row(row: dict, epochs: int) -> str:
    """One summary line per epoch: metrics, seconds and examples/s."""
    metrics = "  ".join(
        f"{k} {v:.3f}" if k.endswith("acc") else f"{k} {v:.4g}"
        for k, v in row.items()
        if k not in NOT_METRICS
    )
    speed = f"{row['seconds']:.2f}s  {row['examples_per_s']:,.0f} ex/s"
    return f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  {metrics}  {speed}"


def progress_bar(show: bool, batches: int):
    """A rich progress bar over an epoch's batches (task 0) on stderr; terminal or Jupyter only."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.progress import TimeRemainingColumn as Remaining

    console = Console(stderr=True)  # stdout keeps the epoch lines
    # Not when stdout is a pipe (`d2lrun | tee log`): the epoch lines tee shows on the terminal
    # would land on the bar's last frame, which nothing clears first (`> log`: no lines there).
    piped = False  # also where stdout has no file: a notebook's, pytest's capture
    with contextlib.suppress(OSError, ValueError, AttributeError):
        piped = stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode)
    terminal = console.is_terminal and (Console().is_terminal or not piped)
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Remaining(),
        console=console, transient=True, disable=not (show and (terminal or console.is_jupyter)),
        # Epoch lines printed while the bar runs: above it on a terminal, but into stdout itself
        # when that is a file or a pipe that rich takes as a terminal (TTY_COMPATIBLE=1).
        redirect_stdout=sys.stdout.isatty(),
    )  # fmt: skip
    bar.add_task("", total=batches)
    return bar


def diverged(batch_losses, batch_size: int, epoch: int, group: dict, member: int | None = None):
    """Where the loss stopped being finite: the first batch whose loss, or running sum, is not."""
    if member is not None:  # a stack's batch_losses (batches, members)
        batch_losses = batch_losses[:, member]
    running = torch.cumsum(batch_losses * batch_size, 0)
    first = (~torch.isfinite(running)).nonzero()
    bad = int(first[0]) if len(first) else len(running) - 1
    return Diverged(f"the training loss became {batch_losses[bad].item():.4g} at epoch {epoch}, "
                    f"batch {bad + 1}. {lower(group, member)}")  # fmt: skip


def overflowed(row: dict, epoch: int, group: dict, member: int | None = None) -> Diverged | None:
    """A loss or RMSE past float range after the epoch's last step, the batches' losses finite:
    diverged as well (its weights would be best.pt, and `inf` is no JSON)."""
    for key, value in row.items():
        value = value[member] if member is not None and isinstance(value, list) else value
        if key.startswith(("train_", "val_")) and not math.isfinite(value):
            return Diverged(f"the {key} became {value:.4g} after epoch {epoch}. "
                            f"{lower(group, member)}")  # fmt: skip
    return None


def lower(group: dict, member: int | None) -> str:
    """A divergence's Fix: optim.lr lower, or SGD's optim.momentum (a stack's group: per member)."""
    lr, momentum = group["lr"], group.get("momentum", 0)  # Adam's: none
    lr, momentum = (lr, momentum) if member is None else (lr[member], momentum[member])
    also = f" or optim.momentum (now {float(momentum):g})" if momentum else ""
    return f"Fix: lower optim.lr (now {float(lr):g}){also}."


def compiled(model: nn.Module, device: torch.device, log: Callable[[str], None]) -> nn.Module:
    """trainer.compile=true: torch.compile; eager, with a note, where it cannot apply."""
    # Its CPU build asks for CUDA_HOME and warns on stderr, beside d2lrun's own lines, without one.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        # torch.compile is lazy: a missing C++ compiler, Python.h or Triton shows only at the first
        # call, mid-epoch. A trivial function compiled on the device finds that out first.
        torch.compile(lambda x: x + 1)(torch.zeros(1, device=device))
        # On CUDA with CUDA graphs ("reduce-overhead"): they remove the launch cost of tiny models.
        return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else "default")
    except Exception as e:  # unsupported Python or platform, no working toolchain
        reason = textwrap.shorten((str(e).splitlines() or [""])[0], 120, placeholder=" ...")
        log(f"note: trainer.compile=true is not available here ({type(e).__name__}: {reason}); "
            f"training eagerly")  # fmt: skip
        return model
