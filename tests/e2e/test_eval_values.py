"""The numbers `d2lrun-eval` and `d2lrun-predict` give for §4.10's house prices: a regression run's
val metrics in dollars, a k-fold fold scored on the rows it held out, and the Kaggle submission's
SalePrice values, each checked against the run's own files or a computation of the test's own."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from d2lrun import load_run
from tests.conftest import run_cli

TRAIN, TEST = "kaggle_house_pred_train.csv", "kaggle_house_pred_test.csv"
# §4.10's house data with a scaled target (the model learns SalePrice / std), so that every number
# that comes back in dollars has been scaled back; lr 0.05 suits the scaled target.
HOUSE = [
    "experiment=ch4_kaggle_house",
    "dataset.standardize_target=true",
    "optim.lr=0.05",
    "dataset.download=false",
    "trainer.progress=false",
]
VAL_KEYS = ("val_loss", "val_rmse", "val_log_rmse")


def final(run) -> dict:
    return json.loads((run / "metrics.json").read_text())["final"]


def rmse(predicted, true) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted) - np.asarray(true)) ** 2)))


def log_rmse(predicted, true) -> float:
    """§4.10's measure: predictions below 1 are clamped to 1 before the log."""
    return rmse(np.log(np.clip(predicted, 1, None)), np.log(true))


def rows_of(run, path) -> pd.DataFrame:
    """The CSV rows as d2lrun-predict reads them (with the run's missing-value markers)."""
    return pd.read_csv(path, keep_default_na=False, na_values=load_run(run).spec.na_values)


@pytest.fixture(scope="module")
def house(tmp_path_factory, kaggle_house):
    """A run on §4.10's training file with 20% held out: (run folder, its training output)."""
    run = tmp_path_factory.mktemp("house") / "run"
    r = run_cli(
        *HOUSE,
        "dataset.folds=null",
        "dataset.val_fraction=0.2",
        "trainer.epochs=3",
        f"dataset.root={kaggle_house}",
        f"hydra.run.dir={run}",
    )
    assert r.returncode == 0, r.stderr
    return run, r.stdout


@pytest.fixture(scope="module")
def folds(tmp_path_factory, kaggle_house):
    """The book's 5-fold cross-validation (contiguous folds of 292 rows), 2 epochs a fold."""
    run = tmp_path_factory.mktemp("folds") / "run"
    r = run_cli(*HOUSE, "trainer.epochs=2", f"dataset.root={kaggle_house}", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr
    return run


def test_eval_of_a_regression_run_gives_its_final_metrics_in_dollars(house, kaggle_house):
    """d2lrun-eval repeats the run's final val metrics exactly, and its RMSE is in dollars."""
    run, trained = house
    r = run_cli(f"run={run}", tool="d2lrun-eval")
    assert r.returncode == 0, r.stderr
    # Exact: the same weights on the same held-out rows, in the same batches, on the same CPU.
    expected = {k: final(run)[k] for k in VAL_KEYS}
    assert json.loads(r.stdout.splitlines()[0]) == expected
    written = json.loads((run / "eval.json").read_text())
    assert {k: written[k] for k in VAL_KEYS} == expected
    # In dollars: the run's train and val RMSE, pooled over their rows, are the RMSE of the
    # run's predictions over the whole file (which rows were held out need not be known).
    n_train, n_val = (int(n.replace(",", "")) for n in re.search(
        r"\(([\d,]+) train / ([\d,]+) val\)", trained).groups())  # fmt: skip
    houses = rows_of(run, kaggle_house / TRAIN)
    assert n_train + n_val == len(houses) == 1460 and n_val == 292
    predicted = load_run(run).predict(houses)
    m = final(run)
    for metric, key in ((rmse, "rmse"), (log_rmse, "log_rmse")):
        pooled = np.sqrt((n_train * m[f"train_{key}"] ** 2 + n_val * m[f"val_{key}"] ** 2) / 1460)
        assert metric(predicted, houses["SalePrice"]) == pytest.approx(pooled, rel=1e-4), key
    # Better than always guessing the mean price (std $79,443), and not a scaled-down number.
    assert 10_000 < expected["val_rmse"] < houses["SalePrice"].std()


def test_eval_of_a_fold_scores_the_rows_that_fold_held_out(folds, kaggle_house):
    """d2lrun-eval run=RUN/fold_1 gives fold 1's own final metrics, on rows 292-583."""
    r = run_cli(f"run={folds / 'fold_1'}", tool="d2lrun-eval")
    assert r.returncode == 0, r.stderr
    fold_1 = {k: final(folds / "fold_1")[k] for k in VAL_KEYS}
    assert json.loads(r.stdout.splitlines()[0]) == fold_1  # exactly, as for any run on CPU
    assert (
        json.loads((folds / "fold_1" / "eval.json").read_text())["val_loss"] == fold_1["val_loss"]
    )
    assert all(final(folds / f"fold_{i}")["val_loss"] != fold_1["val_loss"] for i in (0, 2, 3, 4))
    # Fold 1 of 5 holds out the second contiguous slice of the 1,460 houses (the book's folds).
    held_out = rows_of(folds / "fold_1", kaggle_house / TRAIN).iloc[292:584]
    predicted = load_run(folds / "fold_1").predict(held_out)
    assert rmse(predicted, held_out["SalePrice"]) == pytest.approx(fold_1["val_rmse"], rel=1e-4)
    assert log_rmse(predicted, held_out["SalePrice"]) == pytest.approx(
        fold_1["val_log_rmse"], rel=1e-4
    )


def test_eval_of_another_kaggle_file_scores_every_row_of_it_apart_from_the_runs_own(
    folds, kaggle_house, tmp_path
):
    """dataset.root=OTHER with another training file: test_* on every row of it, written to
    eval-kaggle_house_pred_train.json; the run's own file moved: its held-out rows, as val_*."""
    run, fold_0 = folds / "fold_0", {k: final(folds / "fold_0")[k] for k in VAL_KEYS}
    for folder in ("moved", "first"):  # the training file alone: a saved run keeps its statistics
        (tmp_path / folder).mkdir()
    (tmp_path / "moved" / TRAIN).write_bytes((kaggle_house / TRAIN).read_bytes())
    r = run_cli(f"run={run}", f"dataset.root={tmp_path / 'moved'}", tool="d2lrun-eval")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0]) == fold_0
    lines = (kaggle_house / TRAIN).read_text().splitlines(keepends=True)
    (tmp_path / "first" / TRAIN).write_text("".join(lines[:1001]))  # the header, 1,000 houses
    r = run_cli(f"run={run}", f"dataset.root={tmp_path / 'first'}", tool="d2lrun-eval")
    assert r.returncode == 0, r.stderr
    scored = json.loads(r.stdout.splitlines()[0])
    assert set(scored) == {"test_loss", "test_rmse", "test_log_rmse"}
    houses = rows_of(run, tmp_path / "first" / TRAIN)
    assert rmse(load_run(run).predict(houses), houses["SalePrice"]) == pytest.approx(
        scored["test_rmse"], rel=1e-4
    )  # every one of the 1,000 rows, not fold 0's held-out 292
    out, other = run / "eval-kaggle_house_pred_train.json", tmp_path / "first" / TRAIN
    assert f"wrote {out} (every row of {other}, not the run's file)" in r.stdout
    assert json.loads(out.read_text())["data"] == str(other)
    assert json.loads((run / "eval.json").read_text())["val_loss"] == fold_0["val_loss"]


