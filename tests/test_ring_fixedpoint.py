"""Pure tier: the ring Z_2^64, the fixed-point encoding, the PRG and the config (no parties)."""

from __future__ import annotations

import math

import pytest
import torch

from mpc.config import MPCConfig
from mpc.errors import ConfigError, EncodingError
from mpc.fixedpoint import FixedPoint
from mpc.prg import SEED_BYTES, Prg, new_seed
from mpc.ring import BITS, logical_rshift, msb, wrap_int

U64 = 1 << 64


def _unsigned(v: int) -> int:
    return v % U64


def _samples(n: int = 4000) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    full = torch.randint(-(1 << 63), (1 << 63) - 1, (n,), generator=g, dtype=torch.int64)
    edges = torch.tensor([0, 1, -1, 2, -2, (1 << 63) - 1, -(1 << 63), 1 << 62, -(1 << 62), 12345, -12345])
    return torch.cat([full, edges])


# ----- ring ------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_ring_wraps_like_integers_mod_2_64():
    x, y = _samples(), _samples().flip(0)
    for got, want in [
        (x + y, [_unsigned(a + b) for a, b in zip(x.tolist(), y.tolist())]),
        (x - y, [_unsigned(a - b) for a, b in zip(x.tolist(), y.tolist())]),
        (x * y, [_unsigned(a * b) for a, b in zip(x.tolist(), y.tolist())]),
    ]:
        assert [_unsigned(v) for v in got.tolist()] == want


@pytest.mark.timeout(20)
@pytest.mark.parametrize("k", [0, 1, 15, 16, 32, 48, 63])
def test_logical_rshift_is_unsigned_shift(k):
    x = _samples()
    got = logical_rshift(x, k)
    assert [_unsigned(v) for v in got.tolist()] == [_unsigned(v) >> k for v in x.tolist()]
    if k:
        assert bool((got >= 0).all())


@pytest.mark.timeout(20)
def test_msb_and_wrap_int():
    x = _samples()
    assert msb(x).tolist() == [_unsigned(v) >> (BITS - 1) for v in x.tolist()]
    for v in [0, 1, -1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 64, 3 << 64 | 5, -(1 << 63), -(1 << 64) - 7]:
        w = wrap_int(v)
        assert -(1 << 63) <= w < (1 << 63)
        assert (w - v) % U64 == 0


# ----- fixed point ---------------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("f", [0, 8, 16, 20, 28])
def test_fixedpoint_float_round_trip_within_half_ulp(f):
    fp = FixedPoint(f)
    g = torch.Generator().manual_seed(f)
    # Magnitudes spread over the whole documented range |v| < 2^(62-2f).
    exps = torch.rand(5000, generator=g, dtype=torch.float64) * (62 - 2 * f)
    v = torch.sign(torch.randn(5000, generator=g, dtype=torch.float64)) * (2.0**exps - 1.0)
    enc = fp.encode(v)
    assert enc.dtype == torch.int64
    back = fp.decode(enc, torch.float64)
    # Encoding rounds to the nearest multiple of 2^-f: at most half an ulp off (exact in float64 here,
    # since |v| 2^f < 2^(62-f) <= 2^53 needs f >= 9; for smaller f the float64 grid is finer anyway).
    tol = 0.5 * fp.ulp() + v.abs() * 2.0**-52
    assert bool(((back - v).abs() <= tol).all())
    assert torch.equal(enc, torch.round(v * 2.0**f).to(torch.int64))


@pytest.mark.timeout(20)
def test_fixedpoint_integers_and_booleans_are_exact():
    fp = FixedPoint(16)
    ints = torch.tensor([0, 1, -1, 7, -123456, (1 << 30) - 1, -((1 << 30) - 1)], dtype=torch.int64)
    for dtype in (torch.int64, torch.int32):
        t = ints.to(dtype)
        assert torch.equal(fp.decode(fp.encode(t), dtype), t)
    small = torch.tensor([0, 1, -1, 100, -128, 127], dtype=torch.int8)
    assert torch.equal(fp.decode(fp.encode(small), torch.int8), small)
    b = torch.tensor([True, False, True])
    assert fp.encode(b).tolist() == [1 << 16, 0, 1 << 16]
    assert torch.equal(fp.decode(fp.encode(b), torch.bool), b)
    # Integers decode by rounding: a result one unit below an integer still decodes to it.
    assert fp.decode(torch.tensor([(5 << 16) - 1, (-5 << 16) + 1]), torch.int64).tolist() == [5, -5]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        2.0**30,
        -(2.0**30),
        1e12,
    ],
)
def test_fixedpoint_refuses_nan_inf_and_out_of_range(value):
    fp = FixedPoint(16)
    with pytest.raises(EncodingError) as err:
        fp.encode(torch.tensor([0.5, value], dtype=torch.float64), what="x")
    msg = str(err.value)
    if math.isfinite(value):
        assert "2^30" in msg and "frac_bits=16" in msg  # names the range and the knob
        assert str(int(abs(value))) not in msg and repr(value) not in msg  # never the value itself
    else:
        assert "NaN or infinity" in msg


