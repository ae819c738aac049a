"""The dealer pushes its guess of the next correlation before the last party asks (issue 12, item 5).

The last party runs the dealer's speculator on its own requests and asks for
the next request's material to be pushed; a right guess answers the request
with nothing more on the wire, a wrong one is answered again.  What each party
received is read off the wire.  A wrong guess's material must tell the last
party nothing: each request's sub-streams are keyed with the request itself.
"""

from __future__ import annotations

import functools
import os
from collections import Counter

import pytest
import torch
from conftest import SECURE

import mpc
from mpc.errors import ProtocolError
from mpc.prg import Prg
from mpc.ring import logical_rshift
from parties import dealer, wire
from protocols import correlated as C

N = 2  # parties; the dealer is node N


def _loop(ctx, steps: int, odd: int | None):
    """A layer and a ReLU, step after step; step ``odd`` squares as well (the dealer's guesses miss there)."""
    g = torch.Generator().manual_seed(3)  # public test data
    xv = torch.rand(6, 5, generator=g, dtype=torch.float64) - 0.5
    wv = torch.rand(5, 3, generator=g, dtype=torch.float64) - 0.5
    x = mpc.share(xv if ctx.rank == 0 else None, owner=0)
    w = mpc.share(wv if ctx.rank == 1 else None, owner=1)
    want = (xv @ wv).clamp(min=0)
    err = 0.0
    for step in range(steps):
        h = (x @ w).relu()
        if step == odd:
            h = h * h
        err = max(err, float((h.reveal() - (want * want if step == odd else want)).abs().max()))
    return err, ctx.stats.dealer_pushed, ctx.stats.dealer_pushed_wrong


def _dealer_ops(received: dict, n: int = N) -> tuple[Counter, int]:
    """The operations of the data messages the last party got from the dealer, and the requests it made."""
    got = Counter()
    for sender, h, _ in received[n - 1]:
        hd = wire.decode_header(h, 1 << 40)
        if sender == n and hd.kind == wire.KIND_DATA and hd.op.startswith("corr:"):  # not the setup
            got[hd.op] += 1
    for party in range(n - 1):  # the dealer sends the others nothing but their seeds
        heads = [wire.decode_header(h, 1 << 40) for s, h, _ in received[party] if s == n]
        assert [hd.op for hd in heads if hd.kind == wire.KIND_DATA] == ["setup:dealer"]
    asked = 0
    for sender, h, _ in received[n]:
        hd = wire.decode_header(h, 1 << 40)
        asked += sender == n - 1 and hd.kind == wire.KIND_DATA and hd.op.startswith("corr:")
    return got, asked


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_a_pushed_guess_answers_the_request_and_a_wrong_one_is_answered_again(sim, n):
    received: dict = {}
    res = sim(functools.partial(_loop, steps=16, odd=8), n, protocol=SECURE, received=received)
    assert max(r[0] for r in res) < 1e-3
    _, right, wrong = res[n - 1]
    got, asked = _dealer_ops(received, n)
    pushes, bodies = got.pop(C.PUSH_HEAD), got.pop(C.PUSH_BODY)
    replies = sum(got.values())
    assert asked == 2 * 16 + 1  # a layer's product and a ReLU's comparison a step; the odd step's square
    # Every request is answered once: by pushed material (right) or by a reply; a wrong push is answered again.
    assert right + replies == asked, (right, replies, asked)
    # (the push of a guessed request after the last may come before the party closes, unread)
    assert right + wrong <= bodies <= right + wrong + 1 and pushes >= bodies
    assert right > asked // 2 and wrong >= 1, (right, wrong)
    assert all(r[1:] == (0, 0) for r in res[:-1])  # only the last party asks the dealer


@pytest.mark.timeout(60)
def test_a_guess_the_dealer_cannot_make_is_answered_by_the_request(sim, monkeypatch):
    class NoPush(dealer.Ahead):
        def push(self, guess):
            super().push(None)
            return None

    monkeypatch.setattr(dealer, "Ahead", NoPush)
    received: dict = {}
    res = sim(functools.partial(_loop, steps=10, odd=None), N, protocol=SECURE, received=received)
    assert max(r[0] for r in res) < 1e-3
    got, asked = _dealer_ops(received)
    assert got[C.PUSH_HEAD] > 0 and got[C.PUSH_BODY] == 0  # the marker without material
    assert sum(n for op, n in got.items() if op not in (C.PUSH_HEAD, C.PUSH_BODY)) == asked
    assert res[N - 1][1:] == (0, 0)


