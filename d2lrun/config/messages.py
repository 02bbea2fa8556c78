"""What any error means to the user: Hydra's, OmegaConf's and the OS's exceptions as d2lrun's
one line (explain), and the line for a bad override (bad_value)."""

import dataclasses
import difflib
import re
import shlex
import typing
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from d2lrun.config.schema import (
    CONFIG_DIR,
    SCHEMAS,
    broken_rule,
    closest,
    example,
    options_of,
    preset_keys,
    yaml_value,
)
from d2lrun.errors import Bug, D2lrunError, RunFailed, UsageError
from d2lrun.files import disk_full, typed_arg
from d2lrun.stopping import before_saving


def quote_items(found: re.Match) -> str:
    """[a, Größe] -> ['a','Größe']: each item of a list quoted, as Hydra's grammar reads any."""
    return "[" + ",".join(f"'{i.strip()}'" for i in found[0][1:-1].split(",")) + "]"


def readable(override: str) -> bool:
    """Whether Hydra's grammar reads override."""
    try:
        return bool(OverridesParser.create().parse_override(override))
    except Exception:  # OverrideParseException, or its lexer's HydraException
        return False


def explain(e: BaseException) -> D2lrunError:
    """Any exception as d2lrun's own: its str the one line to show, its exit_code the exit code."""
    # Hydra's, OmegaConf's and the OS's are translated; anything else is a Bug.
    if isinstance(e, D2lrunError):
        return e
    if isinstance(e, KeyboardInterrupt):  # or stopping.Stop: a stop signal, as Ctrl-C is
        return before_saving(e)
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options:
        # model=configs/model/mlp.yaml: a path in the option's place; hydra/launcher=joblb: a
        # group of Hydra's, two parts deep
        parts = 2 if e.missing_cfg_file.startswith("hydra/") else 1
        *group, name = e.missing_cfg_file.split("/", parts)
        group = "/".join(group)
        return unknown_option(group, name, e.options)
    if isinstance(e, OverrideParseException):
        key, equals, value = e.override.partition("=")
        key, value = key.strip(), value.strip()  # "optim.lr = 0.1", as Python spaces it
        if items := re.fullmatch(r"\(([^()]*)\)", value):  # a tuple: f"dataset.w={w}"
            value = f"[{','.join(i.strip() for i in items[1].split(',') if i.strip())}]"
        # A number or list cut short or left open ([256, 0.1, or 3)): mended, not quoted (a text)
        mended = re.sub(",,+", ",", value.strip(",)")) + "]" * (value.count("[") - value.count("]"))
        if "," not in mended and not example(None, key).startswith("["):  # optim.lr=[0.1: 0.1
            mended = mended.strip("[]")
        if readable(f"{key}={value}"):
            fix = f"{key}={value}"
        elif re.fullmatch(r"[-+.\deE\[\], ]+", mended) and readable(f"{key}={mended}"):
            fix = f"{key}={mended}"
        else:  # quoted: a list's items each (dataset.drop=['Größe'], a sweep of lists too),
            lists = r"\[[^'\"\[\]]*\]"  # else the whole value
            only_lists = re.fullmatch(rf"{lists}(,{lists})*", value)
            value = re.sub(lists, quote_items, value) if only_lists else f"'{value}'"
            fix = f"""quote the value: "{key}={value}" (outer quotes for a shell)"""
        fix = fix if equals else "write it as KEY=VALUE"
        if not equals and (value := example(None, key)) not in ("...", "null") and "{" not in value:
            fix = f"{key}={value}"  # a key without its value: optim.lr, as d2lrun.train("optim.lr")
        if re.search(r"\s['\"]?[\w.+~]+=", e.override):  # "a=1 b=2", or train("a=1 'b=2'")
            try:
                words = shlex.split(e.override)
            except ValueError:  # a quote not closed
                words = [w.strip("'\"") for w in e.override.split()]
            words = words[words[0].startswith("d2lrun") :]  # a command line pasted: "d2lrun a=1"
            fix = f"one override per argument: {' '.join(map(repr, words))}"
            fix = words[0] if len(words) == 1 else fix
        return UsageError(f"cannot read the override {e.override}. Fix: {fix}.")
    cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
    cause = e if getattr(e, "full_key", None) else cause  # OC_CAUSE=1 (a debugger): e has it
    if isinstance(cause, MissingMandatoryValue):  # a ??? key that the command line did not set
        return UsageError(
            f"{cause.full_key} is required. Fix: {cause.full_key}={example(None, cause.full_key)}."
        )
    if isinstance(cause, InterpolationResolutionError):  # ${trainer.epoch}, ${oc.env:UNSET}
        first = str(cause).strip().splitlines()[0].rstrip(".")
        return UsageError(
            f"cannot resolve a ${{...}} of the config: {first}. Fix: a ${{key}} that exists or an "
            f"environment variable that is set, or the value itself."
        )
    append = re.search(r"To append to your config use (\S+)", str(e))
    if append and getattr(cause, "object_type", None) is dict:  # a dict of any keys: + adds one
        section, _, key = cause.full_key.rpartition(".")  # hydra.launcher.additional_parameters
        return UsageError(f"{section} has no key {key} yet; + adds one. Fix: {append[1]}.")
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        node, schema = getattr(cause, "parent_node", None), cause.object_type
        if isinstance(node, ListConfig):  # optim.betas[0]=a: the section that holds the list
            node = node._get_parent()
            schema = OmegaConf.get_type(node)
        option = node.get("name") if isinstance(node, DictConfig) else None
        return UsageError(bad_value(cause.full_key, cause.value, schema, option))
    # A config file of a group sets a key the chosen option lacks (regularizer=dropout on linreg).
    found = re.search(r"In '(.+?)'.*not in '(\w+)'.*full_key: (\S+)", str(e), re.S)
    if isinstance(e, ConfigCompositionException) and found:
        origin, schema_name, k = found.groups()
        owners = {o: s for g in SCHEMAS.values() for o, s in g.items() if s.__name__ == schema_name}
        option, schema = next(iter(owners.items()))
        message = bad_value(k, None, schema, option).replace(" is", ", which is", 1)
        group, (kind, _, preset) = k.split(".")[0], origin.partition("/")
        if kind == "experiment" and (own := preset_keys(preset)[1].get(group)):  # the preset's
            message = f"{message.partition(' Fix: ')[0]} Fix: {group}={own} (the preset's)."
        return UsageError(f"{origin.replace('/', '=')} sets {message}")
    several = r"Ambiguous value for argument '(.+?)'|Sweep parameters '(.+?)' requires --multirun"
    if found := re.match(several, str(e)):  # a list, range(...) or choice(...) without -m
        override = swept = found[1] or found[2]
        key, _, value = override.partition("=")
        what = "a column name" if key == "dataset.target" else "a file name"  # a/b,c.csv
        quoted = f"{typed_arg(key, value)} ({what} with a comma, quoted), or "
        quoted = quoted if key == "dataset.target" or re.search(r"[/\\]|\.[A-Za-z]", value) else ""
        if value.startswith("glob("):  # a sweep takes the options it names (sweeper.check_glob)
            glob = OverridesParser.create().parse_override(override).value()
            swept = f"{key}={','.join(glob.filter(options_of(key))) or 'a,b'}"
        return UsageError(
            f"{override} gives several values, which only a sweep runs. Fix: {quoted}d2lrun -m "
            f"{swept} (one run per value), or one value."
        )
    if isinstance(e, KeyError) and e.args == ("COMP_LINE",):  # d2lrun -sc query=bash, by hand
        return UsageError(
            "--shell-completion query=... is what the completion script runs, with COMP_LINE set. "
            'Fix: eval "$(d2lrun --shell-completion install=bash)", then press Tab.'
        )
    if found := re.match(r"Expecting one subcommand from \[(.+?)\]", str(e)):  # d2lrun -sc
        return UsageError(
            f"--shell-completion takes one of {found[1]}. "
            f'Fix: eval "$(d2lrun --shell-completion install=bash)".'
        )
    if found := re.match(r"Sweeping over Hydra's configuration is not supported : '(.+)'", str(e)):
        swept = OverridesParser.create().parse_override(found[1])  # hydra.launcher.max_members=1,2
        first = next(iter(swept.sweep_string_iterator()), "...")
        fix = f"{swept.key_or_group}={first}, and a sweep per value"
        return UsageError(f"{found[1]} sweeps a setting of Hydra's, which takes one value per "
                          f"sweep. Fix: {fix}.")  # fmt: skip
    again = r"Multiple values for (\w+)\. To override a value use 'override \w+: (.+)'"
    if found := re.match(again, str(e)):  # +model=mlp
        return UsageError(f"+{found[1]}= adds {found[1]}, which config.yaml chooses already. "
                          f"Fix: {found[1]}={found[2]} (without the +).")  # fmt: skip
    if found := re.search(r"already at '(.+?)'\.\s+Either remove \+ prefix: '(.+?)'", str(e)):
        return UsageError(f"+{found[2]} adds {found[1]}, which the config has already. "
                          f"Fix: {found[2]} (without the +).")  # fmt: skip
    if isinstance(e, (ConfigCompositionException, OmegaConfBaseException)):
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()][:2]
        return UsageError(" ".join(lines) + " Fix: see `d2lrun --help` for the keys and options.")
    if isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        space = "free disk space, or " if disk_full(e) else ""
        return RunFailed(
            f"{e.strerror or e}{where}. Fix: {space}write where you may: hydra.run.dir=DIR for "
            f"a run, output=FILE for d2lrun-predict."
        )
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return Bug(
        f"{type(e).__name__}: {first} (a bug in d2lrun? HYDRA_FULL_ERROR=1 shows the traceback)"
    )


