"""Party setup over any communicator: agree on options, exchange seeds, build the context.

Setup protocol (one round among parties, one message from the dealer):

1. Every party sends every other party the fingerprint of its options; for each
   pair ``i < j`` party ``i`` adds a fresh 32-byte seed from ``os.urandom``.
   That pairwise seed keys the AES-CTR stream used to share inputs without
   sending shares.  A party whose options differ is named and refused.
2. The dealer sends each party ``i`` its own 32-byte seed (and its fingerprint);
   party ``i`` expands its part of every correlation from it.
"""

from __future__ import annotations

import torch

from mpc.config import MPCConfig
from mpc.context import Communicator, Expect, PartyContext
from mpc.errors import ConfigError, ProtocolError
from mpc.prg import SEED_BYTES, Prg, new_seed
from protocols.correlated import DealerSource
from protocols.suites import make_suite

__all__ = ["setup_party", "bytes_tensor"]


def bytes_tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8)


def setup_party(comm: Communicator, config: MPCConfig) -> PartyContext:
    rank, n = comm.rank, comm.world_size
    suite = make_suite(config.protocol)
    if n < suite.min_parties:
        raise ConfigError(f"the {suite.name} suite needs at least {suite.min_parties} parties, got {n}")
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
                f"party {j} runs with different options (fixed-point bits, suite or message limit) "
                f"than party {rank}: start every party from the same cluster file and options"
            )
        if j < rank:
            seeds[j] = raw[len(fp) :]
    dealer_msg = comm.recv(comm.dealer_id, "setup:dealer", Expect((len(fp) + SEED_BYTES,), torch.uint8))
    raw = bytes(dealer_msg.numpy().tobytes())
    if raw[: len(fp)] != fp:
        raise ConfigError(f"the dealer runs with different options than party {rank}")
    correlations = DealerSource(comm, raw[len(fp) :], rank, n)
    pair_prgs = {j: Prg(s) for j, s in seeds.items()}
    comm.stats.reset()  # users see their program's traffic, not the setup's
    return PartyContext(rank, n, comm, correlations, pair_prgs, Prg(new_seed()), config, suite)
