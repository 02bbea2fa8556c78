"""A run's files: atomic writes that keep the old file when a write fails, the CSV and JSON writers,
and output folders claimed once each."""

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from d2lrun.errors import RunFailed
from d2lrun.files import (
    Plotter,
    atomic_write,
    claim_dir,
    curves_png,
    hold,
    remove_stale_temporaries,
    save_torch,
    write_csv,
    write_json,
)


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
    assert remove_stale_temporaries(tmp_path) == [tmp_path / names["stale"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        n for k, n in names.items() if k != "stale"
    )
    assert live.poll() is None  # only asked whether it runs: the live writer is not signalled
    live.kill()
    live.wait()


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


def test_several_runs_curves_are_drawn_by_helpers_in_order():
    """A stack's members' curves.png, drawn side by side: each the picture of its own rows."""
    plots = [([{"epoch": e, "train_loss": 1 / (e + k), "val_loss": 2 / (e + k)} for e in (1, 2)],
              f"run {k}") for k in range(5)]  # fmt: skip
    with Plotter(2) as plotter:  # started ahead: each draws its share once
        helpers = list(plotter.helpers)
        assert plotter.many(plots) == [curves_png(rows, title) for rows, title in plots]
        assert [h.returncode for h in helpers] == [0, 0] and plotter.helpers == []
        # Then new ones, one per core; a single plot without a helper is drawn here.
        assert plotter.many(plots[:2]) == [curves_png(*plot) for plot in plots[:2]]
        assert plotter.many(plots[:1]) == [curves_png(*plots[0])]


def test_curves_are_the_books_plot_loss_and_accuracy_per_epoch_train_and_val():
    from d2lrun.files import curves_figure

    rows = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.5 + e / 10, "val_loss": 1.5 / e,
             "val_acc": 0.4 + e / 10} for e in (1, 2, 3)]  # fmt: skip
    fig = curves_figure(rows, "softmax on fashion_mnist")
    assert fig._suptitle.get_text() == "softmax on fashion_mnist"
    assert tuple(fig.get_size_inches()) == (9.0, 3.5)  # two panels side by side
    loss, acc = fig.axes
    for ax, label, scale, key in (
        (loss, "loss", "log", "loss"),
        (acc, "accuracy", "linear", "acc"),
    ):
        assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_yscale()) == ("epoch", label, scale)
        train, val = ax.get_lines()
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend == [f"train {label}", f"val {label}"]
        assert (train.get_linestyle(), val.get_linestyle()) == ("-", "--")
        assert train.get_marker() == val.get_marker() == "o"  # up to 30 epochs: each one marked
        assert list(train.get_xdata()) == [1, 2, 3]
        assert list(train.get_ydata()) == [r[f"train_{key}"] for r in rows]
        assert list(val.get_ydata()) == [r[f"val_{key}"] for r in rows]
    assert loss.xaxis.get_major_locator()._integer  # whole epochs on the axis

    # Regression without held-out rows, 31 epochs, a loss that reaches 0: one linear panel.
    rows = [{"epoch": e, "train_loss": 30 - e + 1, "train_rmse": 1.0} for e in range(1, 32)]
    fig = curves_figure(rows)
    (only,) = fig.axes
    (train,) = only.get_lines()
    assert tuple(fig.get_size_inches()) == (4.5, 3.5)
    assert only.get_yscale() == "linear" and train.get_marker() == "None"
    assert [t.get_text() for t in only.get_legend().get_texts()] == ["train loss"]


def test_the_loss_axis_label_is_inside_the_picture_and_one_epoch_has_its_one_tick():
    """A loss within one decade was labelled 6×10⁻¹ ..., wide enough to push 'loss' off the
    figure's left edge (most Fashion-MNIST runs); one epoch's axis read 0.945 ... 1.065."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from d2lrun.files import curves_figure

    for losses in ([0.78, 0.57], [1.04, 1.02, 0.98, 0.95], [2.9, 0.03, 2e-4], [0.3]):
        rows = [{"epoch": e, "train_loss": v, "val_loss": v} for e, v in enumerate(losses, 1)]
        fig = curves_figure(rows)
        FigureCanvasAgg(fig).draw()
        (ax,) = fig.axes
        assert ax.yaxis.label.get_window_extent().x0 >= 0, losses
        labels = [t.get_text() for t in ax.get_yticklabels(which="both") if t.get_text()]
        assert labels and all(len(t) <= 5 for t in labels), labels  # 0.6, 1e-4
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1"]


def test_a_runs_curves_come_from_its_helper_process_or_are_drawn_here_without_one():

    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 2 / e} for e in (1, 2)]
    with Plotter() as draw:
        (helper,) = draw.helpers
        assert draw(rows, "linreg") == curves_png(rows, "linreg")
    assert helper.returncode == 0  # it drew the picture and ended
    with Plotter() as draw:
        draw.helpers[0].kill()  # a helper that died (or never started): drawn in this process
        draw.helpers[0].wait()
        assert draw(rows, "linreg") == curves_png(rows, "linreg")
    with Plotter(2) as draw:  # the command ended without a plot: its helpers go with it
        helpers = list(draw.helpers)
    assert all(h.poll() is not None for h in helpers)


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
    without Hydra's "Callback RunDir.on_run_end raised AttributeError"."""
    from omegaconf import OmegaConf

    from d2lrun.app import RunDir

    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError
    config = OmegaConf.create({"hydra": {"overrides": {"hydra": []},
                                         "run": {"dir": str(tmp_path / "run")}}})  # fmt: skip
    callbacks = RunDir(), RunDir()
    for callback in callbacks:  # two runs started in the same second
        callback.on_run_start(config)
        assert config.hydra.run.dir == str(
            tmp_path / ("run" if callback is callbacks[0] else "run_2")
        )
        config.hydra.run.dir = str(tmp_path / "run")
    for callback in callbacks:
        callback.on_run_end()
        assert callback.lock.closed


def test_a_slurm_sweep_stopped_leaves_no_marker_and_signals_no_joblib_worker(tmp_path, monkeypatch):
    """With a joblib pool alive from an earlier sweep in the process (a notebook), Ctrl-C on a
    Slurm sweep wrote .stopping, which made its queued jobs abort as they started, sent SIGINT to
    the idle workers and waited 120 s on the Slurm jobs' locks."""
    import signal
    from types import SimpleNamespace

    from d2lrun.files import Stop, stopping_workers

    killed = []
    pool = SimpleNamespace(_executor=SimpleNamespace(_processes={1: SimpleNamespace(pid=12345)}))
    monkeypatch.setitem(sys.modules, "joblib.externals.loky.reusable_executor", pool)
    monkeypatch.setattr(os, "kill", lambda pid, signum: killed.append(pid))
    with pytest.raises(Stop), stopping_workers(tmp_path, local=False):
        signal.raise_signal(signal.SIGINT)
    assert list(tmp_path.glob(".stopping*")) == [] and killed == []
