"""d2lrun from Python and Jupyter: the command line's runs, as objects.

    import d2lrun
    run = d2lrun.train("model=lenet", "trainer.epochs=2")  # = d2lrun model=lenet trainer.epochs=2
    run.metrics, run.summary, run.plot()                    # the epochs, metrics.json, the curves
    table = d2lrun.sweep("optim.lr=0.01,0.1")               # = d2lrun -m optim.lr=0.01,0.1
    table = d2lrun.report("outputs/multirun/DATE/TIME")      # = d2lrun-report DIR

Each call runs the `d2lrun` command's own Hydra app (d2lrun.cli) in this process, so the configs,
the run folders and, on CPU, the numbers are the command line's. A mistake raises the exception of
d2lrun.errors with the one line the command would print (never SystemExit). A sweep whose jobs did
not all complete still returns its table, with a warning: its rows say what failed and why.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

from d2lrun.errors import Abort, RunFailed, UsageError, translate


def train(*overrides: str):
    """Train as `d2lrun OVERRIDES...` does; the run reloaded (d2lrun.reload.SavedRun)."""
    from d2lrun.cli import train_arguments
    from d2lrun.reload import load_run

    if {"-m", "--multirun"} & set(overrides):
        raise UsageError("d2lrun.train trains one run. Fix: d2lrun.sweep(...) for a sweep.")
    given = _given(overrides, "hydra.run.dir")
    run_dir = given or _new_folder("outputs")
    try:
        _run_app(train_arguments([*overrides, *([] if given else [f"hydra.run.dir={run_dir}"])]))
    except BaseException:
        if not given:  # refused before it started: no folder left behind, as on the command line
            _remove_if_empty(run_dir)
        raise
    return load_run(run_dir)


def sweep(*overrides: str):
    """Run the sweep `d2lrun -m OVERRIDES...` runs; its table (summary.csv) as a DataFrame."""
    given = _given(overrides, "hydra.sweep.dir")
    sweep_dir = given or _new_folder("outputs/multirun")
    args = [o for o in overrides if o not in ("-m", "--multirun")]
    summary = Path(sweep_dir) / "summary.csv"
    try:
        _run_app(["-m", *args, *([] if given else [f"hydra.sweep.dir={sweep_dir}"])])
    except RunFailed as e:  # jobs that did not complete: the table says which and why
        if str(summary) not in str(e):
            raise
        warnings.warn(str(e), stacklevel=2)
    except BaseException:
        if not given:
            _remove_if_empty(sweep_dir)
        raise
    return _table(summary)


def report(sweep_dir: str | Path):
    """The table of a sweep folder, a partial one too (`d2lrun-report DIR`), as a DataFrame."""
    from d2lrun.sweeps import report as write_report

    write_report(Path(sweep_dir), show=False)  # summary.csv and heatmap.png, written again
    return _table(Path(sweep_dir) / "summary.csv")


def _run_app(args: list[str]) -> None:
    """`d2lrun ARGS` in this process; its error as d2lrun.errors' exception, without a traceback
    into Hydra. sys.argv and HYDRA_FULL_ERROR are what they were afterwards."""
    from d2lrun import cli

    argv, full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = ["d2lrun", *args]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises the error instead of printing and exiting
    try:
        cli._train()
    except SystemExit as e:  # Hydra's argument parser refused one
        if e.code:
            raise UsageError(
                f"d2lrun refused the arguments {' '.join(args)}. Fix: give overrides such as "
                f"'optim.lr=0.1' (d2lrun --help lists them)."
            ) from None
    except (Exception, Abort) as e:
        if isinstance(e, Abort) and isinstance(e.__cause__, Exception):
            e = e.__cause__  # the task's own error, carried past Hydra by d2lrun.cli.task
        error = translate(e)
        if error is None:  # a bug: the whole traceback
            raise
        if isinstance(error, Abort):  # an unwritable folder, a sweep with failed jobs
            error = RunFailed(str(error))
        raise error.with_traceback(None) from None
    finally:
        sys.argv = argv
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


def _given(overrides, key: str) -> str | None:
    return next((o.partition("=")[2] for o in overrides if o.startswith(f"{key}=")), None)


def _new_folder(parent: str) -> str:
    """PARENT/DATE/TIME as the command line names it, made now, so two calls never share one."""
    from d2lrun.sweeps import unique_dir

    return unique_dir(f"{parent}/{time.strftime('%Y-%m-%d/%H-%M-%S')}")


def _remove_if_empty(folder: str) -> None:
    try:
        Path(folder).rmdir()
    except OSError:
        pass  # not empty, or already gone


def _table(summary: Path):
    import pandas as pd

    return pd.read_csv(summary)
