"""Validated, frozen configuration passed explicitly to every party."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

from .errors import ConfigError

__all__ = ["MPCConfig", "PROTOCOLS", "LINK_DELAY_MAX"]

# The protocol families a run can choose (``protocols.families`` implements each; a test checks they agree).
PROTOCOLS = ("additive-dealer", "plaintext")
# Seconds of emulated one-way latency at most: more than any real link (a geostationary satellite hop is about
# 0.3 s), and within the 1 s for which the ZeroMQ transport takes a vanished peer for one that may yet be heard
# from (parties.zmq_comm.LOST_GRACE): a bye held longer would be taken for a crash.
LINK_DELAY_MAX = 1.0


@dataclass(frozen=True)
class MPCConfig:
    """Options every party of a run must agree on (checked at setup).

    frac_bits: fractional bits of the fixed-point encoding.
    timeout: seconds any receive waits before naming the silent peer.
    max_message_bytes: largest tensor a peer may declare (a bigger declared shape is refused before
        anything is allocated).
    chunk_bytes: largest frame on the wire: bigger payloads travel in chunks of this size, and the
        transport cuts a peer's connection at a bigger frame before holding it.  Every node of a
        run must use the same value.
    max_buffered_bytes: most bytes a peer may have waiting at this node beyond what the current
        operation expects from it (messages that arrived early, e.g. the dealer's prefetched
        material); more is refused with an error naming the peer.  A local limit.
    protocol: protocol family: ``additive-dealer`` (secure, with a dealer) or ``plaintext`` (no secrecy:
        a dry run that reports what fixed point would break).
    resume_dir: the checkpoint directory this party resumes from (``mpc party --resume DIR``, which
        ``mpc launch --resume DIR`` passes on), or None.  Each party's own path: like ``timeout`` it is not
        part of the fingerprint; ``mpc.Checkpointer`` checks that every party resumes, and from which step.
    link_delay: seconds every frame is held at the node that receives it before it is taken in: an
        emulated one-way network latency for benchmarks (``scripts/bench.py --latency``), applied by the
        communicator (``parties.comm_base``); 0 (the default): none.  At most ``LINK_DELAY_MAX`` and under
        half of ``timeout`` (a reply comes after twice the delay).  A local setting, not in the fingerprint.
    """

    frac_bits: int = 16
    timeout: float = 60.0
    max_message_bytes: int = 1 << 32
    protocol: str = "additive-dealer"
    resume_dir: str | None = None
    chunk_bytes: int = 1 << 22
    max_buffered_bytes: int = 1 << 31
    link_delay: float = 0.0

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
        for name, low in (("chunk_bytes", 4096), ("max_buffered_bytes", 4096)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol family {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        d = self.link_delay
        if (
            isinstance(d, bool)
            or not isinstance(d, int | float)
            or not math.isfinite(d)
            or not 0 <= d <= LINK_DELAY_MAX
        ):
            raise ConfigError(
                f"link_delay must be a number of seconds in [0, {LINK_DELAY_MAX:g}] (an emulated one-way latency, "
                f"e.g. 0.005 for 5 ms), got {d!r}"
            )
        if 2 * d >= self.timeout:
            raise ConfigError(
                f"link_delay {d:g}s each way leaves no time within the {self.timeout:g}s receive timeout (a reply "
                "takes twice the delay): raise timeout above 2 x link_delay, or lower link_delay"
            )
        if self.resume_dir is not None and (not isinstance(self.resume_dir, str) or not self.resume_dir):
            raise ConfigError(f"resume_dir must be a directory path or None, got {self.resume_dir!r}")

    def fingerprint(self) -> bytes:
        """32 bytes that differ when any option that changes results differs."""
        d = asdict(self)
        d.pop("timeout")
        d.pop("resume_dir")  # each party's own path
        d.pop("max_buffered_bytes")  # local limits: nodes may differ
        d.pop("link_delay")  # each node's own emulated latency: results never depend on it
        text = ";".join(f"{k}={d[k]}" for k in sorted(d))
        return hashlib.sha256(text.encode()).digest()
