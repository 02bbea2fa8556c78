"""Tables as the book's §4.10 uses them, through the installed commands: k-fold cross-validation,
log RMSE, the Kaggle submission, and regression with the default settings on real-looking tables."""

import csv
import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_cli

FAST = ["trainer.progress=false"]


def one_error_line(r, prog="d2lrun") -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), r.stderr
    return lines[0]


def cars(path, n=300, seed=0):
    """A real-looking table: a numeric target in its own units (mpg, ~10-46), NaNs, text columns,
    an id."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(3000, 800, n)
    origin = rng.choice(["usa", "europe", "japan", None], n)
    year = rng.integers(70, 83, n).astype(float)
    mpg = (
        46
        - 0.008 * (weight - 1600)
        + 0.6 * (year - 70)
        + np.where(origin == "japan", 3, 0)
        + rng.normal(0, 1.5, n)
    )
    weight[rng.random(n) < 0.1] = np.nan
    frame = pd.DataFrame(
        {
            "id": [f"car{i}" for i in range(n)],
            "weight": weight,
            "origin": origin,
            "year": year,
            "name": [f"model {i}" for i in range(n)],
            "mpg": mpg.clip(9, 47),
        }
    )
    frame.to_csv(path, index=False)
    return frame


def summary_of(run):
    return json.loads((run / "metrics.json").read_text())


def test_mlp_with_its_defaults_learns_a_real_regression_table(tmp_path):
    frame = cars(tmp_path / "cars.csv")
    run = tmp_path / "run"
    r = run_cli(
        "dataset=csv",
        f"dataset.path={tmp_path / 'cars.csv'}",
        "dataset.target=mpg",
        "dataset.drop=[id]",
        "model=mlp",
        f"hydra.run.dir={run}",
        *FAST,
    )
    assert r.returncode == 0, r.stderr
    final = summary_of(run)["final"]
    baseline = frame["mpg"].std(ddof=0)  # the RMSE of always predicting the mean
    assert np.isfinite(final["val_rmse"]) and final["val_rmse"] < 0.5 * baseline, (final, baseline)
    # Predictions come back in miles per gallon, named after the target, with the id carried.
    frame.drop(columns="mpg").head(5).to_csv(tmp_path / "new.csv", index=False)
    r = run_cli(
        f"run={run}",
        f"input={tmp_path / 'new.csv'}",
        f"output={tmp_path / 'out.csv'}",
        tool="d2lrun-predict",
    )
    assert r.returncode == 0, r.stderr
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["id", "mpg"] and out["id"].tolist() == frame["id"].head(5).tolist()
    assert (abs(out["mpg"] - frame["mpg"].head(5)) < 4 * final["val_rmse"]).all()


def test_a_sweep_over_a_csv_has_its_swept_keys_as_columns_and_its_heatmap(tmp_path):
    """dataset.path and .target (??? in csv.yaml) were taken for keys only swept options have:
    they were swept as choice(...), table columns and Optuna parameters, and no heatmap.png."""
    cars(tmp_path / "cars.csv", n=90)
    s = tmp_path / "sweep"
    r = run_cli("-m", "dataset=csv", f"dataset.path={tmp_path / 'cars.csv'}", "dataset.target=mpg",
                "optim.lr=0.01,0.1", "optim.weight_decay=0,1e-3", "trainer.epochs=1",
                f"hydra.sweep.dir={s}", *FAST)  # fmt: skip
    assert r.returncode == 0, r.stderr
    with open(s / "summary.csv") as f:
        assert next(csv.reader(f))[:3] == ["job", "optim.lr", "optim.weight_decay"]
    assert (s / "heatmap.png").exists() and "choice(" not in (s / "multirun.yaml").read_text()


def test_k_fold_trains_one_run_per_fold_and_reports_their_mean(tmp_path):
    cars(tmp_path / "cars.csv", n=90)
    run = tmp_path / "run"
    r = run_cli(
        "dataset=csv",
        f"dataset.path={tmp_path / 'cars.csv'}",
        "dataset.target=mpg",
        "dataset.drop=[id]",
        "dataset.folds=3",
        "trainer.log_rmse=true",
        "trainer.epochs=2",
        f"hydra.run.dir={run}",
        *FAST,
    )
    assert r.returncode == 0, r.stderr
    assert (
        "3-fold cross-validation:" in r.stdout
        and r.stdout.count("linreg on csv (60 train / 30 val)") == 3
    )
    kfold = summary_of(run)["kfold"]
    folds = [summary_of(run / f"fold_{i}")["final"] for i in range(3)]
    assert kfold["k"] == 3 and kfold["folds"] == folds
    for key in ("train_log_rmse", "val_log_rmse", "val_rmse", "val_loss"):
        assert kfold["mean"][key] == pytest.approx(sum(f[key] for f in folds) / 3)
    assert summary_of(run)["best"] == {  # §4.10's measure, not the loss on raw values
        "epoch": 2,
        "metric": "val_log_rmse",
        "value": kfold["mean"]["val_log_rmse"],
    }
    assert {summary_of(run / f"fold_{i}")["best"]["metric"] for i in range(3)} == {"val_log_rmse"}


def test_a_k_fold_sweep_ranks_jobs_by_their_k_fold_mean(tmp_path):
    s = tmp_path / "sweep"
    r = run_cli(
        "-m",
        "dataset.folds=4",
        "dataset.num_train=100",
        "optim.lr=0.001,0.03",
        "trainer.epochs=1",
        f"hydra.sweep.dir={s}",
        *FAST,
    )
    assert r.returncode == 0, r.stderr
    with open(s / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:  # the table shows each job's k-fold mean
        kfold = summary_of(s / row["job"])["kfold"]
        assert kfold["k"] == 4 and float(row["best_val_loss"]) == pytest.approx(
            kfold["mean"]["val_loss"], rel=1e-3
        )
    assert rows[0]["optim.lr"] == "0.03"  # the better k-fold mean first


def test_the_kaggle_submission_has_every_id_in_order(tmp_path, kaggle_house):
    run = tmp_path / "house"
    r = run_cli(
        "experiment=ch4_kaggle_house",
        "dataset.folds=null",
        "trainer.epochs=3",
        f"dataset.root={kaggle_house}",
        "dataset.download=false",
        f"hydra.run.dir={run}",
        *FAST,
    )
    assert r.returncode == 0, r.stderr
    assert "linreg on kaggle_house (1,460 train / 0 val) on cpu, 332 parameters" in r.stdout
    r = run_cli(
        f"run={run}",
        f"input={kaggle_house / 'kaggle_house_pred_test.csv'}",
        f"output={tmp_path / 'submission.csv'}",
        tool="d2lrun-predict",
    )
    assert r.returncode == 0, r.stderr
    submission = pd.read_csv(tmp_path / "submission.csv")
    test = pd.read_csv(kaggle_house / "kaggle_house_pred_test.csv")
    assert list(submission.columns) == ["Id", "SalePrice"] and len(submission) == 1459
    assert submission["Id"].tolist() == test["Id"].tolist() and (submission["SalePrice"] > 0).all()


@pytest.mark.parametrize(
    "args,code,message",
    [
        (
            ["dataset.folds=1"],
            2,
            "dataset.folds=1 is out of range: it must be at least 2. Fix: dataset.folds=5.",
        ),
        (
            ["dataset.folds=9", "dataset.num_train=5"],
            2,
            "dataset.folds=9 is more folds than the 5 rows",
        ),
        (
            ["dataset=csv", "dataset.target=mpg", "dataset.drop=[id,vin]"],
            2,
            "cars.csv does not have. Fix: dataset.drop=[id].",
        ),
        (
            [
                "dataset=csv",
                "dataset.target=year",
                "trainer.log_rmse=true",
                "dataset.standardize_target=false",
            ],
            0,
            "",
        ),
        (
            ["dataset=csv", "dataset.target=zero", "trainer.log_rmse=true"],
            2,
            "trainer.log_rmse=true takes the log of the target, and zero has values <= 0",
        ),
    ],
)
def test_table_mistakes_are_one_line(tmp_path, args, code, message):
    frame = cars(tmp_path / "cars.csv", n=40)
    frame.assign(zero=np.arange(40) - 3).to_csv(tmp_path / "cars.csv", index=False)
    path = [f"dataset.path={tmp_path / 'cars.csv'}"] if "dataset=csv" in args else []
    r = run_cli(*args, *path, "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}", *FAST)
    assert r.returncode == code, r.stderr
    if code:
        assert message in one_error_line(r)
        assert not (tmp_path / "run" / "model.pt").exists()


def test_rows_without_the_training_columns_are_one_line_and_without_a_dropped_one_fine(tmp_path):
    frame = cars(tmp_path / "cars.csv", n=60)
    run = tmp_path / "run"
    r = run_cli(
        "dataset=csv",
        f"dataset.path={tmp_path / 'cars.csv'}",
        "dataset.target=mpg",
        "dataset.drop=[id]",
        "trainer.epochs=1",
        f"hydra.run.dir={run}",
        *FAST,
    )
    assert r.returncode == 0, r.stderr
    frame[["id", "origin"]].to_csv(tmp_path / "new.csv", index=False)
    r = run_cli(f"run={run}", f"input={tmp_path / 'new.csv'}", tool="d2lrun-predict")
    assert r.returncode == 2 and "lacks the column(s) ['weight', 'year'" in one_error_line(
        r, "d2lrun-predict"
    )
    frame[["weight", "origin", "year", "name"]].to_csv(tmp_path / "no_id.csv", index=False)
    r = run_cli(f"run={run}", f"input={tmp_path / 'no_id.csv'}", tool="d2lrun-predict")
    assert r.returncode == 0 and "lacks the dataset.drop column(s) ['id']" in r.stderr
    assert pd.read_csv(run / "predictions.csv").columns.tolist() == ["mpg"]
    r = run_cli(f"run={run}", f"dataset.path={tmp_path / 'no_id.csv'}", tool="d2lrun-eval")
    assert r.returncode == 2 and "dataset.target=mpg is not a column" in r.stderr  # not drop's id
    frame.drop(columns="id").to_csv(tmp_path / "labelled.csv", index=False)
    r = run_cli(f"run={run}", f"dataset.path={tmp_path / 'labelled.csv'}", tool="d2lrun-eval")
    assert r.returncode == 0 and '"test_loss"' in r.stdout, r.stderr  # it said: drop=[id] lacks


def test_a_csv_of_100000_rows_trains(tmp_path):
    rng = np.random.default_rng(0)
    n = 100_000
    x = rng.normal(size=(n, 8))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(8)]).assign(
        kind=rng.choice(["a", "b", "c"], n), y=x @ np.arange(8) + rng.normal(0, 0.1, n)
    )
    frame.to_csv(tmp_path / "big.csv", index=False)
    run = tmp_path / "run"
    r = run_cli(
        "dataset=csv",
        f"dataset.path={tmp_path / 'big.csv'}",
        "dataset.target=y",
        "trainer.epochs=1",
        "trainer.batch_size=256",
        f"hydra.run.dir={run}",
        *FAST,
    )
    assert r.returncode == 0, r.stderr
    assert "linreg on csv (80,000 train / 20,000 val)" in r.stdout
    assert summary_of(run)["final"]["val_rmse"] < 0.5  # the target's std is 11.8
