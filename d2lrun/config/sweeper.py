"""A sweep's own settings checked before any job starts: what Hydra's sweepers and launchers fail
on with a traceback, read unlike the basic sweeper (Optuna's range), or lose files to (a
hydra.sweep.subdir that puts two jobs into one folder), each as one line with its Fix."""

import contextlib
import copy
import itertools
import math
import os
import re
import shlex
from pathlib import Path

# Loaded with d2lrun.config already; the basic sweeper's module is not, and waits for a sweep.
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Glob, IntervalSweep, RangeSweep
from omegaconf import DictConfig, IntegerNode, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from d2lrun.config import ANEW, check_device, checked, compose, resolve_device
from d2lrun.config.messages import explain, first_difference
from d2lrun.config.schema import GROUPS, example, options_of, yaml_value
from d2lrun.errors import UsageError


def same_overrides(a: list[str], b: list[str], ignore: tuple = ANEW) -> bool:
    """Two command lines alike as Hydra reads them (1e-3 and 0.001, False and false), in any
    order, but for the keys ignore."""
    return not override_difference(a, b, ignore)


def override_difference(a: list[str], b: list[str], ignore: tuple = ANEW) -> str | None:
    """The first key whose value differs between two command lines, as 'key=A there, B now'."""
    parsed = [{o.key_or_group: o for o in OverridesParser.create().parse_overrides(list(lines))
               if o.key_or_group not in ignore} for lines in (a, b)]  # fmt: skip
    there, now = ({k: o.value() for k, o in p.items()} for p in parsed)
    key = next((k for k in {**there, **now} if k not in there or k not in now or
                there[k] != now[k]), None)  # fmt: skip
    if key is None:
        return None
    a, b = (p[key].input_line.partition("=")[2] if key in p else "not given" for p in parsed)
    return f"{key}={b} now, not given there" if key not in there else f"{key}={a} there, {b} now"


def sweep_config(lines: list[str]) -> tuple[DictConfig, dict[str, str], list[DictConfig]]:
    """The config Hydra composes for a sweep before its jobs (its swept keys left out), checked
    with every job (check_sweep); the fixed overrides of keys that only the swept options have
    (model.dropout with model=lenet,mlp), as key=choice(value): Hydra could not set them; and a
    job's config for each logger section among them, for the caller to open the tracker once."""
    overrides = OverridesParser.create().parse_overrides(lines)
    fixed = [o for o in overrides if not o.is_sweep_override()]
    picks = compose([o.input_line for o in fixed if is_group(o)])
    keys = [o for o in fixed if not (is_group(o) or o.is_hydra_override() or o.is_add()
                                     or o.is_force_add() or o.is_delete())]  # fmt: skip
    again = {
        o.input_line: f"{o.get_key_element()}=choice({o.get_value_element_as_str()})"
        for o in keys
        if not has_key(picks, o.key_or_group)
    }
    cfg = compose([o.input_line for o in fixed if o.input_line not in again], with_hydra=True)
    return cfg, again, check_sweep(cfg.hydra, overrides, cfg)


def fixed_in_sweep(o) -> bool:
    """key=choice(value): sweep_config's fixed key that only the swept options have; not swept."""
    return isinstance(o.value(), ChoiceSweep) and len(o.value().list) == 1


def has_key(cfg: DictConfig, dotted: str) -> bool:
    """dotted is a key of cfg, also one whose value is ??? (dataset=csv's path: one to give)."""
    parent, _, key = dotted.rpartition(".")
    node = OmegaConf.select(cfg, parent)  # cfg itself for ""
    return OmegaConf.is_dict(node) and key in node.keys()


def is_group(o) -> bool:
    """An override that picks an option (model=mlp, hydra/launcher=joblib), not one of a key; or
    that says where options are found (hydra.searchpath, as d2lrun.cli passes --config-dir)."""
    return o.key_or_group in (*GROUPS, "hydra.searchpath") or "/" in o.key_or_group


