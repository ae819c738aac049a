"""Where a workload's time goes, at a party and at the dealer: cProfile, summed into kinds of work.

    python scripts/profile_workload.py exp                 # 2 parties; any workload of bench_workloads.py
    python scripts/profile_workload.py mul --parties 3 --repeat 5 --top 12

Each party runs the workload of ``scripts/bench.py --vs crypten`` (same inputs,
same step, one torch thread, sealed links) once to warm up, then ``--repeat``
times under ``cProfile``.  Party 0 and the last party (the one the dealer
answers) print, per run: wall seconds, CPU seconds (``time.process_time``) and
the profile's own time summed into

* waiting: blocked in ZeroMQ's poll (for a peer or the dealer) or asleep;
* link cipher: AES-256-GCM sealing and opening of frames (``parties.seal``);
* randomness: AES-CTR keystream (``mpc.prg``: masks, shares, the dealer's seeds);
* torch: tensor kernels (local arithmetic, matrix products, gathers);
* numpy / copies: numpy conversions, casts and copies (wire buffers, packing);
* zmq: sends and receives;
* python: everything else (the interpreter's work, and kernels reached through operators: see below);

and, with ``--top``, the functions with the most own time.  The last party's
requests to the dealer are recorded and replayed afterwards, in this process,
through the dealer's own generator (``DealerGenerator``, as ``mpc dealer``
runs it), under the profiler: the dealer's work per run, without its sends.

cProfile sees the kernels that are called as methods or functions
(``t.gather(...)``, ``torch.cat``); those reached through an operator
(``a * b``, ``a @ b``, ``a += b``) count as their calling function's own time,
so under "python" (``--top`` names the lines: ``lookup.py(_select_rows)`` is
mostly its ``*`` and ``@``).  cProfile also adds its own cost to every Python
call; the ciphers' and the method kernels' figures are what they cost.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import os
import pstats
import sys
import time
from pathlib import Path

import torch

import mpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import _sync, _unopened, _workload  # noqa: E402 - the directory first, as under `python scripts/...`
from bench_workloads import WORKLOADS  # noqa: E402

from protocols.correlated import CORRELATIONS, DealerGenerator  # noqa: E402

KINDS = ["waiting", "link cipher", "randomness", "torch", "numpy / copies", "zmq", "python"]


def kind_of(key: tuple[str, int, str]) -> str:
    """The kind of work of one profiled function (``pstats`` key: file, line, name)."""
    path, _, name = key
    if (name == "poll" and "zmq" in path) or name in ("<built-in method time.sleep>", "<method 'get' of '_queue"):
        return "waiting"
    if "AESGCM" in name or "ChaCha20Poly1305" in name:
        return "link cipher"
    if "CipherContext" in name:
        return "randomness"
    if "torch" in name or "TensorBase" in name or "conv2d" in name:
        return "torch"
    if "numpy" in name or "ndarray" in name:
        return "numpy / copies"
    if "zmq" in path and "poll" not in name:
        return "zmq"
    return "python"


def summarize(stats: pstats.Stats, runs: int) -> dict[str, float]:
    """Own seconds per run by kind."""
    out = dict.fromkeys(KINDS, 0.0)
    for key, (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        out[kind_of(key)] += tt / runs
    return out


def top(stats: pstats.Stats, runs: int, k: int) -> list[tuple[float, str]]:
    rows = []
    for (path, line, name), (_cc, nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = name if path == "~" else f"{Path(path).name}:{line}({name})"
        rows.append((tt / runs, f"{where} x{nc // runs}"))
    return sorted(rows, reverse=True)[:k]


def _party(ctx, name: str, repeat: int, k: int) -> dict | None:
    torch.set_num_threads(1)
    step, _, values = _workload(ctx, name)
    step()  # warm-up
    last = ctx.rank == ctx.world_size - 1
    requests: list[tuple[str, tuple[int, ...], int]] = []
    if last:
        source = ctx.correlations
        ask = source.request

        def recorded(kind, params):
            requests.append((kind, tuple(params), source.served))
            return ask(kind, params)

        source.request = recorded  # this party's requests, for the dealer's replay
    prof = cProfile.Profile()
    wall = cpu = 0.0
    for _ in range(repeat):
        _unopened(values())  # every run opens its inputs, as the first would
        _sync(ctx)
        w0, c0 = time.monotonic(), time.process_time()
        prof.enable()
        step()
        prof.disable()
        wall += time.monotonic() - w0
        cpu += time.process_time() - c0
    if ctx.rank not in (0, ctx.world_size - 1):
        return None
    stats = pstats.Stats(prof)
    return {
        "rank": ctx.rank,
        "wall": wall / repeat,
        "cpu": cpu / repeat,
        "kinds": summarize(stats, repeat),
        "top": top(stats, repeat, k),
        "requests": requests[: len(requests) // repeat] if last else [],
    }


def _replayed(requests: list[tuple[str, tuple[int, ...], int]], gen: DealerGenerator):
    """One run's requests as the replaying generator numbers them: a request that reuses an earlier one's mask
    names it by its serial, which the party counted from its first request and the replay counts from here."""
    shift = gen.drawn - requests[0][2]
    for kind, params, _ in requests:
        refs = CORRELATIONS[kind].refs
        pos = refs(params) if refs is not None else []
        yield kind, tuple(v + shift if i in pos else v for i, v in enumerate(params))


def dealer_replay(requests: list[tuple[str, tuple[int, ...], int]], parties: int, repeat: int, k: int) -> dict:
    """The dealer's generation of one run's requests, profiled (``repeat`` times)."""
    torch.set_num_threads(1)
    gen = DealerGenerator([os.urandom(32) for _ in range(parties)])
    for req in _replayed(requests, gen):  # warm-up
        gen.correction(*req)
    prof = cProfile.Profile()
    w0 = time.monotonic()
    sent = 0
    prof.enable()
    for _ in range(repeat):
        for req in _replayed(requests, gen):
            sent += gen.correction(*req).numel()
    prof.disable()
    stats = pstats.Stats(prof)
    return {
        "wall": (time.monotonic() - w0) / repeat,
        "kinds": summarize(stats, repeat),
        "top": top(stats, repeat, k),
        "requests": len(requests),
        "bytes": sent // repeat,
    }


def report(title: str, row: dict, k: int) -> str:
    lines = [title]
    kinds = "  ".join(f"{name} {row['kinds'][name]:.4f}" for name in KINDS)
    lines.append(f"  seconds by kind (own time per run): {kinds}")
    for sec, where in row["top"][:k]:
        lines.append(f"    {sec:8.4f}  {where}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workload", choices=sorted(WORKLOADS))
    ap.add_argument("--parties", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--top", type=int, default=8, help="functions with the most own time to list (default 8)")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.parties < 2:
        ap.error("--repeat must be at least 1 and --parties at least 2")
    res = mpc.run(
        functools.partial(_party, name=args.workload, repeat=args.repeat, k=args.top),
        parties=args.parties,
        timeout=300,
    )
    rows = [r for r in res if r is not None]
    print(f"{WORKLOADS[args.workload].label}, {args.parties} parties, {args.repeat} profiled runs")
    for row in rows:
        head = f"party {row['rank']}: wall {row['wall']:.4f} s, cpu {row['cpu']:.4f} s per run"
        print(report(head, row, args.top))
    last = rows[-1]
    if last["requests"]:
        d = dealer_replay(last["requests"], args.parties, args.repeat, args.top)
        head = (
            f"dealer (replayed): {d['wall']:.4f} s per run for {d['requests']} requests, "
            f"{d['bytes'] / 1e6:.2f} MB of corrections"
        )
        print(report(head, d, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
