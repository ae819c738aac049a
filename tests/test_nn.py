"""Thread tier: ``mpc.nn`` layers, losses and ``mpc.optim`` against torch on the same weights and inputs.

Every layer is built from a torch layer by ``mpc.nn.from_torch`` (party 0's
weights), run on an input shared by party 1, and compared with the torch
layer in float64.  Tolerances (f = 16, ulp = 2^-16 ~ 1.5e-5):

* Linear, Conv2d, pools, Flatten: weights are rounded to the grid (2^-17
  each) and each product truncated once: 2e-3 absolute for the small fan-ins
  used here (the bound sum |x| 2^-17 + 1.5 ulp is ~1e-4; the slack covers
  float32 weights);
* Sigmoid, Tanh, Softmax: 1e-3 (README) + the linear part: 2e-3; LogSoftmax 3e-3;
* BatchNorm: rsqrt's relative 1e-3 on outputs of size ~3: 1e-2;
* losses: MSE 1e-3, BCEWithLogits 3e-3 (module docstring), CrossEntropy 3e-3;
* optimizers: SGD 1e-4 after three steps, Adam 2e-4 (lr 1e-2, rsqrt's 1e-3 relative).

Every test runs under both protocol families (plaintext is exact, so it meets
the same bounds).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from conftest import SECURE

import mpc
import mpc.nn as mnn
from mpc.errors import MPCError, ProtocolError

torch.set_default_dtype(torch.float32)


def grid(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t * 2**16) / 2**16


def rand(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return grid(torch.randn(*shape, generator=g, dtype=torch.float64) * scale)


def seeded(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(grid((torch.rand(p.shape, generator=g) * 2 - 1).double() * 0.5).float())
    return module


def torch64(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(module).double()(x)


# ----- every layer's forward -------------------------------------------------------------------------

LAYERS = [
    # (torch layer, input shape, tolerance)
    (lambda: torch.nn.Linear(6, 4), (5, 6), 2e-3),
    (lambda: torch.nn.Linear(6, 3, bias=False), (2, 5, 6), 2e-3),
    (lambda: torch.nn.Conv2d(2, 3, 3), (2, 2, 6, 6), 2e-3),
    (lambda: torch.nn.Conv2d(2, 4, (3, 2), stride=2, padding=1, bias=False), (1, 2, 7, 6), 2e-3),
    (lambda: torch.nn.ReLU(), (4, 5), 0.0),
    (lambda: torch.nn.Sigmoid(), (4, 5), 2e-3),
    (lambda: torch.nn.Tanh(), (4, 5), 2e-3),
    (lambda: torch.nn.Softmax(dim=1), (4, 5), 2e-3),
    (lambda: torch.nn.LogSoftmax(dim=-1), (4, 5), 3e-3),
    (lambda: torch.nn.MaxPool2d(2), (2, 3, 6, 6), 0.0),
    (lambda: torch.nn.MaxPool2d(3, stride=1, padding=1), (1, 2, 5, 5), 0.0),
    (lambda: torch.nn.AvgPool2d(2), (2, 3, 6, 6), 2e-3),
    (lambda: torch.nn.AdaptiveAvgPool2d((2, 3)), (2, 3, 6, 6), 2e-3),
    (lambda: torch.nn.AdaptiveAvgPool2d(1), (2, 3, 4, 4), 2e-3),
    (lambda: torch.nn.Flatten(), (2, 3, 2, 2), 0.0),
    (lambda: torch.nn.Flatten(0, 1), (2, 3, 2), 0.0),
    (lambda: torch.nn.Dropout(0.3).eval(), (3, 4), 0.0),
    (lambda: torch.nn.Identity(), (3, 4), 0.0),
]


def _layers(ctx, cases):
    out = []
    for i, (make, shape, _) in enumerate(cases):
        layer = seeded(make(), i)
        model = mnn.from_torch(layer if ctx.rank == 0 else None, owner=0)
        if not layer.training:
            model.eval()
        x = mpc.share(rand(*shape, seed=i, scale=2.0) if ctx.rank == 1 else None, owner=1)
        out.append(model(x).reveal())
    return out


@pytest.mark.timeout(120)
def test_every_layer_matches_torch(sim, protocol):
    results = sim(functools.partial(_layers, cases=LAYERS), 2, protocol=protocol)
    for got in results:
        for i, ((make, shape, tol), y) in enumerate(zip(LAYERS, got)):
            layer = seeded(make(), i)
            want = torch64(layer, rand(*shape, seed=i, scale=2.0))
            assert y.shape == want.shape, (i, y.shape, want.shape)
            err = (y.double() - want).abs().max().item()
            assert err <= tol + 1e-9, f"{type(layer).__name__} (case {i}): error {err:.2e} over {tol}"


def _adaptive_refused(ctx):
    x = mpc.share(torch.zeros(1, 1, 5, 5) if ctx.rank == 0 else None, owner=0)
    with pytest.raises(ProtocolError, match="not a multiple of output_size"):
        mnn.AdaptiveAvgPool2d(2)(x)
    return True


@pytest.mark.timeout(30)
def test_adaptive_pool_refuses_unequal_windows(sim, protocol):
    assert all(sim(_adaptive_refused, 2, protocol=protocol))


# ----- BatchNorm: training statistics, running statistics, evaluation ---------------------------------------


def _batchnorm(ctx, bn, xs, x_eval):
    model = mnn.from_torch(bn if ctx.rank == 0 else None, owner=0)
    outs = []
    for x in xs:
        outs.append(model(mpc.share(x if ctx.rank == 1 else None, owner=1)).reveal())
    model.eval()
    outs.append(model(mpc.share(x_eval if ctx.rank == 1 else None, owner=1)).reveal())
    state = {k: (v.reveal() if isinstance(v, mpc.SecretTensor) else v) for k, v in model.state_dict().items()}
    return outs, state


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["1d", "2d", "1d-momentum-none"])
def test_batchnorm_train_and_eval(sim, protocol, kind):
    if kind == "2d":
        bn, shape = torch.nn.BatchNorm2d(3), (4, 3, 3, 3)
    else:
        bn, shape = torch.nn.BatchNorm1d(3, momentum=None if kind.endswith("none") else 0.1), (8, 3)
    seeded(bn, 1)
    xs = [rand(*shape, seed=s, scale=2.0) + s for s in range(2)]
    x_eval = rand(*shape, seed=9)
    ref = copy.deepcopy(bn).double()
    want = [ref(x) for x in xs]
    ref.eval()
    want.append(ref(x_eval))
    for outs, state in sim(functools.partial(_batchnorm, bn=bn, xs=xs, x_eval=x_eval), 2, protocol=protocol):
        for y, w in zip(outs, want):
            assert (y.double() - w.detach()).abs().max() <= 1e-2
        assert int(state["num_batches_tracked"]) == 2
        assert torch.allclose(state["running_mean"].double(), ref.running_mean, atol=1e-3)
        assert torch.allclose(state["running_var"].double(), ref.running_var, atol=2e-3)


# ----- Dropout ------------------------------------------------------------------------------------------


def _dropout(ctx, x, p):
    xs = mpc.share(x if ctx.rank == 0 else None, owner=0)
    keep, mine = mnn.random.joint_bernoulli(ctx, tuple(x.shape), p, _with_contribution=True)
    layer = mnn.Dropout(p)
    y = layer(xs).reveal()
    layer.eval()
    same = layer(xs).reveal()
    return keep.reveal(), mine, y, same


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
def test_dropout_mask_is_joint_and_scaled(sim, n):
    """P(keep) = 1 - p; kept values are scaled by 1 / (1 - p); no party's own bits determine the mask."""
    p = 0.25
    x = torch.ones(64, 64, dtype=torch.float64)
    results = sim(functools.partial(_dropout, x=x, p=p), n, protocol=SECURE)
    keep = results[0][0]
    assert set(keep.unique().tolist()) <= {0, 1}
    rate = keep.double().mean().item()
    assert abs(rate - (1 - p)) < 0.03, rate  # 4096 draws: sd 0.007
    for _, mine, y, same in results:
        kept = y[y != 0]
        assert torch.allclose(kept.double(), torch.full_like(kept.double(), 1 / (1 - p)), atol=1e-4)
        assert abs((y != 0).double().mean().item() - (1 - p)) < 0.03
        assert torch.equal(same, x.to(same.dtype))  # eval: the identity
        # A party's own contribution alone says nothing about the mask: the mask it would get from its bits
        # alone agrees with the true one about as often as two independent masks (p^2 + (1-p)^2).
        alone = (mine >= p).to(keep.dtype)
        agree = (alone == keep).double().mean().item()
        assert abs(agree - (p * p + (1 - p) ** 2)) < 0.04, agree
    masks = [r[0] for r in results]
    assert all(torch.equal(m, masks[0]) for m in masks)


