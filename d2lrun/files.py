"""A run's files, written atomically (a temporary file in the same folder, fsync, rename): a reader,
a crash or `kill -9` sees the old complete file or the new one. Also its folder's lock, and how
its paths and overrides are shown and quoted."""

import contextlib
import csv
import difflib
import errno
import io
import json
import os
import re
import shlex
import sys
from pathlib import Path

from d2lrun.errors import Interrupted, RunFailed, UsageError


def reader_gone() -> None:
    """stdout's reader left (`d2lrun | head`): what is printed next goes to /dev/null, as Python's
    docs advise, so that neither a BrokenPipeError nor a run stops there."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def say(message: str) -> None:
    """Print a line at once, also when stdout is a file or a pipe (`d2lrun | tee log`), in one
    write: joblib's workers run unbuffered, where print wrote a line and its newline apart and
    another worker's line came in between."""
    try:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the run goes on, unprinted
        reader_gone()


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write bytes to path so that it is never seen half-written; through a link, to the file it
    names (the link kept); to a device or pipe (output=/dev/stdout) as it is: no file to replace."""
    if os.path.exists(path) and not os.path.isfile(path):  # a folder fails here, as it should
        Path(path).write_bytes(data)
        return Path(path)
    path = Path(os.path.realpath(path) if os.path.islink(path) else path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (None, str(tmp)):  # the file meant, not tmp
            e.filename = str(path)  # (a full disk's write names none)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def remove_stale_temporaries(folder: Path) -> None:
    """Delete what atomic_write left in folder when killed (kill -9, power loss)."""
    for tmp in folder.glob(".*.tmp*"):
        pid = tmp.name.rpartition(".tmp")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0 only asks: is that process alive?
        except ProcessLookupError:  # no: its temporary goes
            tmp.unlink(missing_ok=True)
        except PermissionError:  # yes, another user's: its write may still finish
            pass


def claim_dir(base: str | Path) -> Path:
    """Create base, or base_2, base_3, ... when taken; mkdir is atomic: no two callers share one."""
    path = Path(base)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise unwritable(path, e) from None
    for n in range(1, 10_000):
        candidate = path if n == 1 else path.with_name(f"{path.name}_{n}")
        try:  # parents: made again if a refused run has just removed it (empty) meanwhile
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
        except OSError as e:
            raise unwritable(candidate, e) from None
    raise unwritable(path, FileExistsError(17, "all 10,000 suffixes are taken"))


def hold(folder: Path, wait: bool = False, name: str = ".lock"):
    """An exclusive lock on folder while the returned file is open (None: another process holds
    it; wait: until it lets go), which says the holder's process id. The kernel lets go when the
    process ends, even by kill -9."""
    lock = open(Path(folder) / name, "a")  # noqa: SIM115 (open for as long as the run runs)
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): claim_dir's atomic mkdir is the only claim
        return lock
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        lock.close()
        return None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def held(folder: Path) -> bool:
    """A process holds folder's lock (hold): its run goes on."""
    with contextlib.suppress(OSError):  # no such folder (moved, deleted): nothing runs there
        if (lock := hold(folder)) is None:
            return True
        lock.close()
    return False


def held_dir(folder: Path, waiting: str | None = None):
    """folder, made, and locked (hold) while the returned file is open; None while another process
    holds it, or with waiting: that line said, then waited until it lets go."""
    for _ in range(100):  # not for ever: mkdir under /proc says "no such file" every time
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if (lock := hold(folder)) is None and waiting:
                say(waiting)
                lock = hold(folder, wait=True)
        except FileNotFoundError:  # removed since made, by a sweep refused as it started: again
            continue
        except OSError as e:
            raise unwritable(folder, e) from None
        if lock is None or os.fstat(lock.fileno()).st_nlink:
            return lock
        lock.close()  # its holder removed the folder (as above) while this one waited: again
    raise unwritable(folder, FileNotFoundError(2, "No such file or directory"))


def unmade(path: Path) -> list[Path]:
    """path and the folders above it that are not there yet, deepest first: what making it
    makes, for remove_empty to take away again."""
    return [p for p in (path, *path.parents) if not p.exists()]


