"""A run's files, written atomically (a temporary file in the same folder, fsync, rename): a reader,
a crash or `kill -9` sees the old complete file or the new one. Also its lock, signals and plots."""

import contextlib
import csv
import functools
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from d2lrun.errors import RunFailed

# What clusters and containers send to stop a process: SIGTERM (Slurm's time limit and scancel,
# docker stop, systemd, Kubernetes) and the warning Slurm can send before (--signal=USR2@90).
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")

# Names the file that says a signal stopped this process's sweep, which of two into one folder
STOP_MARKER = "D2LRUN_STOP_MARKER"  # stops only that one; joblib's workers inherit it (environ)


def reader_gone() -> None:
    """stdout's reader left (`d2lrun | head`): what is printed next goes to /dev/null, as Python's
    docs advise, so that neither a BrokenPipeError nor a run stops there."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write bytes to path so that it is never seen half-written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename:  # a full disk's write names no file
            e.filename = str(path)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def signals() -> list[int]:
    """Ctrl-C's and the stop signals' numbers, less the ignored (Ctrl-C in a background job)."""
    numbers = [getattr(signal, n) for n in ("SIGINT", *STOP_SIGNALS) if hasattr(signal, n)]
    return [n for n in numbers if signal.getsignal(n) is not signal.SIG_IGN]


def by(signum: int) -> str:
    """What sent signum: Ctrl-C, or the signal's name (SIGTERM)."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


@contextlib.contextmanager
def signals_to(handler):
    """Ctrl-C and the stop signals go to handler(signum, frame) within, in the main thread (the
    only one that takes signals; elsewhere: None); yields the handlers they had, then restored."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    replaced = {}  # filled one by one: a signal between two installs still restores the first
    try:
        for n in signals():
            replaced[n] = signal.signal(n, handler)
        yield replaced
    finally:
        for n, before in replaced.items():
            signal.signal(n, before)


@contextlib.contextmanager
def deferred_signals():
    """Ctrl-C and the stop signals held back until the block has written its files, then handled
    as before; dropped when the block raised or cleared the list it is given."""
    # Not with pthread_sigmask: it holds them back from the main thread only, and the OS then
    # hands them to another (torch's), whose handler still interrupts the main one.
    caught: list[int] = []
    with signals_to(lambda signum, _: caught.append(signum)):
        yield caught
    if caught:
        signal.raise_signal(caught[0])  # now to the handler it had


class Stop(KeyboardInterrupt):
    """A stop signal, raised in the main thread as Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_signals():
    """Within: Ctrl-C or a stop signal ends the run, once. After: the handler it replaced runs."""
    caught: list[int] = []

    def stop(signum, frame):
        if not caught:  # once: a second signal does not break the saving of the first
            caught.append(signum)
            raise Stop(signum)

    replaced = None  # still None when a signal comes while signals_to installs the handlers
    try:
        with signals_to(stop) as replaced:
            yield
    finally:
        if caught and replaced and callable(replaced[caught[0]]):
            replaced[caught[0]](caught[0], None)  # submitit's on a Slurm node checkpoints, requeues


@contextlib.contextmanager
def stopping_workers(sweep_dir: Path, local: bool = True):
    """Within a sweep: Ctrl-C or a stop signal reaches joblib's workers too; raised once saved.
    Not local (Slurm): raised at once, and the jobs go on as Slurm schedules them."""

    def stop(signum, frame):
        if not local:
            raise Stop(signum)
        marker.touch()  # jobs that joblib's pool hands out after this do not start
        loky = sys.modules.get("joblib.externals.loky.reusable_executor")  # joblib's pool, if any
        workers = list(getattr(getattr(loky, "_executor", None), "_processes", {}).values())
        for worker in workers:  # each ends its job as one run ends: saved, then interrupted
            with contextlib.suppress(OSError):
                os.kill(worker.pid, signum)
        deadline = time.monotonic() + 120
        while workers and time.monotonic() < deadline and running(sweep_dir):
            time.sleep(0.1)
        raise Stop(signum)

    os.environ[STOP_MARKER] = f".stopping.{os.getpid()}"  # right for any sweep this process runs
    marker = sweep_dir / os.environ[STOP_MARKER]
    marker.unlink(missing_ok=True)  # a killed process's of the same number
    try:
        with signals_to(stop):
            yield
    finally:  # this sweep ended: a later one into its folder goes on
        marker.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete what atomic_write left in folder when killed (kill -9, power loss); return it."""
    removed = []
    for tmp in folder.glob(".*.tmp*"):
        pid = tmp.name.rpartition(".tmp")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0 only asks: is that process alive?
        except ProcessLookupError:  # no: its temporary goes
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
        except PermissionError:  # yes, another user's: its write may still finish
            pass
    return removed


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
    it; wait: until it lets go). The kernel lets go when the process ends, even by kill -9."""
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
    return lock


