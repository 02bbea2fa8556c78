"""Any CSV file as a table (§2.2): impute, one-hot encode, optionally standardize.

Every statistic (means, standard deviations, categories, class names) is fitted on the training
rows only and kept in the spec, so new rows are transformed exactly as the training rows were.
"""

import re

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from d2lrun.data import Spec, Split, fold_rows, sha1_of
from d2lrun.data.table import commas_fix, composed, read_table
from d2lrun.errors import UsageError, alike, listed, note
from d2lrun.files import list_arg, shown, typed_arg


def fit_preprocess(
    features: pd.DataFrame, standardize: bool, max_categories: int, ddof: int
) -> dict:
    """Learn what `transform` needs from training rows: numeric means and stds, text categories."""
    # ddof=1 is pandas' std, which the book's §4.10 uses; 0 divides by n.
    numeric, categorical = {}, {}
    for col, values in features.dropna(axis=1, how="all").items():  # empty: nothing to learn
        if pd.api.types.is_numeric_dtype(values):
            v = values.astype(float)
            with np.errstate(invalid="ignore", over="ignore"):  # inf cells: float32() refuses
                mean, std = float(v.mean()), float(v.std(ddof=ddof)) if standardize else 1.0
            std = std if std > 0 and np.isfinite(std) else 1.0  # constant, or one row: only centred
            numeric[col] = {"mean": mean, "std": std}
        else:
            cats = sorted(values.dropna().astype(str).unique())
            if len(cats) <= max_categories:  # more: an id or free text, a one-hot column per row
                categorical[col] = cats
    one_hot = [f"{c}_{v}" for c, cats in categorical.items() for v in [*cats, "nan"]]
    return {
        "numeric": numeric,
        "categorical": categorical,
        "dropped": [c for c in features if c not in numeric and c not in categorical],
        "standardize": bool(standardize),
        "columns": list(numeric) + one_hot,
    }


def renamed(name: str, to: str) -> str:
    """How column name becomes to: pandas names an empty header by its place ('Unnamed: 1', the
    second column), which is another name in another place, and one the user never wrote."""
    if re.fullmatch(r"Unnamed: \d+", name):
        return f"write '{to}' as the header of column {int(name[9:]) + 1}, which has none"
    return f"rename '{name}' to '{to}'"


def transform(
    features: pd.DataFrame, stats: dict, source: str = "the input", say_new: bool = False
) -> np.ndarray:
    """§2.2 on fitted statistics: fillna(mean) (then standardize), one-hot with a NaN column;
    say_new (predictions): a note of the cells of categories new since training."""
    features = composed(features)  # a DataFrame from Python too, as read_table reads a file
    used = [*stats["numeric"], *stats["categorical"]]
    if missing := [c for c in used if c not in features.columns]:
        unused = [c for c in features.columns if c not in used]
        near = {m: n for m in missing if (n := alike(m, unused))}  # ' a ', Price: data of a, price
        fix = ", ".join(renamed(n, m) for m, n in near.items())
        fix = commas_fix(features.columns, fix or "add them (values may be empty)")
        raise UsageError(
            f"{source} lacks the column(s) [{listed([repr(m) for m in missing])}] the model was "
            f"trained on. Fix: {fix}."
        )
    parts = []
    bools = {"True": 1.0, "False": 0.0}  # a True/False column beside another cell is not bool
    for col, s in stats["numeric"].items():
        v = features[col]
        v = v if pd.api.types.is_numeric_dtype(v) else v.map(lambda x: bools.get(str(x), x))
        number = pd.to_numeric(v, errors="coerce").astype(float)  # inf: refused below
        if len(text := v[number.isna() & v.notna()]):  # "five", "1,000": not numbers
            if len(written := text[text.astype(str).str.fullmatch(WRITTEN_NUMBER)]):  # as trained
                raise UsageError(f"column '{col}' of {source} holds numbers that read as text, "
                                 f"such as '{written.iloc[0]}' {AS_TEXT}.")  # fmt: skip
            note(f"{len(text)} cell(s) of column '{col}' are not numbers, such as "
                 f"'{text.iloc[0]}'; they get the training mean, as empty cells do")  # fmt: skip
        v = number.fillna(s["mean"])
        parts.append(((v - s["mean"]) / s["std"] if stats["standardize"] else v).to_numpy())
    new = {}  # column: its cells of a category new since training, all zeros
    for col, cats in stats["categorical"].items():
        values = features[col]
        isna = values.isna().to_numpy()
        text = values.astype(str)
        if (other := ~text.isin(cats) & ~isna).any():  # as pandas read it here: True, or 1.0
            text[other] = values[other].map(lambda x, cats=cats: category(x, cats))
            if say_new and len(cells := text[~text.isin(cats) & ~isna]):
                new[col] = cells
        parts += [(text.to_numpy() == c) & ~isna for c in cats] + [isna]
    if new:  # one line, not one per column: a file of 40 text columns
        col, cells = next(iter(new.items()))
        where = f"column '{col}'" if len(new) == 1 else f"{len(new)} columns"
        note(f"{sum(map(len, new.values()))} cell(s) in {where} of {source} hold categories the "
             f"run never trained on, such as {col}='{cells.iloc[0]}': each counts as none of them "
             f"(all zeros)")  # fmt: skip
    return float32(np.column_stack(parts), stats["columns"], source)  # predict's: no inf out


