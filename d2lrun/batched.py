"""`d2lrun -m hydra/launcher=batched ...`: the jobs of a sweep whose configs are equal but for
MEMBER_KEYS train as one stack of models (d2lrun.stack), or one after another where
d2lrun.stack.stackable says why not. Each is still a sweep job of its own (d2lrun.sweeps.run_job):
its folder and files, skipped when completed, continued from its last.pt, recorded when it fails.
"""

import contextlib
import json
import logging
import os
import shutil
import signal
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict

from d2lrun.config import checked
from d2lrun.errors import Diverged, Interrupted, UsageError
from d2lrun.files import hold, kept_record, say, shown, untrained
from d2lrun.job import Run
from d2lrun.plots import Plotter
from d2lrun.stack import Stack, StackOptimizer, most_members, stackable
from d2lrun.stopping import deferred_signals, stop_signals
from d2lrun.sweeps import finished_job, job_failed, prepared, score, sweep_experiment
from d2lrun.trainer import fit

log = logging.getLogger(__name__)

# One value per member in a stack: the optimizer's (d2lrun.stack.StackOptimizer) and dropout's.
# Not seed: the members of a stack share the data and its shuffling order, which the seed sets.
MEMBER_KEYS = ("optim.lr", "optim.weight_decay", "optim.momentum", "regularizer.lambd",
               "model.dropout")  # fmt: skip


def launch(launcher, job_overrides, initial_job_idx: int) -> list[JobReturn]:
    """Every job of the sweep, grouped; their JobReturns in job order."""
    most = launcher.max_members
    if most is not None and most < 1:  # its type is the schema's (config.schema.BatchedLauncher)
        raise UsageError(
            f"hydra.launcher.max_members={most} is not a whole number of at least 1. "
            f"Fix: hydra.launcher.max_members=8, or null for as many as fit in memory."
        )
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for num, overrides in enumerate(job_overrides, initial_job_idx):
        log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides)
        with open_dict(cfg):
            cfg.hydra.job.id = cfg.hydra.job.num = num
        jobs.append((num, cfg))
    returns = {}
    for group in grouped(jobs):
        returns |= launch_group(launcher, group, sweep_dir)
    return [returns[num] for num, _ in jobs]


def grouped(jobs: list[tuple[int, DictConfig]]) -> list[list[tuple[int, DictConfig]]]:
    """The jobs whose configs are equal but for MEMBER_KEYS, together, in job order. Compared
    resolved, as each job's: seed=${hydra:job.num} is a seed per job, not one string for all."""
    groups: dict[str, list] = {}
    for num, cfg in jobs:
        HydraConfig.instance().set_config(cfg)  # ${hydra:...} is this job's, as in run_job
        try:
            config = {key: resolved(cfg, key) for key in cfg if key != "hydra"}
        except Exception:  # trainer.epochs=${nothing}: a job alone, which fails alone
            config = {"job": num}
        for key in MEMBER_KEYS:
            section, name = key.split(".")
            config.get(section, {}).pop(name, None)
        groups.setdefault(json.dumps(config, sort_keys=True, default=str), []).append((num, cfg))
    return list(groups.values())


