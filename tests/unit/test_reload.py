"""Reloading a run: checkpoints loaded safely with clear errors, the run folder's checkpoint found,
weights loaded strictly, and the command line that composes a saved run again."""

import json
import os
import pickle
import re
import shutil
import textwrap
import zipfile
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from d2lrun.config import checked, compose, new_overrides
from d2lrun.errors import UsageError
from d2lrun.files import save_torch
from d2lrun.models import load_state_dict_strict
from d2lrun.reload import (
    FORMAT,
    evaluate_run,
    find_checkpoint,
    load_checkpoint,
    load_run,
    merge_overrides,
    predict_file,
    resume_checkpoint,
    run_overrides,
)


def save_checkpoint(path, ckpt):
    """A checkpoint as the job writes it: its dict, marked as d2lrun's format."""
    save_torch(path, {"format": FORMAT, **ckpt})


class Exploit:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/d2lrun_pwned",))


def test_checkpoint_round_trip_is_plain_data(tmp_path):
    ckpt = {
        "model": {"0.weight": torch.randn(1, 2)},
        "epoch": 3,
        "history": [{"epoch": 1, "val_loss": 0.5}],
        "rng": {"torch": torch.get_rng_state()},
        "config": {"optim": {"lr": 0.1}},
        "spec": {"class_names": None},
    }
    save_checkpoint(tmp_path / "c.pt", ckpt)
    # torch's own safe loader reads it back: nothing but tensors and containers in the file.
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    assert loaded["format"] == "d2lrun-checkpoint" and loaded["config"] == {"optim": {"lr": 0.1}}
    assert torch.equal(loaded["model"]["0.weight"], ckpt["model"]["0.weight"])
    assert torch.equal(loaded["rng"]["torch"], ckpt["rng"]["torch"])
    assert {k: v for k, v in loaded.items() if k not in ("model", "rng", "format")} == {
        k: v for k, v in ckpt.items() if k not in ("model", "rng")
    }
    ours = load_checkpoint(tmp_path / "c.pt")  # d2lrun's loader returns the same dict
    assert sorted(ours) == sorted(loaded)
    assert torch.equal(ours["model"]["0.weight"], ckpt["model"]["0.weight"])


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Exploit()}, path)
    if os.path.exists("/tmp/d2lrun_pwned"):
        os.remove("/tmp/d2lrun_pwned")
    # The line names what the file would have called (posix.system on Linux, nt.system on Windows).
    with pytest.raises(UsageError, match=r"refused: it would run code .*\(\w+\.system\)\. Fix:"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/d2lrun_pwned")


def test_a_checkpoint_written_on_a_gpu_loads_on_a_machine_without_one(tmp_path):
    """The storages of a checkpoint saved from CUDA tensors say "cuda:0"; load_checkpoint maps them
    to the CPU, so a run trained on a GPU is evaluated, predicted or resumed on a laptop."""
    save_checkpoint(tmp_path / "cpu.pt", {"model": {"w": torch.ones(2)}})
    with zipfile.ZipFile(
        tmp_path / "cpu.pt"
    ) as z:  # rewrite the storage location, as CUDA saves it
        files = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in files if n.endswith("/data.pkl"))
    files[pkl] = files[pkl].replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
    assert b"cuda:0" in files[pkl]
    with zipfile.ZipFile(tmp_path / "gpu.pt", "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    w = load_checkpoint(tmp_path / "gpu.pt")["model"]["w"]
    assert w.device == torch.device("cpu") and torch.equal(w, torch.ones(2))


RETRAIN = r"\. Fix: use another checkpoint of the run \(last.pt, best.pt\) or train again\.$"
SAVE = "np.save(FILE, array), or torch.save(tensor, FILE) (torch.from_numpy(array))."


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
@pytest.mark.parametrize(
    "content",
    [
        b"hello, not a checkpoint",
        b"PK\x03\x04 a damaged zip",  # torch's first line here is longer than the 120 shown
        b"\x80\x02]q\x00.",
        pickle.dumps([1, 2], protocol=4),  # a pickle, but not one torch.save writes
    ],
)
def test_garbage_files_get_one_clear_error_with_torchs_reason(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(Exception) as theirs:  # what torch itself says about the file
        torch.load(path, map_location="cpu", weights_only=True)
    reason = str(theirs.value).splitlines()[0] if str(theirs.value) else ""
    with pytest.raises(UsageError) as ours:
        load_checkpoint(path)
    assert str(ours.value).startswith(f"{path} is truncated or not a checkpoint (")
    assert re.search(RETRAIN, str(ours.value))
    if isinstance(theirs.value, pickle.UnpicklingError):
        assert "(unpickling failed)" in str(ours.value)
    else:  # the kind of failure and torch's first line, for a bug report
        shown = textwrap.shorten(reason, 120, placeholder=" ...")  # whole words
        assert f"({type(theirs.value).__name__}: {shown})" in str(ours.value)


def test_an_empty_file_names_the_error_without_a_dangling_colon(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(
        UsageError, match=r"is truncated or not a checkpoint \(EOFError\)" + RETRAIN
    ):
        load_checkpoint(tmp_path / "empty.pt")


@pytest.mark.parametrize("obj,kind", [(torch.ones(2), "Tensor"), ([1, 2], "list")])
def test_a_file_of_torch_save_that_is_not_a_dict_is_refused(tmp_path, obj, kind):
    torch.save(obj, tmp_path / "x.pt")
    with pytest.raises(UsageError, match=rf"x.pt holds a {kind}, not a checkpoint dict\. Fix:"):
        load_checkpoint(tmp_path / "x.pt")


def test_a_bare_state_dict_is_not_a_full_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_torch(run / "model.pt", {"w": torch.ones(2)})
    assert torch.equal(load_checkpoint(run / "model.pt")["w"], torch.ones(2))  # loads as it is
    bare = r"model.pt is a bare state_dict without its config; eval needs last.pt or best.pt\. "
    with pytest.raises(UsageError, match=bare + r"Fix: give a run folder d2lrun wrote \(its"):
        load_checkpoint(run / "model.pt", needs="eval")  # not this folder: it has no last.pt
    save_checkpoint(run / "last.pt", {"epoch": 1})
    assert load_checkpoint(run / "last.pt", needs="eval")["epoch"] == 1
    with pytest.raises(
        UsageError, match=bare + rf"Fix: give the run folder {re.escape(str(run))} \(its last.pt"
    ):
        load_checkpoint(run / "model.pt", needs="eval")


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "t.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(1000)}})
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(UsageError, match="truncated or not a checkpoint"):
        load_checkpoint(path)


def test_missing_paths(tmp_path):
    with pytest.raises(UsageError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(UsageError, match=r"is a directory\. Fix: give a .pt file in it, or the"):
        load_checkpoint(tmp_path)
    with pytest.raises(UsageError, match=r"has no last.pt \(it has: no .pt files\)\. Fix:"):
        find_checkpoint(tmp_path)
    with pytest.raises(UsageError, match="no such run folder"):
        find_checkpoint(tmp_path / "nope")
    (tmp_path / "10-49-40").mkdir()  # a typo: the nearest name is offered, no other
    with pytest.raises(UsageError) as e:
        find_checkpoint(tmp_path / "10-49-4")
    assert str(e.value) == (f"{tmp_path / '10-49-4'}: no such run folder or checkpoint. Fix: "
                            f"{tmp_path / '10-49-40'} (the nearest there), or give a path under "
                            f"outputs/.")  # fmt: skip
    (tmp_path / "10-49-41").mkdir()  # as near: both
    with pytest.raises(UsageError, match=r"Fix: \S+10-49-4\d or \S+10-49-4\d \(the nearest"):
        find_checkpoint(tmp_path / "10-49-4")
    with mock.patch.object(Path, "iterdir", side_effect=PermissionError(13, "Permission denied")):
        with pytest.raises(UsageError, match=r"\. Fix: give a path under outputs/\.$"):
            find_checkpoint(tmp_path / "10-49-4")  # a folder it may not read: the line alone
    with pytest.raises(UsageError, match=r"\. Fix: give a path under outputs/\.$"):
        find_checkpoint(tmp_path / "11-02-13")


def test_a_run_folder_without_last_pt_lists_the_checkpoints_it_has(tmp_path):
    """A Fix offered model.pt, or a file d2lrun never wrote, whose own error offered the folder
    back ('is a bare state_dict without its config ... Fix: give the run folder')."""
    save_torch(tmp_path / "model.pt", {"w": torch.ones(2)})
    save_torch(tmp_path / "foreign.pt", {"foo": 1})
    (tmp_path / "notes.txt").write_bytes(b"")
    with pytest.raises(UsageError) as e:
        find_checkpoint(tmp_path)
    assert str(e.value) == (f"{tmp_path} has no last.pt (it has: foreign.pt, model.pt). "
                            f"Fix: give a run folder that finished an epoch.")  # fmt: skip
    for name in ("foreign.pt", "model.pt"):
        with pytest.raises(UsageError, match=r"Fix: give a run folder d2lrun wrote \(its"):
            load_checkpoint(tmp_path / name, needs="resuming")
    save_checkpoint(tmp_path / "other.pt", {"epoch": 1})
    with pytest.raises(UsageError) as e:
        find_checkpoint(tmp_path)
    fix = f"or one of its .pt files ({tmp_path / 'other.pt'})."  # resume=, run= or ckpt= take it
    assert str(e.value).endswith(fix)
    assert find_checkpoint(tmp_path / "model.pt") == tmp_path / "model.pt"
    (tmp_path / "best.pt").write_bytes(b"")  # killed before trainer.checkpoint_every's last.pt
    assert find_checkpoint(tmp_path) == tmp_path / "best.pt"


def test_a_folder_of_runs_given_as_a_run_names_the_latest_below_it(tmp_path):
    """d2lrun-predict run=outputs said only 'has no last.pt (it has: no .pt files)'."""
    for i, time in enumerate(("10-00-00", "11-00-00")):
        run = tmp_path / "outputs" / "2026-12-06" / time
        run.mkdir(parents=True)
        save_checkpoint(run / "last.pt", {"epoch": 1})
        os.utime(run / "last.pt", (1e9 + i, 1e9 + i))
    with pytest.raises(UsageError) as e:
        find_checkpoint(tmp_path / "outputs")
    assert str(e.value) == (
        f"{tmp_path / 'outputs'} has no last.pt (it has: no .pt files). Fix: give a run folder "
        f"that finished an epoch, such as the latest below it, {run}."
    )
    with pytest.raises(UsageError) as e:  # two levels down, as outputs/ holds them: never a
        find_checkpoint(tmp_path)  # walk of a whole disk (run=/) on the way to an error line
    assert str(e.value).endswith("Fix: give a run folder that finished an epoch.")


def test_a_sweep_folder_given_as_a_run_names_one_of_its_jobs(tmp_path):
    """It said 'has no last.pt (it has: no .pt files). Fix: give a run folder that finished an
    epoch', to d2lrun-eval run=, d2lrun-predict run= and resume= alike."""
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")
    (tmp_path / "0").mkdir()
    with pytest.raises(UsageError) as e:
        find_checkpoint(tmp_path)
    assert str(e.value) == (
        f"{tmp_path} is a sweep's folder: each job is a run of its own, in 0/, 1/, ... "
        f"Fix: give one job, e.g. {tmp_path / '0'}."
    )


def test_architecture_mismatch_lists_keys_and_shapes():
    net = torch.nn.Sequential(torch.nn.Linear(2, 1))
    other = {"0.weight": torch.zeros(3, 2), "1.bias": torch.zeros(1)}
    with pytest.raises(UsageError) as e:
        load_state_dict_strict(net, other, "x.pt")
    assert str(e.value) == (
        "x.pt was saved from another architecture: missing keys ['0.bias']; "
        "unexpected keys ['1.bias']; shape mismatches ['0.weight (3, 2) vs (1, 2)']. "
        "Fix: rebuild the model with the run's own config (d2lrun-eval run=DIR does)."
    )


WIDE = torch.nn.Sequential(
    *[torch.nn.Linear(2, 2) for _ in range(5)]
)  # 10 tensors of shape (2, 2), (2,)


@pytest.mark.parametrize(
    "state,only",
    [
        ({}, "missing keys ['0.weight', '0.bias', '1.weight', '1.bias', '2.weight', '2.bias']"),
        (
            {**WIDE.state_dict(), **{f"x{i}": torch.zeros(1) for i in range(8)}},
            "unexpected keys ['x0', 'x1', 'x2', 'x3', 'x4', 'x5']",
        ),
        (
            {k: torch.zeros(3, *v.shape[1:]) for k, v in WIDE.state_dict().items()},
            (
                "shape mismatches ['0.weight (3, 2) vs (2, 2)', '0.bias (3,) vs (2,)', "
                "'1.weight (3, 2) vs (2, 2)', '1.bias (3,) vs (2,)']"
            ),
        ),
    ],
    ids=["missing", "unexpected", "shapes"],
)
def test_each_kind_of_mismatch_alone_is_one_line_naming_the_first_few(state, only):
    with pytest.raises(UsageError) as e:
        load_state_dict_strict(WIDE, state, "x.pt")
    assert str(e.value) == (
        f"x.pt was saved from another architecture: {only}. "
        "Fix: rebuild the model with the run's own config (d2lrun-eval run=DIR does)."
    )


def test_a_matching_state_dict_is_loaded():
    net = torch.nn.Sequential(torch.nn.Linear(2, 1))
    state = {"0.weight": torch.tensor([[1.0, 2.0]]), "0.bias": torch.tensor([3.0])}
    load_state_dict_strict(net, state, "x.pt")
    assert net(torch.tensor([[1.0, 1.0]])).item() == 6.0


def test_merge_overrides_lets_a_key_set_again_replace_the_old_one():
    saved = ["optim.lr=0.1", "trainer.epochs=2", "model=mlp"]
    assert merge_overrides(saved, ["optim.lr=0.3"]) == [
        "trainer.epochs=2",
        "model=mlp",
        "optim.lr=0.3",
    ]
    assert merge_overrides(saved, []) == saved and merge_overrides([], ["seed=1"]) == ["seed=1"]
    # + and ~ say how to set a key, not which: +model.x=1 is model.x too.
    assert merge_overrides(["+model.x=1", "seed=1"], ["model.x=2"]) == ["seed=1", "model.x=2"]


def test_new_overrides_are_those_that_set_another_value_as_a_shell_takes_them():
    saved = ["dataset.root=/data", "optim.lr=0.1", "trainer.epochs=1"]
    now = ["dataset.root='/data'", "optim.lr=0.1", "trainer.epochs=3", "dataset.path='a b.csv'"]
    # '/data' quoted is /data: the same value, not a change the user made
    assert new_overrides(saved, now) == ["trainer.epochs=3", "\"dataset.path='a b.csv'\""]
    assert new_overrides(saved, saved) == []


def test_merge_overrides_drops_the_keys_of_a_group_option_that_is_switched():
    mlflow = ["optim.lr=0.1", "logger=mlflow", "logger.tracking_uri='sqlite:////x/m.db'"]
    assert merge_overrides(mlflow, ["logger=none"]) == ["optim.lr=0.1", "logger=none"]
    # The same option again keeps its keys.
    assert merge_overrides(mlflow, ["logger=mlflow", "trainer.epochs=4"]) == [
        "optim.lr=0.1",
        "logger.tracking_uri='sqlite:////x/m.db'",
        "logger=mlflow",
        "trainer.epochs=4",
    ]
    joblib = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "+hydra.launcher.x=1", "seed=3"]
    assert merge_overrides(joblib, ["hydra/launcher=basic"]) == ["seed=3", "hydra/launcher=basic"]
    assert merge_overrides(["model=mlp", "model.num_hiddens=[64]"], ["model=lenet"]) == [
        "model=lenet"
    ]
    assert merge_overrides(["model=mlp", "model.num_hiddens=[64]"], ["model.num_hiddens=[32]"]) == [
        "model=mlp",
        "model.num_hiddens=[32]",
    ]


def test_merge_overrides_passes_flags_through_before_every_override():
    """Hydra reads the overrides as one run of arguments: the saved ones, then --cfg job, then
    the user's were refused ('unrecognized arguments')."""
    assert merge_overrides(["optim.lr=0.1", "seed=1"], ["-m", "optim.lr=0.1,0.2"]) == [
        "-m",
        "seed=1",
        "optim.lr=0.1,0.2",
    ]
    assert merge_overrides(["seed=1"], ["--multirun"]) == ["--multirun", "seed=1"]
    assert merge_overrides(["seed=1"], ["resume=r", "--cfg", "job", "seed=2"]) == [
        "--cfg",
        "job",
        "resume=r",
        "seed=2",
    ]


def test_values_with_spaces_and_quotes_survive_hydras_parser():
    saved = [
        "dataset=csv",
        "dataset.path='/data/my file.csv'",
        r"dataset.target='it\'s'",
        "dataset.drop=['a b',c]",
    ]
    merged = merge_overrides(saved, ["trainer.epochs=2"])
    assert merged == [*saved, "trainer.epochs=2"]  # each as it was typed
    cfg = compose(merged)
    assert (cfg.dataset.path, cfg.dataset.target, cfg.trainer.epochs) == (
        "/data/my file.csv",
        "it's",
        2,
    )
    assert list(cfg.dataset.drop) == ["a b", "c"]
    again = compose(merge_overrides(merged, ["dataset.target='price (€)'"]))
    assert again.dataset.target == "price (€)" and again.dataset.path == "/data/my file.csv"


def saved_run(overrides, where):
    """A checkpoint's overrides and config as a run started in folder `where` keeps them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(where)
        cfg = checked(compose(overrides))
    return {"overrides": list(overrides), "config": OmegaConf.to_container(cfg, resolve=True)}


def test_run_overrides_put_the_saved_runs_absolute_data_and_mlflow_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    start = tmp_path / "it's here"  # a quote and a space in the paths
    start.mkdir()
    typed = ["dataset=csv", "dataset.path=data/t.csv", "dataset.target=y", "logger=mlflow"]
    ckpt = saved_run(typed, start)
    path, uri = f"{start}/data/t.csv", f"sqlite:///{start}/outputs/mlflow.db"
    quoted = str(start).replace("'", "\\'")
    assert run_overrides(ckpt) == [
        "dataset=csv",
        "dataset.target=y",
        "logger=mlflow",
        f"dataset.path='{quoted}/data/t.csv'",
        f"logger.tracking_uri='sqlite:///{quoted}/outputs/mlflow.db'",
    ]
    monkeypatch.chdir(tmp_path)  # elsewhere: the same files
    cfg = compose(run_overrides(ckpt, ["trainer.epochs=5"]))
    assert (cfg.dataset.path, cfg.logger.tracking_uri, cfg.trainer.epochs) == (path, uri, 5)
    assert (cfg.dataset.target, cfg.model.name) == ("y", "linreg")
    # New overrides come last and win; another logger drops the MLflow store.
    assert run_overrides(ckpt, ["dataset.path=/new.csv"])[-1] == "dataset.path=/new.csv"
    assert compose(run_overrides(ckpt, ["dataset.path=/new.csv"])).dataset.path == "/new.csv"
    none = run_overrides(ckpt, ["logger=none"])
    assert none[-1] == "logger=none" and not [o for o in none if "tracking_uri" in o]
    compose(none)  # logger=none has no tracking_uri: it composes
    for model in ("model=softmax", "model=linreg,softmax", "model=choice(softmax,mlp)"):
        with pytest.raises(UsageError) as e:  # a sweep's said 'tags=', then dataset.num_train
            run_overrides(ckpt, [model], "resume=R")
        assert str(e.value) == (
            "resume=R cannot change model.name (the run has model.name=linreg, asked "
            f"model.name=softmax). Fix: drop {model}, or start a new run."
        )
    for same in ("model=linreg", "model=linreg,linreg", "model=glob(lin*)", "~model"):
        assert run_overrides(ckpt, [same], "resume=R")[-1] == same  # a glob: left to its jobs
    # A preset of another model: it said 'dataset.target is not a key of dataset=fashion_mnist'
    with pytest.raises(UsageError) as e:
        run_overrides(ckpt, ["experiment=ch3_softmax_concise"], "resume=R")
    assert str(e.value) == (
        "resume=R cannot change model.name (the run has model.name=linreg, asked "
        "model.name=softmax). Fix: drop experiment=ch3_softmax_concise, or start a new run."
    )


def test_a_change_a_preset_makes_is_refused_with_the_preset_to_drop():
    """resume=RUN experiment=ch4_poly_third of a ch6_learn_kernel run said "Fix: drop
    model=linreg", which the command never had."""
    from d2lrun.reload import check_same_meaning

    saved = OmegaConf.to_container(compose(["experiment=ch6_learn_kernel"]), resolve=True)
    typed = ["experiment=ch4_poly_third", "trainer.epochs=20"]
    with pytest.raises(UsageError) as e:
        check_same_meaning(saved, compose(typed), "resume=R", overrides=typed)
    assert str(e.value) == (
        "resume=R cannot change model.name (the run has model.name=conv2d, asked "
        "model.name=linreg). Fix: drop experiment=ch4_poly_third, or start a new run."
    )
    typed = ["experiment=ch6_learn_kernel", "optim=adam"]  # the group typed: that one
    with pytest.raises(UsageError, match="Fix: drop optim=adam, or start"):
        check_same_meaning(saved, compose(typed), "resume=R", ("optim.name",), typed)


def test_run_overrides_put_the_saved_runs_absolute_data_root(tmp_path):
    ckpt = saved_run(["model=softmax", "dataset.root=data"], tmp_path)
    assert run_overrides(ckpt) == ["model=softmax", f"dataset.root='{tmp_path}/data'"]
    assert compose(run_overrides(ckpt)).dataset.root == f"{tmp_path}/data"


# A saved run reloaded in this process (the commands' e2e tests run the same through subprocesses,
# where mutation testing cannot see them): load_run, evaluate_run, predict and predict_file.


def trained(run_dir, *overrides):
    """A run trained by d2lrun.kfold.train into run_dir, on the CPU, as `d2lrun OVERRIDES` would."""
    from d2lrun.kfold import train

    args = ["device=cpu", "trainer.progress=false", *overrides]
    train(compose(args), run_dir, args, log=lambda *_: None)
    return run_dir


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A regression run on a CSV with an id, missing numbers and a text column (§2.2)."""
    import numpy as np
    import pandas as pd

    tmp = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    n = 120
    size, color = rng.normal(0, 1, n), rng.choice(["red", "blue"], n)
    price = 100 + 20 * size + 5 * (color == "red") + rng.normal(0, 1, n)
    size[::10] = np.nan
    frame = pd.DataFrame({"Id": range(n), "size": size, "color": color, "price": price})
    frame.to_csv(tmp / "t.csv", index=False)
    run = trained(tmp / "run", "dataset=csv", f"dataset.path={tmp / 't.csv'}",
                  "dataset.target=price", "dataset.drop=[Id]", "trainer.epochs=3",
                  "trainer.log_rmse=true")  # fmt: skip
    return run, frame


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    from tests.conftest import write_fake_fashion_mnist

    root = write_fake_fashion_mnist(tmp_path_factory.mktemp("fm"))
    run = trained(tmp_path_factory.mktemp("images") / "run", "model=softmax",
                  f"dataset.root={root}", "dataset.download=false", "trainer.batch_size=16",
                  "trainer.epochs=2")  # fmt: skip
    return run, root


def test_load_run_gives_the_final_weights_config_and_files_of_the_run(table_run):
    from d2lrun.reload import load_run

    folder, _ = table_run
    run = load_run(folder)
    final = torch.load(folder / "model.pt", weights_only=True)
    assert run.model.state_dict().keys() == final.keys()
    assert all(torch.equal(v, final[k]) for k, v in run.model.state_dict().items())
    assert not run.model.training and run.device == torch.device("cpu")
    assert run.checkpoint == folder / "last.pt" and run.run_dir == folder
    assert (run.config.dataset.target, run.config.trainer.epochs) == ("price", 3)
    assert run.spec.task == "regression" and run.spec.drop == ["Id"]
    assert list(run.metrics["epoch"]) == [1, 2, 3]
    assert run.summary["status"] == "completed" and run.summary["epochs_completed"] == 3
    figure = run.plot()
    assert figure.axes[0].get_xlabel() == "epoch" and figure.axes[0].get_ylabel() == "loss"
    assert figure._suptitle.get_text() == "linreg on csv"
    with pytest.raises(UsageError, match=r"has no eval\.json\. Fix: load_run the run folder"):
        run.file("eval.json")


def test_a_run_killed_before_it_ended_has_its_checkpoints_metrics_and_says_how_to_finish(
    table_run, tmp_path
):
    """kill -9 before the run's end: no metrics.csv or .json, only last.pt with its history."""
    from d2lrun.reload import load_run

    folder = Path(shutil.copytree(table_run[0], tmp_path / "run"))
    rows = pd.read_csv(folder / "metrics.csv")
    (folder / "metrics.csv").unlink()
    (folder / "metrics.json").unlink()
    run = load_run(folder)
    pd.testing.assert_frame_equal(run.metrics, rows)
    with pytest.raises(UsageError) as e:
        _ = run.summary
    assert str(e.value) == (
        f"{folder} has no metrics.json: the run has not ended (it runs, or was killed). "
        f"Fix: d2lrun.train('resume={folder}') to finish it, or run.metrics."
    )


def test_load_run_of_one_checkpoint_has_that_checkpoints_weights(table_run):
    from d2lrun.reload import load_run

    folder, _ = table_run
    ckpt = torch.load(folder / "best.pt", weights_only=True)
    ckpt["model"] = {k: v * 2 for k, v in ckpt["model"].items()}  # unlike model.pt beside it
    save_torch(folder / "other.pt", ckpt)
    run = load_run(ckpt=folder / "other.pt")
    assert run.checkpoint == folder / "other.pt"
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in run.model.state_dict().items())
    with pytest.raises(UsageError, match=r"model\.pt is a bare state_dict without its config; "
                       r"reloading needs last\.pt or best\.pt"):  # fmt: skip
        load_run(ckpt=folder / "model.pt")


def test_load_run_refuses_overrides_that_change_what_the_weights_mean(table_run):
    from d2lrun.reload import load_run

    folder, _ = table_run
    with pytest.raises(UsageError) as e:
        load_run(folder, overrides=["model=mlp"])
    assert str(e.value) == (
        f"{folder / 'last.pt'} cannot change model.name (the run has model.name=linreg, asked "
        f"model.name=mlp). Fix: drop model=mlp, or start a new run."
    )
    assert load_run(folder, overrides=["trainer.epochs=9"]).config.trainer.epochs == 9
    # An image model names Fashion-MNIST when no dataset= is given: the run's own dataset.* keys
    # then failed ("dataset.num_train is not a key of dataset=fashion_mnist") before this line.
    synthetic = trained(folder.parent / "synthetic", "dataset.num_train=50", "trainer.epochs=1")
    with pytest.raises(UsageError, match=r"cannot change model\.name \(the run has model\.name="):
        load_run(synthetic, overrides=["model=mlp"])


def test_evaluate_run_gives_the_runs_own_final_validation_metrics(table_run, image_run):
    from d2lrun.reload import evaluate_run, load_run

    for folder, keys in ((table_run[0], ("val_loss", "val_rmse", "val_log_rmse")),
                         (image_run[0], ("val_loss", "val_acc"))):  # fmt: skip
        final = json.loads((folder / "metrics.json").read_text())["final"]
        metrics = evaluate_run(load_run(folder))
        assert set(metrics) == set(keys)
        assert metrics == {k: final[k] for k in keys}  # the same computation: exactly


def test_a_value_given_as_an_interpolation_reloads_as_the_run_resolved_it(tmp_path):
    """seed=${hydra:job.num} in a sweep: eval, predict and resume= of its jobs each said
    'cannot resolve a ${...} of the config' (job.num is None outside the job)."""
    from d2lrun.app import sweep
    from d2lrun.reload import evaluate_run, load_run

    sweep(["seed=${hydra:job.num}", "optim.lr=0.03,0.1", "trainer.epochs=1",
           "trainer.progress=false", f"hydra.sweep.dir={tmp_path}"])  # fmt: skip
    run = load_run(tmp_path / "1")
    assert run.config.seed == 1
    final = json.loads((tmp_path / "1" / "metrics.json").read_text())["final"]
    assert evaluate_run(run) == {k: final[k] for k in ("val_loss", "val_rmse")}
    ckpt = resume_checkpoint(str(tmp_path / "1"))
    assert compose(run_overrides(ckpt, ["trainer.epochs=2"])).seed == 1
    given = ["dataset=csv", "dataset.path=x.csv", "dataset.target=y", "dataset.drop=['Größe']"]
    ckpt = {"config": OmegaConf.to_container(compose(given)),
            "overrides": [*given[:3], "dataset.drop=[${oc.env:UNSET_HERE}]"]}  # fmt: skip
    assert list(compose(run_overrides(ckpt)).dataset.drop) == ["Größe"]  # a list, pinned too


def test_eval_of_another_csv_transforms_it_with_the_runs_own_statistics(tmp_path):
    """d2lrun-eval dataset.path=OTHER.csv: the columns in another order, or a category new since
    training, mean what they meant when the run trained (as in predictions)."""
    import numpy as np
    import pandas as pd

    from d2lrun import app
    from d2lrun.reload import evaluate_run, load_run

    rng = np.random.default_rng(0)
    rooms, area, color = rng.normal(3, 1, 60), rng.normal(100, 30, 60), rng.choice(["a", "b"], 60)
    frame = pd.DataFrame({"rooms": rooms, "area": area, "color": color,
                          "price": 10 * rooms + area + 5 * (color == "a")})  # fmt: skip
    frame.to_csv(tmp_path / "t.csv", index=False)
    run = trained(tmp_path / "run", "dataset=csv", f"dataset.path={tmp_path / 't.csv'}",
                  "dataset.target=price", "trainer.epochs=2")  # fmt: skip
    own = evaluate_run(load_run(run))
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert own == {k: final[k] for k in own}  # its own file: the run's final numbers, exactly

    def evaluated(name: str, rows: pd.DataFrame) -> dict:
        rows.to_csv(tmp_path / name, index=False)
        return evaluate_run(load_run(run, overrides=[f"dataset.path={tmp_path / name}"]))

    assert evaluated("moved.csv", frame) == own  # the same file elsewhere: the same split
    # Another file: every row of it (it scored the held-out 20% its seed picks, as test data).
    every = evaluated("extra.csv", frame.assign(note="x"))
    errors = np.array(load_run(run).predict(frame)) - frame.price.to_numpy()
    assert set(every) == {"test_loss", "test_rmse"}
    assert every["test_rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)), rel=1e-5)
    # Not refitted: area is not taken for rooms, and the statistics are the run's own.
    assert evaluated("reordered.csv", frame[["area", "rooms", "price", "color"]]) == every
    green = evaluated("green.csv", frame.assign(color=frame.color.where(frame.index % 7 > 0, "c")))
    assert set(green) == set(every)  # a new category: all zeros in its one-hot columns, no crash
    assert set(evaluated("one.csv", frame[:1])) == set(every)  # too few rows to hold any out
    for data in ([], [f"dataset.path={tmp_path / 'extra.csv'}"]):  # d2lrun-eval: the run's own
        app.evaluate([f"run={run}", *data])  # eval.json stays, the other file's goes beside it
    assert json.loads((run / "eval.json").read_text())["val_loss"] == own["val_loss"]
    assert json.loads((run / "eval-extra.json").read_text())["data"] == str(tmp_path / "extra.csv")


def test_eval_refuses_a_class_the_run_never_learned(tmp_path):
    import pandas as pd

    from d2lrun.reload import evaluate_run, load_run

    rows = pd.DataFrame({"x": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "y": ["a", "b"] * 3})
    rows.to_csv(tmp_path / "ab.csv", index=False)
    run = trained(tmp_path / "run", "dataset=csv", f"dataset.path={tmp_path / 'ab.csv'}",
                  "dataset.target=y", "model=softmax", "trainer.epochs=1")  # fmt: skip
    rows.assign(y=["a", "b", "c"] * 2).to_csv(tmp_path / "abc.csv", index=False)
    with pytest.raises(UsageError) as e:
        evaluate_run(load_run(run, overrides=[f"dataset.path={tmp_path / 'abc.csv'}"]))
    assert str(e.value) == (
        f"class(es) ['c'] of 'y' in {tmp_path / 'abc.csv'} are not among the run's classes (a, b). "
        "Fix: give rows of those classes only, or train anew."
    )


def test_eval_reads_true_and_false_as_the_classes_they_name_in_a_file_of_other_text(tmp_path):
    """TRUE beside 'maybe' is text to pandas: eval named TRUE among the classes never learned."""
    classes = ["True", "False", "maybe"]
    (tmp_path / "t.csv").write_text(
        "x,ok\n" + "".join(f"{i},{classes[i % 3]}\n" for i in range(12))
    )
    run = trained(tmp_path / "run", "dataset=csv", f"dataset.path={tmp_path / 't.csv'}",
                  "dataset.target=ok", "model=softmax", "trainer.epochs=1")  # fmt: skip

    def evaluated(rows: str) -> dict:
        (tmp_path / "e.csv").write_text("x,ok\n" + rows)
        return evaluate_run(load_run(run, overrides=[f"dataset.path={tmp_path / 'e.csv'}"]))

    with pytest.raises(UsageError, match=r"^class\(es\) \['no'\] of 'ok' in .*e\.csv are not"):
        evaluated("1,TRUE\n2,no\n")
    assert evaluated("1,TRUE\n2,maybe\n3,false\n") == evaluated("1,True\n2,maybe\n3,False\n")


def test_predict_gives_the_target_in_its_own_units(table_run):
    from d2lrun.data.csv import transform
    from d2lrun.reload import load_run

    folder, frame = table_run
    run = load_run(folder)
    rows = frame.drop(columns="price").head(12)
    scale = run.spec.target_scale
    with torch.no_grad():
        expected = run.model(torch.from_numpy(transform(rows, run.spec.preprocess)))
    expected = (expected * scale["std"] + scale["mean"]).reshape(-1).tolist()
    assert run.predict(rows) == pytest.approx(expected, rel=1e-6)
    # A fitted run predicts prices near the true ones (100 + 20 size + 5 red, noise 1).
    truth = frame.price.head(12)[rows["size"].notna()]
    got = [p for p, ok in zip(run.predict(rows), rows["size"].notna(), strict=True) if ok]
    assert max(abs(a - b) for a, b in zip(got, truth, strict=True)) < 30
    with pytest.raises(UsageError, match="predict takes a pandas DataFrame, not ndarray"):
        run.predict(rows.to_numpy())


def test_predict_file_writes_ids_beside_predictions_named_after_the_target(
    table_run, tmp_path, capsys
):
    import numpy as np
    import pandas as pd

    from d2lrun.reload import load_run, predict_file

    folder, frame = table_run
    run = load_run(folder)
    rows = frame.drop(columns="price").tail(7)
    rows.to_csv(tmp_path / "new.csv", index=False)
    assert predict_file(run, tmp_path / "new.csv", tmp_path / "out.csv") == 7
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["Id", "price"] and list(out.Id) == list(rows.Id)
    assert list(out.price) == pytest.approx(run.predict(rows), rel=1e-6)
    known = frame.tail(7)  # rows whose price is known: it stays, the predictions go beside it
    known.to_csv(tmp_path / "known.csv", index=False)
    predict_file(run, tmp_path / "known.csv", tmp_path / "out.csv")
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["Id", "price", "price_predicted"]
    assert list(out.price) == pytest.approx(list(known.price))
    assert list(out.price_predicted) == pytest.approx(run.predict(rows), rel=1e-6)
    for path in (tmp_path / "known.csv", str(tmp_path / "known.csv")):  # read as predict_file does
        assert run.predict(path) == list(out.price_predicted)
    for out in ("plain.csv", "out.csv.gz"):  # gzip, as a .gz input is read
        predict_file(run, tmp_path / "new.csv", tmp_path / out)
    assert pd.read_csv(tmp_path / "out.csv.gz").equals(pd.read_csv(tmp_path / "plain.csv"))
    padded = rows.head(3).assign(Id=["007", "", "00000"])  # written as they came, not 7.0 or 0
    padded.to_csv(tmp_path / "padded.csv", index=False)
    predict_file(run, tmp_path / "padded.csv", tmp_path / "out.csv")
    assert [ln.split(",")[0] for ln in (tmp_path / "out.csv").read_text().split()] == [
        "Id", "007", "", "00000"]  # fmt: skip
    rows.drop(columns="Id").to_csv(tmp_path / "no_id.csv", index=False)  # it was refused: new
    capsys.readouterr()  # rows may lack a dropped column (another target that would leak)
    assert predict_file(run, tmp_path / "no_id.csv", tmp_path / "out2.csv") == 7
    assert pd.read_csv(tmp_path / "out2.csv").columns.tolist() == ["price"]
    assert capsys.readouterr().err == (
        f"note: input={tmp_path / 'no_id.csv'} lacks the dataset.drop column(s) ['Id']: "
        "predictions without them\n"
    )
    with pytest.raises(UsageError, match=r"input=.*nothing\.csv: no such file\. Fix: give"):
        predict_file(run, tmp_path / "nothing.csv", tmp_path / "out3.csv")
    np.save(tmp_path / "rows.npy", np.zeros((2, 2)))
    with pytest.raises(
        UsageError, match=r"it takes CSV rows, not a \.npy array\. Fix: give a \.csv"
    ):
        predict_file(run, tmp_path / "rows.npy", tmp_path / "out4.csv")


def test_predict_says_which_categories_are_new_and_which_column_it_replaces(tmp_path, capsys):
    """A category the run never trained on ('A ' with its space, 'B') counts as none of its
    categories, and an earlier output's y_predicted given again is replaced: both were silent."""
    pd.DataFrame({"Zone": ["1", "2", "A"] * 10, "x": range(30), "y": [1.0, 5.0, 9.0] * 10}).to_csv(
        tmp_path / "t.csv", index=False
    )
    run = load_run(trained(tmp_path / "run", "dataset=csv", f"dataset.path={tmp_path / 't.csv'}",
                           "dataset.target=y", "trainer.epochs=2"))  # fmt: skip
    given = tmp_path / "given.csv"
    given.write_text("Zone,x,y,y_predicted\nA ,3,1.0,7\nB,4,,7\nA,5,,7\n")
    capsys.readouterr()
    assert predict_file(run, given, tmp_path / "out.csv") == 3
    assert capsys.readouterr().err == (
        f"note: 2 cell(s) in column 'Zone' of input={given} hold categories the run never trained "
        f"on, such as Zone='A ': each counts as none of them (all zeros)\n"
        f"note: input={given} has a column 'y_predicted' already: this run's predictions replace "
        f"it\n"
    )
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["Zone", "x", "y", "y_predicted"]
    assert list(out.y_predicted) == run.predict(given) != [7, 7, 7]


def test_a_category_that_looks_like_a_number_is_one_whatever_the_other_rows(tmp_path):
    """Zone was text in training (1, 2, A): in a file whose Zone has an empty cell, pandas alone
    reads 1 as the float 1.0, an unseen category; d2lrun reads the run's categories as text."""
    import pandas as pd

    from d2lrun.reload import load_run, predict_file

    pd.DataFrame({"Zone": ["1", "2", "A"] * 10, "x": range(30), "y": [1.0, 5.0, 9.0] * 10}).to_csv(
        tmp_path / "t.csv", index=False
    )
    run = load_run(trained(tmp_path / "run", "dataset=csv", f"dataset.path={tmp_path / 't.csv'}",
                           "dataset.target=y", "trainer.epochs=2"))  # fmt: skip
    (tmp_path / "a.csv").write_text("Zone,x\n1,3\n2,4\n")
    (tmp_path / "b.csv").write_text("Zone,x\n1,3\n,4\n")
    predict_file(run, tmp_path / "a.csv", tmp_path / "a_out.csv")
    predict_file(run, tmp_path / "b.csv", tmp_path / "b_out.csv")
    a, b = (pd.read_csv(tmp_path / f"{n}_out.csv") for n in "ab")
    (tmp_path / "c.csv").write_text("Zone,x,y\n1,3,1.0\n")  # the truth too: kept beside
    predict_file(run, tmp_path / "c.csv", tmp_path / "c_out.csv")
    c = pd.read_csv(tmp_path / "c_out.csv")
    assert list(c.columns) == ["Zone", "x", "y", "y_predicted"] and c.y[0] == 1.0
    assert c.y_predicted[0] == a.y[0]
    assert a.y[0] == b.y[0]
    assert (tmp_path / "b_out.csv").read_text().splitlines()[1].startswith("1,")  # as it was typed


def test_predict_takes_uint8_images_one_or_many(image_run, tmp_path):
    import numpy as np
    import pandas as pd

    from d2lrun.data import build_data
    from d2lrun.reload import load_run, predict_file

    folder, _ = image_run
    run = load_run(folder)
    _, val, _ = build_data(run.config.dataset, run.config.seed, run.device)  # its test images
    images = (val.X * 255).round().to(torch.uint8).reshape(-1, 28, 28)
    names = run.predict(images)
    with torch.no_grad():
        classes = run.model(images.unsqueeze(1).float() / 255).argmax(1).tolist()
    assert names == [run.spec.class_names[c] for c in classes]
    assert run.predict(images[0]) == names[:1]  # one image, (28, 28)
    with pytest.raises(UsageError, match=r"must be \(N, 28, 28\) uint8; got \(2, 27, 28\) uint8"):
        run.predict(images[:2, :27])
    with pytest.raises(UsageError, match=r"uint8; got \(2, 28, 28\) int64\. Fix: .* 0 to 255"):
        run.predict(images[:2].long())  # np.save of a copy made int64 or float64
    with pytest.raises(UsageError, match=r"^predict takes an array of inputs; DataFrame cannot"):
        run.predict(pd.DataFrame({"a": ["x", "y"]}))
    np.save(tmp_path / "x.npy", images[:5].numpy())
    torch.save(images[:5].clone(), tmp_path / "x.pt")
    for name in ("x.npy", "x.pt"):
        assert predict_file(run, tmp_path / name, tmp_path / "p.csv") == 5
        assert pd.read_csv(tmp_path / "p.csv").prediction.tolist() == names[:5]
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(UsageError, match=r"unknown kind of file\. Fix: give uint8 images in \.npy"):
        predict_file(run, tmp_path / "x.txt", tmp_path / "p.csv")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UsageError) as e:
        predict_file(run, tmp_path / "x.csv", tmp_path / "p.csv")
    assert str(e.value) == (
        f"input={tmp_path / 'x.csv'}: this run was not trained on a CSV table; it takes uint8 "
        f"images in .npy or .pt. Fix: save them with {SAVE}"
    )
    shutil.copy(tmp_path / "x.npy", tmp_path / "x.NPY")  # any case, and torch's other name .pth
    shutil.copy(tmp_path / "x.pt", tmp_path / "x.pth")
    for name in ("x.NPY", "x.pth"):
        assert predict_file(run, tmp_path / name, tmp_path / "p.csv") == 5
    torch.save({"images": images[:2].clone()}, tmp_path / "dict.pt")  # it said 'numpy.object_'
    with pytest.raises(UsageError) as e:
        predict_file(run, tmp_path / "dict.pt", tmp_path / "p.csv")
    assert str(e.value) == (
        f"input={tmp_path / 'dict.pt'} holds a dict, not a tensor of uint8 images. Fix: save them "
        f"with {SAVE}"
    )


def test_inputs_that_would_unpickle_python_objects_are_refused(image_run, tmp_path):
    import numpy as np

    from d2lrun.reload import load_run, predict_file

    run = load_run(image_run[0])
    np.save(tmp_path / "objects.npy", np.array([{"image": 1}], dtype=object), allow_pickle=True)
    torch.save({"x": Exploit()}, tmp_path / "exploit.pt")
    if os.path.exists("/tmp/d2lrun_pwned"):
        os.remove("/tmp/d2lrun_pwned")
    torch.save(np.zeros((2, 28, 28), np.uint8), tmp_path / "array.pt")  # it said: torch.save
    for name, kind in (("objects.npy", "ValueError"), ("exploit.pt", "UnpicklingError"),
                       ("array.pt", "UnpicklingError")):  # fmt: skip
        with pytest.raises(UsageError) as e:
            predict_file(run, tmp_path / name, tmp_path / "p.csv")
        assert str(e.value) == (
            f"input={tmp_path / name} cannot be read as uint8 images without unpickling Python "
            f"objects ({kind}), which d2lrun never does. Fix: save them with {SAVE}"
        )
    assert not os.path.exists("/tmp/d2lrun_pwned") and not (tmp_path / "p.csv").exists()
    np.save(tmp_path / "cut.npy", np.zeros((2, 28, 28), dtype=np.uint8))  # a file cut short: said
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:100])  # so, not as
    with pytest.raises(UsageError, match=r"cut.npy cannot be read \(EOF: reading array header"):
        predict_file(run, tmp_path / "cut.npy", tmp_path / "p.csv")  # one that would unpickle


