"""Sweeps (`d2lrun -m`): a folder of its own, resumable jobs, and the results table at the end.

    unique_dir    the resolver behind hydra.sweep.dir: two sweeps never share a folder
    run_job       one job: skipped when already completed; a failure is recorded, the sweep goes on
    score         what each job returns to the sweeper: best val_acc, or minus best val_loss
    SweepSummary  the Hydra callback (configs/config.yaml) that ends every sweep with `report`
    report        table, summary.csv and heatmap.png of any sweep folder (`d2lrun-report DIR`)

Imports stay light (no torch): Hydra instantiates the callback for every run, sweep or not.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import sys
import traceback
from collections import Counter
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from d2lrun.errors import Abort, Interrupted, UsageError, translate
from d2lrun.files import atomic_write, shown, write_csv, write_json

JOB_FILE = Path(".hydra") / "d2lrun_job.json"  # the overrides a job folder was last started with
HIGHER_IS_BETTER = {"val_acc"}  # every other metric (val_loss) is better when lower


def unique_dir(base: str) -> str:
    """Create base, or base_2, base_3, ... when taken; mkdir is atomic: sweeps never share one."""
    path = Path(base)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        candidate = path if n == 1 else path.with_name(f"{path.name}_{n}")
        try:
            candidate.mkdir()
            return str(candidate)
        except FileExistsError:
            n += 1


def register_resolvers() -> None:
    # use_cache: Hydra copies the resolver cache into each job's config (joblib and submitit
    # workers too), so the folder is created once per sweep, not once per job.
    if not OmegaConf.has_resolver("d2lrun.unique_dir"):
        OmegaConf.register_new_resolver("d2lrun.unique_dir", unique_dir, use_cache=True)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finished_job(run_dir: Path, overrides: list[str]) -> dict | None:
    """metrics.json of the job that completed in run_dir with these same overrides, else None."""
    job, metrics = _read_json(run_dir / JOB_FILE), _read_json(run_dir / "metrics.json")
    if (
        job
        and metrics
        and job.get("overrides") == list(overrides)
        and metrics.get("status") == "completed"
    ):
        return metrics
    return None


def run_job(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> float:
    """One job of a sweep; returns its score. A job that fails is recorded in its metrics.json
    (status, reason, exit code; error.txt: an unexpected one's traceback); the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig

    from d2lrun.job import train

    hc = HydraConfig.get()
    done = finished_job(run_dir, overrides)
    if done is not None:  # the same sweep run again: only missing or failed jobs train
        print(f"job {hc.job.num}: already completed in {shown(run_dir)}; skipped")
        return score(done)
    start_job(run_dir, overrides)
    try:
        return score(train(cfg, run_dir, overrides, sweep_dir=Path(hc.sweep.dir)))
    except Interrupted as e:
        raise Interrupted(
            f"{e} To finish the sweep, run the same command again with "
            f"hydra.sweep.dir={shown(hc.sweep.dir)}"
        ) from None
    except Exception as e:
        error = translate(e)
        reason = str(error) if error else f"{type(e).__name__}: {e} (traceback in error.txt)"
        print(f"d2lrun: error: {reason}", file=sys.stderr, flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        if error is None:
            atomic_write(run_dir / "error.txt", traceback.format_exc().encode())
        if not (run_dir / "metrics.json").exists():
            record_failure(run_dir, reason, getattr(error, "exit_code", 1))
        return -math.inf


def record_failure(run_dir: Path, reason: str, exit_code: int) -> None:
    """metrics.json of a job that failed: the table shows it as failed, with its reason."""
    write_json(
        run_dir / "metrics.json", {"status": "failed", "reason": reason, "exit_code": exit_code}
    )


def start_job(run_dir: Path, overrides: list[str]) -> None:
    """Record which job runs in run_dir; an earlier attempt's metrics.json no longer counts."""
    (run_dir / "metrics.json").unlink(missing_ok=True)
    (run_dir / JOB_FILE).parent.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / JOB_FILE, {"overrides": list(overrides)})


def score(metrics: dict | None) -> float:
    """What a sweeper maximizes: best val_acc, or minus best val_loss; -inf unless completed.

    -inf rather than NaN: Optuna rejects NaN (and the Hydra plugin then crashes the sweep), while
    -inf is a valid value that steers the search away from settings that diverge.
    """
    best = (metrics or {}).get("best")
    if not metrics or metrics.get("status") != "completed" or not best:
        return -math.inf
    return best["value"] if best["metric"] in HIGHER_IS_BETTER else -best["value"]


class SweepSummary(Callback):
    """Ends every sweep, under any launcher or sweeper, with the table, summary.csv, heatmap."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # Only Hydra's basic sweeper saves multirun.yaml; the report reads the plan from it.
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, sweep_dir / "multirun.yaml")
        # Optuna imports alembic, whose INFO lines ("setup plugin ...") would print as Hydra's own.
        logging.getLogger("alembic").setLevel(logging.WARNING)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        failure = report(Path(str(config.hydra.sweep.dir)))
        if failure:  # an Abort, not an Exception: Hydra would turn that into a warning
            raise Abort(failure)


def _as_dict(overrides) -> dict[str, str] | None:
    return None if overrides is None else dict(o.split("=", 1) for o in overrides if "=" in o)


def planned_jobs(sweep_dir: Path) -> tuple[list[dict | None], list[str]]:
    """The jobs multirun.yaml asks for ({key: value}, None where a sampler picks); swept keys."""
    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return [], []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = OmegaConf.load(path).hydra
    sweeper = hydra_cfg.sweeper  # read without resolving: hydra.sweep.dir would claim a new folder
    params = OmegaConf.to_container(sweeper, resolve=False).get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + OmegaConf.to_container(
        hydra_cfg.overrides.task, resolve=False
    )
    overrides = OverridesParser.create().parse_overrides(args)
    swept = [o.get_key_element() for o in overrides if o.is_sweep_override()]
    if str(sweeper.get("_target_", "")).endswith(
        "BasicSweeper"
    ):  # the grid, in Hydra's own job order
        values = {
            o.get_key_element(): [str(v) for v in o.sweep_string_iterator()]
            if o.is_sweep_override()
            else [o.get_value_element_as_str()]
            for o in overrides
        }
        grid = itertools.product(*([f"{k}={v}" for v in vs] for k, vs in values.items()))
        return [_as_dict(job) for job in grid], swept
    return [None] * int(sweeper.get("n_trials") or 0), swept


def _found_jobs(sweep_dir: Path):
    """(name, overrides, metrics) of every job folder; metrics is None while it runs or killed."""
    import yaml

    for d in sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: _job_number(p.name)
    ):
        job = _read_json(d / JOB_FILE)
        overrides = job["overrides"] if job else None
        if overrides is None and (d / ".hydra" / "overrides.yaml").exists():
            overrides = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())
        metrics = _read_json(d / "metrics.json")
        if overrides is not None or metrics is not None:
            yield d.name, _as_dict(overrides), metrics


def _job_number(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 30, name)


def _number(text: str | None):
    for cast in (int, float):
        try:
            return cast(text)
        except (TypeError, ValueError):
            pass
    return text


def _row(job: str, overrides: dict | None, metrics: dict | None, started: bool) -> dict:
    metrics = metrics or {}
    status = (
        metrics.get("status", "unknown") if metrics else ("unfinished" if started else "missing")
    )
    best, final = metrics.get("best") or {}, metrics.get("final") or {}
    metric = best.get("metric")
    values = (
        {f"final_{metric}": final.get(metric), f"best_{metric}": best.get("value")}
        if metric
        else {}
    )
    return {
        "job": job,
        "_overrides": overrides or {},
        "_score": score(metrics),
        "_metric": metric,
        "status": status,
        **values,
        "best_epoch": best.get("epoch"),
        "seconds": metrics.get("wall_seconds"),
        "reason": metrics.get("reason"),
    }


def collect(sweep_dir: Path) -> tuple[list[dict], list[str]]:
    """One row per job, found or only planned, best first; and the swept keys."""
    planned, swept = planned_jobs(sweep_dir)
    todo = dict(enumerate(planned))  # job number -> planned overrides, until its folder turns up
    rows = []
    for name, overrides, metrics in _found_jobs(sweep_dir):
        match = next((j for j, o in todo.items() if o is not None and o == overrides), None)
        if match is None and name.isdigit() and int(name) in todo and todo[int(name)] is None:
            match = int(name)  # a search sampler's trial: matched by number
        todo.pop(match, None)
        rows.append(_row(name, overrides, metrics, started=True))
    rows += [_row(str(j), o, None, started=False) for j, o in todo.items()]
    if not rows:
        raise UsageError(
            f"{sweep_dir} holds no sweep: no multirun.yaml and no job folders (0/, 1/, ...). "
            f"Fix: give a folder that `d2lrun -m` wrote, e.g. outputs/multirun/DATE/TIME."
        )
    varied = [
        k
        for r in rows
        for k in r["_overrides"]
        if len({r2["_overrides"].get(k) for r2 in rows if r2["_overrides"]}) > 1
    ]
    keys = list(dict.fromkeys(swept + varied))
    metrics = list(dict.fromkeys(r["_metric"] for r in rows if r["_metric"]))
    columns = (
        ["job", *keys, "status"]
        + [f"{w}_{m}" for m in metrics for w in ("final", "best")]
        + ["best_epoch", "seconds", "reason"]
    )
    table = [
        {c: _number(r["_overrides"].get(c)) if c in keys else r.get(c) for c in columns}
        | {"_score": r["_score"], "_metric": r["_metric"]}
        for r in rows
    ]
    table.sort(
        key=lambda r: (
            (0, -r["_score"], 0) if math.isfinite(r["_score"]) else (1, 0, _job_number(r["job"])[0])
        )
    )
    return table, keys


def report(sweep_dir: Path, show: bool = True) -> str | None:
    """Print a sweep folder's table (unless not show), write summary.csv (and heatmap.png); say
    what failed."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UsageError(
            f"{sweep_dir} is not a folder. Fix: d2lrun-report outputs/multirun/DATE/TIME "
            f"(the folder a sweep printed)."
        )
    rows, keys = collect(sweep_dir)
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    written = [write_csv(sweep_dir / "summary.csv", public)]
    metrics = {r["_metric"] for r in rows if r["_metric"]}
    numeric = all(isinstance(r[k], (int, float)) for r in rows for k in keys if r[k] is not None)
    if len(keys) == 2 and numeric and len(metrics) == 1:
        written.append(plot_heatmap(sweep_dir / "heatmap.png", rows, *keys, metrics.pop()))
    counts = Counter(r["status"] for r in rows)
    if show:
        print_table(sweep_dir, public, counts)
        print(f"wrote {', '.join(str(p) for p in written)}")
    bad = len(rows) - counts["completed"]
    if bad:
        what = ", ".join(f"{n} {s}" for s, n in counts.items() if s != "completed")
        return f"{bad} of {len(rows)} sweep jobs did not complete ({what}); see {written[0]}"
    return None


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_table(sweep_dir: Path, rows: list[dict], counts: Counter) -> None:
    """The rows as a rich table, best first (bold), failures in red, their reasons below."""
    from rich.console import Console
    from rich.table import Table

    columns = [c for c in rows[0] if c != "reason"]
    table = Table()
    for c in columns:
        table.add_column(c, justify="left" if c == "status" else "right")
    for i, r in enumerate(rows):
        style = (
            "bold"
            if i == 0 and r["status"] == "completed"
            else None
            if r["status"] == "completed"
            else "red"
        )
        table.add_row(*(_fmt(r[c]) for c in columns), style=style)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped to a file: not squeezed into 80 columns
    console.print(
        f"sweep {sweep_dir}: " + ", ".join(f"{n} {s}" for s, n in counts.items()), soft_wrap=True
    )
    console.print(table)
    for r in rows:
        if r["reason"]:
            console.print(
                f"job {r['job']} {r['status']}: {r['reason']}", style="red", soft_wrap=True
            )


