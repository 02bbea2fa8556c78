"""SLURM sweeps (`hydra/launcher=slurm`): the submitit plugin's job array, waited on with `squeue`.

The plugin submits a sweep as one sbatch job array, then waits on `sacct`, which reads Slurm's
accounting database. Many clusters keep none: there, every poll printed sacct's "Slurm accounting
storage is disabled" and submitit's warning about it twice, and a job that Slurm ended without a
result (out of memory, past its time limit, cancelled) kept the sweep waiting for ever. `launch`
submits the same array and waits on `squeue`, which asks the controller that every cluster has:

    submit   sbatch's refusal (no such partition, GPUs that no node has) is one line
    wait     a job that Slurm will never start (more CPUs than any node has) is cancelled, one line
    collect  a job that ended without a result is recorded as failed in its folder; the rest go on

slurm_launcher.py's class calls `launch` (why it lives in hydra_plugins: there); each job it runs is
d2lrun's own sweep job (d2lrun.sweeps.run_job), and one Slurm ended is recorded as run_job would.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf, open_dict

from d2lrun.errors import Interrupted, UsageError
from d2lrun.files import shown

log = logging.getLogger(__name__)

# squeue's states of a job that has ended (https://slurm.schedmd.com/squeue.html, JOB STATE CODES)
ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
         "TIMEOUT"}  # fmt: skip
GONE = "no longer listed by squeue"
# Pending reasons under which a job waits until an administrator changes the partition or a limit.
NEVER_STARTS = re.compile(r"PartitionConfig|PartitionTimeLimit|BadConstraints|PerJob")
# sbatch's options in its refusals, as the keys of hydra/launcher=slurm that set them
OPTIONS = {"cpus-per-task": "cpus_per_task", "signal": "signal_delay_s", "mem": "mem_gb",
           "time": "timeout_min", "nodes": "nodes", "ntasks-per-node": "tasks_per_node",
           "gpus-per-node": "gpus_per_node"}  # fmt: skip
WHAT = {"signal_delay_s": "seconds, 0 or more, e.g. 120", "mem_gb": "at most a node's, in GB",
        "cpus_per_task": "1 or more, at most a node's CPUs"}  # fmt: skip
RESULT_GRACE_S = 15  # a result written on a node can show up late on a shared filesystem


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    """Submit the jobs as one array, wait for them, return their JobReturns (the plugin's launch,
    waiting on squeue)."""
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if "mode" in launcher.config.hydra.sweep:  # hydra.sweep.mode, as the plugin honours it
        os.chmod(sweep_dir, int(str(launcher.config.hydra.sweep.mode), 8))
    log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
    for num, overrides in enumerate(job_overrides, initial_job_idx):
        log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
    check_time_limit(launcher.params)
    numbered = list(enumerate(job_overrides, initial_job_idx))
    done = {num: skipped(launcher, num, o) for num, o in numbered}  # a sweep run again: those
    done = {num: ret for num, ret in done.items() if ret}  # completed wait in no queue to skip
    if len(done) == len(numbered):
        return list(done.values())
    # The plugin's own arguments: each array task calls launcher(*call) on its node.
    calls = [(list(o), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state())
             for num, o in numbered if num not in done]  # fmt: skip
    jobs = submit(executor(launcher.params), launcher, calls)
    array = jobs[0].job_id.split("_")[0]
    logs = shown(jobs[0].paths.folder.parent)
    try:  # submitted: a signal from here on leaves the jobs to go on
        log.info(f"Slurm job {array} (squeue -j {array} shows it; its logs go to {logs})")
        ended = wait(jobs, launcher.params)
    except KeyboardInterrupt as e:  # Ctrl-C, or a stop signal (143 for SIGTERM)
        raise Interrupted(
            f"stopped waiting; Slurm job {array} goes on (scancel {array} stops it). "
            f"Its results, later: d2lrun-report {shlex.quote(shown(sweep_dir))}",
            getattr(e, "signum", signal.SIGINT),
        ) from None
    queued = dict(zip([num for num, _ in numbered if num not in done], jobs, strict=True))
    return [done[num] if num in done else
            collect(launcher, job := queued[num], num, o, ended.get(job.job_id))
            for num, o in numbered]  # fmt: skip


def check_time_limit(params: dict) -> None:
    """The warning (SIGUSR2) comes signal_delay_s before the limit, and may come up to 60 s before
    that (sbatch's --signal): one due at the start is refused; one that may come then, said."""
    limit, delay = params.get("timeout_min"), params.get("signal_delay_s")
    if limit is not None and limit < 1:  # else its Fix, a delay of limit * 15 s, was refused too
        raise UsageError(
            f"hydra.launcher.timeout_min={limit} is out of range: a job's time limit is 1 minute "
            f"or more. Fix: hydra.launcher.timeout_min=60."
        )
    if (params.get("tasks_per_node") or 1) > 1:  # each task would run the job: one trains, the
        raise UsageError(  # others wait on its lock, then skip it as completed
            f"hydra.launcher.tasks_per_node={params['tasks_per_node']}: a d2lrun job is one "
            f"process, and each task would start it. Fix: hydra.launcher.tasks_per_node=1."
        )
    if not limit or delay is None:
        return
    if delay >= limit * 60:  # each job warned, then requeued, as it starts: it never ends
        raise UsageError(
            f"hydra.launcher.signal_delay_s={delay} is not less than hydra.launcher.timeout_min="
            f"{limit} minute(s): each job would be warned of its limit as it starts. "
            f"Fix: hydra.launcher.signal_delay_s={limit * 60 // 4}."
        )
    if delay + 60 >= limit * 60:
        log.warning(
            f"Slurm may warn a job of its limit up to 60 s before signal_delay_s={delay}: as it "
            f"starts, with timeout_min={limit}; a job warned saves its epoch and is requeued"
        )


def executor(params: dict):
    """submitit's executor with the config's keys, mapped as the plugin's launch maps them."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = dict(params)
    folder, timeouts = params.pop("submitit_folder"), params.pop("max_num_timeout")
    # submitit looks for srun alone: without sbatch or squeue the sweep failed as 'cannot write
    # the output directory sbatch', or once submitted, left its jobs running unsaid.
    if missing := [c for c in ("sbatch", "srun", "squeue", "scancel") if not shutil.which(c)]:
        raise UsageError(
            f"hydra/launcher=slurm needs Slurm's commands (sbatch, srun, squeue, scancel), and "
            f"this machine lacks {', '.join(missing)}. Fix: run it on a login node of the cluster, "
            f"or try hydra/launcher=submitit_local here."
        )
    ex = submitit.AutoExecutor(cluster="slurm", folder=folder, slurm_max_num_timeout=timeouts)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    try:
        ex.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    except NameError as e:  # +hydra.launcher.KEY that submitit does not know
        key = re.search(r"Unknown argument '(\w+)'", str(e))
        key = key.group(1) if key else "?"
        raise UsageError(
            f"hydra.launcher.{key} is not a setting of Slurm's submitit executor. Fix: drop "
            f"+hydra.launcher.{key}; sbatch's other options go in "
            f"+hydra.launcher.additional_parameters={{{key}:VALUE}}."
        ) from None
    return ex


def submit(ex, fn, calls: list[tuple]) -> list:
    """sbatch the job array; a refusal becomes one line naming the fix."""
    from submitit.core.utils import FailedJobError

    try:
        # submitit prints sbatch's complaint, then raises it: show it once, below
        with contextlib.redirect_stderr(io.StringIO()):
            return ex.map_array(fn, *zip(*calls, strict=True))
    except FailedJobError as e:
        lines = [re.sub(r"^sbatch: error: ", "", ln) for ln in str(e).splitlines() if ln.strip()]
        message = "; ".join(dict.fromkeys(lines)).rstrip(".")  # sbatch's period, before ". Fix:"
        option = re.search(r"--([a-z-]+)", message)
        key = OPTIONS.get(option.group(1)) if option else None
        if "memory" in message.lower():
            key = "mem_gb"
        if "contact slurm controller" in message.lower():  # slurmctld down, or not reached
            fix = "check that Slurm's controller answers from this machine (scontrol ping), or "
            fix += "drop hydra/launcher=slurm to run the sweep here"
        elif "partition" in message.lower():
            fix = f"hydra.launcher.partition=<one of: {', '.join(_sinfo('%R')) or 'see sinfo'}>"
        elif "gres" in message.lower() or "gpu" in message.lower():
            fix = "hydra.launcher.gpus_per_node=0 where the nodes have no GPUs"
        elif key:
            fix = f"hydra.launcher.{key}=<{WHAT.get(key, 'a value the nodes have (sinfo -N -l)')}>"
        else:
            fix = "ask for what the nodes have (sinfo -N -l) with hydra.launcher.cpus_per_task, "
            fix += "mem_gb, gpus_per_node, timeout_min, or the account or qos the cluster wants"
        raise UsageError(f"sbatch refused the sweep: {message}. Fix: {fix}.") from None


def wait(jobs: list, params: dict) -> dict[str, str]:
    """Wait until each job has written its result or Slurm has ended it; returns the state of
    each job that ended without a result. Result files are checked every second, squeue less often:
    2 s apart at first, then half the time waited so far, at most a minute."""
    array = jobs[0].job_id.split("_")[0]
    start, last_poll, quiet = time.monotonic(), -math.inf, False
    ended: dict[str, tuple[float, str]] = {}  # job id: (when squeue first said so, its state)
    while True:
        now = time.monotonic()
        todo = [j for j in jobs if not j.paths.result_pickle.exists()]
        if all(now - ended.get(j.job_id, (now, ""))[0] > RESULT_GRACE_S for j in todo):
            return {j.job_id: ended[j.job_id][1] for j in todo}
        if now - last_poll >= min(60.0, max(2.0, (now - start) / 2)):
            last_poll, states = now, squeue(array)
            if states is None and not quiet:  # the controller did not answer: say so once
                log.warning(f"squeue -j {array} failed; still waiting for the results")
                quiet = True
            for job in todo if states is not None else []:
                state, reason = states.get(job.job_id, (GONE, ""))
                if state == "PENDING" and NEVER_STARTS.search(reason):
                    never_starts(array, reason, params)
                if state in ENDED or state == GONE:
                    ended.setdefault(job.job_id, (now, state))
                else:  # pending or running (again, when requeued)
                    ended.pop(job.job_id, None)
        time.sleep(1)


def squeue(array: str) -> dict[str, tuple[str, str]] | None:
    """{job id (7_0; 7 for a sweep of one job): (state, pending reason)}; None when squeue fails.
    Slurm lists an ended job for MinJobAge (300 s by default), longer than polls are apart."""
    r = subprocess.run(
        ["squeue", "--noheader", "--array", "--states=all", f"--jobs={array}", "--format=%i|%T|%r"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:  # the array is no longer known, or the controller did not answer
        return {} if "Invalid job id" in r.stderr else None
    return {i: (state, why) for i, state, why in (ln.split("|", 2) for ln in r.stdout.splitlines())}


def never_starts(array: str, reason: str, params: dict) -> None:
    """Cancel the job array; say what each job asks for against what the partition has."""
    subprocess.run(["scancel", array], capture_output=True)
    rows = [ln.split("|") for ln in _sinfo("%P|%c|%m")]  # one row per partition and kind of node
    default = next((r[0].rstrip("*") for r in rows if r[0].endswith("*")), "(the default)")
    partition = params.get("partition") or default
    rows = [r for r in rows if r[0].rstrip("*") == partition]
    cpus, memory = (max(int(r[i]) for r in rows) if rows else None for i in (1, 2))
    many = (params.get("nodes") or 1) > 1  # a d2lrun job runs on one node
    fixes = ["hydra.launcher.nodes=1"] * many
    if cpus is not None and (params.get("cpus_per_task") or 1) > cpus:
        fixes.append(f"hydra.launcher.cpus_per_task={cpus}")
    if memory is not None and (params.get("mem_gb") or 0) * 1024 > memory:
        fixes.append(f"hydra.launcher.mem_gb={max(1, memory // 1024)}")
    asked = ", ".join(
        f"{k}={params.get(k)}"
        for k in ["nodes"] * many + ["cpus_per_task", "mem_gb", "gpus_per_node", "timeout_min"]
    )
    has = f"at most {cpus} CPUs and {memory} MB of memory per node" if rows else "less (sinfo)"
    raise UsageError(
        f"Slurm will not start job {array} in partition {partition} ({reason}): each job asks for "
        f"{asked}; the partition has {has}. The job is cancelled. "
        f"Fix: {' '.join(fixes) or 'ask for what the partition has (sinfo -N -l lists it)'}."
    )


def collect(launcher, job, num: int, overrides: Sequence[str], ended: str | None) -> JobReturn:
    """The job's JobReturn; a job without a result is recorded as failed in its folder, as
    d2lrun.sweeps.run_job records the failures it sees, and scores -inf."""
    from submitit.core.utils import UncompletedJobError

    from d2lrun.sweeps import record_failure

    err = job.paths.stderr
    where = f"Its log: {shown(err)}" if err.exists() else "It never started."
    if ended is None:  # its result file is there
        try:
            returned = job.results()[0]
            if returned.status != JobStatus.FAILED:
                return returned
            # Raised on its node past d2lrun's record: submitit's "timed-out too many times"
            reason = f"{str(returned._return_value).rstrip('.')}. {where}"  # (max_num_timeout)
            log.warning(f"job {num}: {reason}")  # its record says interrupted, and when
        except UncompletedJobError as e:  # it raised before d2lrun could record why
            reason = f"{_last_line(e)}. {where}"
    else:
        reason = f"Slurm ended job {job.job_id} ({ended}) without a result. {where}"
    run_dir = job_dir(launcher, num, overrides)[0]
    if not (run_dir / ".hydra").exists():  # it never started: its overrides as Hydra records
        (run_dir / ".hydra").mkdir(parents=True)  # them, for the sweep's table
        OmegaConf.save(list(overrides), run_dir / ".hydra" / "overrides.yaml")
    if not (run_dir / "metrics.json").exists():
        record_failure(run_dir, reason, exit_code=1)
    return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=-math.inf)


def skipped(launcher, num: int, overrides: Sequence[str]) -> JobReturn | None:
    """The JobReturn of a job that completed in its folder with these overrides, else None."""
    from d2lrun.files import say
    from d2lrun.sweeps import finished_job, score

    run_dir, cfg = job_dir(launcher, num, overrides)
    if cfg is None or (done := finished_job(run_dir, list(overrides), cfg)) is None:
        return None
    say(f"job {num}: already completed in {shown(run_dir)}; skipped")
    return JobReturn(
        overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=score(done)
    )


def job_dir(launcher, num: int, overrides: Sequence[str]):
    """The job's folder, hydra.sweep.dir / hydra.sweep.subdir (0/, 1/, ... unless overridden),
    and its config (None where it does not load)."""
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    loader = launcher.hydra_context.config_loader
    try:
        cfg = loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = num
        return sweep_dir / str(cfg.hydra.sweep.subdir), cfg
    except Exception:  # its config does not load (the job failed for that): Hydra's default
        return sweep_dir / str(num), None


def _last_line(error: Exception) -> str:
    """The exception a job raised, from submitit's error text: the last line of its traceback."""
    text = str(error)
    # "... failed during processing with trace:\n-----\n{trace}\n-----"
    parts = text.split("-" * 22)
    lines = [ln.strip() for ln in (parts[1] if len(parts) > 2 else text).splitlines()]
    return next((ln for ln in reversed(lines) if ln), type(error).__name__)


def _sinfo(fields: str) -> list[str]:
    """sinfo's lines in this format, without repeats; none when sinfo fails."""
    r = subprocess.run(
        ["sinfo", "--noheader", f"--format={fields}"], capture_output=True, text=True
    )
    return list(dict.fromkeys(r.stdout.split())) if r.returncode == 0 else []