def test_a_table_runs_inputs_are_rows_whatever_the_files_name(table_run, tmp_path):
    from d2lrun.reload import load_run, predict_file

    folder, frame = table_run
    frame.drop(columns="price").head(3).to_csv(tmp_path / "new_rows.txt", index=False)
    assert predict_file(load_run(folder), tmp_path / "new_rows.txt", tmp_path / "out.csv") == 3
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UsageError, match=r"^input=.*empty\.txt is empty\. Fix: give a CSV file"):
        predict_file(load_run(folder), tmp_path / "empty.txt", tmp_path / "out.csv")


def test_eval_of_a_k_fold_run_scores_the_rows_that_fold_held_out(table_run, tmp_path):
    from d2lrun.reload import evaluate_run, load_run

    path = load_run(table_run[0]).config.dataset.path
    folder = trained(tmp_path / "kfold", "dataset=csv", f"dataset.path={path}",
                     "dataset.target=price", "dataset.drop=[Id]", "dataset.folds=3",
                     "trainer.epochs=2")  # fmt: skip
    for i in range(3):
        final = json.loads((folder / f"fold_{i}" / "metrics.json").read_text())["final"]
        assert evaluate_run(load_run(folder / f"fold_{i}")) == {
            k: final[k] for k in ("val_loss", "val_rmse")
        }