def check_sweep(hydra: DictConfig, overrides: list, cfg=None) -> list[DictConfig]:
    """What Hydra's sweepers and launchers fail on with a traceback, or lose files to, as one
    line (hydra: the sweep's hydra section, as composed in cfg); check_jobs' configs."""
    sweeper, launcher = hydra.sweeper, hydra.launcher
    if launcher.get("n_jobs") == 0:  # joblib: 'n_jobs == 0 in Parallel has no meaning'
        raise UsageError(
            "hydra.launcher.n_jobs=0 runs no job: it is the number of processes (-1: one per "
            "CPU). Fix: hydra.launcher.n_jobs=2."
        )
    for o in overrides:  # range(5,1), range(0,0): no value, no job
        r = o.value()
        if isinstance(r, RangeSweep) and not list(o.sweep_string_iterator()):
            # the step turned, from the start typed: range(1,0) as 1, not range(0,1)'s 0
            stop = r.start + 1 if r.start == r.stop else f"{r.stop},{-r.step}"
            raise UsageError(
                f"{o.input_line} gives no value, so the sweep would have no job. "
                f"Fix: {o.key_or_group}=range({r.start},{stop})."
            )
    if str(sweeper._target_).endswith("BasicSweeper"):
        for o in (o for o in overrides if getattr(o.value(), "shuffle", False)):
            listed = o.input_line.partition("=")[2].strip()
            raise UsageError(
                f"{o.input_line} numbers the jobs in a new order each time, so the sweep run "
                f"again (to finish it) would find other jobs in its folders 0/, 1/, ... Fix: "
                f"'{o.key_or_group}={listed[listed.index('(') + 1 : listed.rindex(')')]}'."
            )
        for o in (o for o in overrides if o.is_sweep_override() and not o.is_discrete_sweep()):
            raise UsageError(
                f"{o.input_line} is a range to search, which Hydra's basic sweeper cannot list as "
                f"a grid. Fix: list values ({o.key_or_group}={grid_of(o, cfg)}), or search it with "
                f"hydra/sweeper=optuna_lr_wd."
            )
        check_subdir(hydra, overrides)
    search = sweeper.get("n_trials") is not None  # Optuna's
    for o in (o for o in overrides if isinstance(o.value(), Glob)):  # the plugin fails, or differs
        check_glob(o, search)
    loggers = check_jobs(overrides, search, "Slurm" not in str(launcher.get("_target_")))
    if not search:
        return loggers
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
    if not sweeper.get("params") and not any(o.is_sweep_override() for o in overrides):
        raise UsageError(  # the plugin's own option: its 20 trials would train one config
            "the Optuna sweeper has nothing to search: no hydra.sweeper.params and no key given "
            "a range. Fix: hydra/sweeper=optuna_lr_wd (lr and weight decay), or a range such as "
            "'optim.lr=tag(log, interval(0.001, 1))'."
        )
    # Optuna 2.10 (hydra-optuna-sweeper 1.2's) fails on SQLAlchemy 2's databases, which MLflow's
    # packages need: an AssertionError as the study is created, its database file left behind.
    if storage := sweeper.get("storage"):
        from importlib.metadata import version  # both there: the sweeper's plugin needs them

        optuna, sqlalchemy = version("optuna"), version("sqlalchemy")
        if int(optuna.split(".")[0]) < 3 and int(sqlalchemy.split(".")[0]) >= 2:
            raise UsageError(
                f"hydra.sweeper.storage={storage}: Optuna {optuna} cannot keep a study in a "
                f"database with SQLAlchemy {sqlalchemy}. Fix: drop it; the sweep's folder keeps "
                f"every trial, and the same command finishes a stopped sweep."
            )
    direction = sweeper.direction  # maximize, MAXIMIZE, Direction.maximize, [maximize]: Optuna's
    direction = direction[0] if OmegaConf.is_list(direction) and len(direction) == 1 else direction
    if str(getattr(direction, "name", direction)).lower() != "maximize":  # minimize: the worst
        shown = direction.name if hasattr(direction, "name") else yaml_value(sweeper.direction)
        raise UsageError(
            f"hydra.sweeper.direction={shown}: a job's score is higher "
            f"for better settings (accuracy, or minus the loss). Fix: hydra.sweeper.direction="
            f"maximize."
        )
    return loggers


