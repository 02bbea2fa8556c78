"""Bad input and faults: one clear line naming the bad value and the fix, the right exit code,
no traceback, and nothing already saved damaged."""

import json
import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d2lrun import config
from d2lrun.cli import handle
from d2lrun.kfold import train
from d2lrun.reload import resume_checkpoint, run_overrides
from tests.conftest import run_cli


def run_in_process(tmp_path, *overrides, run_dir=None) -> int:
    """What `d2lrun OVERRIDES` does for one run, in this process: its exit code (the line goes to
    stderr). With resume=RUN, the run's own overrides and then these, as the command line does."""
    overrides = ["trainer.progress=false", *overrides]
    run_dir = run_dir or tmp_path / "run"

    def main() -> None:
        resume = config.given(overrides, "resume")
        ckpt = resume_checkpoint(resume) if resume else None
        args = run_overrides(ckpt, overrides) if ckpt else overrides
        train(config.compose(args), run_dir, args, ckpt, log=lambda *_: None)

    try:
        handle("d2lrun", main)
    except SystemExit as e:
        return e.code
    return 0


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("d2lrun: error: ")
    return err[0]


def csv_run(tmp_path, capsys, content, *extra, target="y"):
    path = tmp_path / "data.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    code = run_in_process(
        tmp_path,
        "dataset=csv",
        f"dataset.path={path}",
        f"dataset.target={target}",
        "trainer.epochs=1",
        *extra,
    )
    return code, capsys.readouterr().err


GOOD = "x,c,y\n" + "".join(f"{i},{'ab'[i % 2]},{i * 2}\n" for i in range(20))


@pytest.mark.parametrize(
    "name,content,target,match",
    [
        ("missing file", None, "y", "no such file"),
        ("empty", "", "y", "is empty"),
        ("header only", "x,y\n", "y", "has a header but no data rows"),
        (
            "target absent",
            GOOD,
            "price",
            "dataset.target=price is not a column of .*; its columns are: x, c, y",
        ),
        ("not utf-8", b"x,y\n\xff\xfe,1\n2,3\n", "y", "is not UTF-8 text \\(line 2\\)"),
        # in a later chunk of pandas': it said "byte 1" for the 29th
        ("latin-1", b"x,y\n" + b"1,2\n" * 9000 + b"\xf6,1\n", "y", "UTF-8 text \\(line 9002\\)"),
        ("ragged", "x,y\n1,2\n3,4,5,6\n", "y", "ragged rows"),
        ("single row", "x,y\n1,2\n", "y", "has 1 labelled row"),
        (
            "class only in validation",
            "x,y\n" + "".join(f"{i},{'a' if i < 19 else 'b'}\n" for i in range(20)),
            "y",
            "occur only in the validation rows",
        ),
        ("no features", "y\n1\n2\n3\n4\n", "y", "no usable feature column"),
    ],
)
def test_csv_mistakes(tmp_path, capsys, name, content, target, match):
    code, err = csv_run(tmp_path, capsys, content, target=target)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("d2lrun: error: ")
    import re

    assert re.search(match, lines[0]), lines[0]


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            ["dataset.drop=[x,id,c,nope]"],
            (
                "dataset.drop names ['id', 'nope'], which {csv} does not have. "
                "Fix: dataset.drop=[x,c]."
            ),
        ),
        (  # ignored, it was predicted all the same (and x, no longer dropped, a feature)
            ["dataset.drop=[x,y]"],
            "dataset.drop names 'y', the column to predict (dataset.target=y). "
            "Fix: dataset.drop=[x], or another dataset.target.",
        ),
        (
            ["dataset.task=regression", "dataset.target=c"],
            (
                "dataset.task=regression but column 'c' of {csv} is not numeric. "
                "Fix: dataset.task=classification."
            ),
        ),
    ],
)
def test_csv_options_that_do_not_fit_the_table(tmp_path, capsys, extra, message):
    code, err = csv_run(tmp_path, capsys, GOOD, *extra)
    message = message.format(csv=tmp_path / "data.csv")
    assert code == 2 and err.strip() == f"d2lrun: error: {message}", err


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            ["dataset.drop=[x,true]"],
            "dataset.drop names ['True'], which {csv} does not have. Fix: quote them, as Hydra "
            "reads true otherwise: \"dataset.drop=['x','true']\".",
        ),
        (
            ["dataset.target=1.50"],
            "dataset.target=1.5 is not a column of {csv}; its columns are: x, true, 1.50, y. "
            "Fix: quote it, as Hydra reads 1.50 as 1.5 otherwise: \"dataset.target='1.50'\".",
        ),
    ],
)
def test_csv_columns_named_as_hydra_reads_other_values_get_the_quoted_fix(
    tmp_path, capsys, extra, message
):
    """The Fix said dataset.target=<one of them>, and 1.50 pasted read as 1.5 again."""
    content = "x,true,1.50,y\n" + "".join(f"{i},{i % 2},{i},{i * 2}\n" for i in range(20))
    code, err = csv_run(tmp_path, capsys, content, *extra)
    message = message.format(csv=tmp_path / "data.csv")
    assert code == 2 and err.strip() == f"d2lrun: error: {message}"
    assert csv_run(tmp_path, capsys, content, "dataset.drop=['x','true']", target="'1.50'")[0] == 0


