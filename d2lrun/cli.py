"""The command-line entry points (d2lrun, d2lrun-eval, d2lrun-predict, d2lrun-report): each reads
its arguments and calls one function of d2lrun.app or d2lrun.sweeps inside `handle`. Heavy imports
(torch, pandas, matplotlib) wait for the function that needs them, so `--help` is quick; Hydra's
too wait for `handle`, so Ctrl-C or SIGTERM as the command starts is its one line, not a
traceback or a silent death.
"""

import argparse
import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from d2lrun import __version__
from d2lrun.errors import RunFailed
from d2lrun.files import reader_gone
from d2lrun.stopping import Stop, before_saving, signals


def _done() -> None:
    """The command has ended, its files written: a Ctrl-C or SIGTERM in the second that torch's
    teardown takes would kill it with no line and exit -2; now it does nothing. Registered as
    the command ends, after torch's exit handlers: it runs before them."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


_exit_code: int | None = None  # the command's, once it ended: _exit_now ends the process with it


@atexit.register  # first, at this module's import, before torch's: so it runs after theirs
def _exit_now() -> None:
    """The command has ended and every other exit handler has run (torch's, multiprocessing's
    joining the plot helpers, MLflow's): end the process without the interpreter's teardown,
    which freed torch's and pandas' modules one by one for 0.35-0.5 s of every command (2-core
    x86_64, alternating five times: `python -m d2lrun` 2.00 s to 1.65 s, medians). Not where
    Python code called an entry point (tests, a notebook), nor under coverage, whose exit handler
    was registered before this one."""
    if _exit_code is None or "coverage" in sys.modules:
        return
    logging.shutdown()  # registered before this module was imported, so it would run after
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # the reader left: nothing to flush to
            stream.flush()
    os._exit(_exit_code)


def _stop(signum, frame):
    raise Stop(signum)


def handle(prog: str, main: Callable[[], object]) -> None:
    """Run an entry point; any error ends as one line on stderr and its exit code."""
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"  # not app.run's, set while Hydra runs
    # A [HYDRA] line logged after stdout's reader left (`d2lrun -m ... | head -1`) printed a
    # traceback per line; it goes unprinted, as say's lines do.
    logging.raiseExceptions = False
    # A stop signal before the command's own handlers (as Hydra and torch load) killed it with no
    # line, and left a run's claimed folder behind: it ends the command as Ctrl-C does there.
    main_thread = threading.current_thread() is threading.main_thread()
    default = [n for n in signals() if signal.getsignal(n) is signal.SIG_DFL] if main_thread else []
    for signum in default:
        signal.signal(signum, _stop)
    code = 0
    try:
        main()
    except BrokenPipeError:  # `d2lrun --help | head`: the reader left, say nothing
        reader_gone()
        code = 1
    except (Exception, KeyboardInterrupt) as e:
        if full_error:  # the traceback too, above the line; the exit code stays the error's
            import traceback

            traceback.print_exc()
        if isinstance(e, KeyboardInterrupt):  # not explain's import: one in Hydra's, cut short
            error = before_saving(e)  # by the stop, is half done
        else:
            from d2lrun.config.messages import explain

            error = explain(e)
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
        code = error.exit_code
    finally:
        for signum in default:
            signal.signal(signum, signal.SIG_DFL)
        atexit.register(_done)
    if is_command(prog):  # the process is the command itself: python -m d2lrun, or d2lrun
        global _exit_code
        _exit_code = code
    if code:
        sys.exit(code)


def is_command(prog: str) -> bool:
    """Whether this process runs prog as its program: the installed script, or python -m d2lrun."""
    main = sys.modules.get("__main__")
    as_module = getattr(getattr(main, "__spec__", None), "name", None) == "d2lrun.__main__"
    return as_module or Path(getattr(main, "__file__", None) or "").name == prog


def train_main() -> None:
    """`d2lrun`: train one model, or sweep with -m; `resume=RUN` continues a run."""

    def main(app, args: list[str]) -> None:
        if not {"-m", "--multirun"} & set(args):
            app.train(args)
        elif failure := app.sweep(args)[1]:  # jobs that did not complete
            raise RunFailed(failure)

    handle("d2lrun", own_options(main, "config"))


def eval_main() -> None:
    """`d2lrun-eval run=DIR`: metrics of a saved run on its held-out split."""
    handle("d2lrun-eval", own_options(lambda app, args: app.evaluate(args), "eval"))


def predict_main() -> None:
    """`d2lrun-predict run=DIR input=FILE`: predictions for new inputs."""
    handle("d2lrun-predict", own_options(lambda app, args: app.predict(args), "predict"))


def report_main() -> None:
    """`d2lrun-report DIR`: the results table, summary.csv and heatmap.png of a sweep folder."""
    parser = argparse.ArgumentParser(
        prog="d2lrun-report",
        description="The results table, summary.csv and heatmap.png of a sweep "
        "folder written by `d2lrun -m`, even a partial one.",
        epilog="example: d2lrun-report outputs/multirun/2026-11-26/10-00-00",
    )
    parser.add_argument(
        "dir", metavar="DIR", help="a sweep folder, e.g. outputs/multirun/DATE/TIME"
    )
    parser.add_argument("--version", action="version", version=f"d2lrun {__version__}")
    parser.error = lambda message: parser.exit(  # one line, as every d2lrun error, not usage too
        2, f"d2lrun-report: error: {message}. Fix: d2lrun-report outputs/multirun/DATE/TIME.\n"
    )
    args = parser.parse_args()

    def main() -> None:
        from d2lrun.sweeps import report

        if failure := report(Path(args.dir)):
            print(failure)

    handle("d2lrun-report", main)


def own_options(main: Callable[..., object], config_name: str) -> Callable[[], object]:
    """main(d2lrun.app, the arguments), or what the command's own --help and --version print."""

    def run() -> object:
        from d2lrun.config import hydra_args, overrides_of

        args = sys.argv[1:]
        overrides = overrides_of(args)  # a=1 --cfg job b=2: Hydra's parser takes one run of them
        args = searched([a for a in args if a not in overrides]) + overrides
        if "--version" in args:
            return print(f"d2lrun {__version__}")
        parsed = hydra_args(args)
        if getattr(parsed, "help", False):  # --help, -h, --hel as Hydra reads them
            return print_help(config_name, args)
        if getattr(parsed, "hydra_help", False):  # Hydra's own, of no config: KEY=V ignored
            args = ["--hydra-help"]
        from d2lrun import app  # in handle, as the docstring above says

        return main(app, args)

    return run


def searched(flags: list[str]) -> list[str]:
    """Hydra's flags, --config-dir DIR as the override hydra.searchpath=[file://DIR] that Hydra
    reads it as: d2lrun's own compose calls (--cfg -p, --help, a sweep's checks, d2lrun-eval's)
    then find its options too. A DIR that is no folder stays, for check_flags to refuse."""
    for i, flag in enumerate(flags):
        name, equals, value = flag.partition("=")
        value = value if equals else (flags[i + 1 : i + 2] or [""])[0]
        if name in ("-cd", "--config-dir") and Path(value).expanduser().is_dir():
            rest = flags[:i] + flags[i + 1 + (not equals) :]
            where = Path(value).expanduser().resolve().as_uri()
            return [*searched(rest), f"hydra.searchpath=[{where}]"]
    return flags


def print_help(config_name: str, args: list[str]) -> None:
    """`--help`: the command's header, its groups (d2lrun only), its keys, its footer."""
    # Hydra's own help lists the groups by copying its config repository once per option, which
    # took 1.4 s here with d2lrun's schemas and presets (0.5 s for a bare Hydra app); this, 0.1 s.
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from d2lrun.config import CONFIG_DIR, GROUPS, compose, options_of, overrides_of

    name = {"config": "d2lrun"}.get(config_name, config_name)
    text = OmegaConf.load(Path(CONFIG_DIR) / "hydra" / "help" / f"{name}.yaml")
    parts = [text.header]
    parsed = OverridesParser.create().parse_overrides(overrides_of(args))
    if config_name == "config":  # and the options of -cd DIR (searched): DIR/model/mine.yaml
        own = [Path(p[7:]) for o in parsed if o.key_or_group == "hydra.searchpath"
               for p in o.value() if p.startswith("file://")]  # fmt: skip
        groups = []
        for g in sorted(GROUPS):
            found = {*options_of(g), *(f.stem for d in own for f in d.joinpath(g).glob("*.yaml"))}
            groups.append(f"{g}: {', '.join(sorted(found))}")
        parts.append("== Groups (pick one option each, e.g. model=mlp) ==\n" + "\n".join(groups))
    example = " (set any, e.g. trainer.epochs=5)" if config_name == "config" else ""
    one = [o.input_line for o in parsed if not o.is_sweep_override()]  # -m lr=0.1,0.2: defaults
    cfg = compose(one, config_name)  # resolved: MLflow's URI as it will be
    keys = OmegaConf.to_yaml(cfg, resolve=True).rstrip()
    parts += [f"== Keys and their current values{example} ==\n{keys}", text.footer]
    print("\n\n".join(parts))