def grid_of(o, cfg: DictConfig | None) -> str:
    """Values of interval(low, high) for a grid: each whole number of a short range of a whole
    number's key (in cfg), else four, on a log scale where high is 4x low or more (8,16,32,64);
    a group's: its options."""
    if options := options_of(o.key_or_group):  # model=interval(0,1): a value is an option
        return ",".join(options)
    low, high = sorted([o.value().start, o.value().end])  # floats, as Hydra reads them
    section, _, leaf = o.key_or_group.rpartition(".")
    node = OmegaConf.select(cfg, section) if section else cfg
    whole = isinstance(node, DictConfig) and isinstance(node._get_node(leaf), IntegerNode)
    if whole and high - low <= 5:
        return ",".join(map(str, range(math.ceil(low), math.floor(high) + 1)))
    log = low > 0 and ("log" in o.value().tags or high >= 4 * low)
    steps = [low * (high / low) ** (i / 3) if log else low + (high - low) * i / 3 for i in range(4)]
    return ",".join(dict.fromkeys(str(round(x)) if whole else f"{x:.3g}" for x in steps))


def check_search(o, cfg: DictConfig) -> None:
    """One swept key for Optuna: what its plugin fails on, or reads unlike the basic sweeper (cfg:
    the config of the options searched first, for the key's type)."""
    key, v = o.key_or_group, o.value()
    if isinstance(v, RangeSweep):  # Optuna's includes its end: range(1,3) is 1, 2 and 3
        # range(0.01,0.1,0.01)'s sums show 0.060000000000000005: written as the user would, 0.06
        values = ",".join(
            f"{x:.12g}" if isinstance(x, float) else str(x) for x in o.sweep_iterator()
        )
        raise UsageError(
            f"{o.input_line}: Optuna's sweeper reads it with its end included, unlike Python's "
            f"range and the basic sweeper. Fix: '{key}=choice({values})'."
        )
    if not isinstance(v, IntervalSweep):
        return
    section, _, leaf = key.rpartition(".")
    section = OmegaConf.select(cfg, section) if section else cfg
    node = section._get_node(leaf) if isinstance(section, DictConfig) else None
    counts = isinstance(v.start, float) and isinstance(node, IntegerNode)  # Optuna would draw 10.3
    if counts or v.start > v.end or "log" in v.tags and v.start <= 0:
        low, high, whole = *sorted([v.start, v.end]), counts or isinstance(v.start, int)
        if "log" in v.tags and low <= 0:  # a log scale starts above 0
            low = 1 if whole else high / 1000
        fix = f"int(interval({math.ceil(low)}, {math.floor(high)}))" if whole else (
            f"interval({low:g}, {high:g})")  # fmt: skip
        fix = f"tag(log, {fix})" if "log" in v.tags else fix
        why = "an interval runs from low to high, and on a log scale from above 0"
        why = f"{key} is a whole number, which int(interval(...)) draws" if counts else why
        raise UsageError(f"{o.input_line}: {why}. Fix: '{key}={fix}'.")


def check_glob(o, search: bool) -> None:
    """glob(), which Hydra expands only with its config loader (d2lrun-report and a sweep's jobs
    read the plan without one), refused: the options it names are the Fix."""
    key = o.key_or_group
    if not (names := ",".join(o.value().filter(options := options_of(key)))):  # none, or no options
        what = f"its options: {', '.join(options)}" if options else "it is a key, not a group"
        fix = f"'{key}=glob(*)'" if options else f"list values ({key}={example(None, key)},...)"
        raise UsageError(f"{o.input_line} matches no option of {key} ({what}). Fix: {fix}.")
    who, fix = ("a grid lists", names) if not search else ("Optuna's sweeper searches",
                                                          f"choice({names})")  # fmt: skip
    raise UsageError(f"{o.input_line}: {who} values, not glob(). Fix: '{key}={fix}'.")


