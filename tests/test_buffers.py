"""Large buffers reused (``mpc.buffers``): never while anything can still see them.

Unit tier: the pool alone.  Thread tier: chunked messages through a communicator, and a sigmoid whose dealer
correction lands in a reused buffer, checked against float64.
"""

from __future__ import annotations

import gc

import pytest
import torch
from conftest import SECURE

import mpc
from mpc.buffers import BufferPool
from mpc.context import Expect
from mpc.prg import Prg
from parties.memory import MemoryCommunicator, MemoryHub

MB = 1 << 20


def _pool(**kw) -> BufferPool:
    return BufferPool(**({"keep": 2, "min_bytes": MB, "max_bytes": 8 * MB} | kw))


def test_a_buffer_comes_back_only_after_its_last_view_is_gone():
    pool = _pool()
    a = pool.take(2 * MB)
    a.fill_(7)
    ptr = a.data_ptr()
    part = a[16:64].view(torch.int64)  # a view, as a dealer's correction is unpacked
    arr = part.numpy()  # and numpy over that view
    del a, part
    b = pool.take(2 * MB)
    ptr_b = b.data_ptr()
    assert ptr_b != ptr and pool.reused == 0  # arr still sees the first buffer
    b.fill_(1)
    assert int(arr[0]) == int.from_bytes(bytes([7] * 8), "little")  # untouched by the second message
    del arr, b
    gc.collect()
    c = pool.take(2 * MB)
    assert c.data_ptr() in (ptr, ptr_b) and pool.reused == 1


def test_small_and_huge_messages_are_not_kept_and_the_pool_is_bounded():
    pool = _pool()
    assert pool.take(MB - 1).numel() == MB - 1 and pool.kept_bytes == 0
    assert pool.take(8 * MB + 1).numel() == 8 * MB + 1 and pool.kept_bytes == 0
    held = [pool.take(2 * MB), pool.take(3 * MB)]  # both kept, both in use
    extra = pool.take(4 * MB)  # in use everywhere: allocated, not kept
    assert pool.kept_bytes == 5 * MB and extra.numel() == 4 * MB
    del held[0]
    pool.take(4 * MB)  # an idle buffer of another size makes room
    assert pool.kept_bytes == 7 * MB and len(pool._slots) == 2
    del held
    big = pool.take(7 * MB)  # over 8 MB in all with any other: the idle ones go
    assert pool.kept_bytes == 7 * MB and len(pool._slots) == 1
    del big
    assert pool.take(7 * MB).numel() == 7 * MB and pool.reused == 1


@pytest.mark.timeout(30)
def test_chunked_messages_land_in_reused_buffers_and_a_kept_result_is_never_overwritten():
    hub = MemoryHub(2)
    cs = [MemoryCommunicator(hub, r, timeout=5.0, max_message_bytes=1 << 30, chunk_bytes=1 << 20) for r in (0, 1)]
    n = (9 * MB) // 8  # 9 MB: chunked, and over the pool's 8 MB floor
    kept = None
    for i in range(4):
        t = torch.full((n,), i, dtype=torch.int64)
        t[::1000] = -i
        cs[1].send(0, f"big{i}", t)
        got = cs[0].recv(1, f"big{i}", Expect((n,)))
        assert torch.equal(got, t)
        if i == 1:
            kept = got  # a result the program holds on to: its buffer must not serve the next message
        del got
    assert cs[0]._recv_buffers.reused >= 1
    want = torch.full((n,), 1, dtype=torch.int64)
    want[::1000] = -1
    assert torch.equal(kept, want)


def _sigmoids(ctx, v):
    x = mpc.share(v if ctx.rank == 0 else None, owner=0)
    outs = [x.sigmoid().reveal() for _ in range(3)]
    return outs, ctx.comm._recv_buffers.reused


@pytest.mark.timeout(120)
def test_a_dealer_correction_in_a_reused_buffer_gives_the_same_function(sim):
    v = torch.linspace(-12, 12, 40_000, dtype=torch.float64)  # a 17 MB correction for the last party
    res = sim(lambda ctx: _sigmoids(ctx, v), 2, protocol=SECURE)
    want = torch.sigmoid(v)
    for outs, _ in res:
        for got in outs:
            assert float((got - want).abs().max()) < 1e-3
    assert res[1][1] >= 2  # the last party took the 2nd and 3rd corrections in the 1st one's buffer


def test_a_pooled_keystream_is_the_same_stream_and_never_overwrites_a_draw_in_use():
    seed = bytes(range(32))
    pool = _pool()
    plain, pooled = Prg(seed), Prg(seed, pool)
    first = pooled.int64((MB // 4,))  # 2 MB: from the pool
    kept = first.clone()
    assert torch.equal(first, plain.int64((MB // 4,)))
    second = pooled.int64((MB // 4,))  # first is alive: a buffer of its own
    assert torch.equal(second, plain.int64((MB // 4,))) and torch.equal(first, kept)
    assert pool.reused == 0
    del first
    gc.collect()
    third = pooled.int64((MB // 4,))  # the first draw's buffer again, with the next stretch of the stream
    assert pool.reused == 1 and torch.equal(third, plain.int64((MB // 4,)))
    assert torch.equal(pooled.narrow((1000,), 3), plain.narrow((1000,), 3))
