"""mpc.kernels: int64 matrix products and convolutions modulo 2^64 by float64 products of limbs, bit for bit
torch's int64 kernel, and the per-shape choice between the two."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from mpc import kernels

pytestmark = pytest.mark.timeout(120)

LO, HI = -(2**63), 2**63 - 1


def _rand(*shape, gen):
    return torch.randint(LO, HI, shape, generator=gen, dtype=torch.int64)


def _extremes(*shape, gen):
    """Full-range values with the corners (-2^63, 2^63 - 1, -1, 0, +-2^(w-1) of every limb) mixed in."""
    x = _rand(*shape, gen=gen).reshape(-1)
    corners = torch.tensor([LO, HI, -1, 0, 1, -(2**21), 2**21, -(2**43), 2**43 - 1, -(2**42)], dtype=torch.int64)
    x[: min(x.numel(), corners.numel())] = corners[: x.numel()]
    idx = torch.randperm(x.numel(), generator=gen)
    return x[idx].reshape(shape)


@pytest.fixture
def forced(monkeypatch):
    def force(kind: str) -> None:
        monkeypatch.setattr(kernels, "KERNEL", kind)

    return force


@pytest.mark.parametrize(
    "sa, sb",
    [
        ((64, 512), (512, 48)),  # the largest inner dimension of 3 limbs of 22 bits: 2^10
        ((32, 1024), (1024, 16)),
        ((16, 1500), (1500, 8)),  # 4 limbs of 21 bits, 10 products
        ((4096, 64), (64, 3)),
        ((5, 7, 33), (33, 9)),  # batched against a matrix
        ((3, 8, 20), (3, 20, 6)),  # batched
        ((20,), (20, 7)),  # vector @ matrix
        ((7, 20), (20,)),  # matrix @ vector
        ((9, 1), (1, 11)),  # inner dimension 1
    ],
)
def test_limbs_match_int64_matmul(forced, sa, sb):
    gen = torch.Generator().manual_seed(sum(sa) * 31 + sum(sb))
    a, b = _extremes(*sa, gen=gen), _extremes(*sb, gen=gen)
    want = torch.matmul(a, b)
    forced("limbs")
    assert torch.equal(kernels.matmul(a, b), want)


def test_worst_case_sums_are_exact(forced):
    """The low limbs at -2^(w-1) + 1 (odd, nearly the largest magnitude) on the whole inner dimension: each
    partial sum nears the bound the limb width is chosen for and has its lowest bit set, so a limb one bit
    wider would need more than float64's 53 bits (checked: this test fails with ``EXACT_BITS = 54``)."""
    for k in (1, 2, 3, 512, 1024, 1025, 4096):
        w, _, _ = kernels.limb_plan(k)
        v = sum((1 - (1 << (w - 1))) << (w * i) for i in range(2))
        v = ((v + 2**63) % 2**64) - 2**63
        a = torch.full((2, k), v, dtype=torch.int64)
        b = torch.full((k, 2), v, dtype=torch.int64)
        want = torch.matmul(a, b)
        forced("limbs")
        assert torch.equal(kernels.matmul(a, b), want), k
        forced("auto")


def test_limb_plan_bounds():
    for k in (1, 2, 64, 512, 1024, 1025, 4096, 4097, 1 << 20):
        plan = kernels.limb_plan(k)
        if plan is None:
            assert k > 4096
            continue
        w, n, pairs = plan
        assert w * n >= 64  # the limbs cover the word
        assert k * 2 ** (2 * w - 2) <= 2**kernels.EXACT_BITS  # every partial sum is an integer float64 holds
        assert len(pairs) <= kernels.MAX_PRODUCTS
        assert all(w * (i + j) < 64 for i, j in pairs)
    assert kernels.limb_plan(512)[1] == 3 and len(kernels.limb_plan(512)[2]) == 6


