"""The dealer service: hands out seeds, then answers the last party's requests.

The dealer never receives a share of any input or intermediate value: the only
messages it receives are the public requests (correlation kind and shapes) of
party n-1, byes and abort notices.  It is trusted not to collude with any
party (see the README's security model).
"""

from __future__ import annotations

import logging

from mpc.config import MPCConfig
from mpc.errors import ProtocolError
from mpc.prg import new_seed
from protocols.correlated import CORRELATIONS, MAX_PARAMS, DealerGenerator, _numel

from .comm_base import BufferedCommunicator
from .party import bytes_tensor

__all__ = ["serve_dealer"]

log = logging.getLogger("mpc.dealer")


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


def serve_dealer(comm: BufferedCommunicator, config: MPCConfig, idle_timeout: float | None = None) -> int:
    """Run the dealer until every party said bye; returns the number of requests served."""
    n = comm.world_size
    fp = config.fingerprint()
    seeds = [new_seed() for _ in range(n)]
    for i in range(n):
        comm.send(i, "setup:dealer", bytes_tensor(fp + seeds[i]))
    gen = DealerGenerator(seeds)
    del seeds
    last = n - 1
    served = 0
    wait = idle_timeout if idle_timeout is not None else 10.0 * 365 * 86400
    while True:
        msg = comm.recv_any(last, timeout=wait)
        if msg is None:
            break
        op, params_t = msg
        params = tuple(int(p) for p in params_t.reshape(-1).tolist())
        kind = _check_request(op, params, comm.max_message_bytes)
        comm.send(last, op, gen.correction(kind, params))
        served += 1
    comm.close()
    log.debug("dealer served %d requests", served)
    return served
