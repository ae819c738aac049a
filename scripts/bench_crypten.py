"""CrypTen's side of ``bench.py --vs crypten``: the workloads of ``bench_workloads.py`` in CrypTen 0.4.1.

CrypTen is an optional peer, never a requirement: this module imports it only
inside the party processes and ``available()`` says whether it is there.
``pip install crypten`` fails (CrypTen 0.4.1 depends on the retired
``sklearn`` name), hence ``INSTALL``; and on torch 2.x ``import crypten``
fails on ``torch.onnx.symbolic_registry`` (its ONNX importer, unused here),
so ``_import_crypten`` registers an empty module under that name first.

``measure(name, parties, provider, repeat)`` starts, with the ``spawn``
method, one process per party and, for ``provider="TTP"``, CrypTen's trusted
third party (``crypten.mpc.provider.TTPServer``, rank = world size), all
with one torch thread, over ``torch.distributed`` (gloo, TCP on localhost,
unencrypted: CrypTen has no encrypted links) with a ``file://`` rendezvous.
``provider="TFP"`` is CrypTen's default: party 0 generates every triple
itself and shares it (no third process, no traffic for the triples, and
party 0 knows them: a reference for speed, not a setting that keeps secrets).

Each party shares the same inputs as this toolkit's run (the owner passes the
values, the others zeros of the same shape), runs the step once (warm-up),
reveals its result once and compares it with float64 (at party 0), then times
``repeat`` runs after a barrier.  The figures, per run:

* ``seconds``: party 0's median, as ours;
* ``bytes_per_party``: the most bytes a party wrote to its sockets, from
  ``/proc/self/io`` (``wchar``: gloo's payload plus its framing; party 0's
  includes its few hundred bytes of requests to the TTP).  CrypTen's own
  counter (``get_communication_stats``) adds what a party sends and receives
  in an all-reduce; it is kept as ``crypten_reported_bytes``;
* ``rounds``: CrypTen's own count (one per communicator call) at the last
  party, which never talks to the TTP;
* ``dealer_bytes``: what the TTP sent, counted at party 0 as it receives the
  correction tensors (``TTPClient.ttp_request``; the TTP sends nothing to
  the other parties, which draw their shares from seeds).
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import queue
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_workloads as wl  # noqa: E402 - the directory first, as under `python scripts/...`

__all__ = ["INSTALL", "available", "measure"]

INSTALL = (
    "CrypTen is not installed, so only this toolkit runs. CrypTen is an optional peer; `pip install crypten` "
    "fails (it asks for the retired `sklearn` package), so install it with:\n"
    '    pip install -e ".[crypten]" && pip install --no-deps crypten==0.4.1'
)


def available() -> bool:
    return importlib.util.find_spec("crypten") is not None


def _import_crypten():
    # CrypTen 0.4.1's ONNX importer imports a module that torch 2.x removed; nothing here uses ONNX.
    sys.modules.setdefault("torch.onnx.symbolic_registry", types.ModuleType("torch.onnx.symbolic_registry"))
    import crypten

    return crypten


def _wchar() -> int:
    """Bytes this process has written with write()/writev(), sockets included (gloo's TCP transport)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no wchar line")


def _init(rank: int, world: int, rendezvous: str, provider: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), RENDEZVOUS=rendezvous, DISTRIBUTED_BACKEND="gloo")
    torch.set_num_threads(1)
    crypten = _import_crypten()
    crypten.cfg.mpc.provider = provider
    crypten.cfg.communicator.verbose = True  # CrypTen counts rounds and bytes only when verbose
    return crypten


def _model(crypten, name: str, rank: int):
    """The torch model of the workload as CrypTen layers with party 0's weights; its parameters in torch's order."""
    layers, params = [], []
    for m in wl.torch_model(name):
        if isinstance(m, torch.nn.Linear):
            c = crypten.nn.Linear(m.in_features, m.out_features)
        elif isinstance(m, torch.nn.Conv2d):
            c = crypten.nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
        elif isinstance(m, torch.nn.ReLU):
            c = crypten.nn.ReLU()
        elif isinstance(m, torch.nn.MaxPool2d):
            c = crypten.nn.MaxPool2d(m.kernel_size, m.stride)
        elif isinstance(m, torch.nn.Flatten):
            c = crypten.nn.Flatten()
        else:
            raise TypeError(f"no CrypTen layer for {type(m).__name__}")
        for pname in ("weight", "bias"):
            if hasattr(m, pname) and getattr(m, pname) is not None:
                value = getattr(m, pname).detach().clone()
                c.set_parameter(pname, (value if rank == 0 else torch.zeros_like(value)).requires_grad_(True))
        layers.append(c)
    model = crypten.nn.Sequential(*layers).encrypt(src=0)
    for c in layers:
        params += [getattr(c, p) for p in ("weight", "bias") if p in c._parameters]
    return model, params


