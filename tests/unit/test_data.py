"""Datasets: the book's synthetic data, CSV imputation (§2.2), Fashion-MNIST through torchvision."""

import gzip
import io
import re
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from d2lrun.config import compose
from d2lrun.data import build_data, prepare_batch
from d2lrun.data.csv import fit_preprocess, table_splits, transform
from d2lrun.data.csv import load as csv_load
from d2lrun.data.fashion_mnist import unpacked
from d2lrun.data.table import read_table
from d2lrun.errors import UsageError

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
    assert spec.task == "regression" and spec.true_w == pytest.approx([2, -3.4])


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
    assert train.X.shape == (20, 200) and spec.num_inputs == 200


def test_book_house_csv_imputation():
    """§2.2: NumRooms NaN -> mean 3; Alley -> Alley_Pave, Alley_nan."""
    from io import StringIO

    frame = pd.read_csv(StringIO(HOUSE))
    inputs = frame.iloc[:, :2]
    stats = fit_preprocess(
        inputs, standardize=False, max_categories=50, ddof=0
    )  # the book: plain mean fill
    X = transform(inputs, stats)
    assert stats["columns"] == ["NumRooms", "Alley_Pave", "Alley_nan"]
    np.testing.assert_array_equal(X[:, 0], [3, 2, 4, 3])
    np.testing.assert_array_equal(X[:, 1:], [[1, 0], [0, 1], [0, 1], [0, 1]])


def table_cfg(path="unused.csv", **kw):
    """A dataset=csv config as the schema composes it (d2lrun.config.schema.CSV), with kw
    overrides."""
    base = {
        "name": "csv",
        "path": str(path),
        "target": "y",
        "drop": [],
        "task": "auto",
        "val_fraction": 0.2,
        "max_categories": 50,
        "standardize": False,
        "standardize_target": False,
        "folds": None,
        "shuffle_folds": False,
    }
    return OmegaConf.create({**base, **kw})


def test_csv_statistics_come_from_training_rows_only(tmp_path):
    rows = pd.DataFrame({"x": np.arange(100.0), "city": ["a", "b"] * 50, "y": np.arange(100.0) * 2})
    path = tmp_path / "t.csv"
    rows.to_csv(path, index=False)
    cfg = table_cfg(path, standardize=True)
    train, val, spec = build_data(cfg, seed=0)
    assert (len(train), len(val)) == (80, 20) and spec.task == "regression"
    stats = spec.preprocess
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
    cfg = table_cfg(path, target="label", val_fraction=0.25)
    train, _, spec = build_data(cfg, seed=0)
    assert spec.task == "classification" and spec.class_names == ["cat", "dog"]
    assert train.y.dtype == torch.long and spec.num_outputs == 2


def test_fashion_mnist_loads_idx_files_as_uint8(fake_fmnist):
    cfg = OmegaConf.create({"name": "fashion_mnist", "root": str(fake_fmnist), "download": True})
    train, val, spec = build_data(cfg, seed=0)
    assert train.X.shape == (64, 1, 28, 28) and train.X.dtype == torch.uint8 and len(val) == 32
    assert spec.class_names[9] == "ankle boot" and spec.image_shape == [1, 28, 28]
    scaled = prepare_batch(train.X[:4])
    assert scaled.dtype == torch.float32 and 0 <= scaled.min() and scaled.max() <= 1


def test_the_official_gz_files_placed_by_hand_load_with_download_false(real_fmnist, tmp_path):
    """README: place the release's files in ROOT/FashionMNIST/raw; torchvision itself reads only
    unpacked ones when it may not download."""
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (real_fmnist / "FashionMNIST" / "raw").glob("*.gz"):
        shutil.copy(gz, raw / gz.name)
    cfg = OmegaConf.create({"name": "fashion_mnist", "root": str(tmp_path), "download": False})
    train, val, spec = build_data(cfg, seed=0)
    assert train.X.shape == (60000, 1, 28, 28) and len(val) == 10000
    assert sorted(p.name for p in raw.iterdir() if p.suffix != ".gz") == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    ]  # fmt: skip
    ours = unpacked(raw)  # a later run reads them itself: as torchvision read them
    assert all(torch.equal(a, b) for a, b in [(ours[0].X, train.X), (ours[0].y, train.y),
                                              (ours[1].X, val.X), (ours[1].y, val.y)])  # fmt: skip


def test_a_damaged_gz_with_download_false_is_refused_and_not_unpacked(fake_fmnist):
    raw = fake_fmnist / "FashionMNIST" / "raw"
    images = raw / "train-images-idx3-ubyte"
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(images.read_bytes()))
    images.unlink()  # the fake's bytes are not the release's: its MD5 differs
    cfg = OmegaConf.create({"name": "fashion_mnist", "root": str(fake_fmnist), "download": False})
    with pytest.raises(UsageError, match=r"train-images-idx3-ubyte.gz is damaged .* Fix: copy"):
        build_data(cfg, seed=1)
    assert not images.exists()


def test_a_damaged_test_file_is_named_itself_not_the_training_files(real_fmnist, tmp_path):
    """torchvision checks all four .gz as the training split loads: a t10k file cut short was
    called 'train-images-idx3-ubyte or train-labels-idx1-ubyte', whose Fix deleted good files."""
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (real_fmnist / "FashionMNIST" / "raw").glob("*.gz"):
        shutil.copy(gz, raw / gz.name)
    cut = raw / "t10k-images-idx3-ubyte.gz"
    cut.write_bytes(cut.read_bytes()[:100000])
    cfg = OmegaConf.create({"name": "fashion_mnist", "root": str(tmp_path), "download": True})
    with pytest.raises(UsageError, match=r"are damaged, t10k-images-idx3-ubyte\.gz \("):
        build_data(cfg, seed=0)


def test_a_read_only_data_folder_is_called_so_not_damaged(fake_fmnist, tmp_path, monkeypatch):
    """A read-only mount (a cluster's shared data, docker's :ro) was 'damaged ... Fix: delete
    them', or, with download=false, a Fix naming hydra.run.dir."""
    import errno

    import torchvision.datasets

    from d2lrun.errors import RunFailed

    class ReadOnly(torchvision.datasets.FashionMNIST):
        def __init__(self, root, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", f"{root}/FashionMNIST/raw/x")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", ReadOnly)
    shutil.copytree(fake_fmnist, tmp_path / "ro")
    labels = tmp_path / "ro" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"  # packed, for
    labels.with_suffix(".gz").write_bytes(gzip.compress(labels.read_bytes()))  # torchvision to
    labels.unlink()  # unpack (four unpacked files are read without writing: the next test)
    cfg = OmegaConf.create(
        {"name": "fashion_mnist", "root": str(tmp_path / "ro"), "download": True}
    )
    with pytest.raises(RunFailed, match=r"is not writable \(Read-only file system: .*Fix: dataset"):
        build_data(cfg, seed=0)


