"""The registry of protocol families, by the name ``MPCConfig.protocol`` gives."""

from __future__ import annotations

from mpc.config import PROTOCOLS
from mpc.errors import ConfigError

from .additive import AdditiveDealerFamily
from .family import ProtocolFamily
from .plaintext import PlaintextFamily

__all__ = ["FAMILIES", "get_family"]

FAMILIES: dict[str, type[ProtocolFamily]] = {
    AdditiveDealerFamily.name: AdditiveDealerFamily,
    PlaintextFamily.name: PlaintextFamily,
}
assert tuple(FAMILIES) == PROTOCOLS, "mpc.config.PROTOCOLS and protocols.families.FAMILIES disagree"


def get_family(name: str) -> ProtocolFamily:
    """A fresh family object for ``name`` (``additive-dealer``, ``plaintext``)."""
    try:
        return FAMILIES[name]()
    except KeyError:
        raise ConfigError(f"unknown protocol family {name!r}; choose one of {', '.join(FAMILIES)}") from None
