"""§6.2.4 Learning a kernel: a 6x8 image of a vertical stripe and the edges [1, -1] finds in it."""

import torch
from omegaconf import DictConfig

from d2lrun.data import Spec, Split


def corr2d(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """§6.2.1's two-dimensional cross-correlation, written as the book writes it."""
    h, w = K.shape
    Y = torch.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1))
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i : i + h, j : j + w] * K).sum()
    return Y


def load(cfg: DictConfig, seed: int) -> tuple[Split, Split, Spec]:
    X = torch.ones((6, 8))
    X[:, 2:6] = 0  # §6.2.3: black in the middle, white at the sides
    Y = corr2d(X, torch.tensor([list(cfg.kernel)]))  # (6, 7): 1 at white->black, -1 at black->white
    image = Split(X.reshape(1, 1, 6, 8), Y.reshape(1, 1, *Y.shape))  # (batch, channel, H, W)
    spec = Spec("kernel", "regression", 48, Y.numel(), [1, 6, 8], true_kernel=[list(cfg.kernel)])
    return image, image, spec  # the book trains on the one image and watches its loss
