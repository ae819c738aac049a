"""Nonlinear benchmarks in real party processes, and the table of rounds and bytes of every function.

    python scripts/bench_nonlinear.py                   # benchmark rows with 2 and 3 parties, then the table
    python scripts/bench_nonlinear.py --table           # only the table (markdown) of rounds and bytes
    python scripts/bench_nonlinear.py --json rows.json  # also write the rows

``run_bench(parties)`` measures, with ``mpc.run`` (one process per party and
one for the dealer, ZeroMQ with sealed links on localhost): ReLU and a comparison of
10^6 elements, sigmoid, exp and reciprocal of 10^5, softmax over (1000, 10) and
max_pool2d over (32, 6, 24, 24).  Every figure comes from the parties' own
counters: rounds among parties, payload bytes one party sent to the others
(the largest over parties), and bytes the last party received from the
dealer.  Seconds are the median over ``repeat`` runs after a warm-up, timed in
party 0 between two synchronising exchanges.  Never run two benchmarks at once.

``op_table()`` runs every comparison-based and nonlinear function once on
4096 elements (a multiple of 64, so the element-sliced rounds carry no
padding) in real processes, and returns the markdown table of rounds and
bytes per element that the docs quote.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import mpc
from protocols import binary, conversions
from protocols.sharing import open_all

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_workloads import data as _data  # noqa: E402 - the directory first, as under `python scripts/...`
from bench_workloads import inputs, timed  # noqa: E402

__all__ = ["run_bench", "op_table", "BENCHES"]


def _sync(ctx) -> None:
    open_all(ctx, [torch.zeros(1, dtype=torch.int64)], "bench:sync")


def _secret(ctx, value: torch.Tensor, owner: int = 0):
    return mpc.share(value if ctx.rank == owner else None, owner=owner)


# name -> (elements, shape, make inputs (ctx) -> args, step (args) -> result)
BENCHES: dict[str, tuple[int, tuple[int, ...], Callable, Callable]] = {
    # relu, sigmoid, exp and reciprocal: the inputs of `bench.py --vs` (scripts/bench_workloads.py)
    "relu": (10**6, (10**6,), lambda c: (_secret(c, inputs("relu")["x"][0]),), lambda x: x.relu()),
    "compare": (
        10**6,
        (10**6,),
        lambda c: (_secret(c, _data((10**6,), 1, -10, 10)), _secret(c, _data((10**6,), 2, -10, 10), 1)),
        lambda x, y: x < y,
    ),
    "sigmoid": (10**5, (10**5,), lambda c: (_secret(c, inputs("sigmoid")["x"][0]),), lambda x: x.sigmoid()),
    "exp": (10**5, (10**5,), lambda c: (_secret(c, inputs("exp")["x"][0]),), lambda x: x.exp()),
    "reciprocal": (10**5, (10**5,), lambda c: (_secret(c, inputs("reciprocal")["x"][0]),), lambda x: x.reciprocal()),
    "softmax": (10**4, (1000, 10), lambda c: (_secret(c, _data((1000, 10), 6, -30, 30)),), lambda x: x.softmax(1)),
    "max_pool2d": (
        32 * 6 * 24 * 24,
        (32, 6, 24, 24),
        lambda c: (_secret(c, _data((32, 6, 24, 24), 7, -5, 5)),),
        lambda x: mpc.max_pool2d(x, 2),
    ),
}


def _bench_party(ctx, name: str, repeat: int) -> dict:
    torch.set_num_threads(1)  # one thread per party process, as scripts/bench.py
    _, _, make, step = BENCHES[name]
    args = make(ctx)
    step(*args)  # warm-up
    return timed(lambda: step(*args), repeat, lambda: _sync(ctx), ctx.stats.snapshot)


def run_bench(
    parties: int = 2,
    repeat: int = 3,
    insecure: bool = False,
    names: list[str] | None = None,
    timeout: float = 120.0,
) -> list[dict]:
    """One row per benchmark (see the module docstring); ``timeout`` bounds every receive."""
    rows = []
    for name in names or list(BENCHES):
        elements, shape, _, _ = BENCHES[name]
        res = mpc.run(
            functools.partial(_bench_party, name=name, repeat=repeat),
            parties=parties,
            insecure=insecure,
            timeout=timeout,
        )
        p0, last = res[0], res[-1]
        sent = max(r["bytes_sent"] for r in res)
        rows.append(
            {
                "op": name,
                "size": elements,
                "shape": list(shape),
                "parties": parties,
                "curve": not insecure,
                "seconds": p0["seconds"],
                "rounds": p0["rounds"],
                "bytes_per_party": sent,
                "bytes_per_element": sent / elements,
                "dealer_bytes": last["dealer_bytes_recv"],
            }
        )
    return rows


# ----- the table of rounds and bytes per element ----------------------------------------------------

M = 4096  # elements per function in the table
C = 16  # classes for the functions along a dimension


def _ops(ctx) -> list[tuple[str, Callable[[], Any]]]:
    g = functools.partial(_data, (M,))
    x = _secret(ctx, g(1, -10, 10))
    y = _secret(ctx, g(2, -10, 10), 1)
    cond = _secret(ctx, g(3, -1, 1) > 0)
    pos = _secret(ctx, g(4, 1e-3, 1e4, log=True))
    rec = _secret(ctx, g(5, 1e-2, 1e4, log=True, signed=True))
    small = _secret(ctx, g(6, -3, 3))
    rows = _secret(ctx, _data((M // C, C), 7, -30, 30))
    img = _secret(ctx, _data((4, 4, 16, 16), 8, -5, 5))  # M elements too
    xs = x.share.data  # the additive family's ring kernels, measured directly
    return [
        ("x < y (secret, secret)", lambda: x < y),
        ("x < c (public c)", lambda: x < 1.5),
        ("x == y", lambda: x == y),
        ("relu", lambda: x.relu()),
        ("sign", lambda: x.sign()),
        ("abs", lambda: x.abs()),
        ("clamp (public bounds)", lambda: x.clamp(-1, 1)),
        ("clamp (secret bounds)", lambda: x.clamp(y - 1, y + 1)),
        ("maximum (elementwise)", lambda: mpc.maximum(x, y)),
        ("where (secret condition)", lambda: mpc.where(cond, x, y)),
        (f"max along dim (n = {C})", lambda: rows.max(1)),
        (f"argmax index (n = {C})", lambda: rows.argmax(1)),
        (f"argmax one-hot (n = {C})", lambda: rows.argmax(1, one_hot=True)),
        ("max_pool2d 2x2", lambda: mpc.max_pool2d(img, 2)),
        ("max_pool2d 3x3 stride 1 pad 1", lambda: mpc.max_pool2d(img, 3, 1, 1)),
        ("exp", lambda: x.exp()),
        ("sigmoid", lambda: x.sigmoid()),
        ("tanh", lambda: x.tanh()),
        ("log", lambda: pos.log()),
        ("reciprocal", lambda: rec.reciprocal()),
        ("x / y (secret y)", lambda: x / rec),
        ("sqrt", lambda: pos.sqrt()),
        ("rsqrt", lambda: pos.rsqrt()),
        ("pow 3", lambda: small**3),
        (f"softmax (n = {C})", lambda: rows.softmax(1)),
        (f"log_softmax (n = {C})", lambda: rows.log_softmax(1)),
        (f"norm along dim (n = {C})", lambda: rows.norm(dim=1)),
        ("a2b (arithmetic to binary)", lambda: conversions.a2b(ctx, xs)),
        ("b2a (one bit)", lambda: conversions.b2a(ctx, xs)),
        ("bit extraction", lambda: conversions.bit_extract(ctx, xs, 20)),
        ("AND of 64-bit words", lambda: binary.and_(ctx, xs, xs)),
    ]


def _table_party(ctx) -> list[dict]:
    out = []
    for name, step in _ops(ctx):
        _sync(ctx)
        before = ctx.stats.snapshot()
        step()
        after = ctx.stats.snapshot()
        out.append(
            {"function": name, **{k: after[k] - before[k] for k in ("rounds", "bytes_sent", "dealer_bytes_recv")}}
        )
    return out


def op_table(parties: tuple[int, ...] = (2, 3), insecure: bool = True, timeout: float = 120.0) -> str:
    """Markdown: rounds, bytes per element per party (for each party count) and dealer bytes per element."""
    per_n = {}
    for n in parties:
        res = mpc.run(_table_party, parties=n, insecure=insecure, timeout=timeout)
        per_n[n] = [
            {**row, "bytes_sent": max(r[i]["bytes_sent"] for r in res), "dealer": res[-1][i]["dealer_bytes_recv"]}
            for i, row in enumerate(res[0])
        ]
    head = "| function | rounds | " + " | ".join(f"bytes/element/party, {n} parties" for n in parties)
    head += f" | dealer bytes/element ({parties[0]} parties) |"
    lines = [head, "|" + "---|" * (3 + len(parties))]
    for i, row in enumerate(per_n[parties[0]]):
        cols = [f"{per_n[n][i]['bytes_sent'] / M:.1f}" for n in parties]
        lines.append(f"| {row['function']} | {row['rounds']} | " + " | ".join(cols) + f" | {row['dealer'] / M:.0f} |")
    lines.append("")
    lines.append(f"({M} elements per function; functions along a dimension reduce rows of {C}.)")
    return "\n".join(lines)


README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- op-table:begin (scripts/bench_nonlinear.py --table --readme) -->", "<!-- op-table:end -->"


def write_readme_table(table: str, path: Path = README) -> None:
    """Replace the text between the README's op-table markers with ``table``."""
    text = path.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{path} has no op-table markers: {BEGIN} ... {END}")
    path.write_text(text[: start + len(BEGIN)] + "\n" + table + "\n" + text[end:])
    print(f"wrote the table into {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parties", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--table", action="store_true", help="only print the table of rounds and bytes")
    ap.add_argument("--only", nargs="+", choices=list(BENCHES), help="run only these benchmarks")
    ap.add_argument("--insecure", action="store_true", help="benchmark without link encryption")
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--readme", action="store_true", help="also write the table into README.md between its markers")
    args = ap.parse_args(argv)
    rows: list[dict] = []
    if not args.table:
        for n in args.parties:
            rows += run_bench(n, args.repeat, args.insecure, args.only)
        head = (
            f"{'op':<12}{'size':>9}{'n':>3}{'seconds':>10}{'rounds':>8}{'MB/party':>10}{'B/elem':>9}{'dealer MB':>11}"
        )
        print(head)
        print("-" * len(head))
        for r in rows:
            print(
                f"{r['op']:<12}{r['size']:>9}{r['parties']:>3}{r['seconds']:>10.3f}{r['rounds']:>8}"
                f"{r['bytes_per_party'] / 1e6:>10.2f}{r['bytes_per_element']:>9.2f}{r['dealer_bytes'] / 1e6:>11.2f}"
            )
        print()
    table = op_table(tuple(args.parties))
    print(table)
    if args.readme:
        write_readme_table(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
