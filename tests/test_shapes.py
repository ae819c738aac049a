"""``mpc.shapes.broadcast_shapes`` against ``torch.broadcast_shapes``: the same shape, or an error for both."""

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mpc.shapes import broadcast_shapes


def _torch(*shapes):
    try:
        return tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        return None


def _ours(*shapes):
    try:
        return broadcast_shapes(*shapes)
    except RuntimeError:
        return None


def test_agrees_with_torch_on_random_shapes():
    rng = random.Random(7)
    dims = [0, 1, 1, 2, 3, 5]
    agreed = failed = 0
    for _ in range(3000):
        shapes = [tuple(rng.choice(dims) for _ in range(rng.randint(0, 4))) for _ in range(rng.randint(1, 3))]
        want = _torch(*shapes)
        assert _ours(*shapes) == want, shapes
        agreed += want is not None
        failed += want is None
    assert agreed > 500 and failed > 500  # both outcomes were exercised


@pytest.mark.parametrize(
    ("shapes", "want"),
    [
        (((131072,), (131072,)), (131072,)),
        (((128, 1), (1, 10)), (128, 10)),
        (((), (3, 4)), (3, 4)),
        ((torch.Size([2, 1, 4]), (3, 1)), (2, 3, 4)),
        (((0,), (1,)), (0,)),
        ((5, (2, 1)), (2, 5)),
        ((), ()),
    ],
)
def test_examples(shapes, want):
    assert broadcast_shapes(*shapes) == want
    assert tuple(torch.broadcast_shapes(*shapes)) == want


def test_numpy_integers_are_dimensions():
    assert broadcast_shapes((np.int64(3), 1), (np.int32(4),), np.int64(4)) == (3, 4)


@pytest.mark.parametrize("shapes", [((2,), (3,)), ((0,), (2,)), ((4, 3), (4,)), ((2, -1),), ((2.0, 3),), ("ab",)])
def test_refuses_what_does_not_broadcast(shapes):
    with pytest.raises(RuntimeError):
        broadcast_shapes(*shapes)


def test_products_leave_sympy_unimported():
    """``torch.broadcast_shapes`` imported sympy at its first call (0.33 s of CPU and 35 MB a process) and
    left objects for every full garbage collection to walk; products, at the parties and at the dealer, do
    not call it."""
    code = """
import sys, torch, mpc
from parties.simulator import run_threads
def f(ctx):
    x = mpc.share(torch.ones(4, 3) if ctx.rank == 0 else None, owner=0)
    y = mpc.share(torch.ones(3, 2) if ctx.rank == 1 else None, owner=1)
    return [(x * x).reveal().sum().item(), (x @ y).reveal().sum().item(), (x * torch.ones(3)).reveal().sum().item()]
print(run_threads(f, parties=2)[0], 'sympy' in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[12.0,", "24.0,", "12.0]", "False"], out.stdout
