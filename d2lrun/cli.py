"""The command-line entry points: each resolves its paths and calls a plain function.

    d2lrun          train one run (d2lrun.job.train), or a sweep with -m (d2lrun.sweeps.run_job)
    d2lrun-eval     evaluate a saved run (d2lrun.reload.evaluate_run)
    d2lrun-predict  predict new inputs with a saved run (d2lrun.reload.predict_file)
    d2lrun-report   the results table of a sweep folder (d2lrun.sweeps.report)

Every entry point runs inside `handle`, the one place where errors become one line on stderr and
an exit code (d2lrun.errors). Heavy imports (torch, pandas, matplotlib) happen inside the
functions, so `--help` is quick.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from d2lrun import config
from d2lrun.errors import Abort, UsageError, translate

CONFIG_DIR = config.CONFIG_DIR
config.register()


def handle(main: Callable[[], object], prog: str) -> None:
    """Run an entry point; an error of d2lrun, Hydra or the OS ends as one line and an exit code."""
    tracebacks = os.environ.get("HYDRA_FULL_ERROR") == "1"
    # Unless HYDRA_FULL_ERROR=1, Hydra prints its own multi-line message and exits 1; with it, the
    # error reaches this handler, which shows one line and exits 2 for a bad config.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except (Exception, KeyboardInterrupt, Abort) as e:
        if isinstance(e, Abort) and isinstance(e.__cause__, Exception):
            e = e.__cause__  # a task's own error, carried past Hydra by `task`
        if isinstance(e, BrokenPipeError):  # `d2lrun --help | head`: the reader left, say nothing
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own advice
            sys.exit(1)
        error = translate(e)
        if tracebacks:
            raise e
        if error is None:  # a bug: say so in one line; the traceback is one variable away
            error = Abort(
                f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''} "
                f"(a bug in d2lrun? HYDRA_FULL_ERROR=1 shows the traceback)"
            )
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
        sys.exit(error.exit_code)
    finally:
        if not tracebacks:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def task(fn: Callable[[DictConfig], object]) -> Callable[[DictConfig], object]:
    """A Hydra task whose errors reach `handle` untouched: Hydra's run_job would print
    "Error executing job with overrides ..." before any Exception, but lets an Abort through."""

    @functools.wraps(fn)
    def run(cfg: DictConfig):
        try:
            return fn(cfg)
        except Exception as e:
            raise Abort(str(e)) from e

    return run


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
@task
def _train(cfg: DictConfig) -> float | None:
    from d2lrun import job, sweeps

    hc = HydraConfig.get()
    run_dir, overrides = Path(hc.runtime.output_dir), list(hc.overrides.task)
    if hc.mode == RunMode.MULTIRUN:
        return sweeps.run_job(cfg, run_dir, overrides)
    try:
        job.train(cfg, run_dir, overrides)
    except UsageError:  # a run refused before it started leaves no folder behind
        if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra"}:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return None


def train_main() -> None:
    """`d2lrun`: train one model, or sweep with -m; `resume=RUN` starts from the run's choices."""

    def main() -> None:
        sys.argv[1:] = train_arguments(sys.argv[1:])
        _train()

    handle(with_help(main, "config"), "d2lrun")


def train_arguments(args: list[str]) -> list[str]:
    """The arguments of `d2lrun ARGS`; with resume=RUN, the run's own overrides, then ARGS."""
    resume = next((a.partition("=")[2] for a in args if a.startswith("resume=")), None)
    if not resume:
        return list(args)
    from d2lrun.reload import resume_arguments

    return resume_arguments(resume, args)


