"""The dealer service: hands out seeds, then answers the last party's requests.

The dealer is idle between two requests of party n-1; it gives up after
``idle_limit(config)`` seconds (``IDLE_FACTOR`` times the cluster's receive
timeout, 600 s with the default 60 s, unless ``--idle-timeout`` says otherwise)
with a ``PeerTimeout`` that names the party it waited for and how long: a dealer
whose parties died without a word never lingers.

The dealer never receives a share of any input or intermediate value: the only
messages it receives are the public requests (correlation kind and shapes) of
party n-1, byes and abort notices.  It is trusted not to collude with any
party (see the README's security model).
"""

from __future__ import annotations

import logging

import torch

from mpc.config import MPCConfig
from mpc.context import Expect
from mpc.errors import ConfigError, PeerTimeout, ProtocolError
from mpc.prg import new_seed
from protocols.correlated import CORRELATIONS, MAX_PARAMS, DealerGenerator, Speculator, _numel

from .comm_base import BufferedCommunicator
from .party import NONCE_BYTES, bytes_tensor, run_id

__all__ = ["serve_dealer", "idle_limit", "IDLE_FACTOR"]

log = logging.getLogger("mpc.dealer")

# The dealer's default idle limit, in units of the cluster's receive timeout.
IDLE_FACTOR = 10


def idle_limit(config: MPCConfig, idle_timeout: float | None = None) -> float:
    """Seconds the dealer waits for the next request: ``idle_timeout``, else ``IDLE_FACTOR`` x ``config.timeout``."""
    if idle_timeout is None:
        return IDLE_FACTOR * config.timeout
    if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, int | float) or not idle_timeout > 0:
        raise ConfigError(f"the dealer's idle timeout must be a positive number of seconds, got {idle_timeout!r}")
    return float(idle_timeout)


def _check_request(op: str, params: tuple[int, ...], max_bytes: int) -> str:
    if not op.startswith("corr:") or op[5:] not in CORRELATIONS:
        raise ProtocolError(f"party sent the dealer an unknown request {op!r}")
    kind = op[5:]
    if len(params) > MAX_PARAMS:
        raise ProtocolError(f"request {op!r} has too many parameters")
    corr = CORRELATIONS[kind]
    try:
        shapes = corr.random_shapes(params)
    except (ValueError, IndexError) as exc:
        raise ProtocolError(f"malformed request {op!r}: {exc}") from None
    if any(d < 0 for s in shapes for d in s):
        raise ProtocolError(f"request {op!r} has a negative dimension")
    total = sum(_numel(s) for s in shapes) + sum(_numel(s) for s in corr.derived_shapes(params))
    if 8 * total > max_bytes:
        raise ProtocolError(f"request {op!r} asks for {total} ring elements, over the message limit")
    return kind


def _make_ahead(gen: DealerGenerator, spec: Speculator):
    """Draw the next request's sub-seeds and, if the speculator has a guess, its material now."""
    seeds = gen.next_seeds()
    guess = spec.guess()
    if guess is None:
        return seeds, None, None
    return seeds, guess, gen.correction(*guess, seeds)


def serve_dealer(comm: BufferedCommunicator, config: MPCConfig, idle_timeout: float | None = None) -> int:
    """Run the dealer until every party said bye; returns the number of requests served."""
    wait = idle_limit(config, idle_timeout)
    n = comm.world_size
    fp = config.fingerprint()
    seeds = [new_seed() for _ in range(n)]
    nonce = new_seed()[:NONCE_BYTES]
    for i in range(n):
        comm.send(i, "setup:dealer", bytes_tensor(fp + nonce + seeds[i]))
    nonces = []
    for i in range(n):
        got = comm.recv(i, "setup:nonce", Expect((NONCE_BYTES,), torch.uint8))
        nonces.append(bytes(got.numpy().tobytes()))
    comm.set_run_id(run_id(fp, nonces, nonce))
    gen = DealerGenerator(seeds)
    del seeds
    last = n - 1
    served = 0
    spec = Speculator()
    # The next request's sub-seeds, drawn ahead; with a guess of the request and its material, made while
    # the parties computed (protocols.correlated: a wrong guess is dropped, the seeds serve the real one).
    ahead: tuple[list[bytes], tuple[str, tuple[int, ...]] | None, torch.Tensor | None] | None = None
    while True:
        try:
            msg = comm.recv_any(last, timeout=wait)
        except PeerTimeout as exc:
            if exc.peer != last:
                raise
            default = idle_timeout is None
            raise PeerTimeout(
                f"the dealer waited {wait:g}s for a request from party {last} (the party that asks for "
                f"correlations) and got neither a request nor its bye: party {last} is dead, stuck, or "
                f"computes locally for longer than the dealer's idle timeout ({wait:g}s"
                + (f" = {IDLE_FACTOR} x the cluster's timeout" if default else "")
                + "); raise it with `mpc dealer --idle-timeout SECONDS` or the cluster's [options] timeout",
                last,
            ) from None
        if msg is None:
            break
        op, params_t = msg
        params = tuple(int(p) for p in params_t.reshape(-1).tolist())
        kind = _check_request(op, params, comm.max_message_bytes)
        seeds, guessed, made = ahead if ahead is not None else (gen.next_seeds(), None, None)
        ready = made is not None and guessed == (kind, params)
        comm.send(last, op, made if ready else gen.correction(kind, params, seeds))
        spec.observe(kind, params, guessed)
        served += 1
        ahead = _make_ahead(gen, spec)
    comm.close()
    log.debug("dealer served %d requests (%d guessed ahead, %d guesses missed)", served, spec.hits, spec.misses)
    return served
