"""The dealer service: hands out seeds, then answers the last party's requests.

The dealer is idle between two requests of party n-1; it gives up after
``idle_limit(config)`` seconds (``IDLE_FACTOR`` times the cluster's receive
timeout, 600 s with the default 60 s, unless ``--idle-timeout`` says otherwise)
with a ``PeerTimeout`` that names the party it waited for and how long: a dealer
whose parties died without a word never lingers.

Between two requests the dealer works ahead (``Ahead``): once the request
stream repeats (``protocols.correlated.Speculator`` finds its period: a
training loop, batched inference, the blocks of a large product), it makes the
material of the next requests, up to one whole period (the next iteration)
and ``AHEAD_BYTES``, one request at a time and only while no request waits, so
a request is answered from material already made.  Where the last party asks
for it (a request whose op ends in ``PUSH_SUFFIX``), the dealer pushes the
material of its guess of the next request as soon as it has answered this one
(``protocols.correlated``: both sides guess alike; a right guess needs no
answer, a wrong one is answered as usual).

The dealer never receives a share of any input or intermediate value: the only
messages it receives are the public requests (correlation kind and shapes) of
party n-1, byes and abort notices.  It is trusted not to collude with any
party (see the README's security model).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import torch

from mpc.config import MPCConfig
from mpc.context import Expect
from mpc.errors import ConfigError, PeerTimeout, ProtocolError
from mpc.prg import new_seed
from protocols.correlated import (
    CORRELATIONS,
    MAX_PARAMS,
    PUSH_BODY,
    PUSH_HEAD,
    PUSH_SUFFIX,
    DealerGenerator,
    Speculator,
    _numel,
    correction_bytes,
    guess_digest,
)

from .comm_base import BufferedCommunicator
from .party import NONCE_BYTES, bytes_tensor, run_id

__all__ = ["serve_dealer", "idle_limit", "IDLE_FACTOR", "Ahead", "AHEAD_BYTES"]

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


def _check_request(op: str, params: tuple[int, ...], max_bytes: int) -> tuple[str, bool]:
    """The request's kind and whether the party asks for the next one's material pushed (``PUSH_SUFFIX``)."""
    push = op.endswith(PUSH_SUFFIX)
    kind = op[5 : len(op) - len(PUSH_SUFFIX)] if push else op[5:]
    if not op.startswith("corr:") or kind not in CORRELATIONS:
        raise ProtocolError(f"party sent the dealer an unknown request {op!r}")
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
    return kind, push


# The most correction bytes the dealer makes ahead of the requests and holds (the whole next iteration of a
# loop whose material fits; a bare product's blocks repeat with period 1 and are made one ahead).
AHEAD_BYTES = 64 << 20


class Ahead:
    """The material made for the next requests, in request order: ``[seeds, guess, made, pushed]`` per request.

    Every request's sub-seeds are drawn in order whatever it turns out to be
    (``DealerGenerator.next_seeds``), so material made from a guess is right
    exactly when the guess is: the dealer compares the real request with the
    guess and makes it afresh from the same seeds when they differ.  ``pushed``:
    the material went to the party already (``push``), before its request.
    """

    def __init__(self, gen: DealerGenerator, spec: Speculator, budget: int = AHEAD_BYTES) -> None:
        self.gen, self.spec, self.budget = gen, spec, budget
        self.items: deque[list] = deque()
        self.held = 0  # bytes of material held
        self.made = 0  # requests held made ahead
        self.pushed = 0  # requests whose material was pushed and that have not come yet
        self.pushed_bytes = 0  # their material's bytes (they count against the budget until they come)
        self.most = 0  # the most requests ever made ahead at once, pushed or held (for tests and the debug log)

    def take(self) -> tuple[list[bytes], tuple[str, tuple[int, ...]] | None, torch.Tensor | None, bool]:
        """The next request's seeds, guess, material (the latter two None where nothing was made) and whether
        the material was pushed to the party already (then it is not held any more: None)."""
        if not self.items:
            return self.gen.next_seeds(), None, None, False
        seeds, guess, made, pushed = self.items.popleft()
        if pushed:
            self.pushed -= 1
            self.pushed_bytes = 0
        if made is not None:
            self.held -= made.numel()
            self.made -= 1
        return seeds, guess, made, pushed

    def push(self, guess: tuple[str, tuple[int, ...]] | None) -> torch.Tensor | None:
        """The material of the next request made from ``guess`` (made now unless made already), handed over
        for pushing and marked pushed; None where there is no guess or the dealer cannot make it."""
        if not self.items:
            self.items.append([self.gen.next_seeds(), None, None, False])
        item = self.items[0]
        if guess is None:
            return None
        made = item[2]
        if made is not None:  # made ahead: no longer held here
            self.held -= made.numel()
            self.made -= 1
            if item[1] != guess:
                made = None
        if made is None:
            try:
                made = self.gen.correction(*guess, item[0])
            except ProtocolError:  # a guess the dealer cannot serve (a reference it no longer holds)
                item[1] = item[2] = None
                return None
        item[1], item[2], item[3] = guess, None, True
        self.pushed += 1
        self.pushed_bytes += made.numel()
        self.most = max(self.most, self.made + self.pushed)
        return made

    def drop_guesses(self) -> None:
        """After a miss: what was made from the broken pattern goes (the seeds stay, in order)."""
        for item in self.items:
            if not item[3]:
                item[1] = item[2] = None
        self.held = self.made = 0

    def fill(self, busy: Callable[[], bool]) -> None:
        """Make the next requests' material, one at a time while ``busy()`` says no request waits: up to one
        period of the request stream ahead (the whole next iteration) and ``budget`` bytes."""
        period = self.spec.period
        for j in range(max(1, period)):
            if j == len(self.items):
                self.items.append([self.gen.next_seeds(), None, None, False])
            item = self.items[j]
            if item[2] is not None or item[3]:
                continue
            if busy():  # asked only before making something (over ZeroMQ it may wait a millisecond)
                return
            guess = self.spec.guess(j)
            if guess is None:
                return
            size = correction_bytes(CORRELATIONS[guess[0]], guess[1])
            ahead = self.held + self.pushed_bytes
            if ahead and ahead + size > self.budget:
                return
            try:
                made = self.gen.correction(*guess, item[0])
            except ProtocolError:  # a guess the dealer cannot serve (a reference it no longer holds): not made
                return
            item[1], item[2] = guess, made
            self.held += size
            self.made += 1
            self.most = max(self.most, self.made + self.pushed)


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
    # The next requests' sub-seeds, drawn ahead; with guesses of the requests, their material, made while the
    # parties computed (protocols.correlated: a wrong guess is dropped, the seeds serve the real request).
    ahead = Ahead(gen, spec)
    while True:
        ahead.fill(lambda: comm.has_message(last))
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
        kind, push_next = _check_request(op, params, comm.max_message_bytes)
        req = (kind, params)
        guess = spec.guess(0)  # the guess of this request (the last party's speculator makes the same one)
        seeds, guessed, made, pushed = ahead.take()
        gen.served(served, kind, params)
        if pushed and guessed == req:
            pass  # the pushed material is the answer
        else:
            ready = made is not None and guessed == req
            comm.send(last, f"corr:{kind}", made if ready else gen.correction(kind, params, seeds))
        spec.observe(kind, params, guess)
        if guess is not None and guess != req:
            ahead.drop_guesses()
        if push_next:  # the party asked for the next request's material as soon as this one is answered
            nxt = spec.guess(0)
            material = ahead.push(nxt)
            flag = b"\x00" if material is None else b"\x01"
            comm.send(last, PUSH_HEAD, bytes_tensor(guess_digest(nxt) + flag))
            if material is not None:
                comm.send(last, PUSH_BODY, material)
        served += 1
    comm.close()
    log.debug(
        "dealer served %d requests (%d guessed ahead, %d guesses missed, at most %d made ahead at once)",
        served, spec.hits, spec.misses, ahead.most,
    )  # fmt: skip
    return served
