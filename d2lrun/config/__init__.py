"""The config: the one schema (d2lrun.config.schema) composed by Hydra and checked once; what an
error means to the user is d2lrun.config.messages'.

    cfg = checked(compose(["model=mlp", "optim.lr=0.1"]))   # as `d2lrun model=mlp optim.lr=0.1`
"""

import contextlib
import dataclasses
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

# Hydra is imported already (config.schema's ConfigStore): its modules cost nothing more here.
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from d2lrun.config.messages import bad_value, unknown_option
from d2lrun.config.schema import (
    CONFIG_DIR,
    EXPERIMENTS_DIR,
    GROUPS,
    KINDS,
    SCHEMAS,
    Config,
    Eval,
    Predict,
    broken_rule,
    check_pair,
    closest,
    example,
    options_of,
    preset_keys,
    register,
    yaml_value,
)
from d2lrun.errors import UsageError, note
from d2lrun.files import double_quoted, override

PATH_KEYS = ("path", "root")  # dataset keys holding a path the user typed
# Where a job's data is, where it runs and how it shows: a sweep run again to finish it may give
# them anew, as resume= may (its completed jobs are kept). dataset.root: the Kaggle files' Fix.
ANEW = ("device", "trainer.progress", "dataset.root")


def compose(
    overrides: Sequence[str] = (), name: str = "config", with_hydra: bool = False
) -> DictConfig:
    """The config of `d2lrun OVERRIDES...` via Hydra's Compose API; with_hydra: Hydra's keys too."""
    check_groups(overrides, name)
    if GlobalHydra.instance().is_initialized():  # e.g. d2lrun-eval's @hydra.main: the same configs
        if paths := searchpath():  # --config-dir's, over a saved run's (reload.run_overrides)
            overrides = merge_overrides(overrides, [searchpath_override(paths)])
        return hydra_compose(name, overrides, return_hydra_config=with_hydra)
    register()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(name, list(overrides), return_hydra_config=with_hydra)


def searchpath() -> list[str]:
    """The folders -cd added to this Hydra run (d2lrun.cli.searched); none outside one."""
    return list(HydraConfig.get().searchpath) if HydraConfig.initialized() else []


def searchpath_override(paths: Sequence[str]) -> str:
    return f"hydra.searchpath=[{','.join(paths)}]"


def typed_override(key: str, value) -> str:
    """key=value as Hydra reads it back, typed as it was: a string quoted (files.override), any
    other value as JSON (16, [16], null, true)."""
    if isinstance(value, str):
        return override(key, value)
    return f"{key}={json.dumps(value, ensure_ascii=False)}"


def checked(cfg: DictConfig, overrides: Sequence[str] = (), notes: bool = True) -> DictConfig:
    """A checked copy of cfg (ranges, rules between keys, a preset's step), its paths absolute;
    notes=False: a check ahead of the one that says them."""
    check_preset(cfg, overrides)
    if cfg.model.name == "lenet" and cfg.dataset.name not in ("fashion_mnist", "kernel"):
        raise UsageError(
            f"model=lenet needs images, and dataset={cfg.dataset.name} is a table. "
            f"Fix: dataset=fashion_mnist, or model=mlp for dataset={cfg.dataset.name}."
        )
    if kind := KINDS.get(cfg.dataset.name):
        check_pair(cfg.model.name, cfg.dataset.name, kind)
    if missing := sorted(OmegaConf.missing_keys(cfg)):
        k, group = missing[0], missing[0].split(".")[0]
        which = f" for {group}={cfg[group].name}" if group in SCHEMAS else ""
        raise UsageError(f"{k} is required{which}. Fix: {k}={example(cfg, k)}.")
    for path in ["", "trainer", *SCHEMAS]:
        check_ranges(cfg, path)
    check_rules(cfg)
    if notes and cfg.regularizer.name == "l2" and given(overrides, "regularizer.lambd") is not None:
        # §4.5's lambd is L2's λ: regularizer.lambd=0 over ch4_weight_decay still decays
        note(f"regularizer.lambd is the L1 term's strength; L2's λ (§4.5's lambd) is "
             f"optim.weight_decay, now {cfg.optim.weight_decay}")  # fmt: skip
    folds = cfg.dataset.get("folds")  # a key typed that the run does not use
    unused = "dataset.val_fraction" if folds else "dataset.shuffle_folds"
    if notes and given(overrides, unused) is not None:
        why = f"each fold holds out 1/{folds} of the rows" if folds else "it orders k folds' rows"
        note(f"{unused} is not used with dataset.folds={yaml_value(folds)}: {why}")
    cfg = cfg.copy()
    for k in PATH_KEYS:  # a run folder must work from any folder: store what the user meant
        if isinstance(cfg.dataset.get(k), str):
            cfg.dataset[k] = str(Path(cfg.dataset[k]).expanduser().absolute())
    uri = cfg.logger.get("tracking_uri")  # the same MLflow store from anywhere
    relative = isinstance(uri, str) and uri.startswith("sqlite:///") and uri[10:11] != "/"
    if relative and not uri.endswith(":memory:"):  # which d2lrun.tracking refuses, as typed
        cfg.logger.tracking_uri = "sqlite:///" + str(Path(uri[10:]).expanduser().absolute())
    return cfg


