"""One link's throughput between two processes on 127.0.0.1: sealed links, --insecure, CURVE, plain ZeroMQ.

    python scripts/bench_links.py                       # 8, 64, 512 MB; every mode; 3 runs each
    python scripts/bench_links.py --mb 64 --modes sealed,insecure --repeat 5

Modes:

* ``sealed``: two ``ZmqCommunicator`` nodes with keys (the default of a real
  run: AES-256-GCM per frame, ``parties.seal``); party 0 ``send``s one uint8
  tensor of the size, party 1 ``recv``s it (chunks, reliable links, checks:
  the whole stack);
* ``insecure``: the same nodes with ``--insecure`` (no keys);
* ``curve``: for reference, plain pyzmq PUSH -> PULL with ZeroMQ's CURVE
  (what every link used before sealed links), the payload in frames of the
  same chunk size, sent with ``copy=False`` and copied into one buffer;
* ``zmq``: the same without CURVE (what TCP and ZeroMQ cost here).

Seconds are the receiver's, from the moment it tells the sender to go until
the last byte is in its buffer; GB/s is the size over the median of
``--repeat`` runs (after one warm-up).  Never run two benchmarks at once.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import torch
import zmq

from mpc.config import MPCConfig
from mpc.context import Expect
from parties import seal
from parties.comm_base import DEFAULT_CHUNK_BYTES
from parties.ports import Listeners
from parties.zmq_comm import NodeKeys, ZmqCommunicator

MODES = ("sealed", "insecure", "curve", "zmq")
ONE = torch.ones(1, dtype=torch.int64)


def _node(rank: int, mode: str, sock, addresses, keys, sizes, repeat, out) -> None:
    """One of the two ``ZmqCommunicator`` nodes (``sealed``, ``insecure``); party 1 reports its seconds."""
    node_keys = NodeKeys(*keys[rank], tuple(k[0] for k in keys)) if mode == "sealed" else None
    comm = ZmqCommunicator(
        rank, 2, addresses, MPCConfig(timeout=120.0), keys=node_keys, dealer=False, listen_fd=sock.detach()
    )
    times: dict[int, list[float]] = {}
    with comm:
        for size in sizes:
            data = torch.full((size,), rank, dtype=torch.uint8) if rank == 0 else None
            for i in range(repeat + 1):
                if rank == 0:
                    comm.recv(1, "go", Expect((1,)))
                    comm.send(1, "data", data)
                    continue
                start = time.perf_counter()
                comm.send(0, "go", ONE)
                got = comm.recv(0, "data", Expect((size,), torch.uint8))
                if i:
                    times.setdefault(size, []).append(time.perf_counter() - start)
                del got
        if rank == 1:
            out.put(times)


def _raw(rank: int, mode: str, addresses, keys, sizes, repeat, out) -> None:
    """Plain pyzmq (``curve``, ``zmq``): data 0 -> 1 at ``addresses[1]``, go 1 -> 0 at ``addresses[0]``."""
    zctx = zmq.Context()
    data_sock = zctx.socket(zmq.PULL if rank == 1 else zmq.PUSH)
    go_sock = zctx.socket(zmq.PULL if rank == 0 else zmq.PUSH)
    for s in (data_sock, go_sock):
        s.setsockopt(zmq.LINGER, 0)
    if mode == "curve":  # node 1 serves the data link, node 0 the go link
        for s, is_server in ((data_sock, rank == 1), (go_sock, rank == 0)):
            s.curve_publickey, s.curve_secretkey = keys[rank]
            if is_server:
                s.curve_server = True
            else:
                s.curve_serverkey = keys[1 - rank][0]
    if rank == 1:
        data_sock.bind(addresses[1])
        go_sock.connect(addresses[0])
    else:
        go_sock.bind(addresses[0])
        data_sock.connect(addresses[1])
    chunk = DEFAULT_CHUNK_BYTES
    times: dict[int, list[float]] = {}
    for size in sizes:
        data = torch.zeros(size, dtype=torch.uint8).numpy()
        for i in range(repeat + 1):
            if rank == 0:
                go_sock.recv()
                for off in range(0, size, chunk):
                    data_sock.send(memoryview(data[off : off + chunk]), copy=False)
                continue
            start = time.perf_counter()
            go_sock.send(b"go")
            for off in range(0, size, chunk):
                frame = data_sock.recv(copy=False)
                data[off : off + len(frame)] = memoryview(frame.buffer)
            if i:
                times.setdefault(size, []).append(time.perf_counter() - start)
    if rank == 1:
        go_sock.send(b"done")
        out.put(times)
    else:
        go_sock.recv()  # the receiver has every frame: closing now loses nothing
    data_sock.close(0)
    go_sock.close(0)
    zctx.term()


def measure(mode: str, sizes: list[int], repeat: int) -> dict[int, float]:
    """Median seconds per size for ``mode``, in two fresh processes."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    keys = [seal.keypair() for _ in range(2)]
    listeners = Listeners(2)
    try:
        if mode in ("sealed", "insecure"):
            procs = [
                ctx.Process(
                    target=_node,
                    args=(r, mode, listeners.socket(r), listeners.addresses, keys, sizes, repeat, out),
                )
                for r in range(2)
            ]
        else:
            addresses = listeners.addresses
            listeners.close()  # plain pyzmq binds these ports itself (a benchmark, not a run: no one else races)
            procs = [ctx.Process(target=_raw, args=(r, mode, addresses, keys, sizes, repeat, out)) for r in range(2)]
        for p in procs:
            p.start()
        listeners.close()
        times = out.get(timeout=600)
        for p in procs:
            p.join(60)
    finally:
        listeners.close()
    return {size: statistics.median(ts) for size, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, nargs="+", default=[8, 64, 512], help="sizes in MB (10^6 bytes)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"a comma-separated subset of {','.join(MODES)}")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        ap.error(f"unknown modes {unknown}: choose from {', '.join(MODES)}")
    sizes = [mb * 10**6 for mb in args.mb]
    print(f"{'mode':<10}" + "".join(f"{f'{mb} MB':>16}" for mb in args.mb))
    for mode in modes:
        secs = measure(mode, sizes, args.repeat)
        cells = "".join(f"{f'{size / secs[size] / 1e9:.2f} GB/s':>16}" for size in sizes)
        print(f"{mode:<10}{cells}", flush=True)


if __name__ == "__main__":
    main()
