"""Reloading composes the saved run again through Hydra: from any folder, after the data moved, with
each command's own --help; and a misspelt preset is refused like a misspelt model."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import run_cli, write_fake_fashion_mnist

FAST = ["trainer.progress=false"]


def one_error_line(r, prog="d2lrun") -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), r.stderr
    return lines[0]


@pytest.fixture
def folders(tmp_path):
    """`start` is where the run was trained, `elsewhere` where the user is later."""
    (tmp_path / "start").mkdir()
    (tmp_path / "elsewhere").mkdir()
    return tmp_path / "start", tmp_path / "elsewhere"


def test_resume_and_eval_after_the_fashion_mnist_files_moved(tmp_path, folders):
    start, elsewhere = folders
    write_fake_fashion_mnist(start / "A")
    common = ["model=softmax", "trainer.batch_size=16", "dataset.download=false", *FAST]
    r = run_cli(
        *common, "dataset.root=A", "trainer.epochs=2", "hydra.run.dir=../runs/half", cwd=start
    )
    assert r.returncode == 0, r.stderr
    r = run_cli(
        *common, "dataset.root=A", "trainer.epochs=4", "hydra.run.dir=../runs/full", cwd=start
    )
    assert r.returncode == 0, r.stderr
    shutil.move(start / "A", tmp_path / "B")

    r = run_cli(
        "resume=../runs/half",
        "dataset.root=../B",
        "trainer.epochs=4",
        "hydra.run.dir=../runs/resumed",
        *FAST,
        cwd=elsewhere,
    )
    assert r.returncode == 0, r.stderr
    assert "resuming ../runs/half from epoch 2" in r.stdout
    full = torch.load(tmp_path / "runs" / "full" / "model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "runs" / "resumed" / "model.pt", weights_only=True)
    assert all(torch.equal(full[k], resumed[k]) for k in full)  # bit for bit, data moved or not

    r = run_cli("run=../runs/full", "dataset.root=../B", tool="d2lrun-eval", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    final = json.loads((tmp_path / "runs" / "full" / "metrics.json").read_text())["final"]
    assert json.loads(r.stdout.splitlines()[0]) == {
        "val_loss": final["val_loss"],
        "val_acc": final["val_acc"],
    }
    r = run_cli(
        "run=runs/full",
        "dataset.root=../B",
        "device=cpu",
        "dataset.download=false",
        tool="d2lrun-eval",
        cwd=tmp_path,
    )
    assert r.returncode == 2  # ../B, seen from tmp_path, does not exist
    assert "Fashion-MNIST is not in" in one_error_line(r, "d2lrun-eval")


def table(path, n=120, seed=0):
    rng = np.random.default_rng(seed)
    size = rng.normal(0, 1, n)
    color = rng.choice(["red", "blue", None], n)
    frame = pd.DataFrame(
        {
            "size": size,
            "color": color,
            "label": np.where(size + (color == "red") > 0.3, "big", "small"),
        }
    )
    frame.to_csv(path, index=False)
    return frame


def test_a_csv_run_given_by_a_relative_path_is_evaluated_and_predicted_from_any_folder(
    tmp_path, folders
):
    start, elsewhere = folders
    table(start / "house.csv")
    r = run_cli(
        "dataset=csv",
        "dataset.path=house.csv",
        "dataset.target=label",
        "model=softmax",
        "trainer.epochs=2",
        "hydra.run.dir=../runs/csv",
        *FAST,
        cwd=start,
    )
    assert r.returncode == 0, r.stderr
    final = json.loads((tmp_path / "runs" / "csv" / "metrics.json").read_text())["final"]

    r = run_cli(
        "run=../runs/csv", tool="d2lrun-eval", cwd=elsewhere
    )  # the path it was trained with
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["val_acc"] == final["val_acc"]

    shutil.move(start / "house.csv", elsewhere / "moved.csv")
    r = run_cli("run=../runs/csv", tool="d2lrun-eval", cwd=elsewhere)
    assert r.returncode == 2 and "no such file. Fix: dataset.path=" in one_error_line(
        r, "d2lrun-eval"
    )
    r = run_cli("run=../runs/csv", "dataset.path=moved.csv", tool="d2lrun-eval", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["val_acc"] == final["val_acc"]

    table(elsewhere / "new.csv", n=5, seed=1).drop(columns="label").to_csv(
        elsewhere / "new.csv", index=False
    )
    r = run_cli(
        "run=../runs/csv",
        "dataset.path=moved.csv",
        "input=new.csv",
        "output=out.csv",
        tool="d2lrun-predict",
        cwd=elsewhere,
    )
    assert r.returncode == 0, r.stderr
    assert pd.read_csv(elsewhere / "out.csv")["label"].isin(["big", "small"]).all()

    r = run_cli(
        "resume=../runs/csv",
        "dataset.path=moved.csv",
        "trainer.epochs=3",
        "hydra.run.dir=../runs/more",
        *FAST,
        cwd=elsewhere,
    )
    assert r.returncode == 0, r.stderr
    assert (
        json.loads((tmp_path / "runs" / "more" / "metrics.json").read_text())["epochs_completed"]
        == 3
    )


@pytest.mark.parametrize(
    "args,expected",
    [
        (["dataset.path=other.csv", "dataset.target=size"], "cannot change dataset.target"),
        (  # it advised dataset=fashion_mnist, which a reloaded run cannot choose
            ["dataset.root=data"],
            "dataset.root is not a key of the run's dataset=csv (its keys: name, target, drop, "
            "val_fraction, max_categories, standardize_target, folds, shuffle_folds, path, task, "
            "standardize). Fix: drop dataset.root.",
        ),
        (  # its Fix, dataset.path=..., failed too: the run's own path was not a key of dataset=X
            ["dataset=kaggle_house"],
            "cannot change dataset.name (the run has dataset.name=csv, asked "
            "dataset.name=kaggle_house). Fix: drop dataset=kaggle_house, or start a new run.",
        ),
        (
            ["model=mlp"],
            "cannot change model.name (the run has model.name=softmax, asked model.name=mlp). "
            "Fix: drop model=mlp",
        ),
    ],
)
def test_reload_still_refuses_what_would_change_the_weights_meaning(
    tmp_path, folders, args, expected
):
    start, elsewhere = folders
    table(start / "house.csv")
    r = run_cli(
        "dataset=csv",
        "dataset.path=house.csv",
        "dataset.target=label",
        "model=softmax",
        "trainer.epochs=1",
        "hydra.run.dir=../runs/csv",
        *FAST,
        cwd=start,
    )
    assert r.returncode == 0, r.stderr
    r = run_cli("resume=../runs/csv", *args, "hydra.run.dir=../runs/b", *FAST, cwd=elsewhere)
    assert r.returncode == 2 and expected in one_error_line(r)
    assert not (tmp_path / "runs" / "b").exists()


def test_a_misspelt_preset_is_refused_and_lists_the_presets(tmp_path):
    r = run_cli("experiment=ch6_lenett", f"hydra.run.dir={tmp_path / 'run'}")
    line = one_error_line(r)
    assert r.returncode == 2 and "Unknown experiment 'ch6_lenett'" in line
    assert "ch3_linreg_concise" in line and "Fix: experiment=ch6_lenet." in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args,reason",
    [([], "the following arguments are required: DIR"), (["a", "b"], "unrecognized arguments: b")],
)
def test_report_without_one_folder_says_so_in_one_line(args, reason):
    """It printed argparse's usage line too, and no Fix."""
    r = run_cli(*args, tool="d2lrun-report")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (
        f"d2lrun-report: error: {reason}. Fix: d2lrun-report outputs/multirun/DATE/TIME.\n"
    )


