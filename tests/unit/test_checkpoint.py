"""Checkpoints and run files: atomic writes, safe loading, clear errors."""

import os

import pytest
import torch

from d2lrun.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from d2lrun.errors import UsageError
from d2lrun.files import atomic_write, write_csv, write_json


class Exploit:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/d2lrun_pwned",))


def test_atomic_write_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "model": {"w": torch.ones(2)}})
    monkeypatch.setattr(
        os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device"))
    )
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {"epoch": 2, "model": {"w": torch.zeros(2)}})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the temporary file is gone


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
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    assert loaded["format"] == "d2lrun-checkpoint" and loaded["config"] == {"optim": {"lr": 0.1}}


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Exploit()}, path)
    if os.path.exists("/tmp/d2lrun_pwned"):
        os.remove("/tmp/d2lrun_pwned")
    with pytest.raises(UsageError, match="refused: it would run code"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/d2lrun_pwned")


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "truncated or not a checkpoint"),
        (b"hello, not a checkpoint", "not a readable checkpoint|truncated or not a checkpoint"),
    ],
)
def test_garbage_files_get_one_clear_error(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=match):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "t.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(1000)}})
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(UsageError, match="truncated or not a checkpoint"):
        load_checkpoint(path)


def test_missing_paths(tmp_path):
    with pytest.raises(UsageError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(UsageError, match="has no last.pt"):
        find_checkpoint(tmp_path)
    with pytest.raises(UsageError, match="no such run folder"):
        find_checkpoint(tmp_path / "nope")


def test_architecture_mismatch_lists_keys_and_shapes():
    net = torch.nn.Sequential(torch.nn.Linear(2, 1))
    other = {"0.weight": torch.zeros(3, 2), "1.bias": torch.zeros(1)}
    with pytest.raises(
        UsageError,
        match=r"missing keys \['0.bias'\].*unexpected keys \['1.bias'\].*0.weight \(3, 2\) vs \(1, 2\)",
    ):
        load_state_dict_strict(net, other, "x.pt")


def test_csv_and_json_writers(tmp_path):
    write_csv(
        tmp_path / "m.csv", [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25, "acc": 0.9}]
    )
    assert (tmp_path / "m.csv").read_text().splitlines() == [
        "epoch,loss,acc",
        "1,0.5,",
        "2,0.25,0.9",
    ]
    write_json(tmp_path / "m.json", {"a": 1})
    atomic_write(tmp_path / "b.bin", b"xyz")
    assert (tmp_path / "b.bin").read_bytes() == b"xyz"
