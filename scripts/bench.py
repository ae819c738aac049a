"""Benchmarks in real party processes over ZeroMQ on localhost: seconds, rounds, bytes.

    python scripts/bench.py                 # the foundation set: mul 1e6, matmul 512, with 2 and 3 parties
    python scripts/bench.py --curve         # + encryption on/off ratio (sealed links against --insecure) for the 512 matmul and an MLP forward pass
    python scripts/bench.py --nonlinear     # + ReLU, comparisons, sigmoid, exp, ... (scripts/bench_nonlinear.py)
    python scripts/bench.py --nn            # only the mpc.nn set: MLP and LeNet-5 inference, an MLP training step
    python scripts/bench.py --memory        # peak RSS of a 2-party multiply at 1e6, 1e7, 1e8 elements
    python scripts/bench.py --vs crypten    # only the peer comparison with CrypTen (--workloads mul,relu,...)
    python scripts/bench.py --latency 5     # the --vs workloads with 5 ms of latency each way, and without
    python scripts/bench.py --bandwidth 1gbit --vs crypten   # (root) any of the above on a 1 Gbit/s loopback
    python scripts/bench.py --json out.json

Every figure comes from the parties' own counters (``ctx.stats``): rounds are
rounds among parties; bytes are payload bytes one party sent to the others;
dealer bytes are what the last party received from the dealer.  Seconds are the
median over ``--repeat`` runs after one warm-up, timed inside party 0 between
two synchronising exchanges.  Never run two benchmarks at once on this machine.

The ``--nn`` set (issue 10) uses ``mpc.nn`` models that party 0 converts
from its torch model (``mpc.nn.from_torch``; torch's default init from a fixed
seed, ``bench_workloads.torch_model``), on inputs that party 1 shares:

* ``mlp-infer``: MLP 784-128-128-10 with ReLU, batch 128, forward under ``mpc.no_grad``;
* ``lenet-infer``: LeNet-5 on 1x28x28, batch 32: conv 6@5x5, ReLU, max pool 2, conv 16@5x5, ReLU, max pool 2,
  fc 120, ReLU, fc 84, ReLU, fc 10 (no padding, so the first fc takes 16*4*4 = 256), forward under ``no_grad``;
* ``mlp-train``: one step of that MLP on batch 128: forward, cross-entropy with party 1's one-hot labels (secret),
  ``backward()``, ``SGD(lr=0.01).step()``.

Nothing is revealed inside a timed step (logits, loss and weights stay secret).

``--vs crypten`` (issue 12) runs every workload of ``bench_workloads.py``
(multiply, matmul, ReLU, sigmoid, exp, reciprocal, MLP and LeNet-5 inference,
logistic regression, an MLP training step) here and in CrypTen
(``bench_crypten.py``: its TTP provider, a third process like our dealer, and
its default TFP for reference) on the same inputs with the same number of
parties, and prints one markdown table: seconds, bytes per party and from the
dealer, rounds, the largest error against float64, and CrypTen's time over
ours.  Both sides reveal their result once, after the warm-up and outside the
timed runs.  Without CrypTen it prints how to install it and runs ours alone.

``--latency MS`` (issue 12): every ``--vs`` workload of ours twice, without
and with ``MS`` milliseconds of latency each way (``MPCConfig.link_delay``:
every node, the dealer too, holds each frame it receives that long, in the
communicator, since this kernel has no ``netem``), with rounds, bytes and both
times, the time the delay added and the latency floor ``rounds x delay``: both
sides of a round send at once, so a round costs one delay; a reply to a
request (the dealer's) costs two.  ``--pairs N`` alternates N runs of each
setting and takes the medians.  With ``--vs crypten``, CrypTen-TTP's rounds
and time without delay, and the floor its rounds imply, for reference: its
links are torch.distributed's gloo sockets, which offer no hook to hold each
message on arrival, so no delay is injected there.

``--bandwidth RATE`` (issue 12; root, ``ip netns``, ``tc``): the benchmark the
other arguments ask for (``--vs crypten``, ``--latency MS``, ...) runs again in
a fresh network namespace whose loopback has an MTU of 1500 (as Ethernet; tbf
needs a burst above the MTU) and ``tc qdisc ... tbf rate RATE``, as a worker
process under ``ip netns exec``; the namespace is deleted afterwards, on
errors and on Ctrl-C too.  Without root or ``ip netns`` it says so and exits 2.

``--memory`` (issue 11): one 2-party elementwise multiply of N elements with
the dealer, for N in 1e6, 1e7, 1e8.  Each party measures its resident set
(``VmRSS``) once its inputs are shared and a 1,000-element multiply has run
(first-use costs are not the multiply's), and its peak (``VmHWM``, reset through
``/proc/self/clear_refs`` just before) during the multiply; the figure is
``(peak - before) / N`` bytes per element, beyond the inputs.  The dealer's
peak comes from the parent, which reads every child's ``VmHWM`` while the run
lasts (a peak cannot be missed by sampling); its figure is that peak minus its
peak on a 1,000-element multiply (the process itself: torch, libzmq), over N.
Products of more than ``protocols.ring_family.BLOCK_ELEMENTS`` elements run
block by block, so the working set is one block's and only the result grows.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

import mpc
import mpc.nn as mnn
from mpc.config import LINK_DELAY_MAX
from mpc.errors import FixedPointWarning
from protocols.sharing import open_all

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_workloads import (  # noqa: E402 - the directory first, as under `python scripts/...`
    ERROR_KEYS,
    TRAIN_LR,
    WORKLOADS,
    errors,
    flat,
    inputs,
    logreg_steps,
    looped,
    per_call,
    reference,
    timed,
    torch_model,
)


def _sync(ctx) -> None:
    open_all(ctx, [torch.zeros(1, dtype=torch.int64)], "bench:sync")


def _unopened(values) -> None:
    """Give each secret tensor a new share of the same data, so that no product finds the mask an earlier run
    opened for it (``protocols.beaver``: an opened operand is not opened again): every timed run pays for
    opening its inputs and weights, as a first run would."""
    for v in values:
        if isinstance(v, mpc.SecretTensor):
            v.share = v.share.reshape(tuple(v.shape))  # the same tensor in a new share object, without its memo


def _fresh_sync(ctx, values):
    """``_sync`` after ``_unopened(values())``: what runs before each timed run."""

    def sync():
        _unopened(values())
        _sync(ctx)

    return sync


def _secret(ctx, shape, owner=0, scale=1.0):
    # Benchmark inputs are public test data; torch's generator is fine here.
    g = torch.Generator().manual_seed(1234 + owner)
    value = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * scale
    return mpc.share(value if ctx.rank == owner else None, owner=owner)


def _mlp_inputs(ctx):
    x = _secret(ctx, (128, 784), owner=0)
    ws = [_secret(ctx, s, owner=1, scale=0.05) for s in [(784, 128), (128, 128), (128, 10)]]
    return x, ws


def _mlp(x, ws):
    h = x
    for i, w in enumerate(ws):
        h = h @ w
        if i < len(ws) - 1:
            h = h.relu()
    return h


NN_OPS = {op: WORKLOADS[op].size for op in ("mlp-infer", "lenet-infer", "mlp-train")}  # op: batch size


def _shared_inputs(ctx, name: str) -> dict:
    """A workload's inputs of ``bench_workloads.inputs``, each shared by its owner."""
    with warnings.catch_warnings():
        # A few test values near 0 (and, in models, weights of torch's default init) lie below 2^-17 and become 0
        # on the fixed-point grid; the FixedPointWarning that says so is about the data, not the benchmark.
        warnings.simplefilter("ignore", FixedPointWarning)
        return {k: mpc.share(t if ctx.rank == owner else None, owner=owner) for k, (t, owner) in inputs(name).items()}


