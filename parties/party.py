"""Party setup over any communicator: agree on options, exchange seeds, build the context.

Setup protocol (one round among parties, one message from the dealer):

1. Every party sends every other party the fingerprint of its options and a
   fresh 16-byte nonce; for each pair ``i < j`` party ``i`` adds a fresh 32-byte
   seed from ``os.urandom``.
   That pairwise seed keys the AES-CTR stream used to share inputs without
   sending shares.  A party whose options differ is named and refused.
2. Only when the protocol family needs a dealer: the dealer sends each party
   ``i`` its own 32-byte seed (with its fingerprint and its nonce); the family's
   correlation source at party ``i`` expands its part of every correlation from
   it; the party sends the dealer its nonce.
3. Every node computes the run id, a hash of the options and of every node's
   nonce (``run_id``); from then on every frame carries it, and a frame of
   another run (a process left over from an earlier run with the same keys) is
   refused with an error that says so.

The family (``protocols.families.get_family(config.protocol)``) decides: it
checks the number of parties, says whether there is a dealer, and makes the
correlation source.  Under a family that is not secure (``plaintext``) every party logs
``PLAINTEXT_WARNING``.
"""

from __future__ import annotations

import hashlib
import logging

import torch

from mpc.config import MPCConfig
from mpc.context import Communicator, Expect, PartyContext
from mpc.errors import ConfigError, ProtocolError
from mpc.prg import SEED_BYTES, Prg, new_seed
from protocols.families import get_family

__all__ = ["setup_party", "bytes_tensor", "run_id", "NONCE_BYTES", "PLAINTEXT_WARNING"]

PLAINTEXT_WARNING = (
    "WARNING: protocol 'plaintext': this run is NOT secure: every value travels and is held in the clear "
    "at every party; use it for debugging only, never with real data"
)


def bytes_tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8)


NONCE_BYTES = 16


def run_id(fingerprint: bytes, party_nonces: list[bytes], dealer_nonce: bytes = b"") -> bytes:
    """The run's identity: a hash of every node's fresh randomness (and the options), 8 bytes."""
    h = hashlib.blake2b(fingerprint, digest_size=8, person=b"mpc-run-id")
    for nonce in [*party_nonces, dealer_nonce]:
        h.update(nonce)
    return h.digest()


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
    nonce = new_seed()[:NONCE_BYTES]
    nonces = {rank: nonce}
    mine = {j: new_seed() for j in peers if j > rank}
    sends = {j: bytes_tensor(fp + nonce + mine.get(j, b"")) for j in peers}
    got = comm.exchange("setup", sends, {j: Expect(None, torch.uint8) for j in peers})
    seeds: dict[int, bytes] = dict(mine)
    head = len(fp) + NONCE_BYTES
    for j in peers:
        raw = bytes(got[j].numpy().tobytes())
        want = head + (SEED_BYTES if j < rank else 0)
        if len(raw) != want:
            raise ProtocolError(f"party {j} sent a malformed setup message ({len(raw)} bytes, expected {want})")
        if raw[: len(fp)] != fp:
            raise ConfigError(
                f"party {j} runs with different options (fixed-point bits, protocol or message limit) "
                f"than party {rank}: start every party from the same cluster file and options"
            )
        nonces[j] = raw[len(fp) : head]
        if j < rank:
            seeds[j] = raw[head:]
    dealer_seed = None
    dealer_nonce = b""
    if family.needs_dealer:
        dealer_msg = comm.recv(comm.dealer_id, "setup:dealer", Expect((head + SEED_BYTES,), torch.uint8))
        raw = bytes(dealer_msg.numpy().tobytes())
        if raw[: len(fp)] != fp:
            raise ConfigError(f"the dealer runs with different options than party {rank}")
        dealer_nonce, dealer_seed = raw[len(fp) : head], raw[head:]
        comm.send(comm.dealer_id, "setup:nonce", bytes_tensor(nonce))
    set_run_id = getattr(comm, "set_run_id", None)
    if set_run_id is not None:
        set_run_id(run_id(fp, [nonces[i] for i in range(n)], dealer_nonce))
    correlations = family.correlation_source(comm, dealer_seed, rank, n)
    pair_prgs = {j: Prg(s) for j, s in seeds.items()}
    comm.stats.reset()  # users see their program's traffic, not the setup's
    return PartyContext(rank, n, comm, correlations, pair_prgs, Prg(new_seed()), config, family)
