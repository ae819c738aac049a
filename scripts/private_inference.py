"""Private inference: party 0's trained model on party 1's inputs; only party 1 gets the predictions.

    mpc launch -n 2 scripts/private_inference.py          # party 0: the models; party 1: the inputs
    mpc launch -n 3 scripts/private_inference.py --stats  # party 2 only helps compute
    python scripts/private_inference.py --parties 2       # the same through mpc.run

Who holds what: party 0 trains two models in plaintext torch on its data
(scikit-learn's digits, the 1438 training rows of the 80/20 split): an MLP
(64-64-10) and a small CNN with a residual block (conv 1->8, conv 8->8 added to
its input, max pool, linear).  It imports each with
``mpc.nn.from_torch(model, owner=0)``; the other parties pass ``None`` and
receive only the architecture (public metadata), never a weight.  Party 1
holds the inputs (the 359 test images) and shares them; the model runs on
secret inputs with secret weights, and the predicted classes are revealed to
party 1 alone (``reveal(to=1)``).  Party 0 learns nothing about the inputs or
the outputs, party 1 nothing about the weights beyond the predictions.

The check: party 1 compares the predicted classes with plaintext torch's.  It
can do so here only because party 0's training is deterministic and uses the
public data set and seed: party 1 retrains the same models in plaintext for
this comparison alone (in real use it has no access to the weights).
"""

from __future__ import annotations

import sys

import torch
from _common import SEED, Meter, load, main, parser, plaintext_epoch, say, traffic

import mpc


class ResidualCNN(torch.nn.Module):
    """A small CNN with a residual block, for 1 x 8 x 8 images (torch.fx traces it for from_torch)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h) + h)  # the residual block
        return self.fc(torch.flatten(self.pool(h), 1))


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


MODELS = {"MLP 64-64-10": (mlp, (-1, 64)), "CNN with a residual block": (ResidualCNN, (-1, 1, 8, 8))}


def train_plaintext(make, shape, data, epochs: int, lr: float) -> torch.nn.Module:
    """Party 0's plaintext training (deterministic: public seed, fixed batches, float32 torch on the CPU)."""
    torch.manual_seed(SEED)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    x = data.x_train.float().reshape(shape)
    for epoch in range(epochs):
        plaintext_epoch(model, opt, torch.nn.functional.cross_entropy, x, data.y_train, len(x), 32, epoch)
    return model.eval()


def party(ctx: mpc.PartyContext, args) -> dict:
    rank = ctx.rank
    data = load("digits")
    m = 64 if args.quick else len(data.x_test)
    epochs = 2 if args.quick else args.epochs
    if rank == 0:
        say(f"party 0 trains in plaintext on its {len(data.x_train)} digits ({epochs} epochs) and shares the models; "
            f"party 1 shares {m} test images and receives the predictions; protocol {ctx.config.protocol}")  # fmt: skip
    results = {}
    for name, (make, shape) in MODELS.items():
        model = train_plaintext(make, shape, data, epochs, args.lr) if rank == 0 else None
        meter = Meter(ctx)
        secret = mpc.nn.from_torch(model, owner=0)  # party 0's weights, shared; the others pass None
        secret.eval()
        x = mpc.share(data.x_test[:m].reshape(shape) if rank == 1 else None, owner=1)  # party 1's inputs
        shared = meter.stop()
        meter.start()
        predicted = []
        with mpc.no_grad():
            for start in range(0, m, args.batch):
                predicted.append(secret(x[start : start + args.batch]).argmax(1).reveal(to=1))  # to party 1 only
        inference = meter.stop()
        out = {"share": shared, "inference": inference}
        if rank == 1:
            got = torch.cat(predicted)
            reference = train_plaintext(make, shape, data, epochs, args.lr)  # for the check only (docstring)
            with torch.no_grad():
                want = reference(data.x_test[:m].float().reshape(shape)).argmax(1)
            out["agree"] = (got == want).double().mean().item()
            out["private"] = (got == data.y_test[:m]).double().mean().item()
            out["plaintext"] = (want == data.y_test[:m]).double().mean().item()
            say(f"{name}: predicted class equal to plaintext torch's on {int((got == want).sum())}/{m} test images "
                f"({out['agree']:.2%}); accuracy private {out['private']:.4f}, plaintext {out['plaintext']:.4f}; "
                f"inference {inference['seconds']:.1f} s")  # fmt: skip
        elif rank == 0:
            say(f"{name}: party 0 shared its weights and received no output")
        if args.stats:
            say(f"party {rank}, {name}: setup (sharing the model and the inputs) {traffic(shared)}; "
                f"inference of {m} images in batches of {args.batch} {traffic(inference)}")  # fmt: skip
        results[name] = out
    return {"party": rank, "models": results}


if __name__ == "__main__":
    sys.exit(main(party, parser(__doc__, epochs=10, batch=128, lr=0.05)))
