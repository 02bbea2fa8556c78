"""d2lrun's Optimizer takes exactly torch.optim's SGD and Adam steps, L1 included, saves and
restores like it (torch.optim loads its state_dict), and never imports torch._dynamo."""

import io
import subprocess
import sys
import textwrap

import pytest
import torch
from omegaconf import OmegaConf

from d2lrun.errors import UsageError
from d2lrun.optim import Optimizer, build_optimizer
from tests.conftest import ROOT


def SGD(groups, **hyper):
    return Optimizer(torch.optim.SGD, groups, **hyper)


def Adam(groups, **hyper):
    return Optimizer(torch.optim.Adam, groups, **hyper)


def net_and_groups(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    weights = [p for p in net.parameters() if p.ndim == 2]
    biases = [p for p in net.parameters() if p.ndim == 1]
    return net, [{"params": weights, "weight_decay": 0.1}, {"params": biases, "weight_decay": 0.0}]


def batches(steps):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        yield torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)


def saved_and_loaded(state_dict):
    """A state_dict after torch.save and torch.load, as a checkpoint holds it."""
    torch.save(state_dict, buf := io.BytesIO())
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def train(make, steps=6, penalty=None):
    """steps minibatches of cross-entropy (plus penalty(net), if any) from the same start."""
    net, groups = net_and_groups()
    opt = make(groups)
    for x, y in batches(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        (loss + penalty(net) if penalty else loss).backward()
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
    restored = saved_and_loaded(saved_opt)
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


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (
            lambda g: SGD(g, lr=0.03, momentum=0.9),
            lambda g: torch.optim.SGD(g, lr=0.03, momentum=0.9),
        ),
        (lambda g: Adam(g, lr=0.01, betas=(0.8, 0.99)), lambda g: torch.optim.Adam(g)),
    ],
)
def test_torch_optim_loads_our_state_dict_and_takes_the_same_next_step(ours, theirs):
    """A checkpoint's optimizer state is torch.optim's own: torch.optim.SGD or Adam loads it
    (hyperparameters, momentum buffers, Adam's moments and step count) and goes on exactly as
    d2lrun's optimizer does."""
    net, opt = train(ours, steps=3)
    twin, groups = net_and_groups(seed=5)
    twin.load_state_dict(net.state_dict())
    theirs_opt = theirs(groups)
    # Through a file, as from a checkpoint: loaded in memory, torch.optim (like d2lrun) would
    # share the very tensors of the momentum buffers, and the first to step would move both.
    theirs_opt.load_state_dict(saved_and_loaded(opt.state_dict()))
    for o, n in ((opt, net), (theirs_opt, twin)):
        for x, y in batches(2):
            o.zero_grad()
            torch.nn.functional.cross_entropy(n(x), y).backward()
            o.step()
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_building_and_stepping_it_does_not_import_torch_dynamo():
    """torch.optim.SGD(...) imports torch._dynamo (seconds of start-up on a small CPU); d2lrun's
    optimizer does not. In a fresh process: the tests here construct torch.optim's."""
    code = textwrap.dedent(
        """
        import sys
        import torch
        from omegaconf import OmegaConf
        from d2lrun.optim import build_optimizer

        net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        for cfg in (
            {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.1},
            {"name": "adam", "lr": 0.01, "betas": [0.9, 0.999], "weight_decay": 0.1},
        ):
            opt = build_optimizer(net, OmegaConf.create(cfg), l1=0.1)
            for _ in range(2):
                opt.zero_grad()
                net(torch.randn(8, 5)).sum().backward()
                opt.step()
            opt.load_state_dict(opt.state_dict())
        assert "torch._dynamo" not in sys.modules, "d2lrun's optimizer imported torch._dynamo"
        torch.optim.SGD(net.parameters(), lr=0.1)  # the check sees the import where there is one
        assert "torch._dynamo" in sys.modules, "torch.optim.SGD no longer imports torch._dynamo"
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert r.returncode == 0, r.stderr


def l1_penalty(lambd):
    """The book's λ·Σ|w| over the weights (2-D parameters), not the biases, for autograd."""
    return lambda net: lambd * sum(p.abs().sum() for p in net.parameters() if p.ndim >= 2)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (
            lambda g: SGD(g, lr=0.1, momentum=0.9),
            lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9),
        ),
        (lambda g: Adam(g, lr=0.01), lambda g: torch.optim.Adam(g, lr=0.01)),
    ],
)
def test_l1_step_is_torch_optims_step_on_the_loss_plus_l1_of_the_weights(ours, theirs):
    """With l1 = λ on the weights' group, d2lrun's step on the data loss equals, bit for bit,
    torch.optim's step on the data loss + λ·Σ|w| over the weights only (autograd's gradient)."""
    lambd = 0.05

    def with_l1(groups):
        weights, biases = groups
        return [{**weights, "l1": lambd}, biases]

    a, _ = train(lambda g: ours(with_l1(g)))
    b, _ = train(theirs, penalty=l1_penalty(lambd))
    plain, _ = train(theirs)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(a[0].weight, plain[0].weight)  # the L1 term did change the weights


def test_build_optimizer_puts_l1_on_the_weights_only():
    net, _ = net_and_groups()
    cfg = {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}
    opt = build_optimizer(net, OmegaConf.create(cfg), l1=0.05)
    assert [g["l1"] for g in opt.param_groups] == [0.05, 0.0]
    assert [p.ndim for p in opt.param_groups[0]["params"]] == [2, 2]


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
