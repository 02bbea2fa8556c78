"""`d2lrun -m hydra/launcher=slurm` through a real Slurm: sbatch, a job array, squeue, the table.

Needs partition `debug` with an idle node; `.ci/slurm-up` starts such a one-node cluster on this
machine (as root). Without one these tests skip, saying so; under CI (CI=true) they fail. The jobs
run on the node in the environment sbatch copies from this one (PATH, PYTHONPATH), so they run this
checkout's d2lrun.
"""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from tests.conftest import BIN, run_cli, unavailable

pytestmark = pytest.mark.slurm

# One CPU and 1 GB each: two jobs run at once on a 2-core machine.
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.mem_gb=1",
]
FAST = ["trainer.epochs=1", "trainer.progress=false"]


@pytest.fixture(scope="module")
def node_cpus() -> int:
    """CPUs of the idle node in partition debug; skips the tests when there is none."""
    if shutil.which("sinfo") is None:
        unavailable("no Slurm on this machine (sinfo not found); .ci/slurm-up starts one")
    r = subprocess.run(
        ["sinfo", "--noheader", "--partition=debug", "--format=%t %c"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    up = [ln.split() for ln in r.stdout.splitlines() if ln.split()[0] in ("idle", "mix")]
    if r.returncode != 0 or not up:
        said = (r.stdout + r.stderr).strip() or "no nodes"
        unavailable(f"Slurm partition debug has no idle node ({said}); .ci/slurm-up starts one")
    return int(up[0][1])


@pytest.fixture
def sweep_dir(tmp_path, node_cpus):
    """The sweep's folder; the Slurm jobs submitted from it are cancelled when the test ends."""
    s = tmp_path / "sweep"
    yield s
    arrays = {p.name.split("_")[0] for p in (s / ".submitit").glob("*")}
    if arrays:
        subprocess.run(["scancel", *arrays], capture_output=True)


def slurm_job(stdout: str) -> str:
    """The job array's id, from the line the launcher logs after sbatch."""
    return re.search(r"Slurm job (\d+) \(squeue -j", stdout).group(1)


def squeue(array: str, field: str) -> set[str]:
    r = subprocess.run(
        ["squeue", "--noheader", "--array", "--states=all", f"--jobs={array}", f"--format={field}"],
        capture_output=True,
        text=True,
    )
    return set(r.stdout.split())


def test_sweep_runs_as_a_job_array_and_records_each_failure(sweep_dir):
    s = sweep_dir
    # Job 1 fails in d2lrun (a ${...} that resolves only in its job, recorded by the job; a value
    # out of range is refused before any job); job 2 ends before d2lrun starts,
    # as a job that Slurm kills (out of memory, past its time) does: recorded by the launcher.
    r = run_cli(
        "-m",
        *SLURM,
        "hydra.launcher.cpus_per_task=1",
        'hydra.launcher.setup=["test $SLURM_ARRAY_TASK_ID != 2 || exit 3"]',
        "optim.lr=0.1,${oc.env:D2LRUN_NEVER_SET},0.03",
        *FAST,
        f"hydra.sweep.dir={s}",
        timeout=120,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert r.stderr.splitlines()[-1] == (
        f"d2lrun: error: 2 of 3 sweep jobs did not complete (2 failed); see {s / 'summary.csv'}"
    )
    assert f"sweep {s}: 1 completed, 2 failed" in r.stdout and "best_val_loss" in r.stdout
    assert "sacct" not in out and "submitit WARNING" not in out and "Traceback" not in out

    array = slurm_job(r.stdout)
    assert squeue(array, "%j") == {"d2lrun"}  # the job's name in squeue, not `cli` or `submitit`
    assert squeue(array, "%i|%T") == {
        f"{array}_0|COMPLETED",
        f"{array}_1|COMPLETED",  # d2lrun recorded the failure; the job itself ended normally
        f"{array}_2|FAILED",
    }
    script = (s / ".submitit" / array / f"{array}_submission.sh").read_text()
    for line in ("--job-name=d2lrun", "--partition=debug", "--cpus-per-task=1", "--mem=1GB"):
        assert f"#SBATCH {line}\n" in script
    log = (s / ".submitit" / f"{array}_0" / f"{array}_0_0_log.out").read_text()
    assert "epoch 1/1" in log and "-> " + str(s / "0") in log

    with open(s / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(row["job"], row["optim.lr"], row["status"]) for row in rows] == [
        ("0", "0.1", "completed"),
        ("1", "${oc.env:D2LRUN_NEVER_SET}", "failed"),
        ("2", "0.03", "failed"),
    ]
    assert {"metrics.json", "model.pt", "last.pt", "best.pt", ".hydra"} <= {
        p.name for p in (s / "0").iterdir()
    }
    assert json.loads((s / "0" / "metrics.json").read_text())["status"] == "completed"
    assert json.loads((s / "1" / "metrics.json").read_text()) == {
        "status": "failed",
        "exit_code": 2,
        "reason": "cannot resolve a ${...} of the config: KeyError raised while resolving "
        "interpolation: \"Environment variable 'D2LRUN_NEVER_SET' not found\". Fix: a ${key} that "
        "exists or an environment variable that is set, or the value itself.",
    }
    killed = json.loads((s / "2" / "metrics.json").read_text())
    assert killed["status"] == "failed" and killed["reason"] == (
        f"Slurm ended job {array}_2 (FAILED) without a result. "
        f"Its log: {s / '.submitit' / f'{array}_2' / f'{array}_2_0_log.err'}"
    )
    assert f"job 2 failed: Slurm ended job {array}_2 (FAILED)" in r.stdout


def test_what_slurm_refuses_or_cannot_start_ends_in_one_line(sweep_dir, node_cpus):
    s = sweep_dir
    r = run_cli("-m", *SLURM, "hydra.launcher.partition=nope", "optim.lr=0.1", *FAST,
                f"hydra.sweep.dir={s}")  # fmt: skip
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "d2lrun: error: sbatch refused the sweep: invalid partition specified: nope; Batch job "
        "submission failed: Invalid partition name specified. "
        "Fix: hydra.launcher.partition=<one of: debug>."
    ]
    assert not s.exists()  # refused: no folder of .submitit/ files behind
    r = run_cli("-m", *SLURM, "hydra.launcher.signal_delay_s=-1", "optim.lr=0.1", *FAST,
                f"hydra.sweep.dir={s}")  # fmt: skip
    assert r.returncode == 2 and r.stderr.splitlines() == [  # its Fix named other keys
        "d2lrun: error: sbatch refused the sweep: Invalid --signal specification. "
        "Fix: hydra.launcher.signal_delay_s=<seconds, 0 or more, e.g. 120>."
    ]

    too_many = node_cpus + 1  # accepted by sbatch, then pending for ever: PartitionConfig
    r = run_cli("-m", *SLURM, f"hydra.launcher.cpus_per_task={too_many}", "optim.lr=0.1,0.3",
                *FAST, f"hydra.sweep.dir={s}", timeout=60)  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    (line,) = r.stderr.splitlines()
    array = slurm_job(r.stdout)
    assert line.startswith(
        f"d2lrun: error: Slurm will not start job {array} in partition debug (PartitionConfig): "
        f"each job asks for cpus_per_task={too_many}, mem_gb=1, gpus_per_node=0, timeout_min=60; "
        f"the partition has at most {node_cpus} CPUs and "
    )
    assert line.endswith(f"The job is cancelled. Fix: hydra.launcher.cpus_per_task={node_cpus}.")
    assert squeue(array, "%T") == {"CANCELLED"} and not s.exists()


def test_signalled_jobs_are_requeued_and_go_on_from_their_last_epoch(sweep_dir):
    """Slurm's warning before a time limit (--signal=USR2@90, which submitit asks for) or a
    preemption: each job saves its last complete epoch, submitit requeues it, and it goes on."""
    s = sweep_dir
    cmd = [str(BIN / "d2lrun"), "-m", *SLURM, "hydra.launcher.cpus_per_task=1",
           "optim.lr=0.01,0.03", "trainer.epochs=8", "dataset.num_train=50000",
           "trainer.progress=false", f"hydra.sweep.dir={s}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                          text=True) as proc:  # fmt: skip
        deadline = time.monotonic() + 120
        while not all((s / j / "last.pt").exists() for j in "01"):  # both past epoch 1
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
        array = next((s / ".submitit").glob("*_0")).name.split("_")[0]
        subprocess.run(["scancel", "--signal=USR2", array], check=True)
        # Slurm holds a requeued job back (BeginTime) until the credential of its last run, revoked
        # by the requeue, has expired; a start within the same second is refused and the job fails.
        # Let it start 2 s after it was requeued instead of 2 minutes.
        pending: dict[str, float] = {}
        while proc.poll() is None and time.monotonic() < deadline + 120:
            now = time.monotonic()
            for task, state in (line.split("|") for line in squeue(array, "%i|%T")):
                if state == "PENDING" and time.monotonic() - pending.setdefault(task, now) > 2:
                    subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"],
                                   capture_output=True)  # fmt: skip
            time.sleep(0.5)
        out = proc.communicate(timeout=180)[0]
    assert proc.returncode == 0, out
    assert f"sweep {s}: 2 completed" in out
    for job in ("0", "1"):
        summary = json.loads((s / job / "metrics.json").read_text())
        assert summary["status"] == "completed" and summary["restarts"] == 1
        epochs = [int(row["epoch"]) for row in csv.DictReader(open(s / job / "metrics.csv"))]
        assert epochs == list(range(1, 9))  # each epoch once: at most the one in progress redone
        log = (s / ".submitit" / f"{array}_{job}" / f"{array}_{job}_0_log.err").read_text()
        assert "Caught signal SIGUSR2" in log
    with open(s / "summary.csv") as f:
        assert [row["restarts"] for row in csv.DictReader(f)] == ["1", "1"]


def test_a_stopped_submitter_leaves_its_jobs_to_go_on(sweep_dir):
    """SIGTERM (or Ctrl-C) to the command that waits: it exited 130, and its sweep's stop marker
    made each job that had not started yet abort as it started ('interrupted before it started'),
    although the line said the Slurm job goes on."""
    s = sweep_dir
    cmd = [str(BIN / "d2lrun"), "-m", *SLURM, "hydra.launcher.cpus_per_task=1",
           "optim.lr=0.01,0.03",
           *FAST, f"hydra.sweep.dir={s}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          text=True) as proc:  # fmt: skip
        for line in proc.stdout:  # submitted: the jobs start now, or wait in the queue
            if "Slurm job" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.startswith(f"d2lrun: error: stopped waiting; Slurm job {slurm_job(line)} goes on")
    deadline = time.monotonic() + 90
    while not all((s / j / "metrics.json").exists() for j in "01"):  # the last file a run writes
        assert time.monotonic() < deadline, [p.read_text() for p in s.glob(".submitit/*/*.err")]
        time.sleep(0.5)
    for job in "01":
        assert json.loads((s / job / "metrics.json").read_text())["status"] == "completed"


def test_a_sweep_run_again_queues_only_the_jobs_it_has_not_completed(sweep_dir):
    """Run again to finish it, a sweep queued every job, each to wait for a node only to say on
    it that it had completed (on a busy cluster, hours for a GPU), unseen here."""
    s = sweep_dir
    sweep = ["-m", *SLURM, "hydra.launcher.cpus_per_task=1", "optim.lr=0.1,0.03", *FAST,
             f"hydra.sweep.dir={s}"]  # fmt: skip
    assert run_cli(*sweep, timeout=120).returncode == 0
    shutil.rmtree(s / "1")  # a job that never ran, say
    r = run_cli(*sweep, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"job 0: already completed in {s / '0'}; skipped" in r.stdout
    assert len(squeue(slurm_job(r.stdout), "%i")) == 1  # job 1 alone was queued
    assert f"sweep {s}: 2 completed" in r.stdout
    r = run_cli(*sweep, timeout=120)  # all completed: nothing is queued
    assert r.returncode == 0 and "Slurm job" not in r.stdout and "2 completed" in r.stdout
    assert r.stdout.count("already completed") == 2
