"""d2lrun's SGD and Adam take exactly torch.optim's steps, and save and restore like it."""

import pytest
import torch
from omegaconf import OmegaConf

from d2lrun.optim import Adam, SGD, build_optimizer


def net_and_groups(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    weights = [p for p in net.parameters() if p.ndim == 2]
    biases = [p for p in net.parameters() if p.ndim == 1]
    return net, [{"params": weights, "weight_decay": 0.1}, {"params": biases, "weight_decay": 0.0}]


def train(make, steps=6):
    net, groups = net_and_groups()
    opt = make(groups)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net, opt


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lambda g: SGD(g, lr=0.1), lambda g: torch.optim.SGD(g, lr=0.1)),
        (
            lambda g: SGD(g, lr=0.1, momentum=0.9),
            lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9),
        ),
        (lambda g: Adam(g, lr=0.01), lambda g: torch.optim.Adam(g, lr=0.01)),
        (
            lambda g: Adam(g, lr=0.01, betas=(0.8, 0.99)),
            lambda g: torch.optim.Adam(g, lr=0.01, betas=(0.8, 0.99)),
        ),
    ],
)
def test_same_steps_as_torch_optim(ours, theirs):
    a, _ = train(ours)
    b, _ = train(theirs)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "make", [lambda g: SGD(g, lr=0.1, momentum=0.9), lambda g: Adam(g, lr=0.01)]
)
def test_state_dict_round_trip_continues_identically(make):
    net, opt = train(make, steps=3)
    saved_net = {k: v.clone() for k, v in net.state_dict().items()}
    saved_opt = opt.state_dict()
    assert sorted(saved_opt) == ["param_groups", "state"]
    torch.save(saved_opt, buf := __import__("io").BytesIO())
    buf.seek(0)
    restored = torch.load(buf, weights_only=True)
    net2, groups2 = net_and_groups(seed=5)
    net2.load_state_dict(saved_net)
    opt2 = make(
        [
            {"params": [p for p in net2.parameters() if p.ndim == 2], "weight_decay": 0.1},
            {"params": [p for p in net2.parameters() if p.ndim == 1], "weight_decay": 0.0},
        ]
    )
    opt2.load_state_dict(restored)
    for o, n in ((opt, net), (opt2, net2)):
        x = torch.ones(2, 5)
        o.zero_grad()
        n(x).sum().backward()
        o.step()
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, q)


def test_build_optimizer_decays_weights_only():
    net, _ = net_and_groups()
    opt = build_optimizer(
        net,
        OmegaConf.create({"name": "adam", "lr": 0.1, "betas": [0.9, 0.999], "weight_decay": 0.5}),
    )
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    assert [p.ndim for p in opt.param_groups[0]["params"]] == [2, 2]