def test_unpacked_files_are_read_as_torchvision_reads_them_without_its_import(fake_fmnist):
    """torchvision's import is 1.2 s of a run's start-up: unpacked files are read without it."""
    import subprocess
    import sys

    from torchvision.datasets import FashionMNIST

    from d2lrun.data.fashion_mnist import load

    root = str(fake_fmnist)
    code = (
        "import sys\n"
        "from omegaconf import OmegaConf\n"
        "from d2lrun.data.fashion_mnist import load\n"
        f"load(OmegaConf.create({{'root': {root!r}, 'download': True}}), 0)\n"
        "print('torchvision' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout == "False\n", r.stderr
    splits = load(OmegaConf.create({"root": root, "download": True}), 0)[:2]
    for split, train in zip(splits, (True, False), strict=True):
        theirs = FashionMNIST(root, train=train)
        assert torch.equal(split.X, theirs.data.unsqueeze(1)) and split.X.dtype == torch.uint8
        assert torch.equal(split.y, theirs.targets) and split.y.dtype == torch.long


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
    stats = fit_preprocess(features, standardize=False, max_categories=50, ddof=0)
    assert stats["dropped"] == ["name"] and stats["columns"] == ["x", "c_a", "c_b", "c_nan"]
    kept = fit_preprocess(features, standardize=False, max_categories=60, ddof=0)
    assert "name" in kept["categorical"] and len(kept["columns"]) == 1 + 61 + 3


def counting_table(n):
    """x is the row number, so a split's X says which rows it holds."""
    return pd.DataFrame({"x": np.arange(float(n)), "y": np.arange(float(n)) * 2})


def rows_of(split):
    return sorted(int(v) for v in split.X[:, 0])


def test_standardizing_divides_by_the_fitted_std_and_by_1_where_it_is_zero_or_undefined():
    fitted = fit_preprocess(
        pd.DataFrame({"small": [0.0, 1.0] * 4, "const": [5.0] * 8}), True, 50, ddof=0
    )
    assert fitted["numeric"] == {
        "small": {"mean": 0.5, "std": 0.5},
        "const": {"mean": 5.0, "std": 1.0},
    }
    np.testing.assert_allclose(
        transform(pd.DataFrame({"small": [1.5], "const": [7.0]}), fitted), [[2, 2]]
    )
    one_row = fit_preprocess(
        pd.DataFrame({"a": [3.0]}), True, 50, ddof=1
    )  # pandas' std of 1 row: NaN
    assert one_row["numeric"]["a"] == {"mean": 3.0, "std": 1.0}


def test_ddof_1_is_pandas_std_and_0_divides_by_n():
    features = pd.DataFrame({"a": [0.0, 2.0]})
    assert fit_preprocess(features, True, 50, ddof=0)["numeric"]["a"]["std"] == 1.0
    assert fit_preprocess(features, True, 50, ddof=1)["numeric"]["a"]["std"] == pytest.approx(
        2**0.5
    )


def test_new_rows_need_the_trained_columns_and_a_stray_text_in_a_number_column_is_missing(
    capsys,
):
    stats = fit_preprocess(pd.DataFrame({"a": [1.0, 3.0], "c": ["u", "v"]}), False, 50, ddof=0)
    np.testing.assert_array_equal(
        transform(pd.DataFrame({"a": ["n/a?", "5", None], "c": ["v", "u", "u"]}), stats),
        [[2, 0, 1, 0], [5, 1, 0, 0], [2, 1, 0, 0]],  # the text is imputed with the training mean
    )
    assert capsys.readouterr().err == (  # said, as it may be a typo ("five", "1,000")
        "note: 1 cell(s) of column 'a' are not numbers, such as 'n/a?'; they get the training "
        "mean, as empty cells do\n"
    )
    for infinite in (["inf", "1"], [float("-inf"), 1.0]):  # as text, or as pandas read a number
        with pytest.raises(UsageError, match=r"^column\(s\) \['a'\] of the input hold infinite"):
            transform(pd.DataFrame({"a": infinite, "c": ["u", "v"]}), stats)
    with pytest.raises(UsageError) as e:
        transform(pd.DataFrame({"b": [1.0]}), stats)
    assert str(e.value) == (
        "the input lacks the column(s) ['a', 'c'] the model was trained on. "
        "Fix: add them (values may be empty)."
    )
    with pytest.raises(UsageError) as e:  # the data was there, under names not quite the same
        transform(pd.DataFrame({" a ": [1.0], "C": ["u"], "b": [2.0]}), stats)
    assert str(e.value).endswith("Fix: rename ' a ' to 'a', rename 'C' to 'c'.")
    # An empty header, which pandas names by its place: it said "rename 'Unnamed: 0' to
    # 'Unnamed: 1'", names the user never wrote
    empty = fit_preprocess(pd.DataFrame({"a": [1.0, 2.0], "Unnamed: 1": [3.0, 4.0]}), False, 9, 0)
    with pytest.raises(UsageError) as e:
        transform(pd.read_csv(io.StringIO(",a\n5,1\n")), empty)
    assert str(e.value).endswith(
        "Fix: write 'Unnamed: 1' as the header of column 1, which has none."
    )
    wide = fit_preprocess(pd.DataFrame({f"f{i}": [1.0] for i in range(500)}), False, 50, ddof=0)
    with pytest.raises(UsageError) as e:  # it listed all 500 in one line of 4 KB
        transform(pd.DataFrame({"x": [1.0]}), wide)
    assert "'f18', 'f19' and 480 more] the model was trained on." in str(e.value)


@pytest.mark.parametrize(
    "n,val_fraction,sizes",
    [(50, 0.0, (50, 0)), (5, 0.1, (4, 1)), (2, 0.5, (1, 1)), (10, 0.3, (7, 3))],
)
def test_val_fraction_holds_out_that_share_of_rows_and_at_least_one_unless_zero(
    n, val_fraction, sizes
):
    train, val, _ = table_splits(
        counting_table(n), table_cfg(val_fraction=val_fraction), 0, None, "t.csv", "auto", False
    )
    assert (len(train), len(val)) == sizes
    assert sorted(rows_of(train) + rows_of(val)) == list(range(n))


@pytest.mark.parametrize("shuffle", [False, True])
def test_k_folds_hold_out_each_row_once_and_train_on_the_rest(shuffle):
    frame, held_out = counting_table(10), []
    for i in range(4):
        cfg = table_cfg(shuffle_folds=shuffle)
        train, val, spec = table_splits(frame, cfg, 3, (4, i), "t.csv", "auto", False)
        again = table_splits(frame, cfg, 3, (4, i), "t.csv", "auto", False)[1]
        assert rows_of(val) == rows_of(again)  # the same folds for the same seed
        assert sorted(rows_of(train) + rows_of(val)) == list(range(10))
        assert spec.fold == [4, i]
        held_out.append(rows_of(val))
    assert sorted(r for rows in held_out for r in rows) == list(range(10))
    in_order = [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]  # fold i: the i-th slice of the rows
    assert (held_out == in_order) is not shuffle


def test_statistics_can_also_come_from_other_rows_as_the_books_kaggle_preprocessing_does():
    frame = counting_table(10)  # x = 0..9
    test_rows = pd.DataFrame({"x": [100.0, 110.0]})
    _, _, alone = table_splits(frame, table_cfg(val_fraction=0.0), 0, None, "t", "auto", True)
    _, _, both = table_splits(
        frame, table_cfg(val_fraction=0.0), 0, None, "t", "auto", True, also_fit=test_rows, ddof=1
    )
    assert alone.preprocess["numeric"]["x"]["mean"] == 4.5
    everything = pd.concat([frame["x"], test_rows["x"]])
    assert both.preprocess["numeric"]["x"] == {
        "mean": pytest.approx(everything.mean()),
        "std": pytest.approx(everything.std()),  # pandas' own, ddof=1
    }


def test_task_can_be_forced_to_classification_on_numeric_labels():
    frame = pd.DataFrame({"x": np.arange(20.0), "y": [0, 1] * 10})
    train, _, spec = table_splits(frame, table_cfg(), 0, None, "t", "classification", False)
    assert spec.task == "classification" and spec.class_names == ["0", "1"]
    assert train.y.dtype == torch.long
    _, _, auto = table_splits(frame, table_cfg(), 0, None, "t", "auto", False)
    assert auto.task == "regression"


def test_rows_without_a_target_are_dropped_and_add_no_column(tmp_path, capsys):
    path = tmp_path / "t.csv"
    frame = pd.DataFrame({"x": np.arange(10.0), "y": [1.0, None] * 5})
    frame.to_csv(path, index=False)
    train, val, spec = build_data(table_cfg(path, val_fraction=0.2), seed=0)
    assert (len(train), len(val)) == (4, 1) and spec.preprocess["columns"] == ["x"]
    assert sorted(rows_of(train) + rows_of(val)) == [0, 2, 4, 6, 8]  # the labelled rows
    assert "note: dropped 5 row(s)" in capsys.readouterr().err


def test_a_standardized_target_is_scaled_by_the_training_rows_and_its_scale_is_kept():
    frame = pd.DataFrame({"x": np.arange(10.0), "y": [1.0, 3.0] * 5})
    cfg = table_cfg(val_fraction=0.0, standardize_target=True)
    train, _, spec = table_splits(frame, cfg, 0, None, "t", "auto", False)
    assert spec.target_scale == {"mean": 2.0, "std": 1.0}  # std divides by n
    assert train.y.shape == (10, 1) and train.y.dtype == torch.float32
    torch.testing.assert_close(train.y, torch.tensor([[-1.0], [1.0]] * 5)[train.X[:, 0].long()])
    frame["y"] = frame["y"] * 10  # y: 10, 30, ...: mean 20, std 10
    train, _, spec = table_splits(frame, cfg, 0, None, "t", "auto", False)
    assert spec.target_scale == {"mean": 20.0, "std": 10.0}
    torch.testing.assert_close(train.y, torch.tensor([[-1.0], [1.0]] * 5)[train.X[:, 0].long()])
    frame["y"] = 7.0  # a constant target is shifted, not divided by 0
    train, _, spec = table_splits(frame, cfg, 0, None, "t", "auto", False)
    assert spec.target_scale == {"mean": 7.0, "std": 1.0} and train.y.abs().max() == 0
    raw, _, kept = table_splits(frame, table_cfg(val_fraction=0.0), 0, None, "t", "auto", False)
    assert kept.target_scale is None and raw.y.shape == (10, 1) and raw.y.max() == 7.0


def test_the_spec_keeps_what_eval_and_predict_read_back():
    """reload.py rebuilds a k-fold run's fold from spec.fold, carries spec.drop (ids) into
    predictions and names their column after spec.target; class_names decode classes."""
    frame = pd.DataFrame({"id": range(12), "x": np.arange(12.0), "y": np.arange(12.0)})
    _, _, spec = table_splits(frame, table_cfg(drop=["id"]), 0, (3, 1), "t", "auto", False)
    assert (spec.target, spec.drop, spec.fold) == ("y", ["id"], [3, 1])
    assert (spec.num_outputs, spec.class_names, spec.image_shape) == (1, None, None)
    assert spec.preprocess["columns"] == ["x"]  # the dropped id is no feature
    _, _, split = table_splits(frame, table_cfg(drop=["id"]), 0, None, "t", "auto", False)
    assert split.fold is None


def test_a_csv_run_reads_its_file_by_fold_and_names_it_in_errors(tmp_path):
    path = tmp_path / "t.csv"
    counting_table(12).to_csv(path, index=False)
    train, val, spec = build_data(table_cfg(path), seed=0, fold=(4, 3))
    assert rows_of(val) == [9, 10, 11] and spec.fold == [4, 3] and len(train) == 9
    with pytest.raises(UsageError) as e:
        build_data(table_cfg(path, target="price"), seed=0)
    assert str(e.value) == (
        f"dataset.target=price is not a column of {path}; its columns are: x, y. "
        "Fix: dataset.target=y."  # none alike: its last column, a working one
    )


def test_a_mistyped_column_of_a_wide_table_is_named_in_a_short_line(tmp_path, kaggle_house):
    """dataset.target=Y of 3,001 columns printed all of them (20 KB on one line) and no y;
    kaggle_house's saleprice listed 81 columns, and drop=[id] said Fix: dataset.drop=[]."""
    frame = pd.DataFrame(np.ones((4, 3001)), columns=[f"f{i}" for i in range(3000)] + ["y"])
    with pytest.raises(UsageError) as e:
        table_splits(frame, table_cfg(target="Y"), 0, None, "wide.csv", "auto", False)
    assert str(e.value) == (
        "dataset.target=Y is not a column of wide.csv; its columns are: "
        f"{', '.join(f'f{i}' for i in range(20))} and 2981 more. Fix: dataset.target=y."
    )
    with pytest.raises(UsageError, match=r"and 2981 more\. Fix: dataset\.target=f2999\.$"):
        table_splits(frame, table_cfg(target="f29999"), 0, None, "wide.csv", "auto", False)
    spaced = frame.rename(columns={"y": "Price, USD", "f0": " y "})  # as the shell and Hydra
    for typed, fix in [("price, usd", "\"dataset.target='Price, USD'\""),  # read the Fix back:
                       ("y ", "\"dataset.target=' y '\"")]:  # said: dataset.target= y  # fmt: skip
        with pytest.raises(UsageError) as e:
            table_splits(spaced, table_cfg(target=typed), 0, None, "t.csv", "auto", False)
        assert str(e.value).endswith(f" Fix: {fix}.")
    with pytest.raises(UsageError) as e:
        table_splits(frame, table_cfg(drop=["F1", "nope"]), 0, None, "wide.csv", "auto", False)
    assert str(e.value).endswith("does not have. Fix: dataset.drop=[f1].")
    spaced = frame.rename(columns={"f1": "Price, USD"})  # it said dataset.drop=[Price, USD]:
    with pytest.raises(UsageError) as e:  # two columns, the second ' USD'
        table_splits(spaced, table_cfg(drop=["price, usd"]), 0, None, "t.csv", "auto", False)
    assert str(e.value).endswith("""does not have. Fix: "dataset.drop=['Price, USD']".""")
    house = ["dataset=kaggle_house", f"dataset.root={kaggle_house}", "dataset.download=false"]
    for typed, fix in [("dataset.target=saleprice", "dataset.target=SalePrice"),
                       ("dataset.drop=[id]", "dataset.drop=[Id]")]:  # fmt: skip
        with pytest.raises(UsageError) as e:
            build_data(compose([*house, typed]).dataset, 0)
        assert str(e.value).endswith(f" Fix: {fix}.") and len(str(e.value)) < 400, str(e.value)


def test_read_table_errors_name_the_key_and_pandas_reason(tmp_path):
    with pytest.raises(UsageError) as e:
        read_table(tmp_path / "nope.csv")
    assert str(e.value) == (
        f"dataset.path={tmp_path / 'nope.csv'}: no such file. "
        "Fix: dataset.path=<the path of a CSV file>."
    )
    (tmp_path / "ragged.csv").write_text("x,y\n1,2\n3,4,5,6\n")
    with pytest.raises(
        UsageError, match=r"has ragged rows \(.*Expected 2 fields in line 3, saw 4\)"
    ):
        read_table(tmp_path / "ragged.csv")


def test_a_quote_never_closed_or_a_broken_packed_file_is_one_line_with_its_fix(tmp_path):
    """They were 'ParserError: ... (a bug in d2lrun?)', and for a .gz file 'Not a gzipped file
    ... Fix: free disk space', gzip's BadGzipFile being an OSError."""
    (tmp_path / "q.csv").write_text('x,y\n"1,2\n3,4\n')
    with pytest.raises(UsageError, match=r'has a quote \(\"\) that is never closed \(.*EOF inside '
                       r"string starting at row 1\)\. Fix: close it, or remove it\.$"):  # fmt: skip
        read_table(tmp_path / "q.csv")
    (tmp_path / "plain.csv.gz").write_text("x,y\n1,2\n")  # named .gz, not packed
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(b"x,y\n1,2\n" * 100)[:20])
    (tmp_path / "bad.csv.zip").write_text("x,y\n1,2\n")
    for name, why in [("plain.csv.gz", "BadGzipFile: Not a gzipped file"),
                      ("cut.csv.gz", "EOFError: Compressed file ended"),
                      ("bad.csv.zip", "BadZipFile: File is not a zip file")]:  # fmt: skip
        s = name.rpartition(".")[2]
        line = (
            rf"^input=\S+{name} cannot be unpacked as a \.{s} file \({why}.*\)\. "
            rf"Fix: pack it again, or rename it without \.{s} if it is plain CSV\.$"
        )
        with pytest.raises(UsageError, match=line):
            read_table(tmp_path / name, "input")


