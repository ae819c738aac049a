"""The workloads of ``bench.py --vs``: one set of inputs, weights and float64 results for every system.

Plain torch only (no ``mpc``, no CrypTen), so that this toolkit's side
(``scripts/bench.py``) and CrypTen's (``scripts/bench_crypten.py``) build
their secret inputs from the same tensors, owned by the same parties, and
compare what they reveal against the same float64 computation.

Every input is public test data drawn from ``torch.Generator`` with a fixed
seed (not a CSPRNG; nothing secret depends on it).  Each workload names its
inputs and their owners (party 0 holds weights and features, party 1 inputs
of the models and labels) and a float64 ``reference``:

* ``mul``: x * y, 10^6 elements each (x from party 0, y from party 1), uniform in [-1, 1];
* ``matmul``: x @ y, 512 x 512 each, uniform in [-1, 1];
* ``relu`` (10^6, [-10, 10]), ``sigmoid`` (10^5, [-30, 30]), ``exp`` (10^5, [-12, 10]) and ``reciprocal``
  (10^5, |x| log-uniform in [1e-2, 1e4], random signs): ``scripts/bench_nonlinear.py``'s inputs, same seeds;
* ``mlp-infer``: MLP 784-128-128-10 with ReLU (torch's default init, seed ``SEED``), batch 128 in [-1, 1];
* ``lenet-infer``: LeNet-5 (conv 6@5x5, ReLU, max pool 2, conv 16@5x5, ReLU, max pool 2, fc 120, ReLU, fc 84,
  ReLU, fc 10) on a batch of 32 images 1x28x28 in [0, 1];
* ``logreg``: logistic regression without intercept, X 4096 x 64 in [-1, 1] (party 0), labels from a random
  hyperplane (party 1), w from 0; 10 steps of full-batch gradient descent
  ``w -= (lr / n) * X^T (sigmoid(X w) - y)`` with lr = 1 (lr / n = 2^-12, exact in fixed point);
* ``mlp-train``: one step of the MLP on batch 128: forward, cross-entropy with one-hot labels (party 1),
  backward, SGD with lr = 0.01.

Errors: ``errors(got, want)`` gives the largest absolute error and the largest
``|got - want| / max(1, |want|)`` (absolute below 1, relative above: exp and
reciprocal span several orders of magnitude), the figure the table prints.
For ``logreg`` the compared values are the final weights; for ``mlp-train``
the weights after the step (the loss is compared too, in the JSON).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ERROR_KEYS", "WORKLOADS", "Workload", "data", "errors", "inputs", "reference", "torch_model", "timed"]

SEED = 0  # the models' initial weights
LOGREG_LR = 1.0
LOGREG_STEPS = 10
TRAIN_LR = 0.01


@dataclass(frozen=True)
class Workload:
    name: str
    label: str  # what the table prints
    kind: str  # "op" (one function of the inputs), "infer", "logreg" or "train"
    size: int  # elements, or the batch


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("mul", "multiply 10^6", "op", 10**6),
        Workload("matmul", "matmul 512x512", "op", 512),
        Workload("relu", "ReLU 10^6", "op", 10**6),
        Workload("sigmoid", "sigmoid 10^5", "op", 10**5),
        Workload("exp", "exp 10^5", "op", 10**5),
        Workload("reciprocal", "reciprocal 10^5", "op", 10**5),
        Workload("mlp-infer", "MLP 784-128-128-10 inference, batch 128", "infer", 128),
        Workload("lenet-infer", "LeNet-5 inference, batch 32", "infer", 32),
        Workload("logreg", "logistic regression 4096x64, 10 GD steps", "logreg", 4096),
        Workload("mlp-train", "MLP training step, batch 128", "train", 128),
    ]
}


def data(shape, seed: int, lo: float, hi: float, log: bool = False, signed: bool = False) -> torch.Tensor:
    """Float64 test data: uniform in [lo, hi), or log-uniform (``log``) with random signs (``signed``)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    if log:
        v = torch.exp(u * (torch.log(torch.tensor(hi)) - torch.log(torch.tensor(lo))) + torch.log(torch.tensor(lo)))
        if signed:
            v = v * torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).double()
        return v
    return u * (hi - lo) + lo


