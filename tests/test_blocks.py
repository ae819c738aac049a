"""Elementwise products of many elements run block by block (issue 11, item 3: bounded memory).

The block size is patched down so that the thread tier exercises several
blocks (with a ragged last one) on small tensors; the result must equal the
float64 oracle and cost two rounds a block.  ``scripts/bench.py --memory``
measures the memory this buys at 1e6, 1e7 and 1e8 elements.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import SECURE

import mpc
from protocols import ring_family

BLOCK = 1000


def _product(ctx, op: str, shape: tuple[int, ...]):
    g = torch.Generator().manual_seed(7)  # public test data
    xv = torch.rand(shape, generator=g, dtype=torch.float64) * 8 - 4
    yv = torch.rand(shape, generator=g, dtype=torch.float64) * 8 - 4
    x = mpc.share(xv if ctx.rank == 0 else None, owner=0)
    y = mpc.share(yv if ctx.rank == 1 else None, owner=1)
    before = ctx.stats.rounds
    z = x * y if op == "mul" else x.square()
    rounds = ctx.stats.rounds - before
    want = xv * yv if op == "mul" else xv * xv
    return (z.reveal() - want).abs().max().item(), rounds, tuple(z.shape)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("op", ["mul", "square"])
@pytest.mark.parametrize("n", [2, 3])
def test_products_over_the_block_size_run_in_blocks(sim, monkeypatch, op, n):
    monkeypatch.setattr(ring_family, "BLOCK_ELEMENTS", BLOCK)
    monkeypatch.setattr(ring_family, "MUL_BLOCK", BLOCK)
    shape = (25, 101)  # 2525 elements: blocks of 1000, 1000 and 525
    for err, rounds, got_shape in sim(functools.partial(_product, op=op, shape=shape), n, protocol=SECURE):
        assert got_shape == shape
        assert err < 2e-4, err  # inputs within 2^-17, |x| < 4
        # mul: pipelined, each round opens a block's differences with the previous block's truncation (3 + 1);
        # square: opening and truncation in each of three blocks
        assert rounds == (4 if op == "mul" else 2 * 3)


@pytest.mark.timeout(60)
def test_products_under_the_block_size_keep_two_rounds(sim, monkeypatch):
    monkeypatch.setattr(ring_family, "BLOCK_ELEMENTS", BLOCK)
    monkeypatch.setattr(ring_family, "MUL_BLOCK", BLOCK)
    for err, rounds, _ in sim(functools.partial(_product, op="mul", shape=(10, 100)), 2, protocol=SECURE):
        assert err < 2e-4 and rounds == 2
