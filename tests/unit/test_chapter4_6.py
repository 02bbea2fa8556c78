"""§4.4 polynomial data, §4.10 k-fold, log RMSE and the checked download, §6.2 corr2d: each against
the book's own formula written out here."""

import hashlib
import http.server
import math
import re
import threading
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from d2lrun import job, kfold
from d2lrun.config import compose
from d2lrun.data import Split, fold_rows
from d2lrun.data.kaggle_house import download
from d2lrun.data.kernel import corr2d
from d2lrun.data.polynomial import poly_data
from d2lrun.errors import Interrupted, UsageError
from d2lrun.trainer import evaluate


def book_k_fold_slices(n, k):
    """The book's get_k_fold_data: fold j holds out X[j * fold_size:(j + 1) * fold_size]."""
    fold_size = n // k
    return [(j * fold_size, (j + 1) * fold_size) for j in range(k)]


@pytest.mark.parametrize("n,k", [(1460, 5), (10, 3), (7, 7), (101, 4), (20, 2)])
def test_folds_partition_the_rows_and_each_row_is_held_out_once(n, k):
    held_out = np.concatenate([fold_rows(n, k, i, False, 0)[1] for i in range(k)])
    assert sorted(held_out.tolist()) == list(range(n))
    for i in range(k):
        train, val = fold_rows(n, k, i, False, 0)
        assert set(train.tolist()).isdisjoint(val.tolist()) and len(train) + len(val) == n
    if n % k == 0:
        held_out = [fold_rows(n, k, i, False, 0)[1].tolist() for i in range(k)]
        assert held_out == [list(range(*s)) for s in book_k_fold_slices(n, k)]