def check_ranges(cfg: DictConfig, path: str) -> None:
    node, prefix = OmegaConf.select(cfg, path), f"{path}." if path else ""
    schema = OmegaConf.get_type(node)
    if schema is dict and (typed := SCHEMAS.get(path, {}).get(node.get("name"))):  # -cd's own
        schema, name = typed, node.name  # option, without its schema: checked as by it
        if lacks := [f.name for f in dataclasses.fields(typed) if f.name not in node]:
            raise UsageError(f"your {path} option (name: {name}) lacks {', '.join(lacks)}. Fix: "
                             f"start its file with `defaults: [{name}, _self_]` ({name}'s values "
                             f"under its own), or set them.")  # fmt: skip
    fields = dataclasses.fields(schema) if dataclasses.is_dataclass(schema) else ()
    names = {f.name for f in fields} | {"hydra"}
    if extra := [k for k in node if k not in names] if fields else []:  # +key=
        raise UsageError(bad_value(prefix + extra[0], None, schema, node.get("name")))
    for f in fields:
        m, value, name = f.metadata, node[f.name], prefix + f.name
        if not m or value is None:
            continue
        if m["words"] and value not in m["words"]:
            raise UsageError(
                f"{name}={value} is not one of {', '.join(m['words'])}. "
                f"Fix: {name}={closest(str(value), m['words'], m['words'][0])}."
            )
        ranged = any(m[k] is not None for k in ("ge", "gt", "lt"))
        for v in value if OmegaConf.is_list(value) else [value]:
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            rule = broken_rule(m, v) if number else None
            if rule or ranged and not number:  # no range: any value of its type but nan and inf
                what = f"out of range: it must be {rule}" if rule else "not a number"
                raise refused(cfg, name, f"is {what}")


def check_rules(cfg: DictConfig) -> None:
    """The rules that tie one key to another."""
    model, data = cfg.model, cfg.dataset
    if model.name == "lenet" and model.batch_norm and model.variant == "classic":
        raise UsageError(
            "model.batch_norm=true belongs to the modern LeNet (§7.5). Fix: model.variant=modern."
        )
    if "dropout" in model and OmegaConf.is_list(model.dropout):
        layers = len(hidden_sizes(model)) if model.name == "mlp" else 2
        if len(model.dropout) not in (1, layers):
            more = f", or {layers} rates" if layers > 1 else ""
            raise UsageError(
                f"model.dropout={yaml_value(model.dropout)} gives {len(model.dropout)} rates and "
                f"model={model.name} has {layers} hidden layer(s). "
                f"Fix: model.dropout={yaml_value(model.dropout[0] if model.dropout else 0.0)} "
                f"(one rate for all){more}."
            )
    if model.name == "mlp" and not all(type(h) is int for h in hidden_sizes(model) or [None]):
        raise refused(
            cfg, "model.num_hiddens", "is not a width or a list of widths (whole numbers)"
        )
    if model.get("dropout", 0) is None:  # Any-typed, as one rate or a list
        raise UsageError("model.dropout=null is not a rate. Fix: model.dropout=0 for none.")
    if model.name == "conv2d" and len(model.kernel_size) != 2:
        raise refused(cfg, "model.kernel_size", "is not (height, width)")
    kernel = list(data.get("kernel") or [])  # one row across §6.2.3's 6x8 image
    if data.name == "kernel" and not (0 < len(kernel) <= 8 and all(isinstance(v, (int, float))
                                                                 for v in kernel)):  # fmt: skip
        raise UsageError(
            f"dataset.kernel={yaml_value(data.kernel)} is not a row of 1 to 8 numbers across "
            f"§6.2.3's 6x8 image. Fix: dataset.kernel=[1,-1], its edge detector."
        )
    if cfg.optim.name == "adam" and len(betas := cfg.optim.betas) != 2:  # β1 mean, β2 square
        raise refused(cfg, "optim.betas", f"gives {len(betas)} value(s); Adam takes two (β1, β2)")
    if data.name == "synthetic":  # dataset.w: a list, or one number for num_inputs
        listed = OmegaConf.is_list(data.w)
        w = list(data.w) if listed else [data.w]
        if not w or not all(type(v) in (int, float) for v in w):
            raise refused(cfg, "dataset.w", "is not a number or a list of numbers")
        if listed and data.num_inputs not in (None, len(w)):
            raise UsageError(
                f"dataset.num_inputs={data.num_inputs} but dataset.w has {len(w)} "
                f"values. Fix: dataset.num_inputs=null, or one number as dataset.w."
            )
        if not listed and data.num_inputs is None:
            raise UsageError(
                f"dataset.w={data.w} is one number, so dataset.num_inputs must say "
                f"how many inputs. Fix: dataset.num_inputs=200."
            )


