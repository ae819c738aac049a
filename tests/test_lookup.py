"""Thread tier: the one-hot table lookup (``protocols.lookup``), its dealer correlation and the round driver.

* The ``onehot`` correlation: the parties' shares add up to the one-hot vector
  of ``rho mod N`` (N = 2 .. 256) for the ``rho`` their random shares add up to;
  a table size that is not a power of two in range is refused by name.
* ``protocols.rounds.drive``: two independent comparisons run side by side
  take the rounds of one and give the same bits as run one after the other.
* ``exp`` through the lookup: 6 rounds, the issue's tolerance on [-12, 10]
  (``tests/test_nonlinear.py`` checks the whole domain), the same rounds and
  results at 3 parties, at a narrow encoding (f = 10, within its own
  precision), and a clear error where the encoding is too wide (f = 24).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SECURE

import mpc
from mpc.errors import ProtocolError
from mpc.ring import wrap_int
from protocols import lookup
from protocols.comparison import compare_steps
from protocols.correlated import DealerGenerator
from protocols.rounds import drive


def _onehot(ctx, size, n):
    h = ctx.correlations.request("onehot", (size, n))
    (rho,) = h.randoms
    (oh,) = h.derived()
    return rho, oh


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [2, 32, 256])
@pytest.mark.parametrize("n", [2, 3])
def test_onehot_shares_add_up_to_the_one_hot_of_rho(sim, size, n):
    res = sim(lambda ctx: _onehot(ctx, size, 500), n, protocol=SECURE)
    rho = sum(r for r, _ in res) & (size - 1)
    oh = sum(o for _, o in res)
    assert oh.shape == (500, size)
    assert torch.equal(oh, torch.nn.functional.one_hot(rho, size))
    assert len(set(rho.tolist())) > min(size, 500) // 2  # the index is random, not a constant


@pytest.mark.parametrize("size", [0, 1, 3, 48, 512])
def test_onehot_table_sizes_out_of_range_are_refused(size):
    gen = DealerGenerator([b"\0" * 32, b"\1" * 32])
    with pytest.raises(ProtocolError, match="onehot takes a table size, a power of two"):
        gen.correction("onehot", (size, 4))


def _two_compares(ctx, v, together):
    x = mpc.share(v if ctx.rank == 0 else None, owner=0).share.data
    f = ctx.config.frac_bits
    t1 = [wrap_int(round(-1.0 * 2**f))]
    t2 = [wrap_int(round(0.5 * 2**f)), wrap_int(round(2.0 * 2**f))]
    before = ctx.stats.rounds
    if together:
        a, b = drive(ctx, [compare_steps(ctx, x, t1), compare_steps(ctx, x, t2, negate=True)])
    else:
        (a,) = drive(ctx, [compare_steps(ctx, x, t1)])
        (b,) = drive(ctx, [compare_steps(ctx, x, t2, negate=True)])
    rounds = ctx.stats.rounds - before
    return a.bits, b.bits, rounds


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_drive_runs_independent_protocols_in_the_same_rounds(sim, n):
    v = torch.linspace(-3, 3, 97, dtype=torch.float64)
    together = sim(lambda ctx: _two_compares(ctx, v, True), n, protocol=SECURE)
    apart = sim(lambda ctx: _two_compares(ctx, v, False), n, protocol=SECURE)
    assert {r for _, _, r in together} == {4} and {r for _, _, r in apart} == {8}
    for res in (together, apart):
        a = sum(r[0] for r in res)
        b = sum(r[1] for r in res)
        assert torch.equal(a[0], (v < -1.0).long())
        assert torch.equal(b[0], (v >= 0.5).long()) and torch.equal(b[1], (v >= 2.0).long())


def _unary(ctx, v, method="exp"):
    """``method`` of the shared ``v``, revealed, and the rounds it took (the reveal not counted)."""
    x = mpc.share(v if ctx.rank == 0 else None, owner=0)
    before = ctx.stats.rounds
    y = getattr(x, method)()
    rounds = ctx.stats.rounds - before
    return y.reveal(), rounds


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_exp_by_lookup_rounds_and_accuracy(sim, n):
    v = torch.cat([torch.linspace(-12, 10, 2001, dtype=torch.float64), torch.tensor([-11.0, 0.0, 9.99, 10.0, 50.0])])
    v = torch.round(v * 2**16) / 2**16
    for got, rounds in sim(lambda ctx: _unary(ctx, v), n, protocol=SECURE):
        want = torch.where(v >= lookup.EXP_HI, math.exp(lookup.EXP_HI), torch.exp(v))
        assert rounds == 6
        assert float(((got - want).abs() / (1e-3 * want.abs() + 2**-14)).max()) <= 1.0


@pytest.mark.timeout(60)
def test_exp_wider_than_the_ring_allows_is_refused_by_name(sim):
    assert not lookup.supports(24) and lookup.supports(16) and lookup.supports(8)
    v = torch.linspace(-10, 9, 31, dtype=torch.float64)
    with pytest.raises(ProtocolError, match="exp needs frac_bits <= 20"):
        sim(lambda ctx: _unary(ctx, v), 2, protocol=SECURE, frac_bits=24)


@pytest.mark.timeout(60)
def test_exp_at_a_narrow_encoding(sim):
    v = torch.linspace(-6, 6, 301, dtype=torch.float64)
    v = torch.round(v * 2**10) / 2**10
    (got, rounds), _ = sim(lambda ctx: _unary(ctx, v), 2, protocol=SECURE, frac_bits=10)
    assert rounds == 6
    assert float(((got - torch.exp(v)).abs() / (4e-3 * torch.exp(v) + 2**-9)).max()) <= 1.0


@pytest.mark.timeout(60)
def test_exp_below_eight_fractional_bits_runs_the_thermometer_table(sim):
    """At f < 8 the lookup's polynomial value keeps too few bits (at f = 4 it gave exp(5) = 152, at f = 0
    exp(1) = 4, and f = 0 crashed in its final truncation by 0 bits): the thermometer table runs instead, from
    4 bits on; below 4 bits exp is refused."""
    assert lookup.exp_supports(8) and not lookup.exp_supports(7) and not lookup.exp_supports(0)
    v = torch.tensor([-3.0, -0.5, 0.0, 0.3125, 1.0, 2.0, 5.0, 9.0], dtype=torch.float64)
    (got, rounds), _ = sim(lambda ctx: _unary(ctx, v), 2, protocol=SECURE, frac_bits=4)
    assert rounds != 6  # not the lookup
    assert float(((got - torch.exp(v)).abs() / (1e-2 * torch.exp(v) + 2**-3)).max()) <= 1.0
    # Below 4 bits the table is wrong too (exp(0) = 2 at f = 0, exp(5) = 142.75 at f = 2): an error says so.
    for f in (0, 2, 3):
        with pytest.raises(ProtocolError, match=f"exp needs frac_bits >= 4 \\(at {f} fractional bits"):
            sim(lambda ctx: _unary(ctx, torch.tensor([0.0, 1.0, 5.0])), 2, protocol=SECURE, frac_bits=f)


# ----- the octave thermometer from the bits (protocols.octave) ----------------------------------------------


def _octave(ctx, v, thresholds):
    from protocols.octave import octave_bits

    x = mpc.share(v if ctx.rank == 0 else None, owner=0).share
    before = ctx.stats.rounds
    bits = octave_bits(ctx, x, thresholds, "oct")
    return bits.data, ctx.stats.rounds - before


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_octave_thermometer_is_exact_at_and_around_every_threshold(sim, n):
    f = 16
    js = range(-7, 15)
    ts = [-(2.0 ** (j + 1)) for j in reversed(js)] + [-(2.0**-7), 0.0] + [2.0**j for j in js] + [2.0**15]
    ring = [wrap_int(round(t * 2**f)) for t in ts]
    near = torch.tensor([t + d * 2**-f for t in ts for d in (-1, 0, 1)] + [1e6, -1e6, 3e-5, -3e-5])
    res = sim(lambda ctx: _octave(ctx, near.double(), ring), n, protocol=SECURE)
    got = sum(r[0] for r in res)
    want = torch.stack([(near >= t).long() for t in ts])
    assert torch.equal(got, want)
    assert {r[1] for r in res} == {15}


@pytest.mark.timeout(60)
def test_octave_thresholds_that_are_not_powers_of_two_or_too_wide_are_refused(sim):
    v = torch.ones(4, dtype=torch.float64)
    with pytest.raises(ProtocolError, match="octave thresholds must be 0 or"):
        sim(lambda ctx: _octave(ctx, v, [3 << 16]), 2, protocol=SECURE)
    wide = [-(1 << p) for p in range(62)] + [1 << p for p in range(62)]
    with pytest.raises(ProtocolError, match="do not fit one word"):
        sim(lambda ctx: _octave(ctx, v, wide), 2, protocol=SECURE)


def _conversions(ctx, v):
    from protocols.ring_family import RingFamily

    fam = ctx.family
    x = mpc.share(v if ctx.rank == 0 else None, owner=0).share
    w = fam.a2b(ctx, x)
    pos, flip = [0, 5, 17, 63, 17], [False, True, False, False, True]
    fast = fam.b2a_positions(ctx, w, pos, flip)
    generic = RingFamily.b2a_positions(fam, ctx, w, pos, flip)  # the interface's default: one b2a per row
    return fast.data, generic.data


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_b2a_positions_matches_the_generic_conversion(sim, n):
    v = torch.tensor([0.0, 1.5, -2.25, 1000.0, -0.0001, 3.0], dtype=torch.float64)
    res = sim(lambda ctx: _conversions(ctx, v), n, protocol=SECURE)
    fast = sum(r[0] for r in res)
    generic = sum(r[1] for r in res)
    enc = torch.round(v * 2**16).long()
    want = torch.stack([(enc >> p) & 1 ^ int(fl) for p, fl in zip([0, 5, 17, 63, 17], [0, 1, 0, 0, 1])])
    assert torch.equal(fast, want) and torch.equal(generic, want)


@pytest.mark.timeout(60)
def test_uniform_lookup_only_where_its_rows_lie_on_the_grid(sim):
    assert lookup.fits(lookup.SIGMOID, 16) and lookup.fits(lookup.TANH, 2)
    assert not lookup.fits(lookup.SIGMOID, 1) and not lookup.fits(lookup.TANH, 1) and not lookup.fits(lookup.TANH, 24)
    v = torch.tensor([-12.0, -3.0, -1.0, 0.0, 1.0, 3.0, 12.0], dtype=torch.float64)
    (fine, r16), _ = sim(lambda ctx: _unary(ctx, v, "sigmoid"), 2, protocol=SECURE)
    (coarse, r1), _ = sim(lambda ctx: _unary(ctx, v, "sigmoid"), 2, protocol=SECURE, frac_bits=1)
    assert r16 == 6 and r1 == 8  # f = 1: rows of 0.75 are not on the grid, the thermometer table runs
    assert float((fine - torch.sigmoid(v)).abs().max()) < 1e-3
    assert float((coarse - torch.sigmoid(v)).abs().max()) <= 0.5  # one fractional bit: coarse, not wrong