def _dropout_views(ctx, p):
    x = mpc.share(torch.ones(256, dtype=torch.float64) if ctx.rank == 0 else None, owner=0)
    return (mnn.Dropout(p)(x) != 0).reveal(to=0)


@pytest.mark.timeout(60)
def test_dropout_frames_hold_no_mask(sim):
    """What each party receives while drawing the mask is shares and masked openings, never the mask's bytes."""
    received: dict = {}
    out = sim(functools.partial(_dropout_views, p=0.5), 2, protocol=SECURE, received=received)
    mask = out[0].to(torch.int64)
    enc = (mask << 16).numpy().tobytes()  # the fixed-point encoding of the 0/1 mask
    for rank in (1,):
        payload = b"".join(frame[2] for frame in received[rank])
        assert enc not in payload
    assert out[1] is None


# ----- losses ---------------------------------------------------------------------------------------------


def _losses(ctx, x, y01, idx, onehot):
    xs = mpc.share(x if ctx.rank == 0 else None, owner=0)
    ys = mpc.share(y01 if ctx.rank == 1 else None, owner=1)
    idx_s = mpc.share(idx if ctx.rank == 1 else None, owner=1)
    oh_s = mpc.share(onehot if ctx.rank == 1 else None, owner=1)
    out = {
        "mse": mnn.MSELoss()(xs, ys),
        "mse_sum": mnn.MSELoss(reduction="sum")(xs, y01),
        "bce": mnn.BCEWithLogitsLoss()(xs, ys),
        "bce_none": mnn.BCEWithLogitsLoss(reduction="none")(xs, ys),
        "bce_pw": mnn.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0, 1.0, 0.5, 1.0]))(xs, ys),
        "ce_public": mnn.CrossEntropyLoss()(xs, idx),
        "ce_secret": mnn.CrossEntropyLoss()(xs, idx_s),
        "ce_onehot": mnn.CrossEntropyLoss()(xs, oh_s),
        "ce_weight": mnn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5, 1.0]))(xs, idx),
        "ce_smooth": mnn.CrossEntropyLoss(label_smoothing=0.1, reduction="sum")(xs, idx),
    }
    return {k: v.reveal() for k, v in out.items()}


