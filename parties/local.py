"""One local cluster for ``mpc.run`` and ``mpc launch``: loopback listeners, fresh keys, the family's nodes.

Both entry points start every node of a run on this machine.  They build the
same thing: one listening socket per node (``parties.ports``: bound here, handed
to the child), a fresh key pair per node unless insecure, and a
``Cluster`` with a dealer only when the protocol family needs one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mpc.config import MPCConfig
from mpc.errors import ConfigError
from protocols.families import get_family

from .cluster import Cluster, Node
from .keys import ephemeral_keys
from .ports import Listeners

__all__ = ["LocalCluster", "local_cluster", "LOCAL_DEALER_NICE", "LOCAL_DEALER_THREADS"]

# The niceness of a local run's dealer: all nodes share this machine's cores, and what the dealer makes ahead
# of the requests (``parties.dealer.Ahead``) should yield them to the parties; when the parties wait for it, it
# runs anyway.  On 2 cores (``scripts/bench.py --vs crypten``, alternating runs) niceness 10 against 0
# measured 0.64 / 0.64 against 0.67 / 0.80 s for logistic regression and 0.19 / 0.20 against 0.24 / 0.22 s for
# LeNet-5: within the noise, never worse.  A dealer on its own host (``mpc dealer``) keeps its priority.
LOCAL_DEALER_NICE = 10
# ... and one torch thread.  With torch's default (a thread per core) the dealer's OpenMP team shares the cores
# with busy parties, and every parallel kernel waits at its barrier for the thread that got no core (at
# niceness 10, seldom): the dealer's cmp material for a ReLU of 10^6 took 100 to 440 ms in a 2-party run on 2
# cores, against 45 ms on an idle core (``scripts/bench.py`` runs each party with one thread, and CrypTen's
# TTP with one).  A dealer on its own host keeps torch's default.
LOCAL_DEALER_THREADS = 1


@dataclass(frozen=True)
class LocalCluster:
    """A local run's cluster, every node's secret key (``None`` when insecure) and their listening sockets.

    Index ``i`` of ``secrets`` and ``listeners`` is node ``i`` (parties, then the
    dealer if the cluster has one).  Close ``listeners`` once the children run.
    """

    cluster: Cluster
    secrets: tuple[bytes | None, ...]
    listeners: Listeners

    @property
    def node_names(self) -> list[str]:
        """``party 0``, ..., and ``dealer`` when there is one, in node id order."""
        n = self.cluster.world_size
        return [f"party {i}" for i in range(n)] + (["dealer"] if self.cluster.dealer is not None else [])


def local_cluster(n: int, insecure: bool, options: dict[str, Any]) -> LocalCluster:
    """A cluster of ``n`` parties (plus the dealer iff the family of ``options['protocol']`` needs one)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"the number of parties must be a positive integer, got {n!r}")
    try:
        protocol = MPCConfig(**options).protocol  # a bad option is named before any socket is bound
    except TypeError as exc:
        raise ConfigError(f"bad run options: {exc}") from None
    family = get_family(protocol)
    problem = family.check_parties(n)
    if problem is not None:
        raise ConfigError(problem)
    count = n + (1 if family.needs_dealer else 0)
    listeners = Listeners(count)
    try:
        addrs = listeners.addresses
        if insecure:
            keys: list[tuple[bytes | None, bytes | None]] = [(None, None)] * count
        else:
            keys = list(ephemeral_keys(count))
        pubs = [k[0].decode("ascii") if k[0] else None for k in keys]
        parties = tuple(Node(i, addrs[i], pubs[i]) for i in range(n))
        dealer = Node("dealer", addrs[n], pubs[n]) if family.needs_dealer else None
        cluster = Cluster(parties, dealer, dict(options), "<local run>")
    except BaseException:
        listeners.close()
        raise
    return LocalCluster(cluster, tuple(k[1] for k in keys), listeners)