def _workload(crypten, name: str, rank: int):
    """The step to time and how to reveal its result (as ``bench_workloads.reference`` names it)."""
    s = {
        k: crypten.cryptensor(t if rank == owner else torch.zeros_like(t), src=owner)
        for k, (t, owner) in wl.inputs(name).items()
    }
    kind = wl.WORKLOADS[name].kind
    x = s["x"]
    scale = 2.0**crypten.cfg.encoder.precision_bits

    def plain(r) -> torch.Tensor:
        # The ring values, decoded here: 0.4.1's get_plain_text divides negative values by scale - 1, so that
        # -3.99995 reads as -4.99995 (negative values just above an integer come out 1 too low), in float32.
        return r.reveal().double() / scale

    if name == "mul":
        return lambda: x * s["y"], lambda r: {"out": plain(r)}
    if name == "matmul":
        return lambda: x.matmul(s["y"]), lambda r: {"out": plain(r)}
    if kind == "op":
        return lambda: getattr(x, name)(), lambda r: {"out": plain(r)}
    if name == "logreg":
        return lambda: wl.logreg_steps(x, s["y"], s["w"], lambda z: z.sigmoid()), lambda r: {"weights": plain(r)}
    model, params = _model(crypten, name, rank)
    if kind == "infer":
        model.eval()

        def infer():
            with crypten.no_grad():
                return model(x)

        return infer, lambda r: {"out": plain(r)}
    model.train()
    loss_fn = crypten.nn.CrossEntropyLoss()

    def train():
        model.zero_grad()
        loss = loss_fn(model(x), s["y"])
        loss.backward()
        model.update_parameters(wl.TRAIN_LR, grad_threshold=None)  # plain SGD, as ours (no gradient clipping)
        return loss

    return train, lambda r: {"weights": wl.flat(plain(p) for p in params), "loss": plain(r)}


def _count_ttp(crypten, counter: dict) -> None:
    """Count, at party 0, the correction tensors that the TTP sends (it sends to no other party)."""
    client = crypten.mpc.provider.ttp_provider.TTPClient.get()
    request = client.ttp_request

    def counted(*args, **kwargs):
        result = request(*args, **kwargs)
        counter["ttp_bytes"] += result.nelement() * result.element_size()
        counter["ttp_requests"] += 1
        return result

    client.ttp_request = counted


def _party(rank: int, world: int, rendezvous: str, provider: str, name: str, repeat: int, out, calls: int = 1) -> None:
    try:
        crypten = _init(rank, world, rendezvous, provider)
        crypten.init()
        comm = crypten.comm.get()
        ttp = {"ttp_bytes": 0, "ttp_requests": 0}
        if provider == "TTP" and rank == 0:
            _count_ttp(crypten, ttp)
        step, reveal = _workload(crypten, name, rank)
        got = reveal(step())  # the warm-up, revealed once outside the timed runs

        def counters() -> dict:
            stats = comm.get_communication_stats()
            return {"rounds": stats["rounds"], "crypten_bytes": stats["bytes"], "bytes_sent": _wchar(), **ttp}

        row = wl.per_call(wl.timed(wl.looped(step, calls), repeat, comm.barrier, counters), calls)
        if rank == 0:
            row.update(wl.errors(got, wl.reference(name, wl.inputs(name))))
        crypten.uninit()  # party 0 also tells the TTP to stop
        out.put((rank, row))
    except BaseException as e:  # the parent reports it with the rank
        out.put((rank, f"{type(e).__name__}: {e}"))
        raise


def _ttp(world: int, rendezvous: str, out) -> None:
    try:
        crypten = _init(world, world, rendezvous, "TTP")
        crypten.mpc.provider.TTPServer()  # serves until party 0 shuts down
        crypten.uninit()
    except BaseException as e:
        out.put((world, f"{type(e).__name__}: {e}"))
        raise


def measure(
    name: str, parties: int, provider: str = "TTP", repeat: int = 3, timeout: float = 900.0, calls: int = 1
) -> dict:
    """One workload in CrypTen with ``parties`` processes (and the TTP's); see the module docstring.  ``calls``:
    the workload's calls back to back in each timed run (figures per call)."""
    if provider not in ("TTP", "TFP"):
        raise ValueError(f"provider must be 'TTP' or 'TFP', got {provider!r}")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    tmp = tempfile.mkdtemp(prefix="bench-crypten-")
    rendezvous = "file://" + os.path.join(tmp, "rendezvous")
    procs = [
        ctx.Process(target=_party, args=(r, parties, rendezvous, provider, name, repeat, out, calls))
        for r in range(parties)
    ]
    if provider == "TTP":
        procs.append(ctx.Process(target=_ttp, args=(parties, rendezvous, out)))
    results: dict[int, dict] = {}
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        while len(results) < parties:
            try:
                rank, row = out.get(timeout=1.0)
            except queue.Empty:
                failed = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
                if failed:
                    raise RuntimeError(
                        f"CrypTen {name}: process {failed[0]} exited with {procs[failed[0]].exitcode}"
                    ) from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"CrypTen {name} with {parties} parties took over {timeout:.0f} s") from None
                continue
            if isinstance(row, str):
                raise RuntimeError(f"CrypTen {name}, rank {rank}: {row}")
            results[rank] = row
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
        shutil.rmtree(tmp, ignore_errors=True)
    res = [results[r] for r in range(parties)]
    p0 = res[0]
    row = {
        "seconds": p0["seconds"],
        "all_seconds": p0["all_seconds"],
        "rounds": res[-1]["rounds"],
        "bytes_per_party": max(r["bytes_sent"] for r in res),
        "crypten_reported_bytes": [r["crypten_bytes"] for r in res],
        "dealer_bytes": p0["ttp_bytes"] if provider == "TTP" else None,
        "ttp_requests": p0["ttp_requests"] if provider == "TTP" else None,
    }
    row.update({k: v for k, v in p0.items() if k in wl.ERROR_KEYS})
    return row
