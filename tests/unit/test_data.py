"""Datasets: the book's synthetic data, CSV imputation (§2.2), Fashion-MNIST through torchvision."""

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from d2lrun.data import build_data, prepare_batch
from d2lrun.data.csv import fit_preprocess, transform

HOUSE = "NumRooms,Alley,Price\nNA,Pave,127500\n2,NA,106000\n4,NA,178100\nNA,NA,140000\n"


def synthetic(**kw):
    base = {
        "name": "synthetic",
        "w": [2, -3.4],
        "b": 4.2,
        "noise": 0.01,
        "num_inputs": None,
        "num_train": 1000,
        "num_val": 1000,
    }
    return OmegaConf.create({**base, **kw})


def test_synthetic_follows_the_book():
    train, val, spec = build_data(synthetic(), seed=0)
    assert train.X.shape == (1000, 2) and train.y.shape == (1000, 1) and len(val) == 1000
    w, b = (
        torch.linalg.lstsq(torch.cat([train.X, torch.ones(1000, 1)], 1), train.y)
        .solution.reshape(-1)
        .split([2, 1])
    )
    assert torch.allclose(w, torch.tensor([2, -3.4]), atol=2e-3) and abs(b.item() - 4.2) < 2e-3
    assert spec["task"] == "regression" and spec["true_w"] == pytest.approx([2, -3.4])


def test_synthetic_is_reproducible_and_seeded():
    from d2lrun.data.synthetic import (
        load,
    )  # not build_data, whose cache would hand back the same tensors

    a, b, c = (
        load(synthetic(), seed=1)[0],
        load(synthetic(), seed=1)[0],
        load(synthetic(), seed=2)[0],
    )
    assert a.X is not b.X and torch.equal(a.X, b.X) and torch.equal(a.y, b.y)
    assert not torch.equal(a.X, c.X)


def test_synthetic_scalar_w_needs_num_inputs():
    train, _, spec = build_data(
        synthetic(w=0.01, b=0.05, num_inputs=200, num_train=20, num_val=100), seed=0
    )
    assert train.X.shape == (20, 200) and spec["num_inputs"] == 200


def test_book_house_csv_imputation():
    """§2.2: NumRooms NaN -> mean 3; Alley -> Alley_Pave, Alley_nan."""
    from io import StringIO

    frame = pd.read_csv(StringIO(HOUSE))
    inputs = frame.iloc[:, :2]
    stats = fit_preprocess(
        inputs, standardize=False, max_categories=50
    )  # the book: plain mean fill
    X = transform(inputs, stats)
    assert stats["columns"] == ["NumRooms", "Alley_Pave", "Alley_nan"]
    np.testing.assert_array_equal(X[:, 0], [3, 2, 4, 3])
    np.testing.assert_array_equal(X[:, 1:], [[1, 0], [0, 1], [0, 1], [0, 1]])


def test_csv_statistics_come_from_training_rows_only(tmp_path):
    rows = pd.DataFrame({"x": np.arange(100.0), "city": ["a", "b"] * 50, "y": np.arange(100.0) * 2})
    path = tmp_path / "t.csv"
    rows.to_csv(path, index=False)
    cfg = OmegaConf.create(
        {
            "name": "csv",
            "drop": [],
            "standardize_target": False,
            "folds": None,
            "shuffle_folds": False,
            "path": str(path),
            "target": "y",
            "task": "auto",
            "val_fraction": 0.2,
            "standardize": True,
            "max_categories": 50,
        }
    )
    train, val, spec = build_data(cfg, seed=0)
    assert (len(train), len(val)) == (80, 20) and spec["task"] == "regression"
    stats = spec["preprocess"]
    train_x = train.X[:, 0]
    # Standardized with the training mean/std: the training column has mean 0, std 1 exactly.
    assert abs(train_x.mean().item()) < 1e-5 and abs(train_x.std(unbiased=False).item() - 1) < 1e-4
    assert stats["categorical"] == {"city": ["a", "b"]}
    # An unseen category and a missing number transform with the stored statistics.
    new = transform(pd.DataFrame({"x": [np.nan], "city": ["zzz"]}), stats)
    np.testing.assert_allclose(new, [[0.0, 0.0, 0.0, 0.0]])


def test_csv_string_target_is_classification(tmp_path):
    path = tmp_path / "c.csv"
    pd.DataFrame({"a": range(40), "label": ["cat", "dog"] * 20}).to_csv(path, index=False)
    cfg = OmegaConf.create(
        {
            "name": "csv",
            "drop": [],
            "standardize_target": False,
            "folds": None,
            "shuffle_folds": False,
            "path": str(path),
            "target": "label",
            "task": "auto",
            "val_fraction": 0.25,
            "standardize": False,
            "max_categories": 50,
        }
    )
    train, _, spec = build_data(cfg, seed=0)
    assert spec["task"] == "classification" and spec["class_names"] == ["cat", "dog"]
    assert train.y.dtype == torch.long and spec["num_outputs"] == 2


def test_fashion_mnist_loads_idx_files_as_uint8(fake_fmnist):
    cfg = OmegaConf.create({"name": "fashion_mnist", "root": str(fake_fmnist), "download": True})
    train, val, spec = build_data(cfg, seed=0)
    assert train.X.shape == (64, 1, 28, 28) and train.X.dtype == torch.uint8 and len(val) == 32
    assert spec["class_names"][9] == "ankle boot" and spec["image_shape"] == [1, 28, 28]
    scaled = prepare_batch(train.X[:4])
    assert scaled.dtype == torch.float32 and 0 <= scaled.min() and scaled.max() <= 1


def test_datasets_are_decoded_once_per_process(fake_fmnist, monkeypatch):
    import d2lrun.data.fashion_mnist as fm

    calls = []
    original = fm.load
    monkeypatch.setattr(fm, "load", lambda cfg, seed: calls.append(1) or original(cfg, seed))
    cfg = OmegaConf.create({"name": "fashion_mnist", "root": str(fake_fmnist), "download": False})
    for _ in range(3):
        build_data(cfg, seed=0)
    assert len(calls) == 1


def test_a_text_column_with_more_values_than_max_categories_is_not_one_hot_encoded():
    features = pd.DataFrame(
        {"x": np.arange(60.0), "name": [f"n{i}" for i in range(60)], "c": ["a", "b"] * 30}
    )
    stats = fit_preprocess(features, standardize=False, max_categories=50)
    assert stats["dropped"] == ["name"] and stats["columns"] == ["x", "c_a", "c_b", "c_nan"]
    kept = fit_preprocess(features, standardize=False, max_categories=60)
    assert "name" in kept["categorical"] and len(kept["columns"]) == 1 + 61 + 3
