"""On a GPU: resume bit for bit, a GPU run evaluated on a CPU, trainer.compile=true, and the
benchmark's CUDA results file. Marked gpu, skipped without CUDA; run them with
make test ARGS="-m gpu" (tests/unit/test_job.py holds one more, on CUDA's random generator)."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, run_cli, write_fake_fashion_mnist

pytestmark = pytest.mark.gpu

# Dropout draws from CUDA's generator and momentum lives in the optimizer state: a resume that
# forgot either would not end bit for bit.
MLP = [
    "model=mlp",
    "model.num_hiddens=[32]",
    "regularizer=dropout",
    "optim.momentum=0.9",
    "trainer.batch_size=16",
    "dataset.download=false",
    "trainer.progress=false",
]


def train(run_dir, *overrides: str) -> tuple[dict, str]:
    """`d2lrun OVERRIDES` into run_dir: its metrics.json and all it printed."""
    r = run_cli(*overrides, f"hydra.run.dir={run_dir}", timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads((run_dir / "metrics.json").read_text()), r.stdout + r.stderr


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory):
    """An MLP with dropout trained 4 epochs on CUDA on the tiny Fashion-MNIST: (folder, root)."""
    root = write_fake_fashion_mnist(tmp_path_factory.mktemp("fm"))
    run = tmp_path_factory.mktemp("runs") / "full"
    summary, _ = train(run, *MLP, f"dataset.root={root}", "device=cuda", "trainer.epochs=4")
    assert summary["device"] == "cuda" and summary["epochs_completed"] == 4
    return run, root


def test_resume_on_cuda_is_bit_for_bit(cuda_run, tmp_path):
    """2 epochs on CUDA, then resumed to 4, end with the uninterrupted CUDA run's model.pt."""
    # Bitwise equal without CUBLAS_WORKSPACE_CONFIG or torch.use_deterministic_algorithms: the
    # MLP's kernels (cuBLAS GEMMs on one stream, ReLU, dropout's Philox draws, cross-entropy's and
    # the bias gradients' tree reductions, SGD's elementwise step) use no atomics, and cuBLAS gives
    # the same bits on every run of one GPU and library; the workspace variable matters only to
    # GEMMs on several streams. Convolutions are left out: cuDNN may pick another algorithm.
    full, root = cuda_run
    train(tmp_path / "half", *MLP, f"dataset.root={root}", "device=cuda", "trainer.epochs=2")
    summary, printed = train(
        tmp_path / "resumed", f"resume={tmp_path / 'half'}", "trainer.epochs=4",
        "trainer.progress=false",
    )  # fmt: skip
    assert "from epoch 2" in printed and "on cuda" in printed  # the run's device=cuda carries on
    assert summary["device"] == "cuda" and summary["epochs_completed"] == 4
    a = torch.load(full / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_gpu_run_evaluates_on_a_machine_without_one(cuda_run):
    """d2lrun-eval device=cpu, CUDA hidden, gives the CUDA run's own final val metrics."""
    run, _ = cuda_run
    r = run_cli(f"run={run}", "device=cpu", tool="d2lrun-eval", env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr
    final = json.loads((run / "metrics.json").read_text())["final"]
    evaluated = json.loads((run / "eval.json").read_text())
    assert evaluated["device"] == "cpu"
    # The same weights, summed in another order by CPU kernels: only float32 rounding differs
    # (7e-8 relative in the loss on an H200), so 1e-5; a prediction flips only where two logits
    # tie to that rounding, and then one of the 32 test images may.
    assert evaluated["val_loss"] == pytest.approx(final["val_loss"], rel=1e-5)
    assert abs(evaluated["val_acc"] - final["val_acc"]) <= 1 / 32


def test_compiled_cuda_training_matches_eager(tmp_path, fake_fmnist):
    """trainer.compile=true on CUDA (CUDA graphs) trains like eager, with no fallback note."""
    # LeNet, batch 20 of 64 images: the last batch of 4 is a second shape for the graphs.
    lenet = [
        "model=lenet",
        "model.variant=modern",
        "trainer.epochs=3",
        "trainer.batch_size=20",
        "optim.lr=0.1",
        f"dataset.root={fake_fmnist}",
        "dataset.download=false",
        "trainer.progress=false",
        "device=cuda",
    ]
    eager, _ = train(tmp_path / "eager", *lenet)
    fast, printed = train(tmp_path / "compiled", *lenet, "trainer.compile=true")
    assert fast["status"] == "completed" and fast["epochs_completed"] == 3
    assert "note:" not in printed and "training eagerly" not in printed
    # Fused kernels round differently from eager's and 12 SGD steps carry that on (2e-7 relative
    # in the loss on an H200, the same accuracy): 1e-3, and one test image of 32 may flip.
    assert fast["final"]["val_loss"] == pytest.approx(eager["final"]["val_loss"], rel=1e-3)
    assert abs(fast["final"]["val_acc"] - eager["final"]["val_acc"]) <= 0.01 + 1 / 32


def test_benchmark_on_cuda_writes_bench_cuda_json(tmp_path, fake_fmnist):
    """benchmark.py --device cuda times its three loops into experiments/bench-cuda.json."""
    # A copy of the script, so that its experiments/ folder is tmp_path's, not the checkout's.
    (tmp_path / "experiments").mkdir()
    script = shutil.copy(ROOT / "experiments" / "benchmark.py", tmp_path / "experiments")
    r = subprocess.run(
        [sys.executable, script, "--device", "cuda", "--epochs", "2", "--root", str(fake_fmnist)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = tmp_path / "experiments" / "bench-cuda.json"
    assert sorted((tmp_path / "experiments").glob("*.json")) == [out]
    assert f"wrote {out}" in r.stdout
    result = json.loads(out.read_text())
    assert result["device"] == torch.cuda.get_device_name() and result["epochs"] == 2
    assert set(result["results"]) == {"book", "minimal", "d2lrun"}
    for v in result["results"].values():  # 64 training and 32 test images (fake_fmnist)
        assert len(v["epoch_seconds"]) == 2 and v["examples_per_s"] > 0
        assert (v["test_acc"] * 32) == pytest.approx(round(v["test_acc"] * 32), abs=0.01)
    assert set(result["ratios"]) == {"a_over_c", "c_over_b"}


def test_a_batched_sweep_on_cuda_gives_the_basic_launchers_results(tmp_path):
    """hydra/launcher=batched on CUDA: one stack of 4 MLPs (lr x momentum), each member's best
    validation loss that of its job trained alone (no dropout: CUDA draws its masks fused)."""
    root = write_fake_fashion_mnist(tmp_path / "fm", num_train=256, num_test=64)
    grid = ["-m", "model=mlp", "model.num_hiddens=[32]", "dataset=fashion_mnist",
            f"dataset.root={root}", "device=cuda", "trainer.epochs=2", "trainer.batch_size=16",
            "trainer.progress=false", "optim.lr=0.1,0.3", "optim.momentum=0,0.9"]  # fmt: skip
    basic = run_cli(*grid, f"hydra.sweep.dir={tmp_path / 'basic'}", timeout=600)
    batched = run_cli(*grid, "hydra/launcher=batched", f"hydra.sweep.dir={tmp_path / 'b'}",
                      timeout=600)  # fmt: skip
    assert basic.returncode == batched.returncode == 0, batched.stderr
    assert "jobs 0, 1, 2, 3: mlp, trained as one stack of 4" in batched.stdout
    for job in "0123":
        a, b = (
            json.loads((tmp_path / s / job / "metrics.json").read_text()) for s in ("basic", "b")
        )
        assert b["device"].startswith("cuda") and b["status"] == "completed"
        assert b["best"]["value"] == pytest.approx(a["best"]["value"], rel=1e-3)
