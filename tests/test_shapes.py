"""``mpc.shapes.broadcast_shapes`` against ``torch.broadcast_shapes``: the same shape, or an error for both."""

import random

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


@pytest.mark.parametrize("shapes", [((2,), (3,)), ((0,), (2,)), ((4, 3), (4,)), ((2, -1),)])
def test_refuses_what_does_not_broadcast(shapes):
    with pytest.raises(RuntimeError):
        broadcast_shapes(*shapes)