@pytest.mark.timeout(60)
def test_a_party_asks_no_push_over_a_quarter_of_its_buffer_limit(sim):
    received: dict = {}
    # A ReLU of 600 elements takes about 36 KB of material: over a quarter of 64 KB; the layer's fits.
    res = sim(
        functools.partial(_big_relu_loop, steps=8), N, protocol=SECURE, received=received, max_buffered_bytes=1 << 16
    )
    assert max(res) < 1e-3
    sizes = [len(p) for s, h, p in received[N - 1] if s == N and wire.decode_header(h, 1 << 40).op == C.PUSH_BODY]
    assert sizes and max(sizes) <= (1 << 16) // 4, sizes  # the small requests are pushed, the ReLU's not


def _big_relu_loop(ctx, steps: int):
    g = torch.Generator().manual_seed(5)
    xv = torch.rand(600, generator=g, dtype=torch.float64) - 0.5
    av = torch.rand(4, generator=g, dtype=torch.float64) - 0.5
    x = mpc.share(xv if ctx.rank == 0 else None, owner=0)
    a = mpc.share(av if ctx.rank == 1 else None, owner=1)
    err = 0.0
    for _ in range(steps):
        err = max(err, float((x.relu().reveal() - xv.clamp(min=0)).abs().max()))
        err = max(err, float(((a * a).reveal() - av * av).abs().max()))
    return err


@pytest.mark.timeout(60)
def test_a_dealer_that_disagrees_on_the_guess_is_refused_by_name(sim, monkeypatch):
    monkeypatch.setattr(dealer, "guess_digest", lambda guess: bytes(C.PUSH_DIGEST_BYTES))
    with pytest.raises(ProtocolError, match="disagree on the request stream"):
        sim(functools.partial(_loop, steps=10, odd=None), N, protocol=SECURE)


def _rotl(s: torch.Tensor, f: int) -> torch.Tensor:
    return (s << f) | logical_rshift(s, 64 - f)


def test_material_from_a_wrong_guess_is_independent_of_the_request():
    """Two requests of the same shapes that differ only in the truncation's shift: were both made from the same
    sub-streams, the difference of the two corrections' first parts would be rotl(s, 16) - rotl(s, 20) for the
    request's mask s (the last party would learn s, and so party 0's share of it).  Keyed with the request, the
    sub-streams differ, and so does everything the last party could combine."""
    seeds = [os.urandom(32) for _ in range(N)]
    shapes = C.pack_shapes((1000,), (1000,))
    guess, real = ("ptrunc", (16, C.OP_MUL, *shapes)), ("ptrunc", (20, C.OP_MUL, *shapes))
    gen = C.DealerGenerator(seeds)
    base = gen.next_seeds()
    wrong = C.unpack_correction(gen.correction(*guess, base), [(1000,)] * 3, [8, 2, 2])[0]
    right = C.unpack_correction(gen.correction(*real, base), [(1000,)] * 3, [8, 3, 3])[0]
    s = None
    for b in base:
        draw = Prg(C.request_seed(b, *real))
        draw.int64((1000,))
        draw.int64((1000,))
        part = draw.int64((1000,))
        s = part if s is None else s + part
    assert not torch.equal(wrong - right, _rotl(s, 16) - _rotl(s, 20))
    # The last party's own random parts differ too: nothing of the wrong guess's stream is used again.
    mine = [Prg(C.request_seed(base[-1], *req)).int64((1000,)) for req in (guess, real)]
    assert not torch.equal(*mine)
    # And the dealer's material for the real request is what it would be had nothing been guessed.
    fresh = C.DealerGenerator(seeds)
    assert torch.equal(fresh.correction(*real), gen.correction(*real, base))


@pytest.mark.timeout(120)
def test_pushes_over_tcp_in_real_processes():
    res = mpc.run(functools.partial(_loop, steps=16, odd=8), N)
    assert max(r[0] for r in res) < 1e-3
    _, right, wrong = res[N - 1]
    assert right > 16 and wrong >= 1, (right, wrong)  # as in threads: the same requests, the same guesses
