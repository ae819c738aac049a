"""Opening a node (party or dealer) of a cluster: keys, transport, setup."""

from __future__ import annotations

import logging
import os
import sys

from mpc.config import MPCConfig
from mpc.context import PartyContext
from mpc.errors import ConfigError

from .cluster import Cluster
from .comm_base import abort_reason
from .keys import curve_for_node
from .party import setup_party
from .zmq_comm import CurveKeys, ZmqCommunicator

__all__ = ["open_comm", "open_party", "INSECURE_WARNING", "configure_logging"]

INSECURE_WARNING = (
    "WARNING: running with --insecure: links between parties and to the dealer are neither encrypted "
    "nor authenticated; anyone on the network can read the shares and impersonate a party"
)


def configure_logging(prefix: str, level: int = logging.INFO) -> None:
    root = logging.getLogger("mpc")
    if not any(getattr(h, "_mpc", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(f"{prefix}%(message)s"))
        h._mpc = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)


def open_comm(
    cluster: Cluster, node_id: int, config: MPCConfig, secret: bytes | None, insecure: bool
) -> ZmqCommunicator:
    n = cluster.world_size
    if not isinstance(node_id, int) or not 0 <= node_id <= n:
        raise ConfigError(f"unknown id {node_id!r}: {cluster.source} lists parties 0..{n - 1}")
    curve: CurveKeys | None = None
    if insecure:
        logging.getLogger("mpc").warning(INSECURE_WARNING)
    else:
        if secret is None:
            raise ConfigError("a secret key is needed (--key FILE from `mpc keygen`), or run with --insecure")
        curve = curve_for_node(cluster, node_id, secret)
    return ZmqCommunicator(node_id, n, cluster.addresses, config, curve=curve)


def open_party(cluster: Cluster, rank: int, config: MPCConfig, secret: bytes | None, insecure: bool) -> PartyContext:
    if rank == cluster.world_size:
        raise ConfigError(f"id {rank} is the dealer's; parties are 0..{rank - 1}")
    comm = open_comm(cluster, rank, config, secret, insecure)
    try:
        return setup_party(comm, config)
    except BaseException as exc:
        comm.abort(abort_reason(exc, f"party {rank} during setup"))
        raise


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "no")
