"""TEMPORARY SHIM for the parties-layer work (replaced by the real registry on main; do not extend)."""

from __future__ import annotations

from mpc.errors import ConfigError

from .correlated import DealerSource
from .suites import AdditiveDealerSuite

__all__ = ["get_family"]


class _Additive(AdditiveDealerSuite):
    name = "additive-dealer"
    min_parties = 2
    needs_dealer = True

    def check_parties(self, n):
        return None if n >= 2 else f"the additive-dealer family needs at least 2 parties, got {n}"

    def correlation_source(self, comm, seed, rank, world_size):
        return DealerSource(comm, seed, rank, world_size)


class _Plain:
    name = "plaintext"
    min_parties = 2
    needs_dealer = False

    def check_parties(self, n):
        return None if n >= 2 else f"the plaintext family needs at least 2 parties, got {n}"

    def correlation_source(self, comm, seed, rank, world_size):
        return None


def get_family(name):
    if name == "additive-dealer":
        return _Additive()
    if name == "plaintext":
        return _Plain()
    raise ConfigError(f"unknown protocol family {name!r}")
