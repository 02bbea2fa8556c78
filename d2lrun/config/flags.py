"""The command line's flags as Hydra's parser reads them, checked before anything runs: a flag
Hydra would fail on with a traceback or its usage text, or that would run another config, is
refused in one line."""

import contextlib
import io
import shlex
from collections.abc import Sequence
from pathlib import Path

from omegaconf import BooleanNode, OmegaConf, ValidationError

from d2lrun.config import check_groups, compose, given, hydra_args, overrides_of
from d2lrun.config.schema import GROUPS, closest, options_of
from d2lrun.errors import UsageError
from d2lrun.files import path_fix


def check_flags(args: Sequence[str], name: str = "config") -> None:
    """Hydra's flags as its parser reads them; a refusal (--bogus, --cfg foo) as one line, not
    Hydra's usage text; then the overrides (check_groups)."""
    said = io.StringIO()
    flags = hydra_args(args, said, strict=True)
    prog = "d2lrun" if name == "config" else f"d2lrun-{name}"
    if flags is None:
        reason = (said.getvalue().strip().splitlines() or ["?"])[-1].partition("error: ")[2]
        raise UsageError(f"{reason}. Fix: see `{prog} --help` for the flags and keys.")
    # Hydra's flags that it fails on with a traceback, or that would run another config.
    if flags.multirun and (flags.cfg or flags.info):  # Hydra refuses them with -m
        raise UsageError("--cfg and --info show one run's config, not a sweep's. Fix: drop -m and "
                         "give one value per key (d2lrun optim.lr=0.1 --cfg job).")  # fmt: skip
    if flags.resolve and not (flags.cfg or flags.help):
        raise UsageError(f"--resolve resolves what --cfg shows. Fix: {prog} --cfg job --resolve.")
    if flags.package is not None and not (flags.cfg or flags.help):  # ignored: a run trained
        raise UsageError(f"-p {flags.package} picks the part of the config --cfg shows. "
                         f"Fix: {prog} --cfg job -p {flags.package}.")  # fmt: skip
    if flags.experimental_rerun:
        raise UsageError(f"--experimental-rerun is not {prog}'s: resume=RUN goes on with a "
                         f"saved run. Fix: drop --experimental-rerun.")  # fmt: skip
    if flags.config_dir and not Path(flags.config_dir).expanduser().is_dir():
        raise UsageError(f"--config-dir {flags.config_dir} is not a folder. Fix: a folder of YAML "
                         f"files to add, or drop it.")  # fmt: skip
    if flags.config_name not in (None, name):
        preset = "; a preset is experiment=NAME" if name == "config" else ""  # d2lrun's only
        raise UsageError(f"--config-name {flags.config_name}: {prog} runs its own config "
                         f"({name}.yaml). Fix: drop it{preset}.")  # fmt: skip
    if flags.config_path is not None:
        raise UsageError(f"--config-path {flags.config_path}: {prog} runs its own configs. Fix: "
                         f"drop it; --config-dir DIR adds a folder of YAML files.")  # fmt: skip
    # Hydra's folders, which it would make (multirun/DATE/TIME, an empty X) and eval never uses
    made = [a for a in flags.overrides if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    made = ["-m"] * flags.multirun + made
    if name != "config" and made:
        raise UsageError(f"{' '.join(made)}: {prog} reads one run and writes beside it, into no "
                         f"folder of its own. Fix: drop {' '.join(made)}.")  # fmt: skip
    # d2lrun-predict outputs/DATE/TIME new.csv: paths without their keys, each Fixed at once
    paths = {} if flags.multirun else {a: f for a in flags.overrides if (f := path_fix(a, name))}
    if paths:
        what = "is not an override" if len(paths) == 1 else "are not overrides"
        raise UsageError(f"{' '.join(paths)} {what}. Fix: {' '.join(paths.values())}.")
    for arg in flags.overrides:
        key, equals, value = arg.partition("=")
        sign, parts = key[: len(key) - len(key.lstrip("+~"))], key.lstrip("+~").split(".")
        if equals and "" in parts:  # =mlp, +=mlp, trainer..epochs=5: Hydra's traceback, or a
            # 'quote the value' Fix again and again
            group = next((g for g in GROUPS if value in options_of(g)), None)  # =mlp: model=mlp
            fix = f"{group}={value}" if group else f"KEY={value} with a key `{prog} --help` lists"
            fix = f"{sign}{'.'.join(p for p in parts if p)}={value}" if parts != [""] else fix
            what = "no key before '='" if parts == [""] else "an empty part in its key"
            raise UsageError(f"{arg} has {what}. Fix: {fix}.")
        if arg.startswith("hydra.mode=") and arg != "hydra.mode=RUN" and not flags.multirun:
            swept = shlex.join(a for a in flags.overrides if a != arg) or "optim.lr=0.03,0.1"
            swept = f"{prog} -m {swept}"  # the sweep's table as well
            raise UsageError(f"{arg}: -m sets Hydra's mode, for a sweep. Fix: "
                             f"{swept if name == 'config' else f'drop {arg}'}.")  # fmt: skip
    typed = chdir = given(args, "hydra.job.chdir")  # true, yes, on, 1: as OmegaConf reads bools
    with contextlib.suppress(ValidationError):  # not a bool at all: Hydra's own line then
        chdir = OmegaConf.create({"chdir": BooleanNode(chdir)}).chdir
    if chdir is True:  # Hydra would run the job in its run folder
        typed = "true" if typed == "True" else typed
        raise UsageError(
            f"hydra.job.chdir={typed} is not supported: d2lrun reads the paths you give "
            f"(dataset.path, resume=) from the folder you run it in. Fix: drop hydra.job.chdir="
            f"{typed}."
        )
    check_groups(args, name)  # before resume= is read from them
    if flags.cfg and flags.package not in (None, "_global_"):  # Hydra: not found, exit 1
        cfg = compose(overrides_of(args), name, with_hydra=flags.cfg != "job")
        sections, package = ["hydra"] if flags.cfg == "hydra" else list(cfg), flags.package
        top, parent = package.split(".")[0], package.rpartition(".")[0]
        if top not in sections or OmegaConf.select(cfg, package) is None:
            null = top in sections and OmegaConf.select(cfg, package, default=0) is None  # resume
            fix = f"-p {parent}" if parent else "drop -p"
            fix = fix if null else f"-p {closest(package, sections)}"
            fix = f"--cfg hydra -p {package}" if top == "hydra" != sections[0] else fix
            said = f"is not in the config (its sections: {', '.join(sections)})"
            said = "is null in the config, which Hydra prints as nothing" if null else said
            raise UsageError(f"-p {package} {said}. Fix: {fix}.")