def resolved(cfg: DictConfig, key: str):
    value = cfg[key]  # a section resolved within the whole config: ${optim.lr} still found
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def launch_group(launcher, group: list, sweep_dir: Path) -> dict[int, JobReturn]:
    nums = [num for num, _ in group]
    first = group[0][1]  # not checked here: a member whose value is refused fails alone
    why = stackable(first) if len(group) > 1 else "nothing to stack it with"
    if why:
        log.info(f"{named(nums)}: one after another ({why})")
        return {num: run(launcher, cfg, launcher.task_function) for num, cfg in group}
    found = {}

    def folder(cfg: DictConfig) -> None:  # Hydra's run_job makes the job's folder and .hydra/
        hc = HydraConfig.get()
        run_dir, overrides = Path(hc.runtime.output_dir), list(hc.overrides.task)
        found[hc.job.num] = {"cfg": cfg, "run_dir": run_dir, "overrides": overrides}  # Run's
        # As run_job: of two sweeps into one folder, one trains each job; 'running' from here;
        locks.enter_context(hold(run_dir, wait=True))  # a stop before its run writes its
        locks.enter_context(kept_record(run_dir))  # metrics.json puts back the earlier one
        try:
            OmegaConf.resolve(cfg)  # while Hydra's config is this job's
        except Exception as e:  # trainer.epochs=${nothing}: its job fails alone
            found[hc.job.num]["error"] = e

    # The plot helpers, one per core, import matplotlib while the stack trains.
    try:
        with (
            Plotter(min(len(group), os.cpu_count() or 1)) as plotter,
            contextlib.ExitStack() as locks,
        ):
            returns = {num: run(launcher, cfg, folder) for num, cfg in group}
            with stop_signals():
                scores = train_group(launcher, found, sweep_dir, plotter)
    except (KeyboardInterrupt, Interrupted):  # as Hydra made the folders, or a stack trained
        remove_unstarted(found)
        raise
    for num, value in scores.items():
        returns[num].return_value = value
    return returns


def named(nums: list[int]) -> str:
    return f"job {nums[0]}" if len(nums) == 1 else f"jobs {', '.join(map(str, nums))}"


