"""What clusters and shells do to runs: SIGTERM mid-epoch, runs and sweeps that start together, a
named folder that already holds a run. (Slurm's requeue is in test_slurm.py.)"""

import csv
import functools
import json
import os
import shlex
import signal
import subprocess
import time

import pandas as pd
import pytest

from tests.conftest import BIN, run_cli

# About a second an epoch on a 2-core machine: a signal sent after an epoch line lands mid-epoch.
SLOW = ["trainer.epochs=6", "dataset.num_train=50000", "trainer.progress=false"]


def start(*args: str, cwd=None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    cmd = [str(BIN / "d2lrun"), *args]
    # As from a terminal: under nohup (`nohup make test`) SIGHUP is ignored, which d2lrun keeps
    hup = functools.partial(signal.signal, signal.SIGHUP, signal.SIG_DFL)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd, env=env, preexec_fn=hup)  # fmt: skip


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2, signal.SIGHUP])  # HUP: ssh
def test_a_stop_signal_mid_epoch_keeps_the_run_and_resume_finishes_it(tmp_path, signum):
    run_dir = tmp_path / "my run"  # its 'Resume with:' pasted into a shell: quoted
    proc = start(*SLOW, f"hydra.run.dir={run_dir}")
    for line in proc.stdout:  # the signal comes during epoch 3
        if line.startswith("epoch 2/6"):
            proc.send_signal(signum)
            break
    out, err = proc.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err  # 143 for SIGTERM, as Slurm and docker expect
    assert err.splitlines() == [
        f"d2lrun: error: interrupted by {name} after epoch 2; the last complete epoch is saved. "
        f"Resume with: d2lrun 'resume={run_dir}'"
    ]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == name
    assert (
        summary["epochs_completed"] == 2 and summary["reason"] == f"stopped by {name} after epoch 2"
    )
    assert list(pd.read_csv(run_dir / "metrics.csv")["epoch"]) == [1, 2]
    assert (run_dir / "curves.png").stat().st_size > 0 and not (run_dir / "model.pt").exists()

    if signum != signal.SIGTERM:  # Slurm's warning signal ends a run as SIGTERM does
        return
    _, *pasted = shlex.split(err.partition("Resume with: ")[2])  # as a shell reads it
    r = run_cli(*pasted, *SLOW, f"hydra.run.dir={tmp_path / 'resumed'}")
    assert r.returncode == 0, r.stderr
    whole = run_cli(*SLOW, f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr
    for name in ("model.pt", "metrics.csv"):  # bit for bit (metrics.csv less its timings)
        resumed, uninterrupted = (tmp_path / d / name for d in ("resumed", "whole"))
        if name == "model.pt":
            assert resumed.read_bytes() == uninterrupted.read_bytes()
        else:
            drop = ["seconds", "examples_per_s"]
            pd.testing.assert_frame_equal(pd.read_csv(resumed).drop(columns=drop),
                                          pd.read_csv(uninterrupted).drop(columns=drop),
                                          check_exact=True)  # fmt: skip
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["restarts"] == 1


def test_eight_runs_started_together_each_own_a_folder(tmp_path):
    # The default folder is named by the second (outputs/DATE/TIME): runs that start in the same
    # second get TIME, TIME_2, TIME_3, ...
    procs = [start("trainer.progress=false", f"optim.lr=0.0{i}", cwd=tmp_path) for i in range(1, 9)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    folders = sorted(tmp_path.glob("outputs/*/*"))
    assert len(folders) == 8, folders
    lrs = set()
    for d in folders:
        assert json.loads((d / "metrics.json").read_text())["status"] == "completed"
        assert len(pd.read_csv(d / "metrics.csv")) == 3 and (d / "model.pt").exists()
        (override,) = [
            o for o in (d / ".hydra" / "overrides.yaml").read_text().split() if "lr" in o
        ]
        lrs.add(override)
    assert len(lrs) == 8  # each folder holds its own run, none written by two


def test_a_named_folder_that_holds_a_run_is_refused_unless_resumed(tmp_path):
    run_dir = tmp_path / "a run"
    assert run_cli("trainer.progress=false", f"hydra.run.dir={run_dir}").returncode == 0

    def files():  # but the lock, which names the process that holds it
        return {
            p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"
        }

    before = files()
    r = run_cli("optim.lr=0.1", f"hydra.run.dir={run_dir}")
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"d2lrun: error: hydra.run.dir={run_dir} already holds a run (last.pt, best.pt, model.pt, "
        f"metrics.json, metrics.csv), which d2lrun never writes over. Fix: choose another "
        f"hydra.run.dir, or 'resume={run_dir}' to continue that run."
    ]
    assert files() == before

    r = run_cli(f"resume={run_dir}", "trainer.epochs=5", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr
    assert list(pd.read_csv(run_dir / "metrics.csv")["epoch"]) == [1, 2, 3, 4, 5]


def test_a_run_into_a_sweeps_folder_or_a_sweep_into_a_runs_is_refused_and_leaves_no_folder(
    tmp_path,
):
    """Both were accepted: a run's files beside multirun.yaml and the jobs' folders, or the jobs'
    beside a run's; and a refused run named new/deep/run left new/deep/ (a swept value:
    'ChoiceSweep(tags=set(), list=['runs'), a refused sweep outputs/multirun/DATE/."""
    fast = ["trainer.progress=false", "trainer.epochs=1"]
    assert (
        run_cli("-m", *fast, "optim.lr=0.1,0.2", f"hydra.sweep.dir={tmp_path / 'sw'}").returncode
        == 0
    )
    assert run_cli(*fast, f"hydra.run.dir={tmp_path / 'run'}").returncode == 0
    before = sorted(tmp_path.rglob("*"))
    r = run_cli(*fast, f"hydra.run.dir={tmp_path / 'sw'}")
    assert r.returncode == 2 and r.stderr == (
        f"d2lrun: error: hydra.run.dir={tmp_path / 'sw'} holds a sweep (multirun.yaml), not a run. "
        f"Fix: choose another hydra.run.dir.\n"
    )
    r = run_cli("-m", *fast, "optim.lr=0.1,0.2", f"hydra.sweep.dir={tmp_path / 'run'}")
    assert r.returncode == 2 and r.stderr == (
        f"d2lrun: error: hydra.sweep.dir={tmp_path / 'run'} holds a run (last.pt, best.pt, "
        f"model.pt, metrics.json, metrics.csv), not a sweep. Fix: another hydra.sweep.dir.\n"
    )
    r = run_cli(*fast, "optim.lr=-1", f"hydra.run.dir={tmp_path / 'new' / 'deep' / 'run'}")
    assert r.returncode == 2 and "optim.lr=-1.0 is out of range" in r.stderr
    assert run_cli(f"hydra.run.dir={tmp_path / 'runs'}/a,b", cwd=tmp_path).returncode == 2
    # A sweep refused before any job: its outputs/multirun/DATE/ stayed, empty
    assert run_cli("-m", "hydra.job.chdir=true", "optim.lr=0.1,1", cwd=tmp_path).returncode == 2
    assert sorted(tmp_path.rglob("*")) == before


def test_a_named_folder_being_written_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(*SLOW, f"hydra.run.dir={run_dir}")
    assert proc.stdout.readline().startswith("linreg on synthetic")  # it holds the folder now
    assert proc.stdout.readline().startswith("epoch 1/6")  # and last.pt: resume= reads it first
    r = run_cli(f"resume={run_dir}", f"hydra.run.dir={run_dir}")
    proc.terminate()
    proc.communicate(timeout=60)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"d2lrun: error: hydra.run.dir={run_dir} is being written by another run now. "
        f"Fix: choose another hydra.run.dir, or wait for that run to end."
    ]


def test_two_sweeps_into_one_folder_lose_no_job(tmp_path):
    sweep = [
        "-m",
        "optim.lr=0.01,0.03,0.1",
        "trainer.progress=false",
        f"hydra.sweep.dir={tmp_path}",
    ]
    procs = [start(*sweep), start(*sweep)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    # Each job trained once, by one of them; the other waited for it, then skipped it.
    trained = sum(out.count(" -> ") for out, _ in outs)
    skipped = sum(out.count("already completed") for out, _ in outs)
    assert (trained, skipped) == (3, 3)
    for job in ("0", "1", "2"):
        assert json.loads((tmp_path / job / "metrics.json").read_text())["status"] == "completed"
        assert list(pd.read_csv(tmp_path / job / "metrics.csv")["epoch"]) == [1, 2, 3]

    r = run_cli("-m", "optim.lr=0.5", f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"d2lrun: error: hydra.sweep.dir={tmp_path} holds another sweep (optim.lr=0.01,0.03,0.1 "
        f"there, 0.5 now). Fix: the same overrides (optim.lr=0.01,0.03,0.1 "
        f"trainer.progress=false) to finish that one, or another hydra.sweep.dir."
    ]


def test_a_sweep_into_a_running_sweeps_folder_waits_for_it_then_skips_its_jobs(tmp_path):
    # About 4 s a job: the second starts (2 s or more) while the first still runs
    sweep = ["-m", "optim.lr=0.01,0.03", *SLOW, "trainer.epochs=12", f"hydra.sweep.dir={tmp_path}"]
    first = start(*sweep)
    for line in first.stdout:
        if line.startswith("epoch  1/12"):
            break
    second = start(*sweep)
    assert second.stdout.readline() == (
        f"waiting for the sweep running into {tmp_path} to end (Ctrl-C to stop)\n"
    )
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    assert outs[1][0].count("already completed") == 2 and " -> " not in outs[1][0]


def test_a_stopped_sweep_job_goes_on_from_its_last_epoch_when_run_again(tmp_path):
    sweep = ["-m", "optim.lr=0.01,0.03", *SLOW, f"hydra.sweep.dir={tmp_path}"]
    proc = start(*sweep)
    for line in proc.stdout:
        if line.startswith("epoch 2/6"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "To finish the sweep, run the same command again" in err
    time.sleep(0.1)
    r = run_cli(*sweep)
    assert r.returncode == 0, r.stderr
    assert f"resuming {tmp_path / '0'} from epoch 2" in r.stdout
    assert list(pd.read_csv(tmp_path / "0" / "metrics.csv")["epoch"]) == [1, 2, 3, 4, 5, 6]
    table = pd.read_csv(tmp_path / "summary.csv").set_index("job")
    assert list(table.loc[[0, 1], "restarts"]) == [1, 0]
    assert list(table["status"]) == ["completed", "completed"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_a_joblib_sweep_stops_its_workers_once_their_jobs_are_saved(tmp_path, signum):
    """docker stop, or kill PID, signals d2lrun only: its joblib workers get it from d2lrun, each
    saves its job, and none is left running."""
    s = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optim.lr=0.01,0.03,0.1",
            *SLOW, f"hydra.sweep.dir={s}"]  # fmt: skip
    proc = subprocess.Popen([str(BIN / "d2lrun"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    epochs = 0
    for line in proc.stdout:  # each worker's first epoch line: both are training
        epochs += ": epoch 1/6" in line  # job N: epoch 1/6
        if epochs == 2:
            break
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)],
                              capture_output=True, text=True).stdout.split()  # fmt: skip
    workers = [c for c in children  # not its resource trackers
               if b"LokyProcess" in open(f"/proc/{c}/cmdline", "rb").read()]  # fmt: skip
    assert len(workers) == 2
    proc.send_signal(signum)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signum, out
    # loky's resource tracker, a process of joblib's that outlives d2lrun, may warn after it
    # (in loaded CI runs: a temporary folder it could not clean up), in two lines: its
    # "...resource_tracker.py:N: UserWarning: ..." and Python's "  warnings.warn(" below it.
    lines = [ln for ln in out.splitlines()
             if "resource_tracker" not in ln and ln.strip() != "warnings.warn("]  # fmt: skip
    by = " by SIGTERM" if signum == signal.SIGTERM else ""  # it did not name SIGTERM
    assert lines[-1] == (
        f"d2lrun: error: interrupted{by}. To finish the sweep, run the same command "
        f"again with hydra.sweep.dir={s}"
    )
    time.sleep(1)
    assert [w for w in workers if os.path.exists(f"/proc/{w}")] == []  # none left training
    stopped = [json.loads((s / j / "metrics.json").read_text()) for j in "01"]
    assert [m["status"] for m in stopped] == ["interrupted"] * 2
    if signum == signal.SIGTERM:  # going on is the same after either signal's record: once
        r = run_cli(*args)
        assert r.returncode == 0 and f"sweep {s}: 3 completed" in r.stdout, r.stderr


def test_a_stopped_sweep_writes_its_table_again_over_one_reported_mid_sweep(tmp_path):
    """d2lrun-report while the sweep runs writes summary.csv (job 0 running, 1 missing); the stop
    writes it again as it left them, not stale."""
    proc = start("-m", "optim.lr=0.01,0.03", *SLOW, f"hydra.sweep.dir={tmp_path}")
    for line in proc.stdout:
        if line.startswith("epoch 2/6"):
            mid = subprocess.run([BIN / "d2lrun-report", tmp_path], capture_output=True, text=True)
            proc.send_signal(signal.SIGTERM)
            break
    assert proc.communicate(timeout=120)[1].count("To finish the sweep") == 1
    assert " running " in mid.stdout and " missing " in mid.stdout, mid.stdout
    table = pd.read_csv(tmp_path / "summary.csv")
    assert list(table["status"]) == ["interrupted", "missing"]


def test_a_sweeps_job_is_running_in_its_table_once_hydra_has_made_its_folder(tmp_path):
    """The job imported torch (a second or two) before it took its folder's lock, and
    d2lrun-report meanwhile called it 'unfinished', as a job killed by kill -9."""
    from d2lrun.sweeps import collect

    proc = start("-m", "optim.lr=0.01,0.03", *SLOW, f"hydra.sweep.dir={tmp_path}")
    deadline = time.monotonic() + 60
    while not (tmp_path / "0" / ".hydra" / "overrides.yaml").exists():  # Hydra's last write
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    time.sleep(0.5)
    statuses = list(collect(tmp_path)[0]["status"])
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert statuses == ["running", "missing"]


# d2lrun ARGS, with the signal SIGNAL raised as MODULE first loads: python -c ... MODULE SIGNAL ARGS
STOP_IN_IMPORT = """
import importlib.abc, signal, sys
module, signum = sys.argv[1], getattr(signal, sys.argv[2])
class StopIn(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == module:
            sys.meta_path.remove(self)
            signal.raise_signal(signum)
sys.meta_path.insert(0, StopIn())
from d2lrun.cli import train_main
del sys.argv[1:3]
train_main()
"""


def test_a_stop_signal_as_the_command_starts_ends_it_as_ctrl_c_does(tmp_path):
    """SIGTERM as Hydra loaded, before the run's own handlers, killed the command without a line,
    and could leave the run's claimed folder holding only .lock."""
    r = subprocess.run([BIN / "python", "-c", STOP_IN_IMPORT, "hydra", "SIGTERM",
                        f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert (r.returncode, r.stderr) == (
        128 + signal.SIGTERM,
        "d2lrun: error: interrupted by SIGTERM before anything was saved.\n",
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("module", ["pandas._libs.tslibs.offsets", "matplotlib.ft2font"])
def test_ctrl_c_in_the_tables_imports_still_writes_the_whole_table(tmp_path, module):
    """The import, stopped half way, failed again as the stop wrote the table again: no
    summary.csv (pandas) or no heatmap.png (matplotlib), and 'To finish the sweep' with every job
    completed."""
    s = tmp_path / "sweep"
    args = ["hydra/launcher=batched", "experiment=ch4_weight_decay", "optim.weight_decay=0,3",
            "optim.lr=0.003,0.001", "trainer.epochs=2", f"hydra.sweep.dir={s}"]  # fmt: skip
    r = subprocess.run([BIN / "python", "-c", STOP_IN_IMPORT, module, "SIGINT", "-m", *args],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 130 and r.stderr.splitlines()[-1] == (
        f"d2lrun: error: interrupted as the sweep ended: every job had completed; see "
        f"{s}/summary.csv"
    ), r.stderr
    assert list(pd.read_csv(s / "summary.csv")["status"]) == ["completed"] * 4
    assert (s / "heatmap.png").stat().st_size > 0


def test_a_joblib_sweep_with_an_idle_worker_still_saves_its_running_job(tmp_path):
    """n_jobs=2 for one job (or a re-run's last): the signal went to the idle worker too, which
    has no handler and died; loky then killed the busy one before it saved: no metrics.json nor
    curves.png, 'unfinished' in the table."""
    s = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optim.lr=0.01", *SLOW,
            f"hydra.sweep.dir={s}"]  # fmt: skip
    proc = subprocess.Popen([str(BIN / "d2lrun"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    for line in proc.stdout:
        if ": epoch 1/6" in line:  # job 0: epoch 1/6
            break
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)],
                              capture_output=True, text=True).stdout.split()  # fmt: skip
    workers = [c for c in children if b"LokyProcess" in open(f"/proc/{c}/cmdline", "rb").read()]
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out
    stopped = json.loads((s / "0" / "metrics.json").read_text())
    assert (stopped["status"], stopped["signal"]) == ("interrupted", "SIGTERM")
    assert (s / "0" / "curves.png").exists()
    time.sleep(1)
    assert [w for w in workers if os.path.exists(f"/proc/{w}")] == []  # the idle one too


def test_jobs_queued_in_joblibs_pool_do_not_start_after_a_stop_signal(tmp_path):
    """SIGTERM stopped the two running jobs, then joblib handed the queued ones to the freed
    workers, which trained them to the end before d2lrun exited."""
    s = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.epochs=3",
            "optim.lr=0.01,0.02,0.03,0.04,0.05,0.06", "dataset.num_train=50000",
            "trainer.progress=false", f"hydra.sweep.dir={s}"]  # fmt: skip
    proc = subprocess.Popen([str(BIN / "d2lrun"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    for line in proc.stdout:
        if ": epoch 1/3" in line:  # job N: epoch 1/3
            break
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert [j for j in "2345" if (s / j / "last.pt").exists()] == []
    # and each is 'missing', as README says of a job that never started: it was 'unfinished'
    r = run_cli(str(s), tool="d2lrun-report")
    statuses = {row["job"]: row["status"] for row in csv.DictReader(open(s / "summary.csv"))}
    assert [statuses[j] for j in "2345"] == ["missing"] * 4, r.stdout


def test_a_folder_named_with_a_resolver_is_the_folder_it_resolves_to(tmp_path):
    """hydra.run.dir=outputs/exp/${model.name}: a second run wrote over the first's files (the
    checks looked at a folder literally named '${model.name}'); a sweep's table called its
    completed jobs missing. ${now:...} names a time: TIME, then TIME_2, as the default folder."""
    exp = tmp_path / "exp"
    assert run_cli("trainer.progress=false", "hydra.run.dir=exp/${model.name}",
                   cwd=tmp_path).returncode == 0  # fmt: skip
    before = (exp / "linreg" / "model.pt").read_bytes()
    r = run_cli("optim.lr=0.1", "hydra.run.dir=exp/${model.name}", cwd=tmp_path)
    assert r.returncode == 2 and "hydra.run.dir=exp/linreg already holds a run" in r.stderr
    assert (exp / "linreg" / "model.pt").read_bytes() == before and os.listdir(exp) == ["linreg"]
    (tmp_path / "years" / time.strftime("%Y")).mkdir(parents=True)  # taken: the run takes _2
    r = run_cli("trainer.progress=false", "hydra.run.dir=years/${now:%Y}", cwd=tmp_path)
    assert r.returncode == 0 and f"-> years/{time.strftime('%Y')}_2" in r.stdout
    r = run_cli("-m", "trainer.epochs=1", "optim.lr=0.1,0.3", "hydra.sweep.dir=swp/${model.name}",
                cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0 and "sweep swp/linreg: 2 completed" in r.stdout, r.stderr


def test_a_signal_after_the_last_line_neither_kills_the_command_nor_goes_unsaid(tmp_path):
    """Once the run's files were written, a Ctrl-C while torch tore down (about a second) ended
    the command by the signal (exit -2, shells say 130) with nothing on stderr."""
    proc = start("trainer.epochs=1", "trainer.progress=false", f"hydra.run.dir={tmp_path / 'r'}")
    for line in proc.stdout:
        if line.startswith("error in estimating b"):  # its last line: the files are written
            break
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (0, "")
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["status"] == "completed"