@pytest.mark.timeout(20)
def test_fixedpoint_range_edges():
    for f in (8, 16, 24):
        fp = FixedPoint(f)
        assert fp.bound == 2.0 ** (62 - 2 * f)
        step = max(fp.ulp(), fp.bound * 2.0**-52)  # the largest float64 below the bound on the grid
        below = torch.tensor([fp.bound - step, -(fp.bound - step)], dtype=torch.float64)
        assert fp.decode(fp.encode(below), torch.float64).tolist() == below.tolist()
        with pytest.raises(EncodingError, match=rf"2\^{62 - 2 * f}"):
            fp.encode(torch.tensor([fp.bound], dtype=torch.float64))
        with pytest.raises(EncodingError):
            fp.encode(torch.tensor([int(fp.bound)], dtype=torch.int64))
        fp.encode(torch.tensor([int(fp.bound) - 1], dtype=torch.int64))
    with pytest.raises(EncodingError):
        FixedPoint(16).encode(torch.tensor([1 + 1j]))
    # Empty tensors and python scalars are fine.
    assert FixedPoint(16).encode(torch.empty(0, 3)).shape == (0, 3)
    assert int(FixedPoint(16).encode(2.5)) == 5 << 15


@pytest.mark.timeout(20)
@pytest.mark.parametrize("f", [-1, 29, 16.0, "16"])
def test_fixedpoint_and_config_refuse_bad_frac_bits(f):
    with pytest.raises(EncodingError, match="frac_bits"):
        FixedPoint(f)
    with pytest.raises(ConfigError, match="frac_bits"):
        MPCConfig(frac_bits=f)


@pytest.mark.timeout(20)
def test_config_validation_and_fingerprint():
    for bad in [dict(timeout=0), dict(timeout=-1), dict(timeout="5"), dict(max_message_bytes=10), dict(protocol="x")]:
        with pytest.raises(ConfigError):
            MPCConfig(**bad)
    base = MPCConfig()
    assert base.fingerprint() == MPCConfig().fingerprint()
    assert base.fingerprint() == MPCConfig(timeout=5).fingerprint()  # the timeout may differ per party
    assert base.fingerprint() != MPCConfig(frac_bits=12).fingerprint()
    assert base.fingerprint() != MPCConfig(max_message_bytes=1 << 20).fingerprint()
    with pytest.raises(AttributeError):
        base.frac_bits = 3  # frozen


# ----- PRG -------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_prg_is_deterministic_per_seed_and_hides_it():
    seed = new_seed()
    assert len(seed) == SEED_BYTES and seed != new_seed()
    a, b = Prg(seed), Prg(seed)
    assert torch.equal(a.int64((3, 4)), b.int64((3, 4)))
    assert torch.equal(a.bits((100,)), b.bits((100,)))
    assert a.seed() == b.seed()
    assert not torch.equal(Prg(seed).int64((64,)), Prg(new_seed()).int64((64,)))
    # The stream continues: two draws of 8 equal one draw of 16.
    c, d = Prg(seed), Prg(seed)
    assert torch.equal(torch.cat([c.int64((8,)), c.int64((8,))]), d.int64((16,)))
    assert seed.hex() not in repr(a) and "secret" in repr(a)
    assert a.int64((0, 5)).shape == (0, 5) and a.bytes(0).size == 0
    for bad in [b"short", "x" * 32, None, b"\x00" * 33]:
        with pytest.raises(ValueError):
            Prg(bad)


@pytest.mark.timeout(20)
def test_prg_output_looks_uniform():
    # 2^17 ring elements: every bit must be set with frequency 1/2 within 6 sigma.
    x = Prg(new_seed()).int64((1 << 17,))
    n = x.numel()
    for bit in range(64):
        ones = int(((x >> bit) & 1).sum())
        assert abs(ones - n / 2) < 6 * math.sqrt(n / 4), bit
    bits = Prg(new_seed()).bits((n,))
    assert set(bits.unique().tolist()) == {0, 1}
    assert abs(int(bits.sum()) - n / 2) < 6 * math.sqrt(n / 4)