def check_jobs(overrides: list, search: bool, here: bool) -> list[DictConfig]:
    """Each job composed and checked as a run of it is (a search: each choice and bound once), so
    that a value a job would refuse ends the sweep before any starts; a job's checked config for
    each logger section among them (its tracker is not opened here). Each set of options is
    composed once and the jobs' keys set on a copy, as Hydra sets them (0.1 s a composition,
    5 ms a job here); devices are looked up where the jobs run (here: not on Slurm's nodes).
    A ${...} is left to its job, where ${hydra:...} resolves (or says why it cannot)."""
    values = {o.get_key_element(): values_of(o) for o in overrides
              if not o.is_hydra_override() or is_group(o)}  # fmt: skip
    jobs = list(itertools.product(*values.values()))
    if search:  # each choice and bound once, the other keys at their first
        first = [v[0] for v in values.values()]
        jobs = [first] + [[*first[:i], v, *first[i + 1 :]]
                          for i, vs in enumerate(values.values()) for v in vs[1:]]  # fmt: skip
    resumes = any(o.key_or_group == "resume" for o in overrides)  # checked as the job is
    composed, devices, loggers = {}, set(), {}
    parse = OverridesParser.create().parse_overrides  # one parser for every job
    for job in jobs:
        parsed = parse(list(job))
        picks = tuple(o.input_line for o in parsed if is_group(o))
        try:  # optim=sgd,adamw: 'Fix: optim=sgd,adam' (in_sweep), not one option
            if picks not in composed:
                composed[picks] = compose(picks)
                for o in (o for o in overrides if search and o.is_sweep_override()):
                    check_search(o, composed[picks])  # its range, before a bound as a value
            cfg = copy.deepcopy(composed[picks])
            ConfigLoaderImpl._apply_overrides_to_config([o for o in parsed if not is_group(o)], cfg)
            with contextlib.suppress(InterpolationResolutionError):  # ${hydra:job.num}: its
                run = checked(cfg, () if resumes else job, notes=False)  # each job says its own
                devices.add(run.device)
                loggers.setdefault(OmegaConf.to_yaml(run.logger), run)
        except Exception as e:
            if not isinstance(error := explain(e), UsageError):
                raise
            raise in_sweep(error, job, overrides) from None
    for name in devices:  # only cuda and mps import torch
        resolve_device(name) if here and name not in ("auto", "cpu") else check_device(name)
    return list(loggers.values())


def in_sweep(error: UsageError, job: list[str], overrides: list) -> UsageError:
    """A job's refusal whose Fix is one value of a listed key: the Fix keeps the list, with the
    value refused replaced (optim.lr=0.1,-1: Fix: optim.lr=0.1,0.03, not optim.lr=0.03); an
    interval's bound likewise (Optuna's interval(-1,1): interval(0.03,1), not one value)."""
    said, _, fix = str(error).rpartition(" Fix: ")
    key, _, value = fix.removesuffix(".").partition("=")
    listed = [o for o in overrides if o.get_key_element() == key and o.is_sweep_override()]
    if not listed or not value or not fix.endswith(".") or " " in fix:
        return error
    refused = next(v.partition("=")[2] for v in job if v.partition("=")[0] == key)
    if (o := listed[0]).is_interval_sweep():  # a bound that its key refuses: the Fix's value
        low, high = (
            value if str(b) == refused else str(b) for b in (o.value().start, o.value().end)
        )
        new = f"interval({low},{high})" if float(low) < float(high) else None
        new = f"tag(log,{new})" if new and "log" in o.value().tags else new
        return UsageError(f"{said} Fix: '{key}={new}'.") if new else error
    values: dict = {}  # each value once: 0 and the Fix's 0.0 are one job
    for v in (value if v == refused else v for v in o.sweep_string_iterator()):
        try:
            values.setdefault(float(v), v)
        except ValueError:  # a word, a list
            values.setdefault(v, v)
    return UsageError(f"{said} Fix: {key}={','.join(values.values())}.")


def values_of(o) -> list[str]:
    """key=VALUE for each value a sweep may give o: its listed ones, or an interval's bounds."""
    if not o.is_sweep_override():
        return [f"{o.get_key_element()}={o.get_value_element_as_str()}"]
    v = o.value()
    if o.is_interval_sweep():
        return [f"{o.get_key_element()}={x}" for x in (v.start, v.end)]
    return [f"{o.get_key_element()}={x}" for x in o.sweep_string_iterator()]


