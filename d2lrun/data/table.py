"""Any CSV file read into a DataFrame (pandas), every way it can be unreadable as one line."""

import unicodedata
import warnings
from pathlib import Path

import pandas as pd

from d2lrun.errors import UsageError
from d2lrun.files import shown


def read_table(
    path: str | Path, key: str = "dataset.path", na_values: list | None = None, text=()
) -> pd.DataFrame:
    """Read a CSV file, turning every way it can be unreadable into one clear error; the
    columns `text` as text (a run's categories: "1" stays "1" where an empty cell is read)."""
    # Shown as the user would type it: config paths are stored absolute (d2lrun.config.checked).
    p, where = Path(str(path)).expanduser(), f"{key}={shown(path)}"
    if not p.exists():
        raise UsageError(f"{where}: no such file. Fix: {key}=<the path of a CSV file>.")
    if p.is_dir():
        raise UsageError(
            f"{where} is a directory, not a CSV file. Fix: {key}={shown(path)}/FILE.csv."
        )
    # na_values, when given, are the only strings read as missing (instead of pandas' list).
    only_these = {} if na_values is None else {"keep_default_na": False, "na_values": na_values}
    # low_memory=False: pandas' default infers each column's type per chunk of rows, so past
    # about 262,144 rows one column read 1.0 above and '1' below: two categories for one value.
    # skipinitialspace: a space after each comma (`a, NA, 2`), as many tools write, read as if
    # none (NA missing, 2 a number, the column `NumRooms`), not as ' NA' and ' 2': categories.
    read = dict(
        dtype=dict.fromkeys(text, str), low_memory=False, skipinitialspace=True, **only_these
    )
    try:
        frame = pd.read_csv(p, **read)
    except UnicodeDecodeError:  # its e.start counts from a chunk of pandas': found again here
        at = "" if p.suffix in COMPRESSED else f" (line {where_not_utf8(p.read_bytes())})"
        raise UsageError(
            f"{where} is not UTF-8 text{at}. Fix: re-save the file as UTF-8."
        ) from None
    except pd.errors.EmptyDataError:
        raise UsageError(
            f"{where} is empty. Fix: give a CSV file with a header row and data rows."
        ) from None
    except pd.errors.ParserError as e:  # a row with more fields than the rows before it
        reason = str(e).strip().splitlines()[-1]
        if "EOF inside string" in reason:  # a field's opening " and no closing one
            raise UsageError(f'{where} has a quote (") that is never closed ({reason}). Fix: '
                             f"close it, or remove it.") from None  # fmt: skip
        fix = commas_fix(
            pd.read_csv(p, nrows=0).columns, "give every row as many fields as the header"
        )
        raise UsageError(f"{where} has ragged rows ({reason}). Fix: {fix}.") from None
    except Exception as e:  # gzip's BadGzipFile, EOFError, zipfile's, lzma's: a packed file broken
        if p.suffix.lower() not in COMPRESSED:
            raise
        raise UsageError(
            f"{where} cannot be unpacked as a {p.suffix} file ({type(e).__name__}: {e}). Fix: "
            f"pack it again, or rename it without {p.suffix} if it is plain CSV."
        ) from None
    # Each row with more fields than the header: pandas took the first column(s) for the index,
    # every value one column to the left of its name.
    if not frame.index.equals(pd.RangeIndex(len(frame))):
        if frame.index.nlevels > 1 or frame.iloc[:, -1].notna().any():
            fix = commas_fix(frame.columns, "give every row as many fields as the header")
            raise UsageError(
                f"{where} has ragged rows (each has {frame.index.nlevels} field(s) more than the "
                f"header's {len(frame.columns)}). Fix: {fix}."
            )
        with warnings.catch_warnings():  # a comma at the end of each row: the empty field goes
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            frame = pd.read_csv(p, index_col=False, **read)
    if frame.empty:
        raise UsageError(f"{where} has a header but no data rows. Fix: add rows.")
    frame = composed(frame)
    first = pd.read_csv(p, header=None, nrows=1, dtype=str, skipinitialspace=True).iloc[0]
    header = [c for c in first if pd.notna(c)]
    if twice := sorted({c for c in header if header.count(c) > 1}):  # pandas reads x, x.1
        raise UsageError(
            f"{where} names the column(s) {twice} twice in its header; pandas reads the second "
            f"as '{twice[0]}.1', which dataset.drop and dataset.target miss. Fix: give each "
            f"column a name of its own."
        )
    return frame


def commas_fix(columns, otherwise: str) -> str:
    """The Fix for a header read as one column that holds semicolons or tabs (Excel's CSV in many
    locales, where the comma is the decimal mark); otherwise, otherwise."""
    for sep, name in ((";", "semicolons"), ("\t", "tabs")):
        if len(columns) == 1 and sep in str(columns[0]):
            return f"save the file with commas between its columns, not {name}"
    return otherwise


COMPRESSED = (".gz", ".bz2", ".zip", ".xz", ".zst", ".tar")  # pandas reads them unpacked


def where_not_utf8(data: bytes) -> int:
    """The line of the first byte that is not UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return data[: e.start].count(b"\n") + 1
    return 1


def composed(frame: pd.DataFrame) -> pd.DataFrame:
    """frame's names and text in Unicode's composed form (NFC), as typed: a file saved
    decomposed (NFD, as macOS apps may) names 'größe' the same, and its 'ä' is the category a
    run's 'ä' is (0.03 s per 100,000 cells)."""
    names = [unicodedata.normalize("NFC", c) if isinstance(c, str) else c for c in frame]
    frame = frame.set_axis(names, axis=1)  # a copy: the caller's DataFrame stays as it was
    for c in [c for c in frame if pd.api.types.is_string_dtype(frame[c])]:
        frame[c] = frame[c].str.normalize("NFC")
    return frame