def test_a_column_read_as_numbers_then_text_past_pandas_chunk_is_one_kind(tmp_path):
    """pandas typed each chunk of about 262,144 rows on its own: codes 1.0 above (an empty cell
    made them floats) and '1' below were two categories, and eval and predict went wrong."""
    n = 300_000
    code = np.resize(np.array(["1", "2", "3"], dtype=object), n)
    code[5], code[-10:] = None, "Z"
    pd.DataFrame({"a": np.arange(n) % 7, "code": code, "y": np.arange(n) % 5}).to_csv(
        tmp_path / "big.csv", index=False
    )
    spec = csv_load(table_cfg(tmp_path / "big.csv", task="regression"), seed=0)[2]
    assert spec.preprocess["categorical"]["code"] == ["1", "2", "3", "Z"]


def test_a_field_more_in_every_row_than_in_the_header(tmp_path):
    """A comma at each data row's end shifted every column one to the left (pandas took the
    first for the index): 'Price' held the room counts, and the prices were dropped."""
    (tmp_path / "t.csv").write_text("Price,NumRooms\n100,1,\n200,2,\n")
    frame = read_table(tmp_path / "t.csv")
    assert frame.to_dict("list") == {"Price": [100, 200], "NumRooms": [1, 2]}
    for extra in ("3", "3,4"):  # fields that hold data: refused, never dropped
        (tmp_path / "t.csv").write_text(f"Price,NumRooms\n100,1,{extra}\n200,2,{extra}\n")
        ragged = r"has ragged rows \(each has [12] field\(s\) more than the header's 2\)\. Fix"
        with pytest.raises(UsageError, match=ragged):
            read_table(tmp_path / "t.csv")