def refused(cfg: DictConfig, key: str, why: str) -> UsageError:
    """The line for key's value and why it is refused, with a working value as the Fix."""
    value = yaml_value(OmegaConf.select(cfg, key))
    return UsageError(f"{key}={value} {why}. Fix: {key}={example(cfg, key)}.")


def hydra_args(args: Sequence[str], said: io.StringIO | None = None, strict: bool = False):
    """args as Hydra's argument parser reads them (.overrides, .help, .cfg); None: it says why
    (into said). strict: an unknown flag or an override among the flags is refused too."""
    err = contextlib.redirect_stderr(said or io.StringIO())
    with contextlib.redirect_stdout(io.StringIO()), err, contextlib.suppress(SystemExit):
        if strict:
            return get_args_parser().parse_args(list(args))
        return get_args_parser().parse_known_intermixed_args(list(args))[0]  # a=1 -c job b=2


def overrides_of(args: Sequence[str]) -> list[str]:
    """The overrides among a command line's arguments: not its flags or their values (--cfg job)."""
    found = hydra_args(args)
    return found.overrides if found else [a for a in args if not a.startswith("-")]


def check_preset(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """A preset's optim.lr is its optimizer's: another optimizer without optim.lr is refused; so
    are regularizer=none, which cannot undo the regularization a preset sets itself, and another
    regularizer= or init= whose keys the preset sets (its own would win, unsaid)."""
    preset, chosen = given(overrides, "experiment"), cfg.optim.name
    if not (preset and (EXPERIMENTS_DIR / f"{preset}.yaml").is_file()):
        return
    (text, picks), none = preset_keys(preset), given(overrides, "regularizer") == "none"
    for key in ("model.dropout", "optim.weight_decay", "regularizer.lambd"):
        value = OmegaConf.select(text, key)  # [0.2, 0.5], 3: on, and not from the group's file
        if none and value and given(overrides, key) is None:
            raise UsageError(
                f"experiment={preset} sets {key}={yaml_value(value)} itself, which "
                f"regularizer=none does not undo. Fix: {key}=0 as well."
            )
    for group in ("regularizer", "init"):  # an option typed whose keys the preset sets too
        if (option := given(overrides, group)) in (None, picks.get(group), "none"):
            continue
        path, unset = Path(CONFIG_DIR, group, f"{option}.yaml"), object()
        body = path.read_text() if path.is_file() else ""  # its own keys, or the group's
        keys = OmegaConf.create(body)
        keys = keys if "@package _global_" in body else {group: keys}
        keys = {f"{s}.{k}": v for s, own in keys.items() if s != "defaults" for k, v in own.items()}
        untyped = [k for k in keys if not k.endswith(".name") and given(overrides, k) is None]
        wins = [(k, keys[k], w) for k in untyped if (w := OmegaConf.select(text, k, default=unset))
                not in (unset, keys[k])]  # fmt: skip
        if wins:  # all of them in the one Fix
            (k, v, was), fix = wins[0], " ".join(f"{k}={yaml_value(v)}" for k, v, _ in wins)
            raise UsageError(f"experiment={preset} sets {k}={yaml_value(was)}, over {group}="
                             f"{option}'s {yaml_value(v)}. Fix: {fix} as well.")  # fmt: skip
    own, lr = picks.get("optim", "sgd"), OmegaConf.select(text, "optim.lr")
    if lr is None or chosen == own or given(overrides, "optim.lr") is not None:
        return
    # The usual step: the preset's for that optimizer (a comment: `optim=sgd: e.g. optim.lr=0.1`),
    # else the optimizer's own (adam.yaml), else the model file's (the book's SGD step)
    comments = (EXPERIMENTS_DIR / f"{preset}.yaml").read_text()  # text: its keys, as parsed
    said = re.search(rf"optim={chosen}: e\.g\. optim\.lr=(\S+)", comments)
    raise UsageError(
        f"experiment={preset} sets optim.lr={lr} for optim={own}, and optim={chosen} takes "
        f"another step size. Fix: optim.lr={said[1] if said else example(cfg, 'optim.lr')} "
        f"(optim={chosen}'s usual{' here' if said else ''}), or leave optim as the preset's."
    )


def given(args: Sequence[str], key: str) -> str | None:
    """The value the last override of key in args gives it (None: none does), as Hydra reads it."""
    parsed = OverridesParser.create().parse_overrides(overrides_of(args))
    value = next((o.value() for o in reversed(parsed) if o.key_or_group == key), None)
    return None if value is None else str(value)


TIMESTAMP = "${now:"  # a folder named by the time it starts: TIME, then TIME_2 in the same second


def claimed_dir(hydra: DictConfig) -> str | None:
    """hydra.run.dir as typed ("" for the default) when the run claims its folder as it starts
    (app.RunDir: the default one, or one named by ${now:...}); None for a folder named otherwise."""
    named = given(OmegaConf.to_container(hydra.overrides.hydra, resolve=False), "hydra.run.dir")
    return None if named is not None and TIMESTAMP not in named else named or ""


def hidden_sizes(model: DictConfig) -> list[int]:
    """model.num_hiddens as a list: one width per hidden layer."""
    h = model.num_hiddens
    return list(h) if OmegaConf.is_list(h) else [h]


def check_device(name: str) -> None:
    """device= as a name d2lrun knows, without torch (resolve_device: one this machine has)."""

    def known(name: str) -> bool:
        return name in ("auto", "cpu", "mps") or name.partition(":")[0] == "cuda"

    if not known(name):
        near = {"gpu": "cuda"}.get(name.lower(), name.lower())  # CPU: cpu, GPU: cuda
        raise UsageError(f"Unknown device '{name}'. Choose one of: auto, cpu, cuda, cuda:N, mps. "
                         f"Fix: device={near if known(near) else 'auto'}.")  # fmt: skip


def resolve_device(name: str):
    """`device=auto|cpu|cuda|cuda:N|mps` as a torch.device that exists on this machine."""
    check_device(name)
    import torch

    has_cuda = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda" if has_cuda else "cpu")
    have = ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count() if has_cuda else 0))]
    have += ["mps"] * torch.backends.mps.is_available()
    if name in have or (name == "cuda" and has_cuda):
        return torch.device(name)
    raise UsageError(
        f"device={name} does not exist on this machine; available: {', '.join(have)}. "
        f"Fix: device=auto or device=cpu."
    )