def test_a_run_that_held_out_no_rows_is_evaluated_on_its_training_rows(tmp_path):
    import pandas as pd

    from d2lrun.reload import evaluate_run, load_run

    x = torch.linspace(-1, 1, 50)
    pd.DataFrame({"x": x, "y": 3 * x + 1}).to_csv(tmp_path / "t.csv", index=False)
    folder = trained(tmp_path / "run", "dataset=csv", f"dataset.path={tmp_path / 't.csv'}",
                     "dataset.target=y", "dataset.val_fraction=0", "trainer.epochs=2")  # fmt: skip
    final = json.loads((folder / "metrics.json").read_text())["final"]
    metrics = evaluate_run(load_run(folder))
    assert set(metrics) == {"train_loss", "train_rmse"}
    assert metrics["train_rmse"] == final["train_rmse"]  # evaluated after its last epoch, as here


def test_a_kfold_run_is_reloaded_fold_by_fold_and_a_fold_resumes_as_one_run(tmp_path):
    from d2lrun import app
    from d2lrun.reload import load_run

    rows = ["dataset.num_train=60", "dataset.folds=3", "trainer.epochs=2"]
    kfold = trained(tmp_path / "kfold", *rows)
    with pytest.raises(UsageError) as e:
        load_run(kfold)
    assert str(e.value) == (
        f"{kfold} is a k-fold run: each fold is a run of its own, in fold_0/, fold_1/, ... "
        f"Fix: give one fold, e.g. {kfold / 'fold_0'}."
    )
    more = app.train([f"resume={kfold / 'fold_1'}", "trainer.epochs=3", "trainer.progress=false",
                      f"hydra.run.dir={tmp_path / 'more'}"])  # fmt: skip
    run = load_run(more)
    assert run.spec.fold == [3, 1] and list(run.metrics["epoch"]) == [1, 2, 3]
    with pytest.raises(UsageError) as e:  # nothing more to train: refused, no folder left
        app.train([f"resume={more}", "trainer.epochs=3", f"hydra.run.dir={tmp_path / 'same'}"])
    assert str(e.value) == (
        f"resume={more} has trained 3 epoch(s), and trainer.epochs=3 asks for no more (it "
        f"counts all of them). Fix: trainer.epochs=6."
    )
    assert not (tmp_path / "same").exists()


