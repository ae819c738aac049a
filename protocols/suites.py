"""Protocol families as strategy objects with the same methods.

A suite is chosen by ``MPCConfig.suite``; the user layer only ever calls the
suite's methods, so a 3-party replicated family can be added later without
touching ``mpc.tensor``.
"""

from __future__ import annotations

from mpc.errors import ConfigError

from . import beaver, sharing, truncation

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


def make_suite(name: str) -> AdditiveDealerSuite:
    if name == AdditiveDealerSuite.name:
        return AdditiveDealerSuite()
    raise ConfigError(f"unknown protocol suite {name!r}")