def test_csv_directory_instead_of_file(tmp_path, capsys):
    code = run_in_process(tmp_path, "dataset=csv", f"dataset.path={tmp_path}", "dataset.target=y")
    assert code == 2 and "is a directory, not a CSV file" in one_line(capsys)


def test_csv_missing_targets_are_dropped_with_a_notice(tmp_path, capsys):
    content = GOOD + "21,a,\n22,b,\n"
    code, err = csv_run(tmp_path, capsys, content)
    assert code == 0 and "note: dropped 2 row(s)" in err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"


def test_csv_empty_column_is_ignored_with_a_notice(tmp_path, capsys):
    content = "x,empty,y\n" + "".join(f"{i},,{i}\n" for i in range(20))
    code, err = csv_run(tmp_path, capsys, content)
    assert code == 0 and "ignored column(s) ['empty']" in err


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, capsys):
    # lr 0.5 trains for a while on the default data, then 1e4 would blow up: resume with a huge lr.
    assert run_in_process(tmp_path, "trainer.epochs=1") == 0
    good = (tmp_path / "run" / "last.pt").read_bytes()
    code = run_in_process(
        tmp_path, f"resume={tmp_path / 'run'}", "optim.lr=1e6", "trainer.epochs=3"
    )
    line = one_line(capsys)
    assert (
        code == 1 and "diverged" in line and "epoch 2, batch" in line and "lower optim.lr" in line
    )
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["status"] == "diverged" and "epoch 2" in summary["reason"]
    assert (tmp_path / "run" / "last.pt").read_bytes() == good


@pytest.mark.parametrize(
    "error,fix",
    [
        (OSError(28, "No space left on device"), "free disk space"),
        (PermissionError(13, "Permission denied"), "make {run} writable again"),  # not disk space
    ],
)
def test_a_failing_write_leaves_no_half_written_checkpoint(
    tmp_path, capsys, monkeypatch, error, fix
):
    """Disk full (or the folder made read-only) on the second epoch's checkpoint: exit 1, one line
    with what to do, epoch 1's checkpoint intact."""
    import d2lrun.files as files

    real_fsync, calls = os.fsync, []

    def failing_fsync(fd):
        calls.append(fd)
        if (
            len(calls) > 4
        ):  # epoch 1 wrote best.pt and last.pt (and fsynced each file and its folder)
            raise error
        return real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", failing_fsync)
    code = run_in_process(tmp_path, "trainer.epochs=3")
    monkeypatch.undo()
    line, run = one_line(capsys), tmp_path / "run"  # it named no file, nor how to go on
    assert code == 1 and f"{error.strerror} ({run}/" in line
    assert line.endswith(
        f"Fix: {fix.format(run=run)}, then d2lrun resume={run} (its last.pt is kept)."
    )
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp" in p.name]


