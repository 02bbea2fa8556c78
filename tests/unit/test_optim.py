"""d2lrun's SGD and Adam take exactly torch.optim's steps, and save and restore like it."""

import pytest
import torch
from omegaconf import OmegaConf

from d2lrun.errors import UsageError
from d2lrun.optim import SGD, Adam, build_optimizer


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
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
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
    for p, q in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_build_optimizer_decays_weights_only():
    net, _ = net_and_groups()
    opt = build_optimizer(
        net,
        OmegaConf.create({"name": "adam", "lr": 0.1, "betas": [0.9, 0.999], "weight_decay": 0.5}),
    )
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    assert [p.ndim for p in opt.param_groups[0]["params"]] == [2, 2]


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lambda ps: SGD(ps, lr=0.1), lambda ps: torch.optim.SGD(ps, lr=0.1)),
        (lambda ps: Adam(ps, lr=0.01), lambda ps: torch.optim.Adam(ps, lr=0.01)),
    ],
)
def test_groups_without_weight_decay_get_none_as_in_torch_optim(ours, theirs):
    def without_decay(groups):
        return [{"params": g["params"]} for g in groups]

    a, _ = train(lambda g: ours(without_decay(g)))
    b, _ = train(lambda g: theirs(without_decay(g)))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (
            lambda ps: SGD(ps, lr=0.1, momentum=0.9),
            lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        ),
        (lambda ps: Adam(ps, lr=0.01), lambda ps: torch.optim.Adam(ps, lr=0.01)),
    ],
)
def test_restored_state_goes_where_torch_optim_puts_it(ours, theirs):
    """Resuming on a GPU: the state follows the parameters to their device, and Adam's step count
    stays a CPU scalar. The "meta" device stands in for the GPU this machine may not have."""
    _, opt = train(ours)
    saved = opt.state_dict()
    devices = []
    for make in (ours, theirs):
        params = list(net_and_groups()[0].to("meta").parameters())
        restored = make([{"params": [p for p in params if p.ndim == n]} for n in (2, 1)])
        restored.load_state_dict(saved)
        devices.append([{k: v.device.type for k, v in s.items()} for s in restored.state.values()])
    assert devices[0] == devices[1] and "meta" in {d for s in devices[0] for d in s.values()}


def test_a_state_dict_of_another_number_of_groups_is_refused():
    _, opt = train(lambda g: Adam(g, lr=0.01))
    _, groups = net_and_groups()
    one_group = Adam([{"params": [p for g in groups for p in g["params"]]}], lr=0.01)
    with pytest.raises(UsageError) as e:
        one_group.load_state_dict(opt.state_dict())
    assert str(e.value) == (
        "the checkpoint's optimizer has another number of parameter groups. "
        "Fix: resume with the run's own model and optimizer."
    )