def _nn_step(ctx, op: str, s: dict | None = None):
    """An ``--nn`` workload: party 0's model (``bench_workloads.torch_model``), party 1's inputs and labels.

    Returns the step to time (inference returns the logits, training the
    loss) and the secret model.
    """
    s = _shared_inputs(ctx, op) if s is None else s
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FixedPointWarning)  # as in _shared_inputs
        model = mnn.from_torch(torch_model(op) if ctx.rank == 0 else None, owner=0)
    x = s["x"]
    if op.endswith("-infer"):
        model.eval()

        def infer():
            with mpc.no_grad(ctx):
                return model(x)

        return infer, model
    loss_fn, opt = mnn.CrossEntropyLoss(), mpc.optim.SGD(model.parameters(), lr=TRAIN_LR)

    def train():
        opt.zero_grad()
        loss = loss_fn(model(x), s["y"])
        loss.backward()
        opt.step()
        return loss

    return train, model


def _party(ctx, op: str, size: int, repeat: int) -> dict:
    torch.set_num_threads(1)  # one thread per party process: two parties and the dealer share the cores
    if op in NN_OPS:
        s = _shared_inputs(ctx, op)
        step, model = _nn_step(ctx, op, s)
        values = lambda: [*s.values(), *model.parameters()]  # noqa: E731
    elif op == "mul":
        x, y = _secret(ctx, (size,), 0), _secret(ctx, (size,), 1)
        step, values = (lambda: x * y), (lambda: [x, y])
    elif op == "matmul":
        x, y = _secret(ctx, (size, size), 0), _secret(ctx, (size, size), 1)
        step, values = (lambda: x @ y), (lambda: [x, y])
    elif op == "mlp":
        x, ws = _mlp_inputs(ctx)
        step, values = (lambda: _mlp(x, ws)), (lambda: [x, *ws])
    else:
        raise ValueError(op)
    step()  # warm-up
    return timed(step, repeat, _fresh_sync(ctx, values), ctx.stats.snapshot)


# ----- the peer comparison (--vs crypten): this toolkit's side -------------------------------------------