def test_read_table_with_na_values_reads_only_those_as_missing(tmp_path):
    """The Kaggle files are read with pandas 1's markers: 'None' is a category there, not
    missing."""
    (tmp_path / "t.csv").write_text("kind,y\nNone,1\nNA,2\nbrick,3\n")
    default = read_table(tmp_path / "t.csv")
    assert default["kind"].isna().tolist() == [True, True, False]
    book = read_table(tmp_path / "t.csv", "dataset.root", ["NA"])
    assert book["kind"].tolist()[0] == "None" and book["kind"].isna().tolist() == [
        False,
        True,
        False,
    ]


def test_a_csv_with_a_space_after_each_comma_is_read_as_the_book_reads_house_tiny(tmp_path):
    """'NumRooms, NA' was read as ' NA', a category: NumRooms became three categories, not a
    column filled with its mean (§2.2), and the target was named ' Price'; the Fix it gave
    ('leave those cells empty') read ' ' as a category again."""
    spaced = "\n".join(", ".join(row.split(",")) for row in HOUSE.strip().splitlines())
    (tmp_path / "spaced.csv").write_text(spaced + "\n")
    frame = read_table(tmp_path / "spaced.csv")
    assert list(frame.columns) == ["NumRooms", "Alley", "Price"]
    assert frame.equals(pd.read_csv(io.StringIO(HOUSE)))
    stats = fit_preprocess(frame.iloc[:, :2], standardize=False, max_categories=50, ddof=0)
    assert stats["columns"] == ["NumRooms", "Alley_Pave", "Alley_nan"]


def test_a_csv_saved_in_decomposed_unicode_reads_as_typed(tmp_path):
    """A file saved in NFD (macOS apps may): predict said "lacks the column(s) ['größe'] ...
    Fix: rename 'größe' to 'größe'", and its 'ä' was a category new since training: all zeros."""
    import unicodedata

    typed = "größe,straße\n3,ä\n"
    (tmp_path / "nfd.csv").write_text(unicodedata.normalize("NFD", typed))
    assert read_table(tmp_path / "nfd.csv").equals(pd.read_csv(io.StringIO(typed)))


def test_a_decomposed_dataframe_from_python_predicts_as_typed():
    """load_run(...).predict(df) with a DataFrame built in NFD: its 'größe' column was missing
    and its 'ä' a category new since training (all zeros). The caller's DataFrame is kept."""
    import unicodedata

    nfd = lambda text: unicodedata.normalize("NFD", text)  # noqa: E731
    typed = pd.DataFrame({"größe": [3.0, 1.0], "straße": ["ä", "o"]})
    stats = fit_preprocess(typed, standardize=False, max_categories=50, ddof=0)
    decomposed = pd.DataFrame({nfd("größe"): [3.0, 1.0], "straße": [nfd("ä"), "o"]})
    before = decomposed.copy()
    assert np.array_equal(transform(decomposed, stats), transform(typed, stats))
    assert decomposed.equals(before) and not decomposed.equals(typed)


def test_the_validation_rows_are_drawn_with_the_runs_seed(tmp_path):
    """The same seed holds out the same rows, run after run; another seed other rows."""
    path = tmp_path / "t.csv"
    counting_table(40).to_csv(path, index=False)

    def held_out(seed):
        return rows_of(csv_load(table_cfg(path), seed)[1])  # not build_data, which caches

    assert held_out(0) == held_out(0) == held_out(0) != held_out(1)
    assert len(held_out(0)) == 8


def test_class_codes_follow_the_training_classes_in_every_split_and_the_scale_is_kept():
    """A held-out split without some class still codes each label as training does (its
    position in spec.class_names); a regression split keeps the scale its metrics undo."""
    frame = pd.DataFrame({"x": np.arange(12.0), "y": ["c", "c", "a", "b"] * 3})
    _, held_out, spec = table_splits(frame, table_cfg(), 0, (4, 0), "t", "auto", False)
    assert spec.class_names == ["a", "b", "c"]
    # fold 0 of 4 holds out the first 3 rows: c, c, a (no b)
    assert [spec.class_names[i] for i in held_out.y.tolist()] == ["c", "c", "a"]
    numbers = pd.DataFrame({"x": np.arange(10.0), "y": np.arange(10.0) * 3})
    scaled = table_cfg(val_fraction=0.2, standardize_target=True)
    train, val, spec = table_splits(numbers, scaled, 0, None, "t", "auto", False)
    assert train.scale == val.scale == spec.target_scale and spec.target_scale["std"] > 1


