"""When each party sends and receives during one run of a workload: what the rounds wait for.

    python scripts/timeline.py sigmoid                # 2 parties; any workload of bench_workloads.py
    python scripts/timeline.py relu --repeat 8 --parties 3

Each party runs the workload of ``scripts/bench.py --vs crypten`` (same
inputs, one torch thread, sealed links) once to warm up, then ``--repeat``
times, each after a synchronising exchange; it prints every run's seconds and,
for the last run, each party's sends and receives in milliseconds from the
earliest party's start (the clocks of one machine): the operation, the peer
(the dealer is node n) and the bytes.  A receive's time is when the whole
message was in (its chunks reassembled and opened), not when the party asked
for it.  The last party's ``corr:`` lines show how long the dealer took to
answer a request (``protocols.correlated``): from the first runs on, the
dealer makes the material of a repeated request ahead, once the request
stream repeats (``parties.dealer``).  Never run two benchmarks at once.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch

import mpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import _fresh_sync, _workload  # noqa: E402 - the directory first, as under `python scripts/...`
from bench_workloads import WORKLOADS  # noqa: E402


def _party(ctx, name: str, repeat: int) -> tuple[list[tuple[float, str, int, str, int]], list[float]]:
    torch.set_num_threads(1)
    step, reveal, values = _workload(ctx, name)
    reveal(step())
    comm = ctx.comm
    events: list[tuple[float, str, int, str, int]] = []
    send, accept = comm._send, comm._accept

    def logged_send(peer, kind, op, tensor):
        events.append((time.time(), "send", peer, op, 0 if tensor is None else tensor.numel() * tensor.element_size()))
        return send(peer, kind, op, tensor)

    def logged_accept(peer, op, expect, h, payload):
        events.append((time.time(), "recv", peer, op, h.nbytes))
        return accept(peer, op, expect, h, payload)

    comm._send, comm._accept = logged_send, logged_accept
    sync = _fresh_sync(ctx, values)
    runs = []
    try:
        for _ in range(repeat):
            sync()
            events.clear()
            start = time.time()
            events.append((start, "start", -1, "", 0))
            step()
            events.append((time.time(), "end", -1, "", 0))
            runs.append(time.time() - start)
    finally:
        comm._send, comm._accept = send, accept
    return events, runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workload", choices=sorted(WORKLOADS))
    ap.add_argument("--parties", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    res = mpc.run(functools.partial(_party, name=args.workload, repeat=args.repeat), parties=args.parties, timeout=300)
    t0 = min(events[0][0] for events, _ in res)
    print(f"{args.workload}, {args.parties} parties: runs (party 0) " + ", ".join(f"{s:.3f}" for s in res[0][1]) + " s")
    print("the last run, ms from the first start:")
    for rank, (events, _) in enumerate(res):
        print(f"party {rank}")
        for t, kind, peer, op, nbytes in events:
            who = "" if peer < 0 else ("dealer" if peer == args.parties else f"party {peer}")
            print(f"  {1000 * (t - t0):8.1f}  {kind:5}  {who:8}  {op:28}  {nbytes:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
