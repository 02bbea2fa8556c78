"""Linear and softmax regression (§3.1-3.7), concise (nn.Linear) and from scratch (raw tensors).

Sections as in the book's PyTorch builds (zh 2.0.0, en 0.17.5). The concise models are the book's
nn.Sequential definitions, so their state_dict keys match the book's (`0.weight` for §3.3,
`1.weight` for §3.7) and `net.load_state_dict(...)` works there.
"""

import torch
from torch import nn


class LinearRegression(nn.Sequential):
    """§3.3: nn.Sequential(nn.Linear(num_inputs, 1)), keys 0.weight, 0.bias (no bias in §4.4)."""

    def __init__(self, num_inputs: int, bias: bool = True):
        super().__init__(nn.Linear(num_inputs, 1, bias=bias))

    def get_w_b(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self[0].bias
        return self[0].weight.detach().reshape(-1), b.detach() if b is not None else torch.zeros(1)


class LinearRegressionScratch(nn.Module):
    """§3.2: w (num_inputs, 1), laid out (fan_in, fan_out) as the book writes it, and b."""

    def __init__(self, num_inputs: int, bias: bool = True):
        super().__init__()
        # Values: d2lrun.models.init (§3.2: N(0, 0.01²) and 0) or a checkpoint.
        self.w = nn.Parameter(torch.empty(num_inputs, 1))
        self.b = nn.Parameter(torch.empty(1)) if bias else None  # none in §4.4

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        y = X @ self.w  # (B, d) @ (d, 1) -> (B, 1)
        return y + self.b if self.b is not None else y

    def get_w_b(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.b.detach() if self.b is not None else torch.zeros(1)
        return self.w.detach().reshape(-1), b

    def layers(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """(weight, bias) per layer, for d2lrun.models.init."""
        return [(self.w, self.b)]


class SoftmaxRegression(nn.Sequential):
    """§3.7: nn.Sequential(nn.Flatten(), nn.Linear(num_inputs, num_outputs)); outputs logits."""

    def __init__(self, num_inputs: int, num_outputs: int):
        super().__init__(nn.Flatten(), nn.Linear(num_inputs, num_outputs))


class SoftmaxRegressionScratch(nn.Module):
    """§3.6: W (num_inputs, num_outputs) and b; outputs the logits XW + b."""

    def __init__(self, num_inputs: int, num_outputs: int):
        super().__init__()
        self.W = nn.Parameter(torch.empty(num_inputs, num_outputs))  # values: d2lrun.models.init
        self.b = nn.Parameter(torch.empty(num_outputs))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        # No softmax: the scratch loss (d2lrun.trainer.cross_entropy_scratch) is its stable form.
        return X.reshape(-1, self.W.shape[0]) @ self.W + self.b  # (B, d) @ (d, q) -> (B, q)

    def layers(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """(weight, bias) per layer, for d2lrun.models.init."""
        return [(self.W, self.b)]
