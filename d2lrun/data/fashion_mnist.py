"""Fashion-MNIST (§3.5) through torchvision's own loader, held as uint8 tensors (N, 1, 28, 28)."""

import errno
import gzip
import hashlib
import struct
from pathlib import Path

import torch
from omegaconf import DictConfig

from d2lrun.data import Spec, Split
from d2lrun.errors import RunFailed, UsageError
from d2lrun.files import atomic_write, remove_empty, shell_arg, shown, unmade

# d2l's text labels (§3.5 get_fashion_mnist_labels).
CLASS_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
               "bag", "ankle boot"]  # fmt: skip
FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz"]  # fmt: skip
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


def load(cfg: DictConfig, seed: int) -> tuple[Split, Split, Spec]:
    root = Path(str(cfg.root)).expanduser()
    raw = root / "FashionMNIST" / "raw"
    if root.is_file():  # one of its files: the folder above FashionMNIST/raw/, or its own
        up = root.parents[2] if root.parent.parts[-2:] == ("FashionMNIST", "raw") else root.parent
        raise UsageError(f"dataset.root={shown(root)} is a file, not the folder of "
                         f"FashionMNIST/raw/. Fix: {shell_arg('dataset.root', up)}.")  # fmt: skip
    spec = Spec("fashion_mnist", "classification", 28 * 28, 10, [1, 28, 28], CLASS_NAMES)
    if splits := unpacked(raw):
        return *splits, spec
    from torchvision.datasets import FashionMNIST  # to download, unpack and check the files

    missing = absent(raw)
    moved = None  # the files in root itself: dataset.root named raw/, or a folder of the .gz files
    if missing and not absent(root):
        moved = f"copy (or move) the files of {shown(root)} into {raw}"
        if root.name == "raw" and root.parent.name == "FashionMNIST":
            moved = shell_arg("dataset.root", root.parent.parent)
    if missing and root.name == "FashionMNIST" and not absent(root / "raw"):  # one level low
        moved = shell_arg("dataset.root", root.parent)
    if missing and not cfg.download:
        raise UsageError(
            f"Fashion-MNIST is not in {shown(raw)} (missing {', '.join(missing)}) and "
            f"dataset.download=false. "
            f"Fix: {moved or f'place the files from {URL} there, or dataset.download=true'}."
        )
    made = unmade(raw)  # gone if it fails
    try:
        raw.mkdir(parents=True, exist_ok=True)  # where missing files are downloaded to
        if not cfg.download:  # torchvision reads unpacked files only: the .gz there, unpacked
            unpack(FashionMNIST.resources, raw)
    except OSError as e:
        raise unwritable(cfg, e) from None
    splits = []
    for train in (True, False):
        try:
            ds = FashionMNIST(str(root), train=train, download=bool(cfg.download))
        except Exception as e:  # torchvision's RuntimeError, OSError, EOFError, ...: any failure
            if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise unwritable(cfg, e) from None  # a read-only mount: not 'damaged'
            reason = str(e).splitlines()[0].rstrip(": ") if str(e) else type(e).__name__
            if missing:
                remove_empty(made)  # a dataset.root mistyped: no empty folders left
                place = (f"place {', '.join(missing)} from {URL} in {shown(raw)}, or set "
                         f"dataset.root=<folder that has them>")  # fmt: skip
                raise UsageError(
                    f"Fashion-MNIST is not in {shown(raw)} and the download failed ({reason}). "
                    f"Fix: {moved or place}."
                ) from None
            if "download" in reason.lower():  # torchvision re-downloads a file of a wrong checksum
                reason = (
                    f"a checksum does not match and no fresh copy could be downloaded: {reason}"
                )
            split = [f.removesuffix(".gz") for f in FILES if f.startswith(("t10k", "train")[train])]
            # torchvision checks all four .gz as it loads the training split: the one that failed
            bad = [n for n, md5 in FashionMNIST.resources if damaged(raw / n, md5)]
            fresh = "run again" if cfg.download else "run with dataset.download=true"
            raise UsageError(
                f"Fashion-MNIST files in {shown(raw)} are damaged, {' or '.join(bad or split)} "
                f"({reason}). Fix: delete them and {fresh} to download fresh copies, or copy "
                f"fresh ones there."
            ) from None
        splits.append(Split(ds.data.unsqueeze(1), ds.targets))  # (N, 1, 28, 28) uint8, (N,) int64
    return *splits, spec


def unpacked(raw: Path) -> list[Split] | None:
    """Both splits from the four unpacked IDX files, read as torchvision reads them: its import
    is 1.2 s of a run's start-up here (its models, ops, transforms). None where one is missing or
    unreadable: torchvision then downloads it, or says what is wrong."""
    try:
        X, y, X_test, y_test = (idx(raw / f.removesuffix(".gz")) for f in FILES)
    except (OSError, ValueError, RuntimeError, struct.error):  # missing, or cut short
        return None
    if [t.ndim for t in (X, y, X_test, y_test)] != [3, 1, 3, 1]:
        return None
    return [Split(X.unsqueeze(1), y.long()), Split(X_test.unsqueeze(1), y_test.long())]


def idx(path: Path) -> torch.Tensor:
    """An IDX file of unsigned bytes (its magic number 0x08, then its number of dimensions)."""
    data = path.read_bytes()
    if data[:3] != b"\0\0\x08":
        raise ValueError(f"{path} is not an IDX file of bytes")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=4 + 4 * ndim).view(shape)


def unwritable(cfg: DictConfig, e: OSError) -> RunFailed:
    """dataset.root where the files cannot be downloaded or unpacked (a read-only mount)."""
    return RunFailed(
        f"dataset.root={cfg.root} is not writable ({e.strerror}: {e.filename}), and Fashion-MNIST "
        f"is downloaded and unpacked there. Fix: dataset.root=<a writable folder> (with the files "
        f"copied there if you have them)."
    )


def damaged(gz: Path, md5: str) -> bool:
    """gz is there, and its MD5 is not the release's."""
    return gz.exists() and hashlib.md5(gz.read_bytes()).hexdigest() != md5


def absent(folder: Path) -> list[str]:
    """The official files that are in folder neither compressed nor decompressed."""
    return [f for f in FILES if not any((folder / g).exists() for g in (f, f.removesuffix(".gz")))]


def unpack(resources: list[tuple[str, str]], raw: Path) -> None:
    """Each official .gz in raw/ whose unpacked file is not there, checked and unpacked."""
    for name, md5 in resources:
        gz = raw / name
        if (raw / gz.stem).exists() or not gz.exists():
            continue
        if damaged(gz, md5):
            raise UsageError(
                f"Fashion-MNIST file {gz} is damaged (its MD5 is not the release's) and "
                f"dataset.download=false. Fix: copy a fresh {name} from {URL} there, or "
                f"dataset.download=true."
            )
        atomic_write(raw / gz.stem, gzip.decompress(gz.read_bytes()))
