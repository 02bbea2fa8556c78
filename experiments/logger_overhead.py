"""Logging never slows an epoch: LeNet (§6.6) epochs on Fashion-MNIST with logger=tensorboard and
logger=mlflow (a SQLite store) against logger=none, measured in one run (issue 13; target: within
5%).

    python experiments/logger_overhead.py [--epochs 3] [--repeat 3] [--root DIR] [--out FILE]

Without --out it rewrites experiments/logger-overhead-cpu.json, the file the README cites.

Each run is d2lrun's train_job as `d2lrun model=lenet logger=... device=cpu` composes it. An epoch
is timed from one epoch line to the next, so it includes the checkpoints and the logger's work at
the end of the epoch before; the first epoch (warm-up) is left out. The runs alternate (none,
tensorboard, mlflow, none, ...) so that a busy moment of the machine hits all alike. Reported: the
median epoch of each and its ratio to logger=none's (the target), and the same for the fastest
epoch, which a machine shared with other work disturbs least.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import torch
from benchmark import find_root  # experiments/benchmark.py: a temporary copy of the real files


def epoch_seconds(root: Path, logger: str, epochs: int) -> tuple[list[float], float]:
    """Seconds of each epoch after the first, and of the whole job, for one LeNet run."""
    from d2lrun.config import compose
    from d2lrun.job import train_job

    out = Path(tempfile.mkdtemp(prefix="d2lrun-overhead-"))
    overrides = [
        "model=lenet",
        f"logger={logger}",
        *([f"logger.tracking_uri=sqlite:///{out}/mlflow.db"] if logger == "mlflow" else []),
        f"trainer.epochs={epochs}",
        "device=cpu",
        f"dataset.root={root}",
        "dataset.download=false",
        "trainer.progress=false",
    ]
    lines: list[tuple[float, str]] = []  # (when, line): the header, then one line per epoch
    start = time.perf_counter()
    log = lambda s: lines.append((time.perf_counter(), s))  # noqa: E731
    train_job(compose(overrides), out / "run", overrides, log=log)
    wall = time.perf_counter() - start
    shutil.rmtree(out)
    ends = [t for t, line in lines if line.startswith("epoch ")]
    return [b - a for a, b in pairwise(ends)], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each logger, alternating")
    parser.add_argument("--root", default=None, help="folder holding FashionMNIST/raw")
    parser.add_argument("--out", default=Path(__file__).parent / "logger-overhead-cpu.json")
    args = parser.parse_args()
    root = find_root(args.root)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"LeNet (§6.6) on Fashion-MNIST, batch 256, {args.epochs} epochs, CPU ({machine})")
    epochs: dict[str, list[float]] = {"none": [], "tensorboard": [], "mlflow": []}
    walls: dict[str, list[float]] = {k: [] for k in epochs}
    for _ in range(args.repeat):
        for logger in epochs:
            seconds, wall = epoch_seconds(root, logger, args.epochs)
            epochs[logger] += seconds
            walls[logger].append(wall)
    median = {k: statistics.median(v) for k, v in epochs.items()}
    fastest = {k: min(v) for k, v in epochs.items()}
    ratio = {k: median[k] / median["none"] for k in epochs}
    fastest_ratio = {k: fastest[k] / fastest["none"] for k in epochs}
    for k in epochs:
        print(
            f"  logger={k:<12} {median[k]:6.3f} s/epoch median ({ratio[k]:.3f}x none), "
            f"{fastest[k]:6.3f} fastest ({fastest_ratio[k]:.3f}x), of {len(epochs[k])} epochs"
        )
    result = {
        "machine": machine,
        "torch": torch.__version__,
        "epochs": args.epochs,
        "repeat": args.repeat,
        "epoch_seconds": {k: [round(s, 3) for s in v] for k, v in epochs.items()},
        "job_seconds": {k: [round(s, 3) for s in v] for k, v in walls.items()},
        "median_epoch_seconds": {k: round(v, 3) for k, v in median.items()},
        "fastest_epoch_seconds": {k: round(v, 3) for k, v in fastest.items()},
        "ratio": {k: round(v, 3) for k, v in ratio.items()},
        "fastest_ratio": {k: round(v, 3) for k, v in fastest_ratio.items()},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
