"""Validated, frozen configuration passed explicitly to every party."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from .errors import ConfigError

__all__ = ["MPCConfig", "PROTOCOLS"]

# The protocol families a run can choose (``protocols.families`` implements each; a test checks they agree).
PROTOCOLS = ("additive-dealer", "plaintext")


@dataclass(frozen=True)
class MPCConfig:
    """Options every party of a run must agree on (checked at setup).

    frac_bits: fractional bits of the fixed-point encoding.
    timeout: seconds any receive waits before naming the silent peer.
    max_message_bytes: largest payload accepted from a peer (bigger frames are refused).
    protocol: protocol family: ``additive-dealer`` (secure, with a dealer) or ``plaintext`` (no secrecy:
        a dry run that reports what fixed point would break).
    """

    frac_bits: int = 16
    timeout: float = 60.0
    max_message_bytes: int = 1 << 32
    protocol: str = "additive-dealer"

    def __post_init__(self) -> None:
        if not isinstance(self.frac_bits, int) or isinstance(self.frac_bits, bool) or not 0 <= self.frac_bits <= 28:
            raise ConfigError(f"frac_bits must be an integer in [0, 28], got {self.frac_bits!r}")
        if not isinstance(self.timeout, int | float) or isinstance(self.timeout, bool) or not self.timeout > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if (
            not isinstance(self.max_message_bytes, int)
            or isinstance(self.max_message_bytes, bool)
            or self.max_message_bytes < 1024
        ):
            raise ConfigError(f"max_message_bytes must be an integer >= 1024, got {self.max_message_bytes!r}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol family {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")

    def fingerprint(self) -> bytes:
        """32 bytes that differ when any option that changes results differs."""
        d = asdict(self)
        d.pop("timeout")
        text = ";".join(f"{k}={d[k]}" for k in sorted(d))
        return hashlib.sha256(text.encode()).digest()
