"""experiments/benchmark.py runs all three loops and reports what it measured (no speed is asserted
here: the numbers it derives are checked against its own timings)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(
    name: str, out: Path, *args: str, **kwargs
) -> tuple[subprocess.CompletedProcess, dict]:
    """Run experiments/NAME ARGS --out OUT; returns the process and the JSON it wrote."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / name), *args, "--out", str(out)],
        capture_output=True, text=True, timeout=300, **kwargs,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r, json.loads(out.read_text())


def test_benchmark_runs_the_three_loops(tmp_path, fake_fmnist):
    r, result = run_script(
        "benchmark.py", tmp_path / "bench.json", "--device", "cpu", "--epochs", "2",
        "--root", str(fake_fmnist),
    )  # fmt: skip
    assert set(result["results"]) == {"book", "minimal", "d2lrun"}
    assert set(result["ratios"]) == {"a_over_c", "c_over_b"}
    for v in result["results"].values():  # 64 training and 32 test images (fake_fmnist)
        assert len(v["epoch_seconds"]) == 2
        assert v["seconds_per_epoch"] == v["epoch_seconds"][1]  # the epochs after the first
        s = v["seconds_per_epoch"]  # rounded to the millisecond, examples_per_s to a whole number
        assert 64 / (s + 0.0005) - 0.5 <= v["examples_per_s"] <= 64 / max(s - 0.0005, 1e-9) + 0.5
        assert (v["test_acc"] * 32) == pytest.approx(round(v["test_acc"] * 32), abs=0.01)
    t = {k: v["seconds_per_epoch"] for k, v in result["results"].items()}
    assert result["ratios"]["c_over_b"] == pytest.approx(t["d2lrun"] / t["minimal"], abs=0.001)
    assert result["ratios"]["a_over_c"] == pytest.approx(t["book"] / t["d2lrun"], abs=0.01)
    said = re.search(r"d2lrun is ([\d.]+)x (faster|slower) than the book's loop \(a/c\)", r.stdout)
    a_over_c = result["ratios"][
        "a_over_c"
    ]  # below 1 on a loaded machine: "slower", not "0.53x faster"
    ratio = a_over_c if said[2] == "faster" else 1 / a_over_c
    assert (said[2] == "faster") == (a_over_c >= 1) and float(said[1]) == pytest.approx(
        ratio, abs=0.01
    )


def benchmark_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "benchmark", ROOT / "experiments" / "benchmark.py"
    )
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    return benchmark


