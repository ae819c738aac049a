"""Private training: an MLP on scikit-learn's digits, trained across parties, beside the same training in plaintext.

    mpc launch -n 2 scripts/train_digits.py              # 2 parties and the dealer, one process each
    mpc launch -n 3 scripts/train_digits.py --stats      # 3 parties; rounds, bytes and seconds per epoch
    mpc launch -n 2 --protocol plaintext scripts/train_digits.py   # a dry run in the clear (NOT secure)
    python scripts/train_digits.py --parties 2           # the same through mpc.run
    mpc launch -n 2 scripts/train_digits.py --checkpoint ckpt --checkpoint-every 20   # checkpoints in ckpt/
    mpc launch -n 2 --resume ckpt scripts/train_digits.py --checkpoint-every 20       # after a crash: go on

Who holds what (a horizontal split): the script deals the 1438 training rows
out, row i to party i mod N; each party shares only its own rows (features
and one-hot labels), so the training set is the union of N private
partitions.  Party 0 also holds the test set (359 rows).  The model
(64-32-10, ReLU) starts from torch's default initialisation under the public
seed 0, drawn by party 0 and shared with ``mpc.nn.from_torch(owner=0)``;
every weight stays secret-shared while it trains with ``mpc.optim.SGD``
(momentum 0.9) on ``mpc.nn.CrossEntropyLoss``, through autograd.

What is revealed, and to whom: the mean training loss over every few batches
to the party named by ``--loss-to`` (party 0 by default; ``none`` reveals
none), which shows it on its progress bar; after each epoch the predicted
classes of the test set to party 0, which prints the test accuracy.  Nothing
else is opened.

Checkpoints (``--checkpoint DIR``): every ``--checkpoint-every`` steps each
party writes its own shares of the weights and of SGD's momentum buffers to
``DIR/party<k>/`` (``mpc.Checkpointer``).  Started with ``mpc launch --resume
DIR`` and otherwise the same options, the parties agree on the newest step
that every party has, restore it and go on from that epoch and batch (the
batch order is fixed per epoch); the result is the uninterrupted run's up to
fixed-point noise.

The plaintext baseline: party 0 trains the same torch model in float64 with
the same initial weights, hyperparameters and batches, on the union of the
rows.  It is computed from the public data set for comparison only: in a real
deployment no party holds the others' rows.
"""

from __future__ import annotations

import copy
import sys

import torch
from _common import (
    SEED,
    Meter,
    add_checkpoint_options,
    batches,
    checkpointer,
    deal,
    epoch_line,
    load,
    main,
    one_hot,
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

HIDDEN = 32
MOMENTUM = 0.9


def torch_mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10))


def party(ctx: mpc.PartyContext, args) -> dict:
    rank, world = ctx.rank, ctx.world_size
    data = load("digits")
    n = len(data.x_train) // 4 if args.quick else len(data.x_train)
    epochs = 1 if args.quick else args.epochs
    parts = deal(n, world)
    if rank == 0:
        held = ", ".join(f"party {k} {len(p)}" for k, p in enumerate(parts))
        say(f"digits: {n} training rows dealt out, row i to party i mod {world} ({held}); "
            f"party 0 also holds the {len(data.x_test)} test rows")  # fmt: skip
        say(f"MLP 64-{HIDDEN}-10, SGD lr {args.lr} momentum {MOMENTUM}, batch {args.batch}, {epochs} epochs, "
            f"protocol {ctx.config.protocol}")  # fmt: skip

    # Each party shares only its own rows; the test set is party 0's.
    x, t = share_rows(ctx, parts, data.x_train[:n], one_hot(data.y_train[:n], 10))
    x_test = mpc.share(data.x_test if rank == 0 else None, owner=0)

    net = torch_mlp(SEED)
    model = mpc.nn.from_torch(net if rank == 0 else None, owner=0)
    opt = mpc.optim.SGD(model.parameters(), lr=args.lr, momentum=MOMENTUM)
    loss_fn = mpc.nn.CrossEntropyLoss()

    def step(rows: torch.Tensor) -> mpc.SecretTensor:
        opt.zero_grad()
        return update(opt, loss_fn(model(x[rows]), t[rows]), args.clip)

    ck = checkpointer(ctx, args, model=model, optimizer=opt)
    start = ck.resume()  # steps already done: 0, or the step every party has a checkpoint of (--resume)
    per_epoch = len(batches(n, args.batch, 0))
    first_epoch, first_batch = divmod(start, per_epoch)
    if start and rank == 0:
        say(f"resuming from step {start} (epoch {first_epoch + 1}, batch {first_batch}) of {ck.directory}")

    if rank == 0:  # the plaintext baseline (from the public data set; see the module docstring)
        order = torch.cat(parts)  # the secret rows' order: party 0's, then party 1's, ...
        xp, yp = data.x_train[:n][order], data.y_train[:n][order]
        ref = copy.deepcopy(net).double()
        ref_opt = torch.optim.SGD(ref.parameters(), lr=args.lr, momentum=MOMENTUM)
        for epoch in range(min(first_epoch, epochs)):  # what the interrupted run trained (deterministic)
            plaintext_epoch(ref, ref_opt, torch.nn.functional.cross_entropy, xp, yp, n, args.batch, epoch, args.clip)

    def evaluate(epoch: int, train_traffic: dict, baseline: bool) -> dict:
        meter = Meter(ctx)
        with mpc.no_grad():
            predicted = model(x_test).argmax(1).reveal(to=0)  # the agreed output: test predictions, to party 0
        eval_traffic = meter.stop()
        compared = None
        if rank == 0:
            if baseline:
                plaintext_epoch(ref, ref_opt, torch.nn.functional.cross_entropy, xp, yp, n, args.batch, epoch,
                                args.clip)  # fmt: skip
            with torch.no_grad():
                compared = (predicted, ref(data.x_test).argmax(1), data.y_test)
        return epoch_line(args, rank, epoch, train_traffic, eval_traffic, compared)

    history, run = [], Meter(ctx)
    for epoch in range(first_epoch, epochs):
        done = epoch * per_epoch  # steps before this epoch
        skip = first_batch if epoch == first_epoch else 0
        train_traffic = train_epoch(ctx, args, epoch, epochs, n, step, skip, lambda i, d=done: ck.step(d + i + 1))
        history.append(evaluate(epoch, train_traffic, baseline=True))
    if not history:  # resumed from the last step: only the evaluation is left
        history.append(evaluate(epochs - 1, Meter(ctx).stop(), baseline=False))

    total = run.stop()
    if rank == 0:
        summary(ctx, "MLP on digits", epochs, total["seconds"], history[-1]["private"], history[-1]["plaintext"])
    if args.stats:
        say(f"party {rank}, whole run: {traffic(total)}")
    return {"party": rank, "history": history, "total": total}


if __name__ == "__main__":
    ap = parser(__doc__, epochs=3, batch=32, lr=0.05)
    add_checkpoint_options(ap)
    sys.exit(main(party, ap))