def test_resume_of_a_k_fold_run_refuses_another_config_or_folder_and_leaves_its_files(tmp_path):
    """A changed key wrote "status: failed" over the completed run's metrics.json, with a Fix for
    sweeps, and the refused config into its .hydra/; hydra.run.dir=NEW was ignored, and the folds
    trained in the run's own folder."""
    from d2lrun import app

    kfold = trained(tmp_path / "kfold", "dataset.num_train=60", "dataset.folds=3",
                    "trainer.epochs=2")  # fmt: skip

    def files():  # but .lock, which any command that writes a run folder leaves there
        return {p: p.read_bytes() for p in kfold.rglob("*") if p.is_file() and p.name != ".lock"}

    before = files()
    with pytest.raises(UsageError) as e:
        app.train([f"resume={kfold}", "trainer.epochs=5"])
    assert str(e.value) == (
        f"resume={kfold}: its 3 folds completed 2 epochs each. Fix: resume={kfold / 'fold_0'} "
        f"trainer.epochs=5 to go on with one fold as a run, or d2lrun-eval run={kfold / 'fold_0'}."
    )
    with pytest.raises(UsageError, match=r"trainer\.epochs=3 to go on"):  # as asked: it said 4
        app.train([f"resume={kfold}", "trainer.epochs=3"])
    with pytest.raises(UsageError, match=r"trainer\.epochs=4 to go on"):  # twice, where not more
        app.train([f"resume={kfold}", "trainer.epochs=2"])
    new = tmp_path / "new"  # completed, refused as such (a stopped one: 'not in hydra.run.dir')
    with pytest.raises(UsageError, match=r"its 3 folds completed 2 epochs each\. Fix: resume="):
        app.train([f"resume={kfold}", f"hydra.run.dir={new}"])
    assert not new.exists()
    assert files() == before