def _workload(ctx, name: str):
    """A workload of ``bench_workloads``: the step to time, how to reveal its result (as ``reference``), and
    the secret tensors it starts from (inputs and weights: ``_unopened`` before each timed run)."""
    s = _shared_inputs(ctx, name)
    kind, x = WORKLOADS[name].kind, s["x"]
    values = lambda: list(s.values())  # noqa: E731
    if name == "mul":
        return lambda: s["x"] * s["y"], lambda r: {"out": r.reveal()}, values
    if name == "matmul":
        return lambda: s["x"] @ s["y"], lambda r: {"out": r.reveal()}, values
    if kind == "op":
        return lambda: getattr(s["x"], name)(), lambda r: {"out": r.reveal()}, values
    if name == "logreg":
        step = lambda: logreg_steps(s["x"], s["y"], s["w"], lambda z: z.sigmoid())  # noqa: E731
        return step, lambda r: {"weights": r.reveal()}, values
    del x
    step, model = _nn_step(ctx, name, s)
    values = lambda: [*s.values(), *model.parameters()]  # noqa: E731
    if kind == "infer":
        return step, lambda r: {"out": r.reveal()}, values
    return step, lambda r: {"weights": flat(p.reveal() for p in model.parameters()), "loss": r.reveal()}, values


def _vs_party(ctx, name: str, repeat: int, calls: int = 1) -> dict:
    torch.set_num_threads(1)
    step, reveal, values = _workload(ctx, name)
    got = reveal(step())  # the warm-up, revealed once outside the timed runs
    # Back to back, each call from unopened inputs as well (local: new share objects, no message).
    run = looped(step, calls, lambda: _unopened(values()))
    row = per_call(timed(run, repeat, _fresh_sync(ctx, values), ctx.stats.snapshot), calls)
    if ctx.rank == 0:
        row.update(errors(got, reference(name, inputs(name))))
    return row


def measure_vs(
    name: str, parties: int, repeat: int, insecure: bool = False, link_delay: float = 0.0, calls: int = 1
) -> dict:
    """One workload of ``bench_workloads`` in this toolkit, with the figures ``bench_crypten.measure`` gives.

    ``link_delay``: seconds of emulated latency each way, at every node (``MPCConfig.link_delay``).  ``calls``:
    the workload's calls back to back in each timed run (seconds, rounds and bytes per call).
    """
    res = mpc.run(functools.partial(_vs_party, name=name, repeat=repeat, calls=calls), parties=parties,
                  insecure=insecure, timeout=300, link_delay=link_delay)  # fmt: skip
    p0 = res[0]
    row = {
        "seconds": p0["seconds"],
        "all_seconds": p0["all_seconds"],
        "rounds": p0["rounds"],
        "bytes_per_party": max(r["bytes_sent"] for r in res),
        # the dealer's sends: the parties' receipts from it (seed-compressed: mostly the last party's)
        "dealer_bytes": sum(r["dealer_bytes_recv"] for r in res),
        "dealer_bytes_by_party": [r["dealer_bytes_recv"] for r in res],
        "retransmits": sum(r["retransmits"] for r in res),  # frames sent again (0 unless a link lost some)
    }
    row.update({k: v for k, v in p0.items() if k in ERROR_KEYS})
    return row


def _proc_status(pid: int | str, field: str) -> int:
    """A ``/proc/PID/status`` memory field in bytes (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _memory_party(ctx, size: int) -> dict:
    torch.set_num_threads(1)
    x, y = _secret(ctx, (size,), 0), _secret(ctx, (size,), 1)
    _ = x[:1000] * y[:1000]  # warm-up: first-use costs (code paths, buffers, keys) are not the multiply's
    del _
    _sync(ctx)
    rounds0 = ctx.stats.rounds
    before = _proc_status("self", "VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) restarts from the current RSS
    t0 = time.perf_counter()
    z = x * y
    seconds = time.perf_counter() - t0
    peak = _proc_status("self", "VmHWM")
    rounds = ctx.stats.rounds - rounds0
    del z
    return {"pid": os.getpid(), "before": before, "peak": peak, "seconds": seconds, "rounds": rounds}


class _ChildPeaks:
    """Reads the peak RSS (VmHWM) of every child of this process while a run lasts."""

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _children(self) -> list[int]:
        me, out = os.getpid(), []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                            out.append(int(d))
                except (OSError, IndexError, ValueError):
                    pass
        return out

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            for pid in self._children():
                hwm = _proc_status(pid, "VmHWM")
                if hwm:
                    self.peaks[pid] = max(self.peaks.get(pid, 0), hwm)

    def __enter__(self) -> _ChildPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure_memory(size: int, insecure: bool = False) -> dict:
    with _ChildPeaks() as watch:
        res = mpc.run(functools.partial(_memory_party, size=size), parties=2, insecure=insecure, timeout=600)
    party_pids = {r["pid"] for r in res}
    dealer = max((v for pid, v in watch.peaks.items() if pid not in party_pids), default=0)
    base = _dealer_baseline(insecure) if size > BASELINE_ELEMENTS else dealer
    return {
        "op": "mul-memory",
        "size": size,
        "seconds": max(r["seconds"] for r in res),
        "rounds": res[0]["rounds"],
        "party_before_mb": [r["before"] / 1e6 for r in res],
        "party_peak_mb": [r["peak"] / 1e6 for r in res],
        "party_bytes_per_element": [(r["peak"] - r["before"]) / size for r in res],
        "dealer_peak_mb": dealer / 1e6,
        "dealer_base_mb": base / 1e6,
        "dealer_bytes_per_element": (dealer - base) / size,
    }


BASELINE_ELEMENTS = 1000
_BASELINES: dict[bool, int] = {}


def _dealer_baseline(insecure: bool) -> int:
    """The dealer's peak on a 1,000-element multiply: its process (torch, libzmq) without the work."""
    if insecure not in _BASELINES:
        _BASELINES[insecure] = measure_memory(BASELINE_ELEMENTS, insecure)["dealer_peak_mb"] * 1e6
    return _BASELINES[insecure]


