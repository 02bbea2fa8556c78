"""A run's files: atomic writes that keep the old file when a write fails, the CSV and JSON writers,
and output folders claimed once each."""

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from d2lrun.errors import Interrupted, RunFailed
from d2lrun.files import (
    atomic_write,
    claim_dir,
    held_dir,
    hold,
    kept_record,
    read_json,
    remove_stale_temporaries,
    save_torch,
    say,
    shown,
    write_csv,
    write_json,
)


def test_a_path_is_shown_as_typed_below_here_and_without_dot_dots_elsewhere(tmp_path, monkeypatch):
    """dataset.root=../data from /tmp/kg said 'not in /tmp/kg/../data/kaggle_house'."""
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert shown(tmp_path / "here" / "data" / "x.csv") == "data/x.csv"
    assert shown(f"{tmp_path}/here/../data/kaggle_house") == f"{tmp_path}/data/kaggle_house"
    monkeypatch.chdir("/")  # a container's: input=/tmp/x.csv was shown as input=tmp/x.csv
    assert shown(tmp_path / "x.csv") == str(tmp_path / "x.csv")


def test_a_line_is_said_in_one_write(monkeypatch):
    """joblib's workers run unbuffered (PYTHONUNBUFFERED=1): print wrote the line and its newline
    apart, another worker's line came in between, and a sweep's 'job 0: epoch' line was lost."""
    writes = []
    out = type("Out", (), {"write": lambda self, s: writes.append(s), "flush": lambda self: None})
    monkeypatch.setattr(sys, "stdout", out())
    say("job 0: epoch 1/2")
    assert writes == ["job 0: epoch 1/2\n"]


def test_atomic_write_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_torch(path, {"epoch": 1, "model": {"w": torch.ones(2)}})
    monkeypatch.setattr(
        os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device"))
    )
    with pytest.raises(OSError, match="No space"):
        save_torch(path, {"epoch": 2, "model": {"w": torch.zeros(2)}})
    monkeypatch.undo()
    kept = torch.load(path, weights_only=True)
    assert kept["epoch"] == 1 and torch.equal(kept["model"]["w"], torch.ones(2))  # the old weights
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the temporary file is gone


def test_csv_and_json_writers(tmp_path):
    write_csv(
        tmp_path / "m.csv", [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25, "acc": 0.9}]
    )
    assert (tmp_path / "m.csv").read_text().splitlines() == [
        "epoch,loss,acc",
        "1,0.5,",
        "2,0.25,0.9",
    ]
    summary = {"status": "completed", "final": {"val_loss": 0.25}, "tags": ["a", "é"]}
    write_json(tmp_path / "m.json", summary)
    assert json.loads((tmp_path / "m.json").read_text()) == summary
    atomic_write(tmp_path / "b.bin", b"xyz")
    assert (tmp_path / "b.bin").read_bytes() == b"xyz"


def test_threads_claiming_one_folder_each_get_a_new_one(tmp_path):
    base = tmp_path / "multirun" / "10-00-00"  # its parent is created too
    start, claimed = threading.Barrier(8), []

    def claim():
        start.wait()  # all at once, as sweeps started in the same second
        claimed.append(claim_dir(base))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = {base} | {base.with_name(f"10-00-00_{n}") for n in range(2, 9)}
    assert len(claimed) == 8 and set(claimed) == expected  # base, base_2 ... base_8, once each
    assert all(p.is_dir() and not any(p.iterdir()) for p in claimed)  # each a new, empty folder
    assert claim_dir(base) == base.parent / "10-00-00_9"  # taken ones stay taken


def test_a_file_of_the_same_name_is_taken_too(tmp_path):
    (tmp_path / "sweep").write_text("")
    assert claim_dir(tmp_path / "sweep") == tmp_path / "sweep_2"


FIX = r"\. Fix: choose a writable one with hydra\.run\.dir=DIR \(hydra\.sweep\.dir=DIR with -m\)\.$"


@pytest.mark.parametrize("below", ["file/sweep", "file/multirun/sweep"])
def test_a_parent_that_is_a_file_is_one_line_naming_the_folder(tmp_path, below):
    """The OS's reason, not a search through base_2 ... base_10000 (the folder is not taken)."""
    (tmp_path / "file").write_text("")
    base = tmp_path / below
    with pytest.raises(RunFailed) as e:
        claim_dir(base)
    assert re.fullmatch(
        rf"cannot write the output directory {re.escape(str(base))} "
        rf"\((Not a directory|File exists)\){FIX}",
        str(e.value),
    ), str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_an_unwritable_parent_is_one_line_naming_the_folder(tmp_path, monkeypatch):
    """A folder the user may not write to (simulated: tests often run as root, who may)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if locked in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    base = locked / "multirun" / "10-00-00"
    with pytest.raises(RunFailed) as e:
        claim_dir(base)
    assert re.fullmatch(
        rf"cannot write the output directory {re.escape(str(base))} \(Permission denied\){FIX}",
        str(e.value),
    ), str(e.value)


def test_stale_temporaries_of_dead_writers_go_and_live_ones_stay(tmp_path):
    """What atomic_write left when killed: a dead process's temporary goes, a live one's and this
    process's own stay (their writes may still finish), other files are never touched."""
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()  # a process id that no longer runs
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    names = {
        "stale": f".last.pt.tmp{dead.pid}",
        "alive": f".best.pt.tmp{live.pid}",
        "own": f".metrics.json.tmp{os.getpid()}",
        "not a pid": ".curves.png.tmpabc",
        "a run file": "last.pt",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        n for k, n in names.items() if k != "stale"
    )
    assert live.poll() is None  # only asked whether it runs: the live writer is not signalled
    live.kill()
    live.wait()


