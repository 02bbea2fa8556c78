"""Checkpoints: plain dicts of tensors and containers, saved atomically, loaded weights_only.

A checkpoint (`last.pt`, `best.pt`) holds everything needed to resume or reload a run:
    model      the state_dict                  optimizer  its state_dict
    epoch      last completed epoch            history    metrics rows so far
    best       {"epoch", "metric", "value"}    rng        torch, cuda and shuffling generator states
    config     the run's config as a dict      overrides  its command line, paths made absolute
    spec       what the data decided (classes, statistics)
    mlflow_run_id  logger=mlflow's run (None otherwise), which `d2lrun resume=` continues
`model.pt` is only the final state_dict, loadable into the book's own nn.Sequential.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import torch

from d2lrun.errors import UsageError
from d2lrun.files import atomic_write, shown

FORMAT = "d2lrun-checkpoint"
RETRAIN = "Fix: use another checkpoint of the run (last.pt, best.pt) or train again."


def save_torch(path: str | Path, obj) -> Path:
    """torch.save to memory, then write atomically: a failed write leaves the old file intact."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write(path, buf.getvalue())


def save_checkpoint(path: str | Path, ckpt: dict) -> Path:
    return save_torch(path, {"format": FORMAT, **ckpt})


def load_checkpoint(path: str | Path) -> dict:
    """Load a file of save_checkpoint (or a bare state_dict) without running any pickled code."""
    path = Path(path)
    if not path.exists():
        raise UsageError(
            f"{path}: no such checkpoint. Fix: give a run folder or a .pt file that exists."
        )
    if path.is_dir():
        raise UsageError(
            f"{path} is a directory. Fix: give a .pt file, or pass the folder as run=."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names the refused function as "GLOBAL module.name" ("Trying to load unsupported
        # GLOBAL posix.system ..." or "Unsupported global: GLOBAL x.y was not an allowed ...").
        culprit = re.search(r"GLOBAL (\S+)", str(e))
        if culprit:
            raise UsageError(
                f"{path} was refused: it would run code when loaded, which a checkpoint "
                f"never needs ({culprit[1]}). Fix: only load checkpoints that d2lrun wrote."
            ) from None
        raise UsageError(
            f"{path} is truncated or not a checkpoint (unpickling failed). {RETRAIN}"
        ) from None
    except Exception as e:  # torch raises many kinds for a damaged zip or pickle stream
        first = (str(e).splitlines() or [""])[0][:120]
        raise UsageError(
            f"{path} is truncated or not a checkpoint ({type(e).__name__}"
            f"{': ' + first if first else ''}). {RETRAIN}"
        ) from None
    if not isinstance(obj, dict):
        raise UsageError(
            f"{path} holds a {type(obj).__name__}, not a checkpoint dict. "
            f"Fix: give a .pt file d2lrun wrote."
        )
    return obj


def load_full_checkpoint(path: Path, what: str) -> dict:
    """A checkpoint with its config (last.pt, best.pt), not a bare state_dict (model.pt)."""
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != FORMAT:
        raise UsageError(
            f"{path} is a bare state_dict without its config; {what} needs last.pt or "
            f"best.pt. Fix: give the run folder {shown(path.parent)} (its last.pt)."
        )
    return ckpt


def find_checkpoint(run: str | Path, name: str = "last.pt") -> Path:
    """The checkpoint file for `run`, which is a run folder or a .pt file."""
    run = Path(run)
    if run.is_dir():
        path = run / name
        if not path.exists():
            have = sorted(p.name for p in run.glob("*.pt"))
            raise UsageError(
                f"{run} has no {name} (it has: {', '.join(have) or 'no .pt files'}). "
                f"Fix: give a run folder that finished an epoch, or ckpt=PATH."
            )
        return path
    if not run.exists():
        raise UsageError(
            f"{run}: no such run folder or checkpoint. Fix: give a path under outputs/."
        )
    return run


def load_state_dict_strict(model: torch.nn.Module, state: dict, source: str) -> None:
    """load_state_dict(strict=True), with one readable line when the architectures differ."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and hasattr(state[k], "shape") and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"missing keys {missing[:6]}" if missing else "",
            f"unexpected keys {unexpected[:6]}" if unexpected else "",
            f"shape mismatches {shapes[:4]}" if shapes else "",
        ]
        raise UsageError(
            f"{source} was saved from another architecture: "
            f"{'; '.join(p for p in parts if p)}. Fix: rebuild the model with the run's "
            f"own config (d2lrun-eval run=DIR does)."
        )
    model.load_state_dict(state)
