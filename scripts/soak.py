"""Soak: many protocol rounds in real party processes; RSS, open file descriptors and sockets per thousand rounds.

    python scripts/soak.py                       # 10,000 rounds (mixed multiply, matmul, comparison), 2 parties
    python scripts/soak.py --rounds 2000 --parties 3

Each party counts its own rounds (``ctx.stats.rounds``) and, at every
thousand, reads its resident set size from ``/proc/self/status`` (libzmq's
buffers included: ``tracemalloc`` cannot see them), the number of open file
descriptors in ``/proc/self/fd`` and, of those, the sockets.  A process that
leaks grows in one of the three; after warm-up all three should stay flat.
Linux only (it reads ``/proc``).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch

import mpc


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _fds() -> tuple[int, int]:
    names = os.listdir("/proc/self/fd")
    sockets = 0
    for name in names:
        try:
            sockets += os.readlink(f"/proc/self/fd/{name}").startswith("socket:")
        except OSError:
            pass
    return len(names), sockets


def _party(ctx, rounds: int, every: int) -> list[tuple[int, float, int, int]]:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(3)  # public test data
    x = mpc.share(torch.rand(256, generator=g) if ctx.rank == 0 else None, owner=0)
    y = mpc.share(torch.rand(256, generator=g) if ctx.rank == 1 else None, owner=1)
    a = mpc.share(torch.rand(32, 32, generator=g) if ctx.rank == 0 else None, owner=0)
    b = mpc.share(torch.rand(32, 32, generator=g) if ctx.rank == 1 else None, owner=1)
    start = ctx.stats.rounds
    marks, next_mark, i = [], every, 0
    while ctx.stats.rounds - start < rounds:
        kind = i % 3
        if kind == 0:
            x = (x * y).clamp(-4, 4)  # multiply (2 rounds) and a comparison (4)
        elif kind == 1:
            a = (a @ b) * 0.03125  # matmul (2) and an exact public scalar (1)
        else:
            _ = (x < y).sum()  # comparison (4)
        i += 1
        done = ctx.stats.rounds - start
        if done >= next_mark:
            marks.append((done, _rss_mb(), *_fds()))
            next_mark += every
    return marks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10_000)
    ap.add_argument("--every", type=int, default=1_000)
    ap.add_argument("--parties", type=int, default=2)
    args = ap.parse_args(argv)
    if not os.path.isdir("/proc/self/fd"):
        print("soak.py reads /proc: Linux only", file=sys.stderr)
        return 2
    results = mpc.run(functools.partial(_party, rounds=args.rounds, every=args.every), parties=args.parties)
    print(f"{'party':>5} {'rounds':>8} {'RSS MB':>8} {'fds':>5} {'sockets':>8}")
    for rank, marks in enumerate(results):
        for done, rss, fds, socks in marks:
            print(f"{rank:>5} {done:>8} {rss:>8.1f} {fds:>5} {socks:>8}")
    for rank, marks in enumerate(results):
        if len(marks) >= 3:
            warm = marks[1]
            last = marks[-1]
            print(
                f"party {rank}: after warm-up ({warm[0]} rounds) RSS {warm[1]:.1f} -> {last[1]:.1f} MB, "
                f"fds {warm[2]} -> {last[2]}, sockets {warm[3]} -> {last[3]}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
