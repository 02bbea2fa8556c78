"""A sweep's own settings checked before any job starts: what Hydra's sweepers and launchers fail
on with a traceback, read unlike the basic sweeper (Optuna's range), or lose files to (a
hydra.sweep.subdir that puts two jobs into one folder), each as one line with its Fix."""

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from d2lrun.config import CONFIG_DIR, compose, first_difference, yaml_value
from d2lrun.errors import UsageError


def check_sweep(hydra: DictConfig, overrides: list) -> None:
    """What Hydra's sweepers and launchers fail on with a traceback, or lose files to, as one
    line (hydra: the sweep's hydra section, as composed)."""
    sweeper, launcher = hydra.sweeper, hydra.launcher
    if launcher.get("n_jobs") == 0:  # joblib: 'n_jobs == 0 in Parallel has no meaning'
        raise UsageError(
            "hydra.launcher.n_jobs=0 runs no job: it is the number of processes (-1: one per "
            "CPU). Fix: hydra.launcher.n_jobs=2."
        )
    if str(sweeper._target_).endswith("BasicSweeper"):
        for o in (o for o in overrides if o.is_sweep_override() and not o.is_discrete_sweep()):
            raise UsageError(
                f"{o.input_line} is a range to search, which Hydra's basic sweeper cannot list as "
                f"a grid. Fix: list values ({o.key_or_group}=0.01,0.1,1), or search it with "
                f"hydra/sweeper=optuna_lr_wd."
            )
        check_subdir(hydra, overrides)
    if sweeper.get("n_trials") is None:  # not Optuna's
        return
    for o in (o for o in overrides if o.is_sweep_override()):  # the plugin fails, or differs
        check_search(o)
    limits = {"n_trials": (1, None, 20), "n_jobs": (1, None, 1), "max_failure_rate": (0, 1, 1.0),
              "sampler.seed": (0, None, 0)}  # fmt: skip  # what Optuna fails on with a traceback
    for key, (low, high, fix) in limits.items():
        value = OmegaConf.select(sweeper, key)
        if value is not None and (value < low or high is not None and value > high):
            must = f"at least {low}" if high is None else f"from {low} to {high}"
            raise UsageError(
                f"hydra.sweeper.{key}={value} is out of range: it must be {must}. "
                f"Fix: hydra.sweeper.{key}={fix}."
            )
    direction = sweeper.direction  # maximize, MAXIMIZE, Direction.maximize, [maximize]: Optuna's
    direction = direction[0] if OmegaConf.is_list(direction) and len(direction) == 1 else direction
    if str(getattr(direction, "name", direction)).lower() != "maximize":  # minimize: the worst
        raise UsageError(
            f"hydra.sweeper.direction={yaml_value(sweeper.direction)}: a job's score is higher "
            f"for better settings (accuracy, or minus the loss). Fix: hydra.sweeper.direction="
            f"maximize."
        )


def check_search(o) -> None:
    """One swept key for Optuna: what its plugin fails on, or reads unlike the basic sweeper."""
    from hydra.core.override_parser.types import Glob, IntervalSweep, RangeSweep

    key, v = o.key_or_group, o.value()
    if isinstance(v, Glob):  # a group's options, named
        names = ",".join(v.filter(sorted(p.stem for p in (Path(CONFIG_DIR) / key).glob("*.yaml"))))
        raise UsageError(
            f"{o.input_line}: Optuna's sweeper searches values, not glob(). Fix: "
            f"'{key}=choice({names or 'a,b'})'."
        )
    if isinstance(v, RangeSweep):  # Optuna's includes its end: range(1,3) is 1, 2 and 3
        values = ",".join(str(x) for x in o.sweep_iterator())
        raise UsageError(
            f"{o.input_line}: Optuna's sweeper reads it with its end included, unlike Python's "
            f"range and the basic sweeper. Fix: '{key}=choice({values})'."
        )
    if isinstance(v, IntervalSweep) and (v.start > v.end or "log" in v.tags and v.start <= 0):
        low, high, whole = *sorted([v.start, v.end]), isinstance(v.start, int)
        if "log" in v.tags and low <= 0:  # a log scale starts above 0
            low = 1 if whole else high / 1000
        fix = f"int(interval({low}, {high}))" if whole else f"interval({low:g}, {high:g})"
        fix = f"tag(log, {fix})" if "log" in v.tags else fix
        raise UsageError(
            f"{o.input_line}: an interval runs from low to high, and on a log scale from above "
            f"0. Fix: '{key}={fix}'."
        )


def check_subdir(hydra: DictConfig, overrides: list) -> None:
    """A hydra.sweep.subdir that puts two jobs of a grid into one folder is refused before any
    job starts: the second would write over the first's .hydra/ and its record."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.hydra_config import HydraConfig

    # Each job composed, as Hydra's basic sweeper does before it launches them (a sweep with
    # a subdir of its own takes that time twice as it starts: 0.1-0.2 s a job here).
    subdir = OmegaConf.to_container(hydra.sweep, resolve=False)["subdir"]
    if re.search(r"job\.(num|id)\b", str(subdir)):  # Hydra's default ${hydra.job.num}: unique
        return
    folders: dict[str, int] = {}
    for num, job in enumerate(BasicSweeper.split_arguments(overrides, None)[0]):
        cfg = compose(job, with_hydra=True)
        cfg.hydra.job.num = cfg.hydra.job.id = num  # as the launchers set them
        HydraConfig.instance().set_config(cfg)  # ${hydra:...} as the job's, as in run_job
        try:
            folder = str(cfg.hydra.sweep.subdir)
        except Exception:  # a ${...} Hydra resolves later, or never: its own error then
            return
        if folder in folders:
            raise UsageError(
                f"hydra.sweep.subdir={subdir} puts jobs {folders[folder]} and {num} into one "
                f"folder ({folder}): the second would write over the first. Fix: "
                f"'hydra.sweep.subdir={subdir}_${{hydra.job.num}}'."
            )
        folders[folder] = num


def check_same_search(saved: DictConfig, hydra: DictConfig, folder: str) -> None:
    """A sweep run again into its folder searches as before: its sampler, seed, search space and
    subdir (saved: the hydra section of its multirun.yaml); n_trials and n_jobs may change."""
    chosen = [OmegaConf.select(h, "runtime.choices", default={}) for h in (saved, hydra)]
    for group, there in chosen[0].items():  # hydra/sweeper/sampler=random: the option
        asked = chosen[1].get(group)
        if group.startswith("hydra/sweeper") and asked != there:
            raise UsageError(
                f"hydra.sweep.dir={folder} holds another sweep ({group}={there} there, {asked} "
                f"now). Fix: {group}={there} to finish that one, or another hydra.sweep.dir."
            )
    was, now = (
        {"sweep.subdir": OmegaConf.to_container(h.sweep, resolve=False)["subdir"]}
        | {f"sweeper.{k}": v for k, v in OmegaConf.to_container(h.sweeper, resolve=False).items()
           if k not in ("n_trials", "n_jobs")}
        for h in (saved, hydra)
    )  # fmt: skip
    if diff := first_difference(was, now, "hydra"):  # Optuna's trials 0, 1, ... would be others
        key, there, asked = diff
        fix = f"'{key}={there}'" if "$" in there else f"{key}={there}"  # quoted for a shell
        raise UsageError(
            f"hydra.sweep.dir={folder} holds another sweep ({key}={there} there, {asked} now). "
            f"Fix: {fix} to finish that one, or another hydra.sweep.dir."
        )
