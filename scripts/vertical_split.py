"""Vertical split: parties hold different feature columns of the same rows, another party the labels.

    mpc launch -n 2 scripts/vertical_split.py          # party 0: top half of each image; party 1: bottom half + labels
    mpc launch -n 3 scripts/vertical_split.py --stats  # parties 0, 1: the two halves; party 2: the labels
    python scripts/vertical_split.py --parties 3       # the same through mpc.run

Who holds what: every party knows the row order (the same 1797 scikit-learn
digits, 80/20 split, standardised), but each holds only some columns of them.
The 64 pixel columns are cut into blocks of whole image rows, one block per
feature party (with 2 parties, party 0 the top half and party 1 the bottom
half; with N >= 3, parties 0..N-2 the blocks); the last party holds the
labels (class indices, one-hot encoded at that party).  Each party shares
only its own columns, of the training and of the test rows.

The model: the first layer takes the secret feature blocks concatenated with
``mpc.cat`` (local), which is the same product as a first layer split by
feature blocks (``x W^T = sum_k x_k W_k^T``) at one Beaver product instead of
one per block; then the MLP of ``train_digits.py`` (64-32-10, ReLU), trained
with ``mpc.optim.SGD`` (momentum 0.9) on ``mpc.nn.CrossEntropyLoss``.  Initial
weights: torch's default under the public seed 0, shared by party 0 with
``mpc.nn.from_torch``.

Revealed: the mean loss of every few batches to ``--loss-to`` (the label
party by default) and, after each epoch, the predicted classes of the test
rows to the label party, which holds the test labels and prints the
accuracy.  Its plaintext baseline (torch float64, same initial weights,
hyperparameters and batches) is computed from the public data set for
comparison only.
"""

from __future__ import annotations

import copy
import sys

import torch
from _common import (
    SEED,
    Meter,
    epoch_line,
    load,
    main,
    one_hot,
    parser,
    plaintext_epoch,
    say,
    summary,
    traffic,
    train_epoch,
    update,
)

import mpc

HIDDEN = 32
MOMENTUM = 0.9


def column_blocks(world: int) -> list[torch.Tensor]:
    """The pixel columns of each feature party: whole image rows (8 pixels each), as even as possible."""
    holders = max(2, world - 1)
    cuts = [round(8 * k / holders) * 8 for k in range(holders + 1)]
    return [torch.arange(cuts[k], cuts[k + 1]) for k in range(holders)]


def share_columns(ctx: mpc.PartyContext, blocks: list[torch.Tensor], x: torch.Tensor) -> mpc.SecretTensor:
    """Each feature party shares only its own columns; the blocks are concatenated along the features (local)."""
    pieces = [mpc.share(x[:, cols] if k == ctx.rank else None, owner=k) for k, cols in enumerate(blocks)]
    return mpc.cat(pieces, dim=1)


def party(ctx: mpc.PartyContext, args) -> dict:
    rank, world = ctx.rank, ctx.world_size
    data = load("digits")
    n = len(data.x_train) // 4 if args.quick else len(data.x_train)
    epochs = 1 if args.quick else args.epochs
    blocks = column_blocks(world)
    labels_at = world - 1
    if rank == 0:
        held = "; ".join(f"party {k} pixel columns {int(c[0])}..{int(c[-1])}" for k, c in enumerate(blocks))
        say(f"digits, {n} training and {len(data.x_test)} test rows, split by columns: {held}; "
            f"party {labels_at} the labels")  # fmt: skip
        say(f"MLP 64-{HIDDEN}-10 on the concatenated blocks, SGD lr {args.lr} momentum {MOMENTUM}, "
            f"batch {args.batch}, {epochs} epochs, protocol {ctx.config.protocol}")  # fmt: skip

    # Every column block and the labels come from their holder only.
    x = share_columns(ctx, blocks, data.x_train[:n])
    x_test = share_columns(ctx, blocks, data.x_test)
    t = mpc.share(one_hot(data.y_train[:n], 10) if rank == labels_at else None, owner=labels_at)

    torch.manual_seed(SEED)
    net = torch.nn.Sequential(torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10))
    model = mpc.nn.from_torch(net if rank == 0 else None, owner=0)
    opt = mpc.optim.SGD(model.parameters(), lr=args.lr, momentum=MOMENTUM)
    loss_fn = mpc.nn.CrossEntropyLoss()

    def step(rows: torch.Tensor) -> mpc.SecretTensor:
        opt.zero_grad()
        return update(opt, loss_fn(model(x[rows]), t[rows]), args.clip)

    if rank == labels_at:  # the plaintext baseline, from the public data set
        ref = copy.deepcopy(net).double()
        ref_opt = torch.optim.SGD(ref.parameters(), lr=args.lr, momentum=MOMENTUM)

    history, run = [], Meter(ctx)
    for epoch in range(epochs):
        train_traffic = train_epoch(ctx, args, epoch, epochs, n, step)
        meter = Meter(ctx)
        with mpc.no_grad():
            predicted = model(x_test).argmax(1).reveal(to=labels_at)  # the agreed output, to the label party
        eval_traffic = meter.stop()
        compared = None
        if rank == labels_at:
            plaintext_epoch(ref, ref_opt, torch.nn.functional.cross_entropy, data.x_train, data.y_train, n,
                            args.batch, epoch, args.clip)  # fmt: skip
            with torch.no_grad():
                compared = (predicted, ref(data.x_test).argmax(1), data.y_test)
        line = epoch_line(args, rank, epoch, train_traffic, eval_traffic, compared)
        history.append(line)

    total = run.stop()
    if rank == labels_at:
        summary(ctx, "MLP on digits (vertical split)", epochs, total["seconds"], history[-1]["private"],
                history[-1]["plaintext"])  # fmt: skip
    if args.stats:
        say(f"party {rank}, whole run: {traffic(total)}")
    return {"party": rank, "history": history, "total": total}


if __name__ == "__main__":
    ap = parser(__doc__, epochs=3, batch=32, lr=0.05)
    ap.set_defaults(loss_to="last")
    sys.exit(main(party, ap))
