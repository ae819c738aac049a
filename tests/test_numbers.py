"""Thread tier: no silent wrong answers with public scalars, means and divisions; warnings and errors a user can act on.

A product with a public real scalar must be within 1 ulp plus 2^-20 of the
exact value (relative) whenever the result is in range; the rare scalars that
need the two-round path (just off a ratio of small integers) add 2^-13 ulp.
"""

from __future__ import annotations

import functools
import math
import random
import warnings

import pytest
import torch

import mpc
from mpc.errors import FixedPointWarning, ProtocolError

ULP = 2.0**-16
FAMILIES = ("additive-dealer", "plaintext")


def _close(got: torch.Tensor, want: torch.Tensor, extra_ulp: float = 0.0) -> None:
    got, want = got.to(torch.float64), want.to(torch.float64)
    tol = (1.0 + extra_ulp) * ULP + 2.0**-20 * want.abs() + 1e-12
    bad = (got - want).abs() > tol
    assert not bool(bad.any()), f"{int(bad.sum())} off, e.g. got {got[bad][:3].tolist()} want {want[bad][:3].tolist()}"


def _scalar_program(ctx, values, c, divide):
    x = mpc.share(values if ctx.rank == 0 else None, owner=0)
    return (x / c if divide else x * c).reveal()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", FAMILIES)
def test_the_reported_examples_are_exact(sim, protocol):
    def prog(ctx):
        fives = mpc.share(torch.full((4000,), 5.0) if ctx.rank == 0 else None, owner=0)
        three = mpc.share(torch.tensor([3.0]) if ctx.rank == 0 else None, owner=0)
        small = mpc.share(torch.tensor([2.5e-3, -1e-3, 1.0]) if ctx.rank == 0 else None, owner=0)
        return (
            fives.mean().reveal(),
            fives.reshape(40, 100).mean(1).reveal(),
            fives.reshape(40, 100).mean(0, keepdim=True).reveal(),
            (three * 1e-4).reveal(),
            (three / 3000).reveal(),
            (three * 3e-6).reveal(),
            (three * 1e-6).reveal(),
            (small * 1e6).reveal(),
        )

    mean, mean1, mean0, a, b, c, d, e = sim(prog, 2, protocol=protocol)[0]
    assert float(mean) == 5.0 and torch.equal(mean1, torch.full((40,), 5.0)) and mean0.shape == (1, 100)
    assert torch.equal(mean0, torch.full((1, 100), 5.0))
    _close(a, torch.tensor([3e-4]))
    _close(b, torch.tensor([1e-3]))
    _close(c, torch.tensor([9e-6]))
    assert float(c) != 0.0 or protocol != "plaintext"  # 3e-6 x 3 no longer vanishes (it is below 1 ulp...)
    _close(d, torch.tensor([3e-6]))
    inputs = torch.tensor([2.5e-3, -1e-3, 1.0], dtype=torch.float64)
    if protocol != "plaintext":
        inputs = torch.round(inputs * 2**16) / 2**16  # what the secure family encodes
    _close(e, inputs * 1e6)


@pytest.mark.timeout(180)
def test_random_scalars_within_one_ulp_and_two_to_the_minus_twenty(sim):
    rng = random.Random(7)
    scalars = [rng.choice([-1, 1]) * 10 ** rng.uniform(-6, 6) for _ in range(40)]
    # scalars just off a ratio of small integers take the two-round path
    scalars += [1.9999930758077868, 1 / 3 + 1e-9, 0.5 - 3e-7, 1e-6, 1e6, 1 / 7, 0.1]
    g = torch.Generator().manual_seed(3)
    for c in scalars:
        for divide in (False, True):
            # inputs whose results stay in range: |x c| < 2^29 (|x / c| < 2^29)
            k = 1 / c if divide else c
            lim = min(2.0**29, 2.0**29 / abs(k))
            values = torch.round((torch.rand(500, generator=g, dtype=torch.float64) * 2 - 1) * lim * 2**16) / 2**16
            got = sim(functools.partial(_scalar_program, values=values, c=c, divide=divide), 2)[0]
            _close(got, values / c if divide else values * c, extra_ulp=2.0**-13)


@pytest.mark.timeout(60)
def test_a_scalar_product_costs_one_round(sim):
    def prog(ctx):
        x = mpc.share(torch.ones(100) if ctx.rank == 0 else None, owner=0)
        before = ctx.stats.rounds
        y = x * 1e-5
        mid = ctx.stats.rounds
        z = x.mean()
        return mid - before, ctx.stats.rounds - mid, y.reveal(), z.reveal()

    r1, r2, y, z = sim(prog, 3)[0]
    assert (r1, r2) == (1, 1)
    _close(y, torch.full((100,), 1e-5))
    assert float(z) == 1.0


def _logreg_step(ctx, xs, ys, w0, lr):
    x = mpc.share(xs if ctx.rank == 0 else None, owner=0)
    y = mpc.share(ys if ctx.rank == 1 else None, owner=1)
    w = mpc.share(w0 if ctx.rank == 0 else None, owner=0)
    n = xs.shape[0]
    grad = x.t() @ ((x @ w).sigmoid() - y)
    return (w - grad * (lr / n)).reveal()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", FAMILIES)
