"""Opening a node (party or dealer) of a cluster: keys, transport, setup.

The cluster says which nodes exist (the dealer only when the protocol family
needs one); a node's communicator links exactly those.
"""

from __future__ import annotations

import logging
import sys

from mpc.config import MPCConfig
from mpc.context import PartyContext
from mpc.errors import ConfigError

from .cluster import Cluster
from .keys import keys_for_node
from .lifecycle import open_context
from .zmq_comm import NodeKeys, ZmqCommunicator

__all__ = ["open_comm", "open_dealer", "open_party_comm", "open_party", "INSECURE_WARNING", "configure_logging"]

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
    cluster: Cluster,
    node_id: int,
    config: MPCConfig,
    secret: bytes | None,
    insecure: bool,
    listen_fd: int | None = None,
) -> ZmqCommunicator:
    """The communicator of node ``node_id`` (a party, or ``world_size`` for the dealer).

    ``listen_fd``: a listening socket handed over by the parent (``parties.ports``).
    """
    n = cluster.world_size
    if not isinstance(node_id, int) or not 0 <= node_id < len(cluster.nodes):
        raise ConfigError(f"unknown id {node_id!r}: {cluster.source} lists parties 0..{n - 1}")
    keys: NodeKeys | None = None
    if insecure:
        logging.getLogger("mpc").warning(INSECURE_WARNING)
    else:
        if secret is None:
            raise ConfigError("a secret key is needed (--key FILE from `mpc keygen`), or run with --insecure")
        keys = keys_for_node(cluster, node_id, secret)
    return ZmqCommunicator(
        node_id, n, cluster.addresses, config, keys=keys, dealer=cluster.dealer is not None, listen_fd=listen_fd
    )


def open_dealer(
    cluster: Cluster, config: MPCConfig, secret: bytes | None, insecure: bool, listen_fd: int | None = None
) -> ZmqCommunicator:
    """The dealer's communicator; refused when the cluster's protocol family has no dealer."""
    if cluster.dealer is None:
        raise ConfigError(
            f"{cluster.source}: the {cluster.family.name} protocol family needs no dealer: do not start one"
        )
    return open_comm(cluster, cluster.world_size, config, secret, insecure, listen_fd)


def open_party_comm(
    cluster: Cluster, rank: int, config: MPCConfig, secret: bytes | None, insecure: bool, listen_fd: int | None = None
) -> ZmqCommunicator:
    """Party ``rank``'s communicator (the dealer's id is refused)."""
    if isinstance(rank, int) and cluster.dealer is not None and rank == cluster.world_size:
        raise ConfigError(f"id {rank} is the dealer's; parties are 0..{rank - 1}")
    return open_comm(cluster, rank, config, secret, insecure, listen_fd)


def open_party(cluster: Cluster, rank: int, config: MPCConfig, secret: bytes | None, insecure: bool) -> PartyContext:
    """Party ``rank``'s context, set up (for ``mpc.init``, which runs no program of its own)."""
    return open_context(open_party_comm(cluster, rank, config, secret, insecure), config)
