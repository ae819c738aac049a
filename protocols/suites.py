"""Protocol families as strategy objects with the same methods.

A suite is chosen by ``MPCConfig.suite``; the user layer only ever calls the
suite's methods, so a 3-party replicated family can be added later without
touching ``mpc.tensor``.
"""

from __future__ import annotations

from mpc.errors import ConfigError

from . import beaver, binary, comparison, conversions, nonlinear, ordering, sharing, truncation

__all__ = ["AdditiveDealerSuite", "make_suite"]


class AdditiveDealerSuite:
    """n-out-of-n additive sharing over Z_2^64 with a seed-compressed dealer (n >= 2)."""

    name = "additive-dealer"
    min_parties = 2

    share_input = staticmethod(sharing.share_input)
    open_all = staticmethod(sharing.open_all)
    open_to = staticmethod(sharing.open_to)
    truncate = staticmethod(truncation.truncate)
    mul = staticmethod(beaver.mul)
    matmul = staticmethod(beaver.matmul)
    conv2d = staticmethod(beaver.conv2d)
    square = staticmethod(beaver.square)
    # binary sharing and conversions
    and_ = staticmethod(binary.and_)
    open_words = staticmethod(binary.open_words)
    b2a = staticmethod(conversions.b2a)
    a2b = staticmethod(conversions.a2b)
    bit_extract = staticmethod(conversions.bit_extract)
    exact_rshift = staticmethod(conversions.exact_rshift)
    # comparison and selection
    compare = staticmethod(comparison.compare)
    relu = staticmethod(comparison.relu)
    mul_bits = staticmethod(ordering.mul_bits)
    where = staticmethod(ordering.where)
    clamp_public = staticmethod(ordering.clamp_public)
    clamp_secret = staticmethod(ordering.clamp_secret)
    maximum = staticmethod(ordering.maximum)
    max_reduce = staticmethod(ordering.max_reduce)
    # nonlinear functions
    exp = staticmethod(nonlinear.exp)
    log = staticmethod(nonlinear.log)
    reciprocal = staticmethod(nonlinear.reciprocal)
    sqrt = staticmethod(nonlinear.sqrt)
    rsqrt = staticmethod(nonlinear.rsqrt)
    sqrt_wide = staticmethod(nonlinear.sqrt_wide)
    sigmoid = staticmethod(nonlinear.sigmoid)
    tanh = staticmethod(nonlinear.tanh)
    softmax = staticmethod(nonlinear.softmax)
    log_softmax = staticmethod(nonlinear.log_softmax)
    pow_int = staticmethod(nonlinear.pow_int)
    piecewise = staticmethod(nonlinear.piecewise)


def make_suite(name: str) -> AdditiveDealerSuite:
    if name == AdditiveDealerSuite.name:
        return AdditiveDealerSuite()
    raise ConfigError(f"unknown protocol suite {name!r}")