def check_groups(args: Sequence[str], name: str = "config") -> None:
    """GROUP=null (Hydra: a ValueError) or ~GROUP as one line naming the options; and, for
    d2lrun-eval or -predict (name), a group of d2lrun's (Hydra: a traceback, or advice to add +)."""
    own = [f.name for f in dataclasses.fields(Predict if name == "predict" else Eval)]
    d2lruns = [*GROUPS, *(f.name for f in dataclasses.fields(Config))]
    if {"-sc", "--shell-completion"} & set(args):  # its words (install=bash) are Hydra's, not keys
        return
    for o in OverridesParser.create().parse_overrides(overrides_of(args)):
        value, group = o.value(), o.key_or_group
        section, _, key = group.partition(".")
        if key == "name" and section in SCHEMAS and name == "config":  # dataset.name=csv
            chosen = value if value in SCHEMAS[section] else f"<{'|'.join(SCHEMAS[section])}>"
            raise UsageError(
                f"{group} is the name of the chosen {section} option; it picks none. "
                f"Fix: {section}={chosen}."
            )
        if o.is_sweep_override() and (name != "config" or group == "resume"):  # eval run=a,b
            prog, what = ("d2lrun", "resume= goes on with one run") if name == "config" else (
                f"d2lrun-{name}", f"d2lrun-{name} takes one per key")  # fmt: skip
            raise UsageError(
                f"{o.input_line} gives several values, and {what}. Fix: run {prog} once per value."
            )
        if name != "config" and (group in GROUPS or section in d2lruns and section not in own):
            what = "picks an option" if group in GROUPS else "sets a key"
            raise UsageError(
                f"{o.input_line} {what} of d2lrun's, and d2lrun-{name} reloads the run "
                f"with the ones it trained with. Fix: drop {o.input_line} (d2lrun-{name} --help "
                f"lists its keys)."
            )
        odd = [v for v in getattr(value, "list", [value]) if isinstance(v, (int, float, bool))]
        if group in GROUPS and odd:  # optim=5, model=true: Hydra's ValueError
            raise unknown_option(group, yaml_value(odd[0]), SCHEMAS.get(group) or options_of(group))
        if group in GROUPS and isinstance(value, list):  # model=[mlp,lenet]: Hydra merges them
            one = value[0] if value else next(iter(SCHEMAS.get(group, [])), "NAME")
            each = f", or d2lrun -m {group}={','.join(map(str, value))} for a run each"
            raise UsageError(f"{o.input_line} gives {len(value)} options, and a run takes one. "
                             f"Fix: {group}={one}{each * (len(value) > 1)}.")  # fmt: skip
        if name != "config" and section not in (*own, *d2lruns, "hydra"):  # +foo=1: Hydra adds it
            raise UsageError(f"{section} is not a key of the config (its keys: {', '.join(own)}). "
                             f"Fix: drop {o.input_line}.")  # fmt: skip
        if not o.is_delete() and None not in getattr(value, "list", [value]):  # a,b,null too
            continue
        if group == "experiment" and not o.is_delete():  # ~experiment: no preset, the default
            raise UsageError("experiment=null names no preset. Fix: leave experiment= out.")
        if group in SCHEMAS:  # ~model or model=null: a run needs one
            options = list(SCHEMAS[group])  # the first is config.yaml's default
            said = o.input_line if o.is_delete() else f"{group}=null"
            raise UsageError(
                f"{said} picks none of {group}'s options ({', '.join(options)}). "
                f"Fix: {group}={options[0]}."
            )


