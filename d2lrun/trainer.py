"""The training loop: `fit` runs `train_one_epoch` and `evaluate` once per epoch.

Data stays on the device as whole tensors; a batch is a slice of a shuffled index. Losses and
correct counts accumulate as device tensors and are read once per epoch, so no batch waits for
the host. Checkpoints, metrics rows and the progress bar are plain lines at the end of an epoch.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from d2lrun.checkpoint import save_checkpoint
from d2lrun.data import Split, prepare_batch
from d2lrun.errors import Diverged
from d2lrun.optim import Optimizer, l1_penalty
from d2lrun.tracking import Tracker

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


def loss_for(task: str, kind: str):
    """The book's loss: squared loss (scratch, §3.2), MSELoss (§3.3) or its sum (§6.2.4);
    cross-entropy.

    kind is d2lrun.models.loss_kind: "scratch", "concise" or "sum".
    """
    if task == "regression":
        return {"scratch": squared_loss, "concise": F.mse_loss, "sum": sum_squared_loss}[kind]
    return cross_entropy_scratch if kind == "scratch" else F.cross_entropy


@dataclass
class History:
    """What a checkpoint restores besides weights: completed epochs, their metrics, the best one."""

    epoch: int = 0
    rows: list[dict] = field(default_factory=list)
    best: dict | None = None


def train_one_epoch(
    model: nn.Module,
    loss_fn,
    optimizer: Optimizer,
    data: Split,
    batch_size: int,
    generator: torch.Generator,
    l1: float = 0.0,
    classify: bool = False,
    on_batch=None,
) -> dict[str, torch.Tensor]:
    """One pass over shuffled minibatches; returns device tensors (loss sum, correct, losses)."""
    model.train()
    device = data.X.device
    n = len(data)
    perm = torch.randperm(n, generator=generator).to(device)
    num_batches = math.ceil(n / batch_size)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    batch_losses = torch.empty(num_batches, device=device)
    for i in range(num_batches):
        idx = perm[i * batch_size : (i + 1) * batch_size]
        X, y = prepare_batch(data.X[idx]), data.y[idx]
        y_hat = model(X)
        loss = loss_fn(y_hat, y)
        objective = loss + l1 * l1_penalty(model) if l1 else loss
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
        loss = loss.detach()
        batch_losses[i] = loss
        loss_sum += loss * len(idx)
        if classify:
            correct += (y_hat.argmax(dim=1) == y).sum()
        if on_batch:
            on_batch()
    return {"loss_sum": loss_sum, "correct": correct, "batch_losses": batch_losses}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loss_fn,
    data: Split,
    classify: bool,
    scale: dict | None = None,
    log_rmse: bool = False,
) -> dict[str, float]:
    """Mean loss over a split, in order, in evaluation mode (dropout off); accuracy for classes, and
    for regression the RMSE (and the book's log RMSE, §4.10) in the target's own units (scale undoes
    the target's scaling)."""
    model.eval()
    device = data.X.device
    loss_sum, correct = (
        torch.zeros((), device=device),
        torch.zeros((), device=device, dtype=torch.long),
    )
    squares, log_squares = torch.zeros((), device=device), torch.zeros((), device=device)
    for start in range(0, len(data), EVAL_BATCH_SIZE):
        X, y = (
            prepare_batch(data.X[start : start + EVAL_BATCH_SIZE]),
            data.y[start : start + EVAL_BATCH_SIZE],
        )
        y_hat = model(X)
        loss_sum += loss_fn(y_hat, y) * len(y)
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
    metrics = {"loss": loss_sum.item() / len(data)}
    if classify:
        metrics["acc"] = correct.item() / len(data)
    else:
        metrics["rmse"] = math.sqrt(squares.item() / data.y.numel())
        if log_rmse:
            metrics["log_rmse"] = math.sqrt(log_squares.item() / data.y.numel())
    return metrics


def rng_state(generator: torch.Generator) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "shuffle": generator.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fit(
    model: nn.Module,
    optimizer: Optimizer,
    loss_fn,
    train: Split,
    val: Split,
    trainer,
    l1: float,
    run_dir: Path,
    generator: torch.Generator,
    history: History,
    checkpoint_extra: dict,
    log=print,
    tracker: Tracker | None = None,
) -> History:
    """Train for trainer.epochs epochs (the config's `trainer`) from history.epoch, with an L1 term
    of strength l1; checkpoint, record and print each epoch. Ctrl-C saves the last epoch.

    checkpoint_extra goes into every checkpoint; its "spec" (what the data decided) also says how
    a regression target was scaled, so that *_rmse comes out in the target's own units. tracker
    (logger=tensorboard|mlflow) gets each epoch's row.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    tracker = tracker or Tracker()
    classify = not torch.is_floating_point(train.y)  # class indices, or regression targets
    scale = checkpoint_extra["spec"].get("target_scale")
    # Higher accuracy, or lower loss, is better; without a validation split, the training metric.
    metric = ("val_" if len(val) else "train_") + ("acc" if classify else "loss")
    saved_epoch = history.epoch
    pending: dict | None = None  # the last complete epoch's checkpoint, if not yet on disk
    console = Console(stderr=True)  # the bar goes to stderr only; stdout keeps the epoch lines
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True,
        disable=not (trainer.progress and (console.is_terminal or console.is_jupyter)),
        # Epoch lines printed while the bar runs: above it on a terminal, but into stdout itself
        # when that is a file or a pipe (`d2lrun | tee log`), not into the bar's stderr.
        redirect_stdout=sys.stdout.isatty(),
    )  # fmt: skip
    task = progress.add_task("", total=math.ceil(len(train) / trainer.batch_size))
    net = compiled(model, train.X.device, log) if trainer.compile else model  # model: plain keys
    try:
        with progress:
            for epoch in range(history.epoch + 1, trainer.epochs + 1):
                progress.reset(task, description=f"epoch {epoch}/{trainer.epochs}")
                start = time.perf_counter()
                out = train_one_epoch(
                    net, loss_fn, optimizer, train, trainer.batch_size, generator, l1, classify,
                    on_batch=lambda: progress.advance(task),
                )  # fmt: skip
                train_loss = out["loss_sum"].item() / len(train)  # the one host sync of the epoch
                if not math.isfinite(train_loss):
                    raise diverged(out["batch_losses"], trainer.batch_size, epoch, optimizer)
                train_seconds = time.perf_counter() - start
                row = {"epoch": epoch, "train_loss": train_loss}
                if classify:
                    row["train_acc"] = out["correct"].item() / len(train)
                else:  # the book's train_ls: the training split evaluated after the epoch (§4.10)
                    after = evaluate(net, loss_fn, train, False, scale, trainer.log_rmse)
                    row |= {f"train_{k}": v for k, v in after.items() if k != "loss"}
                row |= {f"val_{k}": v for k, v in evaluate(
                    net, loss_fn, val, classify, scale, trainer.log_rmse).items()}  # fmt: skip
                row |= {"seconds": round(time.perf_counter() - start, 4),
                        "examples_per_s": round(len(train) / train_seconds, 1)}  # fmt: skip
                history.rows.append(row)
                history.epoch = epoch
                best = history.best["value"] if history.best else None
                improved = best is None or (row[metric] > best if classify else row[metric] < best)
                if improved:
                    history.best = {"epoch": epoch, "metric": metric, "value": row[metric]}
                pending = make_checkpoint(model, optimizer, history, generator, checkpoint_extra)
                if improved:
                    save_checkpoint(run_dir / "best.pt", pending)
                if epoch % trainer.checkpoint_every == 0 or epoch == trainer.epochs:
                    save_checkpoint(run_dir / "last.pt", pending)
                    saved_epoch, pending = epoch, None
                log(format_row(row, trainer.epochs))
                tracker.log_epoch(row)
    except KeyboardInterrupt:
        if pending is not None and history.epoch > saved_epoch:
            save_checkpoint(run_dir / "last.pt", pending)
        raise
    return history


def diverged(batch_losses: torch.Tensor, batch_size: int, epoch: int, optimizer) -> Diverged:
    """Where the loss stopped being finite: a NaN/inf batch loss, or finite ones whose float32 sum
    overflowed (the first batch where the running sum is no longer finite)."""
    running = torch.cumsum(batch_losses * batch_size, 0)
    first = (~torch.isfinite(running)).nonzero()
    bad = int(first[0]) if len(first) else len(running) - 1
    return Diverged(
        f"the training loss became {batch_losses[bad].item():.4g} at epoch {epoch}, "
        f"batch {bad + 1}. Fix: lower optim.lr (now {optimizer.param_groups[0]['lr']:g})."
    )


def compiled(model: nn.Module, device: torch.device, log=print) -> nn.Module:
    """trainer.compile=true: torch.compile the model; on CUDA with CUDA graphs ("reduce-overhead"),
    which removes the per-kernel launch cost that dominates tiny models. The last, smaller batch
    compiles once more; nothing is dropped. Falls back to eager, with one line, where it cannot
    apply."""
    import shutil

    if device.type == "cpu" and not (
        shutil.which("c++") or shutil.which("g++") or shutil.which("cc")
    ):
        log("note: trainer.compile=true needs a C++ compiler on CPU; training eagerly")
        return model
    try:
        return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else "default")
    except Exception as e:  # unsupported Python or platform
        log(
            f"note: trainer.compile=true is not available here ({type(e).__name__}: {e}); "
            f"training eagerly"
        )
        return model


def make_checkpoint(
    model: nn.Module,
    optimizer: Optimizer,
    history: History,
    generator: torch.Generator,
    extra: dict,
) -> dict:
    """A resumable snapshot at an epoch boundary; tensors are copied so training can go on."""
    return {
        "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "optimizer": _to_cpu(optimizer.state_dict()),
        "epoch": history.epoch,
        "history": [dict(r) for r in history.rows],
        "best": dict(history.best) if history.best else None,
        "rng": rng_state(generator),
        **extra,
    }


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def format_row(row: dict, epochs: int) -> str:
    """One summary line per epoch: metrics, seconds and examples/s."""
    width = len(str(epochs))
    metrics = "  ".join(
        f"{k} {v:.3f}" if k.endswith("acc") else f"{k} {v:.4g}"
        for k, v in row.items()
        if k not in ("epoch", "seconds", "examples_per_s")
    )
    speed = f"{row['seconds']:.2f}s  {row['examples_per_s']:,.0f} ex/s"
    return f"epoch {row['epoch']:>{width}}/{epochs}  {metrics}  {speed}"
