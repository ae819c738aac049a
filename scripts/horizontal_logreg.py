"""Horizontal split: logistic regression on breast-cancer data whose rows are spread over the parties.

    mpc launch -n 2 scripts/horizontal_logreg.py          # 2 parties and the dealer
    mpc launch -n 3 scripts/horizontal_logreg.py --stats  # 3 parties; rounds, bytes and seconds per epoch
    python scripts/horizontal_logreg.py --parties 3       # the same through mpc.run

Who holds what: the script deals the 455 training rows of scikit-learn's
breast-cancer set (30 standardised features, 80/20 split) out, row i to party
i mod N; each party shares only its own rows and labels.  Party 0 also holds
the 114 test rows.  The model, ``Linear(30, 1)`` from torch's default
initialisation under the public seed 0 (party 0 shares it with
``mpc.nn.from_torch``), trains on the union of the rows with
``mpc.nn.BCEWithLogitsLoss`` and ``mpc.optim.SGD`` through autograd; the
weights stay secret-shared.

Revealed: the mean loss of every few batches to ``--loss-to`` (party 0 by
default, ``none`` for no party) and, after each epoch, the predicted classes
of the test rows to party 0.  The plaintext baseline (party 0, torch float64,
same initial weights, hyperparameters and batches) is computed from the public
data set for comparison only.
"""

from __future__ import annotations

import copy
import sys

import torch
from _common import (
    SEED,
    Meter,
    deal,
    epoch_line,
    load,
    main,
    parser,
    plaintext_epoch,
    say,
    share_rows,
    summary,
    traffic,
    train_epoch,
    update,
)

import mpc


def party(ctx: mpc.PartyContext, args) -> dict:
    rank, world = ctx.rank, ctx.world_size
    data = load("breast_cancer")
    n = len(data.x_train) // 4 if args.quick else len(data.x_train)
    epochs = 1 if args.quick else args.epochs
    parts = deal(n, world)
    features = data.x_train.shape[1]
    if rank == 0:
        held = ", ".join(f"party {k} {len(p)}" for k, p in enumerate(parts))
        say(f"breast cancer: {n} training rows dealt out, row i to party i mod {world} ({held}); "
            f"party 0 also holds the {len(data.x_test)} test rows")  # fmt: skip
        say(f"logistic regression on {features} features, SGD lr {args.lr}, batch {args.batch}, {epochs} epochs, "
            f"protocol {ctx.config.protocol}")  # fmt: skip

    labels = data.y_train[:n].to(torch.float64).reshape(-1, 1)
    x, y = share_rows(ctx, parts, data.x_train[:n], labels)  # each party's own rows only
    x_test = mpc.share(data.x_test if rank == 0 else None, owner=0)

    torch.manual_seed(SEED)
    net = torch.nn.Sequential(torch.nn.Linear(features, 1))
    model = mpc.nn.from_torch(net if rank == 0 else None, owner=0)
    opt = mpc.optim.SGD(model.parameters(), lr=args.lr)
    loss_fn = mpc.nn.BCEWithLogitsLoss()

    def step(rows: torch.Tensor) -> mpc.SecretTensor:
        opt.zero_grad()
        return update(opt, loss_fn(model(x[rows]), y[rows]), args.clip)

    if rank == 0:  # the plaintext baseline, from the public data set
        order = torch.cat(parts)
        xp, yp = data.x_train[:n][order], labels[order]
        ref = copy.deepcopy(net).double()
        ref_opt = torch.optim.SGD(ref.parameters(), lr=args.lr)

    history, run = [], Meter(ctx)
    for epoch in range(epochs):
        train_traffic = train_epoch(ctx, args, epoch, epochs, n, step)
        meter = Meter(ctx)
        with mpc.no_grad():
            predicted = (model(x_test) > 0).reveal(to=0)  # the agreed output: test predictions, to party 0
        eval_traffic = meter.stop()
        compared = None
        if rank == 0:
            plaintext_epoch(ref, ref_opt, torch.nn.functional.binary_cross_entropy_with_logits, xp, yp, n,
                            args.batch, epoch, args.clip)  # fmt: skip
            with torch.no_grad():
                plain = ref(data.x_test).reshape(-1) > 0
            compared = (predicted.reshape(-1).bool().long(), plain.long(), data.y_test)
        line = epoch_line(args, rank, epoch, train_traffic, eval_traffic, compared)
        history.append(line)

    total = run.stop()
    if rank == 0:
        summary(ctx, "Logistic regression on breast cancer (horizontal split)", epochs, total["seconds"],
                history[-1]["private"], history[-1]["plaintext"])  # fmt: skip
    if args.stats:
        say(f"party {rank}, whole run: {traffic(total)}")
    return {"party": rank, "history": history, "total": total}


if __name__ == "__main__":
    sys.exit(main(party, parser(__doc__, epochs=5, batch=32, lr=0.1)))