def remove_empty(folders) -> None:
    """Each folder, in order, if it is empty: what a failed attempt made (deepest first) and left
    empty goes again; any folder with a file stays."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def disk_full(e: OSError) -> bool:  # a want of room (a full disk, a quota), not of permission
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def unwritable(folder: str | Path, e: OSError) -> RunFailed:
    space = "free disk space, or " if disk_full(e) else ""  # a full disk: not the folder
    return RunFailed(
        f"cannot write the output directory {folder} ({e.strerror}). Fix: {space}choose a writable "
        f"one with hydra.run.dir=DIR (hydra.sweep.dir=DIR with -m)."
    )


def write_json(path: str | Path, obj) -> Path:
    return atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: Path) -> dict | None:
    """The JSON object in path; None where it is missing, damaged or no object ([1, 2])."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def completed(folder: Path) -> dict | None:
    """metrics.json of the run that completed in folder, else None."""
    summary = read_json(folder / "metrics.json") or {}
    return summary if summary.get("status") == "completed" else None


@contextlib.contextmanager
def kept_record(folder: Path):
    """Within: a sweep's job starts again (d2lrun.sweeps.prepared drops its earlier metrics.json).
    Stopped before the run wrote its own, the earlier one comes back: saved epochs stay recorded."""
    path = folder / "metrics.json"
    earlier = path.read_bytes() if path.exists() else None
    try:
        yield
    except (KeyboardInterrupt, Interrupted):
        if earlier is not None and not path.exists():
            atomic_write(path, earlier)
        raise


def saved_checkpoint(folder: Path) -> Path | None:
    """folder's last.pt, else its best.pt (killed before trainer.checkpoint_every's first)."""
    return next((p for p in (folder / "last.pt", folder / "best.pt") if p.exists()), None)


def existing(path: str | Path, run: bool = False, key: str = "") -> Path:
    """path, a checkpoint (or with run: a run folder or a checkpoint) that is there; checked also
    before torch's import (d2lrun-eval run=typo: refused in 0.5 s, not 2 s). A typo's Fix names
    the nearest one or two in its folder (10-49-4: 10-49-40), as difflib finds them (key=them)."""
    if not Path(path).exists():
        what = "run folder or checkpoint" if run else "checkpoint"
        fix = "give a path under outputs/" if run else "give a run folder or a .pt file"
        there, names = Path(path).parent, []
        with contextlib.suppress(OSError):  # none there, or a folder it may not read
            names = [p.name for p in there.iterdir()]
        if near := difflib.get_close_matches(Path(path).name, names, n=2, cutoff=0.8):
            near = [shell_arg(key, there / name) if key else str(there / name) for name in near]
            fix = f"{' or '.join(near)} (the nearest there), or {fix}"
        raise UsageError(f"{path}: no such {what}. Fix: {fix}.")
    return Path(path)


def kfold_run(folder: Path) -> bool:
    """folder is a k-fold run's: no checkpoint of its own, its first fold's."""
    return not saved_checkpoint(folder) and bool(saved_checkpoint(folder / "fold_0"))


def untrained(folder: Path, ended: bool = False) -> bool:
    """folder holds no run: only Hydra's .hydra/ and job log (hydra/job_logging=default), the
    lock, a tensorboard/ logger folder, the metrics.json of a run stopped before its first epoch
    ("nothing to resume"), which leaves no folder behind, and a k-fold run's fold_i/ that holds no
    more; ended: or of one that diverged or failed in its first epoch, whose record stays (a named
    folder it may run into again)."""
    if not folder.is_dir():
        return False
    summary = read_json(folder / "metrics.json") or {}
    ends = ("interrupted", *["diverged", "failed"] * ended)
    epochs = summary.get("epochs_completed", 0 if ended else None)  # a k-fold run's: its folds'
    stopped = summary.get("status") in ends and epochs == 0
    kept = {".hydra", ".lock", "tensorboard", *["metrics.json"] * stopped}
    return all(
        p.name in kept or p.suffix == ".log" or p.name.startswith("fold_") and untrained(p, ended)
        for p in folder.iterdir()
    )


def write_csv(path: str | Path, rows: list[dict]) -> Path:
    """Rows of dicts as CSV, columns in first-seen order (csv, not pandas: 0.4 s less a run)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buf := io.StringIO(), fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, buf.getvalue().encode())


def save_torch(paths: str | Path | list[Path], obj) -> None:
    """torch.save to memory once, then write each path atomically: a failed write leaves the old
    file intact (best.pt and last.pt of an epoch are the same bytes, serialized once)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    for path in paths if isinstance(paths, list) else [paths]:
        atomic_write(path, buf.getvalue())