@pytest.mark.parametrize(
    "rows,columns",
    [
        ("1,2,1\ninf,3,2\n3,4,-inf\n", "['x']"),  # the target's next, once x is fixed
        ("1,2,1\n2,3,2\n3,4,-inf\n", "['y']"),
        ("1e39,2,1\n2,3,2\n3,4,3\n", "['x']"),  # inf once cast to float32
        ("1,2,1e200\n2,3,2\n3,4,3\n", "['y']"),  # its std overflowed: numpy's warning first
        ("1,2,inf\n2,3,inf\n3,4,3\n", "['y']"),  # in training rows: inf - inf, pandas' warning
    ],
)
def test_numbers_training_cannot_use_are_refused_in_one_line(tmp_path, rows, columns):
    """inf, or beyond float32: training diverged in batch 1 and blamed lr."""
    (tmp_path / "t.csv").write_text("x,z,y\n" + rows + "4,5,4\n")
    with pytest.raises(UsageError) as e, warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning printed above the line would fail here
        csv_load(table_cfg(tmp_path / "t.csv", standardize_target=True), seed=0)  # csv.yaml's
    assert str(e.value) == (
        f"column(s) {columns} of {tmp_path / 't.csv'} hold infinite values or values beyond "
        f"float32's range (about 3.4e38), which the model cannot use. Fix: leave those cells "
        f"empty (missing), or give finite numbers within that range."
    )


def test_class_labels_that_an_empty_cell_made_floats_stay_whole_numbers(tmp_path):
    (tmp_path / "t.csv").write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(10)) + "3,\n")
    _, _, spec = csv_load(table_cfg(tmp_path / "t.csv", task="classification"), seed=0)
    assert spec.class_names == ["0", "1"]  # not 0.0 and 1.0, which rows without gaps never match


def test_a_true_false_target_is_a_class_and_a_true_false_feature_stays_one_in_new_rows(tmp_path):
    rows = "".join(f"{i},{bool(i % 2)},{bool(i % 3)}\n" for i in range(12))
    (tmp_path / "t.csv").write_text("x,flag,y\n" + rows)
    _, _, spec = csv_load(table_cfg(tmp_path / "t.csv"), seed=0)
    assert spec.task == "classification" and spec.class_names == ["False", "True"]
    new = pd.DataFrame({"x": ["1", "1", "1"], "flag": ["True", "False", "unknown"]})  # as text
    X = transform(new, spec.preprocess)
    assert X[:, 1].tolist() == [1.0, 0.0, spec.preprocess["numeric"]["flag"]["mean"]]


def test_a_category_is_found_however_pandas_read_it_in_the_new_rows(tmp_path):
    """Excel's TRUE/FALSE with an empty cell trained as the booleans True/False, and eval and
    predict, which read the run's categories as text, found "TRUE" in none: all zeros, wrong
    numbers without an error. So did 1.0 for the category "1" in a frame from pd.read_csv."""
    flags, rooms = ["TRUE", "FALSE", ""], ["1", "2", "3+"]
    rows = "".join(f"{i},{flags[i % 3]},{rooms[i % 3]},{i % 5}\n" for i in range(24))
    (tmp_path / "t.csv").write_text("x,flag,rooms,y\n" + rows)
    cfg = table_cfg(tmp_path / "t.csv", val_fraction=0.0)
    train, _, spec = csv_load(cfg, seed=0)
    assert spec.preprocess["categorical"]["flag"] == ["False", "True"]  # pandas' booleans
    again, _, _ = csv_load(cfg, seed=0, fitted=spec)  # as eval, predict and resume read it
    assert torch.equal(again.X, train.X)
    new = pd.DataFrame({"x": [0.0], "flag": [True], "rooms": [1.0]})  # a float column: 1.0
    assert (
        transform(new, spec.preprocess).tolist()
        == transform(
            pd.DataFrame({"x": ["0"], "flag": ["TRUE"], "rooms": ["1"]}), spec.preprocess
        ).tolist()
    )


def test_a_feature_of_numbers_but_for_a_stray_cell_is_noted_as_categories(tmp_path, capsys):
    """One '?' among numbers made each of the column's values a one-hot category, silently."""
    rows = "".join(f"{i * 0.5},{i}\n" for i in range(30))
    (tmp_path / "t.csv").write_text("x,y\n" + rows + "?,30\n")
    _, _, spec = csv_load(table_cfg(tmp_path / "t.csv", val_fraction=0), seed=0)
    assert len(spec.preprocess["categorical"]["x"]) == 31  # still what it does, but said
    assert capsys.readouterr().err == (
        f"note: column 'x' of {tmp_path / 't.csv'} holds numbers but for 1 value(s) such as '?', "
        f"so each of its 31 values is a category. Fix: leave those cells empty to use it as "
        f"numbers.\n"
    )


def test_a_feature_of_numbers_but_for_a_few_cells_and_too_many_values_is_noted_as_such(capsys):
    """auto-mpg's horsepower, ~90 numbers and 5 '?': 'ignored column(s) [...] (... or more than
    dataset.max_categories=50 distinct values)', without the Fix that makes it numbers."""
    hp = [str(50 + i % 90) if i % 40 != 7 else "?" for i in range(200)]
    frame = pd.DataFrame({"x": np.arange(200.0), "hp": hp, "e": np.nan, "y": np.arange(200.0)})
    *_, spec = table_splits(frame, table_cfg(), 0, None, "mpg.csv", "auto", False)
    assert spec.preprocess["dropped"] == ["hp", "e"]
    assert capsys.readouterr().err == (
        "note: column 'hp' of mpg.csv holds numbers but for 1 value(s) such as '?', so it is "
        "ignored (text of more than dataset.max_categories=50 distinct values). Fix: leave those "
        "cells empty to use it as numbers.\n"
        "note: ignored column(s) ['e'] (empty in training rows or more than "
        "dataset.max_categories=50 distinct values)\n"
    )


def test_a_stray_word_in_a_held_out_or_dropped_row_is_said_or_gone(tmp_path, capsys):
    """A '?' in a validation row, or a 'Total' footer without a target, made the column one-hot
    categories (33 here) with no note: a new house of another Area got all zeros for it."""
    rows = "".join(f"{i * 0.5},{i}\n" for i in range(40))
    for empty in ("", ",1\n"):  # and with an empty cell too (NaN is not a word)
        (tmp_path / "t.csv").write_text("x,y\n" + rows + empty + "Total,\n")
        _, _, spec = csv_load(table_cfg(tmp_path / "t.csv"), seed=0)
        assert list(spec.preprocess["numeric"]) == spec.preprocess["columns"] == ["x"]
    held = np.random.default_rng(0).permutation(40)[0]  # a validation row (d2lrun's split)
    lines = [f"{'?' if i == held else i * 0.5},{i}\n" for i in range(40)]
    (tmp_path / "t.csv").write_text("x,y\n" + "".join(lines))
    _, _, spec = csv_load(table_cfg(tmp_path / "t.csv", val_fraction=0.1), seed=0)
    assert "?" not in spec.preprocess["categorical"]["x"]  # held out: the training rows lack it
    assert "holds numbers but for 1 value(s) such as '?'" in capsys.readouterr().err