def test_a_logistic_regression_step_with_lr_over_n_of_1e_minus_5(sim, protocol):
    g = torch.Generator().manual_seed(0)
    n, d = 200, 8
    xs = torch.round(torch.randn(n, d, generator=g, dtype=torch.float64) * 10 * 2**16) / 2**16
    ys = (torch.rand(n, 1, generator=g) > 0.5).to(torch.float64)
    w0 = torch.zeros(d, 1, dtype=torch.float64)
    lr = 2e-3  # lr / N = 1e-5
    got = sim(functools.partial(_logreg_step, xs=xs, ys=ys, w0=w0, lr=lr), 2, protocol=protocol)[0]
    want = w0 - xs.t() @ (torch.sigmoid(xs @ w0) - ys) * (lr / n)
    assert float(want.abs().max()) > 50 * ULP  # a step of many ulps, which lr/N rounded to 2^-16 would ruin (+53%)
    # the sigmoid is within 2.2e-4 per element: the step is within 2% and 2 ulp
    assert bool(((got.double() - want).abs() <= 0.02 * want.abs() + 2 * ULP).all()), (got, want)


# ----- warnings and errors ----------------------------------------------------------------------


def _warnings_of(run) -> list[str]:
    """FixedPointWarning messages of a simulated run (caught in this thread: the party threads share the filter)."""
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        run()
    return [str(w.message) for w in got if issubclass(w.category, FixedPointWarning)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", FAMILIES)
def test_lossy_public_constants_warn_once_per_call_site(sim, protocol):
    def prog(ctx):
        x = mpc.share(torch.ones(3) if ctx.rank == 0 else None, owner=0)
        for _ in range(3):
            x = x + 1e-6  # one call site, three calls
        y = x * 0.5  # exact: no warning
        return y.reveal()

    messages = _warnings_of(lambda: sim(prog, 2, protocol=protocol))
    assert len(messages) == 2, messages  # once per party
    assert all("1e-06" in m and "test_numbers.py" in m for m in messages), messages


@pytest.mark.timeout(60)
def test_vanishing_inputs_and_revealed_overflow_warn(sim):
    def prog(ctx):
        x = mpc.share(torch.tensor([1e-7, 1.0, 1e5]) if ctx.rank == 0 else None, owner=0)
        big = x * x  # 1e10 is outside the range
        return big.reveal(), (x * 2).reveal()

    results = []
    messages = _warnings_of(lambda: results.extend(sim(prog, 2)))
    assert sum("overflowed" in m for m in messages) == 2, messages  # at each party
    assert sum("become 0" in m for m in messages) == 1, messages  # at the owner
    for out, ok in results:
        assert float(out[2]) != 1e10  # the garbage the warning is about
        assert ok.tolist() == [0.0, 2.0, 2e5]


@pytest.mark.timeout(60)
def test_a_clean_program_warns_nothing(sim):
    def prog(ctx):
        x = mpc.share(torch.tensor([0.5, 1.0, 3.0]) if ctx.rank == 0 else None, owner=0)
        return ((x * 1e-5 + 0.25) * x).mean().reveal()

    assert _warnings_of(lambda: sim(prog, 2)) == []


class _Thing:
    pass


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "value,match",
    [
        (torch.nn.Linear(2, 3), "torch.nn.Module"),
        ({"w": torch.ones(2)}, "state dict"),
        (_Thing(), "not a _Thing"),
    ],
    ids=["module", "state dict", "object"],
)
def test_sharing_an_unsupported_object_says_what_to_use(sim, value, match):
    def prog(ctx):
        return mpc.share(value if ctx.rank == 0 else None, owner=0)

    with pytest.raises(ProtocolError, match=match) as info:
        sim(prog, 2)
    assert isinstance(info.value, mpc.MPCError)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "expr,match",
    [
        ("x * y", r"x \* y: shapes \(3,\) and \(4,\) do not broadcast"),
        ("x + y", r"x \+ y: shapes \(3,\) and \(4,\) do not broadcast"),
        ("x @ y", r"x @ y: shapes \(3,\) and \(4,\) do not match"),
        ("x * torch.ones(4)", r"x \* y: shapes \(3,\) and \(4,\) do not broadcast"),
    ],
)
def test_shape_errors_speak_of_the_users_operation(sim, expr, match):
    def prog(ctx):
        x = mpc.share(torch.ones(3) if ctx.rank == 0 else None, owner=0)  # noqa: F841 - used by eval
        y = mpc.share(torch.ones(4) if ctx.rank == 0 else None, owner=0)  # noqa: F841 - used by eval
        return eval(expr)

    with pytest.raises(ProtocolError, match=match):
        sim(prog, 2)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", [".item()", ".tolist()", "float(x)", "int(x)", ".numpy()"])
def test_reading_a_secret_value_says_to_reveal_first(sim, call):
    def prog(ctx):
        x = mpc.share(torch.ones(1) if ctx.rank == 0 else None, owner=0)  # noqa: F841 - used by eval
        return eval(call) if call.endswith("(x)") else eval("x" + call)

    with pytest.raises(ProtocolError, match=r"reveal\(\)"):
        sim(prog, 2)


def test_ulp_constant():
    assert math.isclose(ULP, 1 / 65536)
