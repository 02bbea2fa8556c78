"""Fashion-MNIST (§3.5) through torchvision's own loader, held as uint8 tensors (N, 1, 28, 28)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from d2lrun.data import Split

# d2l's text labels (§3.5 get_fashion_mnist_labels).
CLASS_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


def load(cfg: DictConfig, seed: int) -> tuple[Split, Split, dict]:
    from torchvision.datasets import FashionMNIST  # imported only when this dataset is used

    root = Path(str(cfg.root)).expanduser()
    raw = root / "FashionMNIST" / "raw"
    splits = []
    for train in (True, False):
        try:
            ds = FashionMNIST(str(root), train=train, download=bool(cfg.download))
        except PermissionError as e:
            raise PermissionError(f"dataset.root={cfg.root} is not writable ({e.strerror}: {e.filename}). "
                                  f"Fix: dataset.root=<a writable folder>.") from None
        except (RuntimeError, OSError, EOFError) as e:
            if not bool(cfg.download) or "download" in str(e).lower() or "not found" in str(e).lower():
                raise FileNotFoundError(
                    f"Fashion-MNIST is not in {raw} and could not be downloaded ({str(e).splitlines()[0]}). "
                    f"Fix: place {', '.join(FILES)} from {URL} in {raw}, or set dataset.root=<folder that has them>.") from None
            raise ValueError(f"Fashion-MNIST files in {raw} are damaged ({type(e).__name__}: {e}). "
                             f"Fix: delete them and run again to re-download, or copy fresh ones there.") from None
        splits.append(Split(ds.data.unsqueeze(1), ds.targets))  # (N, 1, 28, 28) uint8, (N,) int64
    spec = {"dataset": "fashion_mnist", "task": "classification", "num_inputs": 28 * 28, "num_outputs": 10,
            "image_shape": [1, 28, 28], "class_names": CLASS_NAMES}
    return splits[0], splits[1], spec