def torch_model(name: str) -> torch.nn.Sequential:
    """The float64 plaintext model of an ``infer``/``train`` workload, torch's default init from seed ``SEED``."""
    nn = torch.nn
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        if name == "lenet-infer":
            model = nn.Sequential(
                nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(16 * 4 * 4, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
            )  # fmt: skip
        else:
            model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    return model.double()


def inputs(name: str) -> dict[str, tuple[torch.Tensor, int]]:
    """The workload's named float64 inputs and the party that owns each (weights of models: ``torch_model``)."""
    w = WORKLOADS[name]
    if name in ("mul", "matmul"):
        shape = (w.size,) if name == "mul" else (w.size, w.size)
        return {"x": (data(shape, 1234, -1, 1), 0), "y": (data(shape, 1235, -1, 1), 1)}
    nonlinear = {
        "relu": (1, -10, 10, {}),
        "sigmoid": (3, -30, 30, {}),
        "exp": (4, -12, 10, {}),
        "reciprocal": (5, 1e-2, 1e4, {"log": True, "signed": True}),
    }
    if name in nonlinear:
        seed, lo, hi, kw = nonlinear[name]
        return {"x": (data((w.size,), seed, lo, hi, **kw), 0)}
    if name == "mlp-infer":
        return {"x": (data((w.size, 784), 11, -1, 1), 1)}
    if name == "lenet-infer":
        return {"x": (data((w.size, 1, 28, 28), 12, 0, 1), 1)}
    if name == "logreg":
        x = data((w.size, 64), 13, -1, 1)
        y = (x @ data((64, 1), 14, -1, 1) > 0).double()
        return {"x": (x, 0), "y": (y, 1), "w": (torch.zeros(64, 1, dtype=torch.float64), 0)}
    if name == "mlp-train":
        labels = torch.randint(0, 10, (w.size,), generator=torch.Generator().manual_seed(7))
        return {"x": (data((w.size, 784), 11, -1, 1), 1), "y": (torch.nn.functional.one_hot(labels, 10).double(), 1)}
    raise ValueError(f"unknown workload {name!r}; the workloads are {', '.join(WORKLOADS)}")


def logreg_steps(x, y, w, sigmoid: Callable[[Any], Any]):
    """``LOGREG_STEPS`` gradient-descent steps on any tensor type with ``@``, ``.t()``, ``-`` and ``*``."""
    scale = LOGREG_LR / x.shape[0]
    for _ in range(LOGREG_STEPS):
        w = w - (x.t() @ (sigmoid(x @ w) - y)) * scale
    return w


def reference(name: str, given: dict[str, tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    """The float64 result(s): ``out`` for ops and inference, ``weights`` (and ``loss``) for training."""
    x = given["x"][0]
    if name == "mul":
        return {"out": x * given["y"][0]}
    if name == "matmul":
        return {"out": x @ given["y"][0]}
    if name in ("relu", "sigmoid", "exp", "reciprocal"):
        return {"out": getattr(torch, name)(x)}
    if name == "logreg":
        return {"weights": logreg_steps(x, given["y"][0], given["w"][0], torch.sigmoid)}
    model = torch_model(name)
    if WORKLOADS[name].kind == "infer":
        with torch.no_grad():
            return {"out": model(x)}
    loss = torch.nn.functional.cross_entropy(model(x), given["y"][0])
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= TRAIN_LR * p.grad
    return {"weights": flat(list(model.parameters())), "loss": loss.detach().reshape(1)}


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().double().reshape(-1) for t in tensors])


ERROR_KEYS = ("max_error", "max_abs_error", "elements_over_1e-2", "elements", "loss_abs_error")  # what errors() gives


def errors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> dict[str, float]:
    """``max_error`` (|d| / max(1, |want|)), ``max_abs_error`` and how many elements are off by more than 1e-2
    (in ``max_error``'s terms), of the first result; the loss's error too."""
    first = next(iter(want))
    d = (got[first].double().reshape(-1) - want[first].reshape(-1)).abs()
    e = d / want[first].reshape(-1).abs().clamp_min(1.0)
    out = {
        "max_error": e.max().item(),
        "max_abs_error": d.max().item(),
        "elements_over_1e-2": int((e > 1e-2).sum()),  # one wrapped element, or a function off its domain?
        "elements": d.numel(),
    }
    if "loss" in want:
        out["loss_abs_error"] = (got["loss"].double().reshape(-1) - want["loss"]).abs().max().item()
    return out


def looped(step: Callable[[], Any], calls: int, between: Callable[[], Any] | None = None) -> Callable[[], Any]:
    """``step`` ``calls`` times back to back (``between`` before each call after the first), the last result."""
    if calls < 1:
        raise ValueError(f"back-to-back calls must be 1 or more, got {calls}")
    if calls == 1:
        return step

    def run() -> Any:
        out = None
        for i in range(calls):
            if i and between is not None:
                between()
            out = step()
        return out

    return run


def per_call(row: dict, calls: int) -> dict:
    """A ``timed`` row of ``looped(step, calls)``: seconds and counters per call (``calls`` kept beside them)."""
    if calls == 1:
        return row

    def each(v):
        if isinstance(v, bool) or not isinstance(v, int | float):
            return v
        return v // calls if isinstance(v, int) and v % calls == 0 else v / calls

    out = {k: each(v) for k, v in row.items()}
    out["all_seconds"] = [t / calls for t in row["all_seconds"]]
    out["calls"] = calls
    return out


def timed(step: Callable[[], Any], repeat: int, sync: Callable[[], Any], counters: Callable[[], dict]) -> dict:
    """Median seconds of ``repeat`` runs of ``step`` (the caller warms up), each started right after ``sync``.

    ``counters()`` returns cumulative figures (rounds, bytes); the result
    holds their increase over the last run.
    """
    times, cost = [], {}
    for _ in range(repeat):
        sync()
        before = counters()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        after = counters()
        cost = {k: after[k] - before[k] for k in after}
    return {"seconds": statistics.median(times), "all_seconds": times, **cost}