def test_shuffled_folds_follow_the_seed():
    a, b, c = (fold_rows(50, 5, 2, True, seed)[1] for seed in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert sorted(
        np.concatenate([fold_rows(50, 5, i, True, 3)[1] for i in range(5)]).tolist()
    ) == list(range(50))


def test_more_folds_than_rows_is_one_line_with_a_fix():
    with pytest.raises(
        UsageError, match=r"dataset.folds=6 is more folds than the 4 rows. Fix: dataset.folds=4."
    ):
        fold_rows(4, 6, 0, False, 0)
    with pytest.raises(UsageError) as e:  # it said 'Fix: dataset.folds=2', as given
        fold_rows(1, 2, 0, False, 0)
    assert str(e.value) == "dataset.folds=2 is more folds than the 1 row. Fix: add rows."


def test_the_k_fold_mean_is_computed_from_the_folds(tmp_path, monkeypatch):
    """A k-fold run's result (metrics.json's final and kfold.mean) is the mean of every metric of
    the folds' final rows; their epoch and seconds are no metrics."""
    finals = [
        {"epoch": 3, "seconds": 1.0, "val_loss": 0.4, "val_log_rmse": 0.2},
        {"epoch": 3, "seconds": 3.0, "val_loss": 0.2, "val_log_rmse": 0.1},
    ]
    folds = []

    def train_job(cfg, run_dir, overrides, ckpt=None, fold=None, **rest):
        folds.append(fold)
        return {"final": finals[fold[1]]}

    monkeypatch.setattr(kfold, "train_job", train_job)
    summary = kfold.train(compose(["dataset.folds=2"]), tmp_path, [], log=lambda *_: None)
    assert folds == [[2, 0], [2, 1]]
    mean = pytest.approx({"val_loss": 0.3, "val_log_rmse": 0.15})
    assert summary["final"] == mean and summary["kfold"]["mean"] == mean


def test_log_rmse_is_the_books_formula():
    """§4.10: clipped_preds = clamp(net(X), 1, inf); sqrt(MSELoss(log(clipped_preds),
    log(labels)))."""
    torch.manual_seed(0)
    X, y = torch.randn(64, 3), torch.rand(64, 1) * 1e5 + 1
    net = nn.Linear(3, 1)
    with torch.no_grad():
        net.bias.fill_(5e4)
        net.weight.mul_(1e5)  # some predictions below 1, which the book clamps
    book = torch.sqrt(
        nn.MSELoss()(torch.log(torch.clamp(net(X), 1, float("inf"))), torch.log(y))
    ).item()
    rmse = torch.sqrt(nn.MSELoss()(net(X), y)).item()
    metrics = evaluate(net, nn.functional.mse_loss, Split(X, y), log_rmse=True)
    assert metrics["log_rmse"] == pytest.approx(book, rel=1e-5) and metrics[
        "rmse"
    ] == pytest.approx(rmse, rel=1e-5)
    # A model trained on the target scaled by (mean, std) reports both in the target's own units.
    scale = {"mean": 3.0, "std": 2.0}
    scaled = evaluate(net, nn.functional.mse_loss, Split(X, (y - 3) / 2, scale), log_rmse=True)
    assert scaled["rmse"] == pytest.approx(
        torch.sqrt(((net(X) * 2 + 3 - y) ** 2).mean()).item(), rel=1e-5
    )
    # Errors past 1.8e19 (a target in the 1e20s) square past float32: inf ended the run as
    # diverged, Fix: lower optim.lr, where the loss, on the scaled target, was fine.
    huge = evaluate(net, nn.functional.mse_loss, Split(X, (y - 3) / 2, {"mean": 0, "std": 1e20}))
    assert huge["rmse"] == pytest.approx(scaled["rmse"] / 2 * 1e20, rel=1e-5)


def test_polynomial_features_are_x_to_the_i_over_i_factorial():
    g = torch.Generator().manual_seed(0)
    features, labels = poly_data(20, [5, 1.2, -3.4, 5.6], 200, 0.1, g)
    x = features[:, 1]  # x^1 / 1!
    for i in (0, 2, 3, 7, 19):
        torch.testing.assert_close(features[:, i], x**i / math.factorial(i), rtol=1e-5, atol=1e-7)
    residual = labels[:, 0] - features[:, :4] @ torch.tensor([5, 1.2, -3.4, 5.6])
    assert 0.08 < residual.std().item() < 0.12  # the book's noise N(0, 0.1²)
    w = torch.linalg.lstsq(features[:, :4], labels).solution.reshape(-1)
    torch.testing.assert_close(w, torch.tensor([5, 1.2, -3.4, 5.6]), atol=0.1, rtol=0)


@pytest.mark.parametrize("impl", ["concise", "scratch"])
def test_a_polynomial_fit_with_a_bias_compares_w0_plus_b_with_the_constant(tmp_path, impl):
    """dataset=polynomial with its default model.bias=true: the constant 5 split between w[0] and
    b was shown as 'weight: [2.4976, ...]', w_error[0] = 2.5, and b nowhere."""
    args = ["dataset=polynomial", f"model.impl={impl}", "trainer.epochs=200", "device=cpu",
            "trainer.progress=false"]  # fmt: skip
    lines = []
    summary = kfold.train(compose(args), tmp_path / impl, args, log=lines.append)
    learned = summary["learned"]
    assert abs(learned["w_error"][0]) < 0.05 and 1 < learned["b"] < 4  # a share of the 5
    assert lines[-1].startswith("weight: [4.9") and f"b = {learned['b']:.4f})" in lines[-1]
    net = torch.load(tmp_path / impl / "model.pt", weights_only=True)  # the model's w[0] as is
    assert net.get("0.weight", net.get("w")).reshape(-1)[0].item() < 4


@pytest.mark.parametrize("shape", [(1, 2), (2, 2), (3, 1), (2, 3)])
def test_corr2d_is_what_nn_conv2d_computes(shape):
    torch.manual_seed(0)
    X, K = torch.randn(6, 8), torch.randn(*shape)
    expected = nn.functional.conv2d(X.reshape(1, 1, 6, 8), K.reshape(1, 1, *shape)).reshape(
        corr2d(X, K).shape
    )
    torch.testing.assert_close(corr2d(X, K), expected, rtol=1e-5, atol=1e-5)
    X = torch.ones(6, 8)
    X[:, 2:6] = 0
    edges = corr2d(X, torch.tensor([[1.0, -1.0]]))
    assert (
        edges[:, 1].eq(1).all() and edges[:, 5].eq(-1).all() and edges.abs().sum() == 12
    )  # §6.2.3


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over tmp_path/www (no internet in tests)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_download_checks_the_sha1_and_keeps_no_bad_file(server, tmp_path):
    www, url = server
    (www / "good.csv").write_bytes(b"a,b\n1,2\n")
    sha1 = hashlib.sha1(b"a,b\n1,2\n").hexdigest()
    target = tmp_path / "data" / "good.csv"
    assert download(url + "good.csv", target, sha1).read_bytes() == b"a,b\n1,2\n"
    (www / "good.csv").unlink()  # present with the right hash: no network any more
    assert download(url + "good.csv", target, sha1) == target

    (www / "bad.csv").write_bytes(b"tampered\n")
    with pytest.raises(
        UsageError, match=f"downloaded with SHA-1 .* not {sha1}; the file was not kept"
    ):
        download(url + "bad.csv", tmp_path / "data" / "bad.csv", sha1)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "good.csv"
    ]  # nothing half-written
    with pytest.raises(UsageError, match="downloading .* failed .* Fix: place the file there"):
        download(url + "missing.csv", tmp_path / "data" / "missing.csv", sha1)
    with pytest.raises(UsageError, match="downloading .* failed"):  # a mistyped dataset.root
        download(url + "missing.csv", tmp_path / "ty" / "po" / "kaggle_house" / "m.csv", sha1)
    assert not (tmp_path / "ty").exists()  # it left typo/kaggle_house/ behind, then ty/ of ty/po


