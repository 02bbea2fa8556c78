"""The command-line entry points. Each resolves its paths and calls a plain function.

    d2lrun          train (d2lrun.run.train_run); `-m` sweeps
    d2lrun-eval     evaluate a saved run (d2lrun.reload.evaluate_run)
    d2lrun-predict  predict new inputs with a saved run (d2lrun.reload.predict_file)
    d2lrun-report   the results table of a sweep directory (d2lrun.sweep.report)

Mistakes end with one line on stderr and an exit code: 2 for a bad config or input, 1 when
the run itself fails (divergence, disk), 130 for Ctrl-C. HYDRA_FULL_ERROR=1 shows tracebacks.
Heavy imports (torch, pandas, matplotlib) happen inside the functions, so `--help` is quick.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from d2lrun.sweep import register_resolvers


def _config_dir() -> str:
    here = Path(__file__).resolve().parent
    shipped = here / "configs"  # a non-editable install ships configs/ inside the package
    return str(shipped if shipped.is_dir() else here.parent / "configs")


CONFIG_DIR = _config_dir()
EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
_task_started = False  # a SystemExit(1) before our task runs is Hydra's own config error
_last_error = ""  # the last message fail() printed; a failed sweep job records it as its reason
register_resolvers()  # ${d2lrun.unique_dir:...} in hydra.sweep.dir


def fail(message: str, code: int) -> int:
    global _last_error
    _last_error = message
    print(f"d2lrun: error: {message}", file=sys.stderr)
    return code


def guarded(fn, run_dir: Path | None = None, catch_all: bool = False):
    """Run fn(); turn the errors a user can cause (any error, with catch_all) into (exit code, None)
    after one line on stderr."""
    from d2lrun.train import Diverged, Interrupted

    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return 0, fn()
    try:
        return 0, fn()
    except Interrupted as e:
        if run_dir is not None and (run_dir / "last.pt").exists():
            from d2lrun.run import shown

            resume = f"d2lrun resume={shown(run_dir)}"
            return fail(f"interrupted after epoch {e.args[0]}; the last complete epoch is saved. Resume with: {resume}",
                        EXIT_INTERRUPTED), None
        return fail("interrupted before any epoch finished; nothing to resume.", EXIT_INTERRUPTED), None
    except KeyboardInterrupt:
        return fail("interrupted before training started; nothing was saved.", EXIT_INTERRUPTED), None
    except Diverged as e:
        return fail(f"diverged: {e}", EXIT_FAILED), None
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        return fail(str(e), EXIT_USAGE), None
    except OSError as e:  # disk full, permission denied, ...
        if e.errno is None:  # raised by d2lrun with its own message and fix
            return fail(str(e), EXIT_FAILED), None
        where = f" ({e.filename})" if e.filename else ""
        return fail(f"{e.strerror or e}{where}. Fix: free disk space or choose a writable hydra.run.dir=.",
                    EXIT_FAILED), None
    except Exception as e:  # in a sweep, one job's crash must not stop the others
        if not catch_all:
            raise
        first_line = (str(e).strip().splitlines() or ["(no message)"])[0]
        return fail(f"{type(e).__name__}: {first_line}", EXIT_FAILED), None


def _record_failure(run_dir: Path, code: int) -> None:
    """A sweep job that failed before training still leaves its status for the summary table."""
    from d2lrun.files import write_json

    if not (run_dir / "metrics.json").exists():
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / "metrics.json", {"status": "failed", "reason": _last_error, "exit_code": code})
        except OSError:
            pass


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _train(cfg: DictConfig):
    global _task_started
    _task_started = True
    from d2lrun.run import shown, train_run

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    overrides = [o for o in hc.overrides.task if not o.startswith("resume=")]
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:
        from d2lrun import sweep

        done = sweep.finished_job(run_dir, list(hc.overrides.task))
        if done is not None:  # the same sweep run again: only missing or failed jobs train
            print(f"job {hc.job.num}: already completed in {shown(run_dir)}; skipped")
            return sweep.score(done)
        sweep.start_job(run_dir, list(hc.overrides.task))
    code, summary = guarded(lambda: train_run(cfg, run_dir, resume_overrides=overrides), run_dir, catch_all=multirun)
    if code == EXIT_INTERRUPTED:
        if multirun:
            print(f"d2lrun: to finish the sweep, run the same command again with "
                  f"hydra.sweep.dir={hc.sweep.dir}", file=sys.stderr)
        sys.exit(code)
    if multirun:  # a failed job is recorded in its metrics.json; the sweep goes on
        if code:
            _record_failure(run_dir, code)
        return sweep.score(summary)  # the number a search sweeper (optuna) maximizes
    if code == EXIT_USAGE:
        _remove_unused(run_dir)
    if code:
        sys.exit(code)
    return summary


def _remove_unused(run_dir: Path) -> None:
    """A run refused before it started leaves no folder behind, only its one-line error."""
    import shutil

    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra"}:
        shutil.rmtree(run_dir, ignore_errors=True)


def _main(task) -> None:
    try:
        task()
    except SystemExit as e:
        if e.code == 1 and not _task_started:
            sys.exit(EXIT_USAGE)  # Hydra printed its own message (unknown option, bad override, ...)
        raise


def train() -> None:
    """`d2lrun`: train one model, or sweep with -m."""
    from d2lrun import sweep

    _main(_train)
    if sweep.last_failure:  # the summary at the end of the sweep counted jobs that did not complete
        sys.exit(fail(sweep.last_failure, EXIT_FAILED))


def _run_target(cfg: DictConfig) -> tuple[str | None, str | None]:
    if not cfg.run and not cfg.ckpt:
        raise ValueError("say which run: run=outputs/DATE/TIME (a run directory) or ckpt=PATH (a .pt file).")
    return cfg.run, cfg.ckpt


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def _evaluate(cfg: DictConfig) -> None:
    global _task_started
    _task_started = True

    def work():
        import json

        from d2lrun.files import write_json
        from d2lrun.reload import evaluate_run, load_run

        run = load_run(*_run_target(cfg), device=cfg.device)
        metrics = evaluate_run(run)
        out = run.checkpoint.parent / ("eval.json" if not cfg.ckpt else f"eval-{Path(cfg.ckpt).stem}.json")
        write_json(out, {"checkpoint": str(run.checkpoint), "device": str(run.device), **metrics})
        print(json.dumps(metrics))
        print(f"wrote {out}")

    code, _ = guarded(work)
    sys.exit(code)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def _predict(cfg: DictConfig) -> None:
    global _task_started
    _task_started = True

    def work():
        from d2lrun.reload import load_run, predict_file

        run = load_run(*_run_target(cfg), device=cfg.device)
        out = Path(cfg.output) if cfg.output else run.checkpoint.parent / "predictions.csv"
        n = predict_file(run, Path(cfg.input), out)
        print(f"wrote {n} prediction(s) to {out}")

    code, _ = guarded(work)
    sys.exit(code)


def evaluate() -> None:
    """`d2lrun-eval run=DIR`: metrics of a saved run on its held-out split."""
    _main(_evaluate)


def predict() -> None:
    """`d2lrun-predict run=DIR input=FILE`: predictions for new inputs."""
    _main(_predict)


def report() -> None:
    """`d2lrun-report DIR`: the results table, summary.csv and heatmap.png of a sweep folder, even a partial one."""
    import argparse

    from d2lrun.sweep import report as build_report

    parser = argparse.ArgumentParser(prog="d2lrun-report", description="The results table, summary.csv and "
                                     "heatmap.png of a sweep folder written by `d2lrun -m`, even a partial one.")
    parser.add_argument("dir", metavar="DIR", help="a sweep folder, e.g. outputs/multirun/2026-11-26/10-00-00")
    args = parser.parse_args()
    try:
        failure = build_report(Path(args.dir))
    except (ValueError, OSError) as e:
        sys.exit(fail(str(e), EXIT_USAGE))
    if failure:
        print(failure)


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
            global _task_started
            _task_started = True  # our own message, and a runtime failure (exit 1), not a config error
            sys.exit(fail(f"cannot write the output directory {path} ({e.strerror}). Fix: choose a writable "
                          f"one with hydra.run.dir=DIR (hydra.sweep.dir=DIR with -m).", EXIT_FAILED))