def test_benchmark_finds_fashion_mnist_where_d2lrun_put_it(tmp_path, monkeypatch):
    """A user who trained on Fashion-MNIST once (README) runs make bench without --root and
    without ../shared: the files in data/ (or $D2LRUN_DATA), as d2lrun's dataset.root."""
    benchmark = benchmark_module()
    monkeypatch.setattr(benchmark, "SHARED", tmp_path / "no-shared")
    monkeypatch.delenv("D2LRUN_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"no Fashion-MNIST files in data/FashionMNIST/raw or "):
        benchmark.find_root(None)
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        (raw / f"{name}-ubyte").touch()  # as torchvision unpacked them
    assert benchmark.find_root(None) == Path("data")
    monkeypatch.setenv("D2LRUN_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(SystemExit, match="elsewhere"):  # d2lrun would not look in data/ either
        benchmark.find_root(None)
    assert benchmark.find_root("given") == Path("given")


def test_the_benchmarks_copy_of_shareds_fashion_mnist_goes_when_the_script_ends(tmp_path):
    """Each make bench or bench-sweep without --root left an 82 MB decoded copy in /tmp."""
    shared = tmp_path / "shared"
    shared.mkdir()
    code = (
        "import sys; sys.path.insert(0, 'experiments'); import benchmark, pathlib; "
        "import torchvision.datasets as d; d.FashionMNIST = lambda *a, **k: None; "  # no decoding
        f"benchmark.SHARED = pathlib.Path({str(shared)!r}); root = benchmark.find_root(None); "
        "print(root, root.is_dir())"
    )
    env = {**os.environ, "D2LRUN_DATA": str(tmp_path / "none"), "TMPDIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    root, made = r.stdout.split()
    assert made == "True" and root.startswith(str(tmp_path)) and not Path(root).exists()


def test_benchmark_writes_one_file_per_kind_of_device():
    """Without --out, a GPU's numbers go to experiments/bench-cuda.json, never over the CPU's."""
    import torch

    benchmark = benchmark_module()
    out = {d: benchmark.default_out(torch.device(d)) for d in ("cpu", "cuda", "cuda:1")}
    assert out == {
        "cpu": ROOT / "experiments" / "bench-cpu.json",
        "cuda": ROOT / "experiments" / "bench-cuda.json",
        "cuda:1": ROOT / "experiments" / "bench-cuda.json",
    }


def test_startup_script_times_d2lrun_against_a_bare_hydra_app(tmp_path):
    """experiments/startup.py runs and reports both ratios (a smoke test: no timing is asserted)."""
    r, result = run_script("startup.py", tmp_path / "startup.json", "--repeat", "1", cwd=tmp_path)
    assert set(result["median_seconds"]) == {
        "d2lrun --help",
        "minimal app --help",
        "d2lrun (default run)",
        "import torch + minimal app run",
    }
    assert result["help_ratio"] > 0 and result["run_ratio"] > 0 and "--help takes" in r.stdout


def test_logger_overhead_script_times_each_logger_against_none(tmp_path, fake_fmnist):
    """experiments/logger_overhead.py runs the three loggers and reports ratios (no timing is
    asserted)."""
    pythonpath = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    r, result = run_script(
        "logger_overhead.py", tmp_path / "overhead.json", "--epochs", "2", "--repeat", "1",
        "--root", str(fake_fmnist), env={**os.environ, "PYTHONPATH": pythonpath},
    )  # fmt: skip
    assert {k: len(v) for k, v in result["epoch_seconds"].items()} == {
        "none": 1,
        "tensorboard": 1,
        "mlflow": 1,
    }
    assert result["ratio"]["none"] == 1 and result["ratio"]["mlflow"] > 0 and "x none)" in r.stdout


def test_csv_scale_trains_both_sides_to_the_same_error(tmp_path):
    """experiments/csv_scale.py: d2lrun and the hand-written script learn the same table equally
    well, and the ratios it prints follow from its medians."""
    r, result = run_script(
        "csv_scale.py", tmp_path / "csv.json", "--rows", "20000", "--repeat", "1"
    )
    script, ours = result["median"]["pandas + torch script"], result["median"]["d2lrun dataset=csv"]
    # The target's std is about 11.8 and its noise 1: one epoch gets both well below the std.
    assert script["val_rmse"] < 4 and ours["val_rmse"] < 4
    assert ours["val_rmse"] == pytest.approx(script["val_rmse"], rel=0.25)
    assert result["seconds_ratio"] == pytest.approx(ours["seconds"] / script["seconds"], abs=0.01)
    assert result["memory_ratio"] == pytest.approx(ours["peak_mib"] / script["peak_mib"], abs=0.01)
    assert "d2lrun takes" in r.stdout and result["rows"] == 20000


def test_bench_sweep_times_both_launchers_on_the_same_sweep(tmp_path):
    """experiments/bench_sweep.py: each sweep run by both launchers; their ratio and agreement."""
    r, result = run_script(
        "bench_sweep.py", tmp_path / "bench-sweep.json", "--only", "weight_decay",
        "--wd-epochs", "3", "--repeat", "1",
    )  # fmt: skip
    assert result["device"] == "cpu" and set(result["results"]) == {"weight_decay"}
    v = result["results"]["weight_decay"]
    assert (v["jobs"], v["epochs"]) == (8, 3)  # §4.5 over 8 values of λ
    assert v["speedup"] == pytest.approx(v["basic_s"] / v["batched_s"], abs=0.01)
    assert v["best_metric_max_rel_diff"] < 1e-4  # the same jobs, trained either way
    assert re.search(r"weight_decay\s+8 jobs x\s+3 epochs  basic\s+[\d.]+ s  batched", r.stdout)
