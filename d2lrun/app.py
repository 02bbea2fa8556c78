"""The Hydra apps behind d2lrun's commands, run in this process with a command line's arguments.

d2lrun.cli prints their errors and d2lrun.api raises them, both through config.messages.explain.
"""

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from d2lrun.config import (
    CONFIG_DIR,
    TIMESTAMP,
    check_groups,
    checked,
    claimed_dir,
    compose,
    given,
    overrides_of,
    register,
)
from d2lrun.config.flags import check_flags
from d2lrun.config.sweeper import check_same_sweep
from d2lrun.errors import Interrupted, RunFailed, UsageError, chained
from d2lrun.files import (
    atomic_write,
    claim_dir,
    completed,
    existing,
    held_dir,
    hold,
    kfold_run,
    override,
    remove_empty,
    shell_arg,
    shown,
    unmade,
    untrained,
    unwritable,
    write_json,
)
from d2lrun.plots import Plotter
from d2lrun.stopping import deferred_signals, interrupted, stop_signals, stopping_workers

RUN_FILES = ("last.pt", "best.pt", "model.pt", "metrics.json", "metrics.csv", "fold_0")


def literal_dir(args: Sequence[str], key: str, cfg: DictConfig | None = None) -> list[str]:
    """args with hydra.run.dir or hydra.sweep.dir (key) as the folder its ~ and ${...} name, which
    Hydra would write into unchecked; not a TIMESTAMP one, claimed as the default folder is."""
    value = given(args, key)
    if value and value.startswith("~"):  # ~/runs as the shell would read it: not a folder '~'
        args = set_override(args, key, value := os.path.expanduser(value))
    if not value or "${" not in value or TIMESTAMP in value:
        return list(args)
    folder = OmegaConf.select(cfg or compose(overrides_of(args), with_hydra=True), key)
    return set_override(args, key, str(folder))


def set_override(args: Sequence[str], key: str, value: str | None) -> list[str]:
    """args with key's overrides as key=value, or without them (value None)."""
    parsed = OverridesParser.create().parse_overrides(overrides_of(args))  # as given() reads them
    keys = {o.input_line: o.key_or_group for o in parsed}
    kept = [a for a in args if value is not None or keys.get(a) != key]
    return [override(key, value) if keys.get(a) == key else a for a in kept]


class RunDir(Callback):
    """The configured hydra.run.dir claimed (d2lrun.files.claim_dir) before Hydra writes into it."""

    folder: Path | None = None  # claimed, and held with lock
    lock = None
    made: list[Path] = []  # the two folders above it that it made (outputs/DATE/, outputs/)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        if claimed_dir(config.hydra) is None:
            return  # named: named_dir holds it
        with contextlib.suppress(RunFailed):  # unwritable: Hydra's own mkdir then says so
            RunDir.made = unmade(Path(config.hydra.run.dir).parent)[:2]
            RunDir.folder = folder = claim_dir(config.hydra.run.dir)
            RunDir.lock = hold(folder)  # a resume= into it is refused while the run runs
            with read_write(config.hydra.run):
                config.hydra.run.dir = str(folder)

    @classmethod
    def release(cls) -> None:
        """Let go of the folder, by run() however the run ended (Hydra calls no on_run_end when
        the task raises); one that holds no run goes, and the folders above it that it made:
        refused, stopped or failed before its first epoch, or Hydra's own writes failed."""
        if cls.folder is not None and untrained(cls.folder):
            shutil.rmtree(cls.folder, ignore_errors=True)
            remove_empty(cls.made)
        if cls.lock is not None:
            cls.lock.close()
        cls.folder = cls.lock = None


