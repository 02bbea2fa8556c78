"""Sweeps end to end, Hydra's basic launcher against hydra/launcher=batched, side by side:

  softmax        16 jobs, optim.lr x optim.weight_decay (4 x 4), Fashion-MNIST (§3.7)
  weight_decay   the §4.5 experiment (experiment=ch4_weight_decay) over 8 values of λ
  mlp            16 jobs, optim.lr x optim.weight_decay (4 x 4), Fashion-MNIST (§4.3)
  lenet          4 jobs over optim.lr, Fashion-MNIST (§6.6): convolutions do not stack, so the
                 batched launcher runs them one after another

Each sweep is the `d2lrun -m ...` command, timed from start to exit (start-up, data, every job's
files and the results table included), with the basic launcher and with the batched one in turns
(--repeat times each, the fastest counts), into fresh folders. Reported per sweep: both times,
basic / batched (the speed-up), and the largest relative difference between the two sweeps' best
metric per job. Usage:

    python experiments/bench_sweep.py [--device cpu|cuda] [--only softmax,mlp] [--root DIR]

Without --out it writes experiments/bench-sweep-cpu.json or experiments/bench-sweep-cuda.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
from benchmark import find_root  # noqa: E402  (a copy of ../shared's Fashion-MNIST, decoded)

GRID = ["optim.lr=0.03,0.1,0.3,1", "optim.weight_decay=0,1e-4,1e-3,1e-2"]
SWEEPS = {  # name: (overrides, epochs option)
    "softmax": (["model=softmax", "dataset=fashion_mnist", *GRID], "epochs"),
    "weight_decay": (["experiment=ch4_weight_decay",
                      "optim.weight_decay=0,0.5,1,1.5,2,2.5,3,3.5"], "wd_epochs"),
    "mlp": (["model=mlp", "dataset=fashion_mnist", *GRID], "mlp_epochs"),
    "lenet": (["model=lenet", "dataset=fashion_mnist", "optim.lr=0.3,0.6,0.9,1.2"],
              "lenet_epochs"),
}  # fmt: skip


def timed(args: list[str], sweep_dir: Path) -> float:
    """Seconds that `d2lrun -m ARGS` took; it must complete."""
    cmd = [sys.executable, "-m", "d2lrun", "-m", *args, f"hydra.sweep.dir={sweep_dir}"]
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return seconds


def best(sweep_dir: Path) -> dict[str, float]:
    """Each job's best metric, from the sweep's summary.csv."""
    with open(sweep_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    column = next(c for c in rows[0] if c.startswith("best_") and c != "best_epoch")
    return {r["job"]: float(r[column]) for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default=",".join(SWEEPS), help="sweeps to run, comma-separated")
    parser.add_argument("--epochs", type=int, default=10, help="softmax's epochs")
    parser.add_argument("--wd-epochs", type=int, default=100, help="§4.5's (the book's 100)")
    parser.add_argument("--mlp-epochs", type=int, default=3)
    parser.add_argument("--lenet-epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each (the fastest counts)")
    parser.add_argument("--root", help="folder holding FashionMNIST/raw (default: ../shared's)")
    parser.add_argument("--out", type=Path, help="default: experiments/bench-sweep-DEVICE.json")
    args = parser.parse_args()
    names = args.only.split(",")
    root = find_root(args.root) if any(n != "weight_decay" for n in names) else None
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    out = args.out or REPO / "experiments" / f"bench-sweep-{device}.json"
    if device == "cuda":
        import torch

        machine = torch.cuda.get_device_name(args.device)
    else:
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(f"sweeps on {args.device} ({machine}), basic launcher vs hydra/launcher=batched")
    results = {}
    for name in names:
        overrides, epochs = SWEEPS[name]
        common = [*overrides, f"device={args.device}", "trainer.progress=false",
                  f"trainer.epochs={getattr(args, epochs)}"]  # fmt: skip
        if root is not None and "dataset=fashion_mnist" in overrides:
            common.append(f"dataset.root={root}")
        times: dict[str, list[float]] = {"basic": [], "batched": []}
        results_of: dict[str, dict] = {}
        for r in range(args.repeat):  # in turns, each launcher first every other time
            for launcher in ("basic", "batched")[:: 1 if r % 2 == 0 else -1]:
                with tempfile.TemporaryDirectory(prefix="d2lrun-bench-sweep-") as tmp:
                    extra = ["hydra/launcher=batched"] if launcher == "batched" else []
                    times[launcher].append(timed([*extra, *common], Path(tmp) / "sweep"))
                    results_of[launcher] = best(Path(tmp) / "sweep")
        a, b = results_of["basic"], results_of["batched"]
        basic, batched = min(times["basic"]), min(times["batched"])
        diffs = {j: abs(a[j] - b[j]) / max(abs(a[j]), 1e-12) for j in a}
        differ = max(diffs.values())
        for j in (j for j, d in diffs.items() if d > 1e-3):  # where float32 reordering grew
            print(f"    job {j}: best {a[j]:.6g} (basic) vs {b[j]:.6g} (batched)")
        results[name] = {"jobs": len(a), "epochs": getattr(args, epochs),
                         "basic_s": round(basic, 2), "batched_s": round(batched, 2),
                         "runs_s": {k: [round(t, 2) for t in v] for k, v in times.items()},
                         "speedup": round(basic / batched, 2),
                         "best_metric_max_rel_diff": float(f"{differ:.3g}")}  # fmt: skip
        r = results[name]
        print(f"  {name:13s} {r['jobs']:2d} jobs x {r['epochs']:3d} epochs  basic "
              f"{basic:7.1f} s  batched {batched:7.1f} s  {r['speedup']:5.2f}x  "
              f"(best metrics differ by {differ:.1e} at most)", flush=True)  # fmt: skip
        report = {"device": args.device, "machine": machine, "python": platform.python_version(),
                  "results": results}  # fmt: skip
        out.write_text(json.dumps(report, indent=2) + "\n")  # after each sweep: none is lost
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
