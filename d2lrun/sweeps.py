"""Sweeps (`d2lrun -m`): resumable jobs, and the results table of any sweep folder.

Every launcher (Hydra's, submitit's, hydra_plugins/d2lrun_launcher's) hands each job to run_job,
which returns its score; report writes summary.csv and heatmap.png. No torch until a job trains.
"""

import contextlib
import math
import os
import re
import shutil
import signal
import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf
from yaml import YAMLError

from d2lrun.config import ANEW, given
from d2lrun.config.messages import explain
from d2lrun.config.sweeper import fixed_in_sweep, same_overrides, sweep_config
from d2lrun.errors import Bug, Interrupted, UsageError
from d2lrun.files import (
    atomic_write,
    completed,
    held,
    hold,
    kept_record,
    kfold_run,
    read_json,
    running,
    saved_checkpoint,
    say,
    shell_arg,
    shown,
    untrained,
    write_json,
)
from d2lrun.plots import heatmap_figure, png
from d2lrun.stopping import STOP_MARKER, deferred_signals

ASKED_AGAIN = ("resume", "trainer.epochs")  # what a job resumed in its folder changes (in place)
HIGHER_IS_BETTER = {"val_acc", "train_acc"}  # every other metric (val_loss) is better when lower


def checked_sweep(lines: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """config.sweeper.sweep_config, and each logger's package and MLflow store among the jobs
    checked once: one that is missing, or a server that cannot be reached (from Slurm's nodes as
    from here), ends the sweep before any job starts, in the line each job would give. It makes
    no store or run."""
    from d2lrun.tracking import experiment_name, open_tracker

    resume = given(lines, "resume")  # a k-fold run goes on in its own folder, as one run
    if resume and kfold_run(Path(resume)):  # completed: only a fold goes on, as a run
        alone = f"d2lrun {shell_arg('resume', resume)} without -m, or "
        alone = "" if completed(Path(resume)) else alone
        raise UsageError(
            f"resume={resume} is a k-fold run, which goes on as one run in its own folder, not "
            f"as a sweep's jobs. Fix: {alone}resume={resume}/fold_0 (one fold as a run) in the "
            f"sweep."
        )
    cfg, again, jobs = sweep_config(lines)
    parsed = OverridesParser.create().parse_overrides(lines)
    swept = [o.key_or_group for o in parsed if o.is_sweep_override()]
    own = sweep_experiment(Path(cfg.hydra.sweep.dir), swept)
    for job in (job for job in jobs if job.logger.name != "none"):
        name = experiment_name(job, given(lines, "experiment"), own)
        open_tracker(job, Path(), name, None, None, print, check=True)
    return cfg, again


def finished_job(run_dir: Path, overrides: list[str], cfg: DictConfig) -> dict | None:
    """metrics.json of the job that completed in run_dir with these same overrides, or was
    resumed there to train on past the sweep's epochs, else None. A completed job's .hydra/ is
    again what it ran with (the table's values), over what Hydra wrote as it started again."""
    from d2lrun.reload import load_checkpoint

    metrics = completed(run_dir)  # its checkpoint: a k-fold job's is its first fold's
    saved = metrics and (saved_checkpoint(run_dir) or saved_checkpoint(run_dir / "fold_0"))
    ckpt = load_checkpoint(saved) if saved else None
    if ckpt is not None and (run_dir / ".hydra").is_dir():
        for name, ran in (("overrides", ckpt.get("overrides", [])), ("config", ckpt["config"])):
            atomic_write(run_dir / ".hydra" / f"{name}.yaml", OmegaConf.to_yaml(ran).encode())
    epochs = OmegaConf.select(cfg, "trainer.epochs", throw_on_resolution_failure=False)
    if ckpt is None or not isinstance(epochs, int) or metrics.get("epochs", epochs) < epochs:
        return None
    return metrics if same_job(ckpt.get("overrides", []), overrides) else None


def same_job(a: list[str] | dict, b: list[str] | dict) -> bool:
    """Two jobs' overrides (KEY=VALUE lines, or found_jobs' {key: value}) alike as Hydra reads
    them, but for ASKED_AGAIN and what a sweep run again may give anew."""
    a, b = ([f"{k}={v}" for k, v in j.items()] if isinstance(j, dict) else j for j in (a, b))
    return same_overrides(a, b, (*ASKED_AGAIN, *ANEW))


def run_job(
    cfg: DictConfig,
    run_dir: Path,
    overrides: list[str],
    sweep_dir: Path,
    num: int,
    ckpt: dict | None = None,
) -> float:
    """Job num of a sweep (ckpt: the checkpoint it resumes); its score. A failure is recorded."""
    marker = os.environ.get(STOP_MARKER)  # a signal stopped its sweep (stopping.stopping_workers)
    if marker and (sweep_dir / marker).exists():  # its folder (Hydra's .hydra/) goes: 'missing'
        if untrained(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise Interrupted("interrupted before it started.", signal.SIGTERM)

    # Locked: of two sweeps run into one folder, one trains the job and the other then skips it;
    # 'running' in d2lrun-report's table from here. A stop before the run writes its metrics.json
    # puts back the one that prepared dropped (kept_record).
    run_dir.mkdir(parents=True, exist_ok=True)
    with hold(run_dir, wait=True), kept_record(run_dir):
        with deferred_signals():  # Ctrl-C in torch's import: after it (d2lrun.app.train)
            from d2lrun.kfold import train
        done = finished_job(run_dir, overrides, cfg)
        if done is not None:  # the same sweep run again: only missing or failed jobs train
            say(f"job {num}: already completed in {shown(run_dir)}; skipped")
            return score(done)
        # 'job N: ' before its lines where jobs run side by side (joblib), or beside a stack's
        # members (batched), whose lines say it
        target = HydraConfig.get().launcher._target_ if HydraConfig.initialized() else ""
        label = f"job {num}: " if "Joblib" in target or "Batched" in target else ""
        try:
            ckpt = prepared(cfg, run_dir, ckpt)
            name = sweep_experiment(sweep_dir)  # MLflow's experiment
            metrics = train(cfg, run_dir, overrides, ckpt, sweep_dir=sweep_dir, experiment=name,
                            log=lambda line: say(label + line))  # fmt: skip
        except Exception as e:
            return job_failed(e, run_dir, sweep_dir, label)
    return score(metrics)


def prepared(cfg: DictConfig, run_dir: Path, ckpt: dict | None) -> dict | None:
    """The job's own last.pt when it was stopped before (requeued, or run again), else ckpt (a
    sweep of resume=RUN: RUN's, where the job started)."""
    from d2lrun.reload import continued

    ckpt = continued(cfg, run_dir) or ckpt  # last.pt, or a later best.pt
    if saved_checkpoint(run_dir / "fold_0"):  # a k-fold job of another config: refused before
        continued(cfg.copy(), run_dir / "fold_0")  # its record goes (its folds hold checkpoints)
    (run_dir / "metrics.json").unlink(missing_ok=True)  # an earlier attempt's no longer counts
    return ckpt


def sweep_experiment(sweep_dir: Path, swept: list[str] | None = None) -> str | None:
    """The MLflow experiment of a sweep over models, datasets or presets (its swept keys, else
    multirun.yaml's): one of its own, named after the sweep; None: each job's usual one."""
    swept = planned_jobs(sweep_dir)[1] if swept is None else swept
    apart = {k.lstrip("+~") for k in swept} & {"model", "dataset", "experiment"}
    return f"sweep {sweep_dir.resolve()}" if apart else None


def job_failed(e: Exception, run_dir: Path, sweep_dir: Path, label: str = "") -> float:
    """A failure recorded (a bug's in error.txt too) for the sweep to go on; Ctrl-C ends it.
    label: 'job N: ' in its line, where jobs run side by side."""
    if isinstance(e, Interrupted):  # its run's own `Resume with:` gives way to the sweep's
        raise Interrupted(
            f"{label}{str(e).partition(' Resume with:')[0]} To finish the sweep, run the same "
            f"command again with {shell_arg('hydra.sweep.dir', sweep_dir)}",
            e.exit_code - 128,  # the signal's number (SIGINT for Ctrl-C)
        ) from None
    error = explain(e)
    reason = f"{error} (traceback in error.txt)" if isinstance(error, Bug) else str(error)
    print(f"d2lrun: error: {label}{reason}", file=sys.stderr, flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(error, Bug):
        atomic_write(run_dir / "error.txt", "".join(traceback.format_exception(e)).encode())
    if not (run_dir / "metrics.json").exists():  # a completed job's record stays
        record_failure(run_dir, reason, error.exit_code)
    return -math.inf


def record_failure(run_dir: Path, reason: str, exit_code: int) -> None:
    """metrics.json of a job that failed: the table shows it as failed, with its reason."""
    write_json(run_dir / "metrics.json", dict(status="failed", reason=reason, exit_code=exit_code))


def score(metrics: dict | None) -> float:
    """What a sweeper maximizes: best accuracy, or minus best loss; -inf unless completed."""
    # -inf rather than NaN: Optuna rejects NaN (and the Hydra plugin then crashes the sweep), while
    # -inf is a valid value that steers the search away from settings that diverge.
    best = (metrics or {}).get("best")
    if not best or metrics.get("status") != "completed":
        return -math.inf
    return best["value"] if best["metric"] in HIGHER_IS_BETTER else -best["value"]


def planned_jobs(sweep_dir: Path) -> tuple[list[dict | None], list[str]]:
    """The jobs multirun.yaml asks for ({key: value}, None where a sampler picks); swept keys."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if not (sweep_dir / "multirun.yaml").exists():
        return [], []
    hydra_cfg = OmegaConf.load(sweep_dir / "multirun.yaml").hydra
    sweeper = OmegaConf.to_container(hydra_cfg.sweeper, resolve=False)  # as written, unresolved
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    task = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)
    overrides = OverridesParser.create().parse_overrides(params + task)
    swept = [o.get_key_element() for o in overrides
             if o.is_sweep_override() and not fixed_in_sweep(o)]  # fmt: skip
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return [None] * int(sweeper.get("n_trials") or 0), swept
    # The grid as Hydra's basic sweeper makes it: a key given twice once, with its last value.
    jobs = BasicSweeper.split_arguments(overrides, None)[0]
    return [dict(o.split("=", 1) for o in job) for job in jobs], swept


def found_jobs(sweep_dir: Path) -> list[tuple]:
    """(number, name, overrides, metrics) of each job folder, at any depth (lr_0.1/run of
    hydra.sweep.subdir=lr_${optim.lr}/run); None: not started, or running or killed."""

    def folders(d: Path):
        for p in d.iterdir():
            if p.is_dir() and not p.is_symlink() and not p.name.startswith("."):
                is_job = (p / ".hydra").is_dir() or (p / "metrics.json").exists()
                yield from [p] if is_job else folders(p)  # not into a job's: fold_0/, tensorboard/

    def saved(path: Path) -> DictConfig | ListConfig | None:
        """A job's .hydra/ file, None where missing or half-written: Hydra writes it in place as
        the job starts (on Slurm, as d2lrun-report may read it)."""
        try:
            return OmegaConf.load(path)
        except (OSError, YAMLError):
            return None

    found = []
    for d in folders(sweep_dir):
        name, overrides, hydra = d.relative_to(sweep_dir).as_posix(), None, d / ".hydra"
        if isinstance(typed := saved(hydra / "overrides.yaml"), ListConfig):
            typed = OmegaConf.to_container(typed, resolve=False)  # as typed: ${oc.env:B} too
            overrides = dict(o.split("=", 1) for o in typed if "=" in o)
        num = job_number(name)
        if not name.isdigit() and isinstance(meta := saved(hydra / "hydra.yaml"), DictConfig):
            recorded = OmegaConf.select(meta, "hydra.job.num")  # a subdir of its own
            num = recorded if isinstance(recorded, int) else num
        found.append((num, name, overrides, read_json(d / "metrics.json")))
    return sorted(found, key=lambda job: job[:2])


def job_number(name: str) -> int:
    return int(name) if name.isdigit() else 1 << 30


def number(text: str):
    """A swept value as the number it names (nan and inf as typed: an empty cell otherwise), else
    as it was typed (Hydra records `${x}`, `a,b` and `"a b"` as `$\\{x\\}`, `a\\,b` and `"a b"`:
    its grammar's escapes and quotes undone)."""
    for cast in (int, float):
        with contextlib.suppress(ValueError):
            value = cast(text)
            return value if math.isfinite(value) else text
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1].replace("\\" + text[0], text[0])
    return re.sub(r"\\([\\()\[\]{}:=, \t])", r"\1", text)


def collect(sweep_dir: Path):
    """One row per job, found or only planned, best first, as a DataFrame; and the swept keys."""
    with deferred_signals():  # a stop within would leave pandas half imported: the table that
        import pandas as pd  # app.launched writes again as a sweep stops failed on it

    planned, swept = planned_jobs(sweep_dir)
    todo = dict(enumerate(planned))  # job number -> planned overrides, until its folder turns up
    rows = []
    for num, name, overrides, metrics in found_jobs(sweep_dir):
        match = next((j for j, o in todo.items() if o is not None and o == overrides), None)
        if match is None and num in todo and None in (overrides, todo[num]):
            match = num  # a sampler's trial, or no .hydra/: matched by number
            overrides = overrides or todo[match]  # hydra.output_subdir=null: the grid's
        elif match is None and num in todo and same_job(overrides, todo[num]):
            match = num  # resumed in its folder: resume=JOB trainer.epochs=N
            overrides = todo[num] | {k: v for k, v in overrides.items() if k == "trainer.epochs"}
        # A run folder put there is no job of the sweep: only the planned are, and a sampler's
        # trials past the plan that began (n_trials grew, or the re-run's is smaller), or
        # without multirun.yaml 0/, 1/, ...
        if match is None and (
            (None not in planned or untrained(sweep_dir / name)) if planned else num >= 1 << 30
        ):
            continue
        running_now = not metrics and held(sweep_dir / name)
        rows.append(row(name, overrides, metrics, "running" if running_now else None))
        todo.pop(match, None)
    rows += [row(str(j), o, None, "missing") for j, o in todo.items()]
    if not rows:
        job_of = (sweep_dir.parent / "multirun.yaml").exists()  # a job's folder: its sweep's
        fix = f"its sweep's, {sweep_dir.parent}" if job_of else "e.g. outputs/multirun/DATE/TIME"
        raise UsageError(
            f"{sweep_dir} holds no sweep: no multirun.yaml and no job folders (0/, 1/, ...). "
            f"Fix: give a folder that `d2lrun -m` wrote, {fix}."
        )
    overrides = [{k: number(v) for k, v in r.pop("_overrides").items()} for r in rows]
    values = pd.DataFrame(overrides, dtype=object)  # object: 3 stays 3 beside 0.1, as typed
    keys = list(dict.fromkeys(swept + [k for k in values if values[k].nunique() > 1]))
    table = pd.DataFrame(rows, dtype=object)
    measured = [f"{w}_{m}" for m in table["_metric"].dropna().unique() for w in ("final", "best")]
    restarted = bool(table["restarts"].fillna(0).astype(float).gt(0).any())  # a column only then
    ends = ["best_epoch", "seconds", *["restarts"] * restarted, "reason", "_score", "_metric"]
    table = pd.concat([values.reindex(columns=keys), table], axis=1)
    table = table.reindex(columns=["job", *keys, "status", *measured, *ends])
    # Best first; the jobs that did not complete (score -inf) last, in job order.
    table["_number"] = table["job"].map(job_number)
    table = table.sort_values(["_score", "_number"], ascending=[False, True])
    if table["_metric"].nunique() > 1:  # model=linreg,softmax: a val_loss beside a val_acc ranked
        table = table.sort_values("_metric", kind="stable")  # among the jobs of its own metric
    return table, keys


def row(job: str, overrides: dict | None, metrics: dict | None, unrecorded: str | None) -> dict:
    """unrecorded: its status without metrics.json: running (its folder held), missing (no
    folder), else unfinished (killed with kill -9, say)."""
    metrics = metrics or {}
    status = metrics.get("status", "unknown") if metrics else unrecorded or "unfinished"
    best, final = metrics.get("best") or {}, metrics.get("final") or {}
    metric = best.get("metric") or metrics.get("metric")  # None: no final_None, best_None
    return {"job": job, "_overrides": overrides or {}, "_score": score(metrics), "_metric": metric,
            "status": status, f"final_{metric}": final.get(metric),
            f"best_{metric}": best.get("value"), "best_epoch": best.get("epoch"),
            "seconds": metrics.get("wall_seconds"), "restarts": metrics.get("restarts"),
            "reason": metrics.get("reason")}  # fmt: skip


def report(sweep_dir: Path, show: bool = True) -> str | None:
    """Print a sweep folder's table (if show), write summary.csv and heatmap.png; what failed."""
    if not sweep_dir.is_dir():
        raise UsageError(
            f"{sweep_dir} is not a folder. Fix: d2lrun-report outputs/multirun/DATE/TIME "
            f"(the folder a sweep printed)."
        )
    levels = [] if (sweep_dir / "multirun.yaml").exists() else ["*/", "*/*/", "*/*/*/"]
    below = sorted(p.parent for g in levels for p in sweep_dir.glob(g + "multirun.yaml"))
    if below:  # outputs/, or outputs/multirun/DATE/: its sweeps' jobs ranked as one table
        more = f" (the last 3 of {len(below)})" if len(below) > 3 else ""
        raise UsageError(
            f"{sweep_dir} is no sweep folder (it has no multirun.yaml) but holds sweeps, whose "
            f"jobs it would rank as one. Fix: d2lrun-report one of them: "
            f"{', '.join(map(str, below[-3:]))}{more}."
        )
    table, keys = collect(sweep_dir)
    public = table[[c for c in table if not c.startswith("_")]]
    written = [atomic_write(sweep_dir / "summary.csv", public.to_csv(index=False).encode())]
    metrics = set(table["_metric"].dropna())
    numeric = all(isinstance(v, (int, float)) for k in keys for v in table[k].dropna())
    if len(keys) == 2 and numeric and len(metrics) == 1:
        metric, name = metrics.pop(), sweep_dir.resolve().name
        with deferred_signals():  # as pandas' (collect)
            import matplotlib.figure  # noqa: F401
        image = png(heatmap_figure(table, *keys, metric, metric in HIGHER_IS_BETTER, name))
        written.append(atomic_write(sweep_dir / "heatmap.png", image))
    counts = table["status"].value_counts(sort=False)
    if show:
        print_table(sweep_dir, public, counts, best=len(metrics) < 2)  # one best of one metric
        if len(metrics) > 1:
            judged = f"{len(metrics)} metrics ({', '.join(sorted(metrics))})"
            print(f"note: these jobs are judged by {judged}; each is ranked among those of its own")
        print(f"wrote {', '.join(map(str, written))}")
    bad = len(table) - counts.get("completed", 0)
    if bad:
        what = ", ".join(f"{n} {s}" for s, n in counts.items() if s != "completed")
        finish = ""  # stopped (Ctrl-C, scancel, a node lost) or not started: a re-run goes on
        if {"interrupted", "unfinished", "missing"} & set(counts.index) and not running(sweep_dir):
            again = shell_arg("hydra.sweep.dir", sweep_dir)
            finish = f"; to finish them, run the same command again with {again}"
        return (
            f"{bad} of {len(table)} sweep jobs did not complete ({what}); see {written[0]}{finish}"
        )
    return None


def print_table(sweep_dir: Path, table, counts, best: bool = True) -> None:
    """The rows as a rich table, best first (bold if best), failures in red, their reasons below."""
    from rich.console import Console
    from rich.table import Column, Table
    from rich.text import Text  # a cell as written: [alley] is no markup to rich

    columns = [c for c in table if c != "reason"]
    rich_table = Table(*(Column(c, justify="left" if c == "status" else "right") for c in columns))
    for i, r in enumerate(table.to_dict("records")):
        style = ("bold" if i == 0 and best else None) if r["status"] == "completed" else "red"
        rich_table.add_row(*(Text(fmt(r[c])) for c in columns), style=style)
    console = Console()
    console = console if console.is_terminal else Console(width=200)  # piped: not 80 columns
    console.print(f"sweep {sweep_dir}: " + ", ".join(f"{n} {s}" for s, n in counts.items()),
                  soft_wrap=True, markup=False)  # fmt: skip
    console.print(rich_table)
    for r in table.dropna(subset=["reason"]).to_dict("records"):
        console.print(f"job {r['job']} {r['status']}: {r['reason']}", style="red", soft_wrap=True,
                      markup=False)  # fmt: skip


def fmt(value) -> str:
    if value is None or value != value:  # None or NaN: an empty cell
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