def test_a_full_disk_as_the_run_writes_its_last_files_says_how_to_finish(
    tmp_path, capsys, monkeypatch
):
    """Every epoch trained, then no room for curves.png: 'Fix: ... choose a writable folder', no
    metrics.json, though resume= finishes the run."""
    import d2lrun.job as job_mod

    real = job_mod.atomic_write

    def full(path, data):
        if path.name == "curves.png":
            raise OSError(28, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(job_mod, "atomic_write", full)
    assert run_in_process(tmp_path, "trainer.epochs=2") == 1
    monkeypatch.undo()
    run = tmp_path / "run"
    assert one_line(capsys) == (
        f"d2lrun: error: No space left on device ({run / 'curves.png'}). "
        f"Fix: free disk space, then d2lrun resume={run} (its last.pt is kept)."
    )
    assert json.loads((run / "metrics.json").read_text())["status"] == "failed"
    assert run_in_process(tmp_path, f"resume={run}") == 0
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
    assert (run / "curves.png").exists()


def test_unwritable_output_directory(tmp_path):
    (tmp_path / "file").write_text("")
    r = run_cli(f"hydra.run.dir={tmp_path / 'file' / 'run'}")
    assert (
        r.returncode == 1
        and r.stderr.count("\n") == 1
        and "cannot write the output directory" in r.stderr
    )


def test_a_full_disk_as_hydra_writes_the_run_folder_names_it(tmp_path, monkeypatch):
    """A write that fails for space has no filename: 'cannot write the output directory  (No
    space left on device)', with no folder named."""
    import hydra.core.utils

    from d2lrun import app
    from d2lrun.errors import RunFailed

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hydra.core.utils, "_save_config", full)
    with pytest.raises(RunFailed) as e:
        app.train([f"hydra.run.dir={tmp_path / 'run'}"])
    assert str(e.value).startswith(
        f"cannot write the output directory {tmp_path / 'run'} (No space left on device). Fix: "
    )


@pytest.mark.parametrize(
    "args,match",
    [
        (["model=lenet", "dataset.download=false"], "dataset.download=false"),  # offline, no files
    ],
)
def test_fashion_mnist_without_files(tmp_path, args, match):
    r = run_cli(*args, f"dataset.root={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2 and match in r.stderr and "train-images-idx3-ubyte.gz" in r.stderr
    assert "Traceback" not in r.stderr


def test_fashion_mnist_damaged_file(tmp_path, fake_fmnist):
    images = fake_fmnist / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    r = run_cli(
        "model=softmax",
        f"dataset.root={fake_fmnist}",
        "dataset.download=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert r.returncode == 2 and "are damaged" in r.stderr and "Traceback" not in r.stderr
    # which ones, and a Fix that downloads when download=false ('run again' did not)
    assert "damaged, train-images-idx3-ubyte or train-labels-idx1-ubyte (" in r.stderr
    assert "Fix: delete them and run with dataset.download=true to download" in r.stderr


def test_fashion_mnist_root_not_writable(tmp_path):
    (tmp_path / "file").write_text("")
    r = run_cli(
        "model=softmax", f"dataset.root={tmp_path / 'file' / 'sub'}", f"hydra.run.dir={tmp_path}/r"
    )
    assert r.returncode == 1 and "is not writable" in r.stderr and "Traceback" not in r.stderr
    # A file itself: it said 'is not writable', exit 1; the Fix is the folder above FashionMNIST/
    raw = tmp_path / "my data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"")
    r = run_cli("model=softmax", f"dataset.root={raw / 'train-images-idx3-ubyte.gz'}")
    assert r.returncode == 2 and r.stderr == (
        f"d2lrun: error: dataset.root={raw / 'train-images-idx3-ubyte.gz'} is a file, not the "
        f"folder of FashionMNIST/raw/. Fix: 'dataset.root={tmp_path / 'my data'}'.\n"
    )


def test_hydra_full_error_shows_the_traceback_and_keeps_the_exit_code(tmp_path):
    """It exited 1, Python's, where the table promises 2 for a bad value."""
    r = run_cli(
        "trainer.epochs=0", f"hydra.run.dir={tmp_path / 'run'}", env={"HYDRA_FULL_ERROR": "1"}
    )
    assert r.returncode == 2 and r.stderr.startswith("Traceback")
    assert r.stderr.splitlines()[-1].startswith("d2lrun: error: trainer.epochs=0 ")


# Random CSVs: NaN patterns, mixed types, unicode and duplicate headers, numeric-looking strings,
# empty columns.
cell = st.one_of(
    st.none(),
    st.integers(-5, 5),
    st.floats(-1e3, 1e3, allow_nan=False),
    st.sampled_from(["a", "b", "ü", "1,5", "007", "", "NaN", "true", " x "]),
)
header = st.sampled_from(["x", "y", "é", "x", "名前", "a b", "1", "y"])


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    columns=st.lists(header, min_size=1, max_size=4),
    rows=st.lists(st.lists(cell, min_size=4, max_size=4), min_size=0, max_size=12),
    target=st.sampled_from(["y", "x", "é"]),
)
def test_random_csvs_train_or_fail_in_one_line(tmp_path_factory, columns, rows, target):
    import csv
    import io

    tmp = tmp_path_factory.mktemp("fuzz")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row[: len(columns)]])
    (tmp / "data.csv").write_text(buf.getvalue(), encoding="utf-8")
    cfg_overrides = [
        "dataset=csv",
        f"dataset.path={tmp / 'data.csv'}",
        f"dataset.target='{target}'",
        "trainer.epochs=1",
        "model=mlp",
        "model.num_hiddens=[4]",
    ]
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run_in_process(tmp, *cfg_overrides)
    errors = [ln for ln in err.getvalue().splitlines() if ln.startswith("d2lrun: error:")]
    assert (code == 0) == (not errors) and len(errors) <= 1
    # A table is refused only for what is really wrong with it, never with a crash or a runtime
    # failure.
    legitimate = (
        "is empty",
        "has a header but no data rows",
        "is not a column of",
        "labelled row(s): too few",
        "has no values: no row to learn from",
        "no usable feature column",
        "occur only in the validation rows",
        "is not numeric",
        "holds numbers but for",
        "beyond float32's range",
        "twice in its header",
        "so there is nothing to learn",
        "hold numbers that read as text",
        "the training loss became",
    )  # a wild numeric column may still make SGD diverge
    assert code in (0, 1, 2) and all(any(reason in e for reason in legitimate) for e in errors), (
        errors
    )
    if code == 1:
        assert "the training loss became" in errors[0]


