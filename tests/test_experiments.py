"""The book's presets: each composes to the book's protocol and trains (one epoch, tiny data); the
reproduce tool judges and tabulates them; and, marked slow, the whole set reaches the book's numbers
on the real data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from d2lrun.config import EXPERIMENTS_DIR, compose
from tests.conftest import KAGGLE_HOUSE as KAGGLE
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))  # experiments/reproduce.py is not in the package
import reproduce
from reproduce import EXPERIMENTS, Check, Experiment, Result, judge, run_experiment

PRESET_DIR = EXPERIMENTS_DIR
PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
FMNIST = {"dataset.name": "fashion_mnist", "trainer.batch_size": 256, "trainer.epochs": 10}
SYNTHETIC = {
    "dataset.name": "synthetic",
    "dataset.w": [2, -3.4],
    "dataset.b": 4.2,
    "dataset.noise": 0.01,
    "dataset.num_train": 1000,
    "init.name": "normal",
    "init.std": 0.01,
    "optim.lr": 0.03,
    "trainer.epochs": 3,
    "trainer.batch_size": 10,
    "model.name": "linreg",
}
WEIGHT_DECAY = {
    "dataset.w": 0.01,
    "dataset.b": 0.05,
    "dataset.num_inputs": 200,
    "dataset.num_train": 20,
    "dataset.num_val": 100,
    "init.name": "normal",
    "init.std": 1.0,
    "optim.lr": 0.003,
    "optim.weight_decay": 3,
    "regularizer.name": "l2",
    "trainer.epochs": 100,
    "trainer.batch_size": 5,
}
SOFTMAX = {
    **FMNIST,
    "model.name": "softmax",
    "init.name": "normal",
    "init.std": 0.01,
    "optim.lr": 0.1,
}
MLP = {
    **FMNIST,
    "model.name": "mlp",
    "model.num_hiddens": [256],
    "model.activation": "relu",
    "init.name": "normal",
    "init.std": 0.01,
    "optim.lr": 0.1,
    "regularizer.name": "none",
}
DROPOUT = {
    **FMNIST,
    "model.name": "mlp",
    "model.num_hiddens": [256, 256],
    "regularizer.name": "dropout",
    "model.dropout": [0.2, 0.5],
    "optim.lr": 0.5,
}
POLY = {
    "dataset.name": "polynomial",
    "dataset.max_degree": 20,
    "dataset.true_w": [5, 1.2, -3.4, 5.6],
    "dataset.num_train": 100,
    "dataset.num_val": 100,
    "dataset.noise": 0.1,
    "model.name": "linreg",
    "model.bias": False,
    "init.name": "default",
    "optim.name": "sgd",
    "optim.lr": 0.01,
    "trainer.batch_size": 10,
}
# The book's protocol, key by key, written out independently of the preset files.
PROTOCOL = {
    "ch3_linreg_scratch": {**SYNTHETIC, "model.impl": "scratch"},
    "ch3_linreg_concise": {**SYNTHETIC, "model.impl": "concise"},
    "ch3_softmax_scratch": {**SOFTMAX, "model.impl": "scratch"},
    "ch3_softmax_concise": {**SOFTMAX, "model.impl": "concise"},
    "ch4_mlp_scratch": {**MLP, "model.impl": "scratch"},
    "ch4_mlp_concise": {**MLP, "model.impl": "concise"},
    "ch4_weight_decay": {**WEIGHT_DECAY, "model.impl": "scratch"},
    "ch4_weight_decay_concise": {**WEIGHT_DECAY, "model.impl": "concise"},
    "ch4_dropout_scratch": {**DROPOUT, "model.impl": "scratch", "init.name": "default"},
    "ch4_dropout_concise": {
        **DROPOUT,
        "model.impl": "concise",
        "init.name": "normal",
        "init.std": 0.01,
    },
    "ch6_lenet": {
        **FMNIST,
        "model.name": "lenet",
        "model.variant": "classic",
        "model.batch_norm": False,
        "init.name": "xavier",
        "init.distribution": "uniform",
        "optim.name": "sgd",
        "optim.lr": 0.9,
    },
    "lenet_modern": {
        **FMNIST,
        "model.name": "lenet",
        "model.variant": "modern",
        "init.name": "xavier",
    },
    "ch4_poly_third": {**POLY, "dataset.num_features": 4, "trainer.epochs": 400},
    "ch4_poly_underfit": {**POLY, "dataset.num_features": 2, "trainer.epochs": 400},
    "ch4_poly_overfit": {**POLY, "dataset.num_features": 20, "trainer.epochs": 1500},
    "ch4_kaggle_house": {
        "dataset.name": "kaggle_house",
        "dataset.folds": 5,
        "dataset.drop": ["Id"],
        "dataset.statistics": "train_and_test",
        "dataset.standardize_target": False,
        "model.name": "linreg",
        "model.bias": True,
        "init.name": "default",
        "optim.name": "adam",
        "optim.lr": 5,
        "optim.weight_decay": 0,
        "trainer.epochs": 100,
        "trainer.batch_size": 64,
        "trainer.log_rmse": True,
    },
    "ch6_learn_kernel": {
        "dataset.name": "kernel",
        "dataset.kernel": [1, -1],
        "model.name": "conv2d",
        "model.kernel_size": [1, 2],
        "model.bias": False,
        "init.name": "default",
        "optim.name": "sgd",
        "optim.lr": 0.03,
        "trainer.epochs": 10,
        "trainer.batch_size": 1,
    },
}
# Out of tolerance on the real data, and why (experiments/README.md, "Notes on the table").
KNOWN_MISSES = {
    "ch4_poly_underfit": (
        "a line fitted to a cubic depends on the sampled x: seeds 0-5 give w[0] 3.18-3.37, "
        "w[1] 3.30-5.44 around the population fit [3.3, 4.0]; "
        "the book's few runs gave 3.4-3.6, 3.6-4.0"
    ),
}
# What experiments/README.md documents for that miss at seed 0 (to the digits it prints), judged
# instead of the book's range: a change to the data, the model or the loop moves it.
UNDERFIT_SEED_0 = {"w0": 3.18, "w1": 3.30}


def check_known_miss(result) -> None:
    """A preset that misses the book for a documented reason reaches its documented numbers."""
    if result.experiment.name == "ch4_poly_underfit":
        got = {k: round(result.values[k], 2) for k in UNDERFIT_SEED_0}
        assert got == UNDERFIT_SEED_0, (
            f"ch4_poly_underfit at seed 0: {got}, documented {UNDERFIT_SEED_0}"
        )


def compose_preset(name: str, *overrides: str):
    return compose([f"experiment={name}", *overrides])


def test_every_preset_is_tested_and_reproduced():
    assert PRESETS == sorted(PROTOCOL)
    assert {e.preset for e in EXPERIMENTS} == set(PRESETS)
    assert len({e.name for e in EXPERIMENTS}) == len(EXPERIMENTS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_states_its_protocol_and_the_books_numbers(name):
    text = (PRESET_DIR / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    header = text.split("defaults:")[0]
    assert "Protocol:" in header and ("Book" in header or "Target" in header)
    assert f"experiment={name}" in header  # how to run it


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_to_the_books_protocol(name):
    cfg = compose_preset(name)
    got = {
        key: OmegaConf.to_object(v) if OmegaConf.is_config(v := OmegaConf.select(cfg, key)) else v
        for key in PROTOCOL[name]
    }
    assert got == PROTOCOL[name]


def test_command_line_still_wins_over_a_preset():
    cfg = compose_preset("ch6_lenet", "optim.lr=0.1", "trainer.epochs=2", "init=kaiming")
    assert (cfg.optim.lr, cfg.trainer.epochs, cfg.init.name) == (0.1, 2, "kaiming")
    assert compose_preset("ch4_weight_decay", "optim.weight_decay=0").optim.weight_decay == 0


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda e: e.name)
def test_preset_trains_one_epoch_on_tiny_data(experiment, fake_fmnist, tmp_path, request):
    data = {"fashion_mnist": [f"dataset.root={fake_fmnist}", "dataset.download=false"]}
    if experiment.preset == "ch4_kaggle_house":
        data["kaggle_house"] = [
            f"dataset.root={request.getfixturevalue('kaggle_house')}",
            "dataset.download=false",
        ]
    result = run_experiment(
        experiment,
        tmp_path,
        ["device=cpu", "trainer.progress=false", "trainer.epochs=1"],
        data,
        log=lambda line: None,
    )
    assert result.status == "completed"
    run = Path(result.run_dir)
    if experiment.preset == "ch4_kaggle_house":  # k-fold: one run folder per fold
        run = run / "fold_4"
    assert (run / "model.pt").exists() and json.loads((run / "metrics.json").read_text())[
        "epochs_completed"
    ] == 1
    one_epoch = [
        c.metric for c in experiment.checks if "@" not in c.metric or c.metric.endswith("@1")
    ]
    assert all(m in result.values for m in one_epoch)


# Not §4.10's 5-fold Kaggle protocol either (40 s here): `make book` judges it with the others.
FAST_PRESETS = [
    e
    for e in EXPERIMENTS
    if not e.preset.startswith(
        ("ch3_softmax", "ch4_mlp", "ch4_dropout", "ch6_lenet", "lenet_modern", "ch4_kaggle_house")
    )
]


@pytest.mark.parametrize("experiment", FAST_PRESETS, ids=lambda e: e.name)
def test_presets_of_seconds_reach_the_books_numbers(experiment, tmp_path):
    """The whole protocol of every preset that takes seconds on CPU, judged against the book in the
    default run."""
    result = run_experiment(
        experiment, tmp_path, ["device=cpu", "trainer.progress=false"], {}, log=lambda line: None
    )
    assert result.status == "completed"
    if experiment.name in KNOWN_MISSES:  # explained in experiments/README.md
        check_known_miss(result)
    else:
        assert result.ok, reproduce.table([result])


@pytest.mark.parametrize(
    "check,value,ok",
    [
        (
            Check("test acc", "val_acc", (0.779, 0.789), "acc"),
            0.760,
            True,
        ),  # within 0.02 of either edition
        (Check("test acc", "val_acc", (0.779, 0.789), "acc"), 0.758, False),
        (
            Check("test acc", "val_acc", (0.82, 0.84), "acc", span=True),
            0.95,
            True,
        ),  # better is fine
        (
            Check("train loss", "train_loss", (0.469, 0.455), "loss"),
            0.53,
            True,
        ),  # within 15% of 0.469
        (Check("train loss", "train_loss", (0.469, 0.455), "loss"), 0.30, False),
        (Check("‖w‖₂", "w_norm", (0.35,), "norm"), 0.384, True),
        (Check("‖w‖₂", "w_norm", (0.35,), "norm"), 0.386, False),
        (Check("test acc", "val_acc", (0.89,), "at_least"), 0.889, False),
        (Check("error", "b_error", (1e-4, 6e-4), "info", span=True), 1.0, None),
    ],
)
def test_tolerance_rules(check, value, ok):
    assert judge(check, value) is ok


def test_table_rows_and_readme_block(tmp_path):
    good = Experiment("a", "proto a", (Check("test acc", "val_acc", (0.83,), "acc"),))
    bad = Experiment("b", "proto b", (Check("‖w‖₂", "w_norm", (0.35,), "norm"),))
    results = [
        Result(good, "completed", {"val_acc": 0.824}, 2.0),
        Result(bad, "completed", {"w_norm": 0.5}, 1.0),
        Result(good, "diverged", {}, 0.5),
    ]
    rows = reproduce.table(results).splitlines()[2:]
    assert rows[0] == "| `a` | proto a | test acc 0.83 | 0.824 | 2.0 | yes |"
    assert "**no**: ‖w‖₂ 0.5 is 42.86% off the book's 0.35 (tolerance 10%)" in rows[1]
    assert "| diverged |" in rows[2] and rows[2].endswith("**no** |")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{reproduce.BEGIN}\nold table\n{reproduce.END}\nnotes\n")
    reproduce.write_readme(readme, results, "cpu")
    text = readme.read_text()
    assert (
        text.startswith("intro\n")
        and text.endswith(f"{reproduce.END}\nnotes\n")
        and "old table" not in text
    )
    assert "1 of 3 runs within tolerance" in text
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="has no <!-- reproduce:begin -->"):
        reproduce.write_readme(readme, results, "cpu")


def test_reproduce_command_only_and_unknown(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"{reproduce.BEGIN}\n{reproduce.END}\n")
    args = ["--out", str(tmp_path / "out"), "--readme", str(readme)]
    assert reproduce.main(["--only", "ch3_linreg_nope", *args]) == 2
    assert "unknown preset(s) ch3_linreg_nope" in capsys.readouterr().err
    assert reproduce.main(["--only", "ch3_linreg_concise", *args]) == 0
    out = capsys.readouterr().out
    assert "| `ch3_linreg_concise` |" in out and "1 of 1 within tolerance" in out
    assert (
        readme.read_text() == f"{reproduce.BEGIN}\n{reproduce.END}\n"
    )  # --only leaves the table alone
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved[0]["name"] == "ch3_linreg_concise" and saved[0]["ok"] is True


@pytest.mark.slow
def test_the_book_is_reproduced(real_fmnist, tmp_path):
    """Every preset, full protocol, real Fashion-MNIST on CPU (a few minutes), against the book's
    numbers."""
    data = {
        "fashion_mnist": [f"dataset.root={real_fmnist}"],
        "kaggle_house": [f"dataset.root={KAGGLE}", "dataset.download=false"],
    }
    results = [
        run_experiment(
            e, tmp_path, ["device=cpu", "trainer.progress=false"], data, log=lambda line: None
        )
        for e in EXPERIMENTS
    ]
    print(reproduce.table(results))
    assert all(r.status == "completed" for r in results)
    misses = {r.experiment.name for r in results if not r.ok}
    assert misses <= set(KNOWN_MISSES), f"out of tolerance: {sorted(misses - set(KNOWN_MISSES))}"
    for result in results:
        check_known_miss(result)
