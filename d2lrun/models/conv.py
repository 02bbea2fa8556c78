"""One learnable convolution (§6.2.4): the kernel that turns an image into its edges."""

from __future__ import annotations

from torch import nn


class Conv2D(nn.Sequential):
    """nn.Conv2d(1, 1, kernel_size, bias=False) as §6.2.4 builds it; keys 0.weight (1, 1, h, w)."""

    def __init__(self, kernel_size: tuple[int, int], bias: bool = False):
        super().__init__(nn.Conv2d(1, 1, kernel_size=tuple(kernel_size), bias=bias))

    @property
    def kernel(self):
        return self[0].weight.detach().reshape(self[0].weight.shape[2:])  # (h, w)
