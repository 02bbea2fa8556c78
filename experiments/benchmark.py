"""Speed of one LeNet epoch on Fashion-MNIST (§6.6, batch 256, SGD lr 0.9), three ways, in one run:

  (a) the book's loop: torchvision FashionMNIST + ToTensor + DataLoader(shuffle, 4 workers),
      d2l's train_ch6
  (b) a minimal hand-written loop over device-resident tensors (randperm slices, metrics read once
      per epoch)
  (c) d2lrun's own trainer through its Python API (d2lrun.job.train_job), checkpoints and metrics
      included

Each epoch trains on the 60,000 training images and evaluates on the 10,000 test images. Reported:
seconds per epoch (median of the epochs after the first), training examples/s (data time included),
final test accuracy, and the ratios a/c (d2lrun's speed-up over the book) and c/b (d2lrun's overhead
over the minimal loop). Usage:

    python experiments/benchmark.py [--device cpu|cuda] [--epochs 3] [--root DIR] [--out FILE]

Without --out it writes experiments/bench-cpu.json or experiments/bench-cuda.json, one file per
kind of device, so a GPU's numbers never overwrite the CPU's.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "fashion-mnist"


def lenet() -> nn.Sequential:
    """§6.6, with the book's Xavier initialisation."""
    net = nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.Sigmoid(),
        nn.Linear(120, 84),
        nn.Sigmoid(),
        nn.Linear(84, 10),
    )
    for m in net:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
    return net


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def book_loop(root: Path, device: torch.device, epochs: int) -> dict:
    """(a) d2l's load_data_fashion_mnist + train_ch6 (§3.5, §6.6), metrics accumulated per batch
    as the book does."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    warnings.filterwarnings(
        "ignore", message="This DataLoader will create"
    )  # 4 workers on 2 cores, as the book does
    trans = transforms.ToTensor()
    train = datasets.FashionMNIST(str(root), train=True, transform=trans, download=False)
    test = datasets.FashionMNIST(str(root), train=False, transform=trans, download=False)
    train_iter = DataLoader(train, 256, shuffle=True, num_workers=4)
    test_iter = DataLoader(test, 256, shuffle=False, num_workers=4)
    torch.manual_seed(0)
    net = lenet().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.9)
    loss = nn.CrossEntropyLoss()
    times, acc = [], 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        net.train()
        metric = [0.0, 0.0, 0]  # loss sum, correct, examples (d2l.Accumulator)
        for X, y in train_iter:
            optimizer.zero_grad()
            X, y = X.to(device), y.to(device)
            y_hat = net(X)
            batch_loss = loss(y_hat, y)
            batch_loss.backward()
            optimizer.step()
            with torch.no_grad():
                metric[0] += float(batch_loss) * X.shape[0]
                metric[1] += float((y_hat.argmax(1) == y).sum())
                metric[2] += X.shape[0]
        net.eval()
        correct = total = 0
        with torch.no_grad():
            for X, y in test_iter:  # d2l.evaluate_accuracy_gpu
                X, y = X.to(device), y.to(device)
                correct += float((net(X).argmax(1) == y).sum())
                total += y.numel()
        sync(device)
        times.append(time.perf_counter() - start)
        acc = correct / total
    return {"epoch_seconds": times, "test_acc": acc, "n_train": len(train)}


def minimal_loop(root: Path, device: torch.device, epochs: int) -> dict:
    """(b) The fewest lines that train the same model with the data held on the device."""
    from torchvision import datasets

    train = datasets.FashionMNIST(str(root), train=True, download=False)
    test = datasets.FashionMNIST(str(root), train=False, download=False)
    X, y = train.data.unsqueeze(1).to(device), train.targets.to(device)
    Xt, yt = test.data.unsqueeze(1).to(device), test.targets.to(device)
    torch.manual_seed(0)
    net = lenet().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.9)
    g = torch.Generator().manual_seed(0)
    times, acc = [], 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        net.train()
        loss_sum = torch.zeros((), device=device)
        for idx in torch.randperm(len(y), generator=g).to(device).split(256):
            batch_loss = nn.functional.cross_entropy(net(X[idx].float().div_(255)), y[idx])
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            loss_sum += batch_loss.detach() * len(idx)
        net.eval()
        correct = torch.zeros((), device=device, dtype=torch.long)
        with torch.no_grad():
            for i in range(0, len(yt), 1024):
                correct += (
                    net(Xt[i : i + 1024].float().div_(255)).argmax(1) == yt[i : i + 1024]
                ).sum()
        acc = correct.item() / len(yt)
        loss_sum.item()
        times.append(time.perf_counter() - start)
    return {"epoch_seconds": times, "test_acc": acc, "n_train": len(y)}


def d2lrun_trainer(root: Path, device: torch.device, epochs: int) -> dict:
    """(c) d2lrun's trainer, composed from its configs exactly as `d2lrun model=lenet` would be."""
    from d2lrun.config import compose
    from d2lrun.data import build_data
    from d2lrun.job import train_job

    overrides = [
        "model=lenet",
        f"trainer.epochs={epochs}",
        f"device={device}",
        f"dataset.root={root}",
        "dataset.download=false",
        "trainer.progress=false",
    ]
    cfg = compose(overrides)
    with tempfile.TemporaryDirectory() as out:
        summary = train_job(cfg, Path(out), overrides, log=lambda *_: None)
        rows = _read_rows(Path(out) / "metrics.csv")
    train, _, _ = build_data(
        cfg.dataset, cfg.seed
    )  # the same process: d2lrun's cache, no second decode
    return {
        "epoch_seconds": [float(r["seconds"]) for r in rows],
        "test_acc": summary["final"]["val_acc"],
        "n_train": len(train),
    }


