"""Opened masks are reused: an operand opened by one product is not opened again (issue 12).

A matrix product or convolution leaves the Beaver mask it opened for each
operand in the operand's ``Memo`` (``mpc.shares``); a later product with the
same value (the same share, or its transpose) takes a triple built on that
mask (``ptruncr``), so it opens only its other operand.  Logistic regression
opens its data matrix once instead of twice a step; a linear layer's backward
pass opens only the incoming gradient.

Thread tier: bytes on the wire against the same program with reuse off, the
results against float64, at 2 and 3 parties; values that change are opened
again; a share changed in place is refused; the dealer draws old masks again
only within its window; the speculator guesses requests that name earlier
ones.  Process tier: the logistic-regression loop over TCP with the dealer in
its own process.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import SECURE

import mpc
import protocols.beaver as beaver
from mpc.errors import ProtocolError
from protocols.correlated import DealerGenerator, Speculator, request_seed

N_ROWS, N_COLS, STEPS = 256, 12, 4


def _data():
    g = torch.Generator().manual_seed(11)  # public test data
    x = torch.rand(N_ROWS, N_COLS, generator=g, dtype=torch.float64) * 2 - 1
    y = (torch.rand(N_ROWS, 1, generator=g, dtype=torch.float64) > 0.5).double()
    return x, y


def _logreg_plain(steps: int = STEPS) -> torch.Tensor:
    x, y = _data()
    w = torch.zeros(N_COLS, 1, dtype=torch.float64)
    for _ in range(steps):
        w = w - x.t() @ (torch.sigmoid(x @ w) - y) / 256
    return w


def logreg(ctx, steps: int = STEPS):
    """Full-batch logistic regression; returns the weights and the bytes each step sent."""
    xv, yv = _data()
    x = mpc.share(xv if ctx.rank == 0 else None, 0, ctx)
    y = mpc.share(yv if ctx.rank == ctx.world_size - 1 else None, ctx.world_size - 1, ctx)
    w = mpc.share(torch.zeros(N_COLS, 1, dtype=torch.float64) if ctx.rank == 0 else None, 0, ctx)
    sent = []
    for _ in range(steps):
        before = ctx.stats.snapshot()["bytes_sent"]
        w = w - (x.t() @ ((x @ w).sigmoid() - y)) * (1 / 256)
        sent.append(ctx.stats.snapshot()["bytes_sent"] - before)
    return w.reveal().numpy(), sent


def _no_reuse(monkeypatch) -> None:
    monkeypatch.setattr(beaver, "REUSE_WINDOW", 0)  # every mask is "too old": each product opens afresh


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
def test_a_data_matrix_is_opened_once(sim, monkeypatch, n):
    want = _logreg_plain()
    on = sim(logreg, n, protocol=SECURE)
    _no_reuse(monkeypatch)
    off = sim(logreg, n, protocol=SECURE)
    x_bytes = 8 * (n - 1) * N_ROWS * N_COLS  # opening X once, to every other party
    for (w_on, s_on), (w_off, s_off) in zip(on, off, strict=True):
        assert float(abs(torch.from_numpy(w_on) - want).max()) < 2e-4
        assert float(abs(torch.from_numpy(w_off) - want).max()) < 2e-4
        # without reuse every step opens X (forward) and X^T (backward); with it, only the first step, once
        assert s_off[0] - s_on[0] == x_bytes
        assert all(off_k - on_k == 2 * x_bytes for off_k, on_k in zip(s_off[1:], s_on[1:], strict=True))
        assert s_on[1] == s_on[2] == s_on[3]


def linear_step(ctx):
    """A linear layer's forward and backward pass: returns its gradients and the backward's bytes."""
    g = torch.Generator().manual_seed(12)
    xv = torch.rand(16, 10, generator=g, dtype=torch.float64) - 0.5
    wv = torch.rand(4, 10, generator=g, dtype=torch.float64) - 0.5
    x = mpc.share(xv if ctx.rank == 0 else None, 0, ctx, requires_grad=True)
    w = mpc.share(wv if ctx.rank == 1 else None, 1, ctx, requires_grad=True)
    out = mpc.functional.linear(x, w)
    loss = (out * out).sum()
    before = ctx.stats.snapshot()["bytes_sent"]
    loss.backward()
    sent = ctx.stats.snapshot()["bytes_sent"] - before
    return x.grad.reveal().numpy(), w.grad.reveal().numpy(), sent


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
def test_a_linear_layers_backward_opens_only_the_gradient(sim, monkeypatch, n):
    g = torch.Generator().manual_seed(12)
    xv = (torch.rand(16, 10, generator=g, dtype=torch.float64) - 0.5).requires_grad_()
    wv = (torch.rand(4, 10, generator=g, dtype=torch.float64) - 0.5).requires_grad_()
    out = torch.nn.functional.linear(xv, wv)
    (out * out).sum().backward()
    on = sim(linear_step, n, protocol=SECURE)
    _no_reuse(monkeypatch)
    off = sim(linear_step, n, protocol=SECURE)
    for (gx, gw, opened_on), (gx2, gw2, opened_off) in zip(on, off, strict=True):
        for got in (gx, gx2):
            assert float(abs(torch.from_numpy(got) - xv.grad).max()) < 1e-3
        for got in (gw, gw2):
            assert float(abs(torch.from_numpy(got) - wv.grad).max()) < 1e-3
        # backward: g @ W and X^T @ g.  Without reuse it opens g, W, X^T and g again; with it, g once.
        g_elems, w_elems, x_elems = 16 * 4, 4 * 10, 16 * 10
        assert opened_off - opened_on == 8 * (n - 1) * (w_elems + x_elems + g_elems), (opened_off, opened_on)


def changed_values(ctx):
    """Values that change are opened again; the same value, even as a new ``SecretTensor``, is not."""
    xv = torch.arange(12, dtype=torch.float64).reshape(3, 4) / 8
    wv = torch.ones(4, 2, dtype=torch.float64) / 4
    x = mpc.share(xv if ctx.rank == 0 else None, 0, ctx)
    w = mpc.share(wv if ctx.rank == 1 else None, 1, ctx)
    costs, outs = [], []

    def product(a, b):
        before = ctx.stats.snapshot()["bytes_sent"]
        outs.append((a @ b).reveal())
        costs.append(ctx.stats.snapshot()["bytes_sent"] - before)

    product(x, w)  # opens both
    product(x, w)  # opens neither
    product(x + 1, w)  # x + 1 is a new value at every party (at party 0 a new tensor, elsewhere the same one)
    product(x.detach(), w.t().t())  # the same values: opens neither
    return outs, costs


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_changed_values_are_opened_again(sim, n):
    xv = torch.arange(12, dtype=torch.float64).reshape(3, 4) / 8
    wv = torch.ones(4, 2, dtype=torch.float64) / 4
    res = sim(changed_values, n, protocol=SECURE)
    trunc = 8 * (n - 1) * 3 * 2  # the truncation's opening of the 3 x 2 result
    reveal = 8 * (n - 1) * 3 * 2
    for outs, costs in res:
        for got, want in zip(outs, [xv @ wv, xv @ wv, (xv + 1) @ wv, xv @ wv], strict=True):
            assert float(abs(got - want).max()) < 1e-3
        both, none = 8 * (n - 1) * (12 + 8) + trunc + reveal, trunc + reveal
        assert costs == [both, none, 8 * (n - 1) * 12 + trunc + reveal, none], costs
    assert len({tuple(c) for _, c in res}) == 1  # every party decided alike


def changed_in_place(ctx):
    x = mpc.share(torch.ones(3, 3) if ctx.rank == 0 else None, 0, ctx)
    w = mpc.share(torch.ones(3, 3) if ctx.rank == 1 else None, 1, ctx)
    (x @ w).reveal()
    x.share.data.add_(0)  # against the rule "shares are values": an in-place change, even of nothing
    return (x @ w).reveal()


@pytest.mark.timeout(60)
def test_a_share_changed_in_place_is_refused(sim):
    with pytest.raises(ProtocolError, match="changed in place"):
        sim(changed_in_place, 2, protocol=SECURE)


def under_inference_mode(ctx):
    """Tensors made under ``torch.inference_mode`` keep no version counter: products still run and reuse."""
    with torch.inference_mode():
        x = mpc.share(torch.ones(3, 3) if ctx.rank == 0 else None, 0, ctx)
        w = mpc.share(torch.ones(3, 3) / 2 if ctx.rank == 1 else None, 1, ctx)
        first = (x @ w).reveal()
        before = ctx.stats.snapshot()["bytes_sent"]
        second = (x @ w).reveal()
        return first, second, ctx.stats.snapshot()["bytes_sent"] - before


@pytest.mark.timeout(60)
def test_products_under_inference_mode(sim):
    for first, second, sent in sim(under_inference_mode, 2, protocol=SECURE):
        assert torch.allclose(first, torch.full((3, 3), 1.5), atol=1e-4) and torch.equal(first.round(), second.round())
        assert sent == 2 * 8 * 9  # the truncation and the reveal: neither operand opened again


@pytest.mark.timeout(60)
def test_a_mask_outside_the_window_is_opened_again(sim, monkeypatch):
    """Masks older than the window are opened afresh (same results); the dealer refuses a reference it no
    longer holds, naming the request."""
    # A logistic regression step makes 3 requests (X w, the sigmoid, X^T g): with a window of 2 neither X^T g
    # (2 requests after X w) nor the next step's X w (3 after) finds X's mask.
    monkeypatch.setattr(beaver, "REUSE_WINDOW", 2)
    want = _logreg_plain()
    res = sim(logreg, 2, protocol=SECURE)
    x_bytes = 8 * N_ROWS * N_COLS
    for w, sent in res:
        assert float(abs(torch.from_numpy(w) - want).max()) < 2e-4
        assert sent[1] == sent[2] and sent[1] >= 2 * x_bytes  # X and X^T opened in every step again
    gen = DealerGenerator([bytes([1]) * 32, bytes([2]) * 32])
    gen.next_seeds()
    with pytest.raises(ProtocolError, match="request 5"):
        gen.mask(5, 0, (2, 2))


def test_the_dealer_draws_a_mask_again_as_the_parties_drew_it():
    seeds = [bytes([i + 1]) * 32 for i in range(3)]
    gen = DealerGenerator(seeds)
    subs = gen.next_seeds()
    from mpc.prg import Prg

    req = ("triple", (0, 2, 4, 5, 2, 5, 3))  # any request: the sub-streams are keyed with it
    with pytest.raises(ProtocolError, match="not served yet"):
        gen.mask(0, 20, (5, 3))  # the request's content is not known yet: its streams cannot be drawn
    gen.served(0, *req)
    total = None
    for s in subs:
        prg = Prg(request_seed(s, *req))
        prg.int64((4, 5))  # the first part (x's mask)
        part = prg.int64((5, 3))  # the second (y's), 20 elements into the stream
        total = part if total is None else total + part
    assert torch.equal(gen.mask(0, 20, (5, 3)), total)
    assert torch.equal(gen.mask(0, 20, (5, 3)), total)  # from the dealer's copy


def test_the_speculator_shifts_references_of_the_same_iteration_only():
    """A step: a forward product (fresh), a backward one that reuses the forward's mask (a reference a few
    requests back), one that reuses a data matrix's mask drawn before the loop (a fixed reference), and a
    comparison."""
    period, data_serial = 4, 0
    reqs = [("ptrunc", (16, 1, 2, 8, 4, 2, 4, 1))]  # request 0: the data matrix's first product
    for k in range(12):
        base = 1 + period * k
        reqs += [
            ("ptrunc", (16, 1, 2, 8, 4, 2, 4, 1)),
            ("ptruncr", (16, 1, base, 32, 1, -1, 0, 0, 2, 1, 8, 2, 8, 4)),
            ("ptruncr", (16, 1, data_serial, 0, 1, -1, 0, 0, 2, 4, 8, 2, 8, 1)),
            ("cmp", (8, 1, 4, 0)),
        ]
    spec = Speculator(confirm=4)
    guess = None
    for kind, params in reqs:
        spec.observe(kind, params, guess)
        guess = spec.guess()
    assert spec.period == period
    assert spec.misses == 0 and spec.hits >= 8 * period, (spec.hits, spec.misses)
    nxt = 1 + period * 12
    assert spec.guess(1) == ("ptruncr", (16, 1, nxt, 32, 1, -1, 0, 0, 2, 1, 8, 2, 8, 4))
    assert spec.guess(2)[1][2] == data_serial
    assert spec.guess(period + 1)[1][2] == nxt + period  # the iteration after: shifted once more


@pytest.mark.timeout(180)
def test_reuse_over_tcp_with_the_dealer_process(party_logs):
    want = _logreg_plain(3)
    results = mpc.run(functools.partial(logreg, steps=3), parties=3, timeout=30, run_timeout=150)
    x_bytes = 8 * 2 * N_ROWS * N_COLS
    for w, sent in results:
        assert float(abs(torch.from_numpy(w) - want).max()) < 2e-4
        # the first step opens X once; the later ones open none of it
        assert sent[0] - sent[1] == x_bytes and sent[1] == sent[2], sent
