"""Any CSV file as a table (§2.2): impute, one-hot encode, optionally standardize.

Every statistic (means, standard deviations, categories, class names) is fitted on the training
rows only and kept in the spec, so new rows are transformed exactly as the training rows were.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from d2lrun.data import Split
from d2lrun.errors import UsageError


def read_table(path: str | Path, key: str = "dataset.path") -> pd.DataFrame:
    """Read a CSV file, turning every way it can be unreadable into one clear error."""
    p, where = Path(str(path)).expanduser(), f"{key}={path}"
    if not p.exists():
        raise UsageError(f"{where}: no such file. Fix: {key}=<the path of a CSV file>.")
    if p.is_dir():
        raise UsageError(f"{where} is a directory, not a CSV file. Fix: {key}={path}/FILE.csv.")
    try:
        frame = pd.read_csv(p)
    except UnicodeDecodeError as e:
        raise UsageError(
            f"{where} is not UTF-8 text (byte {e.start}). Fix: re-save the file as UTF-8."
        ) from None
    except pd.errors.EmptyDataError:
        raise UsageError(
            f"{where} is empty. Fix: give a CSV file with a header row and data rows."
        ) from None
    except pd.errors.ParserError as e:
        reason = str(e).strip().splitlines()[-1]
        raise UsageError(
            f"{where} has ragged rows ({reason}). Fix: give every row as many fields as the header."
        ) from None
    if frame.empty:
        raise UsageError(f"{where} has a header but no data rows. Fix: add rows.")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def fit_preprocess(features: pd.DataFrame, standardize: bool, max_categories: int) -> dict:
    """Learn what `transform` needs from training rows: numeric means/stds, categories per text column."""
    numeric, categorical, dropped = {}, {}, []
    for col in features.columns:
        values = features[col]
        if values.isna().all():
            dropped.append(col)  # no value to learn a mean or a category from
        elif pd.api.types.is_numeric_dtype(values):
            v = values.astype(float)
            std = float(v.std(ddof=0)) if standardize else 1.0
            numeric[col] = {
                "mean": float(v.mean()),
                "std": std if std > 0 and np.isfinite(std) else 1.0,
            }
        else:
            cats = sorted(values.dropna().astype(str).unique())
            if len(cats) > max_categories:
                dropped.append(col)  # an id or free text: one-hot would make a column per row
            else:
                categorical[col] = cats
    columns = list(numeric) + [
        f"{c}_{v}" for c, cats in categorical.items() for v in [*cats, "nan"]
    ]
    return {
        "numeric": numeric,
        "categorical": categorical,
        "dropped": dropped,
        "standardize": bool(standardize),
        "columns": columns,
    }


def transform(features: pd.DataFrame, stats: dict) -> np.ndarray:
    """§2.2 on fitted statistics: fillna(mean) (then standardize), one-hot with a NaN column.

    A category not seen in training gets all zeros in its column's one-hot block.
    """
    missing = [c for c in [*stats["numeric"], *stats["categorical"]] if c not in features.columns]
    if missing:
        raise UsageError(
            f"The input lacks the column(s) {missing} the model was trained on. "
            f"Fix: add them (values may be empty)."
        )
    parts = []
    for col, s in stats["numeric"].items():
        v = pd.to_numeric(features[col], errors="coerce").astype(float).fillna(s["mean"])
        parts.append(
            ((v - s["mean"]) / s["std"]).to_numpy() if stats["standardize"] else v.to_numpy()
        )
    for col, cats in stats["categorical"].items():
        values = features[col]
        isna = values.isna().to_numpy()
        text = values.astype(str).to_numpy()
        parts += [(text == c) & ~isna for c in cats] + [isna]
    if not parts:
        return np.zeros((len(features), 0), dtype=np.float32)
    return np.column_stack(parts).astype(np.float32)


def load(cfg: DictConfig, seed: int) -> tuple[Split, Split, dict]:
    frame = read_table(cfg.path)
    target = cfg.target
    if target not in frame.columns:
        raise UsageError(
            f"dataset.target={target} is not a column of {cfg.path}; its columns are: "
            f"{', '.join(frame.columns)}. Fix: dataset.target=<one of them>."
        )
    unlabeled = int(frame[target].isna().sum())
    if unlabeled:
        # Rows without a target cannot be learned from; drop them rather than invent labels.
        print(
            f"note: dropped {unlabeled} row(s) of {cfg.path} with no value in '{target}'",
            file=sys.stderr,
        )
        frame = frame[frame[target].notna()].reset_index(drop=True)

    task = str(cfg.task)
    if task == "auto":
        task = "regression" if pd.api.types.is_numeric_dtype(frame[target]) else "classification"
    if task == "regression" and not pd.api.types.is_numeric_dtype(frame[target]):
        raise UsageError(
            f"dataset.task=regression but column '{target}' is not numeric. Fix: dataset.task=classification."
        )

    n, frac = len(frame), cfg.val_fraction
    n_val = max(1, round(n * frac))
    if n - n_val < 1:
        raise UsageError(
            f"{cfg.path} has {n} labelled row(s): too few to hold out {frac:.0%} for validation "
            f"and still train. Fix: add rows (at least 2)."
        )
    order = np.random.default_rng(seed).permutation(n)
    train_rows, val_rows = frame.iloc[order[n_val:]], frame.iloc[order[:n_val]]

    features = frame.columns.drop(target)
    stats = fit_preprocess(train_rows[features], cfg.standardize, cfg.max_categories)
    if stats["dropped"]:
        print(
            f"note: ignored column(s) {stats['dropped']} (empty in training rows or more than "
            f"dataset.max_categories={cfg.max_categories} distinct values)",
            file=sys.stderr,
        )
    if not stats["columns"]:
        raise UsageError(
            f"{cfg.path} has no usable feature column besides '{target}'. Fix: add feature columns."
        )
    spec = {
        "dataset": "csv",
        "task": task,
        "num_inputs": len(stats["columns"]),
        "image_shape": None,
        "target": target,
        "preprocess": stats,
    }

    def split(rows: pd.DataFrame) -> Split:
        X = torch.from_numpy(transform(rows[features], stats))
        if task == "regression":
            return Split(
                X,
                torch.tensor(rows[target].astype(float).to_numpy(), dtype=torch.float32).reshape(
                    -1, 1
                ),
            )
        index = {c: i for i, c in enumerate(spec["class_names"])}
        return Split(
            X, torch.tensor([index[v] for v in rows[target].astype(str)], dtype=torch.long)
        )

    if task == "classification":
        classes = sorted(train_rows[target].astype(str).unique())
        unseen = sorted(set(val_rows[target].astype(str)) - set(classes))
        if unseen:
            raise UsageError(
                f"class(es) {unseen} of '{target}' occur only in the validation rows, so the model "
                f"could never learn them. Fix: add training rows of them, or change seed or dataset.val_fraction."
            )
        spec |= {"num_outputs": len(classes), "class_names": classes}
    else:
        spec |= {"num_outputs": 1, "class_names": None}
    return split(train_rows), split(val_rows), spec