@contextlib.contextmanager
def named_dir(args: Sequence[str]):
    """The folder hydra.run.dir=DIR names, locked while the run runs; refused while another run
    writes it, or when it holds another run's files (but for resume=DIR, which continues it)."""
    # Here, not in RunDir: Hydra turns a callback's error into a warning and goes on.
    named = given(args, "hydra.run.dir")
    if named == "":  # Hydra would write into the current folder, over any run there
        raise UsageError("hydra.run.dir= names no folder. Fix: hydra.run.dir=outputs/NAME.")
    if not named or TIMESTAMP in named:  # ${now:...}: claimed as the default one is (RunDir)
        yield
        return
    folder = Path(named)
    made = unmade(folder)  # x/y/z: y and x too
    lock = held_dir(folder)
    if lock is None:
        raise UsageError(
            f"hydra.run.dir={named} is being written by another run now. "
            f"Fix: choose another hydra.run.dir, or wait for that run to end."
        )
    with lock:
        resume = given(args, "resume")
        resume = Path(resume).resolve() if resume else None  # RUN, or a .pt file of RUN's
        ours = resume and (resume.parent if resume.is_file() else resume)  # as job.Run reads it
        if (folder / "multirun.yaml").exists():  # its jobs' folders would sit beside the run's
            raise UsageError(f"hydra.run.dir={named} holds a sweep (multirun.yaml), not a run. "
                             f"Fix: choose another hydra.run.dir.")  # fmt: skip
        found = [f for f in RUN_FILES if (folder / f).exists()]
        if found and ours != folder.resolve() and not untrained(folder, ended=True):
            raise UsageError(
                f"hydra.run.dir={named} already holds a run ({', '.join(found)}), which d2lrun "
                f"never writes over. Fix: choose another hydra.run.dir, or "
                f"{shell_arg('resume', named)} to continue that run."
            )
        record = {p: p.read_bytes() for p in folder.glob(".hydra/*")}  # resume=DIR's own
        try:
            yield
        except BaseException as e:  # refused before it started: the folder it made goes again
            if made and untrained(folder):
                shutil.rmtree(folder, ignore_errors=True)
                remove_empty(made[1:])  # a sweep's value: ChoiceSweep(... list=['runs/ of a,b
            elif isinstance(e, (UsageError, KeyboardInterrupt)):  # and a run's .hydra/ its own
                for path in set(folder.glob(".hydra/*")) - set(record):  # again, not the command's
                    path.unlink()
                for path, data in record.items():
                    atomic_write(path, data)
            raise


def run(config_name: str, args: Sequence[str], task: Callable[[DictConfig], object]):
    """@hydra.main(config_name) over task, with args as its command line; what task returned."""
    # Hydra printed "Error executing job" and went on after Ctrl-C: the task's error raised here
    outcome: dict = {}

    def hydra_task(cfg: DictConfig):
        with stop_signals():
            try:
                outcome["value"] = task(cfg)
                return outcome["value"]
            except Exception as e:
                outcome["error"] = e
                if isinstance(e, Interrupted):  # Ctrl-C or a stop signal: stop a sweep's launcher
                    raise KeyboardInterrupt from e

    check_groups(args, config_name)
    # The presets when the command names one (+experiment=...), or reloads a run that may have.
    completing = {"-sc", "--shell-completion"} & set(args)  # experiment= is offered too
    register(presets=config_name != "config" or completing or any("experiment" in a for a in args))
    argv, full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    root = logging.getLogger()  # Hydra's logging config sets its level and handler: the caller's
    level, handlers = root.level, root.handlers[:]  # come back after (d2lrun.train in a notebook)
    sys.argv = [sys.argv[0], *args]  # what @hydra.main parses
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing them
    try:
        main = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)
        main(hydra_task)()
    except KeyboardInterrupt:
        if "error" not in outcome:
            raise
    except OSError as e:  # Hydra's own writes: the run folder and its .hydra/
        if isinstance(e, (HydraException, BrokenPipeError)):  # an IOError; `--hydra-help | head`
            raise
        raise unwritable(e.filename or given(args, "hydra.run.dir") or "outputs", e) from e
    finally:
        RunDir.release()
        sys.argv, root.handlers[:] = argv, handlers
        root.setLevel(level)
        os.environ.pop("HYDRA_FULL_ERROR")
        if full_error is not None:
            os.environ["HYDRA_FULL_ERROR"] = full_error
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def resumed(args: Sequence[str]) -> tuple[list[str], dict | None]:
    """args, and with resume=RUN: the run's own overrides, then args; and its checkpoint."""
    resume = given(args, "resume")
    if resume == "":  # d2lrun resume=$RUN with RUN unset: not a new run from scratch
        raise UsageError("resume= names no run. Fix: resume=outputs/DATE/TIME, or drop resume=.")
    if not resume:
        return list(args), None
    with deferred_signals():  # Ctrl-C in torch's import: after it (train's task says why)
        from d2lrun.reload import resume_checkpoint, run_overrides
    if kfold_run(folder := Path(resume)):
        # A k-fold run goes on in its folder: completed folds kept, the stopped one resumed
        named = None if completed(folder) else given(args, "hydra.run.dir")  # train refuses it
        if named is not None and Path(named).resolve() != folder.resolve():
            raise UsageError(
                f"resume={resume} goes on with a k-fold run in its own folder, not in "
                f"hydra.run.dir={named}. Fix: drop hydra.run.dir={named}."
            )
        again = run_overrides(resume_checkpoint(folder / "fold_0"), args, f"resume={resume}")
        return [*again, override("hydra.run.dir", str(folder))], None
    ckpt = resume_checkpoint(resume)
    return run_overrides(ckpt, args, f"resume={resume}"), ckpt