def memory_table(rows: list[dict]) -> str:
    head = (
        f"{'elements':>10}{'seconds':>9}{'rounds':>7}{'party0 MB':>20}{'party1 MB':>20}"
        f"{'B/elt p0':>9}{'B/elt p1':>9}{'dealer MB':>16}{'B/elt':>7}"
    )
    lines = [head, "-" * len(head), f"{'':>26}(before -> peak)"]
    for r in rows:
        (b0, b1), (p0, p1) = r["party_before_mb"], r["party_peak_mb"]
        e0, e1 = r["party_bytes_per_element"]
        dealer = f"{r['dealer_base_mb']:.0f} -> {r['dealer_peak_mb']:.0f}"
        lines.append(
            f"{r['size']:>10.0e}{r['seconds']:>9.2f}{r['rounds']:>7}{f'{b0:.0f} -> {p0:.0f}':>20}"
            f"{f'{b1:.0f} -> {p1:.0f}':>20}{e0:>9.1f}{e1:>9.1f}{dealer:>16}"
            f"{r['dealer_bytes_per_element']:>7.1f}"
        )
    return "\n".join(lines)


def measure(op: str, size: int, parties: int, repeat: int, insecure: bool = False) -> dict:
    res = mpc.run(functools.partial(_party, op=op, size=size, repeat=repeat), parties=parties, insecure=insecure)
    p0, last = res[0], res[-1]
    elements = size if op == "mul" else (2 * size * size if op == "matmul" else 0)
    row = {
        "op": op,
        "size": size,
        "parties": parties,
        "curve": not insecure,
        "seconds": p0["seconds"],
        "rounds": p0["rounds"],
        "bytes_per_party": max(r["bytes_sent"] for r in res),
        "dealer_bytes": last["dealer_bytes_recv"],
    }
    if op == "mul":
        # information-theoretic openings: two ring elements per multiplied element per peer
        row["ideal_open_bytes"] = 2 * 8 * size * (parties - 1)
    if elements and op == "matmul":
        row["ideal_open_bytes"] = 8 * elements * (parties - 1)
    return row


def table(rows: list[dict]) -> str:
    head = f"{'op':<12}{'size':>8}{'n':>3}{'sealed':>7}{'seconds':>10}{'rounds':>8}{'MB/party':>10}{'ideal MB':>10}{'dealer MB':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ideal = f"{r['ideal_open_bytes'] / 1e6:.2f}" if "ideal_open_bytes" in r else "-"
        lines.append(
            f"{r['op']:<12}{r['size']:>8}{r['parties']:>3}{str(r['curve']):>7}{r['seconds']:>10.4f}{r['rounds']:>8}"
            f"{r['bytes_per_party'] / 1e6:>10.2f}{ideal:>10}{r['dealer_bytes'] / 1e6:>11.2f}"
        )
    return "\n".join(lines)


def foundation(args: argparse.Namespace) -> tuple[list[dict], dict[str, float]]:
    """The foundation set (mul, matmul) and the extras its flags ask for: rows, encryption overhead per op."""
    rows: list[dict] = []
    overhead: dict[str, float] = {}
    for n in args.parties:
        rows.append(measure("mul", 10**6, n, args.repeat, args.insecure))
        rows.append(measure("matmul", 512, n, args.repeat, args.insecure))
    if args.curve:
        # Timings on a small machine drift between runs: alternate the two settings a few times and compare the
        # medians, so that one noisy run does not decide the ratio.
        for op, size in [("matmul", 512), ("mlp", 784)]:
            ons, offs = [], []
            for _ in range(args.curve_pairs):
                ons.append(measure(op, size, 2, args.repeat, insecure=False))
                offs.append(measure(op, size, 2, args.repeat, insecure=True))
            # rounds and bytes are the same in every run; the seconds are the median over the runs
            on = dict(ons[0], seconds=statistics.median(r["seconds"] for r in ons))
            off = dict(offs[0], seconds=statistics.median(r["seconds"] for r in offs))
            rows += [on, off]
            overhead[op] = on["seconds"] / off["seconds"] - 1
    if args.nonlinear:
        from bench_nonlinear import run_bench

        for n in args.parties:
            rows += run_bench(parties=n)
    return rows, overhead