def test_ctrl_c_while_loading_data(tmp_path, capsys, monkeypatch):
    import d2lrun.job as job_mod

    monkeypatch.setattr(job_mod, "build_data", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    assert run_in_process(tmp_path) == 130
    assert "interrupted before anything was saved" in one_line(capsys)


def test_ctrl_c_during_evaluation_offers_resume(tmp_path, capsys, monkeypatch):
    import d2lrun.trainer as train_mod

    real, calls = train_mod.evaluate, []

    def evaluate(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # epoch 2: a regression evaluates its training split, then validation
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    assert run_in_process(tmp_path, "trainer.epochs=3") == 130
    assert f"Resume with: d2lrun resume={tmp_path / 'run'}" in one_line(capsys)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "interrupted"


def test_an_error_while_hydra_runs_is_one_line_unless_the_user_asked_for_tracebacks(
    capsys, monkeypatch
):
    """app.run sets HYDRA_FULL_ERROR=1 while Hydra runs: a Ctrl-C then (a run's last instant)
    printed a traceback, as if the user had asked for one."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def main() -> None:
        monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # as app.run does, for Hydra's own errors
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        handle("d2lrun", main)
    assert e.value.code == 130 and one_line(capsys).startswith("d2lrun: error: interrupted")


def test_ctrl_c_while_the_command_imports_hydra_is_one_line(tmp_path, capsys, monkeypatch):
    """Ctrl-C in the first half second, as d2lrun.cli imported Hydra: a KeyboardInterrupt
    traceback. The command's modules are imported inside handle."""
    import builtins

    from d2lrun.cli import train_main

    real = builtins.__import__

    def interrupted(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "d2lrun" and "app" in (fromlist or ()):
            raise KeyboardInterrupt
        return real(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    monkeypatch.setattr(sys, "argv", ["d2lrun", f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as e:
        train_main()
    assert e.value.code == 130 and not (tmp_path / "run").exists()
    assert one_line(capsys) == "d2lrun: error: interrupted before anything was saved."


@pytest.mark.parametrize("oc_cause", ["0", "1"])
def test_omegaconfs_errors_read_the_same_under_a_debugger(monkeypatch, oc_cause):
    """Under a debugger (or OC_CAUSE=1) OmegaConf chains an inner error with no key as the cause:
    d2lrun-predict without input= said AttributeError: 'NoneType' object has no attribute ..."""
    from omegaconf import OmegaConf

    from d2lrun.config.messages import explain

    monkeypatch.setenv("OC_CAUSE", oc_cause)
    with pytest.raises(Exception) as e:
        OmegaConf.to_container(OmegaConf.create({"input": "???"}), throw_on_missing=True)
    assert str(explain(e.value)) == "input is required. Fix: input=new.csv."
    with pytest.raises(Exception) as e:
        config.compose(["optim.lr=fast"])
    assert str(explain(e.value)) == "optim.lr=fast is not a number. Fix: optim.lr=0.03."


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_ctrl_c_in_eval_or_predict_says_nothing_was_written(tmp_path, capsys, monkeypatch, command):
    """It said "interrupted before training started", of a command that trains nothing."""
    import d2lrun.reload as reload_mod
    from d2lrun import app

    assert run_in_process(tmp_path, "trainer.epochs=1") == 0
    monkeypatch.setattr(reload_mod, f"{command}_{'run' if command == 'evaluate' else 'file'}",
                        lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))  # fmt: skip
    (tmp_path / "x.csv").write_text("x0,x1\n1,2\n")
    args = [f"run={tmp_path / 'run'}", f"input={tmp_path / 'x.csv'}"][: 1 + (command == "predict")]
    with pytest.raises(SystemExit) as e:
        handle("d2lrun", lambda: getattr(app, command)(args))
    assert e.value.code == 130
    assert one_line(capsys) == "d2lrun: error: interrupted before anything was saved."
    assert not (tmp_path / "run" / "predictions.csv").exists()


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_eval_or_predict_without_a_run_says_how_to_name_one(tmp_path, monkeypatch, command):
    from d2lrun import app
    from d2lrun.errors import UsageError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as e:
        getattr(app, command)(["input=x.csv"][: command == "predict"])
    assert str(e.value) == (
        "say which run. Fix: run=outputs/DATE/TIME (a run folder) or ckpt=PATH (a .pt file)."
    )


def test_a_target_beyond_float32_is_one_line_without_numpys_warning(tmp_path, capsys):
    """-1e39 in the target: pandas' "RuntimeWarning: overflow encountered in cast" came first."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err = csv_run(tmp_path, capsys, GOOD + "3,a,-1e39\n")
    assert [str(w.message) for w in caught] == [] and code == 2
    assert err == (
        f"d2lrun: error: column(s) ['y'] of {tmp_path / 'data.csv'} hold infinite values or "
        f"values beyond float32's range (about 3.4e38), which the model cannot use. Fix: leave "
        f"those cells empty (missing), or give finite numbers within that range.\n"
    )


def test_predict_refuses_inputs_beyond_float32_in_one_line(tmp_path, capsys):
    """1e300 in a feature: d2lrun-predict wrote 'inf' predictions and exited 0."""
    from d2lrun import app

    assert csv_run(tmp_path, capsys, GOOD)[0] == 0
    (tmp_path / "new.csv").write_text("x,c\n1,a\n1e300,b\n")
    args = [f"run={tmp_path / 'run'}", f"input={tmp_path / 'new.csv'}"]
    with pytest.raises(SystemExit) as e:
        handle("d2lrun-predict", lambda: app.predict(args))
    assert e.value.code == 2 and not (tmp_path / "run" / "predictions.csv").exists()
    assert capsys.readouterr().err == (
        f"d2lrun-predict: error: column(s) ['x'] of input={tmp_path / 'new.csv'} hold infinite "
        "values or values beyond float32's range (about 3.4e38), which the model cannot use. "
        "Fix: leave those cells empty (missing), or give finite numbers within that range.\n"
    )