@pytest.mark.parametrize(
    "tool,shows",
    [
        (
            "d2lrun-eval",
            [
                "Usage: d2lrun-eval run=RUN_DIR",
                "ckpt=FILE",
                "device=cpu",
                "dataset.root=DIR",
                "dataset.path=FILE",
                "d2lrun-eval run=outputs/2026-11-26/10-00-00",
            ],
        ),
        (
            "d2lrun-predict",
            [
                "Usage: d2lrun-predict run=RUN_DIR input=FILE",
                "output=FILE",
                "ckpt=FILE",
                "dataset.root=DIR",
                "d2lrun-predict run=outputs/2026-11-26/house input=",
            ],
        ),
        (
            "d2lrun-report",
            [
                "usage: d2lrun-report [-h] [--version] DIR",
                "example: d2lrun-report outputs/multirun/",
            ],
        ),
    ],
)
def test_each_command_has_its_own_help(tool, shows):
    r = run_cli("--help", tool=tool)
    assert r.returncode == 0, r.stderr
    for text in shows:
        assert text in r.stdout, text
    for training_only in ("model:", "experiment:", "regularizer:", "powered by Hydra"):
        assert training_only not in r.stdout


def test_dropout_l1_and_weight_decay_in_one_run(tmp_path):
    run = tmp_path / "run"
    r = run_cli(
        "model=mlp",
        "dataset=synthetic",
        "model.num_hiddens=[8,8]",
        "regularizer=dropout",
        "model.dropout=[0.1,0.3]",
        "regularizer.lambd=1e-3",
        "optim.weight_decay=1e-3",
        "optim.lr=0.05",
        "trainer.epochs=2",
        f"hydra.run.dir={run}",
        *FAST,
    )
    assert r.returncode == 0, r.stderr
    config = torch.load(run / "last.pt", weights_only=True)["config"]
    assert (
        config["model"]["dropout"],
        config["regularizer"]["lambd"],
        config["optim"]["weight_decay"],
    ) == ([0.1, 0.3], 1e-3, 1e-3)
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