def compare(names: list[str], parties: list[int], repeat: int, insecure: bool = False, tfp: bool = True,
            log=print, calls: int = 1) -> list[dict]:  # fmt: skip
    """``--vs crypten``: every workload in this toolkit and, where installed, in CrypTen (TTP, and TFP if ``tfp``).

    A CrypTen run that fails is kept as ``{"failed": message}`` so that the
    other rows still come; without CrypTen, ``log`` gets the install command
    and only this toolkit runs.
    """
    import bench_crypten

    peer = bench_crypten.available()
    if not peer:
        log(bench_crypten.INSTALL)
    rows = []
    for n in parties:
        for name in names:
            row = {"workload": name, "label": WORKLOADS[name].label, "parties": n, "curve": not insecure}
            t0 = time.monotonic()
            row["ours"] = measure_vs(name, n, repeat, insecure, calls=calls)
            walls = [f"ours {time.monotonic() - t0:.0f} s"]
            for provider in ("TTP", "TFP") if peer else ():
                if provider == "TFP" and not tfp:
                    continue
                t0 = time.monotonic()
                try:
                    row[f"crypten_{provider.lower()}"] = bench_crypten.measure(name, n, provider, repeat, calls=calls)
                except (RuntimeError, TimeoutError) as e:
                    row[f"crypten_{provider.lower()}"] = {"failed": str(e)}
                walls.append(f"CrypTen-{provider} {time.monotonic() - t0:.0f} s")
            rows.append(row)
            log(vs_table([row], notes=False).splitlines()[-1] + f"  (wall: {', '.join(walls)})")
    return rows


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _num(d: dict | None, key: str, fmt: str, scale: float | None = None) -> str:
    """A cell: ``d[key]`` (divided by ``scale``) in ``fmt``; "-" where not measured, "failed" where the run failed."""
    v = None if d is None else d.get(key)
    if d is not None and "failed" in d:
        return "failed"
    return "-" if v is None else format(v if scale is None else v / scale, fmt)


VS_NOTES = """\
s: median of the timed runs after one warm-up, timed in party 0, each run started right after a synchronising
exchange (CrypTen: a barrier); one process per party and for the dealer / TTP, one torch thread each.
TTP/ours: CrypTen-TTP's seconds over ours (above 1: ours is faster).
MB/party: the most any party sent (ours: payload, links sealed with AES-256-GCM; CrypTen: bytes written to its gloo
sockets, unencrypted). Dealer MB: what our dealer sent to all parties / what CrypTen's TTP sent (to party 0).
Rounds: ours are exchanges among parties; CrypTen's are its own count of communicator calls at the last party.
Max error: the largest |got - want| / max(1, |want|) against float64 (absolute below 1, relative above) over the
revealed result (logistic regression: the final weights; training step: the weights after it).
CrypTen-TFP: CrypTen's default provider, party 0 makes every triple itself (no third process, but party 0 knows
the triples): a reference for speed, not a secure setting."""