@pytest.mark.timeout(120)
def test_losses_match_torch(sim, protocol):
    x = rand(6, 4, seed=3, scale=4.0)
    x[0, 0], x[1, 1] = 20.0, -25.0  # large logits: the stable forms
    y01 = (rand(6, 4, seed=4) > 0).double()
    idx = torch.tensor([0, 3, 1, 2, 3, 0])
    onehot = torch.nn.functional.one_hot(idx, 4).double()
    F = torch.nn.functional  # noqa: N806 (torch's alias)
    want = {
        "mse": F.mse_loss(x, y01),
        "mse_sum": F.mse_loss(x, y01, reduction="sum"),
        "bce": F.binary_cross_entropy_with_logits(x, y01),
        "bce_none": F.binary_cross_entropy_with_logits(x, y01, reduction="none"),
        "bce_pw": F.binary_cross_entropy_with_logits(x, y01, pos_weight=torch.tensor([2.0, 1.0, 0.5, 1.0]).double()),
        "ce_public": F.cross_entropy(x, idx),
        "ce_secret": F.cross_entropy(x, idx),
        "ce_onehot": F.cross_entropy(x, onehot),
        "ce_weight": F.cross_entropy(x, idx, weight=torch.tensor([1.0, 2.0, 0.5, 1.0]).double()),
        "ce_smooth": F.cross_entropy(x, idx, label_smoothing=0.1, reduction="sum"),
    }
    tol = {"mse": 1e-3, "mse_sum": 2e-2, "ce_smooth": 2e-2}
    for got in sim(functools.partial(_losses, x=x, y01=y01, idx=idx, onehot=onehot), 2, protocol=protocol):
        for k, w in want.items():
            err = (got[k].double() - w).abs().max().item()
            assert err <= tol.get(k, 3e-3), f"{k}: error {err:.2e}"