def float32(values: np.ndarray, columns: list[str], source: str) -> np.ndarray:
    """values (N, len(columns)) as float32; the columns that hold inf or NaN refused in one line:
    inf cells, numbers float32 cannot hold, or a training mean that an inf cell made inf."""
    with np.errstate(over="ignore"):  # beyond float32: inf, refused below
        values = values.astype(np.float32)
    if bad := [c for c, ok in zip(columns, np.isfinite(values).all(0), strict=True) if not ok]:
        raise UsageError(
            f"column(s) {bad} of {source} hold infinite values or values beyond float32's range "
            f"(about 3.4e38), which the model cannot use. Fix: leave those cells empty "
            f"(missing), or give finite numbers within that range."
        )
    return values


# A number as a spreadsheet may write it: -$1,234.50, 75%, 1,5 (a decimal comma),
# 12345678901234567890 (beyond int64).
WRITTEN_NUMBER = r"[-+]?[$€£]?-?(\d{1,3}(,\d{3})+|\d+)(\.\d+|,\d+)?\s?%?"
AS_TEXT = ("(with $, %, thousands separators or decimal commas, or past 64-bit integers). Fix: "
           "save them as plain numbers (pd.read_csv(FILE, thousands=',') reads 1,000; "
           "decimal=',' reads 1,5)")  # fmt: skip