def plot_heatmap(path: Path, rows: list[dict], x_key: str, y_key: str, metric: str) -> Path:
    """best_<metric> over two swept values: a cell per grid job, a dot per trial of a search."""
    import matplotlib
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, and a faster import

    col = f"best_{metric}"
    cells = [r for r in rows if r[x_key] is not None and r[y_key] is not None]
    done = [r for r in cells if math.isfinite(r["_score"])]
    values = [r[col] for r in done]
    cmap = matplotlib.colormaps[
        "viridis" if metric in HIGHER_IS_BETTER else "viridis_r"
    ].with_extremes(bad="lightgray")
    norm = LogNorm() if values and min(values) > 0 and max(values) > 10 * min(values) else None
    xs, ys = sorted({r[x_key] for r in cells}), sorted({r[y_key] for r in cells})
    grid = len(xs) * len(ys) == len({(r[x_key], r[y_key]) for r in cells})
    fig = Figure(
        figsize=(max(5.0, 1.1 * len(xs) + 2.5), max(3.5, 0.7 * len(ys) + 2)) if grid else (6, 4.5)
    )
    ax = fig.subplots()
    if grid:  # a grid sweep: one cell per job, failures grey with their status
        z = np.full((len(ys), len(xs)), np.nan)
        for r in done:
            z[ys.index(r[y_key]), xs.index(r[x_key])] = r[col]
        image = ax.imshow(
            np.ma.masked_invalid(z), cmap=cmap, norm=norm, origin="lower", aspect="auto"
        )
        for r in cells:
            ok = math.isfinite(r["_score"])
            red, green, blue, _ = cmap(image.norm(r[col])) if ok else (1, 1, 1, 1)
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # white text on dark cells
            ax.text(
                xs.index(r[x_key]),
                ys.index(r[y_key]),
                f"{r[col]:.3g}" if ok else r["status"],
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black" if ok else "dimgray",
            )
        ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
        ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
    else:  # a search (optuna): one dot per trial, failures as red crosses
        image = ax.scatter(
            [r[x_key] for r in done],
            [r[y_key] for r in done],
            c=values,
            cmap=cmap,
            norm=norm,
            s=60,
            edgecolors="black",
        )
        failed = [r for r in cells if not math.isfinite(r["_score"])]
        ax.scatter(
            [r[x_key] for r in failed],
            [r[y_key] for r in failed],
            marker="x",
            color="red",
            label="failed",
        )
        for axis, vals in ((ax.set_xscale, xs), (ax.set_yscale, ys)):
            if vals[0] > 0 and vals[-1] > 10 * vals[0]:
                axis("log")
        if failed:
            ax.legend()
    if values:
        fig.colorbar(image, ax=ax, label=col)
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    ax.set_title(f"{col} ({path.parent.name})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write(path, buf.getvalue())
