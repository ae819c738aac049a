"""Thread tier: the one-hot table lookup (``protocols.lookup``), its dealer correlation and the round driver.

* The ``cmplut`` correlation (exp's and the tables' modes): the parties' shares
  add up to the one-hot of a slice of the mask, the powers of the slice below
  it and the products the lookup relies on; bad requests are refused by name.
* ``protocols.rounds.drive``: two independent comparisons run side by side
  take the rounds of one and give the same bits as run one after the other.
* ``exp`` through the lookup: 4 rounds, the issue's tolerance on [-12, 10]
  (``tests/test_nonlinear.py`` checks the whole domain), the same rounds and
  results at 3 parties, at a narrow encoding (f = 10, within its own
  precision), and a clear error where the encoding is too wide (f = 24).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import SECURE

import mpc
from mpc.errors import ProtocolError
from mpc.ring import logical_rshift, msb, wrap_int
from protocols import lookup
from protocols.comparison import compare_steps
from protocols.correlated import LUT_EXP, LUT_TABLE
from protocols.rounds import drive

EXP_REQ = (LUT_EXP, 200, 2, lookup.LOG2E, 30, 8, 3, 18, 12, 4, 44, 23)  # exp's request at f = 16, 200 elements
TANH_REQ = (LUT_TABLE, 200, 2, 1, 15, 32, 0, 3, 12, 4, 45, 0)  # tanh's (rows of 2^-1, f = 16)


def _cmplut(ctx, params):
    h = ctx.correlations.request("cmplut", params)
    return [t.clone() for t in h.randoms], [t.clone() for t in h.derived()]


def _lut_totals(res):
    """The random and derived totals (the comparison's binary parts XORed, the rest summed)."""
    rand = [sum(r[i] for r, _ in res) for i in range(len(res[0][0]))]
    der = [sum(d[i] for _, d in res) for i in range(len(res[0][1]))]
    xor_r = res[0][1][0]
    for _, d in res[1:]:
        xor_r = xor_r ^ d[0]
    assert torch.equal(xor_r, rand[0])  # the comparison's mask, as XOR shares of its bits
    t = der[4]
    assert set(t.unique().tolist()) <= {0, 1} and t.shape == (2, 200)
    return rand, der


def _split_parts(r, mult, ish, vsh, onehot, powers, size, low=0):
    """The one-hot of the bits of ``R = mult r`` at ``ish + low`` (each 1 times ``2^(2^low - 1 - the low bits
    at ish)``) and the powers of ``-delta`` for the 12 bits at ``vsh``."""
    big = r * mult
    rho = logical_rshift(big, ish + low) & (size - 1)
    value = 1 << ((1 << low) - 1 - (logical_rshift(big, ish) & ((1 << low) - 1)))
    assert torch.equal(onehot, torch.nn.functional.one_hot(rho, size) * value.unsqueeze(1))
    delta = logical_rshift(big, vsh) & 4095
    assert torch.equal(powers, torch.stack([(-delta) ** m for m in range(1, 5)]))
    assert len(set(rho.tolist())) > size // 2 and len(set(delta.tolist())) > 150  # random, not constants
    assert not low or len(set(value.tolist())) == 1 << low
    return -delta


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_cmplut_exp_material_adds_up_to_what_the_lookup_relies_on(sim, n):
    """exp's ``cmplut`` parts, summed: the one-hot of bits [33, 36) of ``R = L r`` whose 1 is 2^(7 - bits
    [30, 33)), the powers of ``-delta`` for bits [18, 30), the truncation parts of ``r2`` (by 44) and ``r3``
    (by 23), the products ``a (r2 >> 44)``, ``a msb(r2)`` and ``(r3 >> 23) t``, ``msb(r3) t`` (the msb parts
    count modulo 2^shift)."""
    (r, _, _, a, r2, r3), der = _lut_totals(sim(lambda ctx: _cmplut(ctx, EXP_REQ), n, protocol=SECURE))
    t, onehot, powers, r2q, r2m, u, z, r3q, r3m, r3qt, r3mt = der[4:]
    _split_parts(r, lookup.LOG2E, 30, 18, onehot, powers, 8, 3)
    low, low3 = (1 << 44) - 1, (1 << 23) - 1
    assert torch.equal(r2q, logical_rshift(r2, 44)) and torch.equal(r2m & low, msb(r2))
    assert torch.equal(u, a * logical_rshift(r2, 44)) and torch.equal(z & low, (a * msb(r2)) & low)
    assert torch.equal(r3q, logical_rshift(r3, 23)) and torch.equal(r3m & low3, msb(r3))
    assert torch.equal(r3qt, logical_rshift(r3, 23) * t) and torch.equal(r3mt & low3, msb(r3) * t)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_cmplut_table_material_adds_up_to_what_the_lookup_relies_on(sim, n):
    """A table's ``cmplut`` parts (tanh's): the one-hot of bits [15, 20) of ``r`` and the powers of ``-delta``
    for bits [3, 15), the products ``a_j (-delta)^j`` (1 <= j <= 4), and the truncation parts of ``r2``
    (by 45) with their products with ``t``."""
    (r, _, _, masks, r2), der = _lut_totals(sim(lambda ctx: _cmplut(ctx, TANH_REQ), n, protocol=SECURE))
    t, onehot, powers, ad, r2q, r2m, r2qt, r2mt = der[4:]
    md = _split_parts(r, 1, 15, 3, onehot, powers, 32)
    assert torch.equal(ad, torch.stack([masks[j - 1] * md**j for j in range(1, 5)]))
    low = (1 << 45) - 1
    assert torch.equal(r2q, logical_rshift(r2, 45)) and torch.equal(r2m & low, msb(r2))
    assert torch.equal(r2qt, logical_rshift(r2, 45) * t) and torch.equal(r2mt & low, msb(r2) * t)


@pytest.mark.parametrize(
    "params,why",
    [
        ((0, 200, 2, 23638, 30, 8, 3, 18, 12, 4, 44, 23), "odd positive multiplier"),
        ((0, 200, 2, 23637, 30, 12, 3, 18, 12, 4, 44, 23), "power of two"),
        ((0, 200, 2, 23637, 60, 8, 3, 48, 12, 4, 44, 23), "shifts in"),
        ((0, 200, 2, 23637, 30, 8, 3, 17, 12, 4, 44, 23), "just below the index"),
        ((0, 200, 2, 23637, 30, 8, 3, 18, 12, 9, 44, 23), "degree in"),
        ((0, 200, 0, 23637, 30, 8, 3, 18, 12, 4, 44, 23), "thresholds at least 1"),
        ((0, 200, 2, 23637, 30, 8, 0, 18, 12, 4, 44, 23), "low bits in \\[1, 4\\] for exp"),
        ((1, 200, 2, 1, 15, 32, 0, 3, 12, 4, 45, 16), "output shift 0 for a table"),
        ((2, 200, 2, 1, 15, 32, 0, 3, 12, 4, 45, 0), "mode 0 \\(exp\\) or 1"),
        ((0, 200, 2, 23637, 30, 8, 3, 18, 12, 4, 44), "cmplut takes"),
    ],
)
def test_cmplut_bad_parameters_are_refused_by_name(params, why):
    from parties.dealer import _check_request

    with pytest.raises(ProtocolError, match=f"malformed request 'corr:cmplut'.*{why}"):
        _check_request("corr:cmplut", params, 1 << 30)


def _exp_cost(ctx, v, hi):
    x = mpc.share(v if ctx.rank == 0 else None, owner=0)
    before = ctx.stats.snapshot()
    y = x.exp() if hi else mpc.arith.exp_nonpositive(x)
    after = ctx.stats.snapshot()
    return y.reveal(), after["rounds"] - before["rounds"], after["bytes_sent"] - before["bytes_sent"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_exp_opens_its_input_once_and_no_more_than_documented(sim, n):
    """exp sends 8 (the input's one opening) + 35/8 per comparison + 16 + 8 bytes per element to each other
    party (40.75 with two comparisons, 36.375 for exp_nonpositive with one), in 4 rounds: one more opening
    anywhere fails this."""
    v = torch.round(torch.linspace(-14, 12, 4096, dtype=torch.float64) * 2**16) / 2**16
    for hi, per in ((True, 40.75), (False, 36.375)):
        for got, rounds, sent in sim(lambda ctx, hi=hi: _exp_cost(ctx, v if hi else -v.abs(), hi), n, protocol=SECURE):
            assert rounds == 4 and sent == per * 4096 * (n - 1)
            want = torch.exp(v).clamp(max=math.exp(10)) if hi else torch.exp(-v.abs())
            want = torch.where((v if hi else -v.abs()) < lookup.EXP_LO, 0.0, want)
            assert float(((got - want).abs() / (1e-3 * want.abs() + 2**-14)).max()) <= 1.0


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
        assert rounds == 4
        assert float(((got - want).abs() / (1e-3 * want.abs() + 2**-14)).max()) <= 1.0


@pytest.mark.timeout(60)
def test_exp_wider_than_the_ring_allows_is_refused_by_name(sim):
    assert not lookup.supports(24) and lookup.supports(16) and lookup.supports(8)
    assert lookup.exp_supports(20) and not lookup.exp_supports(21)
    v = torch.linspace(-10, 9, 31, dtype=torch.float64)
    with pytest.raises(ProtocolError, match="exp needs frac_bits <= 20"):
        sim(lambda ctx: _unary(ctx, v), 2, protocol=SECURE, frac_bits=24)


@pytest.mark.timeout(60)
def test_lookups_at_the_ends_of_the_fixed_point_range(sim):
    """The split of ``x L`` is meaningless far out (its index and variable are whatever the bits say), but the
    saturation multiplies it by an exact 0: exp gives 0 and e^10, sigmoid and tanh their limits, up to the
    largest values the encoding holds."""
    big = [1.0e9, 5.0e8, 2.0**29 + 0.5, 123456789.0]
    v = torch.tensor(big + [-b for b in big], dtype=torch.float64)
    for method, want in (
        ("exp", [math.exp(lookup.EXP_HI)] * 4 + [0.0] * 4),
        ("sigmoid", [1.0] * 4 + [0.0] * 4),
        ("tanh", [1.0] * 4 + [-1.0] * 4),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mpc.FixedPointWarning)  # the inputs are near the range's end
            (got, rounds), _ = sim(lambda ctx, m=method: _unary(ctx, v, m), 2, protocol=SECURE)
        assert rounds == 4
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-3, atol=2**-14)


@pytest.mark.timeout(60)
def test_exp_at_the_widest_encoding(sim):
    """At f = 20 the lookup keeps 19 bits of ``p(v)`` so that ``A P`` stays in the truncation's range; the
    thermometer table it would otherwise fall back to is 0.4% off near 10 there."""
    v = torch.round(torch.linspace(-11, 9.99, 3001, dtype=torch.float64) * 2**20) / 2**20
    (got, rounds), _ = sim(lambda ctx: _unary(ctx, v), 2, protocol=SECURE, frac_bits=20)
    assert rounds == 4
    assert float(((got - torch.exp(v)).abs() / (1e-3 * torch.exp(v) + 2**-14)).max()) <= 1.0


@pytest.mark.timeout(60)
def test_exp_at_a_narrow_encoding(sim):
    v = torch.linspace(-6, 6, 301, dtype=torch.float64)
    v = torch.round(v * 2**10) / 2**10
    (got, rounds), _ = sim(lambda ctx: _unary(ctx, v), 2, protocol=SECURE, frac_bits=10)
    assert rounds == 4
    assert float(((got - torch.exp(v)).abs() / (4e-3 * torch.exp(v) + 2**-9)).max()) <= 1.0


@pytest.mark.timeout(60)
def test_exp_below_eight_fractional_bits_runs_the_thermometer_table(sim):
    """At f < 8 the lookup's polynomial value keeps too few bits (at f = 4 it gave exp(5) = 152, at f = 0
    exp(1) = 4, and f = 0 crashed in its final truncation by 0 bits): the thermometer table runs instead, from
    4 bits on; below 4 bits exp is refused."""
    assert lookup.exp_supports(8) and not lookup.exp_supports(7) and not lookup.exp_supports(0)
    v = torch.tensor([-3.0, -0.5, 0.0, 0.3125, 1.0, 2.0, 5.0, 9.0], dtype=torch.float64)
    (got, rounds), _ = sim(lambda ctx: _unary(ctx, v), 2, protocol=SECURE, frac_bits=4)
    assert rounds != 4  # not the lookup
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
    # Ascending positions, each once (octave_bits' layout): converted in place in the dealer's rows.
    ascending = fam.b2a_positions(ctx, w, [0, 5, 17, 63], [True, False, True, False])
    return fast.data, generic.data, ascending.data


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
    ascending = sum(r[2] for r in res)
    assert torch.equal(ascending, torch.stack([(enc >> p) & 1 ^ fl for p, fl in zip([0, 5, 17, 63], [1, 0, 1, 0])]))


@pytest.mark.timeout(60)
def test_uniform_lookup_only_where_its_rows_lie_on_the_grid(sim):
    assert lookup.fits(lookup.SIGMOID, 16) and lookup.fits(lookup.SIGMOID, 1) and lookup.fits(lookup.TANH, 2)
    assert not lookup.fits(lookup.SIGMOID, 0) and not lookup.fits(lookup.TANH, 1) and not lookup.fits(lookup.TANH, 24)
    v = torch.tensor([-12.0, -3.0, -1.0, 0.0, 1.0, 3.0, 12.0], dtype=torch.float64)
    for method, torch_fn in (("sigmoid", torch.sigmoid), ("tanh", torch.tanh)):
        (fine, r16), _ = sim(lambda ctx, m=method: _unary(ctx, v, m), 2, protocol=SECURE)
        (coarse, r1), _ = sim(lambda ctx, m=method: _unary(ctx, v, m), 2, protocol=SECURE, frac_bits=1)
        # f = 1: sigmoid's rows of 1 are two units wide (the lookup runs), tanh's rows of 0.5 one unit (the
        # thermometer table runs)
        assert r16 == 4 and r1 == (4 if method == "sigmoid" else 8)
        assert float((fine - torch_fn(v)).abs().max()) < 1e-3
        assert float((coarse - torch_fn(v)).abs().max()) <= 0.5  # one fractional bit: coarse, not wrong
