"""A saved run composed again: its checkpoint, evaluated, asked for predictions, or resumed.

A checkpoint is a plain dict of tensors and containers, loaded weights_only:
    model      the state_dict                  optimizer  its state_dict (torch.optim's layout)
    epoch      last completed epoch            history    metrics rows so far
    best       {"epoch", "metric", "value"}    rng        torch, cuda and shuffling generator states
    config     the run's config, resolved      overrides  its command line, as typed
    spec       what the data decided (a Spec)  searchpath  -cd DIR's folders, its own options'
    mlflow_run_id  logger=mlflow's run (None otherwise), which `d2lrun resume=` continues
    restarts   times resumed or requeued       wall_seconds  training time so far, all attempts
`model.pt` is only the final state_dict, loadable into the book's own nn.Sequential.
Resume, eval and predict compose a saved run alike: run_overrides, then check_same_meaning.
"""

import contextlib
import gzip
import json
import os
import pickle
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from torch import nn

from d2lrun.config import (
    ANEW,
    PATH_KEYS,
    checked,
    compose,
    given,
    merge_overrides,
    overrides_of,
    resolve_device,
    searchpath,
    searchpath_override,
    typed_override,
)
from d2lrun.config.messages import first_difference
from d2lrun.data import (
    Spec,
    as_inputs,
    build_data,
    predictions_table,
    read_inputs,
    sha1_of,
    table_file,
)
from d2lrun.errors import UsageError, note
from d2lrun.files import (
    atomic_write,
    existing,
    override,
    read_json,
    remove_stale_temporaries,
    saved_checkpoint,
    shown,
)
from d2lrun.models import build_model, load_state_dict_strict, loss_kind
from d2lrun.plots import curves_figure
from d2lrun.trainer import evaluate, loss_for, own_torch

FORMAT = "d2lrun-checkpoint"
RETRAIN = "Fix: use another checkpoint of the run (last.pt, best.pt) or train again."
MEANING = ("model", "dataset", "seed")  # what a reloaded run must keep
LOCATION_KEYS = (*PATH_KEYS, "download")  # the dataset keys that say where data is, not what it is


def load_checkpoint(path: str | Path, needs: str | None = None) -> dict:
    """A checkpoint loaded without running pickled code; with `needs`, never a bare state_dict."""
    path = existing(path)
    if path.is_dir():
        raise UsageError(f"{path} is a directory. Fix: give a .pt file in it, or the folder as the "
                         f"run (run={path}; load_run('{path}') in Python).")  # fmt: skip
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged zip or pickle stream
        # torch names a refused function as "GLOBAL module.name" ("Trying to load unsupported
        # GLOBAL posix.system ..." or "Unsupported global: GLOBAL x.y was not an allowed ...").
        culprit = re.search(r"GLOBAL (\S+)", str(e))
        if isinstance(e, pickle.UnpicklingError) and culprit:
            raise UsageError(
                f"{path} was refused: it would run code when loaded, which a checkpoint "
                f"never needs ({culprit[1]}). Fix: only load checkpoints that d2lrun wrote."
            ) from None
        first = textwrap.shorten((str(e).splitlines() or [""])[0], 120, placeholder=" ...")
        what = f"{type(e).__name__}{': ' + first if first else ''}"
        what = "unpickling failed" if isinstance(e, pickle.UnpicklingError) else what
        raise UsageError(f"{path} is truncated or not a checkpoint ({what}). {RETRAIN}") from None
    if not isinstance(obj, dict):
        what = f"{path} holds a {type(obj).__name__}, not a checkpoint dict"
        raise UsageError(f"{what}. Fix: give a .pt file d2lrun wrote.")
    if needs and obj.get("format") != FORMAT:  # a bare state_dict (model.pt) has no config
        run = path.parent  # named only when it has one: the Fix never leads back here
        has = (run / "last.pt").exists() or (run / "best.pt").exists()
        raise UsageError(
            f"{path} is a bare state_dict without its config; {needs} needs last.pt or best.pt. "
            f"Fix: give {f'the run folder {shown(run)}' if has else 'a run folder d2lrun wrote'}"
            f" (its last.pt)."
        )
    return obj