def test_a_kfold_job_run_again_keeps_its_completed_folds_and_continues_the_stopped_one(
    tmp_path, monkeypatch
):
    """A k-fold sweep job that Slurm stopped and requeued (or a sweep run again) goes on where
    it stopped: the folds it completed are kept, the stopped one continues from its last.pt, and
    the result is the uninterrupted job's."""
    args = ["device=cpu", "trainer.progress=false", "dataset.num_train=120", "dataset.folds=3",
            "trainer.epochs=3"]  # fmt: skip
    lines = []
    clean = kfold.train(compose(args), tmp_path / "clean", args, log=lambda *_: None)
    on_epoch = job.Run.on_epoch

    def stopped_in_fold_1(self, row):
        on_epoch(self, row)
        if self.run_dir.name == "fold_1" and self.trainer.epoch == 2:
            raise KeyboardInterrupt  # as a stop signal: after the epoch is saved

    monkeypatch.setattr(job.Run, "on_epoch", stopped_in_fold_1)
    with pytest.raises(Interrupted, match="after epoch 2"):
        kfold.train(compose(args), tmp_path / "job", args, log=lambda *_: None)
    monkeypatch.undo()
    kept = (tmp_path / "job" / "fold_0" / "model.pt").stat().st_mtime_ns
    again = kfold.train(compose(args), tmp_path / "job", args, log=lines.append)
    assert "fold 1/3: completed before in" in lines[1] and "; kept" in lines[1]
    assert any(line.startswith("resuming") and "from epoch 2" in line for line in lines)
    assert (tmp_path / "job" / "fold_0" / "model.pt").stat().st_mtime_ns == kept
    with open(tmp_path / "job" / "fold_1" / "metrics.csv") as f:
        assert [r.split(",")[0] for r in f.read().splitlines()[1:]] == ["1", "2", "3"]

    def timeless(summary):
        return [{k: v for k, v in f.items() if k not in ("seconds", "examples_per_s")}
                for f in summary["kfold"]["folds"]]  # fmt: skip

    assert timeless(again) == timeless(clean)
    for i in range(3):
        a, b = (torch.load(tmp_path / d / f"fold_{i}" / "model.pt") for d in ("clean", "job"))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_kaggle_root_given_as_the_training_file_names_its_folder(tmp_path):
    """It said 'Not a directory (.../train.csv/kaggle_house). Fix: free disk space ...', exit 1."""
    from d2lrun.data.kaggle_house import find_files

    file = tmp_path / "k h" / "kaggle_house_pred_train.csv"  # a Fix quoted: pasted, it works
    file.parent.mkdir()
    file.write_text("Id\n1\n")
    with pytest.raises(UsageError) as e:
        find_files(file, fetch=True)
    assert str(e.value) == (
        f"dataset.root={file} is a file; it names the folder that holds "
        f"kaggle_house_pred_train.csv. Fix: 'dataset.root={tmp_path / 'k h'}'."
    )


def test_kaggle_root_one_folder_above_the_files_names_their_folder(tmp_path):
    """dataset.root=data with the files in data/kaggle-house/ (../shared's layout): 'not in
    data/kaggle_house ... Fix: place it there from http://...' with the files right beside it."""
    from d2lrun.data.kaggle_house import FILES, find_files

    (tmp_path / "kaggle-house").mkdir()
    for name, _ in FILES.values():
        (tmp_path / "kaggle-house" / name).write_text("Id,SalePrice\n1,2\n")
    for fetch in (False, True):  # never downloaded: the book's files are there
        with pytest.raises(UsageError) as e:
            find_files(tmp_path, fetch)
        assert str(e.value) == (
            f"kaggle_house_pred_train.csv is not in {tmp_path / 'kaggle_house'} nor in {tmp_path}, "
            f"but in {tmp_path / 'kaggle-house'}. Fix: dataset.root={tmp_path / 'kaggle-house'}."
        )