def book_features(folder) -> tuple[pd.DataFrame, torch.Tensor]:
    """§4.10's preprocessing, as the book writes it: the test rows and their features."""
    # pandas 1's reading, as in the book: "NA" is missing, "None" (no masonry veneer) a category.
    read = {"keep_default_na": False, "na_values": ["NA"]}
    train, test = pd.read_csv(folder / TRAIN, **read), pd.read_csv(folder / TEST, **read)
    features = pd.concat((train.iloc[:, 1:-1], test.iloc[:, 1:]))
    numeric = features.select_dtypes("number").columns  # the book: dtypes != "object"
    features[numeric] = features[numeric].apply(lambda x: (x - x.mean()) / x.std())
    features[numeric] = features[numeric].fillna(0)
    features = pd.get_dummies(features, dummy_na=True)
    X = torch.tensor(features[len(train) :].to_numpy(dtype=np.float32))
    return test, X


def test_kaggle_predictions_are_the_runs_own_model_applied_to_the_test_rows(
    house, kaggle_house, tmp_path
):
    """predictions.csv: every test Id in order, beside the run's model's price for that house."""
    run, _ = house
    r = run_cli(f"run={run}", f"input={kaggle_house / TEST}", tool="d2lrun-predict")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote 1459 prediction(s) to {run / 'predictions.csv'}"
    submission = pd.read_csv(run / "predictions.csv")
    test, X = book_features(kaggle_house)
    assert list(submission.columns) == ["Id", "SalePrice"]
    assert submission["Id"].tolist() == test["Id"].tolist()
    # The same values as load_run(...).predict on the same rows.
    assert submission["SalePrice"].tolist() == load_run(run).predict(
        rows_of(run, kaggle_house / TEST)
    )
    # And as the book's own nn.Linear with model.pt on the book's features, scaled back to dollars
    # by the run's stored target mean and std: equal to the cent or so that float32 keeps of the
    # scaled output times the std ($79k), hence within a dollar.
    net = nn.Sequential(nn.Linear(X.shape[1], 1))
    net.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    scale = torch.load(run / "last.pt", weights_only=True)["spec"]["target_scale"]
    with torch.no_grad():
        book = (net(X).squeeze(1) * scale["std"] + scale["mean"]).tolist()
    assert submission["SalePrice"].to_numpy() == pytest.approx(book, rel=0, abs=1.0)
    prices = pd.read_csv(kaggle_house / TRAIN)["SalePrice"]
    assert scale["mean"] == pytest.approx(prices.mean(), rel=0.05)  # dollars, a training mean
    assert abs(submission["SalePrice"].median() - prices.median()) < 30_000