def shown(path: str | Path) -> str:
    """A path as the user would type it: relative to the current folder when it is below it (but
    /: a container's, where /tmp/a is no tmp/a), without the `..` of one given relative to
    another folder (/a/../b is /b)."""
    here, resolved = Path.cwd(), Path(path).resolve()
    if here != Path(here.anchor) and resolved.is_relative_to(here):
        return str(resolved.relative_to(here))
    return os.path.normpath(path)


def shell_arg(key: str, path: str | Path) -> str:
    """KEY=PATH, the path as shown, as a shell and Hydra take it back (typed_arg)."""
    return typed_arg(key, shown(path))


def typed_arg(key: str, value: str) -> str:
    """KEY=VALUE as a shell and Hydra take it back: quoted for the shell when it has a space
    ('resume=my run'), and for Hydra too when its grammar would not read it unquoted: a comma
    (a list: "resume='o,x'"), brackets, quotes, any letter beyond ASCII, spaces at its ends."""
    if not re.fullmatch(r"[\w $%*+\-./:?@\\|]*", value, re.ASCII) or value != value.strip():
        return double_quoted(override(key, value))
    return shlex.quote(f"{key}={value}")


def list_arg(key: str, items, quote_all: bool = False) -> str:
    """KEY=[a,'b c'] as a shell and Hydra take it back: each item quoted for Hydra where its grammar
    would not read it as written (or each, quote_all), the whole quoted for the shell then."""

    def item(i: str) -> str:
        as_written = not quote_all and re.fullmatch(r"[\w.\-]+", i, re.ASCII)
        return i if as_written else override("", i)[1:]

    arg = f"{key}=[{','.join(item(str(i)) for i in items)}]"
    return double_quoted(arg) if "'" in arg else arg


def double_quoted(arg: str) -> str:
    """arg in a shell's double quotes, which keep Hydra's single ones: "k='a b'"."""
    return '"' + re.sub(r'(["$`\\])', r"\\\1", arg) + '"'


def override(key: str, value: str) -> str:
    """key='value', quoted so that Hydra's override grammar reads any value (spaces, quotes, €)."""
    # Its grammar escapes a quote, and doubles only the backslashes before a quote or the end.
    quoted = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value)
    return f"{key}='{quoted}'"


def running(sweep_dir: Path) -> set[int | None]:
    """The processes that hold the lock of a job folder (hold): its job still runs; empty if none
    (None: a holder whose id is not written yet)."""
    holders = set()
    for folder in filter(Path.is_dir, sweep_dir.iterdir()):
        with contextlib.suppress(OSError):  # a folder removed meanwhile: no job there
            if held(folder):
                pid = (folder / ".lock").read_text().strip()
                holders.add(int(pid) if pid.isdigit() else None)
    return holders


def path_fix(arg: str, name: str) -> str | None:
    """The key that a file or folder given alone is meant for: a run's folder or checkpoint for
    resume=, run= or ckpt=, new inputs for input=, a CSV table for dataset.path=; else None."""
    if "=" in arg:
        return None
    if not os.path.exists(arg):  # os.path: False for a name too long, not OSError
        if "/" in arg and (suffix := Path(arg).suffix.lower()) in ("", ".pt", ".pth"):
            key = "resume" if name == "config" else "ckpt" if suffix else "run"
            existing(arg, run=True, key=key)  # a run mistyped: the nearest there, not KEY=VALUE
        return None
    path = Path(arg)
    run = any((path.parent / f).exists() for f in ("last.pt", "best.pt", ".hydra"))
    if path.is_dir() or run and path.suffix.lower() in (".pt", ".pth"):  # not new.pt inputs
        return shell_arg("resume" if name == "config" else "run" if path.is_dir() else "ckpt", arg)
    if name == "predict":
        return shell_arg("input", arg)
    if {".csv", ".tsv", ".txt"} & {s.lower() for s in path.suffixes}:  # data.csv.gz too
        return ("dataset=csv " if name == "config" else "") + shell_arg("dataset.path", arg)
    return None
