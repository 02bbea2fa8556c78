"""Reload a saved run: evaluate, predict, resume bit for bit, survive Ctrl-C, refuse bad files."""

import csv
import json
import os
import shutil
import signal
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from d2lrun import load_run
from tests.conftest import BIN, run_cli

FAST = ["trainer.progress=false"]
# image_run's run, but for trainer.epochs and dataset.root
IMAGE_RUN = [
    "model=mlp",
    "model.num_hiddens=[32]",
    "trainer.batch_size=16",
    "dataset.download=false",
    *FAST,
]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    from tests.conftest import write_fake_fashion_mnist

    root = write_fake_fashion_mnist(tmp_path_factory.mktemp("fm"))
    run = tmp_path_factory.mktemp("runs") / "mlp"
    r = run_cli(*IMAGE_RUN, "trainer.epochs=2", f"dataset.root={root}", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr
    return run, root


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("csv")
    rng = np.random.default_rng(0)
    n = 200
    size = rng.normal(0, 1, n)
    color = rng.choice(["red", "blue", None], n)
    label = np.where(size + (color == "red") > 0.3, "big", "small")
    size[rng.random(n) < 0.1] = np.nan
    pd.DataFrame({"size": size, "color": color, "label": label}).to_csv(
        tmp / "data.csv", index=False
    )
    run = tmp / "run"
    r = run_cli(
        "dataset=csv",
        f"dataset.path={tmp / 'data.csv'}",
        "dataset.target=label",
        "model=softmax",
        "trainer.epochs=3",
        f"hydra.run.dir={run}",
        *FAST,
    )
    assert r.returncode == 0, r.stderr
    return run, tmp


def test_eval_reproduces_the_final_metrics_exactly(image_run):
    run, _ = image_run
    r = run_cli(f"run={run}", tool="d2lrun-eval")
    assert r.returncode == 0, r.stderr
    final = json.loads((run / "metrics.json").read_text())["final"]
    evaluated = json.loads((run / "eval.json").read_text())
    assert evaluated["val_loss"] == final["val_loss"] and evaluated["val_acc"] == final["val_acc"]
    assert json.loads(r.stdout.splitlines()[0]) == {
        "val_loss": final["val_loss"],
        "val_acc": final["val_acc"],
    }


def test_eval_of_best_checkpoint(image_run, tmp_path):
    """best.pt holds the best epoch (here the first of two): evaluated, it scores that epoch's row
    of metrics.csv exactly, and its weights are those of the same run stopped after that epoch."""
    run, root = image_run
    r = run_cli(f"ckpt={run / 'best.pt'}", tool="d2lrun-eval")
    assert r.returncode == 0, r.stderr
    best = json.loads((run / "metrics.json").read_text())["best"]
    with open(run / "metrics.csv") as f:
        row = next(row for row in csv.DictReader(f) if int(row["epoch"]) == best["epoch"])
    assert best["metric"] == "val_acc" and best["value"] == float(row["val_acc"])
    assert json.loads(r.stdout.splitlines()[0]) == {
        "val_loss": float(row["val_loss"]),
        "val_acc": float(row["val_acc"]),
    }
    stopped = tmp_path / "stopped"
    r = run_cli(
        *IMAGE_RUN, f"trainer.epochs={best['epoch']}", f"dataset.root={root}",
        f"hydra.run.dir={stopped}",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    saved = torch.load(run / "best.pt", weights_only=True)
    expected = torch.load(stopped / "model.pt", weights_only=True)
    assert saved["epoch"] == best["epoch"] and list(saved["model"]) == list(expected)
    assert all(torch.equal(saved["model"][k], expected[k]) for k in expected)


def test_load_run_predicts_the_test_images_with_the_runs_accuracy(image_run):
    """The run's own test images, as raw uint8 (N, 28, 28): predictions score exactly the run's
    val_acc."""
    from torchvision.datasets import FashionMNIST

    run, root = image_run
    loaded = load_run(run)
    assert not loaded.model.training
    test = FashionMNIST(str(root), train=False)
    preds = loaded.predict(test.data)
    truth = [loaded.spec.class_names[i] for i in test.targets]
    accuracy = sum(p == t for p, t in zip(preds, truth, strict=True)) / len(truth)
    assert (
        accuracy == json.loads((run / "metrics.json").read_text())["final"]["val_acc"] > 0.2
    )  # chance: 0.1
    assert loaded.predict(test.data[0]) == preds[:1]  # one image (28, 28)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_predict_command_takes_npy_and_pt_images(image_run, tmp_path, suffix):
    from torchvision.datasets import FashionMNIST

    run, root = image_run
    test = FashionMNIST(str(root), train=False)
    path = tmp_path / f"images{suffix}"
    np.save(path, test.data.numpy()) if suffix == ".npy" else torch.save(test.data, path)
    r = run_cli(
        f"run={run}", f"input={path}", f"output={tmp_path / 'out.csv'}", tool="d2lrun-predict"
    )
    assert r.returncode == 0, r.stderr
    assert pd.read_csv(tmp_path / "out.csv")["prediction"].tolist() == load_run(run).predict(
        test.data
    )
    torch.save(torch.zeros(2, 32, 32, dtype=torch.uint8), path.with_suffix(".pt"))
    r = run_cli(f"run={run}", f"input={path.with_suffix('.pt')}", tool="d2lrun-predict")
    assert r.returncode == 2 and "images must be (N, 28, 28) uint8; got (2, 32, 32)" in r.stderr


def no_color(run, sizes) -> list[str]:
    """The run's model on these sizes (NaN: the training mean) with every color column 0, which is
    how §2.2's one-hot encoding leaves a color it never saw: neither a known one nor missing."""
    stats = run.spec.preprocess
    assert stats["columns"] == ["size", "color_blue", "color_red", "color_nan"]
    mean, std = stats["numeric"]["size"]["mean"], stats["numeric"]["size"]["std"]
    x = torch.zeros(len(sizes), 4)
    x[:, 0] = torch.tensor((np.nan_to_num(sizes, nan=mean) - mean) / std)
    with torch.no_grad():
        return [run.spec.class_names[i] for i in run.model(x).argmax(dim=1).tolist()]


def test_predict_new_csv_rows_with_missing_values_and_unseen_categories(csv_run):
    run, tmp = csv_run
    rows = pd.DataFrame({"size": [2.0, np.nan, -2.0], "color": ["red", "green", None]})
    loaded = load_run(run)
    preds = loaded.predict(rows)
    assert preds == ["big", no_color(loaded, np.array([np.nan]))[0], "small"]
    (tmp / "new.csv").write_text("size,color\n2,red\n,green\n-2,\n")  # the rows above
    r = run_cli(
        f"run={run}", f"input={tmp / 'new.csv'}", f"output={tmp / 'out.csv'}", tool="d2lrun-predict"
    )
    assert r.returncode == 0, r.stderr
    out = pd.read_csv(tmp / "out.csv")
    assert (
        list(out.columns) == ["size", "color", "label"] and out["label"].tolist() == preds
    )  # named after the target
    written = (tmp / "out.csv").read_text().splitlines()  # the inputs as written: 2, not 2.0
    assert [line.rsplit(",", 1)[0] for line in written] == ["size,color", "2,red", ",green", "-2,"]


def test_predictions_go_through_a_link_or_to_stdout_and_a_write_that_fails_names_its_file(
    csv_run, tmp_path
):
    """output=LINK replaced the link with a file, the file it named untouched; output=/dev/stdout
    replaced /dev/stdout itself (as root), nothing printed; output=/proc/x.csv failed naming
    /proc/.x.csv.tmp4172, its Fix hydra.run.dir=DIR, which predict does not read."""
    run, tmp = csv_run
    pd.DataFrame({"size": [2.0], "color": ["red"]}).to_csv(tmp_path / "new.csv", index=False)
    (tmp_path / "target.csv").write_text("old\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "target.csv")
    predict = [f"run={run}", f"input={tmp_path / 'new.csv'}"]
    r = run_cli(*predict, f"output={tmp_path / 'link.csv'}", tool="d2lrun-predict")
    assert r.returncode == 0 and (tmp_path / "link.csv").is_symlink(), r.stderr
    assert (tmp_path / "target.csv").read_text() == "size,color,label\n2.0,red,big\n"
    r = run_cli(*predict, "output=/dev/stdout", tool="d2lrun-predict")
    assert r.returncode == 0 and r.stdout.startswith("size,color,label\n2.0,red,big\n"), r.stderr
    assert os.path.islink("/dev/stdout") or not os.path.isfile("/dev/stdout")
    r = run_cli(*predict, "output=/proc/x.csv", tool="d2lrun-predict")
    assert r.returncode == 1 and r.stderr.startswith("d2lrun-predict: error: ")
    assert "(/proc/x.csv). Fix: write where you may: " in r.stderr  # no disk space to free
    assert "output=FILE for d2lrun-predict." in r.stderr


def test_eval_shows_its_metrics_also_where_it_cannot_write_them(image_run, tmp_path):
    """A run folder that is read-only (shared, archived): d2lrun-eval computed the metrics, then
    failed writing eval.json before printing them."""
    run = tmp_path / "run"
    shutil.copytree(image_run[0], run, ignore=shutil.ignore_patterns("eval*.json"))
    (run / "eval.json").mkdir()  # cannot be written, even by root
    r = run_cli(f"run={run}", tool="d2lrun-eval")
    assert r.returncode == 1 and "val_acc" in json.loads(r.stdout.splitlines()[0]), r.stderr
    assert r.stderr.startswith(f"d2lrun-eval: error: Is a directory ({run / 'eval.json'})")


def test_an_unseen_category_turns_on_no_known_categorys_column(csv_run):
    """Over sizes -1 to 1, rows of a color new since training are predicted as with every color
    column 0; that differs, at some sizes, from predicting them as red, blue or missing."""
    run = load_run(csv_run[0])
    sizes = np.linspace(-1, 1, 201)
    expected = no_color(run, sizes)
    assert run.predict(pd.DataFrame({"size": sizes, "color": "green"})) == expected
    for known in ("red", "blue", None):
        assert run.predict(pd.DataFrame({"size": sizes, "color": known})) != expected, known


def test_resume_is_bit_for_bit(tmp_path, fake_fmnist):
    """4 epochs straight == 2 epochs, then resumed to 4 (with dropout, so RNG state matters)."""
    common = [
        "model=mlp",
        "model.num_hiddens=[32]",
        "regularizer=dropout",
        "optim.momentum=0.9",
        "trainer.batch_size=16",
        f"dataset.root={fake_fmnist}",
        "dataset.download=false",
        *FAST,
    ]
    assert (
        run_cli(*common, "trainer.epochs=4", f"hydra.run.dir={tmp_path / 'full'}").returncode == 0
    )
    assert (
        run_cli(*common, "trainer.epochs=2", f"hydra.run.dir={tmp_path / 'half'}").returncode == 0
    )
    r = run_cli(
        f"resume={tmp_path / 'half'}",
        "trainer.epochs=4",
        f"hydra.run.dir={tmp_path / 'resumed'}",
        *FAST,
    )
    assert r.returncode == 0, r.stderr
    assert "from epoch 2" in r.stdout
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert (
        summary["resumed_from"].startswith(str(tmp_path / "half"))
        and summary["epochs_completed"] == 4
    )


@pytest.mark.parametrize(
    "override,key",
    [
        ("model=lenet", "model"),
        ("dataset.num_train=10", "dataset.num_train"),
        ("seed=3", "seed"),
        ("optim=adam", "optim"),
    ],
)
def test_resume_refuses_overrides_that_change_the_model_or_data(tmp_path, override, key):
    assert run_cli("trainer.epochs=1", f"hydra.run.dir={tmp_path / 'a'}", *FAST).returncode == 0
    r = run_cli(f"resume={tmp_path / 'a'}", override, f"hydra.run.dir={tmp_path / 'b'}", *FAST)
    assert r.returncode == 2 and f"cannot change {key}" in r.stderr and "Traceback" not in r.stderr
    # In its own folder: refused, the run's .hydra/ still records its own config, not the refused
    record = {p.name: p.read_bytes() for p in (tmp_path / "a" / ".hydra").iterdir()}
    r = run_cli(f"resume={tmp_path / 'a'}", override, f"hydra.run.dir={tmp_path / 'a'}", *FAST)
    assert r.returncode == 2 and f"cannot change {key}" in r.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "a" / ".hydra").iterdir()} == record


def long_run(tmp_path, *extra):
    """A synthetic run long enough to interrupt: many epochs over 200,000 examples."""
    cmd = [
        str(BIN / "d2lrun"),
        "dataset.num_train=200000",
        "dataset.num_val=1000",
        "trainer.batch_size=100",
        "trainer.epochs=1000",
        f"hydra.run.dir={tmp_path / 'run'}",
        *FAST,
        *extra,
    ]
    # As in a terminal, Ctrl-C's SIGINT is handled: a shell without job control starts background
    # commands with SIGINT ignored, which the test run (and d2lrun under it) would inherit.
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=restore)  # fmt: skip


