"""Multilayer perceptrons (§4.2-4.3, dropout §4.6), concise and from scratch."""

from itertools import pairwise

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class MLP(nn.Sequential):
    """§4.3: Flatten, per hidden layer Linear + activation (+ Dropout §4.6), then Linear."""

    def __init__(self, num_inputs: int, num_outputs: int, num_hiddens: list[int],
                 activation: str, dropouts: list[float]):  # fmt: skip
        layers: list[nn.Module] = [nn.Flatten()]
        sizes = [num_inputs, *num_hiddens]
        for (fan_in, fan_out), p in zip(pairwise(sizes), dropouts, strict=True):
            layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
            if p > 0:
                layers.append(nn.Dropout(p))
        layers.append(nn.Linear(sizes[-1], num_outputs))
        super().__init__(*layers)  # one hidden layer, no dropout: the book's keys 1.* and 3.*


def dropout_layer(X: torch.Tensor, p: float, generator: torch.Generator | None = None):
    """§4.6's dropout_layer: keep each unit with probability 1 - p and scale it by 1 / (1 - p)."""
    if generator is None:  # rand_like: torch.compile traces it for batches of any size
        rand = torch.rand_like(X)
    else:  # a stack's member's own (d2lrun.stack)
        rand = torch.rand(X.shape, generator=generator, device=X.device)
    mask = (rand > p).float()
    return mask * X / (1.0 - p)


class MLPScratch(nn.Module):
    """§4.2: W_l (fan_in, fan_out) and b_l per layer, hand-written activations; init sets them."""

    def __init__(self, num_inputs: int, num_outputs: int, num_hiddens: list[int],
                 activation: str, dropouts: list[float]):  # fmt: skip
        super().__init__()
        sizes = [num_inputs, *num_hiddens, num_outputs]
        self.Ws = nn.ParameterList(nn.Parameter(torch.empty(a, b)) for a, b in pairwise(sizes))
        self.bs = nn.ParameterList(nn.Parameter(torch.empty(b)) for b in sizes[1:])
        self.activation, self.dropouts = activation, dropouts

    def layers(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """(weight, bias) per layer, input to output, for d2lrun.models.init."""
        return list(zip(self.Ws, self.bs, strict=True))

    def act(self, H: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return torch.max(H, torch.zeros_like(H))  # §4.2's relu
        if self.activation == "sigmoid":
            return 1 / (1 + torch.exp(-H))
        return torch.tanh(H)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        H = X.reshape(-1, self.Ws[0].shape[0])  # (B, d)
        for W, b, p in zip(self.Ws, self.bs, self.dropouts, strict=False):  # the hidden layers
            H = self.act(H @ W + b)
            if self.training and p > 0:
                H = dropout_layer(H, p)
        return H @ self.Ws[-1] + self.bs[-1]  # (B, q) logits