def test_a_refused_k_fold_resume_offers_one_fold_only_where_that_command_is_not_refused(
    tmp_path, monkeypatch
):
    """`resume=RUN seed=1` said "Fix: drop seed=1, or resume=RUN/fold_0 seed=1 to go on with one
    fold as a run", which was refused too ("cannot change seed"), as was the fold it offered for
    dataset.folds=, dataset.shuffle_folds=, optim=, and for any key of a completed run but more
    trainer.epochs ("asks for no more")."""
    import d2lrun.job
    from d2lrun import app

    rows = ["dataset.num_train=60", "dataset.folds=3", "trainer.epochs=2"]
    completed, stopped = trained(tmp_path / "completed", *rows), tmp_path / "stopped"
    on_epoch = d2lrun.job.Run.on_epoch

    def stopped_in_fold_2(self, row):
        on_epoch(self, row)
        if self.run_dir.name == "fold_1":
            raise KeyboardInterrupt  # Ctrl-C after its first epoch

    monkeypatch.setattr(d2lrun.job.Run, "on_epoch", stopped_in_fold_2)
    with pytest.raises(Exception, match="fold 2/3: interrupted after epoch 1"):
        trained(stopped, *rows)
    monkeypatch.undo()

    def fix(run, change: str) -> str:
        """The Fix of resume=run's refusal; the one fold it offers, run, is not refused."""
        with pytest.raises(UsageError) as e:
            app.train([f"resume={run}", change, "trainer.progress=false"])
        fix = str(e.value).partition(" Fix: ")[2]
        if one := re.search(r"resume=(\S+) (\S+) to go on with one fold as a run", fix):
            folder = tmp_path / f"{run.name}_{change.partition('=')[0]}"
            app.train([f"resume={one[1]}", one[2], "trainer.progress=false",
                       f"hydra.run.dir={folder}"])  # fmt: skip
            assert (folder / "model.pt").exists()
        return fix.replace(str(run), "RUN")

    # A completed run is refused as such first: "drop KEY" led to that refusal, not to a run.
    for change, epochs in (("trainer.epochs=5", 5), ("optim.lr=0.05", 4), ("seed=1", 4)):
        assert fix(completed, change) == (
            f"resume=RUN/fold_0 trainer.epochs={epochs} to go on with one fold as a run, or "
            f"d2lrun-eval run=RUN/fold_0."
        )
    assert fix(stopped, "optim.lr=0.05") == (
        "drop optim.lr=0.05, or resume=RUN/fold_1 optim.lr=0.05 to go on with one fold as a run."
    )
    assert fix(stopped, "trainer.epochs=1") == "drop trainer.epochs=1."
    assert fix(stopped, "seed=1") == "seed=0 (the run's), or start a new run."  # as a fold's
    assert fix(stopped, "dataset.folds=2") == "dataset.folds=3 (the run's), or start a new run."
    # It trained a new run into the k-fold run's folder, its metrics.json overwritten
    assert fix(stopped, "dataset.folds=null") == (
        "dataset.folds=3 (the run's), or start a new run."
    )
    # A key not typed (set by another key's option, or from an environment variable): 'drop
    # optim.weight_decay=0.001', which was not there to drop; now the value the run had
    # A key that another key's option set: the option (it said 'optim.weight_decay=0.0 (the
    # run's)', which was then refused as 'cannot change regularizer.name')
    assert fix(stopped, "regularizer=l2") == (
        "drop regularizer=l2, or resume=RUN/fold_1 regularizer=l2 to go on with one fold as a run."
    )
    # As typed, the group's option (it offered logger.name=tensorboard, refused: 'picks none');
    # no fold to go on with: one resumed keeps the init it began with, as its optimizer
    assert fix(stopped, "init=xavier") == "drop init=xavier, or start a new run."
    assert fix(stopped, "optim=adam") == "drop optim=adam, or start a new run."
    assert fix(stopped, "dataset.shuffle_folds=true") == (
        "dataset.shuffle_folds=false (the run's), or start a new run."
    )
    new = f"hydra.run.dir={tmp_path / 'new'}"  # it offered fold_0, completed: 'asks for no more'
    assert fix(stopped, new) == f"drop {new}."
    assert fix(completed, new).startswith("resume=RUN/fold_0 trainer.epochs=4 to go on")
    # A fold gone on in its own folder with more epochs: 'Fix: another hydra.sweep.dir', of a
    # sweep; now its own, which the k-fold run then takes
    fold = stopped / "fold_1"
    app.train(
        [f"resume={fold}", "trainer.epochs=3", f"hydra.run.dir={fold}", "trainer.progress=false"]
    )
    with pytest.raises(UsageError) as e:
        app.train([f"resume={stopped}"])
    assert str(e.value) == (f"{fold} holds a checkpoint of another config (trainer.epochs=3 there, "
                            f"2 now). Fix: delete it to train it anew.")  # fmt: skip
    shutil.rmtree(fold)
    # What it shows may change, as a single run's resume= may: it refused any logger= (its Fix:
    # 'drop logger=tensorboard'), trainer.progress= and trainer.checkpoint_every=
    app.train([f"resume={stopped}", "logger=tensorboard", "trainer.progress=true",
               "trainer.checkpoint_every=2"])  # fmt: skip
    assert json.loads((stopped / "metrics.json").read_text())["status"] == "completed"
    assert list((stopped / "fold_2" / "tensorboard").glob("events.*"))