def wait_for_epoch(proc, epoch=1):
    for line in proc.stdout:
        if line.startswith(f"epoch {epoch:>4}/"):
            return
    raise AssertionError(proc.stderr.read())


def test_ctrl_c_saves_and_prints_the_resume_command(tmp_path):
    proc = long_run(tmp_path)
    wait_for_epoch(proc, 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"Resume with: d2lrun resume={tmp_path / 'run'}" in err and "Traceback" not in err
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["status"] == "interrupted"
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] >= 1


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: torch.save({"model": Evil()}, p), "refused: it would run code"),
        (lambda p: p.write_bytes(b"\x00" * 10), "truncated or not a checkpoint"),
        (lambda p: None, "no such checkpoint"),
    ],
)
def test_bad_checkpoint_files(tmp_path, make, message):
    path = tmp_path / "x.pt"
    make(path)
    marker = tmp_path / "pwned"
    r = run_cli(f"ckpt={path}", tool="d2lrun-eval", env={"PWN": str(marker)})
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()


def test_run_dir_without_checkpoint(tmp_path):
    r = run_cli(f"run={tmp_path}", tool="d2lrun-eval")
    assert r.returncode == 2 and "has no last.pt" in r.stderr


class Evil:
    def __reduce__(self):
        return (os.system, ("touch $PWN",))