def merge_overrides(base: Sequence[str], new: Sequence[str]) -> list[str]:
    """base less what new sets again, then new's; new's flags (-m, --cfg job) first, as Hydra reads
    the overrides only as one run of arguments."""
    parse, overrides = OverridesParser.create().parse_overrides, overrides_of(new)
    again = {o.key_or_group: o for o in parse(overrides)}
    old = parse(list(base))
    # new picks another option of a group (logger=none for logger=mlflow): base's keys of it go
    switched = [
        f"{o.key_or_group.replace('/', '.')}."
        for o in old
        if "." not in o.key_or_group and o.key_or_group in again
        and o.get_value_element_as_str() != again[o.key_or_group].get_value_element_as_str()
    ]  # fmt: skip
    kept = [o.input_line for o in old if o.key_or_group not in again]
    kept = [o for o in kept if not o.lstrip("+~").startswith(tuple(switched))]
    return [a for a in new if a not in overrides] + kept + overrides


def new_overrides(base: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """overrides' that base does not set to the same value (dataset.root=/a is 'dataset.root=/a'),
    as a shell takes them back."""
    parse = OverridesParser.create().parse_overrides
    was = {o.key_or_group: o.value() for o in parse(list(base))}
    new = [o.input_line for o in parse(list(overrides))
           if o.key_or_group not in was or was[o.key_or_group] != o.value()]  # fmt: skip
    return [a if re.fullmatch(r"[\w.=/:+@,\-]*", a) else double_quoted(a) for a in new]  # ~a: ~user
