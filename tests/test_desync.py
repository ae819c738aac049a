"""Programs checked to match: a running transcript digest in every frame, DesyncError at every party.

Each example of the numbers issue diverges in a way that the operation names
alone do not show.  Every party must raise ``DesyncError`` within seconds,
naming the first operation that differs (its index, name and call site in this
file) and what each side ran.
"""

from __future__ import annotations

import functools
import time

import pytest
import torch

import mpc
from mpc.errors import DesyncError
from parties import wire

THIS = "test_desync.py"


def _swap_share_order(ctx):
    if ctx.rank == 0:
        a = mpc.share(torch.ones(3), owner=0)
        b = mpc.share(None, owner=1)
    else:
        b = mpc.share(torch.ones(3), owner=1)
        a = mpc.share(None, owner=0)
    return (a * b).reveal()


def _different_shapes(ctx):
    x = mpc.share(torch.ones(3) if ctx.rank == 0 else None, owner=0)
    w = x.reshape(3) if ctx.rank == 0 else x.reshape(1, 3)
    return (w * w).reveal()


def _different_public_constant(ctx):
    x = mpc.share(torch.ones(3) if ctx.rank == 0 else None, owner=0)
    lr = 0.1 if ctx.rank == 0 else 0.5
    return (x * lr).reveal()


def _local_row_count(ctx):
    # horizontal split: each party scales the joint gradient by its own row count
    rows = 30 + 10 * ctx.rank
    x = mpc.share(torch.ones(4) if ctx.rank == 0 else None, owner=0)
    return (x * (1.0 / rows)).reveal()


def _different_loop_count(ctx):
    x = mpc.share(torch.full((3,), 1.01) if ctx.rank == 0 else None, owner=0)
    for _ in range(3 if ctx.rank == 0 else 4):
        x = x * x
    return x.reveal()


def _different_recipients(ctx):
    x = mpc.share(torch.ones(3) if ctx.rank == 0 else None, owner=0)
    return x.reveal(to=0 if ctx.rank == 0 else 1)


def _public_add_differs(ctx):
    x = mpc.share(torch.ones(3) if ctx.rank == 0 else None, owner=0)
    y = x + (1.0 if ctx.rank == 0 else 2.0)  # local: caught at the next message
    return y.reveal()


EXAMPLES = {
    "share order": (_swap_share_order, "share(owner="),
    "shapes": (_different_shapes, "reshape("),
    "public constant": (_different_public_constant, "mul("),
    "local row count": (_local_row_count, "mul("),
    "loop count": (_different_loop_count, "#"),
    "reveal recipients": (_different_recipients, "reveal("),
    "local public add": (_public_add_differs, "add("),
}


def _catching(prog, errors, ctx):
    try:
        return prog(ctx)
    except DesyncError as exc:
        errors[ctx.rank] = str(exc)
        raise


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", ["additive-dealer", "plaintext"])
@pytest.mark.parametrize("name", list(EXAMPLES))
def test_every_party_names_the_first_difference(sim, name, protocol):
    prog, what = EXAMPLES[name]
    errors: dict[int, str] = {}
    start = time.monotonic()
    with pytest.raises(DesyncError):
        sim(functools.partial(_catching, prog, errors), 2, protocol=protocol)
    assert time.monotonic() - start < 8.0
    assert sorted(errors) == [0, 1], errors  # at every party
    for rank, text in errors.items():
        assert "diverge at operation #" in text, text
        assert what in text, text
        assert f"{THIS}:" in text, text  # the call site in the user's script
        assert f"party {1 - rank}" in text and f"party {rank}" in text, text


@pytest.mark.timeout(60)
def test_what_differed_is_shown_for_both_sides(sim):
    errors: dict[int, str] = {}
    with pytest.raises(DesyncError):
        sim(functools.partial(_catching, _different_public_constant, errors), 2)
    for text in errors.values():
        assert "mul(secret(3,):float32, 0.1)" in text and "mul(secret(3,):float32, 0.5)" in text, text


@pytest.mark.timeout(60)
def test_three_parties_one_diverges(sim):
    def prog(ctx, errors):
        try:
            x = mpc.share(torch.ones(3) if ctx.rank == 0 else None, owner=0)
            y = x * (0.25 if ctx.rank != 2 else 0.75)
            return y.reveal()
        except mpc.CommunicationError as exc:
            errors[ctx.rank] = exc
            raise

    errors: dict = {}
    with pytest.raises(mpc.CommunicationError):
        sim(functools.partial(prog, errors=errors), 3)
    assert isinstance(errors[2], DesyncError)
    assert any(isinstance(errors.get(r), DesyncError) for r in (0, 1))


@pytest.mark.timeout(60)
def test_matching_programs_pass_and_the_digest_travels(sim):
    received: dict = {}

    def prog(ctx):
        x = mpc.share(torch.ones(3) if ctx.rank == 0 else None, owner=0)
        return (x * 0.5 + 1).reveal(), ctx.transcript.count

    results = sim(prog, 2, received=received)
    assert [r[0].tolist() for r in results] == [[1.5, 1.5, 1.5]] * 2
    assert results[0][1] == results[1][1] == 4  # share, mul, add, reveal
    headers = [wire.decode_header(h, 1 << 30) for _, h, _ in received[1]]
    assert any(h.opidx > 0 and h.digest != bytes(8) for h in headers)


def _run_divergent(ctx):
    x = mpc.share(torch.ones(3) if ctx.rank == 0 else None, owner=0)
    return (x * (0.1 if ctx.rank == 0 else 0.5)).reveal()


@pytest.mark.timeout(120)
def test_desync_in_real_processes():
    start = time.monotonic()
    with pytest.raises(mpc.PartyFailed) as info:
        mpc.run(_run_divergent, parties=2, timeout=20)
    assert time.monotonic() - start < 60
    assert info.value.error_type == "DesyncError"
    assert "diverge at operation #2" in str(info.value)
