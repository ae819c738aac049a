"""``mpc.nn.from_torch`` and ``reveal``: torch models to secret ones and back, and the description's validation.

Outputs are compared with torch in float64 (2e-3 absolute: weights rounded to
the grid, one truncation per product, small fan-ins).  The description parser
is tested without parties (pure tier) on hostile inputs.
"""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch
import torch.nn as nn

import mpc
import mpc.nn as mnn
from mpc.errors import MPCError
from mpc.nn import convert


def grid(t):
    return torch.round(t * 2**16) / 2**16


def seeded(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(grid((torch.rand(p.shape, generator=g) * 2 - 1) * 0.5))
    return module


class Block(nn.Module):
    """A residual block: two branches added (fx)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.head = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        y = self.conv2(torch.relu(self.bn(self.conv1(x))))
        z = y + x
        z = torch.flatten(z, 1)
        return self.head(z.view(z.size(0), -1))


def mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.LogSoftmax(dim=1))


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Sequential(nn.Flatten(), nn.Linear(3 * 3 * 3, 4)), nn.Tanh()
    )


MODELS = {"mlp": (mlp, (4, 6)), "cnn": (cnn, (2, 1, 8, 8)), "residual": (Block, (2, 2, 4, 4))}


def _convert(ctx, model, x, others):
    held = model if ctx.rank == 0 else (None if others == "none" else seeded(copy.deepcopy(model), 99))
    secret = mnn.from_torch(held, owner=0)
    secret.eval()
    xs = mpc.share(x if ctx.rank == 1 else None, owner=1)
    y = secret(xs).reveal()
    back_owner = secret.reveal(to=0)
    back_other = secret.reveal(to=1)
    return y, back_owner, back_other, type(secret).__name__


@pytest.mark.timeout(120)
@pytest.mark.parametrize("others", ["none", "template"])
@pytest.mark.parametrize("name", list(MODELS))
def test_from_torch_matches_torch_and_reveals_back(sim, protocol, name, others):
    make, shape = MODELS[name]
    model = seeded(make(), 1).eval()
    x = grid(torch.randn(*shape, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        want = copy.deepcopy(model).double()(x.double())
    out = sim(functools.partial(_convert, model=model, x=x, others=others), 2, protocol=protocol)
    for rank, (y, back_owner, back_other, kind) in enumerate(out):
        assert kind == ("GraphModule" if name == "residual" else "Sequential")
        assert (y.double() - want).abs().max() <= 2e-3
        mine = back_owner if rank == 0 else back_other
        assert (back_other if rank == 0 else back_owner) is None
        assert isinstance(mine, nn.Module)
        if rank == 1 and others == "none":
            assert isinstance(mine, torch.fx.GraphModule if name == "residual" else nn.Sequential)
        # the round trip: the revealed module has party 0's weights (up to the grid) and runs in torch
        ref = model.state_dict()
        for k, v in mine.state_dict().items():
            assert torch.allclose(v.double(), ref[k].double(), atol=2**-16), k
        with torch.no_grad():
            assert (mine.eval()(x) - model(x)).abs().max() <= 1e-4


def _unsupported(ctx, model):
    with pytest.raises(MPCError) as info:
        mnn.from_torch(model, owner=0)
    return str(info.value)


class Gelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.fc(x))


class Sin(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return torch.sin(self.fc(x))


class Branchy(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "make,words",
    [
        (lambda: nn.Sequential(nn.Linear(3, 3), nn.LSTM(3, 3)), ["torch.nn.modules.rnn.LSTM", "module '1'"]),
        (Gelu, ["GELU", "module 'act'", "fx node 'act'"]),
        (Sin, ["function torch.sin", "fx node 'sin'"]),
        (lambda: nn.Sequential(nn.Conv2d(1, 1, 3, padding="same")), ["Conv2d with padding", "module '0'"]),
        (Branchy, ["torch.fx cannot trace Branchy"]),
    ],
    ids=["lstm", "gelu", "sin", "conv-same", "control-flow"],
)
def test_unsupported_layers_and_functions_are_named(sim, make, words):
    for msg in sim(functools.partial(_unsupported, model=make()), 2, protocol="plaintext"):
        for w in words:
            assert w in msg, msg


def _mismatch(ctx):
    mnn.from_torch(mlp() if ctx.rank == 0 else cnn(), owner=0)
    return True


@pytest.mark.timeout(60)
def test_a_different_architecture_at_a_non_owner_is_refused(sim):
    with pytest.raises(MPCError, match="party 1 .* has another architecture than party 0's"):
        sim(_mismatch, 2, protocol="plaintext")


# ----- the description's validation (pure tier) ---------------------------------------------------------------


def _desc(model):
    return json.loads(json.dumps(convert.describe(model)))


def _decode(obj) -> dict:
    raw = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
    return convert.decode(torch.frombuffer(bytearray(raw), dtype=torch.uint8))


def test_descriptions_round_trip_through_json():
    for make, _ in MODELS.values():
        d = _desc(make())
        assert _decode(d) == d
    assert _decode(_desc(Block()))["root"]["type"] == "Graph"


def _mutations():
    seq = _desc(mlp())
    graph = _desc(Block())
    out = []

    def m(base, fn, words):
        d = copy.deepcopy(base)
        fn(d)
        out.append((d, words))

    m(seq, lambda d: d["root"]["children"][0][1].update(type="Evil"), "unknown layer type")
    m(seq, lambda d: d["root"]["children"][0][1]["hparams"].update(in_features=-3), "not a valid value")
    m(seq, lambda d: d["root"]["children"][0][1]["hparams"].update(in_features="6"), "not a valid value")
    m(seq, lambda d: d["root"]["children"][0][1]["hparams"].update(extra=1), "expected the keys")
    m(seq, lambda d: d["root"]["children"].append(["../x", d["root"]["children"][0][1]]), "expected [name, layer]")
    m(seq, lambda d: d.update(version=2), "version")
    m(seq, lambda d: d.update(format="pickle"), "format")
    m(graph, lambda d: d["root"]["nodes"][1]["args"].append({"n": "output"}), "not an earlier node")
    m(graph, lambda d: d["root"]["nodes"][3].update(target="os.system"), "not supported")
    m(graph, lambda d: d["root"]["nodes"][3].update(op="call_method", target="reveal"), "not supported")
    m(graph, lambda d: d["root"]["nodes"][1].update(target="missing.module"), "does not list")
    m(graph, lambda d: d["root"]["nodes"].pop(), "no output node")
    m(graph, lambda d: d["root"].update({"class": "x; import os"}), "not an identifier")
    m(graph, lambda d: d["root"]["nodes"][2]["args"].append({"x": 1}), "is not a value")
    return out


@pytest.mark.parametrize("desc,words", _mutations())
def test_hostile_descriptions_are_refused(desc, words):
    with pytest.raises(MPCError, match="invalid|format|version") as info:
        _decode(desc)
    assert words in str(info.value)


def test_malformed_bytes_are_refused():
    for raw in (b"\xff\xfe", b"{", b"[" * 100000 + b"]" * 100000, b'{"format": 1}'):
        with pytest.raises(MPCError):
            _decode(raw)
    with pytest.raises(MPCError, match="1 MiB"):
        convert.decode(torch.zeros(convert.MAX_DESCRIPTION_BYTES + 1, dtype=torch.uint8))