def test_an_empty_target_column_says_so(tmp_path):
    """It said '0 labelled row(s): too few to hold out 20%. Fix: ... dataset.val_fraction=0',
    which then failed the same way."""
    (tmp_path / "t.csv").write_text("a,y\n1,\n2,\n")
    with pytest.raises(UsageError) as e:
        csv_load(table_cfg(tmp_path / "t.csv", val_fraction=0), seed=0)
    assert str(e.value) == (
        f"column 'y' of {tmp_path / 't.csv'} has no values: no row to learn from. Fix: fill it "
        f"in, or dataset.target=<another of: a>."
    )
    (tmp_path / "good.csv").write_text("a,y\n1,2\n2,3\n3,4\n")  # a saved run keeps its target
    _, _, fitted = csv_load(table_cfg(tmp_path / "good.csv", val_fraction=0), seed=0)
    only_fill = r"has no values: no row to learn from\. Fix: fill it in\.$"
    with pytest.raises(UsageError, match=only_fill):
        csv_load(table_cfg(tmp_path / "t.csv", val_fraction=0), 0, fitted=fitted)  # d2lrun-eval
    (tmp_path / "t.csv").write_text('y\n""\n""\n')  # no other column: none to name
    with pytest.raises(UsageError, match=only_fill):
        csv_load(table_cfg(tmp_path / "t.csv", val_fraction=0), seed=0)