def check_subdir(hydra: DictConfig, overrides: list) -> None:
    """A hydra.sweep.subdir that puts two jobs of a grid into one folder is refused before any
    job starts: the second would write over the first's .hydra/ and its record."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    # Each job composed, as Hydra's basic sweeper does before it launches them (a sweep with
    # a subdir of its own takes that time twice as it starts: 0.1-0.2 s a job here).
    subdir = OmegaConf.to_container(hydra.sweep, resolve=False)["subdir"]

    def inside(folder: str) -> None:  # ., x/.., ../x: the sweep's folder itself, held by the
        shown = os.path.normpath(folder)  # sweep (its jobs waited on its lock for ever), or out
        if shown in (".", "..") or shown.startswith("../") or os.path.isabs(shown):
            where = "in the sweep's folder itself" if shown == "." else "outside the sweep's folder"
            raise UsageError(
                f"hydra.sweep.subdir={subdir} puts a job {where}, not in a folder of its own "
                f"inside it. Fix: 'hydra.sweep.subdir=${{hydra.job.num}}'."
            )

    inside(re.sub(r"\$\{[^}]*\}", "x", str(subdir)))  # whatever its ${...} give
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
        inside(folder)
        if folder in folders:
            raise UsageError(
                f"hydra.sweep.subdir={subdir} puts jobs {folders[folder]} and {num} into one "
                f"folder ({folder}): the second would write over the first. Fix: "
                f"'hydra.sweep.subdir={subdir}_${{hydra.job.num}}'."
            )
        folders[folder] = num


def check_same_sweep(sweep_dir: Path, task: list[str], hydra: DictConfig, folder: str) -> None:
    """A sweep run again into its folder (named folder) runs the jobs it ran (task: its overrides
    as Hydra keeps them) in the same order and searches as before: its sampler, seed (one was
    given), search space and subdir, as its multirun.yaml says; n_trials and n_jobs may change."""
    plan = sweep_dir / "multirun.yaml"
    # Its job folders (not always with .hydra/: hydra.output_subdir=null), not .submitit/
    if not plan.exists() or not any(p.is_dir() and p.name[0] != "." for p in sweep_dir.iterdir()):
        return

    def another(what: str, fix: str) -> UsageError:
        return UsageError(
            f"hydra.sweep.dir={folder} holds another sweep ({what}). Fix: {fix} to finish that "
            f"one, or another hydra.sweep.dir."
        )

    saved, parse = OmegaConf.load(plan).hydra, OverridesParser.create().parse_overrides
    before = list(saved.overrides.task)
    if diff := override_difference(before, task):  # its folders 0/, 1/, ... hold other jobs
        skip = ("hydra.mode=", "hydra.sweep.dir=")  # as typed (hydra/launcher=batched too)
        hydra_own = [o for o in saved.overrides.hydra if not o.startswith(skip)]
        typed = [f"{o.key_or_group}={o.input_line.partition('=choice(')[2][:-1]}"
                 if fixed_in_sweep(o) else o.input_line  # key=value, as typed
                 for o in parse(before)]  # fmt: skip
        same = " ".join(map(shlex.quote, hydra_own + typed))
        raise another(diff, f"the same overrides ({same})")
    chosen = [OmegaConf.select(h, "runtime.choices", default={}) for h in (saved, hydra)]
    for group, there in chosen[0].items():  # hydra/sweeper/sampler=random: the option
        asked = chosen[1].get(group)
        if group.startswith("hydra/sweeper") and asked != there:
            raise another(f"{group}={there} there, {asked} now", f"{group}={there}")
    sampler = OmegaConf.to_container(saved.sweeper, resolve=False).get("sampler") or {}
    if "seed" in sampler and sampler["seed"] is None:  # Optuna's trials drawn again: others
        raise UsageError(
            f"hydra.sweep.dir={folder} holds an Optuna sweep run without a sampler seed "
            f"(hydra.sweeper.sampler.seed=null), so its trials cannot be drawn again to finish "
            f"it. Fix: another hydra.sweep.dir, with hydra.sweeper.sampler.seed=0 to be able to "
            f"finish that one later."
        )
    was, now = (
        {"sweep.subdir": OmegaConf.to_container(h.sweep, resolve=False)["subdir"]}
        | {f"sweeper.{k}": v for k, v in OmegaConf.to_container(h.sweeper, resolve=False).items()
           if k != "n_trials"}  # n_jobs too: TPE draws other trials when asked 2 at a time
        for h in (saved, hydra)
    )  # fmt: skip
    if diff := first_difference(was, now, "hydra"):  # Optuna's trials 0, 1, ... would be others
        key, there, asked = diff
        fix = f"'{key}={there}'" if "$" in there else f"{key}={there}"  # quoted for a shell
        raise another(f"{key}={there} there, {asked} now", fix)
    swept = [[o for o in parse(x) if o.is_sweep_override()] for x in (before, task)]
    if [o.key_or_group for o in swept[0]] != [o.key_or_group for o in swept[1]]:
        raise UsageError(  # Hydra numbers the jobs in the order of these
            f"hydra.sweep.dir={folder} holds this sweep with its swept keys in another order "
            f"({' '.join(o.input_line for o in swept[0])}), which numbers its jobs 0/, 1/, ... "
            f"Fix: give them in that order, or another hydra.sweep.dir."
        )
