"""The toolkit's one exception tree.

::

    MPCError                      base of everything raised on purpose
    ├── ConfigError               bad option, cluster file, key file or party id
    ├── EncodingError             a value outside the fixed-point range, NaN or inf
    ├── ProtocolError             a protocol was used wrongly (shapes, owners, dtypes)
    ├── SecurityError             authentication or key-handling refusal
    ├── CheckpointError           a checkpoint refused: truncated or corrupted, another party's, run's or
    │                             model's, an unknown format version, or parties at different steps
    └── CommunicationError        something went wrong between parties
        ├── DesyncError           peers run different programs or shapes
        ├── WireError             a malformed or hostile frame from a peer
        ├── PeerTimeout           a peer said nothing within the timeout
        ├── PeerAborted           a peer failed and told us so
        ├── PeerLost              a peer's connection dropped before it finished
        └── ClosedError           use of a communicator after close
    PartyFailed                   raised by the runners: a party process failed
    FixedPointWarning             (a warning) a value fixed point would lose: range, domain, rounding

Every message says which party (or which value) is at fault and, where there is
one, what to change.  No message ever contains a share or a plaintext value.
"""

from __future__ import annotations

__all__ = [
    "MPCError",
    "ConfigError",
    "EncodingError",
    "ProtocolError",
    "SecurityError",
    "CheckpointError",
    "CommunicationError",
    "DesyncError",
    "WireError",
    "PeerTimeout",
    "PeerAborted",
    "PeerLost",
    "ClosedError",
    "PartyFailed",
    "FixedPointWarning",
]


class MPCError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class ConfigError(MPCError, ValueError):
    """A configuration value, cluster file, key file or party id is wrong."""


class EncodingError(MPCError, ValueError):
    """A value cannot be encoded in the fixed-point ring."""


class ProtocolError(MPCError, ValueError):
    """A protocol or secret-tensor operation was called with bad arguments."""


class SecurityError(MPCError):
    """An authentication or key-handling check refused to go on."""


class CheckpointError(MPCError):
    """A checkpoint cannot be written or is refused before any share in it is used (``mpc.checkpoint``).

    The message names the file, the party and what is wrong (and, where the
    parties disagree, each party's side), and says what to do instead.
    """


class CommunicationError(MPCError):
    """Base of the errors that concern a peer."""

    def __init__(self, message: str, peer: int | None = None) -> None:
        super().__init__(message)
        self.peer = peer


class DesyncError(CommunicationError):
    """Two parties disagree on which operation or shape comes next."""


class WireError(CommunicationError):
    """A frame from a peer is malformed, oversized or of a forbidden type."""


class PeerTimeout(CommunicationError):
    """A peer did not send what was expected within the timeout."""


class PeerAborted(CommunicationError):
    """A peer failed and sent an abort notice before exiting."""


class PeerLost(CommunicationError):
    """A peer's connection dropped (its process died) before it said goodbye."""


class ClosedError(CommunicationError):
    """The communicator was used after it was closed."""


class PartyFailed(MPCError):
    """A party (or the dealer) failed in a multi-party run.

    ``rank`` is the failing party's id (``"dealer"`` for the dealer) and
    ``remote_traceback`` the traceback text printed in that party.
    """

    def __init__(
        self, rank: int | str, message: str, remote_traceback: str = "", error_type: str | None = None
    ) -> None:
        who = "dealer" if rank == "dealer" else f"party {rank}"
        text = f"{who} failed: {message}"
        if remote_traceback:
            text += f"\n\n--- traceback in {who} ---\n{remote_traceback}"
        super().__init__(text)
        self.rank = rank
        self.remote_traceback = remote_traceback
        self.error_type = error_type


class FixedPointWarning(UserWarning):
    """A value or constant that fixed point would lose: out of range, outside a function's domain, rounded."""