def remove_empty(folders) -> None:
    """Each folder, in order, if it is empty: what a failed attempt made (deepest first) and left
    empty goes again; any folder with a file stays."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def unwritable(folder: str | Path, e: OSError) -> RunFailed:
    return RunFailed(
        f"cannot write the output directory {folder} ({e.strerror}). Fix: choose a writable one "
        f"with hydra.run.dir=DIR (hydra.sweep.dir=DIR with -m)."
    )


def write_json(path: str | Path, obj) -> Path:
    return atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def completed(folder: Path) -> dict | None:
    """metrics.json of the run that completed in folder, else None."""
    summary = read_json(folder / "metrics.json") or {}
    return summary if summary.get("status") == "completed" else None


def untrained(folder: Path) -> bool:
    """folder holds no run: only Hydra's .hydra/, the lock, a tensorboard/ logger folder, the
    metrics.json of a run stopped before its first epoch ("nothing to resume"), which leaves no
    folder behind, and a k-fold run's fold_i/ that holds no more."""
    if not folder.is_dir():
        return False
    summary = read_json(folder / "metrics.json") or {}
    stopped = summary.get("status") == "interrupted" and summary.get("epochs_completed") == 0
    kept = {".hydra", ".lock", "tensorboard", *["metrics.json"] * stopped}
    return all(
        p.name in kept or p.name.startswith("fold_") and untrained(p) for p in folder.iterdir()
    )