# ----- optimizers: updates against torch's on the same gradients ----------------------------------------------

OPTIMIZERS = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("sgd", dict(lr=0.05, momentum=0.5, dampening=0.1, maximize=True)),
    ("adam", dict(lr=1e-2)),
    ("adam", dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.01)),
]


def _optimize(ctx, kind, kw, p0, grads):
    ps = [mnn.Parameter(mpc.share(p if ctx.rank == 0 else None, owner=0)) for p in p0]
    opt = (mpc.optim.SGD if kind == "sgd" else mpc.optim.Adam)(ps, **kw)
    for step in grads:
        for p, g in zip(ps, step):
            p.grad = mpc.share(g if ctx.rank == 1 else None, owner=1)
        opt.step()
        opt.zero_grad()
    assert all(p.grad is None for p in ps)
    return [p.reveal() for p in ps]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind,kw", OPTIMIZERS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(OPTIMIZERS)])
def test_optimizer_updates_match_torch(sim, protocol, kind, kw):
    p0 = [rand(3, 4, seed=1), rand(4, seed=2)]
    grads = [[rand(3, 4, seed=10 + s, scale=0.3), rand(4, seed=20 + s, scale=0.05)] for s in range(3)]
    tp = [p.clone().requires_grad_() for p in p0]
    topt = (torch.optim.SGD if kind == "sgd" else torch.optim.Adam)(tp, **kw)
    for step in grads:
        for p, g in zip(tp, step):
            p.grad = g.clone()
        topt.step()
    tol = 1e-4 if kind == "sgd" else 2e-4
    for got in sim(functools.partial(_optimize, kind=kind, kw=kw, p0=p0, grads=grads), 2, protocol=protocol):
        for g, w in zip(got, tp):
            err = (g.double() - w.detach()).abs().max().item()
            assert err <= tol, f"{kind} {kw}: error {err:.2e}"


def _clip(ctx):
    p = mnn.Parameter(mpc.share(torch.zeros(5) if ctx.rank == 0 else None, owner=0))
    p.grad = mpc.share(torch.tensor([-3.0, -0.5, 0.0, 0.25, 7.0]) if ctx.rank == 0 else None, owner=0)
    mnn.utils.clip_grad_value_([p], 1.0)
    return p.grad.reveal()


@pytest.mark.timeout(30)
def test_clip_grad_value(sim, protocol):
    for g in sim(_clip, 2, protocol=protocol):
        assert torch.equal(g, torch.tensor([-1.0, -0.5, 0.0, 0.25, 1.0]))


# ----- one training step with autograd against torch ----------------------------------------------------------