def print_help(config_name: str, args: list[str]) -> None:
    """`--help`: the command's header, its groups (d2lrun only), its keys, its footer.

    Hydra's own help lists the groups by copying its config repository once per option, which
    took 1.4 s here with d2lrun's schemas and presets (0.5 s for a bare Hydra app); this, 0.1 s.
    """
    from omegaconf import OmegaConf

    name = {"config": "d2lrun"}.get(config_name, config_name)
    text = OmegaConf.load(Path(CONFIG_DIR) / "hydra" / "help" / f"{name}.yaml")
    cfg = config.compose([a for a in args if "=" in a and not a.startswith("-")], config_name)
    parts = [text.header]
    if config_name == "config":
        folders = {g: Path(CONFIG_DIR) / g for g in config.SCHEMAS}
        folders["experiment"] = config.EXPERIMENTS_DIR
        parts.append(
            "== Groups (pick one option each, e.g. model=mlp) ==\n"
            + "\n".join(
                f"{g}: {', '.join(sorted(p.stem for p in folder.glob('*.yaml')))}"
                for g, folder in sorted(folders.items())
            )
        )
    example = " (set any, e.g. trainer.epochs=5)" if config_name == "config" else ""
    keys = OmegaConf.to_yaml(cfg).rstrip()
    parts += [f"== Keys and their current values{example} ==\n{keys}", text.footer]
    print("\n\n".join(parts))


def with_help(main: Callable[[], object], config_name: str) -> Callable[[], object]:
    """main, or the command's own help when asked for (`--help`, `-h`)."""
    if {"--help", "-h"} & set(sys.argv[1:]):
        return lambda: print_help(config_name, sys.argv[1:])
    return main


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
@task
def _evaluate(cfg: DictConfig) -> None:
    import json

    from d2lrun.files import write_json
    from d2lrun.reload import evaluate_run, load_run

    run = load_run(cfg.run, cfg.ckpt, cfg.device, _data_overrides(cfg))
    metrics = evaluate_run(run)
    out = run.checkpoint.parent / (
        "eval.json" if not cfg.ckpt else f"eval-{Path(cfg.ckpt).stem}.json"
    )
    write_json(out, {"checkpoint": str(run.checkpoint), "device": str(run.device), **metrics})
    print(json.dumps(metrics))
    print(f"wrote {out}")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
@task
def _predict(cfg: DictConfig) -> None:
    from d2lrun.reload import load_run, predict_file

    run = load_run(cfg.run, cfg.ckpt, cfg.device, _data_overrides(cfg))
    out = Path(cfg.output) if cfg.output else run.checkpoint.parent / "predictions.csv"
    n = predict_file(run, Path(cfg.input), out)
    print(f"wrote {n} prediction(s) to {out}")


def _data_overrides(cfg: DictConfig) -> list[str]:
    """dataset.root=... and the like, for composing the saved run again (d2lrun.reload)."""
    if not cfg.run and not cfg.ckpt:
        raise UsageError(
            "say which run: run=outputs/DATE/TIME (a run folder) or ckpt=PATH (a .pt file)."
        )
    return [f"dataset.{k}={v}" for k, v in cfg.dataset.items() if v is not None]


def eval_main() -> None:
    """`d2lrun-eval run=DIR`: metrics of a saved run on its held-out split."""
    handle(with_help(_evaluate, "eval"), "d2lrun-eval")


def predict_main() -> None:
    """`d2lrun-predict run=DIR input=FILE`: predictions for new inputs."""
    handle(with_help(_predict, "predict"), "d2lrun-predict")


def report_main() -> None:
    """`d2lrun-report DIR`: the results table, summary.csv and heatmap.png of a sweep folder."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="d2lrun-report",
        description="The results table, summary.csv and heatmap.png of a sweep "
        "folder written by `d2lrun -m`, even a partial one.",
        epilog="example: d2lrun-report outputs/multirun/2026-11-26/10-00-00",
    )
    parser.add_argument(
        "dir", metavar="DIR", help="a sweep folder, e.g. outputs/multirun/DATE/TIME"
    )
    args = parser.parse_args()

    def main() -> None:
        from d2lrun.sweeps import report

        failure = report(Path(args.dir))
        if failure:
            print(failure)

    handle(main, "d2lrun-report")


class CheckOutputDir(Callback):
    """Fail with one line, before anything runs, when the output directory cannot be written."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.sweep.dir)

    @staticmethod
    def _check(path: str) -> None:
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            probe = Path(path) / f".d2lrun-write-test{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise Abort(
                f"cannot write the output directory {path} ({e.strerror}). Fix: choose a "
                f"writable one with hydra.run.dir=DIR (hydra.sweep.dir=DIR with -m)."
            ) from None