def train(args: Sequence[str]) -> Path:
    """`d2lrun ARGS`: one run (d2lrun.kfold.train); its folder."""

    def task(cfg: DictConfig) -> Path:  # in its folder, claimed by RunDir or held by named_dir
        hc = HydraConfig.get()
        run_dir, overrides = Path(hc.runtime.output_dir), list(hc.overrides.task)
        checked(cfg, overrides if ckpt is None else (), notes=False)  # before torch's import
        with deferred_signals():  # Ctrl-C in torch's import: after it (within, torch swallows it,
            from d2lrun import kfold  # aborts, or fails the next import of torch)
        kfold.train(cfg, run_dir, overrides, ckpt, draw=draw)
        return Path(hc.run.dir)  # as named (relative to where the command ran)

    try:
        with Plotter() as draw:  # matplotlib's import in a helper, beside torch's
            check_flags(args)  # once, before resume= is read from them
            args, ckpt = resumed(args)
            args = literal_dir(args, "hydra.run.dir")
            with named_dir(args):
                return run("config", args, task)
    except KeyboardInterrupt as e:  # before a run began (once it has: its own Interrupted line)
        if not any(a.startswith("resume=") for a in args):
            raise
        signum = getattr(e, "signum", signal.SIGINT)
        raise Interrupted(f"{interrupted(signum)} before the resumed run went on; its saved "
                          f"epochs are kept. To go on, run the same command again.",
                          signum) from None  # fmt: skip


