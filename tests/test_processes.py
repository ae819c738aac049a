"""Process tier: ``mpc.run`` with real party and dealer processes over ZeroMQ on 127.0.0.1.

Each run starts a process per party plus the dealer (``spawn``, so a few
seconds each on two cores): the runs are few and each checks several things.
The party functions are module-level so that they can be pickled.
"""

from __future__ import annotations

import functools
import os
import signal
import time

import pytest
import torch

import mpc

ULP = 2.0**-16


def compute(ctx):
    """Inputs from every party; products, a public operation, and an opening to one party only."""
    n = ctx.world_size
    x = mpc.share(torch.tensor([[1.5, -2.0], [0.25, 3.0]]) if ctx.rank == 0 else None, owner=0)
    y = mpc.share(torch.tensor([[2.0, 1.0], [-1.0, 0.5]]) if ctx.rank == 1 else None, owner=1)
    k = mpc.share(torch.tensor([3, -4]) if ctx.rank == n - 1 else None, owner=n - 1)
    return {
        "mul": (x * y).reveal(),
        "matmul": (x @ y).reveal(),
        "square": x.square().reveal(),
        "public": (x * 0.5 + 1).reveal(),
        "int": (k * k).reveal(),
        "to_last": (x + y).reveal(to=n - 1),
        "rank": ctx.rank,
    }


@pytest.mark.timeout(120)
def test_run_three_parties_over_curve(party_logs):
    x = torch.tensor([[1.5, -2.0], [0.25, 3.0]])
    y = torch.tensor([[2.0, 1.0], [-1.0, 0.5]])
    start = time.monotonic()
    results = mpc.run(compute, parties=3, timeout=30, return_stats=True, run_timeout=60)
    party_logs.record("mpc.run", f"{time.monotonic() - start:.1f}s")
    assert [r["rank"] for r, _ in results] == [0, 1, 2]
    for i, (r, stats) in enumerate(results):
        assert torch.allclose(r["mul"], x * y, atol=1.5 * ULP)
        assert torch.allclose(r["matmul"], x @ y, atol=1.5 * ULP)
        assert torch.allclose(r["square"], x * x, atol=1.5 * ULP)
        assert torch.allclose(r["public"], x * 0.5 + 1, atol=1.5 * ULP)
        assert r["int"].dtype == torch.int64 and r["int"].tolist() == [9, 16]
        if i == 2:
            assert torch.allclose(r["to_last"], x + y, atol=0)
        else:
            assert r["to_last"] is None
        # 3 shares; mul, matmul, square and k * k take 2 rounds each, x * 0.5 one; 6 openings.
        assert stats["rounds"] == 3 + 2 + 2 + 2 + 1 + 2 + 6
        # openings of e and f (8 bytes to each of 2 peers per element): x * y (4 + 4), k * k (2 + 2)
        assert stats["by_op"]["mul"]["bytes_sent"] == 8 * 2 * (4 + 4) + 8 * 2 * (2 + 2)
    # The last party alone talks to the dealer.
    assert results[2][1]["dealer_bytes_recv"] > 0
    assert results[0][1]["dealer_bytes_recv"] == results[1][1]["dealer_bytes_recv"] == 0


def fail_in_party_one(ctx):
    x = mpc.share(torch.ones(3) if ctx.rank == 0 else None, owner=0)
    if ctx.rank == 1:
        raise ValueError("deliberate failure in party one")
    return (x * x).reveal()


def kill_party_one(ctx, marker: str):
    x = mpc.share(torch.ones(3) if ctx.rank == 0 else None, owner=0)
    x.reveal()
    if ctx.rank == 1:
        with open(marker, "w") as f:
            f.write(repr(time.time()))
        os.kill(os.getpid(), signal.SIGKILL)
    return (x * x).reveal()


@pytest.mark.timeout(120)
def test_party_exception_is_raised_as_party_failed(party_logs):
    start = time.monotonic()
    with pytest.raises(mpc.PartyFailed) as err:
        mpc.run(fail_in_party_one, parties=3, timeout=30, insecure=True)
    elapsed = time.monotonic() - start
    e = err.value
    party_logs.record("PartyFailed", str(e))
    assert e.rank == 1 and e.error_type == "ValueError"
    assert "party 1 failed: ValueError: deliberate failure in party one" in str(e)
    assert "Traceback" in e.remote_traceback and "fail_in_party_one" in e.remote_traceback
    assert "--- traceback in party 1 ---" in str(e)
    assert elapsed < 30, "the failure must stop the run at once, not after the 30 s timeout"


@pytest.mark.timeout(120)
def test_killed_party_is_named_before_twice_the_timeout(party_logs, tmp_path):
    marker = tmp_path / "killed"
    timeout = 5.0
    with pytest.raises(mpc.PartyFailed) as err:
        mpc.run(functools.partial(kill_party_one, marker=str(marker)), parties=3, timeout=timeout, insecure=True)
    noticed = time.time()
    party_logs.record("PartyFailed", str(err.value))
    assert err.value.rank == 1
    assert "without reporting (killed or crashed)" in str(err.value) and str(-signal.SIGKILL) in str(err.value)
    assert noticed - float(marker.read_text()) < 2 * timeout


@pytest.mark.timeout(30)
def test_run_refuses_bad_arguments():
    with pytest.raises(mpc.ConfigError, match="parties must be an integer >= 2"):
        mpc.run(compute, parties=1)
    with pytest.raises(mpc.ConfigError, match="frac_bits"):
        mpc.run(compute, parties=2, frac_bits=40)
    with pytest.raises(mpc.ProtocolError, match="picklable"):
        mpc.run(lambda ctx: None, parties=2)