def unknown_option(group: str, name: str, options) -> UsageError:
    """An option of group that is not there: the ones that are, and the one spelled most like it."""
    default = next(iter(SCHEMAS.get(group, {})), None)  # config.yaml's: the first
    return UsageError(
        f"Unknown {group} '{name}'. Choose one of: {', '.join(sorted(options))}. "
        f"Fix: {group}={closest(name.rpartition('/')[2].removesuffix('.yaml'), options, default)}."
    )


def section_keys(types: dict) -> dict[str, str]:
    """The keys one level below the config's, by name: lr: optim.lr (of any optimizer)."""
    found = {}
    for section, kind in types.items():
        schemas = [kind] if dataclasses.is_dataclass(kind) else SCHEMAS.get(section, {}).values()
        for schema in schemas:  # a group's: every option's
            found |= {k: f"{section}.{k}" for k in typing.get_type_hints(schema) if k != "name"}
    return found


# Other libraries' names for the book's keys (Keras' learning_rate), too far for difflib to match.
OTHER_NAMES = {
    "learning_rate": "lr",
    "wd": "weight_decay",
    "bs": "batch_size",
    "batch": "batch_size",
}


def bad_value(dotted: str, value, schema, option: str | None) -> str:
    """One line for a bad override: an unknown key, or a value of the wrong type; a working fix."""
    types = typing.get_type_hints(schema) if dataclasses.is_dataclass(schema) else {}
    group, _, name = dotted.rpartition(".")
    name, item, _ = name.partition("[")  # optim.betas[0]: an item of a list
    if name not in types and group.startswith("hydra.") and dataclasses.is_dataclass(schema):
        # a plugin's base class typed the node (Optuna's SamplerConfig; TPESamplerConfig has the
        # seed): the one with the key. Not d2lrun's (trainer.Trainer's epoch is no key of trainer)
        subs = [c for c in schema.__subclasses__() if name in typing.get_type_hints(c)]
        schema, types = (subs[0], typing.get_type_hints(subs[0])) if subs else (schema, types)
    if name not in types:  # a key the chosen option does not have
        where = f"{group}={option}" if option and group in SCHEMAS else group or "the config"
        options = SCHEMAS.get(group, {}) if schema in SCHEMAS.get(group, {}).values() else {}
        has = [o for o, s in options.items() if name in typing.get_type_hints(s)]  # not eval's
        pick = group.replace(".", "/")  # hydra.launcher.n_jobs: hydra/launcher=joblib has it
        has = has or hydra_owners(pick, name)
        fix = f"choose {' or '.join(f'{pick}={o}' for o in has)}" if has else f"drop {dotted}"
        inner = {} if group or has else section_keys(types)  # the book's lr=0.1, num_epochs=3
        known = OTHER_NAMES.get(name, name)  # learning_rate: too far from lr for difflib
        if near := difflib.get_close_matches(known, list(inner), n=1, cutoff=0.75):
            fix = f"write {inner[near[0]]} instead of {dotted}"
        if not has and (near := difflib.get_close_matches(known, list(types), n=1, cutoff=0.75)):
            fix = f"write {dotted.removesuffix(name)}{near[0]} instead of {dotted}"  # trainer.epoch
        keys = ", ".join(types) or "none"
        return f"{dotted} is not a key of {where} (its keys: {keys}). Fix: {fix}."
    kind = types[name]
    if typing.get_origin(kind) is not list:  # int | None: int
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
    if item and typing.get_origin(kind) is list:  # list[float]'s item: float
        kind = typing.get_args(kind)[0]
    if dataclasses.is_dataclass(kind):  # trainer=5: a section, not a value
        key = f"{dotted}.{dataclasses.fields(kind)[0].name}"
        return f"{dotted} is a section of keys, not a value. Fix: {key}={example(None, key)}."
    what = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}
    what = what.get(kind, "a list")
    key = dotted.partition("[")[0]
    items = typing.get_args(kind)  # drop=Id: [Id]; a list of numbers: the option's own
    fix = f"[{value}]" if items == (str,) and value is not None else example(None, key, option)
    rules = (own := next(f for f in dataclasses.fields(schema) if f.name == name)).metadata
    if kind is int and isinstance(value, float) and value.is_integer() and not item and rules:
        if not broken_rule(rules, int(value)):  # 5e4: the same number, where the key takes it
            what, fix = "a whole number as written", int(value)
    if fix == "..." and own.default is not dataclasses.MISSING:  # a plugin's key: its default;
        fix = yaml_value(0 if name == "seed" else own.default)  # a seed's 0: null's sweep cannot
        # be run again to finish it (Optuna's trials drawn anew)
    return f"{dotted}={yaml_value(value)} is not {what}. Fix: {key}={fix}."


