"""Fashion-MNIST (§3.5) through torchvision's own loader, held as uint8 tensors (N, 1, 28, 28)."""

import gzip
import hashlib
from pathlib import Path

from omegaconf import DictConfig

from d2lrun.data import Spec, Split
from d2lrun.errors import RunFailed, UsageError
from d2lrun.files import atomic_write, remove_empty, shown

# d2l's text labels (§3.5 get_fashion_mnist_labels).
CLASS_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
               "bag", "ankle boot"]  # fmt: skip
FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz"]  # fmt: skip
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


def load(cfg: DictConfig, seed: int) -> tuple[Split, Split, Spec]:
    from torchvision.datasets import FashionMNIST  # imported only when this dataset is used

    root = Path(str(cfg.root)).expanduser()
    raw = root / "FashionMNIST" / "raw"
    missing = absent(raw)
    moved = None  # the files in root itself: dataset.root named raw/, or a folder of the .gz files
    if missing and not absent(root):
        moved = f"copy (or move) the files of {shown(root)} into {raw}"
        if root.name == "raw" and root.parent.name == "FashionMNIST":
            moved = f"dataset.root={shown(root.parent.parent)}"
    if missing and root.name == "FashionMNIST" and not absent(root / "raw"):  # one level low
        moved = f"dataset.root={shown(root.parent)}"
    if missing and not cfg.download:
        raise UsageError(
            f"Fashion-MNIST is not in {shown(raw)} (missing {', '.join(missing)}) and "
            f"dataset.download=false. "
            f"Fix: {moved or f'place the files from {URL} there, or dataset.download=true'}."
        )
    made = [p for p in (raw, *raw.parents) if not p.exists()]  # gone if it fails
    try:
        raw.mkdir(parents=True, exist_ok=True)  # where missing files are downloaded to
    except OSError as e:
        raise RunFailed(
            f"dataset.root={cfg.root} is not writable, so Fashion-MNIST cannot be downloaded "
            f"there ({e.strerror}). Fix: dataset.root=<a writable folder>."
        ) from None
    if not cfg.download:  # torchvision reads unpacked files only: the .gz placed there, unpacked
        unpack(FashionMNIST.resources, raw)
    splits = []
    for train in (True, False):
        try:
            ds = FashionMNIST(str(root), train=train, download=bool(cfg.download))
        except PermissionError as e:
            raise RunFailed(
                f"dataset.root={cfg.root} is not writable ({e.strerror}: {e.filename}). "
                f"Fix: dataset.root=<a writable folder>."
            ) from None
        except Exception as e:  # torchvision's RuntimeError, OSError, EOFError, ...: any failure
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
            fresh = "run again" if cfg.download else "run with dataset.download=true"
            raise UsageError(
                f"Fashion-MNIST files in {shown(raw)} are damaged, {' or '.join(split)} "
                f"({reason}). Fix: delete them and {fresh} to download fresh copies, or copy "
                f"fresh ones there."
            ) from None
        splits.append(Split(ds.data.unsqueeze(1), ds.targets))  # (N, 1, 28, 28) uint8, (N,) int64
    return *splits, Spec("fashion_mnist", "classification", 28 * 28, 10, [1, 28, 28], CLASS_NAMES)


def absent(folder: Path) -> list[str]:
    """The official files that are in folder neither compressed nor decompressed."""
    return [f for f in FILES if not any((folder / g).exists() for g in (f, f.removesuffix(".gz")))]


def unpack(resources: list[tuple[str, str]], raw: Path) -> None:
    """Each official .gz in raw/ whose unpacked file is not there, checked and unpacked."""
    for name, md5 in resources:
        gz = raw / name
        if (raw / gz.stem).exists() or not gz.exists():
            continue
        data = gz.read_bytes()
        if hashlib.md5(data).hexdigest() != md5:
            raise UsageError(
                f"Fashion-MNIST file {gz} is damaged (its MD5 is not the release's) and "
                f"dataset.download=false. Fix: copy a fresh {name} from {URL} there, or "
                f"dataset.download=true."
            )
        atomic_write(raw / gz.stem, gzip.decompress(data))
