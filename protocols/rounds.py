"""Independent protocols in the same rounds: a protocol written as a generator of openings.

A protocol *step generator* yields, once per round, the list of shared
tensors it opens (``(tensor, ADD)`` for additive shares, summed in the
tensor's own ring: int64 for Z_2^64, uint8 for Z_2^8; ``(tensor, XOR)`` for
XOR-shared words), receives the opened tensors, and returns its result.
``drive`` runs several of them side by side: round ``i`` of every generator
goes into one exchange, so two protocols of 4 and 5 rounds that do not depend
on each other cost 5 rounds, not 9 (the comparison of a lookup's saturation
runs beside the lookup itself, ``protocols.lookup``).

Correlations are requested in the generators' code, in the order ``drive``
advances them (the first generator first in every round): the same order at
every party, as the dealer needs.  ``drive`` with a single generator is the
plain sequential protocol: one exchange per yield, the tensor sent with its
shape as ``sharing.open_all`` sends it.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import torch

from mpc.context import Expect, PartyContext

__all__ = ["ADD", "XOR", "Steps", "drive", "drive_one", "parallel"]

ADD, XOR = 0, 1

Opening = tuple[torch.Tensor, int]
Steps = Generator[tuple[str, list[Opening]], list[torch.Tensor], Any]


def _combine(mine: torch.Tensor, got: list[torch.Tensor], mode: int) -> torch.Tensor:
    """The opened value, accumulated into what came from the first peer (this party's own buffer; ``mine``
    stays as sent: the link keeps a view of it until the peer acknowledges it, in case it must go again)."""
    total = got[0]
    for g in [*got[1:], mine]:
        if mode == XOR:
            total ^= g
        else:
            total += g  # wraps in the tensor's ring (int64: 2^64, uint8: 2^8)
    return total


def _exchange(ctx: PartyContext, name: str, items: list[Opening]) -> list[torch.Tensor]:
    peers = [j for j in range(ctx.world_size) if j != ctx.rank]
    if len(items) == 1:
        t, mode = items[0]
        t = t.contiguous()
        got = ctx.comm.exchange(name, {j: t for j in peers}, {j: Expect(tuple(t.shape), t.dtype) for j in peers})
        return [_combine(t, [got[j] for j in peers], mode)]
    # One byte string; every piece starts at a multiple of 8 bytes (so it views back as its dtype).
    flats = [t.contiguous().reshape(-1) for t, _ in items]
    pieces, spans, at = [], [], 0
    for f in flats:
        raw = f.view(torch.uint8)
        pad = -raw.numel() % 8
        pieces.append(raw if not pad else torch.cat([raw, torch.zeros(pad, dtype=torch.uint8)]))
        spans.append((at, raw.numel()))
        at += raw.numel() + pad
    buf = torch.cat(pieces)
    got = ctx.comm.exchange(name, {j: buf for j in peers}, {j: Expect(tuple(buf.shape), torch.uint8) for j in peers})
    out = []
    for (t, mode), f, (start, nb) in zip(items, flats, spans, strict=True):
        theirs = [got[j][start : start + nb].view(f.dtype) for j in peers]
        out.append(_combine(f, theirs, mode).reshape(t.shape))
    return out


def parallel(gens: Sequence[Steps]) -> Steps:
    """The step generators side by side as one step generator: round ``i`` of every one of them in one
    opening (named by the first still running); its result is theirs, in order.  A protocol that has opened
    something all its parts need can run its parts in the same rounds (``yield from parallel(...)``)."""
    results: list[Any] = [None] * len(gens)
    pending: dict[int, tuple[str, list[Opening]]] = {}
    for i, g in enumerate(gens):
        try:
            pending[i] = next(g)
        except StopIteration as stop:
            results[i] = stop.value
    while pending:
        order = sorted(pending)
        items: list[Opening] = []
        counts = []
        for i in order:
            items += pending[i][1]
            counts.append(len(pending[i][1]))
        opened = yield pending[order[0]][0], items
        at = 0
        for i, c in zip(order, counts, strict=True):
            part = opened[at : at + c]
            at += c
            try:
                pending[i] = gens[i].send(part)
            except StopIteration as stop:
                results[i] = stop.value
                del pending[i]
    return results


def drive(ctx: PartyContext, gens: Sequence[Steps]) -> list[Any]:
    """Run the step generators side by side, one exchange per round for all of them; their results in order."""
    return drive_one(ctx, parallel(gens))


def drive_one(ctx: PartyContext, gen: Steps) -> Any:
    """One step generator on its own (each yield is one round)."""
    try:
        name, items = next(gen)
        while True:
            name, items = gen.send(_exchange(ctx, name, items))
    except StopIteration as stop:
        return stop.value
