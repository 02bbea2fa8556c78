"""The convolutional models: §6.2.4's one learnable kernel, and LeNet-5 (§6.6) with a modern
variant (ReLU, max pooling, optional batch norm §7.5)."""

from torch import nn


class Conv2D(nn.Sequential):
    """nn.Conv2d(1, 1, kernel_size, bias=False) as §6.2.4 builds it; keys 0.weight (1, 1, h, w)."""

    def __init__(self, kernel_size: tuple[int, int], bias: bool = False):
        super().__init__(nn.Conv2d(1, 1, kernel_size=tuple(kernel_size), bias=bias))

    @property
    def kernel(self):
        return self[0].weight.detach().reshape(self[0].weight.shape[2:])  # (h, w)


class LeNet(nn.Sequential):
    """§6.6's nn.Sequential, so its state_dict keys are the book's: 0.*, 3.*, 7.*, 9.*, 11.*."""

    def __init__(self, num_classes: int, variant: str, batch_norm: bool, dropouts: list[float]):
        classic = variant == "classic"
        act = nn.Sigmoid if classic else nn.ReLU
        pool = nn.AvgPool2d if classic else nn.MaxPool2d
        d1, d2 = dropouts

        def norm(n: int, dims: int) -> list[nn.Module]:
            return [(nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(n)] if batch_norm else []

        def drop(p: float) -> list[nn.Module]:
            return [nn.Dropout(p)] if p > 0 else []

        # (B, 1, 28, 28) -> conv 5x5 pad 2 (B, 6, 28, 28) -> pool (B, 6, 14, 14)
        # -> conv 5x5 (B, 16, 10, 10) -> pool (B, 16, 5, 5) -> 400 -> 120 -> 84 -> num_classes
        super().__init__(
            nn.Conv2d(1, 6, kernel_size=5, padding=2),
            *norm(6, 2),
            act(),
            pool(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5),
            *norm(16, 2),
            act(),
            pool(kernel_size=2, stride=2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            *norm(120, 1),
            act(),
            *drop(d1),
            nn.Linear(120, 84),
            *norm(84, 1),
            act(),
            *drop(d2),
            nn.Linear(84, num_classes),
        )
