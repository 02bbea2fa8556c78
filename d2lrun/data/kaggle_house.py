"""§4.10 Predicting house prices on Kaggle: the book's two files, checked by SHA-1, and its
preprocessing: every numeric feature standardized, missing values filled with 0 (the mean, after
standardizing), the rest one-hot encoded with a column for "missing" (79 features -> 331 columns),
statistics fitted on the training and test features together.
"""

import hashlib
import urllib.request
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig

from d2lrun.data import Spec, sha1_of
from d2lrun.data.csv import table_splits
from d2lrun.data.table import read_table
from d2lrun.errors import UsageError, note
from d2lrun.files import atomic_write, remove_empty, shell_arg, shown, unmade

DATA_URL = "http://d2l-data.s3-accelerate.amazonaws.com/"  # the book's DATA_HUB
# pandas 1's missing-value markers, as the book read: pandas 2 added "None", a real category here
# (MasVnrType: no masonry veneer), and reading it as missing gives 330 columns, not the book's 331.
BOOK_NA_VALUES = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                  "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null"]  # fmt: skip
FILES = {
    "train": ("kaggle_house_pred_train.csv", "585e9cc93e70b39160e7921475f9bcd7d31219ce"),
    "test": ("kaggle_house_pred_test.csv", "fa19780a7b011d9b009e8bff8e99922a8ee2eb90"),
}


def download(url: str, path: Path, sha1: str, also: str = "") -> Path:
    """path, fetched from url when it is not there yet; the SHA-1 must match before it is kept.
    also: another way out, added to the Fix when it fails."""
    if sha1_of(path) == sha1:
        return path
    made = unmade(path.parent)  # gone if it fails
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
        if (got := hashlib.sha1(data).hexdigest()) != sha1:
            raise UsageError(
                f"{url} downloaded with SHA-1 {got}, not {sha1}; the file was not kept. "
                f"Fix: place a good copy of {path.name} in {path.parent}."
            )
        atomic_write(path, data)
    except OSError as e:
        remove_empty(made)  # a dataset.root mistyped: no empty folders left there
        reason = getattr(e, "reason", None) or e.strerror or e
        raise UsageError(
            f"{path.name} is not in {shown(path.parent)} and downloading {url} failed "
            f"({reason}). Fix: place the file there, or set dataset.root=<folder that has it>"
            f"{also}."
        ) from None
    return path


NOTED: set[Path] = set()  # the files said not to be the book's, in this process


def find_files(root: str | Path, fetch: bool, splits=tuple(FILES)) -> dict[str, Path]:
    """The files of splits, in ROOT/kaggle_house/ or ROOT; downloaded when missing and fetch is."""
    root = Path(root).expanduser()
    if root.is_file():  # the training file itself: its folder is the root
        raise UsageError(
            f"dataset.root={shown(root)} is a file; it names the folder that holds "
            f"{FILES['train'][0]}. Fix: {shell_arg('dataset.root', root.parent)}."
        )
    paths = {}
    for split in splits:
        name, sha1 = FILES[split]
        there = located(root, name)
        if there is None and (below := sorted(root.glob(f"*/{name}"))):  # ROOT/kaggle-house/
            folder = below[0].parent
            raise UsageError(f"{name} is not in {shown(root / 'kaggle_house')} nor in "
                             f"{shown(root)}, but in {shown(folder)}. "
                             f"Fix: {shell_arg('dataset.root', folder)}.")  # fmt: skip
        also = ", or dataset.statistics=train (no test file)" if split == "test" else ""
        if there is None and not fetch:
            raise UsageError(
                f"{name} is not in {shown(root / 'kaggle_house')} nor in {shown(root)}, and "
                f"dataset.download=false. "
                f"Fix: place it there from {DATA_URL}{name}, or dataset.download=true{also}."
            )
        if there and there.is_dir():
            raise UsageError(
                f"{shown(there)} is a folder, not the book's file {name}. "
                f"Fix: put the file in its place, or set dataset.root=<folder that has it>."
            )
        mine = there and sha1_of(there) != sha1  # 1 ms: yours
        if mine and there.resolve() not in NOTED:  # said once, not once per fold or sweep job
            NOTED.add(there.resolve())
            note(f"{shown(there)} is not the book's file (its SHA-1 differs): the numbers may "
                 f"differ from the book's")  # fmt: skip
        paths[split] = there or download(DATA_URL + name, root / "kaggle_house" / name, sha1, also)
    return paths


def located(root: Path, name: str) -> Path | None:
    """ROOT/kaggle_house/NAME, else ROOT/NAME, where either is."""
    return next((p for p in (root / "kaggle_house" / name, root / name) if p.exists()), None)


def book_file(cfg: DictConfig, split: str) -> Path:
    """The file of split load reads: where it is, or where dataset.download puts the book's."""
    root, name = Path(cfg.root).expanduser(), FILES[split][0]
    return located(root, name) or root / "kaggle_house" / name


def load(cfg: DictConfig, seed: int, fold=None, fitted: Spec | None = None):
    # The test file joins statistics being fitted only: not statistics=train's, nor a saved run's.
    fit_test = cfg.statistics == "train_and_test" and fitted is None
    paths = find_files(cfg.root, cfg.download, ("train", "test") if fit_test else ("train",))
    train = read_table(paths["train"], "dataset.root", BOOK_NA_VALUES)
    test = read_table(paths["test"], "dataset.root", BOOK_NA_VALUES) if fit_test else None
    # SalePrice is numeric, so "auto" is regression; ddof=1 is the book's `x.std()` (pandas').
    train, val, spec = table_splits(
        train, cfg, seed, fold, paths["train"].name, "auto", True, also_fit=test, ddof=1,
        fitted=fitted,
    )  # fmt: skip
    # New rows are read the same way; the SHA-1 tells d2lrun-eval the run's file from another.
    return train, val, replace(spec, na_values=BOOK_NA_VALUES, sha1=sha1_of(paths["train"]))