def find_checkpoint(run: str | Path) -> Path:
    """The checkpoint file for `run`, which is a run folder (its last.pt) or a .pt file."""
    run = existing(run, run=True)
    if not run.is_dir():
        return run
    if saved := saved_checkpoint(run):
        return saved
    ended = {} if saved_checkpoint(run / "fold_0") else read_json(run / "metrics.json") or {}
    if (end := ended.get("status")) in ("diverged", "failed"):  # in epoch 1 (or a k-fold run's)
        why, _, fix = (ended.get("reason") or "").rstrip(".").partition(" Fix: ")
        raise UsageError(f"{run} has no last.pt: it {end} in its first epoch ({why.rstrip('.')}). "
                         f"Fix: {fix or 'mend that'}, and train it anew.")  # fmt: skip
    if (run / "multirun.yaml").exists():
        raise UsageError(
            f"{run} is a sweep's folder: each job is a run of its own, in 0/, 1/, ... "
            f"Fix: give one job, e.g. {run / '0'}."
        )
    if (run / "fold_0").is_dir():
        raise UsageError(
            f"{run} is a k-fold run: each fold is a run of its own, in fold_0/, fold_1/, ... "
            f"Fix: give one fold, e.g. {run / 'fold_0'}."
        )
    have = sorted(p.name for p in run.glob("*.pt"))
    one = ""  # the first of them d2lrun wrote (never model.pt), for resume=, run=, ckpt=
    for name in have:
        with contextlib.suppress(UsageError):
            load_checkpoint(run / name, needs="it")
            one = f", or one of its .pt files ({run / name})"
            break
    below = [*run.glob("*/last.pt"), *run.glob("*/*/last.pt")]  # outputs/: not a whole disk's
    runs = sorted(below, key=os.path.getmtime)  # a folder of runs, outputs/DATE/TIME/last.pt
    one = one or (f", such as the latest below it, {runs[-1].parent}" if runs else "")
    raise UsageError(
        f"{run} has no last.pt (it has: {', '.join(have) or 'no .pt files'}). "
        f"Fix: give a run folder that finished an epoch{one}."
    )


def resume_checkpoint(resume: str | Path) -> dict:
    """The checkpoint that `resume=` names, read once: a folder's last.pt, or its best.pt when that
    holds a later epoch (killed between the two, or before trainer.checkpoint_every's last.pt)."""
    source = find_checkpoint(resume)
    remove_stale_temporaries(source.parent)  # of a run killed inside a write (kill -9, power loss)
    ckpt = load_checkpoint(source, needs="resuming")
    best = Path(resume).is_dir() and source.name != "best.pt" and readable_best(source.parent)
    return best if best and best["epoch"] > ckpt["epoch"] else ckpt


def readable_best(folder: Path) -> dict | None:
    """folder's best.pt; None when it has none, or a damaged one (a note: last.pt goes on)."""
    if not (folder / "best.pt").exists():
        return None
    try:
        return load_checkpoint(folder / "best.pt", needs="resuming")
    except UsageError as e:
        note(f"{str(e).partition(' Fix:')[0]} Not used.")
        return None


