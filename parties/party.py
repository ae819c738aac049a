"""Party setup over any communicator: agree on options, exchange seeds, build the context.

Setup protocol (one round among parties, one message from the dealer):

1. Every party sends every other party the fingerprint of its options; for each
   pair ``i < j`` party ``i`` adds a fresh 32-byte seed from ``os.urandom``.
   That pairwise seed keys the AES-CTR stream used to share inputs without
   sending shares.  A party whose options differ is named and refused.
2. Only when the protocol family needs a dealer: the dealer sends each party
   ``i`` its own 32-byte seed (and its fingerprint); the family's correlation
   source at party ``i`` expands its part of every correlation from it.

The family (``protocols.families.get_family(config.protocol)``) decides: it
checks the number of parties, says whether there is a dealer, and makes the
correlation source.  Under a family that is not secure (``plaintext``) every party logs
``PLAINTEXT_WARNING``.
"""

from __future__ import annotations

import logging

import torch

from mpc.config import MPCConfig
from mpc.context import Communicator, Expect, PartyContext
from mpc.errors import ConfigError, ProtocolError
from mpc.prg import SEED_BYTES, Prg, new_seed
from protocols.families import get_family

__all__ = ["setup_party", "bytes_tensor", "PLAINTEXT_WARNING"]

PLAINTEXT_WARNING = (
    "WARNING: protocol 'plaintext': this run is NOT secure: every value travels and is held in the clear "
    "at every party; use it for debugging only, never with real data"
)


def bytes_tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8)


def setup_party(comm: Communicator, config: MPCConfig) -> PartyContext:
    rank, n = comm.rank, comm.world_size
    family = get_family(config.protocol)
    problem = family.check_parties(n)
    if problem is not None:
        raise ConfigError(problem)
    if family.needs_dealer != comm.has_dealer:
        raise ConfigError(
            f"the {family.name} protocol family {'needs' if family.needs_dealer else 'has no'} dealer, but party "
            f"{rank}'s communicator was opened {'without' if family.needs_dealer else 'with'} one: build the "
            "cluster (or the communicators) for the same protocol as the options"
        )
    if not family.secure:
        logging.getLogger("mpc").warning(PLAINTEXT_WARNING)
    fp = config.fingerprint()
    peers = [j for j in range(n) if j != rank]
    mine = {j: new_seed() for j in peers if j > rank}
    sends = {j: bytes_tensor(fp + mine.get(j, b"")) for j in peers}
    got = comm.exchange("setup", sends, {j: Expect(None, torch.uint8) for j in peers})
    seeds: dict[int, bytes] = dict(mine)
    for j in peers:
        raw = bytes(got[j].numpy().tobytes())
        want = len(fp) + (SEED_BYTES if j < rank else 0)
        if len(raw) != want:
            raise ProtocolError(f"party {j} sent a malformed setup message ({len(raw)} bytes, expected {want})")
        if raw[: len(fp)] != fp:
            raise ConfigError(
                f"party {j} runs with different options (fixed-point bits, protocol or message limit) "
                f"than party {rank}: start every party from the same cluster file and options"
            )
        if j < rank:
            seeds[j] = raw[len(fp) :]
    dealer_seed = None
    if family.needs_dealer:
        dealer_msg = comm.recv(comm.dealer_id, "setup:dealer", Expect((len(fp) + SEED_BYTES,), torch.uint8))
        raw = bytes(dealer_msg.numpy().tobytes())
        if raw[: len(fp)] != fp:
            raise ConfigError(f"the dealer runs with different options than party {rank}")
        dealer_seed = raw[len(fp) :]
    correlations = family.correlation_source(comm, dealer_seed, rank, n)
    pair_prgs = {j: Prg(s) for j, s in seeds.items()}
    comm.stats.reset()  # users see their program's traffic, not the setup's
    return PartyContext(rank, n, comm, correlations, pair_prgs, Prg(new_seed()), config, family)