def test_a_printed_argument_is_read_back_as_one_by_the_shell_and_by_hydra():
    """'Resume with: d2lrun resume=o,x' was two values to Hydra; 'resume=my run' two to a shell."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from d2lrun.files import shell_arg, typed_arg

    def read_back(line: str):  # as bash splits it, then Hydra reads its one argument
        said = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], capture_output=True)
        (arg,) = said.stdout.decode().split("\0")[:-1]
        return OverridesParser.create().parse_override(arg).value()

    runs = ("outputs/2026-12-06/10-00-00", "my run", "o,x", "a [1]", 'say "hi"', "it's,o", "über")
    for folder in runs:  # it's,o: Hydra read 'it's,o'; über: a token error, as € and ä are
        assert read_back(shell_arg("resume", folder)) == folder
    assert shell_arg("resume", "outputs/my run") == "'resume=outputs/my run'"  # the shell's only
    for column in (" y ", "x ", "Price, USD", "a'b", "c:\\dir\\", "$HOME `x`", "Größe €"):
        assert read_back(typed_arg("dataset.target", column)) == column  # y: Hydra strips spaces


def test_a_held_folder_is_refused_until_its_holder_lets_go(tmp_path):
    first = hold(tmp_path)
    assert first is not None and (tmp_path / ".lock").exists()
    assert hold(tmp_path) is None  # another open of the lock: refused, without waiting
    first.close()
    second = hold(tmp_path)
    assert second is not None
    second.close()


def test_a_waiting_holder_gets_the_folder_when_its_holder_lets_go(tmp_path):
    """Two sweeps run into one folder: the second waits for the job the first trains."""
    first, got = hold(tmp_path), []
    waiter = threading.Thread(target=lambda: got.append(hold(tmp_path, wait=True)))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and not got  # still waiting
    first.close()
    waiter.join(10)
    assert got and got[0] is not None
    got[0].close()


def test_a_folder_held_by_another_sweep_is_waited_for_with_a_line(tmp_path, capsys):
    folder = tmp_path / "sweep"
    first, got = held_dir(folder), []
    assert held_dir(folder) is None  # a run's named folder: refused at once (app.named_dir)
    waiter = threading.Thread(target=lambda: got.append(held_dir(folder, "waiting for it")))
    waiter.start()
    assert said(capsys) == "waiting for it\n"
    waiter.join(0.5)
    assert waiter.is_alive() and not got  # still waiting
    first.close()
    waiter.join(10)
    assert got[0] is not None and hold(folder) is None  # held now by the one that waited
    got[0].close()


def test_a_waiter_whose_holder_removed_the_folder_makes_it_again_and_holds_it(tmp_path, capsys):
    """A sweep refused as it launched removes the folder it made; the one waiting goes on."""
    folder = tmp_path / "sweep"
    first, got = held_dir(folder), []
    waiter = threading.Thread(target=lambda: got.append(held_dir(folder, "waiting")))
    waiter.start()
    assert said(capsys) == "waiting\n"
    shutil.rmtree(folder)
    first.close()
    waiter.join(10)
    assert folder.is_dir() and hold(folder) is None  # its lock is the folder's, not a removed one
    got[0].close()


def test_a_folder_that_mkdir_never_makes_is_refused_not_tried_for_ever(tmp_path, monkeypatch):
    """hydra.run.dir=/proc/x: mkdir says "no such file" every time there, which held_dir took for
    a folder removed as it was made, and tried again for ever at 100% CPU (a helper's hunt)."""

    def procfs(self, *args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(self))

    monkeypatch.setattr(Path, "mkdir", procfs)
    got = []

    def claim():
        try:
            held_dir(tmp_path / "x")
        except RunFailed as e:
            got.append(str(e))

    thread = threading.Thread(target=claim, daemon=True)  # before: still trying, after 10 s
    thread.start()
    thread.join(10)
    assert got and got[0].startswith(
        f"cannot write the output directory {tmp_path / 'x'} (No such file or directory). "
    )


def said(capsys) -> str:
    """What a thread printed, once it has (within 10 s)."""
    for _ in range(1000):
        if out := capsys.readouterr().out:
            return out
        time.sleep(0.01)
    return ""


def test_a_folder_to_hold_that_cannot_be_made_says_so(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFailed) as e:
        held_dir(tmp_path / "file" / "sweep")
    assert str(e.value) == (
        f"cannot write the output directory {tmp_path / 'file' / 'sweep'} (Not a directory). "
        "Fix: choose a writable one with hydra.run.dir=DIR (hydra.sweep.dir=DIR with -m)."
    )


def test_when_every_suffix_is_taken_the_error_names_the_folder(tmp_path, monkeypatch):
    def taken(self, *args, **kwargs):
        if self.parent == tmp_path:
            raise FileExistsError(17, "File exists")

    monkeypatch.setattr(Path, "mkdir", taken)
    with pytest.raises(RunFailed) as e:
        claim_dir(tmp_path / "run")
    assert str(e.value) == (
        f"cannot write the output directory {tmp_path / 'run'} (all 10,000 suffixes are taken). "
        "Fix: choose a writable one with hydra.run.dir=DIR (hydra.sweep.dir=DIR with -m)."
    )


def test_a_full_disk_as_the_run_folder_is_made_says_to_free_space():
    """It said only 'choose a writable one', as for a folder of another owner."""
    from d2lrun.files import unwritable

    full = unwritable("outputs/r", OSError(errno.ENOSPC, "No space left on device"))
    assert str(full) == (
        "cannot write the output directory outputs/r (No space left on device). Fix: free disk "
        "space, or choose a writable one with hydra.run.dir=DIR (hydra.sweep.dir=DIR with -m)."
    )


def test_a_suffix_that_cannot_be_made_is_named_in_the_error(tmp_path, monkeypatch):
    def mkdir(self, *args, **kwargs):
        if self == tmp_path / "run":
            raise FileExistsError(17, "File exists")
        if self == tmp_path / "run_2":
            raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(RunFailed) as e:
        claim_dir(tmp_path / "run")
    assert str(e.value).startswith(
        f"cannot write the output directory {tmp_path / 'run_2'} (Permission denied). Fix:"
    )


def test_without_posix_locks_a_run_folder_is_held_by_its_claim_alone(tmp_path, monkeypatch):
    """On Windows (no fcntl) the atomic mkdir is the only claim: the run still starts and ends
    without an AttributeError as it lets go."""
    from omegaconf import OmegaConf

    from d2lrun.app import RunDir

    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError
    config = OmegaConf.create({"hydra": {"overrides": {"hydra": []},
                                         "run": {"dir": str(tmp_path / "run")}}})  # fmt: skip
    for claimed in ("run", "run_2"):  # two runs started in the same second
        RunDir().on_run_start(config)
        assert config.hydra.run.dir == str(tmp_path / claimed)
        (tmp_path / claimed / "metrics.csv").touch()  # it ran (a folder with no run goes)
        config.hydra.run.dir = str(tmp_path / "run")
        lock = RunDir.lock
        RunDir.release()  # as app.run does, however the run ended
        assert lock.closed and RunDir.lock is None


def test_a_slurm_sweep_stopped_leaves_no_marker_and_signals_no_joblib_worker(tmp_path, monkeypatch):
    """With a joblib pool alive from an earlier sweep in the process (a notebook), Ctrl-C on a
    Slurm sweep wrote .stopping, which made its queued jobs abort as they started, sent SIGINT to
    the idle workers and waited 120 s on the Slurm jobs' locks."""
    import signal
    from types import SimpleNamespace

    from d2lrun.stopping import Stop, stopping_workers

    killed = []
    pool = SimpleNamespace(_executor=SimpleNamespace(_processes={1: SimpleNamespace(pid=12345)}))
    monkeypatch.setitem(sys.modules, "joblib.externals.loky.reusable_executor", pool)
    monkeypatch.setattr(os, "kill", lambda pid, signum: killed.append(pid))
    with pytest.raises(Stop), stopping_workers(tmp_path, local=False):
        signal.raise_signal(signal.SIGINT)
    assert list(tmp_path.glob(".stopping*")) == [] and killed == []


def test_a_jobs_earlier_record_comes_back_when_a_stop_ends_it_before_it_writes_its_own(tmp_path):
    """A sweep's job started again drops its metrics.json; stopped before the run wrote its own,
    it had none, and the table called it 'unfinished' (with its saved epochs)."""
    record = tmp_path / "metrics.json"
    write_json(record, {"status": "interrupted", "epochs_completed": 1})
    for stop in (KeyboardInterrupt(), Interrupted("interrupted.")):  # Ctrl-C, or a job's own
        with pytest.raises(type(stop)), kept_record(tmp_path):
            record.unlink()
            raise stop
        assert read_json(record) == {"status": "interrupted", "epochs_completed": 1}
    with pytest.raises(KeyboardInterrupt), kept_record(tmp_path):  # the run's own: it stays
        write_json(record, {"status": "interrupted", "epochs_completed": 2})
        raise KeyboardInterrupt
    assert read_json(record)["epochs_completed"] == 2
    with pytest.raises(ValueError), kept_record(tmp_path):  # a failure: recorded as such instead
        record.unlink()
        raise ValueError
    assert not record.exists()