def test_a_stopped_run_resumed_with_no_epoch_left_is_refused_unless_it_stopped_in_its_last_files(
    tmp_path,
):
    from d2lrun import app
    from d2lrun.reload import load_run

    run = trained(tmp_path / "run", "trainer.epochs=3")
    summary = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps(summary | {"status": "interrupted"}))
    args = [f"resume={run}", "trainer.progress=false", f"hydra.run.dir={tmp_path / 'none'}"]

    def refused(epochs: int) -> str:
        with pytest.raises(UsageError) as e:
            app.train([*args, f"trainer.epochs={epochs}"])
        assert not (tmp_path / "none").exists()
        return str(e.value).partition("(it counts all of them). ")[2]

    assert refused(2) == "Fix: trainer.epochs=5."  # fewer epochs than it trained
    # Killed while it wrote the last files of its 3 epochs: finished, a complete folder.
    more = app.train([*args[:2], "trainer.epochs=3", f"hydra.run.dir={tmp_path / 'finished'}"])
    assert {"last.pt", "best.pt", "model.pt"} <= {p.name for p in more.iterdir()}
    assert load_run(more).summary["status"] == "completed"
    ckpt = torch.load(run / "last.pt", weights_only=True)  # now stopped at epoch 3 of 10
    ckpt["config"]["trainer"]["epochs"] = 10
    torch.save(ckpt, run / "last.pt")
    assert refused(3) == "Fix: trainer.epochs=6."
    with pytest.raises(UsageError, match=r"has trained 3 epoch\(s\), and trainer.epochs=3 asks"):
        app.train([f"resume={more}", f"hydra.run.dir={more}"])  # completed: in place too
    assert load_run(more).summary["restarts"] == 1  # untouched (it restarted, training nothing)