def vs_table(rows: list[dict], notes: bool = True) -> str:
    """The comparison as a markdown table (and its notes)."""
    head = (
        "| workload | n | ours s | CrypTen-TTP s | TTP/ours | CrypTen-TFP s | MB/party ours / CrypTen "
        "| dealer MB ours / TTP | rounds ours / CrypTen | max error ours / CrypTen-TTP |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ours, ttp, tfp = r["ours"], r.get("crypten_ttp"), r.get("crypten_tfp")
        ok = ttp is not None and "failed" not in ttp
        ratio = f"{ttp['seconds'] / ours['seconds']:.2f}x" if ok else "-"
        cells = [
            r["label"],
            str(r["parties"]),
            _num(ours, "seconds", ".3g"),
            _num(ttp, "seconds", ".3g"),
            ratio,
            _num(tfp, "seconds", ".3g"),
            f"{_num(ours, 'bytes_per_party', '.3g', 1e6)} / {_num(ttp, 'bytes_per_party', '.3g', 1e6)}",
            f"{_num(ours, 'dealer_bytes', '.3g', 1e6)} / {_num(ttp, 'dealer_bytes', '.3g', 1e6)}",
            f"{_num(ours, 'rounds', 'g')} / {_num(ttp, 'rounds', 'g')}",
            f"{_num(ours, 'max_error', '.1e')} / {_num(ttp, 'max_error', '.1e')}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\n{VS_NOTES}" if notes else "")


# ----- latency (--latency MS) ------------------------------------------------------------------------


def _median_run(runs: list[dict]) -> dict:
    """Runs of one setting: the first's figures (rounds and bytes do not change), the median of their seconds."""
    return dict(runs[0], seconds=statistics.median(r["seconds"] for r in runs),
                all_seconds=[t for r in runs for t in r.get("all_seconds", [r["seconds"]])])  # fmt: skip


def latency_compare(names: list[str], parties: list[int], repeat: int, delay: float, insecure: bool = False,
                    peer: bool = False, pairs: int = 1, log=print) -> list[dict]:  # fmt: skip
    """``--latency``: every workload of ours without and with ``delay`` seconds each way; CrypTen-TTP (``peer``)
    without delay, for its rounds (module docstring).  A failed CrypTen run is kept as ``{"failed": message}``.

    ``pairs``: runs without and with the delay, alternated, and the median of their seconds (as ``--curve``
    does: on a small, busy machine one noisy run should not decide the difference).
    """
    import bench_crypten

    if peer and not bench_crypten.available():
        log(bench_crypten.INSTALL)
        peer = False
    rows = []
    for n in parties:
        for name in names:
            row = {"workload": name, "label": WORKLOADS[name].label, "parties": n, "curve": not insecure,
                   "delay_ms": delay * 1e3}  # fmt: skip
            t0 = time.monotonic()
            plain, late = [], []
            for _ in range(pairs):
                plain.append(measure_vs(name, n, repeat, insecure))
                late.append(measure_vs(name, n, repeat, insecure, link_delay=delay))
            row["ours"], row["ours_delayed"] = _median_run(plain), _median_run(late)
            walls = [f"ours {time.monotonic() - t0:.0f} s"]
            if peer:
                t0 = time.monotonic()
                try:
                    row["crypten_ttp"] = bench_crypten.measure(name, n, "TTP", repeat)
                except (RuntimeError, TimeoutError) as e:
                    row["crypten_ttp"] = {"failed": str(e)}
                walls.append(f"CrypTen-TTP {time.monotonic() - t0:.0f} s")
            rows.append(row)
            log(latency_table([row], delay, notes=False).splitlines()[-1] + f"  (wall: {', '.join(walls)})")
    return rows


LATENCY_NOTES = """\
s: party 0's median of the timed runs after one warm-up (as --vs; with --pairs, the median over alternated runs of
each setting), over ZeroMQ, links encrypted (the default). "{ms} ms": every node, the dealer too, holds each frame it
receives {ms} ms after it arrives (MPCConfig.link_delay, in the communicator: this kernel has no netem), so a message
costs {ms} ms and a reply {ms2} ms; bandwidth is unchanged.
Rounds: exchanges among parties. MB/party: the most any party sent; dealer MB: what the dealer sent to all parties.
Floor: rounds x {ms} ms, the least the delay can add: both sides of a round send at once, so a round costs one
delay (rounds x 2 x delay would be a round trip per round). Added/floor above 1: waits beyond one delay per round
(the dealer's replies, a party that waits for another's result, frames that arrived while a node computed).
CrypTen-TTP: measured without delay (its gloo links offer no hook to hold each message on arrival, so no delay is
injected there); its floor is its own round count (communicator calls at the last party) x {ms} ms, an estimate."""


def latency_table(rows: list[dict], delay: float, notes: bool = True) -> str:
    """``--latency``'s markdown table (and its notes)."""
    ms = f"{delay * 1e3:g}"
    head = (
        f"| workload | n | rounds | MB/party | dealer MB | s, no delay | s, {ms} ms | added s | floor, rounds x {ms} ms "
        "| added / floor | CrypTen-TTP rounds | CrypTen-TTP s, no delay | CrypTen-TTP floor s |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        ours, late, ttp = r["ours"], r["ours_delayed"], r.get("crypten_ttp")
        floor = late["rounds"] * delay
        added = late["seconds"] - ours["seconds"]
        ttp_ok = ttp is not None and "failed" not in ttp
        cells = [
            r["label"],
            str(r["parties"]),
            _num(late, "rounds", "d"),
            _num(late, "bytes_per_party", ".3g", 1e6),
            _num(late, "dealer_bytes", ".3g", 1e6),
            _num(ours, "seconds", ".3g"),
            _num(late, "seconds", ".3g"),
            format(added, ".3g"),
            format(floor, ".3g"),
            f"{added / floor:.2f}" if floor > 0 else "-",
            _num(ttp, "rounds", "d"),
            _num(ttp, "seconds", ".3g"),
            format(ttp["rounds"] * delay, ".3g") if ttp_ok else _num(ttp, "rounds", "d"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    return text + ("\n\n" + LATENCY_NOTES.format(ms=ms, ms2=f"{2 * delay * 1e3:g}") if notes else "")


# ----- bandwidth (--bandwidth RATE): the benchmark again in a network namespace ------------------------

_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps)$", re.IGNORECASE)
TBF_LATENCY = "50ms"  # how long a packet may queue in tbf before it is dropped (TCP sends it again)
NETNS_SETUP_TIMEOUT = 20


def rate_bytes(rate: str) -> float:
    """Bytes per second of a ``tc`` rate (``1gbit``, ``100mbit``, ``50mbps``: bytes); ``ValueError`` if not one."""
    m = _RATE.match(rate)
    if m is None or not float(m[1]) > 0:
        raise ValueError(
            f"--bandwidth takes a tc rate such as 1gbit, 100mbit or 500kbit (bits) or 50mbps (bytes), got {rate!r}"
        )
    unit = m[2].lower()
    scale = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}.get(unit[0], 1.0)
    return float(m[1]) * scale / (8 if unit.endswith("bit") else 1)


def tbf_command(rate: str) -> list[str]:
    """``tc`` adding the rate limit to the namespace's loopback: a bucket of 1 ms at the rate, at least 16 KiB
    (above the 1500-byte MTU, or tbf drops every packet)."""
    burst = max(int(rate_bytes(rate) / 1000), 16384)
    return ["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", rate, "burst", str(burst),
            "latency", TBF_LATENCY]  # fmt: skip


def netns_problem() -> str | None:
    """Why ``--bandwidth`` cannot run here, or ``None``."""
    if os.geteuid() != 0:
        return (
            "--bandwidth needs root: it makes a network namespace (ip netns) and limits its loopback with tc; "
            "run it as root, or use --latency, which needs no privileges"
        )
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"--bandwidth needs iproute2's {' and '.join(missing)} (ip netns, tc qdisc): install iproute2"
    return None


def worker_args(argv: list[str], rate: str) -> list[str]:
    """The benchmark's own arguments for the worker in the namespace: ``--bandwidth`` replaced by the note of
    the rate it runs under."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--bandwidth":
            skip = True
        elif not a.startswith("--bandwidth="):
            out.append(a)
    return [*out, "--under-rate", rate]


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=NETNS_SETUP_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({' '.join(cmd)}): {done.stderr.strip() or done.stdout.strip()}")


def _qdisc_stats(ns: str) -> str:
    done = subprocess.run(["ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", "lo"],
                          capture_output=True, text=True, timeout=NETNS_SETUP_TIMEOUT)  # fmt: skip
    m = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)", done.stdout)
    if m is None:
        return done.stdout.strip()
    sent, pkts, dropped, over = (int(v) for v in m.groups())
    return f"{sent / 1e6:.0f} MB in {pkts} packets through tbf, {dropped} dropped, {over} held back (overlimits)"


def in_namespace(rate: str, args: list[str]) -> int:
    """Run ``bench.py args`` in a fresh network namespace whose loopback is limited to ``rate``; its exit code.

    The namespace, and any process left in it, goes in every case (errors, Ctrl-C, SIGTERM).
    """
    from parties.stopping import Stopped, StopSignals

    ns = f"mpc-bench-{os.getpid()}"
    made = False
    with StopSignals() as stops:
        try:
            _run(["ip", "netns", "add", ns], "making the network namespace")
            made = True
            _run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "mtu", "1500"], "setting lo's MTU")
            _run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], "bringing lo up")
            tbf = tbf_command(rate)
            _run(["ip", "netns", "exec", ns, *tbf], "limiting lo with tbf")
            print(f"network namespace {ns}: lo with MTU 1500 and `{' '.join(tbf)}`", flush=True)
            worker = ["ip", "netns", "exec", ns, sys.executable, str(Path(__file__).resolve()), *args]
            code = subprocess.run(worker).returncode
            print(f"\n{rate} on lo: {_qdisc_stats(ns)}")
            return code
        except RuntimeError as e:  # a set-up step failed: say which, and how
            print(f"bench.py: {e}", file=sys.stderr)
            return 1
        except Stopped as stop:
            stops.hold()
            print(f"{stop}: deleting the network namespace {ns}", file=sys.stderr)
            return stop.exit_code
        except KeyboardInterrupt:
            stops.hold()
            print(f"interrupted: deleting the network namespace {ns}", file=sys.stderr)
            return 128 + signal.SIGINT
        finally:
            if made:
                _delete_namespace(ns)


def _delete_namespace(ns: str) -> None:
    """Kill what still runs in ``ns`` (a worker cut short), then delete it."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=NETNS_SETUP_TIMEOUT)


def _latency_ms(v: str) -> float:
    try:
        ms = float(v)
    except ValueError:
        ms = math.nan
    if not math.isfinite(ms) or not 0 < ms <= LINK_DELAY_MAX * 1e3:
        raise argparse.ArgumentTypeError(f"milliseconds in (0, {LINK_DELAY_MAX * 1e3:g}], e.g. 5, got {v!r}")
    return ms


def _meta(args: argparse.Namespace, argv: list[str] | None) -> dict:
    return {
        "date": time.strftime("%Y-%m-%d"),
        "argv": sys.argv[1:] if argv is None else argv,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "crypten": _version("crypten"),
        "bandwidth": args.under_rate,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--parties", type=int, nargs="+", default=[2, 3])
    ap.add_argument(
        "--curve", action="store_true", help="measure the cost of link encryption (sealed links against --insecure)"
    )
    ap.add_argument("--curve-pairs", type=int, default=3, help="alternating encrypted / --insecure runs to compare")
    ap.add_argument("--nonlinear", action="store_true", help="also run the nonlinear benchmarks")
    ap.add_argument("--insecure", action="store_true", help="run the base set without link encryption")
    ap.add_argument(
        "--nn",
        action="store_true",
        help="only the mpc.nn set: inference, a training step (ignores --curve, --nonlinear)",
    )
    ap.add_argument(
        "--memory",
        nargs="*",
        type=float,
        metavar="N",
        help="only the memory set: peak RSS per party and dealer of a 2-party multiply (default 1e6 1e7 1e8)",
    )
    ap.add_argument(
        "--vs",
        choices=["crypten"],
        help="only the peer comparison: each workload here and in CrypTen (TTP, TFP); --repeat >= 3",
    )
    ap.add_argument(
        "--workloads",
        type=lambda v: [w for w in v.split(",") if w],
        default=list(WORKLOADS),
        help=f"with --vs: a comma-separated subset of {','.join(WORKLOADS)}",
    )
    ap.add_argument("--no-tfp", action="store_true", help="with --vs: skip the CrypTen-TFP reference column")
    ap.add_argument(
        "--back-to-back",
        type=int,
        default=1,
        metavar="N",
        help="with --vs: each timed run calls the workload N times in a row (a loop's steady state, where the "
        "dealer's material for the next call travels during this one); seconds, rounds and bytes per call",
    )
    ap.add_argument(
        "--latency",
        type=_latency_ms,
        metavar="MS",
        help="the --vs workloads of ours without and with MS milliseconds of latency each way (with --vs crypten: "
        "CrypTen-TTP's rounds and time without delay, for reference)",
    )
    ap.add_argument(
        "--pairs",
        type=int,
        default=1,
        help="with --latency: runs of ours without and with the delay, alternated (the median of each)",
    )
    ap.add_argument(
        "--bandwidth",
        metavar="RATE",
        help="(root) run the rest of this command in a network namespace whose loopback tc limits to RATE, e.g. 1gbit",
    )
    ap.add_argument("--under-rate", help=argparse.SUPPRESS)  # the worker of --bandwidth: the rate it runs under
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args(argv)
    if args.bandwidth is not None:
        try:
            rate_bytes(args.bandwidth)
        except ValueError as e:
            ap.error(str(e))
        problem = netns_problem()
        if problem is not None:
            print(f"bench.py: {problem}", file=sys.stderr)
            return 2
        return in_namespace(args.bandwidth, worker_args(sys.argv[1:] if argv is None else argv, args.bandwidth))
    if args.under_rate:
        print(f"(in a network namespace: loopback limited to {args.under_rate} by tc tbf, MTU 1500)", flush=True)
    if args.vs or args.latency is not None:
        unknown = [w for w in args.workloads if w not in WORKLOADS]
        if unknown:
            ap.error(f"unknown workload(s) {', '.join(unknown)}; choose from {','.join(WORKLOADS)}")
        if args.repeat < 3:
            ap.error("--vs and --latency take the median of at least 3 timed runs: --repeat 3 or more")
    if args.latency is not None:
        delay = args.latency / 1e3
        if args.pairs < 1:
            ap.error("--pairs takes a number of runs of each setting, 1 or more")
        rows = latency_compare(args.workloads, args.parties, args.repeat, delay, args.insecure, peer=bool(args.vs),
                               pairs=args.pairs)  # fmt: skip
        print()
        print(latency_table(rows, delay))
        if args.json:
            Path(args.json).write_text(json.dumps({**_meta(args, argv), "rows": rows}, indent=1))
        return 0
    if args.back_to_back < 1:
        ap.error(f"--back-to-back takes a number of calls, 1 or more, got {args.back_to_back}")
    if args.back_to_back > 1 and not args.vs:
        ap.error("--back-to-back goes with --vs")
    if args.vs:
        rows = compare(args.workloads, args.parties, args.repeat, args.insecure, tfp=not args.no_tfp,
                       calls=args.back_to_back)  # fmt: skip
        print()
        print(vs_table(rows))
        if args.back_to_back > 1:
            print(f"Back to back: each timed run made {args.back_to_back} calls in a row; figures are per call.")
        if args.json:
            Path(args.json).write_text(json.dumps({**_meta(args, argv), "rows": rows}, indent=1))
        return 0
    if args.memory is not None:
        rows = []
        for n in args.memory or [1e6, 1e7, 1e8]:
            rows.append(measure_memory(int(n), args.insecure))
            print(memory_table(rows[-1:]), flush=True)
        print(memory_table(rows))
        out = {"rows": rows, "bandwidth": args.under_rate}
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
        return 0
    if args.nn:
        rows = [measure(op, b, n, args.repeat, args.insecure) for n in args.parties for op, b in NN_OPS.items()]
        overhead: dict[str, float] = {}  # encryption's cost is the foundation set's question
    else:
        rows, overhead = foundation(args)
    print(table([r for r in rows if "op" in r and "size" in r]))
    for op, ratio in overhead.items():
        print(f"encryption overhead, {op} with 2 parties: {ratio:+.1%} in seconds (payload bytes unchanged)")
    out = {"rows": rows, "curve_overhead": overhead, "bandwidth": args.under_rate}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