def sweep(args: Sequence[str]) -> tuple[Path, str | None]:
    """`d2lrun -m ARGS`: every job, in a sweep folder of its own; (folder, what failed or None)."""
    from d2lrun import sweeps

    check_flags(["-m", *args])  # a sweep's, also as d2lrun.sweep calls it (without -m)
    args, ckpt = resumed([a for a in args if a not in ("-m", "--multirun")])
    cfg, again = sweeps.checked_sweep(overrides_of(args))  # every job checked, as a run is
    args = [again.get(a, a) for a in args]  # a key only swept options have, as Hydra takes it
    lines = overrides_of(args)  # not the flags (--cfg job), which Hydra reads itself
    task = [a for a in lines if not a.lstrip("+~").startswith("hydra")]  # as Hydra splits them
    args = literal_dir(args, "hydra.sweep.dir", cfg)
    given_dir = given(args, "hydra.sweep.dir")
    if given_dir and TIMESTAMP in given_dir:  # claimed below, as the default folder is
        given_dir, args = None, set_override(args, "hydra.sweep.dir", None)
    if given_dir == "":  # Hydra would write the jobs into the current folder
        raise UsageError("hydra.sweep.dir= names no folder. Fix: hydra.sweep.dir=outputs/"
                         "multirun/NAME.")  # fmt: skip
    if given_dir and (held := [f for f in RUN_FILES if (Path(given_dir) / f).exists()]):
        raise UsageError(f"hydra.sweep.dir={given_dir} holds a run ({', '.join(held)}), not a "
                         f"sweep. Fix: another hydra.sweep.dir.")  # fmt: skip
    fresh = not (given_dir and Path(given_dir).exists())  # made by this sweep, with the
    above = unmade(Path(given_dir or cfg.hydra.sweep.dir).parent)  # folders above it it makes
    # Named by the user: run again into it, completed jobs skipped; else the configured folder,
    # claimed: two sweeps started in one second never share it. Locked: a second sweep into it
    # waits for the first to end, then skips its jobs: Hydra (re)writes multirun.yaml and its
    # jobs' .hydra/ in place, which one sweep would read half-written as the other writes them.
    sweep_dir = Path(given_dir) if given_dir else claim_dir(cfg.hydra.sweep.dir)
    waiting = f"waiting for the sweep running into {shown(sweep_dir)} to end (Ctrl-C to stop)"
    with held_dir(sweep_dir, waiting):
        if given_dir:
            check_same_sweep(sweep_dir, task, cfg.hydra, given_dir)
        else:
            args = [override("hydra.sweep.dir", str(sweep_dir)), *args]  # before any flag
        # The plan, for d2lrun-report and a re-run: this run's (a search's n_trials may change)
        cfg.hydra.overrides.task = task  # (Hydra's basic sweeper saves it too, Optuna's does not)
        atomic_write(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(cfg).encode())
        return launched(sweep_dir, args, cfg, ckpt, [sweep_dir, *above] if fresh else [])


def launched(sweep_dir: Path, args: list[str], cfg: DictConfig, ckpt: dict | None, made: list):
    """The sweep's jobs, launched by Hydra into sweep_dir (made: the folders this sweep made, its
    own first; none when it was there); as sweep()."""
    from d2lrun import sweeps

    logging.getLogger("alembic").setLevel(logging.WARNING)  # Optuna's INFO lines, not Hydra's

    def job(cfg: DictConfig) -> float:
        hc = HydraConfig.get()
        run_dir, overrides = Path(hc.runtime.output_dir), list(hc.overrides.task)
        return sweeps.run_job(cfg, run_dir, overrides, Path(hc.sweep.dir), hc.job.num, ckpt)

    try:
        with stopping_workers(sweep_dir, "Slurm" not in cfg.hydra.launcher._target_):
            run("config", ["-m", *args], job)
            return sweep_dir, sweeps.report(sweep_dir)  # a signal then: as one between jobs
    except BaseException as e:
        kept = {"multirun.yaml", ".lock", *[".submitit"] * isinstance(e, UsageError)}  # Slurm's
        started = sweep_dir.is_dir() and any(p.name not in kept for p in sweep_dir.iterdir())
        if made and not started:  # refused before any job started: no folder behind
            shutil.rmtree(sweep_dir, ignore_errors=True)
            remove_empty(made[1:])  # outputs/multirun/DATE/ too
        e = next((x for x in chained(e) if isinstance(x, KeyboardInterrupt)), e)  # a signal in
        stopped = started and isinstance(e, (KeyboardInterrupt, Interrupted))
        if stopped:  # summary.csv written again as the stop left the jobs: one that
            failure = "unreported"  # d2lrun-report wrote mid-sweep, or the run before, is stale
            with contextlib.suppress(Exception), deferred_signals() as caught:
                failure = sweeps.report(sweep_dir, show=False)  # a second stop meanwhile: dropped
                caught.clear()
        code = getattr(e, "exit_code", 128 + signal.SIGINT)  # a job's Interrupted: 128 + signal
        signum = getattr(e, "signum", code - 128)  # Stop's own; else Ctrl-C's
        if stopped and failure is None:  # as the last job or the table ended: nothing to finish
            done = f"every job had completed; see {sweep_dir / 'summary.csv'}"
            raise Interrupted(f"{interrupted(signum)} as the sweep ended: {done}", signum) from None
        if not isinstance(e, KeyboardInterrupt) or not started:  # OmegaConf's code: its error's
            raise e
        if isinstance(e.__context__, Interrupted):  # a stack's own line (after epoch 3; ...),
            raise e.__context__ from None  # raised again by the handler it gave way to
        finish = f"run the same command again with {shell_arg('hydra.sweep.dir', sweep_dir)}"
        raise Interrupted(f"{interrupted(signum)}. To finish the sweep, {finish}", signum) from None