def _read_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def summarize(result: dict) -> dict:
    steady = result["epoch_seconds"][1:] or result["epoch_seconds"]
    seconds = statistics.median(steady)
    return {
        "seconds_per_epoch": round(seconds, 3),
        "examples_per_s": round(result["n_train"] / seconds),
        "test_acc": round(result["test_acc"], 4),
        "epoch_seconds": [round(s, 3) for s in result["epoch_seconds"]],
    }


def find_root(root: str | None) -> Path:
    """A folder with FashionMNIST/raw: the one given; else d2lrun's own (dataset.root:
    $D2LRUN_DATA, else data/), where a first `d2lrun model=softmax` put them; else a temporary
    copy of ../shared's, removed when the script ends."""
    if root:
        return Path(root)
    own = Path(os.environ.get("D2LRUN_DATA") or "data")
    if len(list((own / "FashionMNIST" / "raw").glob("*-ubyte"))) == 4:  # unpacked by torchvision
        return own
    if not SHARED.exists():
        raise SystemExit(
            f"no Fashion-MNIST files in {own / 'FashionMNIST' / 'raw'} or {SHARED}. Fix: train on "
            f"it once to download them (make run ARGS=model=softmax), or --root DIR (with "
            f"DIR/FashionMNIST/raw)."
        )
    tmp = Path(tempfile.mkdtemp(prefix="d2lrun-bench-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # 82 MB decoded: not left behind
    (tmp / "FashionMNIST" / "raw").mkdir(parents=True)
    for f in SHARED.glob("*.gz"):
        shutil.copy(f, tmp / "FashionMNIST" / "raw" / f.name)
    from torchvision import datasets

    datasets.FashionMNIST(
        str(tmp), train=True, download=True
    )  # checksums match: decompresses, no network
    datasets.FashionMNIST(str(tmp), train=False, download=True)
    return tmp


def default_out(device: torch.device) -> Path:
    """experiments/bench-DEVICE.json by the device's kind: bench-cuda.json for cuda and cuda:1."""
    return REPO / "experiments" / f"bench-{device.type}.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--root",
        help="folder holding FashionMNIST/raw (default: $D2LRUN_DATA or data/, else ../shared's)",
    )
    parser.add_argument("--out", type=Path, help="default: experiments/bench-DEVICE.json")
    parser.add_argument("--skip-book", action="store_true", help="skip (a), the slowest")
    args = parser.parse_args()
    device = torch.device(args.device)
    out = args.out or default_out(device)
    root = find_root(args.root)
    card = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"LeNet (§6.6) on Fashion-MNIST, batch 256, {args.epochs} epochs, on {card}, "
        f"torch {torch.__version__}"
    )
    results = {}
    for name, fn in [("book", book_loop), ("minimal", minimal_loop), ("d2lrun", d2lrun_trainer)]:
        if name == "book" and args.skip_book:
            continue
        results[name] = summarize(fn(root, device, args.epochs))
        r = results[name]
        print(
            f"  {name:8s} {r['seconds_per_epoch']:8.3f} s/epoch {r['examples_per_s']:>9,} ex/s  "
            f"test acc {r['test_acc']:.4f}"
        )
    c = results["d2lrun"]["seconds_per_epoch"]
    ratios = {"c_over_b": round(c / results["minimal"]["seconds_per_epoch"], 3)}
    if "book" in results:
        ratios["a_over_c"] = round(results["book"]["seconds_per_epoch"] / c, 2)
        a_over_c = ratios["a_over_c"]  # a loaded machine can make it slower: said so
        faster = f"{a_over_c:.2f}x faster" if a_over_c >= 1 else f"{1 / a_over_c:.2f}x slower"
        print(f"  d2lrun is {faster} than the book's loop (a/c)")
    print(f"  d2lrun takes {ratios['c_over_b']:.2f}x the minimal loop's time (c/b)")
    out.write_text(
        json.dumps(
            {
                "device": card,
                "torch": torch.__version__,
                "epochs": args.epochs,
                "results": results,
                "ratios": ratios,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
