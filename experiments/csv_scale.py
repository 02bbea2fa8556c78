"""A large CSV file: `d2lrun dataset=csv` against a hand-written pandas + torch script, in one run.

    python experiments/csv_scale.py [--rows 100000] [--repeat 3] [--out FILE]

The file has 8 numeric columns (5% of their values missing), a text column of 20 categories
and a numeric target. Both sides read it, fill missing values with the mean, one-hot encode the
text with a column for "missing" (§2.2), standardize, and train linear regression for one epoch
(batch 256, SGD lr 0.03) on 80% of the rows. Each run is a fresh process (start-up included);
reported: wall seconds and peak resident memory (the process's own ru_maxrss), median of
--repeat interleaved runs, and d2lrun's ratio to the script's.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

# Peak memory of the process it runs in, printed at exit (a child's own ru_maxrss, in KiB on Linux).
PEAK = (
    "import atexit, resource, sys\n"
    "atexit.register(lambda: print('peak_kib', "
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))\n"
)

# The hand-written baseline: what a reader of §2.2 and §3.3 would write for this file.
SCRIPT = """
import sys
import pandas as pd
import torch
from torch import nn

frame = pd.read_csv(sys.argv[1])
frame = frame.sample(frac=1.0, random_state=0)
y = torch.tensor(frame.pop("y").to_numpy(), dtype=torch.float32).reshape(-1, 1)
numeric = frame.select_dtypes("number").columns
n_train = int(0.8 * len(frame))
train_part = frame.iloc[:n_train]
frame[numeric] = (frame[numeric] - train_part[numeric].mean()) / train_part[numeric].std(ddof=0)
frame[numeric] = frame[numeric].fillna(0.0)
frame = pd.get_dummies(frame, dummy_na=True, dtype="float32")
X = torch.tensor(frame.to_numpy(dtype="float32"))
mean, std = y[:n_train].mean(), y[:n_train].std()
y = (y - mean) / std
net = nn.Linear(X.shape[1], 1)
optimizer = torch.optim.SGD(net.parameters(), lr=0.03)
loss = nn.MSELoss()
order = torch.randperm(n_train)
for i in range(0, n_train, 256):
    idx = order[i : i + 256]
    optimizer.zero_grad()
    loss(net(X[idx]), y[idx]).backward()
    optimizer.step()
with torch.no_grad():
    rmse = loss(net(X[n_train:]), y[n_train:]).sqrt() * std
print("val_rmse", float(rmse))
"""


def write_table(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 8))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(8)])
    frame = frame.mask(rng.random(frame.shape) < 0.05)  # 5% missing
    kind = rng.choice([f"k{i}" for i in range(20)], rows)
    frame["kind"] = kind
    frame["y"] = (
        x @ np.arange(8) + (pd.Series(kind).str[1:].astype(int) / 10) + rng.normal(0, 1, rows)
    )
    frame.to_csv(path, index=False)


def measure(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak MiB, stdout) of one run of cmd, a python -c command whose code starts
    with PEAK."""
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{r.stderr}")
    peak = next(ln for ln in r.stderr.splitlines() if ln.startswith("peak_kib"))
    return wall, int(peak.split()[1]) / 1024, r.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="d2lrun-csv-") as tmp:
        table = Path(tmp) / "big.csv"
        write_table(table, args.rows)
        d2lrun = (
            f"{PEAK}sys.argv = ['d2lrun'] + sys.argv[1:]\n"
            "from d2lrun.cli import train_main\ntrain_main()\n"
        )
        commands = {
            "pandas + torch script": [sys.executable, "-c", PEAK + SCRIPT, str(table)],
            "d2lrun dataset=csv": [
                sys.executable, "-c", d2lrun, "dataset=csv", f"dataset.path={table}",
                "dataset.target=y", "trainer.epochs=1", "trainer.batch_size=256", "optim.lr=0.03",
                "trainer.progress=false", f"hydra.run.dir={Path(tmp) / 'run'}",
            ],
        }  # fmt: skip
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        stdout = {}
        for _ in range(args.repeat):  # interleaved, so both see the same machine load
            for name, cmd in commands.items():
                wall, peak, stdout[name] = measure(cmd)
                runs[name].append((wall, peak))
        size_mb = table.stat().st_size / 1e6
        summary = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
    # Both learn the same model: their validation RMSEs, in the target's units, come out close.
    rmse = {
        "pandas + torch script": float(stdout["pandas + torch script"].split()[-1]),
        "d2lrun dataset=csv": summary["final"]["val_rmse"],
    }
    median = {
        name: {
            "seconds": round(statistics.median(w for w, _ in r), 2),
            "peak_mib": round(statistics.median(m for _, m in r)),
            "val_rmse": round(rmse[name], 3),
        }
        for name, r in runs.items()
    }
    base, ours = median["pandas + torch script"], median["d2lrun dataset=csv"]
    result = {
        "rows": args.rows,
        "file_mb": round(size_mb, 1),
        "median": median,
        "seconds_ratio": round(ours["seconds"] / base["seconds"], 2),
        "memory_ratio": round(ours["peak_mib"] / base["peak_mib"], 2),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
    }
    print(f"{args.rows:,} rows ({result['file_mb']} MB), one epoch, median of {args.repeat} runs:")
    for name, m in median.items():
        print(
            f"  {name:<24} {m['seconds']:6.2f} s  peak {m['peak_mib']:5,} MiB  "
            f"val RMSE {m['val_rmse']:.3f}"
        )
    print(
        f"  d2lrun takes {result['seconds_ratio']}x the script's time and "
        f"{result['memory_ratio']}x its peak memory"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
