"""Start-up time of the d2lrun commands against a bare Hydra app, measured side by side in one run.

    python experiments/startup.py [--repeat 5] [--out experiments/startup-cpu.json]

Targets (issue 18): `d2lrun --help` at most 1.0x a minimal @hydra.main app's `--help`; the default
run under 1.4x `python -c "import torch"` plus the minimal app's run. Each command runs
--repeat times, interleaved, and the median counts.
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

MINIMAL_APP = """import hydra

@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg):
    pass

main()
"""


def seconds(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def measure(repeat: int) -> dict:
    py = sys.executable
    d2lrun = [py, "-m", "d2lrun"]
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "app.py").write_text(MINIMAL_APP)
        commands = {
            "d2lrun --help": lambda i: [[*d2lrun, "--help"]],
            "minimal app --help": lambda i: [[py, "app.py", "--help"]],
            "d2lrun (default run)": lambda i: [
                [*d2lrun, "trainer.progress=false", f"hydra.run.dir=r{i}"]
            ],
            "import torch + minimal app run": lambda i: [
                [py, "-c", "import torch"],
                [py, "app.py", f"hydra.run.dir=m{i}"],
            ],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for i in range(repeat):  # interleaved, so a busy moment hits every command alike
            for name, cmds in commands.items():
                times[name].append(sum(seconds(c, cwd) for c in cmds(i)))
    median = {name: round(statistics.median(t), 3) for name, t in times.items()}
    return {
        "median_seconds": median,
        "help_ratio": round(median["d2lrun --help"] / median["minimal app --help"], 2),
        "run_ratio": round(
            median["d2lrun (default run)"] / median["import torch + minimal app run"], 2
        ),
        "machine": (
            f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat", type=int, default=9, help="runs of each command (median counts)"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    result = measure(args.repeat)
    for name, s in result["median_seconds"].items():
        print(f"  {name:<32} {s:6.3f} s")
    print(f"  d2lrun --help takes {result['help_ratio']}x the minimal app's (target <= 1.0)")
    print(
        f"  the default run takes {result['run_ratio']}x import torch + the minimal app "
        "(target <= 1.4)"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
