"""Run identity: the nodes agree on a fresh run id at setup; a frame of another run is refused (issue 11, item 5)."""

from __future__ import annotations

import pytest
import torch

import mpc
from mpc.config import MPCConfig
from mpc.errors import WireError
from parties import wire
from parties.memory import MemoryCommunicator, MemoryHub
from parties.simulator import run_threads


def _ids(ctx):
    x = mpc.share(torch.ones(2) if ctx.rank == 0 else None, owner=0)
    return ctx.comm.run_id, (x * x).reveal()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", ["additive-dealer", "plaintext"])
def test_every_node_agrees_on_a_fresh_run_id(protocol):
    first = run_threads(_ids, 3, MPCConfig(timeout=20, protocol=protocol))
    second = run_threads(_ids, 3, MPCConfig(timeout=20, protocol=protocol))
    ids = {r[0] for r in first}
    assert len(ids) == 1 and len(next(iter(ids))) == wire.RUN_ID_BYTES and next(iter(ids)) != bytes(8)
    assert ids != {r[0] for r in second}  # fresh every run
    assert all(r[1].tolist() == [1.0, 1.0] for r in first)


@pytest.mark.timeout(60)
def test_frames_carry_the_run_id(sim):
    received: dict = {}
    results = sim(_ids, 2, received=received)
    rid = results[0][0]
    headers = [wire.decode_header(h, 1 << 30) for _, h, _ in received[1]]
    assert any(h.run == rid for h in headers)
    assert all(h.run in (rid, bytes(8)) for h in headers)  # zeros only during setup
    assert any(h.run == bytes(8) and h.op.startswith("setup") for h in headers)


@pytest.mark.timeout(30)
def test_a_frame_of_another_run_is_refused():
    hub = MemoryHub(2, dealer=False)
    comm = MemoryCommunicator(hub, 0, 5.0, 1 << 20)
    comm.set_run_id(b"\x01" * 8)
    stale = wire.encode_header(wire.KIND_DATA, 1, 0, "x", torch.int64, (1,), 8, 0, bytes(8), b"\x02" * 8)
    hub.boxes[0].put((stale, bytes(8), 1))
    with pytest.raises(WireError, match="another run") as info:
        comm.exchange("x", {}, {1: mpc.context.Expect((1,))})
    assert info.value.peer == 1 and "left over from an earlier run" in str(info.value)
    # the same frame with this run's id is accepted
    good = wire.encode_header(wire.KIND_DATA, 1, 1, "y", torch.int64, (1,), 8, 0, bytes(8), b"\x01" * 8)
    hub.boxes[0].put((good, bytes(8), 1))
    comm._in_seq[1] = 1
    assert comm.exchange("y", {}, {1: mpc.context.Expect((1,))})[1].shape == (1,)