def test_a_target_of_numbers_and_many_words_is_read_as_classes_with_a_note(tmp_path, capsys):
    """A price with 'unknown' in a quarter of its rows trained as a classifier of prices, unsaid."""
    rows = "".join(f"{i},{'unknown' if i % 4 == 0 else i % 3 + 0.5}\n" for i in range(40))
    (tmp_path / "t.csv").write_text("x,y\n" + rows)
    *_, spec = csv_load(table_cfg(tmp_path / "t.csv"), seed=0)
    assert spec.class_names == ["0.5", "1.5", "2.5", "unknown"]
    assert capsys.readouterr().err == (
        f"note: column 'y' of {tmp_path / 't.csv'} is read as classes: 10 of its 40 cells are not "
        f"numbers, such as 'unknown'. Fix: leave those cells empty (their rows are dropped) to "
        f"predict it as a number.\n"
    )
    (tmp_path / "t.csv").write_text("x,y\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(9)))
    csv_load(table_cfg(tmp_path / "t.csv"), seed=0)  # names: classes, nothing to say
    assert capsys.readouterr().err == ""
    rows = "".join(f"{i},{'unknown' if i % 4 == 0 else i * 1.5}\n" for i in range(40))
    (tmp_path / "t.csv").write_text("x,y\n" + rows)  # prices: each a class, held out or not
    with pytest.raises(UsageError) as e:  # its Fix was only: add training rows, or change seed
        csv_load(table_cfg(tmp_path / "t.csv"), seed=0)
    assert str(e.value).endswith(", or leave the 10 cell(s) that are not numbers empty to predict "
                                 "it as a number.")  # fmt: skip
    with pytest.raises(UsageError) as e:  # asked for: the same, and what was asked for goes
        csv_load(table_cfg(tmp_path / "t.csv", task="classification"), seed=0)
    assert str(e.value).endswith(
        ", or leave the 10 cell(s) that are not numbers empty (and drop "
        "dataset.task=classification) to predict it as a number."
    )


def test_inf_in_a_feature_is_refused_in_one_line_without_numpys_warning(tmp_path):
    """Before the line, a RuntimeWarning printed its source: pandas' nanops, sqr = (avg - ..."""
    (tmp_path / "t.csv").write_text("a,y\n1,2\ninf,3\n3,4\n4,5\n5,7\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UsageError, match=r"^column\(s\) \['a'\] of \S+ hold infinite"):
            csv_load(table_cfg(tmp_path / "t.csv", standardize=True), seed=0)


def test_a_number_column_with_a_few_stray_cells_names_one_and_the_fix(tmp_path):
    rows = "".join(f"{i},{i * 0.5}\n" for i in range(20))
    (tmp_path / "t.csv").write_text("x,y\n" + rows + "20,n/a?\n")
    with pytest.raises(UsageError) as e:
        csv_load(table_cfg(tmp_path / "t.csv"), seed=0)
    # Not 'or dataset.task=classification if its values are names': a value of its own in each
    # row but the stray one, which then failed as classes held out, with a Fix no seed met
    assert str(e.value) == (
        f"column 'y' of {tmp_path / 't.csv'} holds numbers but for 1 cell(s) such as 'n/a?'. "
        f"Fix: leave them empty (those rows are dropped)."
    )
    codes = "".join(f"{i},{i % 3}\n" for i in range(20))  # a few values, each often: names maybe
    (tmp_path / "t.csv").write_text("x,y\n" + codes + "20,n/a?\n")
    with pytest.raises(UsageError, match=r"\), or dataset\.task=classification if its values are"):
        csv_load(table_cfg(tmp_path / "t.csv"), seed=0)
    (tmp_path / "t.csv").write_text("x,y\n" + rows + "20,n/a?\n21,n/a?\n")  # not one per row
    cfg = table_cfg(tmp_path / "t.csv", task="classification", val_fraction=0)
    assert len(csv_load(cfg, seed=0)[2].class_names) == 21  # asked for: every value a class
    (tmp_path / "t.csv").write_text("x,y\n" + rows)
    _, _, regression = csv_load(table_cfg(tmp_path / "t.csv"), seed=0)
    (tmp_path / "t.csv").write_text("x,y\n" + rows + "20,n/a?\n")  # eval: the run's task stays
    with pytest.raises(UsageError) as e:
        table_splits(read_table(tmp_path / "t.csv"), table_cfg(val_fraction=0), 0, None, "t.csv",
                     "auto", False, fitted=regression)  # fmt: skip
    assert str(e.value).endswith("Fix: leave them empty (those rows are dropped).")
    (tmp_path / "t.csv").write_text("x,y\n1,a\n2,b\n")  # eval of the regression on text
    with pytest.raises(UsageError, match=r"^the run is a regression but column 'y' of .* is not"):
        table_splits(read_table(tmp_path / "t.csv"), table_cfg(val_fraction=0), 0, None,
                     str(tmp_path / "t.csv"), "auto", False, fitted=regression)  # fmt: skip


def test_classes_only_in_a_held_out_fold_point_to_shuffling_the_folds():
    frame = pd.DataFrame({"x": np.arange(9.0), "y": ["a"] * 3 + ["b"] * 3 + ["c"] * 3})  # sorted
    with pytest.raises(UsageError, match=r"Fix: add training rows of them, or dataset\.shuffle_f"):
        table_splits(frame, table_cfg(), 0, [3, 0], "t", "auto", False)
    table_splits(frame, table_cfg(shuffle_folds=True), 0, [3, 0], "t", "auto", False)


def test_a_class_held_out_only_by_a_later_fold_is_refused_before_the_first_fold_trains():
    """Refused at fold 3, the first two folds had trained and left their folders behind."""
    frame = pd.DataFrame({"x": np.arange(6.0), "y": ["a", "b", "a", "b", "c", "c"]})
    for cfg, i, fix in (
        (table_cfg(), 3, ", or dataset.shuffle_folds=true (the rows are in order)."),
        (table_cfg(shuffle_folds=True), 2, "."),  # seed 0 shuffles both c rows into fold 2
    ):
        with pytest.raises(UsageError) as e:  # the first fold's data: what the run loads first
            table_splits(frame, cfg, 0, [3, 0], "t", "auto", False)
        assert str(e.value) == (
            f"class(es) ['c'] of 'y' occur only in the validation rows of fold {i}/3, so the "
            f"model could never learn them. Fix: add training rows of them{fix}"
        )


@pytest.mark.parametrize("sep,name", [(";", "semicolons"), ("\t", "tabs")])
def test_a_file_separated_by_semicolons_or_tabs_is_named_as_such(tmp_path, sep, name):
    (tmp_path / "t.csv").write_text(f"a{sep}town{sep}Sale Price\n1{sep}x{sep}3\n2{sep}y{sep}4\n")
    with pytest.raises(
        UsageError, match=f"Fix: save the file with commas between its columns, not {name}"
    ):
        csv_load(table_cfg(tmp_path / "t.csv", target="Sale Price"), seed=0)


@pytest.mark.parametrize("sep,name", [(";", "semicolons"), ("\t", "tabs")])
def test_a_file_of_semicolons_or_tabs_with_decimal_commas_is_named_as_such_not_ragged(
    tmp_path, sep, name
):
    """Excel's 'European' CSV (8,444;b;yes) said 'has ragged rows (each has 1 field(s) more than
    the header's 1). Fix: give every row as many fields as the header'; and predict, with no
    decimal comma, 'The input lacks the column(s) [...]. Fix: add them'."""
    path = tmp_path / "t.csv"
    fix = f"Fix: save the file with commas between its columns, not {name}."
    pandas = "Error tokenizing data. C error: Expected 1 fields in line 3, saw 2"
    for rows, reason in [
        ("8,444;b;yes\n9,5;a;no\n", "each has 1 field(s) more than the header's 1"),
        ("8;b;yes\n9,5;a;no\n", pandas),  # the first row without a decimal comma
    ]:
        path.write_text(f"x{sep}c{sep}label\n" + rows.replace(";", sep))
        with pytest.raises(UsageError) as e:
            read_table(path)
        assert str(e.value) == f"dataset.path={path} has ragged rows ({reason}). {fix}"
    stats = fit_preprocess(pd.DataFrame({"x": [1.0, 2.0], "c": ["a", "b"]}), False, 50, ddof=0)
    with pytest.raises(UsageError) as e:
        transform(pd.DataFrame({f"x{sep}c": ["8;b"]}), stats)
    lacks = "the input lacks the column(s) ['x', 'c'] the model was trained on."
    assert str(e.value) == f"{lacks} {fix}"


def test_a_file_without_the_runs_target_is_refused_with_a_fix_eval_can_take(tmp_path):
    """d2lrun-eval dataset.path=F: "Fix: dataset.target=<one of them>" (a key eval refuses)."""
    (tmp_path / "t.csv").write_text("x,y\n" + "".join(f"{i},{i}\n" for i in range(10)))
    _, _, spec = csv_load(table_cfg(tmp_path / "t.csv"), seed=0)
    (tmp_path / "new.csv").write_text("x\n1\n")
    with pytest.raises(
        UsageError, match=r"its columns are: x\. Fix: give a file with a column 'y'\.$"
    ):
        csv_load(table_cfg(tmp_path / "new.csv"), seed=0, fitted=spec)
    (tmp_path / "new.csv").write_text("y\n1\n2\n3\n4\n5\n")  # 'The input lacks': no file
    with pytest.raises(UsageError, match=f"^{re.escape(str(tmp_path / 'new.csv'))} lacks the col"):
        csv_load(table_cfg(tmp_path / "new.csv"), seed=0, fitted=spec)


def test_no_usable_feature_column_says_which_key_made_them_unusable():
    """'Fix: add feature columns', of a file that had them: dataset.drop dropped them all, or
    each was text of more values than dataset.max_categories (the Fix led to a run)."""
    frame = pd.DataFrame({"a": range(120), "name": [f"n{i % 70}" for i in range(120)],
                          "y": np.arange(120.0)})  # fmt: skip
    cases = [
        (table_cfg(drop=["a", "name"]), "keep one out of dataset.drop=[a,name]"),
        (table_cfg(drop=["a"]), "dataset.max_categories=66"),  # of the 96 training rows
        (table_cfg(drop=["a"], max_categories=66), None),
    ]
    for cfg, fix in cases:
        if fix is None:
            assert table_splits(frame, cfg, 0, None, "t.csv", "auto", False)[2].num_inputs == 67
            continue
        with pytest.raises(UsageError) as e:
            table_splits(frame, cfg, 0, None, "t.csv", "auto", False)
        assert str(e.value) == f"t.csv has no usable feature column besides 'y'. Fix: {fix}."
    with pytest.raises(UsageError, match=r"Fix: add feature columns\.$"):  # none: nothing to keep
        table_splits(frame[["y"]], table_cfg(), 0, None, "t.csv", "auto", False)


@pytest.mark.parametrize(
    "cells",
    [["$10", "$20", "-$5.50"], ["75%", "80 %", "5%"], ["12345678901234567890", "2", "3"]],
)
def test_numbers_written_with_signs_or_too_long_are_refused_not_made_categories(cells):
    frame = pd.DataFrame({"x": cells, "y": [1.0, 2.0, 3.0]})
    with pytest.raises(UsageError, match=r"^column\(s\) \['x'\] of p.csv hold numbers that read"):
        table_splits(frame, table_cfg(), 0, None, "p.csv", "auto", False)


def test_numbers_with_thousands_separators_are_refused_with_the_pandas_line_that_reads_them(
    tmp_path,
):
    """'147,592' reads as text: as a target it was 40 'classes', as a feature 40 categories."""
    path = tmp_path / "p.csv"
    path.write_text('x,y,name\n999,4,e\n"1,000",5,"a,b"\n999,6,c\n"-2,500.5",7,d\n')
    with pytest.raises(UsageError) as e:
        table_splits(pd.read_csv(path), table_cfg(path), 0, None, "p.csv", "auto", False)
    assert str(e.value) == (  # such as '999' it said, a plain number, when one came first
        "column(s) ['x'] of p.csv hold numbers that read as text, such as '1,000' (with $, %, "
        "thousands separators or decimal commas, or past 64-bit integers). Fix: save them as "
        "plain numbers (pd.read_csv(FILE, thousands=',') reads 1,000; decimal=',' reads 1,5), "
        "or dataset.drop=[x] if they are ids."
    )
    # New rows (d2lrun-predict, d2lrun-eval dataset.path=): each such cell got the training mean,
    # with a note, and wrong predictions; refused as training refuses them
    stats = fit_preprocess(pd.DataFrame({"x": [999.0, 1000.0]}), False, 50, ddof=0)
    with pytest.raises(UsageError) as e:
        transform(pd.read_csv(path)[["x"]], stats, "input=p.csv")
    assert str(e.value).startswith(
        "column 'x' of input=p.csv holds numbers that read as text, such as '1,000' (with $, %,"
    )
    with pytest.raises(UsageError) as e:  # it said dataset.drop=[x], no longer dropping name
        table_splits(pd.read_csv(path), table_cfg(path, drop=["name"]), 0, None, "p.csv", "auto",
                     False)  # fmt: skip
    assert str(e.value).endswith(" or dataset.drop=[name,x] if they are ids.")
    dropped = table_cfg(path, drop=["x"])  # ids such as "1,000" are not read: no refusal
    table_splits(pd.read_csv(path), dropped, 0, None, "p.csv", "auto", False)
    pd.read_csv(path, thousands=",").to_csv(path, index=False)  # the Fix, as typed
    train, _, spec = table_splits(
        pd.read_csv(path), table_cfg(path), 0, None, "p.csv", "auto", False
    )
    assert "x" in spec.preprocess["numeric"] and "name" not in spec.preprocess["numeric"]


def test_numbers_with_decimal_commas_are_refused_and_the_fix_reads_them(tmp_path):
    """'10,25' (a European spreadsheet's 10.25) read as text: a price target was 6 'ids'."""
    path = tmp_path / "p.csv"
    path.write_text('x,price\n"1,5","10,25"\n"2,5","11,5"\n"3,0","12,75"\n"4,5",9\n')
    with pytest.raises(UsageError, match=r"\['x', 'price'\] .* such as '1,5' .* reads 1,5\), or"):
        table_splits(
            pd.read_csv(path), table_cfg(path, target="price"), 0, None, "p.csv", "auto", False
        )
    pd.read_csv(path, decimal=",").to_csv(path, index=False)  # the Fix, as typed
    *_, spec = table_splits(
        pd.read_csv(path), table_cfg(path, target="price"), 0, None, "p.csv", "auto", False
    )
    assert spec.task == "regression" and spec.preprocess["columns"] == ["x"]


def test_a_duplicated_header_name_is_refused_not_read_as_name_dot_1(tmp_path):
    """pandas reads the second 'id' as 'id.1', which dataset.drop=[id] missed: a feature."""
    path = tmp_path / "d.csv"
    path.write_text("id,x,id,y\n1,1,7,3\n2,2,3,5\n")
    with pytest.raises(UsageError) as e:
        read_table(path)
    assert str(e.value) == (
        f"dataset.path={path} names the column(s) ['id'] twice in its header; pandas reads the "
        f"second as 'id.1', which dataset.drop and dataset.target miss. Fix: give each column a "
        f"name of its own."
    )
    path.write_text("id,x,y,,\n1,1,3,,\n2,2,5,,\n")  # trailing commas: empty names, not twice
    assert list(read_table(path).columns)[:3] == ["id", "x", "y"]


def test_pandas_row_index_is_ignored_with_a_note(capsys):
    """df.to_csv(F) writes the index as 'Unnamed: 0': a feature, a prediction by row position."""
    frame = pd.DataFrame({"Unnamed: 0": range(10), "x": np.arange(10.0), "y": np.arange(10.0)})
    *_, spec = table_splits(frame, table_cfg(), 0, None, "p.csv", "auto", False)
    assert spec.preprocess["columns"] == ["x"]
    assert "note: ignored column 'Unnamed: 0' of p.csv, a row index" in capsys.readouterr().err


@pytest.mark.parametrize(
    "labels,what",
    [(["a"] * 6, "one class ('a') in all its rows"),
     ([f"u{i}" for i in range(6)], "a different value in each of its 6 rows (an id?)")],
)  # fmt: skip
def test_a_target_with_one_class_or_one_per_row_is_refused(labels, what):
    frame = pd.DataFrame({"x": np.arange(6.0), "y": labels})
    with pytest.raises(UsageError) as e:
        table_splits(frame, table_cfg(), 0, None, "p.csv", "auto", False)
    assert str(e.value) == (
        f"column 'y' of p.csv has {what}, so there is nothing to learn. "
        f"Fix: dataset.target=<another column: x>."
    )


def test_numbers_asked_to_be_classes_with_one_per_row_are_refused_with_regression_as_the_fix():
    """dataset.task=classification of a price, a different one in each row: 'class(es) [...]
    occur only in the validation rows ... Fix: ... change seed', which no seed can fix."""
    frame = pd.DataFrame({"x": np.arange(20.0), "Price": 1000 + 37 * np.arange(20)})
    cfg = table_cfg(target="Price", task="classification")
    with pytest.raises(UsageError) as e:
        table_splits(frame, cfg, 0, None, "h.csv", "classification", False)
    assert str(e.value) == (
        "column 'Price' of h.csv has a different value in each of its 20 rows (an id?), so there "
        "is nothing to learn. Fix: dataset.task=regression, or dataset.target=<another column: x>."
    )
    *_, spec = table_splits(frame, table_cfg(target="Price"), 0, None, "h.csv", "regression", False)
    assert spec.task == "regression"  # the Fix, as typed


def test_fashion_mnist_root_given_as_the_folder_of_its_files_says_which_root_to_give(
    tmp_path, fake_fmnist
):
    """dataset.root=.../FashionMNIST/raw said the four files were missing from raw/FashionMNIST/raw
    and to place them there; the Fix now is the root that holds them, or where to move them."""
    from d2lrun.data import fashion_mnist

    raw = fake_fmnist / "FashionMNIST" / "raw"
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in raw.iterdir():
        shutil.copy(f, flat / f.name)
    moved = f"copy (or move) the files of {flat} into {flat / 'FashionMNIST' / 'raw'}"
    above = f"dataset.root={fake_fmnist}"  # given raw/, or FashionMNIST/ (it said: place them)
    for root, fix in ((raw, above), (raw.parent, above), (flat, moved)):
        cfg = OmegaConf.create({"root": str(root), "download": False})
        with pytest.raises(UsageError) as e:
            fashion_mnist.load(cfg, 0)
        assert str(e.value).endswith(f"dataset.download=false. Fix: {fix}.")


def test_fashion_mnist_under_a_mistyped_root_leaves_no_empty_folders(tmp_path, monkeypatch):
    """dataset.root=typo_root: the refusal left typo_root/FashionMNIST/raw/ behind, empty; and
    of typo/a/b (D2LRUN_DATA=/nonexistent/dir), the folders above it that it made."""
    from torchvision.datasets import FashionMNIST

    from d2lrun.data import fashion_mnist

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(FashionMNIST, "download", offline)  # as here, with no network
    for root in ("typo_root", "typo/a/b"):
        cfg = OmegaConf.create({"root": str(tmp_path / root), "download": True})
        with pytest.raises(UsageError, match=r"the download failed \(Error downloading"):
            fashion_mnist.load(cfg, 0)
        assert list(tmp_path.iterdir()) == []


def test_new_images_are_taken_as_the_run_was_trained_and_each_mistake_says_how_to_mend_it():
    """ToTensor's 0-1 floats were told 'np.asarray(images, np.uint8)', which made them 0s and 1s:
    every prediction one class. Rows of 784 pixels were told the same, which fixes nothing."""
    from d2lrun.data import Spec, as_images

    spec = Spec(
        "fashion_mnist", "classification", 784, 10, [1, 28, 28], [f"c{i}" for i in range(10)]
    )
    images = torch.randint(
        0, 256, (3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(as_images(images, spec), images.unsqueeze(1))  # (N, H, W) -> (N, 1, H, W)
    assert as_images(images[0], spec).shape == (1, 1, 28, 28)  # one image

    def fix(X):
        with pytest.raises(UsageError) as e:
            as_images(X, spec)
        return str(e.value).partition(" Fix: ")[2]

    floats = images.float() / 255  # as ToTensor gives them
    assert fix(floats).startswith("np.asarray((images * 255).round(), np.uint8)")
    mended = torch.as_tensor(np.asarray((floats * 255).round(), np.uint8))  # the Fix, followed
    assert torch.equal(as_images(mended, spec), images.unsqueeze(1))
    assert fix(images.reshape(3, 784)) == "images.reshape(-1, 28, 28)."
    assert fix(images.float()) == (
        "images of the run's size, from 0 to 255 as the dataset's (np.asarray(images, np.uint8))."
    )
    assert fix(images[:, :27]).startswith("images of the run's size")
    kernel = Spec("kernel", "regression", 48, 42, [1, 6, 8])  # §6.2.4: numbers, not pixels
    assert as_images(torch.ones(2, 6, 8), kernel).dtype == torch.float32
