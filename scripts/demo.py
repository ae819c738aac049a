"""Demo: joint statistics and a jointly trained classifier on private data.

Every party holds its own rows of scikit-learn's breast-cancer data set (the
demo deals the rows out; in real use each party loads its own file).  Together
they compute, without any party seeing another's rows:

1. the mean and covariance matrix of the union of their rows, revealed to all;
2. a logistic-regression model trained on the union with secret weights; only
   its scores on a public test set are revealed to all, and the model to party 0.

Each result is printed beside the same computation in plaintext float64.

    mpc launch -n 3 scripts/demo.py            # one process per party, plus the dealer
    python scripts/demo.py --parties 3         # the same through mpc.run
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

import torch

import mpc

FEATURES = 10


def dataset():
    """Standardised features, labels, and a fixed public train/test split."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = torch.tensor(data.data[:, :FEATURES], dtype=torch.float64)
    y = torch.tensor(data.target, dtype=torch.float64)
    x = (x - x.mean(0)) / x.std(0)
    order = torch.arange(len(x)).roll(7) * 37 % len(x)  # a fixed public shuffle (569 is prime)
    x, y = x[order], y[order]
    return x[100:], y[100:], x[:100], y[:100]


def rows_of(owner: int, world: int, n: int) -> torch.Tensor:
    return torch.arange(n) % world == owner


def train(x, y, w, b, epochs: int, batch: int, lr: float, sigmoid):
    n = x.shape[0]
    for _ in range(epochs):
        for start in range(0, n - batch + 1, batch):
            xb, yb = x[start : start + batch], y[start : start + batch]
            err = sigmoid(xb @ w + b) - yb
            w = w - (xb.t() @ err) * (lr / batch)
            b = b - err.sum(0) * (lr / batch)
    return w, b


def party(ctx, epochs: int = 5, batch: int = 32, lr: float = 0.5) -> dict:
    rank, world = ctx.rank, ctx.world_size
    x_train, y_train, x_test, y_test = dataset()
    n = len(x_train)
    # Each party shares its own rows; the others pass None and learn only the shape.
    xs, ys = [], []
    for owner in range(world):
        mine = rows_of(owner, world, n)
        xs.append(mpc.share(x_train[mine] if owner == rank else None, owner=owner))
        ys.append(mpc.share(y_train[mine].reshape(-1, 1) if owner == rank else None, owner=owner))
    x, y = mpc.cat(xs), mpc.cat(ys)

    mean = x.mean(0)
    centered = x - mean
    cov = (centered.t() @ centered) / (x.shape[0] - 1)
    mean_open, cov_open = mean.reveal(), cov.reveal()

    w = mpc.share(torch.zeros(FEATURES, 1) if rank == 0 else None, owner=0)
    b = mpc.share(torch.zeros(1) if rank == 0 else None, owner=0)
    w, b = train(x, y, w, b, epochs, batch, lr, lambda z: z.sigmoid())  # the secret sigmoid
    scores = (x_test.float() @ w + b).reveal()  # scores on the public test set: the agreed output
    model = w.reveal(to=0)

    # Plaintext check, with the rows in the same order (concatenated by owner).
    order = torch.cat([torch.nonzero(rows_of(o, world, n)).reshape(-1) for o in range(world)])
    xp, yp = x_train[order], y_train[order].reshape(-1, 1)
    wp, bp = train(
        xp,
        yp,
        torch.zeros(FEATURES, 1, dtype=torch.float64),
        torch.zeros(1, dtype=torch.float64),
        epochs,
        batch,
        lr,
        torch.sigmoid,
    )
    out = {
        "party": rank,
        "parties": world,
        "mean_max_error": float((mean_open - xp.mean(0)).abs().max()),
        "cov_max_error": float((cov_open - torch.cov(xp.T)).abs().max()),
        "test_accuracy_secret": float(((scores.reshape(-1) > 0).double() == y_test).double().mean()),
        "test_accuracy_plaintext": float((((x_test @ wp + bp).reshape(-1) > 0).double() == y_test).double().mean()),
        "rounds": ctx.stats.rounds,
        "bytes_sent": ctx.stats.bytes_sent,
    }
    if model is not None:
        out["model_max_error"] = float((model.double() - wp).abs().max())
    return out


def report(results: list[dict]) -> None:
    r0 = results[0]
    print(f"joint mean of {r0['parties']} parties' rows: max |secret - plaintext| = {r0['mean_max_error']:.2e}")
    print(f"joint covariance ({FEATURES}x{FEATURES}):      max |secret - plaintext| = {r0['cov_max_error']:.2e}")
    print(
        f"logistic regression, test accuracy: secret {r0['test_accuracy_secret']:.3f}   "
        f"plaintext {r0['test_accuracy_plaintext']:.3f}"
    )
    if "model_max_error" in r0:
        print(f"model revealed to party 0 only:    max |secret - plaintext| = {r0['model_max_error']:.2e}")
    for r in results:
        print(f"party {r['party']}: {r['rounds']} rounds, {r['bytes_sent'] / 1e6:.2f} MB sent")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parties", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args(argv)
    results = mpc.run(functools.partial(party, epochs=args.epochs), parties=args.parties)
    report(results)
    return 0


if __name__ == "__main__":
    import os

    if "MPC_RANK" in os.environ:  # started by `mpc launch` / `mpc party`
        ctx = mpc.init()
        res = party(ctx)
        print(json.dumps(res))
        if ctx.rank == 0:
            report([res])
    else:
        sys.exit(main())