def _train(ctx, net, kind, x, y, steps):
    model = mnn.from_torch(net if ctx.rank == 0 else None, owner=0)
    opt = (
        mpc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        if kind == "sgd"
        else mpc.optim.Adam(model.parameters(), lr=1e-2)
    )
    xs = mpc.share(x if ctx.rank == 1 else None, owner=1)
    ys = mpc.share(y if ctx.rank == 1 else None, owner=1)
    loss_fn = mnn.CrossEntropyLoss()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(xs), ys)
        loss.backward()
        opt.step()
        losses.append(loss.reveal())
    return losses, {k: v.reveal() for k, v in model.state_dict().items()}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_training_steps_match_torch(sim, protocol, kind):
    torch.manual_seed(0)
    net = seeded(torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)), 5)
    x = rand(16, 5, seed=6)
    y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(7))
    ref = copy.deepcopy(net).double()
    topt = (
        torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
        if kind == "sgd"
        else torch.optim.Adam(ref.parameters(), lr=1e-2)
    )
    want_losses = []
    for _ in range(2):
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ref(x), y)
        loss.backward()
        topt.step()
        want_losses.append(loss.item())
    for losses, state in sim(functools.partial(_train, net=net, kind=kind, x=x, y=y, steps=2), 2, protocol=protocol):
        assert [abs(a.item() - b) < 5e-3 for a, b in zip(losses, want_losses)] == [True, True], (losses, want_losses)
        for k, w in ref.state_dict().items():
            err = (state[k].double() - w).abs().max().item()
            # Adam: an element whose exact gradient is ~0 (a dead unit) gets fixed-point noise of a few ulps,
            # and Adam's scale-free step turns it into up to lr per step (mpc.optim.adam); SGD is exact to 5e-3.
            assert err <= (5e-3 if kind == "sgd" else 2 * 1e-2 + 5e-3), f"{kind}: {k} off by {err:.2e}"


# ----- the module protocol -----------------------------------------------------------------------------------


class Net(mnn.Module):
    def __init__(self, owner=0):
        super().__init__()
        self.features = mnn.Sequential(mnn.Conv2d(1, 2, 3, owner=owner), mnn.BatchNorm2d(2), mnn.ReLU())
        self.head = mnn.Linear(8, 2, owner=owner)
        self.drop = mnn.Dropout(0.5)

    def forward(self, x):
        return self.head(self.drop(self.features(x).flatten(1)))


def _protocol(ctx):
    net = Net()
    names = [k for k, _ in net.named_parameters()]
    state = list(net.state_dict())
    assert [type(m).__name__ for m in net.children()] == ["Sequential", "Linear", "Dropout"]
    assert len(list(net.modules())) == 7
    assert all(p.requires_grad for p in net.parameters())
    net.eval()
    assert not net.training and not net.features[1].training
    x = mpc.share(torch.ones(1, 1, 4, 4) if ctx.rank == 0 else None, owner=0)
    out = net(x)
    out.sum().backward()
    assert net.head.weight.grad is not None
    net.zero_grad()
    assert net.head.weight.grad is None
    # load_state_dict copies secret values in place; a plaintext tensor is refused
    other = Net(owner=1)
    net.load_state_dict(other.state_dict())
    same = (net.head.weight - other.head.weight).abs().sum().reveal()
    with pytest.raises(ProtocolError, match="is secret"):
        net.load_state_dict({**net.state_dict(), "head.bias": torch.zeros(2)})
    with pytest.raises(ProtocolError, match="missing keys"):
        net.load_state_dict({"head.bias": net.head.bias})
    w = net.head.weight.reveal()
    joint = mnn.Linear(100, 50, owner=None).weight.reveal()
    return names, state, float(same), w, joint


@pytest.mark.timeout(60)
def test_module_protocol(sim, protocol):
    for names, state, same, w, joint in sim(_protocol, 2, protocol=protocol):
        assert names == ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
                         "head.weight", "head.bias"]  # fmt: skip
        assert state == names[:4] + ["features.1.running_mean", "features.1.running_var",
                                     "features.1.num_batches_tracked"] + names[4:]  # fmt: skip
        assert same == 0.0
        bound = 1 / 8**0.5
        assert w.abs().max() <= bound + 1e-4  # torch's default init bound
        assert joint.abs().max() <= 0.1 + 1e-4 and joint.std() > 0.05  # U(-0.1, 0.1), drawn jointly
    with pytest.raises(MPCError):
        mnn.Linear(2, 2, ctx=None)  # no party context here