def run_overrides(ckpt: dict, new: Sequence[str] = (), what: str = "the run") -> list[str]:
    """A saved run's command line: its overrides, where its data and MLflow store are, then new."""
    saved = ckpt["config"]
    for o in OverridesParser.create().parse_overrides(overrides_of(new)):
        section, _, key = o.key_or_group.partition(".")  # Hydra's own line would advise another
        # Refused before a new option fails to compose with the run's dataset.* keys; every
        # value of a sweep too (a glob's are left to its jobs); a preset's model and dataset
        names = [] if "GLOB" in str(o.value_type) or o.is_delete() else [o.value()]  # ~model
        names = o.sweep_string_iterator() if names and o.is_sweep_override() else names
        asks = [(section, n) for n in names] if section in ("model", "dataset") and not key else []
        if section == "experiment":
            picked = [compose([f"experiment={n}"]) for n in names]
            asks = [(s, c[s].name) for c in picked for s in ("model", "dataset")]
        for group, asked in asks:
            if asked != (was := saved[group]["name"]):
                raise UsageError(
                    f"{what} cannot change {group}.name (the run has {group}.name={was}, "
                    f"asked {group}.name={asked}). Fix: drop {o.input_line}, or start a new run."
                )
        if section in ("model", "dataset") and key and key.split(".")[0] not in saved[section]:
            raise UsageError(  # model or dataset, which a reloaded run keeps
                f"{section}.{key} is not a key of the run's {section}={saved[section]['name']} "
                f"(its keys: {', '.join(saved[section])}). Fix: drop {o.key_or_group}."
            )
    where = {f"dataset.{k}": saved["dataset"].get(k) for k in PATH_KEYS}
    where["logger.tracking_uri"] = saved["logger"].get("tracking_uri")
    quoted = [override(k, v) for k, v in where.items() if isinstance(v, str)]
    # A ${...} it was given (seed=${hydra:job.num}), as it resolved for the run: outside the run's
    # Hydra job it would resolve to something else, or to nothing.
    config, unset = OmegaConf.create(saved), object()
    for o in OverridesParser.create().parse_overrides(ckpt["overrides"]):
        value = OmegaConf.select(config, o.key_or_group, default=unset)
        if "${" in str(o.value()) and value is not unset and not OmegaConf.is_dict(value):
            value = OmegaConf.to_container(value) if OmegaConf.is_list(value) else value
            quoted.append(typed_override(o.key_or_group, value))
    if (paths := ckpt.get("searchpath")) and not (searchpath() or given(new, "hydra.searchpath")):
        if gone := [p for p in paths if p.startswith("file://") and not Path(p[7:]).is_dir()]:
            raise UsageError(f"{what} was trained with -cd {shown(gone[0][7:])}, now no folder. "
                             f"Fix: -cd DIR, the folder of its own options now.")  # fmt: skip
        quoted.append(searchpath_override(paths))  # -cd DIR's, unless the command gives -cd
    return merge_overrides(merge_overrides(ckpt["overrides"], quoted), new)


def check_same_meaning(saved: dict, cfg: DictConfig, what: str, keys=MEANING, overrides=()):
    """Refuse, in one line, a change to what the weights mean; where the data is may change.
    overrides: the command's, which the Fix names (experiment=X for the model=Y X sets)."""
    now = OmegaConf.to_container(cfg, resolve=True)
    for key in keys:
        a, b = saved, now
        for part in key.split("."):  # optim.name: the optim section's name
            a, b = (a or {}).get(part), (b or {}).get(part)
        if key == "dataset":
            a, b = ({k: v for k, v in d.items() if k not in LOCATION_KEYS} for d in (a, b))
        if diff := first_difference(a, b, key):
            k, was, asked = diff
            # Not "drop k=...": a group's file may set k (regularizer=dropout sets model.dropout)
            fix = f"drop {k[:-5]}={asked}" if k.endswith(".name") else f"{k}={was} (the run's)"
            preset = given(overrides, "experiment") if given(overrides, k[:-5]) is None else None
            fix = f"drop experiment={preset}" if preset and k.endswith(".name") else fix  # chose it
            raise UsageError(f"{what} cannot change {k} (the run has {k}={was}, asked {k}="
                             f"{asked}). Fix: {fix}, or start a new run.")  # fmt: skip


