"""How runs stop: Ctrl-C and the stop signals that clusters and containers send end a run once,
held back while it writes its files (d2lrun.files), and reach the workers of a sweep."""

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from d2lrun.errors import Interrupted
from d2lrun.files import hold, running

# What clusters and containers send to stop a process: SIGTERM (Slurm's time limit and scancel,
# docker stop, systemd, Kubernetes) and the warning Slurm can send before (--signal=USR2@90); and
# SIGHUP, a terminal closed or an ssh session dropped (ignored under nohup: then here too).
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP")

# Names the file that says a signal stopped this process's sweep, which of two into one folder
STOP_MARKER = "D2LRUN_STOP_MARKER"  # stops only that one; joblib's workers inherit it (environ)


def signals() -> list[int]:
    """Ctrl-C's and the stop signals' numbers, less the ignored (Ctrl-C in a background job)."""
    numbers = [getattr(signal, n) for n in ("SIGINT", *STOP_SIGNALS) if hasattr(signal, n)]
    return [n for n in numbers if signal.getsignal(n) is not signal.SIG_IGN]


def by(signum: int) -> str:
    """What sent signum: Ctrl-C, or the signal's name (SIGTERM)."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def interrupted(signum: int) -> str:
    """'interrupted', by the signal's name but Ctrl-C's (the user's own keys)."""
    return "interrupted" + ("" if signum == signal.SIGINT else f" by {by(signum)}")


def before_saving(e: KeyboardInterrupt) -> Interrupted:
    """Ctrl-C or a stop signal (Stop) that ended a command before it saved anything."""
    signum = getattr(e, "signum", signal.SIGINT)
    return Interrupted(f"{interrupted(signum)} before anything was saved.", signum)


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
        # Only those with a job: an idle worker has no handler, dies, and its pool then kills all
        busy = running(sweep_dir)
        workers = [w for w in getattr(joblib_pool(), "_processes", {}).values() if w.pid in busy]
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
        if pool := joblib_pool():  # reused, its workers kept the cwd and environment of the
            pool.shutdown(wait=True)  # first sweep of a notebook: the next starts its own
    except BaseException:  # joblib killed its workers, one maybe as Hydra made its job's folder
        with contextlib.suppress(OSError):  # whose job never began: as of any job not started,
            for folder in filter(Path.is_dir, sweep_dir.iterdir() if local else ()):  # no folder
                begun = {p.name for p in folder.iterdir() if p.suffix != ".log"} - {".hydra"}
                if begun <= {".lock"} and (lock := hold(folder)) is not None:  # ('missing', not
                    with lock:  # 'unfinished' in the table); not one a process holds
                        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:  # this sweep ended: a later one into its folder goes on
        marker.unlink(missing_ok=True)


def joblib_pool():  # of hydra/launcher=joblib, if this process started one
    return getattr(sys.modules.get("joblib.externals.loky.reusable_executor"), "_executor", None)