def test_predictions_never_write_over_the_book_kaggle_files_a_run_trained_on(
    kaggle_house, tmp_path
):
    """output=ROOT/kaggle_house_pred_train.csv wrote over the run's training file (dataset.path,
    of dataset=csv, was refused); eval then said it lacked 79 columns: 'Fix: add them'."""
    from d2lrun import app

    root = tmp_path / "root"
    shutil.copytree(kaggle_house, root)
    run = trained(tmp_path / "run", "dataset=kaggle_house", f"dataset.root={root}",
                  "trainer.epochs=1")  # fmt: skip
    shutil.copy(root / "kaggle_house_pred_test.csv", tmp_path / "new.csv")
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    for name in ("kaggle_house_pred_train.csv", "kaggle_house_pred_test.csv"):
        with pytest.raises(UsageError, match=r"is the run's data\. Fix: output=predictions.csv"):
            app.predict([f"run={run}", f"input={tmp_path / 'new.csv'}", f"output={root / name}"])
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before


def test_predictions_go_to_a_file_in_a_folder_that_exists(table_run, tmp_path):
    import pandas as pd

    from d2lrun import app

    folder, frame = table_run
    frame.drop(columns="price").to_csv(tmp_path / "new.csv", index=False)
    missing = f"is in {tmp_path / 'no'}, which does not exist"
    for output, where in ((tmp_path, "is a folder"), (tmp_path / "no" / "p.csv", missing)):
        with pytest.raises(UsageError) as e:
            app.predict([f"run={folder}", f"input={tmp_path / 'new.csv'}", f"output={output}"])
        assert (
            str(e.value)
            == f"output={output} {where}. Fix: output=FILE.csv in a folder that exists."
        )
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    new = tmp_path / "new.csv"
    other = tmp_path / "other"  # another run's folder
    other.mkdir()
    (other / "metrics.json").write_text("{}")
    sweep = tmp_path / "sweep"  # a sweep's folder
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    (other / ".hydra").mkdir()
    for output, what in ((new, "the input file"), (folder / "last.pt", "a run's file"),
                         (folder.parent / "t.csv", "the run's data"),
                         (folder / "metrics.json", "a run's file"),
                         (folder / ".lock", "a run's file"),  # predictions were written into it
                         (other / "metrics.json", "a run's file"),
                         (other / "curves.png", "a run's file"),
                         (sweep / "multirun.yaml", "a run's file"),
                         (sweep / "summary.csv", "a run's file"),
                         (other / ".hydra" / "config.yaml", "a run's file")):  # fmt: skip
        with pytest.raises(UsageError, match=f"^output={re.escape(str(output))} is {what}. Fix:"):
            app.predict([f"run={folder}", f"input={new}", f"output={output}"])
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert pd.read_csv(folder.parent / "t.csv").equals(frame)
    assert (other / "metrics.json").read_text() == "{}" and not (other / "curves.png").exists()
    app.predict([f"run={folder}", f"input={new}", f"output={other / 'predictions.csv'}"])


def test_predict_takes_rows_of_numbers_of_any_kind_for_a_run_on_generated_data(tmp_path):
    from d2lrun.job import train_job
    from d2lrun.reload import load_run

    args = ["device=cpu", "trainer.progress=false", "trainer.epochs=2"]
    train_job(compose(args), tmp_path, args, log=lambda *_: None)
    run = load_run(tmp_path)
    floats = run.predict(torch.tensor([[1.0, 2.0], [0.0, -1.0]], dtype=torch.float64))  # w·x + b
    assert run.predict([[1, 2], [0, -1]]) == floats == pytest.approx([-0.6, 7.6], abs=0.05)
    assert run.predict([1, 2]) == floats[:1]  # one example
    assert run.predict(torch.zeros(0, 2)) == []  # none: it was "cannot reshape tensor of 0 ..."
    assert run.predict([]) == []  # it was "inputs must be (N, 2) ...; got (1, 0)"
    needs_grad = torch.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)  # a model's output
    assert run.predict(needs_grad) == pytest.approx(floats)
    with pytest.raises(
        UsageError, match=r"^inputs must be \(N, 2\), one row per example; got \(1, 3"
    ):
        run.predict([[1, 2, 3]])
    import numpy as np  # NaN, inf, 1e300 (inf as float32): predicted nan or inf, rc 0

    for x in (float("nan"), float("inf"), 1e300):
        (tmp_path / "x.npy").unlink(missing_ok=True)
        np.save(tmp_path / "x.npy", np.array([[1.0, 2.0], [x, 2.0]]))
        with pytest.raises(UsageError, match=r"^input=.*x\.npy holds NaN, inf or numbers beyond"):
            predict_file(run, tmp_path / "x.npy", tmp_path / "out.csv")
    np.save(tmp_path / "x.npy", np.ones((1, 2)))
    assert predict_file(run, tmp_path / "x.npy", tmp_path / "out.csv") == 1
    np.save(tmp_path / "none.npy", np.zeros((0, 2)))  # it wrote a header over out.csv, rc 0
    with pytest.raises(UsageError, match=r"holds no inputs \(shape \(0, 2\)\)\. Fix: give a"):
        predict_file(run, tmp_path / "none.npy", tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text().count("\n") == 2


def test_a_kernel_run_predicts_its_image_as_the_numbers_given_whatever_their_dtype(tmp_path):
    """§6.2.4's images are 0/1 floats, not pixels: a uint8 0/1 image is not divided by 255."""
    from d2lrun.job import train_job
    from d2lrun.reload import load_run

    args = ["dataset=kernel", "model=conv2d", "device=cpu", "trainer.progress=false"]
    train_job(compose(args), tmp_path, args, log=lambda *_: None)
    run = load_run(tmp_path)
    image = torch.ones(6, 8)
    image[:, 2:6] = 0  # the book's stripe
    floats = run.predict(image)
    assert run.predict(image.to(torch.uint8)) == floats
    assert run.predict(image.double()) == floats


def test_a_run_resumed_in_its_folder_and_stopped_reloads_its_latest_weights(table_run, tmp_path):
    """A completed run resumed in place and stopped at epoch 4: run= evaluated the model.pt of its
    epoch 3 while eval.json named last.pt."""
    from d2lrun.reload import load_run

    folder = Path(shutil.copytree(table_run[0], tmp_path / "run"))
    ckpt = torch.load(folder / "last.pt", weights_only=True)
    ckpt["epoch"], ckpt["model"] = 4, {k: v + 1 for k, v in ckpt["model"].items()}
    save_torch(folder / "last.pt", ckpt)
    summary = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps(summary | {"status": "interrupted"}))
    weights = load_run(folder).model.state_dict()
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in weights.items())