def continued(cfg: DictConfig, run_dir: Path, moved: bool = False) -> dict | None:
    """The checkpoint of a sweep job's (or fold's) earlier try, as resume=run_dir reads it, if it
    has one and cfg wrote it; sets cfg.resume. moved: `resume=` of a k-fold run (see changed)."""
    if not saved_checkpoint(run_dir):
        return None
    saved = resume_checkpoint(run_dir)
    if diff := changed(saved, cfg, moved):  # moved: a fold of resume=RUN, which no sweep has
        again = " to train it anew" if moved else ", or another hydra.sweep.dir"
        raise UsageError(f"{shown(run_dir)} holds a checkpoint of another config ({diff[0]}="
                         f"{diff[1]} there, {diff[2]} now). Fix: delete it{again}.")  # fmt: skip
    cfg.resume = str(run_dir)
    return saved


def changed(saved: dict, cfg: DictConfig, moved: bool = False) -> tuple[str, str, str] | None:
    """The first key whose value cfg changes from the checkpoint's: key, was, now; but resume= and
    ANEW. moved (resume=): also not the logger, what else trainer.* shows or where the data is; a
    sweep's job run again keeps those (the same dataset.path typed elsewhere is another file)."""
    now = OmegaConf.to_container(checked(cfg), resolve=True)
    here = {"resume", *ANEW}
    if moved:  # trainer.*: what it shows (a bar, last.pt), not its numbers
        here |= {"logger", "trainer.progress", "trainer.checkpoint_every"}
        here |= {f"dataset.{k}" for k in LOCATION_KEYS}

    def kept(c: dict) -> dict:  # its keys but those in here (two deep: trainer.progress)
        return {k: {a: b for a, b in v.items() if f"{k}.{a}" not in here}
                if isinstance(v, dict) else v for k, v in c.items() if k not in here}  # fmt: skip

    diff = first_difference(kept(saved["config"]), kept(now), "config")
    return (diff[0][7:], diff[1], diff[2]) if diff else None


@dataclass
class SavedRun:
    """A reloaded run: its model (eval mode, on `device`), config, spec and run folder's files."""

    model: nn.Module
    config: DictConfig
    spec: Spec
    checkpoint: Path
    device: torch.device
    history: list[dict]  # the checkpoint's metrics rows

    def __post_init__(self) -> None:  # its files are found after an os.chdir (%cd) too
        self.files = self.checkpoint.parent.absolute()

    @property
    def run_dir(self) -> Path:
        """Its folder (metrics.csv, ...) as named; absolute once an os.chdir made the name wrong."""
        named = self.checkpoint.parent
        return named if named.absolute() == self.files else self.files

    @property
    def metrics(self):
        """A DataFrame of its rows per epoch: metrics.csv's (or a killed run's checkpoint's)."""
        import pandas as pd

        if self.history and not (self.files / "metrics.csv").exists():
            return pd.DataFrame(self.history)
        return pd.read_csv(self.file("metrics.csv"))

    @property
    def summary(self) -> dict:
        """metrics.json: status, final and best metrics, wall time, device."""
        return json.loads(self.file("metrics.json").read_text())

    def plot(self):
        """The loss (and accuracy) curves as a matplotlib Figure, as curves.png draws them."""
        title = f"{self.config.model.name} on {self.spec.dataset}"
        return curves_figure(self.metrics.to_dict("records"), title)

    def file(self, name: str) -> Path:
        if not (self.files / name).exists():
            said = f"{self.run_dir} has no {name}"
            if name == "metrics.json" and self.history:
                raise UsageError(
                    f"{said}: the run has not ended (it runs, or was killed). "
                    f"Fix: d2lrun.train('resume={self.run_dir}') to finish it, or run.metrics."
                )
            raise UsageError(f"{said}. Fix: load_run the run folder that d2lrun wrote.")
        return self.files / name

    def predict(self, inputs, source: str = "the input") -> list:
        """Class names or floats for raw inputs, CSV rows (a DataFrame) or uint8 images, named
        source in errors, or a file of them read as d2lrun-predict reads it (its missing-value
        markers, a run's categories as written: 01 stays 01, where pd.read_csv makes it 1)."""
        if isinstance(inputs, (str, os.PathLike)):
            inputs, source = read_inputs(self.spec, Path(inputs)), f"input={inputs}"
        with torch.no_grad():
            out = self.model(self.prepare(inputs, source))
        if self.spec.task == "classification":
            return [self.spec.class_names[i] for i in out.argmax(dim=1).tolist()]
        scale = self.spec.target_scale  # predictions in the target's own units
        out = out * scale["std"] + scale["mean"] if scale else out
        return out.flatten(1).squeeze(1).tolist()  # no rows: [], not a reshape of 0 elements

    def prepare(self, inputs, source: str = "the input") -> torch.Tensor:
        """Raw inputs -> the tensor the model was trained on, with the run's stored statistics."""
        if self.spec.preprocess:  # a table: the statistics fitted when it trained
            import pandas as pd

            from d2lrun.data.csv import transform

            if not isinstance(inputs, pd.DataFrame):
                raise UsageError(
                    f"this run was trained on a CSV table; predict takes a pandas "
                    f"DataFrame, not {type(inputs).__name__}. Fix: pd.read_csv(FILE)."
                )
            X = transform(inputs, self.spec.preprocess, source, say_new=True)
            return torch.from_numpy(X).to(self.device)
        return as_inputs(inputs, self.spec, source, self.device)