def hydra_owners(group: str, key: str) -> list[str]:
    """The options of Hydra's group (hydra/launcher) that have key: d2lrun's own (with the keys of
    the plugin's option each builds on, slurm's submitit_slurm), else the plugins' (joblib)."""
    if group not in ("hydra/launcher", "hydra/sweeper"):
        return []
    plugins = ConfigStore.instance().repo.get("hydra", {}).get(group.split("/")[1], {})
    keys = {n.removesuffix(".yaml"): set(c.node) for n, c in plugins.items() if hasattr(c, "node")}
    ours = {}
    for o in options_of(group):
        node = OmegaConf.load(Path(CONFIG_DIR, group, f"{o}.yaml"))
        ours[o] = set(node).union(*(keys.get(str(d), ()) for d in node.get("defaults", [])))
    found = [o for o, k in ours.items() if key in k]
    return found or sorted(o for o, k in keys.items() if key in k)


def first_difference(a, b, prefix: str):
    """(the dotted key, a's value, b's value) where a and b first differ, as typed (null, true)."""
    if isinstance(a, dict) and isinstance(b, dict):
        diffs = (first_difference(a.get(k), b.get(k), f"{prefix}.{k}") for k in {**a, **b})
        return next((d for d in diffs if d), None)
    return None if a == b else (prefix, yaml_value(a), yaml_value(b))