def as_typed(columns, names: list[str]) -> list[str]:
    """The columns whose names Hydra reads as other text unquoted (1.50: 1.5, true: True)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parse = OverridesParser.create().parse_override

    def read(column) -> str:
        try:
            return str(parse(f"k={column}").value())
        except Exception:  # not an override's value at all (a,b): Hydra's own line
            return str(column)

    return [str(c) for c in columns if str(c) not in names and read(c) in names]


def written_numbers(values: pd.Series) -> bool:
    """Text that is all numbers, as pandas leaves "1,000", "$10", "75%" and 20-digit integers."""
    first = values.first_valid_index()  # words: one cell tells, not every row of a large file
    if first is None or not re.fullmatch(WRITTEN_NUMBER, str(values[first])):
        return False
    return bool(values.dropna().astype(str).str.fullmatch(WRITTEN_NUMBER).all())


def category(value, cats: list[str]) -> str:
    """A cell as the name of the run's category it is, however pandas read either: TRUE, True and
    true (booleans where a column holds only those), 1 and 1.0 (an empty cell makes ints float)."""
    if isinstance(value, float) and value.is_integer() and str(int(value)) in cats:
        return str(int(value))
    same = [c for c in cats if c.lower() == str(value).lower() in ("true", "false")]
    return same[0] if same else str(value)


def load(cfg: DictConfig, seed: int, fold=None, fitted: Spec | None = None):
    frame = read_table(cfg.path, text=fitted.preprocess["categorical"] if fitted else ())
    train, val, spec = table_splits(
        frame, cfg, seed, fold, shown(cfg.path), cfg.task, cfg.standardize, fitted=fitted
    )
    spec.sha1 = sha1_of(cfg.path)
    return train, val, spec


def table_splits(
    frame: pd.DataFrame,
    cfg: DictConfig,
    seed: int,
    fold: list[int] | None,
    source: str,
    task: str,
    standardize: bool,
    also_fit: pd.DataFrame | None = None,
    ddof: int = 0,
    fitted: Spec | None = None,
) -> tuple[Split, Split, Spec]:
    """A table split by dataset.val_fraction or fold (k, i), statistics fitted on training rows;
    for a saved run (eval, resume) the run's own, so any file with its columns (in any order, new
    categories all zeros) means what the run's file meant, as in predictions."""
    target = cfg.target
    if target not in frame.columns:
        near = None if fitted else alike(target, frame.columns)  # Y: y, saleprice: SalePrice
        fix = typed_arg("dataset.target", near or str(frame.columns[-1]))  # or its last
        fix = commas_fix(frame.columns, f"give a file with a column '{target}'" if fitted else fix)
        if not fitted and (typed := as_typed(frame.columns, [target])):
            quoted = f"\"dataset.target='{typed[0]}'\""
            fix = f"quote it, as Hydra reads {typed[0]} as {target} otherwise: {quoted}"
        raise UsageError(
            f"dataset.target={target} is not a column of {source}; its columns are: "
            f"{listed(frame.columns)}. Fix: {fix}."
        )
    if not fitted and (unknown := [c for c in cfg.drop if c not in frame.columns]):  # not features
        typed = as_typed(frame.columns, unknown)  # true: True
        named = [c for c in cfg.drop if c in frame.columns] + typed
        named += [n for c in unknown if (n := alike(c, frame.columns)) and n not in named]  # Id
        fix = list_arg("dataset.drop", named, quote_all=bool(typed))
        fix = f"quote them, as Hydra reads {typed[0]} otherwise: {fix}" if typed else fix
        raise UsageError(f"dataset.drop names {unknown}, which {source} does not have. Fix: {fix}.")
    if not fitted and target in cfg.drop:  # it would be predicted all the same
        rest = list_arg("dataset.drop", [c for c in cfg.drop if c != target])
        raise UsageError(f"dataset.drop names '{target}', the column to predict (dataset.target="
                         f"{target}). Fix: {rest}, or another dataset.target.")  # fmt: skip
    text = [c for c in frame if c not in cfg.drop and not pd.api.types.is_numeric_dtype(frame[c])]
    if not fitted and (written := [c for c in text if written_numbers(frame[c])]):
        cells = frame[written[0]].dropna().astype(str)  # one that is not a plain number, first
        example = cells[pd.to_numeric(cells, errors="coerce").isna()].tolist() + cells.tolist()
        ids = f", or {list_arg('dataset.drop', [*cfg.drop, written[0]])} if they are ids"
        ids = ids if written[0] != target else ""
        raise UsageError(f"column(s) {written} of {source} hold numbers that read as text, such as "
                         f"'{example[0]}' {AS_TEXT}{ids}.")  # fmt: skip
    index = frame.columns[0]  # pandas' to_csv writes its row index as a first, unnamed column
    if not fitted and str(index).startswith("Unnamed: ") and index not in (target, *cfg.drop):
        if pd.api.types.is_integer_dtype(frame[index]) and frame[index].is_unique:
            note(f"ignored column '{index}' of {source}, a row index (pandas' to_csv writes "
                 f"one unless index=False)")  # fmt: skip
            frame = frame.drop(columns=index)
    if unlabeled := frame[target].isna().sum():  # nothing to learn from: dropped, not labelled
        note(f"dropped {unlabeled} row(s) of {source} with no value in '{target}'")
        frame = frame.dropna(subset=[target]).reset_index(drop=True)
        for col in [] if fitted else [c for c in text if c != target]:  # numbers, now that a
            numbers = pd.to_numeric(frame[col], errors="coerce")  # dropped row's 'Total' went
            if numbers.count() == frame[col].count() > 0 and np.isfinite(numbers.dropna()).all():
                frame[col] = numbers
    if frame.empty:
        others = listed(frame.columns.drop(target))  # a saved run keeps its own
        other = f", or dataset.target=<another of: {others}>" if others and not fitted else ""
        raise UsageError(
            f"column '{target}' of {source} has no values: no row to learn from. Fix: fill it "
            f"in{other}."
        )

    y = frame[target]
    if pd.api.types.is_float_dtype(y) and ((y % 1 == 0) & (y.abs() < 2**53)).all():
        frame[target] = y = y.astype("int64")  # 0/1 that an empty cell made 0.0/1.0
    # True/False is a class, not a number
    numeric_target = pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y)
    task = fitted.task if fitted else task
    stray = y[pd.to_numeric(y, errors="coerce").isna()] if not numeric_target else y[:0]
    if task != "classification" and 0 < len(stray) <= len(y) // 10:  # numbers, but for a few
        ids = y.value_counts().eq(1).sum() * 2 > len(y)  # most rows a value of their own: no names
        raise UsageError(
            f"column '{target}' of {source} holds numbers but for {len(stray)} cell(s) such as "
            f"'{stray.iloc[0]}'. Fix: leave them empty (those rows are dropped)"
            f"{'' if fitted or ids else ', or dataset.task=classification if its values are names'}"
            f"."
        )
    if task == "auto":
        task = "regression" if numeric_target else "classification"
        if 0 < 2 * len(stray) < len(y):  # mostly numbers: a price with "n/a" in 20% of rows
            note(f"column '{target}' of {source} is read as classes: {len(stray)} of its {len(y)} "
                 f"cells are not numbers, such as '{stray.iloc[0]}'. Fix: leave those cells "
                 f"empty (their rows are dropped) to predict it as a number.")  # fmt: skip
    if task == "regression" and not numeric_target:
        fix = "give numbers in it" if fitted else "dataset.task=classification"
        raise UsageError(
            f"{'the run is a regression' if fitted else 'dataset.task=regression'} but column "
            f"'{target}' of {source} is not numeric. Fix: {fix}."
        )

    if fitted and fitted.class_names:  # TRUE beside 'no' is text: the run's True all the same
        frame[target] = frame[target].map(lambda v: category(v, fitted.class_names))
    n = len(frame)
    if fold is not None:
        train_at, val_at = fold_rows(n, *fold, cfg.shuffle_folds, seed)
    else:
        n_val = max(1, round(n * cfg.val_fraction)) if cfg.val_fraction else 0
        if n - n_val < 1:
            raise UsageError(
                f"{source} has {n} labelled row(s): too few to hold out {cfg.val_fraction:.0%} for "
                f"validation and still train. Fix: add rows, or dataset.val_fraction=0."
            )
        order = np.random.default_rng(seed).permutation(n)
        train_at, val_at = order[n_val:], order[:n_val]
    train_rows, val_rows = frame.iloc[train_at], frame.iloc[val_at]

    features = [c for c in frame.columns if c != target and c not in cfg.drop]
    if fitted:  # a saved run (eval, resume): its own statistics, classes and target scale
        stats, classes, scale = fitted.preprocess, fitted.class_names, fitted.target_scale
        if classes and (unseen := sorted(set(frame[target].astype(str)) - set(classes))):
            raise UsageError(
                f"class(es) {unseen} of '{target}' in {source} are not among the run's classes "
                f"({', '.join(classes)}). Fix: give rows of those classes only, or train anew."
            )
    else:
        # The book fits §4.10's statistics on every row of both files, held-out folds included.
        fit_on = train_rows if also_fit is None else pd.concat([frame, also_fit])
        stats = fit_preprocess(fit_on[features], standardize, cfg.max_categories, ddof)
        too_many = f"more than dataset.max_categories={cfg.max_categories} distinct values"
        ignored = stats["dropped"]  # empty in training rows, or text of too many values
        many = [c for c in ignored if fit_on[c].notna().any()]  # 90 numbers and 5 '?', say
        for col in [*stats["categorical"], *many]:  # 48 categories for one stray '?'
            values = frame[col].dropna().astype(str).unique()  # held-out rows' too: a '?' there
            words = [v for v in values if pd.isna(pd.to_numeric(v, errors="coerce"))]
            if 0 < len(words) <= max(1, len(values) // 10) and len(words) < len(values) - 1:
                cats = stats["categorical"].get(col)
                fate = f"each of its {len(cats)} values is a category" if cats else "it is ignored"
                note(f"column '{col}' of {source} holds numbers but for {len(words)} value(s) "
                     f"such as '{words[0]}', so {fate}{'' if cats else f' (text of {too_many})'}. "
                     f"Fix: leave those cells empty to use it as numbers.")  # fmt: skip
                ignored = [c for c in ignored if c != col]  # said here, not again below
        if ignored:
            note(f"ignored column(s) {ignored} (empty in training rows or {too_many})")
        if not stats["columns"]:  # Fix: what made them unusable, where it was a key's
            wide = max((fit_on[c].nunique() for c in many), default=0)
            fix = f"dataset.max_categories={wide}" if wide else "add feature columns"
            dropped = f"keep one out of {list_arg('dataset.drop', cfg.drop)}"
            raise UsageError(f"{source} has no usable feature column besides '{target}'. Fix: "
                             f"{dropped if cfg.drop and not features else fix}.")  # fmt: skip
        classes, scale = None, None
        if task == "classification":
            classes = sorted(train_rows[target].astype(str).unique())
            one = frame[target].nunique() < 2  # else one only in training: "add training rows"
            if one or frame[target].is_unique:  # ids, or dataset.task=classification of prices
                what = f"a different value in each of its {n} rows (an id?)"
                what = f"one class ('{classes[0]}') in all its rows" if one else what
                others = listed(frame.columns.drop(target))
                numbers = "dataset.task=regression, or " if numeric_target and not one else ""
                raise UsageError(
                    f"column '{target}' of {source} has {what}, so there is nothing to learn. "
                    f"Fix: {numbers}dataset.target=<another column: {others}>."
                )
            ys, k = frame[target].astype(str), fold[0] if fold else 0
            for i in range(k) or [None]:  # every fold: none is refused after others trained
                at = fold_rows(n, k, i, cfg.shuffle_folds, seed) if k else (train_at, val_at)
                if unseen := sorted(set(ys.iloc[at[1]]) - set(ys.iloc[at[0]])):
                    where, other = "", ", or change seed or dataset.val_fraction"
                    if k:  # shuffled folds that still hold a class out: only its rows help
                        where, other = f" of fold {i + 1}/{k}", ", or dataset.shuffle_folds=true"
                        other = "" if cfg.shuffle_folds else f"{other} (the rows are in order)"
                    if 0 < 2 * len(stray) < len(y):  # prices, and 'n/a'
                        typed = " (and drop dataset.task=classification)" * (cfg.task != "auto")
                        other += (f", or leave the {len(stray)} cell(s) that are not numbers "
                                  f"empty{typed} to predict it as a number")  # fmt: skip
                    raise UsageError(
                        f"class(es) {unseen} of '{target}' occur only in the validation rows"
                        f"{where}, so the model could never learn them. Fix: add training rows of "
                        f"them{other}."
                    )  # fmt: skip
        elif cfg.standardize_target:  # predictions and *_rmse are scaled back to target units
            y = train_rows[target].astype(float)
            with np.errstate(over="ignore", invalid="ignore"):  # 1e200, inf: float32's one line
                scale = {"mean": float(y.mean()), "std": float(y.std(ddof=0)) or 1.0}
    spec = Spec(
        cfg.name, task, len(stats["columns"]), len(classes) if classes else 1, class_names=classes,
        target_scale=scale, fold=list(fold) if fold else None, target=target, drop=list(cfg.drop),
        preprocess=stats,
    )  # fmt: skip

    def split(rows: pd.DataFrame) -> Split:
        X = transform(rows[features], stats, source)
        if classes:
            labels = pd.Categorical(rows[target].astype(str), categories=classes).codes
            return Split(torch.from_numpy(X), torch.tensor(labels, dtype=torch.long))
        y = torch.from_numpy(float32(rows[[target]].to_numpy(float), [target], source))  # (N, 1)
        return Split(torch.from_numpy(X), (y - scale["mean"]) / scale["std"] if scale else y, scale)

    return split(train_rows), split(val_rows), spec