def test_other_architecture_is_named(tmp_path, image_run):
    run, _ = image_run
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["model"] = {"0.weight": torch.zeros(1, 2), "0.bias": torch.zeros(1)}
    torch.save(ckpt, tmp_path / "other.pt")
    r = run_cli(f"ckpt={tmp_path / 'other.pt'}", tool="d2lrun-eval")
    assert (
        r.returncode == 2
        and "another architecture: missing keys" in r.stderr
        and "unexpected keys" in r.stderr
    )


def book_nets():
    """The book's own nn.Sequential definitions (§3.3, §3.7, §4.3, §6.6)."""
    return {
        "linreg": nn.Sequential(nn.Linear(2, 1)),
        "softmax": nn.Sequential(nn.Flatten(), nn.Linear(784, 10)),
        "mlp": nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10)),
        "lenet": nn.Sequential(
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
        ),
    }


@pytest.mark.parametrize("name", ["linreg", "softmax", "mlp", "lenet"])
def test_model_pt_loads_into_the_books_own_definitions(tmp_path, fake_fmnist, name):
    data = [] if name == "linreg" else [f"dataset.root={fake_fmnist}", "dataset.download=false"]
    run = tmp_path / name
    r = run_cli(f"model={name}", "trainer.epochs=1", *data, f"hydra.run.dir={run}", *FAST)
    assert r.returncode == 0, r.stderr
    net = book_nets()[name]
    net.load_state_dict(torch.load(run / "model.pt", weights_only=True), strict=True)
    ours = load_run(run).model
    x = torch.randn(4, 2) if name == "linreg" else torch.rand(4, 1, 28, 28)
    net.eval()
    assert torch.allclose(net(x), ours(x))


def test_resume_from_a_bare_state_dict_points_to_the_run(tmp_path):
    assert run_cli("trainer.epochs=1", f"hydra.run.dir={tmp_path / 'a'}", *FAST).returncode == 0
    r = run_cli(f"resume={tmp_path / 'a' / 'model.pt'}", f"hydra.run.dir={tmp_path / 'b'}", *FAST)
    assert (
        r.returncode == 2 and f"Fix: give the run folder {tmp_path / 'a'} (its last.pt)" in r.stderr
    )


def test_predict_without_input_says_it_is_required(image_run):
    run, _ = image_run
    r = run_cli(f"run={run}", tool="d2lrun-predict")
    assert r.returncode == 2, r.stderr
    assert r.stderr == "d2lrun-predict: error: input is required. Fix: input=new.csv.\n"


def test_eval_of_a_run_folder_without_run_is_told_run_and_the_fix_works(image_run):
    run, _ = image_run
    r = run_cli(str(run), tool="d2lrun-eval", cwd=run.parent)
    assert r.returncode == 2
    assert r.stderr == f"d2lrun-eval: error: {run} is not an override. Fix: run={run.name}.\n"
    assert run_cli(f"run={run.name}", tool="d2lrun-eval", cwd=run.parent).returncode == 0