def load_run(
    path: str | Path | None = None,
    ckpt: str | Path | None = None,
    device: str = "cpu",
    overrides: Sequence[str] = (),
) -> SavedRun:
    """Rebuild a run's model from its folder or one checkpoint; overrides: where its data is now."""
    if not (path or ckpt):
        raise UsageError("load_run needs a run folder. Fix: load_run('outputs/DATE/TIME').")
    if path and ckpt and Path(ckpt).resolve().parent != Path(path).resolve():  # which one?
        raise UsageError(f"run={path} and ckpt={ckpt} name two runs. Fix: give one of them.")
    source = Path(ckpt) if ckpt else find_checkpoint(path)
    saved = load_checkpoint(source, needs="reloading")
    model = saved["config"]["model"].items()  # as it trained, also if its (-cd) file changed
    kept = [typed_override(f"model.{k}", v) for k, v in model if k != "name"]
    cfg = compose(run_overrides(saved, [*kept, *overrides], str(source)))
    check_same_meaning(saved["config"], cfg, str(source))
    cfg, dev, spec = checked(cfg), resolve_device(device), Spec(**saved["spec"])
    with own_torch(cuda=False):  # float32 weights, not the caller's dtype; the caller's CPU random
        # state (building it draws from it; the GPUs' it leaves alone)
        model = build_model(cfg.model, spec)
    load_state_dict_strict(model, saved["model"], str(source))
    return SavedRun(model.to(dev).eval(), cfg, spec, source, dev, saved["history"])


def evaluate_run(run: SavedRun) -> dict:
    """The reloaded model's metrics on its run's held-out rows (val_*), else its training rows;
    on every row (test_*) of a table's file other than the one the run trained on."""
    cfg, data, fold, name = run.config, run.config.dataset, run.spec.fold, "train"
    if run.spec.sha1 and run.spec.sha1 != sha1_of(table_file(data)):  # not split as the run's was
        data, fold, name = OmegaConf.merge(data, {"val_fraction": 0}), None, "test"
    train, val, spec = build_data(data, cfg.seed, run.device, fold, run.spec)
    split, name = (val, "val") if len(val) else (train, name)
    loss = loss_for(spec.task, loss_kind(cfg.model))
    metrics = evaluate(run.model, loss, split, cfg.trainer.log_rmse)
    return {f"{name}_{k}": v for k, v in metrics.items()}


def predict_file(run: SavedRun, path: Path, out: Path) -> int:
    """Predict every input in `path` and write them, one row each, to the CSV file `out`."""
    inputs = read_inputs(run.spec, path)
    frame = predictions_table(run.spec, inputs, run.predict(inputs, f"input={path}"), path)
    data = frame.to_csv(index=False).encode()
    atomic_write(out, gzip.compress(data) if out.suffix == ".gz" else data)  # as inputs are read
    return len(frame)