def write_csv(path: str | Path, rows: list[dict]) -> Path:
    """Rows of dicts as CSV, columns in first-seen order (csv, not pandas: 0.4 s less a run)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
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


def curves_figure(rows: list[dict], title: str = ""):
    """Loss (and accuracy) per epoch, training and validation, as the book plots them: a Figure."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, and a faster import
    from matplotlib.ticker import LogFormatterSciNotation, MaxNLocator

    class PlainLog(LogFormatterSciNotation):
        def __call__(self, x, pos=None):  # 0.6, 1e-4: the ticks matplotlib labels, narrower
            short = f"{x:g}" if x >= 0.01 else f"{x:.0e}".replace("e-0", "e-")
            return short if super().__call__(x, pos) else ""

    epochs = [r["epoch"] for r in rows]
    panels = [("loss", "loss")] + ([("acc", "accuracy")] if "val_acc" in rows[0] else [])
    fig = Figure(figsize=(4.5 * len(panels), 3.5))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    marker = "o" if len(rows) <= 30 else None
    for ax, (key, label) in zip(axes, panels, strict=True):
        for split, style in (("train", "-"), ("val", "--")):
            if f"{split}_{key}" in rows[0]:
                values = [r[f"{split}_{key}"] for r in rows]
                ax.plot(epochs, values, style, marker=marker, label=f"{split} {label}")
        ax.set(xlabel="epoch", ylabel=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:  # one epoch: its tick, not 0.945 ... 1.065
            ax.set_xticks(epochs)
        if key == "loss" and all(r["train_loss"] > 0 for r in rows):
            ax.set_yscale("log")  # 6×10⁻¹ pushed the axis label off the figure's edge
            ax.yaxis.set_major_formatter(PlainLog())
            ax.yaxis.set_minor_formatter(PlainLog())
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    # Fixed margins rather than tight_layout(), which measured 0.17 s of a 2.8 s default run.
    fig.subplots_adjust(left=0.17 / len(panels), right=0.97, bottom=0.14, top=0.87, wspace=0.3)
    # IPython shows an object through its _repr_png_; a Figure made without pyplot has none.
    fig._repr_png_ = functools.partial(png, fig)
    return fig


def png(fig) -> bytes:
    """A matplotlib Figure as PNG bytes, at the resolution of the run's curves.png."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def curves_png(rows: list[dict], title: str) -> bytes:
    """curves.png's bytes: the curves_figure of the rows."""
    return png(curves_figure(rows, title))


class Plotter(contextlib.AbstractContextManager):
    """curves.png drawn by helper processes (`python -m d2lrun.files`) started ahead: their import
    of matplotlib (0.3-0.4 s, a tenth of the default run) runs beside the command's work, and a
    stack's plots (0.1-0.3 s each) are drawn side by side, one helper per core (d2lrun.batched)."""

    # Processes, not multiprocessing: its spawn imports the caller's main script again, which a
    # script without `if __name__ == "__main__"` reruns.

    def __init__(self, helpers: int = 1):
        self.helpers = start_helpers(helpers)

    def __exit__(self, *exc) -> None:  # the command ended: a helper still waiting goes
        for helper in self.helpers:
            helper.kill()
            helper.wait()

    def __call__(self, rows: list[dict], title: str) -> bytes:
        return self.many([(rows, title)])[0]

    def many(self, plots: list[tuple[list[dict], str]]) -> list[bytes]:
        """curves.png of each (rows, title), in order: by the helpers started ahead (each draws
        once), else by new ones, one per core; where none can, here."""
        from concurrent.futures import ThreadPoolExecutor

        helpers, self.helpers = self.helpers[: len(plots)], self.helpers[len(plots) :]
        if not helpers and len(plots) > 1:
            helpers = start_helpers(min(len(plots), os.cpu_count() or 1))
        helpers = helpers or [None]
        parts = [plots[i :: len(helpers)] for i in range(len(helpers))]
        with ThreadPoolExecutor(len(helpers)) as pool:
            drawn = list(pool.map(helper_pngs, helpers, parts))
        return [drawn[i % len(helpers)][i // len(helpers)] for i in range(len(plots))]


def start_helpers(count: int) -> list[subprocess.Popen]:
    helpers = []
    with contextlib.suppress(OSError):  # none, or fewer: drawn here
        for _ in range(count):
            helpers.append(subprocess.Popen(
                [sys.executable, "-m", "d2lrun.files"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
            ))  # fmt: skip
    return helpers


def helper_pngs(helper: subprocess.Popen | None, plots: list) -> list[bytes]:
    """The helper's PNG of each plot, each after its length; drawn here if it cannot."""
    with contextlib.suppress(AttributeError, OSError, ValueError, subprocess.SubprocessError):
        out, _ = helper.communicate(json.dumps(plots).encode(), timeout=600)
        stream = io.BytesIO(out)  # 8 bytes of length, then the PNG
        pngs = [stream.read(int.from_bytes(n, "big")) for n in iter(lambda: stream.read(8), b"")]
        if helper.returncode == 0 and [p[:4] for p in pngs] == [b"\x89PNG"] * len(plots):
            return pngs
    return [curves_png(*plot) for plot in plots]  # no helper (it could not start, or was killed)


def shown(path: str | Path) -> str:
    """A path as the user would type it: relative to the current folder when it is below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def running(sweep_dir: Path) -> bool:
    """Whether a process holds the lock of a job folder (d2lrun.files.hold): that job still runs."""
    locks = [hold(folder) for folder in filter(Path.is_dir, sweep_dir.iterdir())]
    for lock in filter(None, locks):
        lock.close()
    return None in locks


if __name__ == "__main__":  # Plotter's helper: matplotlib at once, then plots in, PNGs out
    import matplotlib.figure  # noqa: F401  (while the command works)

    for rows, title in json.loads(sys.stdin.buffer.read() or "[]"):  # none: it ended first
        picture = curves_png(rows, title)  # not `png`: that is the function curves_png calls
        sys.stdout.buffer.write(len(picture).to_bytes(8, "big") + picture)