def run(launcher, cfg: DictConfig, task) -> JobReturn:
    """One job as Hydra's basic launcher runs it: its folder, .hydra/, logging, task(cfg)."""
    ret = run_job(hydra_context=launcher.hydra_context, task_function=task, config=cfg,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")  # fmt: skip
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return ret


def train_group(launcher, found: dict, sweep_dir: Path, plotter: Plotter) -> dict[int, float]:
    """Each job's score; those still to do trained as stacks that fit in memory, one per starting
    epoch and shuffling state (a job stopped earlier goes on from its last.pt)."""
    scores, todo = {}, {}
    for num, job in found.items():
        cfg, run_dir, overrides = job["cfg"], job["run_dir"], job["overrides"]
        if "error" in job:
            scores[num] = job_failed(job["error"], run_dir, sweep_dir, f"job {num}: ")
            continue
        done = finished_job(run_dir, overrides, cfg)
        if done is not None:
            say(f"job {num}: already completed in {shown(run_dir)}; skipped")
            scores[num] = score(done)
            continue
        try:  # a refused value (optim.lr=-1) fails its job only, as with the basic launcher
            job["ckpt"] = ckpt = prepared(cfg, run_dir, None)
            checked(cfg, overrides if ckpt is None else ())  # one that goes on keeps its config
        except Exception as e:
            scores[num] = job_failed(e, run_dir, sweep_dir, f"job {num}: ")
            continue
        job["log"] = lambda line, num=num: say(f"job {num}: {line}")
        start = (ckpt["epoch"], ckpt["rng"]["shuffle"].tolist()) if ckpt else (0, None)
        todo.setdefault(json.dumps(start), []).append(num)
    experiment = sweep_experiment(sweep_dir)
    for nums in todo.values():
        try:  # most_members reads the data: a dataset.path that is wrong fails these jobs only
            limit = launcher.max_members or most_members(found[nums[0]]["cfg"])
        except Exception as e:
            scores |= {n: job_failed(e, found[n]["run_dir"], sweep_dir, f"job {n}: ") for n in nums}
            continue
        for part in (nums[i : i + limit] for i in range(0, len(nums), limit)):
            model = found[part[0]]["cfg"].model.name
            log.info(f"{named(part)}: {model}, trained as one stack of {len(part)}")
            jobs = [found[num] for num in part]
            try:
                ended = train_stack(jobs, plotter, sweep_dir=sweep_dir, experiment=experiment)
            except Exception as e:  # its data or models could not be built: each member failed
                ended = [e] * len(part)
            for num, end in zip(part, ended, strict=True):
                if isinstance(end, dict):
                    scores[num] = score(end)
                elif not isinstance(end, Interrupted):  # it diverged, or the stack failed
                    scores[num] = job_failed(end, found[num]["run_dir"], sweep_dir, f"job {num}: ")
            stopped = [end for end in ended if isinstance(end, Interrupted)]
            if stopped:  # Ctrl-C or a stop signal: every member saved; the sweep ends
                job_failed(stopped[0], jobs[0]["run_dir"], sweep_dir, f"{named(part)}: ")
    return scores


def remove_unstarted(found: dict) -> None:
    """The folders of jobs that trained nothing: gone, as the basic launcher leaves none; but not
    one whose lock another sweep into the same folder holds (it trains that job, or waits to)."""
    for job in found.values():
        if untrained(job["run_dir"]) and (lock := hold(job["run_dir"])) is not None:
            with lock:
                shutil.rmtree(job["run_dir"], ignore_errors=True)


def train_stack(jobs: list[dict], plotter: Plotter | None = None, **common) -> list:
    """Runs (each job a dict of Run's arguments) trained as one stack: each one's summary, or how
    it ended (Diverged, Interrupted, or the error that ended them all: a full disk, a bug)."""
    runs, generators = [], []
    for job in jobs:
        runs.append(Run(**job, **common))
        # Its dropout masks come from its own generator, in the state torch's is in after its
        # init (or its checkpoint's): the ones it draws alone.
        device = runs[-1].device
        state = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
        generators.append(torch.Generator(device=device).set_state(state))
    models, first = [run.model for run in runs], runs[0]
    stack = Stack(models, [run.cfg.model for run in runs], generators)
    optimizer = StackOptimizer(stack, [run.optimizer for run in runs], models)
    for run in runs:  # one epoch count and shuffling order for all
        run.trainer = first.trainer
    ended: list = [None] * len(runs)

    def end(m: int, *how, **signum) -> None:
        try:
            ended[m] = runs[m].end(*how, **signum)
        except (Diverged, Interrupted) as e:
            ended[m] = e

    def on_epoch(row: dict) -> None:
        """Each member's own on_epoch, with its weights, optimizer and random state. Ctrl-C or a
        stop signal waits until every member has saved the epoch: they go on from the same one."""
        stopped = row.pop("diverged")
        with deferred_signals():
            for m, run in enumerate(runs):
                if ended[m] is not None:
                    continue
                if stopped[m]:
                    end(m, "diverged", stopped[m])
                    continue
                stack.write_back(m, run.model)
                optimizer.write_back(m)
                if run.device.type == "cuda":
                    torch.cuda.set_rng_state(generators[m].get_state(), run.device)
                else:
                    torch.set_rng_state(generators[m].get_state())
                run.on_epoch({k: v[m] if isinstance(v, list) else v for k, v in row.items()})

    try:
        fit(stack, optimizer, first.loss, first.train, first.val, first.trainer, on_epoch)
        with deferred_signals():  # Ctrl-C or a stop signal now: once every member has its files
            going = [m for m in range(len(runs)) if ended[m] is None]
            plots = [(runs[m].history.rows, runs[m].title) for m in going]
            for m, png in zip(going, (plotter or Plotter(0)).many(plots), strict=True):
                runs[m].draw = lambda rows, title, png=png: png  # drawn side by side above
                end(m, "completed")
    except KeyboardInterrupt as e:  # Ctrl-C, or a stop signal (d2lrun.stopping.stop_signals)
        if None not in ended:  # held back until every member ended: the sweep stops after them
            raise
        for m in range(len(runs)):  # (at the last epoch's: completed, as the run ended)
            if ended[m] is None:
                end(m, "interrupted", signum=getattr(e, "signum", signal.SIGINT))
    except Exception as e:  # a full disk, a bug: each member failed, with its own Fix
        return [
            end if end is not None else run.failed(e) for end, run in zip(ended, runs, strict=True)
        ]
    return ended