def test_kaggle_files_found_in_the_root_that_are_not_the_books_are_said_to_be(tmp_path, capsys):
    """A truncated test file changed the statistics, and so every number, without a word."""
    from d2lrun.data.kaggle_house import FILES, find_files

    (tmp_path / "kaggle_house").mkdir()
    for name, _ in FILES.values():
        (tmp_path / "kaggle_house" / name).write_text("Id,SalePrice\n1,2\n")
    paths = find_files(tmp_path, fetch=False)  # read as they are, not downloaded again
    assert paths["train"] == tmp_path / "kaggle_house" / FILES["train"][0]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("is not the book's file (its SHA-1 differs)" in e for e in err)
    find_files(tmp_path, fetch=False)  # each fold of a k-fold run: said once, not five times
    assert capsys.readouterr().err == ""


def test_a_folder_in_place_of_a_kaggle_file_is_said_to_be_one(tmp_path):
    """It said 'Is a directory (...). Fix: free disk space or choose a writable folder'."""
    from d2lrun.data.kaggle_house import FILES, find_files

    folder = tmp_path / "kaggle_house" / FILES["train"][0]
    folder.mkdir(parents=True)
    with pytest.raises(UsageError) as e:
        find_files(tmp_path, fetch=True)
    assert str(e.value) == (
        f"{folder} is a folder, not the book's file kaggle_house_pred_train.csv. "
        f"Fix: put the file in its place, or set dataset.root=<folder that has it>."
    )


def test_kaggle_files_edited_between_two_runs_of_one_process_are_read_again(tmp_path):
    """A notebook: the training or test file edited after a run was read from the cache."""
    from d2lrun.data import build_data
    from d2lrun.data.kaggle_house import FILES

    def write(split, n):
        rows = [f"{i},{50 + i},{100_000 + 997 * i}" for i in range(n)]
        (tmp_path / FILES[split][0]).write_text("\n".join(["Id,LotArea,SalePrice", *rows]))

    write("train", 40), write("test", 10)
    cfg = compose(["dataset=kaggle_house", f"dataset.root={tmp_path}", "dataset.download=false"])
    train, val, _ = build_data(cfg.dataset, 0)
    write("train", 20)
    assert len(build_data(cfg.dataset, 0)[0]) + len(val) == 20 != len(train) + len(val)
    _, _, before = build_data(cfg.dataset, 0)
    write("test", 100)  # the book's statistics are fitted on the test rows too
    _, _, after = build_data(cfg.dataset, 0)
    assert after.preprocess != before.preprocess
    (tmp_path / FILES["test"][0]).unlink()  # both places it looks named (it named the first)
    with pytest.raises(UsageError, match=re.escape(
            f"kaggle_house_pred_test.csv is not in {tmp_path / 'kaggle_house'} nor in {tmp_path}, "
            f"and dataset.download=false. Fix: place it there")):  # fmt: skip
        build_data(cfg.dataset, 0)


def test_kaggle_statistics_of_the_training_rows_need_no_test_file(server, tmp_path, monkeypatch):
    """With only the training file and dataset.statistics=train, a run tried to download the test
    file it never reads, and without a network stopped there."""
    from d2lrun.data import build_data
    from d2lrun.data import kaggle_house as kh

    monkeypatch.setattr(kh, "DATA_URL", server[1])  # serves nothing: the offline machine
    rows = [f"{i},{50 + i},{'Pave' if i % 3 else 'Grvl'},{100_000 + 997 * i}" for i in range(40)]
    (tmp_path / kh.FILES["train"][0]).write_text("\n".join(["Id,LotArea,Street,SalePrice", *rows]))
    args = ["dataset=kaggle_house", f"dataset.root={tmp_path}", "dataset.val_fraction=0.25"]
    train, val, spec = build_data(compose([*args, "dataset.statistics=train"]).dataset, 0)
    assert (len(train), len(val), spec.num_inputs) == (30, 10, 4)  # LotArea, Street's 2 and NaN
    assert not (tmp_path / "kaggle_house").exists()  # no test file fetched, nor a folder for it
    no_test = ", or dataset.statistics=train (no test file)."
    with pytest.raises(UsageError) as e:
        build_data(compose(args).dataset, 0)  # the book's statistics read the test file too
    assert re.match("kaggle_house_pred_test.csv is not in .* downloading", str(e.value))
    assert str(e.value).endswith(no_test)
    with pytest.raises(UsageError) as e:
        build_data(compose([*args, "dataset.download=false"]).dataset, 0)
    assert str(e.value).endswith("dataset.download=true" + no_test)
    with pytest.raises(UsageError) as e:
        kh.find_files(tmp_path / "nowhere", fetch=False)  # no training file: no such way out
    assert str(e.value).endswith("or dataset.download=true.")