@pytest.mark.parametrize(
    "xs, ws, kw",
    [
        ((4, 1, 28, 28), (6, 1, 5, 5), {}),
        ((4, 6, 12, 12), (16, 6, 5, 5), {}),
        ((2, 4, 9, 9), (6, 2, 3, 3), {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2), "groups": 2}),
        ((2, 3, 8, 8), (5, 3, 3, 3), {"padding": 1}),
    ],
)
def test_limbs_match_int64_conv2d(forced, xs, ws, kw):
    gen = torch.Generator().manual_seed(sum(xs) + 7 * sum(ws))
    x, w = _extremes(*xs, gen=gen), _extremes(*ws, gen=gen)
    want = F.conv2d(x, w, **kw)
    forced("limbs")
    assert torch.equal(kernels.conv2d(x, w, **kw), want)


def test_auto_measures_each_shape_once_and_agrees(forced, monkeypatch):
    monkeypatch.setattr(kernels, "_choice", {})
    gen = torch.Generator().manual_seed(5)
    a, b = _rand(96, 256, gen=gen), _rand(256, 96, gen=gen)
    small_a, small_b = _rand(8, 8, gen=gen), _rand(8, 8, gen=gen)
    calls = []
    real = kernels._by_limbs
    monkeypatch.setattr(kernels, "_by_limbs", lambda *args: calls.append(1) or real(*args))
    assert torch.equal(kernels.matmul(a, b), a @ b)
    assert len(calls) == 1  # measured: the float64 kernel ran once beside the int64 one
    chosen = kernels.choices()[("mm", a.shape, b.shape)]
    assert chosen in ("limbs", "int64")
    assert torch.equal(kernels.matmul(a, b), a @ b)
    assert len(calls) == 1 + (chosen == "limbs")  # then only the chosen kernel runs
    assert torch.equal(kernels.matmul(small_a, small_b), small_a @ small_b)
    assert kernels.choices()[("mm", small_a.shape, small_b.shape)] == "int64"  # too small to measure
    assert len(calls) == 1 + (chosen == "limbs")


def test_float_dtypes_pass_through():
    a, b = torch.rand(5, 6, dtype=torch.float64), torch.rand(6, 4, dtype=torch.float64)
    assert torch.equal(kernels.matmul(a, b), a @ b)
    assert kernels.matmul(a, b).dtype == torch.float64


def test_a_disagreeing_float_kernel_is_switched_off(monkeypatch):
    """A float64 kernel that is not exact (simulated: its products are off by one) is caught at the first
    measurement: a warning, the int64 result, and the int64 kernel for every later call."""
    monkeypatch.setattr(kernels, "_choice", {})
    monkeypatch.setattr(kernels, "_broken", False)
    real = kernels._by_limbs
    monkeypatch.setattr(kernels, "_by_limbs", lambda *args: real(*args) + 1)
    gen = torch.Generator().manual_seed(6)
    a, b = _rand(96, 256, gen=gen), _rand(256, 96, gen=gen)
    with pytest.warns(RuntimeWarning, match="disagreed"):
        assert torch.equal(kernels.matmul(a, b), a @ b)
    assert kernels._broken
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(kernels.matmul(a, b), a @ b)


def test_weighted_rows_by_either_kernel(monkeypatch):
    """A public matrix of small integers times rows: the scaled additions and the product agree bit for bit
    (zero weights skipped, wrapping rows), and the shape's choice is measured once."""
    monkeypatch.setattr(kernels, "_choice", {})
    gen = torch.Generator().manual_seed(8)
    w = torch.randint(-(2**40), 2**40, (7, 45), generator=gen, dtype=torch.int64)
    w[0, 3] = w[2, 0] = 0
    t = _extremes(45, 2000, gen=gen)
    want = w @ t
    assert torch.equal(kernels._scaled_adds(w, t), want)
    assert torch.equal(kernels.weighted_rows(w, t), want)
    assert kernels.choices()[("rows", w.shape, t.shape)] in ("adds", "matmul")
    assert torch.equal(kernels.weighted_rows(w, t), want)


def test_an_unknown_kernel_name_is_refused(forced):
    forced("float")
    a = torch.ones(2, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="KERNEL must be 'auto', 'int64' or 'limbs', not 'float'"):
        kernels.matmul(a, a)
    with pytest.raises(ValueError, match="not 'float'"):
        kernels.weighted_rows(a, a)
