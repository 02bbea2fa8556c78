"""d2lrun from Python and Jupyter (examples in d2lrun/__init__.py): the commands' runs as objects.

Each call runs the command's Hydra app (d2lrun.app) in this process: the same configs, folders
and, on CPU, numbers. A mistake raises d2lrun.errors' exception with the command's one line.
"""

import re
import shlex
import warnings
from collections.abc import Callable
from pathlib import Path

from d2lrun import app, sweeps
from d2lrun.config.messages import explain
from d2lrun.errors import Bug, UsageError
from d2lrun.stopping import deferred_signals


def train(*overrides: str):
    """As `d2lrun OVERRIDES`: the run reloaded (SavedRun), or one per fold (dataset.folds=K)."""
    overrides = plain(overrides, "train")
    if {"-m", "--multirun", "hydra.mode=MULTIRUN"} & set(overrides):
        rest = ", ".join(repr(o) for o in overrides if not o.startswith(("-", "hydra.mode")))
        raise UsageError(f"d2lrun.train trains one run. Fix: d2lrun.sweep({rest or '...'}).")
    run_dir = raising(app.train, overrides)
    k = sum(1 for _ in run_dir.glob("fold_*"))
    return [load_run(run_dir / f"fold_{i}") for i in range(k)] if k else load_run(run_dir)


def sweep(*overrides: str):
    """Run the sweep `d2lrun -m OVERRIDES...` runs; its table (summary.csv) as a DataFrame."""
    sweep_dir, failure = raising(app.sweep, plain(overrides, "sweep"))
    if failure:  # jobs that did not complete: the table says which and why
        warnings.warn(failure, stacklevel=2)
    return table(sweep_dir)


def report(sweep_dir: str | Path):
    """The table of a sweep folder, a partial one too (`d2lrun-report DIR`), as a DataFrame."""
    sweep_dir = a_path(sweep_dir, "report", "outputs/multirun/DATE/TIME")
    raising(sweeps.report, sweep_dir, False)  # summary.csv and heatmap.png, written again
    return table(sweep_dir)


def load_run(path=None, ckpt=None, device="cpu", overrides=()):
    """A saved run (SavedRun) from its folder or one checkpoint; overrides: where its data is now
    (dataset.path=...). device: a name or a torch.device."""
    path, ckpt = (p and a_path(p, "load_run", "outputs/DATE/TIME") for p in (path, ckpt))
    overrides = (overrides,) if isinstance(overrides, str) else tuple(overrides)  # one, "seed=0"
    overrides = plain(overrides, "load_run", "RUN, overrides=['dataset.path=FILE']")
    return raising(reloaded, path, ckpt, str(device), overrides)


def reloaded(*args):
    from d2lrun import reload  # after raising has imported torch, where Ctrl-C is held back

    return reload.load_run(*args)


def a_path(value, name: str, example: str) -> Path:
    """A folder or file given as text or a Path; anything else refused in one line."""
    if not isinstance(value, (str, Path)):
        raise UsageError(f"d2lrun.{name} takes a path as text or a Path; got {value!r}. "
                         f"Fix: d2lrun.{name}('{example}').")  # fmt: skip
    return Path(value)


def plain(overrides: tuple, name: str, example="'optim.lr=0.1', 'trainer.epochs=3'") -> list[str]:
    """The overrides, also when given as one list; the command line's flags are refused."""
    if len(overrides) == 1 and isinstance(overrides[0], (list, tuple)):
        overrides = tuple(overrides[0])
    if bad := [o for o in overrides if not isinstance(o, str)]:  # ("optim.lr", 0.1)
        raise UsageError(
            f"d2lrun.{name} takes overrides as text, one KEY=VALUE each; got {bad[0]!r}. "
            f"Fix: d2lrun.{name}({example})."
        )
    if line := next((o for o in overrides if o.split(maxsplit=1)[:1] == ["d2lrun"]), None):
        words = line.split()[1:]  # a command line pasted: its call, with the same overrides
        call = "sweep" if words[:1] in (["-m"], ["--multirun"]) else "train"
        args = ", ".join(map(repr, words[call == "sweep" :]))
        raise UsageError(f"d2lrun.{name} takes overrides, not a command line ({line!r}). "
                         f"Fix: d2lrun.{call}({args}).")  # fmt: skip
    multirun = ("-m ", "--multirun ")  # a command line's "-m a=1,2" as one string
    overrides = [
        w for o in overrides for w in (o.split(maxsplit=1) if o.startswith(multirun) else [o])
    ]
    if flags := [o for o in overrides if o.startswith("-") and o not in ("-m", "--multirun")]:
        own = {"-cn", "--config-name", "-cp", "--config-path"}  # which d2lrun refuses as well
        shell = f"d2lrun {shlex.join(overrides)} in a shell, or "
        shell = "" if own & {f.split("=")[0] for f in flags} else shell
        raise UsageError(
            f"d2lrun.{name} takes overrides, not the command's flags ({', '.join(flags)}). "
            f"Fix: {shell}overrides such as 'optim.lr=0.1'."
        )
    return overrides


def raising(fn: Callable, *args):
    """fn(*args); an error raised as d2lrun's one-line exception, without Hydra's traceback."""
    try:
        with deferred_signals():  # Ctrl-C in torch's import: after it, as Interrupted (app.train)
            from d2lrun.trainer import own_torch  # the notebook's dtype, grad mode, random state

        with own_torch():
            return fn(*args)
    except SystemExit:  # Hydra's argument parser refused one (plain let no --help through)
        raise UsageError(
            f"d2lrun refused the arguments {' '.join(map(str, args[0]))}. Fix: give overrides "
            f"such as 'optim.lr=0.1' (d2lrun --help lists them)."
        ) from None
    except (Exception, KeyboardInterrupt) as e:  # Ctrl-C before the run had an epoch too
        error = explain(e)
        if isinstance(error, Bug):  # with its traceback
            raise
        error.args = (in_python(str(error)),)
        raise error.with_traceback(None) from None


def in_python(line: str) -> str:
    """An error's line with the commands it advises as this API's calls (d2lrun -m X: sweep)."""

    def call(name: str):  # d2lrun.NAME('ARG', ...): the command's arguments, as a shell reads them
        return lambda m: f"d2lrun.{name}({', '.join(map(repr, shlex.split(m[1])))})"

    more = r"""(?: [\w.+~]+=\S*[^\s.]| "[^"]*")*"""  # trainer.epochs=3 "dataset.root='a b'"
    line = re.sub(rf"d2lrun ((?:'resume=[^']*'|resume=\S+){more})", call("train"), line)
    again = r"run the same command again with (\S+|'[^']*')"
    line = re.sub(again, lambda m: f"call d2lrun.sweep again with the same overrides and "
                  f"{shlex.split(m[1])[0]!r}", line)  # fmt: skip
    line = re.sub(r"d2lrun -m (\S+?)(?=\.?(\s|$))", call("sweep"), line)  # not the line's .
    line = re.sub(r"d2lrun-report (\S*/\S*)", r"d2lrun.report('\1')", line)
    each = r"(one override per argument: )(.+)\.$"  # 'a=1' 'b=2': one string to Python
    line = re.sub(each, lambda m: m[1] + ", ".join(m[2].split(" ")) + ".", line)
    return line.replace("d2lrun-report one of them", "d2lrun.report(...) of one of them")


def table(sweep_dir: Path):
    import pandas as pd

    return pd.read_csv(sweep_dir / "summary.csv")