def evaluate(args: Sequence[str]) -> dict:
    """`d2lrun-eval ARGS`: a saved run's metrics on its held-out split, also in RUN/eval.json."""
    check_flags(args, "eval")

    def task(cfg: DictConfig) -> dict:
        run = saved_run(cfg)
        from d2lrun.reload import evaluate_run, table_file  # imported by saved_run

        metrics = evaluate_run(run)
        other = {"data": table_file(run.config.dataset)} if "test_loss" in metrics else {}
        stems = [Path(p).stem for p in (cfg.ckpt, other.get("data")) if p]  # eval-best-FILE.json
        out = run.checkpoint.parent / ("-".join(["eval", *stems]) + ".json")
        print(json.dumps(metrics), flush=True)  # shown, also when the run's folder is read-only
        write_json(out, {"checkpoint": str(run.checkpoint), "device": str(run.device), **other,
                         **metrics})  # fmt: skip
        every = f" (every row of {shown(other['data'])}, not the run's file)" if other else ""
        print(f"wrote {out}{every}")
        return metrics

    return run("eval", args, task)


def predict(args: Sequence[str]) -> Path:
    """`d2lrun-predict ARGS`: predictions for new inputs, written as CSV; the file."""
    check_flags(args, "predict")

    def task(cfg: DictConfig) -> Path:
        run = saved_run(cfg)
        from d2lrun.reload import predict_file, table_file  # imported by saved_run

        out = Path(cfg.output) if cfg.output else run.checkpoint.parent / "predictions.csv"
        if out.is_dir() or not out.parent.is_dir():
            where = "is a folder" if out.is_dir() else f"is in {out.parent}, which does not exist"
            raise UsageError(f"output={out} {where}. Fix: output=FILE.csv in a folder that exists.")
        # What a run or a sweep keeps, in its folder (any run's, or a sweep's), or in .hydra/
        kept = out.name in (*RUN_FILES, "summary.csv", ".lock")  # .lock: the run's own lock
        kept = kept or out.suffix in (".pt", ".json", ".png", ".yaml")
        folder = out.resolve().parent
        ours = folder == run.checkpoint.parent.resolve() or folder.name == ".hydra"
        a_run = kept and (ours or any((folder / f).exists() for f in (*RUN_FILES, "multirun.yaml")))
        data = {Path(cfg.input).resolve(): "the input file"}  # never written over, nor the run's
        splits = ("train", "test") if run.config.dataset.name == "kaggle_house" else ("train",)
        tables = [table_file(run.config.dataset, s) for s in splits]  # dataset.path, or the book's
        data |= {Path(p).resolve(): "the run's data" for p in tables if p}
        if a_run or out.resolve() in data:
            what = "a run's file" if a_run else data[out.resolve()]
            raise UsageError(f"output={out} is {what}. Fix: output=predictions.csv, or another.")
        n = predict_file(run, Path(cfg.input), out)
        print(f"wrote {n} prediction(s) to {out}")
        return out

    return run("predict", args, task)


def saved_run(cfg: DictConfig):
    """The run of d2lrun-eval's and -predict's run= or ckpt=, its data where dataset.* says."""
    if not cfg.run and not cfg.ckpt:
        raise UsageError("say which run. Fix: run=outputs/DATE/TIME (a run folder) or ckpt=PATH "
                         "(a .pt file).")  # fmt: skip
    if not (cfg.run and cfg.ckpt):  # before torch's import (two: load_run says which is wrong)
        existing(cfg.ckpt or cfg.run, run=not cfg.ckpt)
    with deferred_signals():  # Ctrl-C in torch's import: after it (train's task says why)
        from d2lrun.reload import load_run
    where = [override(f"dataset.{k}", str(v)) for k, v in cfg.dataset.items() if v is not None]
    return load_run(cfg.run, cfg.ckpt, cfg.device, where)