def test_resume_goes_on_from_best_pt_alone_and_past_a_damaged_one(tmp_path, capsys):
    """kill -9 before trainer.checkpoint_every's first last.pt leaves best.pt only: resume=RUN
    said 'has no last.pt', and resume=RUN/best.pt into RUN 'already holds a run', as a checkpoint
    of RUN's named otherwise (.pth) still was. A damaged best.pt refused resume=RUN/last.pt too."""
    from d2lrun import app

    run = trained(tmp_path / "run", "trainer.epochs=2")
    args = ["trainer.epochs=3", "trainer.progress=false"]
    (run / "best.pt").write_bytes((run / "best.pt").read_bytes()[:3000])  # damaged
    for resume, into in ((run / "last.pt", tmp_path / "new"), (run, run)):
        app.train([f"resume={resume}", *args, f"hydra.run.dir={into}"])
        assert json.loads((into / "metrics.json").read_text())["epochs_completed"] == 3
        note = f"note: {run / 'best.pt'} is truncated or not a checkpoint"
        assert note in capsys.readouterr().err
    assert not (tmp_path / "new" / "best.pt").exists()  # not carried: damaged
    killed = trained(tmp_path / "killed", "trainer.epochs=2")
    for name in ("last.pt", "model.pt", "metrics.json", "metrics.csv"):
        (killed / name).unlink()
    best = torch.load(killed / "best.pt", weights_only=True)["epoch"]
    for resume in (killed, killed / "best.pt"):
        app.train([f"resume={resume}", f"trainer.epochs={best + 1}", "trainer.progress=false",
                   f"hydra.run.dir={killed}"])  # fmt: skip
        assert json.loads((killed / "metrics.json").read_text())["restarts"] >= 1
        best += 1
    (killed / "snapshot.pth").write_bytes((killed / "last.pt").read_bytes())  # a file, not .pt
    app.train([f"resume={killed / 'snapshot.pth'}", f"trainer.epochs={best + 1}",
               "trainer.progress=false", f"hydra.run.dir={killed}"])  # fmt: skip
    assert json.loads((killed / "metrics.json").read_text())["epochs_completed"] == best + 1


def test_a_k_fold_run_goes_on_after_its_data_moved_or_on_another_device(table_run, tmp_path):
    """dataset.path=, dataset.root= and device= say where a run goes on, not what it is: a stopped
    k-fold run whose data moved was refused (each Fix led to another refusal). A damaged fold of a
    completed k-fold run no longer writes 'failed' over its record."""
    from d2lrun import app
    from d2lrun.reload import changed, load_checkpoint, run_overrides

    saved = load_checkpoint(table_run[0] / "last.pt")
    moved = ["device=cuda", "dataset.path=/elsewhere/x.csv"]
    assert changed(saved, compose(run_overrides(saved, moved)), moved=True) is None
    # A sweep's job run again from another folder: the same typed path, another file; refused.
    path = changed(saved, compose(run_overrides(saved, moved[1:])))
    assert path == ("dataset.path", str(table_run[0].parent / "t.csv"), "/elsewhere/x.csv")
    lr = changed(saved, compose(run_overrides(saved, ["optim.lr=0.5"])))
    assert lr == ("optim.lr", "0.03", "0.5")
    kfold = trained(tmp_path / "kfold", "dataset.num_train=60", "dataset.folds=3",
                    "trainer.epochs=2")  # fmt: skip
    record = (kfold / "metrics.json").read_bytes()
    (kfold / "fold_2" / "last.pt").write_bytes(b"damaged")
    with pytest.raises(UsageError, match=r"its 3 folds completed 2 epochs each"):  # as it is
        app.train([f"resume={kfold}"])
    assert (kfold / "metrics.json").read_bytes() == record


def test_resume_that_names_no_run_is_refused_not_trained_from_scratch(tmp_path):
    """`d2lrun resume=$RUN` with RUN unset trained a new default run, exit 0."""
    from d2lrun import app

    for command in (app.train, app.sweep):
        with pytest.raises(UsageError) as e:
            command(["resume=", f"hydra.run.dir={tmp_path / 'r'}"])
        assert str(e.value) == (
            "resume= names no run. Fix: resume=outputs/DATE/TIME, or drop resume=."
        )
    assert not (tmp_path / "r").exists()


def test_run_and_ckpt_of_two_runs_are_refused(image_run, table_run):
    """d2lrun-eval run=A ckpt=B/best.pt evaluated B, silently, into B's folder."""
    from d2lrun.reload import load_run

    with pytest.raises(UsageError, match=r"^run=.* and ckpt=.* name two runs\. Fix: give one"):
        load_run(image_run[0], ckpt=table_run[0] / "last.pt")
    assert load_run(image_run[0], ckpt=image_run[0] / "last.pt").spec.image_shape


def test_an_in_place_resume_stopped_before_its_first_new_epoch_says_what_goes_on(
    tmp_path, monkeypatch
):
    """resume=RUN trainer.epochs=3 in place, stopped before its epoch 2 ended: its line said
    'Resume with: d2lrun resume=RUN', which trained nothing (RUN/last.pt, which must stay the
    run's until an epoch ends, has trainer.epochs=1). The line repeats what the command changed,
    and from Python it is the call with all of them."""
    import d2lrun.job
    from d2lrun import api, app
    from d2lrun.errors import Interrupted

    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    app.train(["trainer.progress=false", "trainer.epochs=1", f"hydra.run.dir={run}"])
    fit = d2lrun.job.fit

    def stopped(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(d2lrun.job, "fit", stopped)
    again = [f"resume={run}", f"hydra.run.dir={run}", "trainer.epochs=3", "optim.lr=0.1"]
    with pytest.raises(Interrupted) as e:
        app.train(again)
    line = "Resume with: d2lrun resume=run trainer.epochs=3 optim.lr=0.1"
    assert str(e.value).endswith(f"after epoch 1; the last complete epoch is saved. {line}")
    assert api.in_python(line).endswith(
        "d2lrun.train('resume=run', 'trainer.epochs=3', 'optim.lr=0.1')"
    )
    assert api.in_python(f"{line}.").endswith("'optim.lr=0.1').")  # the sentence's stop: out
    monkeypatch.setattr(d2lrun.job, "fit", fit)
    app.train(line.split()[3:])  # as its line said (into a new folder)
    moved = sorted((tmp_path / "outputs").glob("*/*"))[-1]
    assert list(pd.read_csv(moved / "metrics.csv")["epoch"]) == [1, 2, 3]
    assert resume_checkpoint(moved)["config"]["optim"]["lr"] == 0.1


def test_an_in_place_resume_stopped_before_training_keeps_the_runs_hydra_files(
    tmp_path, monkeypatch
):
    """Stopped while its data loaded: .hydra/ held the stopped command's config and overrides
    (resume=RUN among them), no longer the run's; and the line said 'interrupted before anything
    was saved', of a run with its epochs saved."""
    import d2lrun.job
    from d2lrun import app
    from d2lrun.errors import Interrupted
    from d2lrun.stopping import Stop

    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    app.train(["trainer.progress=false", "trainer.epochs=1", f"hydra.run.dir={run}"])
    before = {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()}

    for stop, by, code in [(KeyboardInterrupt(), "", 130), (Stop(15), " by SIGTERM", 143)]:

        def stopped(*args, stop=stop):
            raise stop

        monkeypatch.setattr(d2lrun.job, "build_data", stopped)
        with pytest.raises(Interrupted) as e:
            app.train([f"resume={run}", f"hydra.run.dir={run}", "trainer.epochs=2"])
        assert (str(e.value), e.value.exit_code) == (
            f"interrupted{by} before the resumed run went on; its saved epochs are kept. "
            f"To go on, run the same command again.",
            code,
        )
        assert {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()} == before
    with pytest.raises(KeyboardInterrupt):  # a new run: nothing was saved (config.messages)
        app.train(["trainer.progress=false", f"hydra.run.dir={tmp_path / 'new'}"])
