"""mpc: secure multi-party computation on torch tensors.

Core (``ring``, ``fixedpoint``, ``prg``, ``config``, ``context``, ``errors``) and
the user layer (``tensor``, ``api``, ``checkpoint``: ``save``, ``load``,
``Checkpointer``).  The entry points that start parties,
``run``, ``run_threads`` and ``init``, are implemented in ``parties`` (the
outer layer, which alone imports zmq and multiprocessing) and re-exported here
on first use, so that importing the core never loads the transport.
"""

from __future__ import annotations

from typing import Any

from . import arith as _arith  # noqa: F401 - registers the table's operations
from . import grads as _grads  # noqa: F401 - registers the table's backward rules
from . import nn, optim  # the user layer: layers, losses, optimizers
from .api import current_context, is_grad_enabled, no_grad, share, use_context
from .checkpoint import Checkpointer, load, save
from .config import MPCConfig
from .context import CommStats, PartyContext
from .errors import (
    CheckpointError,
    ClosedError,
    CommunicationError,
    ConfigError,
    DesyncError,
    EncodingError,
    FixedPointWarning,
    MPCError,
    PartyFailed,
    PeerAborted,
    PeerLost,
    PeerTimeout,
    ProtocolError,
    SecurityError,
    WireError,
)
from .fixedpoint import FixedPoint
from .functional import (
    avg_pool2d,
    cat,
    conv2d,
    linear,
    log_softmax,
    max_pool2d,
    maximum,
    minimum,
    softmax,
    stack,
    where,
)
from .ops import OPS
from .tensor import MaxResult, SecretTensor

__all__ = [
    "nn",
    "optim",
    "share",
    "no_grad",
    "is_grad_enabled",
    "current_context",
    "use_context",
    "save",
    "load",
    "Checkpointer",
    "SecretTensor",
    "cat",
    "stack",
    "conv2d",
    "where",
    "maximum",
    "minimum",
    "softmax",
    "log_softmax",
    "max_pool2d",
    "avg_pool2d",
    "linear",
    "OPS",
    "FixedPointWarning",
    "MaxResult",
    "MPCConfig",
    "FixedPoint",
    "PartyContext",
    "CommStats",
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
    "run",
    "run_threads",
    "init",
]

_ENTRY_POINTS = {"run": "parties.runner", "run_threads": "parties.simulator", "init": "parties.runner"}


def __getattr__(name: str) -> Any:
    # The facade's one lazy import: the entry points live in the outer layer.
    if name in _ENTRY_POINTS:
        import importlib

        return getattr(importlib.import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'mpc' has no attribute {name!r}")
