"""experiments/benchmark.py runs all three loops and writes its JSON (no timing is asserted here)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_runs_the_three_loops(tmp_path, fake_fmnist):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "benchmark.py"), "--device", "cpu", "--epochs", "2",
                        "--root", str(fake_fmnist), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert set(result["results"]) == {"book", "minimal", "d2lrun"}
    assert set(result["ratios"]) == {"a_over_c", "c_over_b"}
    assert all(len(v["epoch_seconds"]) == 2 and 0 <= v["test_acc"] <= 1 for v in result["results"].values())
    assert "faster than the book's loop (a/c)" in r.stdout
