"""Pieces the research scripts share: data sets, dealing rows, a progress bar, per-epoch traffic, starting parties.

Not a script itself: ``train_digits.py``, ``horizontal_logreg.py``,
``vertical_split.py`` and ``private_inference.py`` import it (their directory
is on ``sys.path`` under ``python scripts/X.py`` and under ``mpc launch``).

Every script runs two ways with the same party function ``party(ctx, args)``:

* ``mpc launch -n N scripts/X.py [options]``: one process per party plus the
  dealer; each party calls ``mpc.init()``;
* ``python scripts/X.py --parties N [options]``: the same through ``mpc.run``.

The protocol family is the launcher's (``mpc launch --protocol plaintext``) or
``--protocol`` under ``mpc.run``.  Each party prints its own lines (under
``mpc launch`` prefixed with ``[party k]``).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import mpc

SEED = 0  # the public seed of the shuffle, the batch order and (where a script says so) the initial weights


# ----- data ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """A public 80/20 split, features standardised with the training rows' mean and deviation."""

    x_train: torch.Tensor  # float64
    y_train: torch.Tensor  # int64 class indices
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def load(name: str) -> Split:
    """scikit-learn's ``digits`` (1797 x 64, 10 classes) or ``breast_cancer`` (569 x 30, 2 classes).

    The rows are shuffled by a public permutation (seed ``SEED``) and split
    80/20; the standardisation uses the training rows' statistics (constant
    pixels keep a deviation of 1).  The parties agree on these statistics
    beforehand (or compute them jointly, as ``scripts/demo.py`` does).
    """
    from sklearn import datasets

    loaders = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer}
    data = loaders[name]()
    x = torch.tensor(data.data, dtype=torch.float64)
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))
    x, y = x[order], y[order]
    n = round(0.8 * len(x))
    mean, std = x[:n].mean(0), x[:n].std(0)
    std[std == 0] = 1.0
    x = (x - mean) / std
    return Split(x[:n], y[:n], x[n:], y[n:])


def deal(n: int, world: int) -> list[torch.Tensor]:
    """The rows each party holds in a horizontal split: row i goes to party i mod world."""
    rows = torch.arange(n)
    return [rows[rows % world == k] for k in range(world)]


def share_rows(ctx: mpc.PartyContext, parts: list[torch.Tensor], *tables: torch.Tensor) -> list[mpc.SecretTensor]:
    """Each party shares its own rows of each table; the results are the rows of every party, in owner order.

    A party's input is ``table[parts[rank]]`` alone; for every other owner it
    passes ``None`` and learns only the shape.
    """
    out = []
    for table in tables:
        pieces = [mpc.share(table[parts[k]] if k == ctx.rank else None, owner=k) for k in range(ctx.world_size)]
        out.append(mpc.cat(pieces) if len(pieces) > 1 else pieces[0])
    return out


def one_hot(y: torch.Tensor, classes: int) -> torch.Tensor:
    """Class indices as float64 one-hot rows: the owner encodes its labels locally, so no secret equality is needed."""
    return torch.nn.functional.one_hot(y, classes).to(torch.float64)


def batches(n: int, batch: int, epoch: int) -> list[torch.Tensor]:
    """The public batch order of an epoch (a permutation seeded by ``SEED`` and the epoch); the last batch may be short."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED + 1 + epoch))
    return [order[i : i + batch] for i in range(0, n, batch)]


# ----- what a party sees ----------------------------------------------------------------------------------


class _Lines:
    """A file for tqdm when stdout is not a terminal (``mpc launch`` pipes every party's output).

    The launcher prints a node's output line by line after its prefix, and of
    a line redrawn with carriage returns only what it ends as, so tqdm's
    in-place redraws would show nothing until the epoch ends; this writes each
    redraw as its own line instead (tqdm's ``mininterval`` keeps them few),
    skipping repeats.
    """

    def __init__(self, out: Any) -> None:
        self.out, self.last = out, ""

    def write(self, s: str) -> None:
        for piece in s.replace("\r", "\n").split("\n"):
            piece = piece.rstrip()
            if piece and piece != self.last:
                self.out.write(piece + "\n")
                self.last = piece

    def flush(self) -> None:
        self.out.flush()


class Progress:
    """One epoch's progress bar at one party: tqdm if it is installed, else a plain line every few batches."""

    def __init__(self, total: int, desc: str, show: bool) -> None:
        self.total, self.desc, self.show, self.done, self.loss = total, desc, show, 0, None
        self.bar = None
        if not show:
            return
        try:
            from tqdm import tqdm
        except ImportError:  # the `demo` extra installs it; plain lines otherwise
            return
        # One bar per process: a thread lock is enough, and tqdm's default multiprocessing lock would leave a
        # semaphore behind when mpc.run stops a finished party process.
        tqdm.set_lock(threading.RLock())
        tty = sys.stdout.isatty()
        self.bar = tqdm(total=total, desc=desc, unit="batch", file=sys.stdout if tty else _Lines(sys.stdout),
                        mininterval=0.2 if tty else 3.0, dynamic_ncols=tty, ncols=None if tty else 90)  # fmt: skip

    def update(self, loss: float | None = None) -> None:
        self.done += 1
        if loss is not None:
            self.loss = loss
        if self.bar is not None:
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.update(1)
        elif self.show and loss is not None:
            print(f"{self.desc}: {self.done}/{self.total} batches, loss {loss:.4f}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Meter:
    """This party's rounds, bytes and seconds over a stretch of the program (from ``ctx.stats``)."""

    def __init__(self, ctx: mpc.PartyContext) -> None:
        self.ctx = ctx
        self.start()

    def _now(self) -> tuple[float, int, int, int]:
        s = self.ctx.stats
        return time.perf_counter(), s.rounds, s.bytes_sent, s.dealer_bytes_recv

    def start(self) -> None:
        self.t0 = self._now()

    def stop(self) -> dict[str, float]:
        t1 = self._now()
        d = [b - a for a, b in zip(self.t0, t1)]
        return {"seconds": d[0], "rounds": d[1], "bytes_sent": d[2], "dealer_bytes": d[3]}


def train_epoch(ctx: mpc.PartyContext, args: argparse.Namespace, epoch: int, epochs: int, n: int,
                step: Callable[[torch.Tensor], mpc.SecretTensor], first: int = 0,
                after: Callable[[int], Any] | None = None) -> dict[str, float]:  # fmt: skip
    """One epoch of ``step(rows)`` (zero_grad, forward, backward, optimizer step; returns the secret loss).

    Batches follow the public order of ``batches``, from batch ``first`` on (a
    resumed run); ``after(i)`` runs after batch i (a checkpointer).  The loss is
    an agreed output only if ``--loss-to`` names a party: the sum of every
    ``--loss-every`` batch losses (secret additions, free) is revealed to that
    party alone, which shows the mean on its progress bar (the bar is party
    0's when no loss is revealed).  Returns this party's traffic over the epoch.
    """
    lp = loss_party(args, ctx.world_size)
    steps = batches(n, args.batch, epoch)
    bar = Progress(len(steps), f"epoch {epoch + 1}/{epochs}", show=ctx.rank == (0 if lp is None else lp))
    bar.done = first
    if bar.bar is not None and first:
        bar.bar.update(first)
    meter = Meter(ctx)
    window, count = None, 0
    for i, rows in enumerate(steps):
        if i < first:
            continue
        loss = step(rows)
        shown = None
        if lp is not None:
            window = loss.detach() if window is None else window + loss.detach()
            count += 1
            if count == args.loss_every or i == len(steps) - 1:
                total = window.reveal(to=lp)
                shown = None if total is None else float(total) / count
                window, count = None, 0
                if shown is not None and abs(shown) > ctx.encoder.bound / 2**10:
                    warnings.warn(
                        f"the revealed training loss {shown:.4g} is within a factor 1024 of the fixed-point range "
                        f"(|v| < {ctx.encoder.bound:.3g}): an intermediate has probably overflowed; lower --lr, "
                        "clip the gradients (--clip) or dry-run with --protocol plaintext to find where",
                        mpc.FixedPointWarning,
                        stacklevel=2,
                    )
        bar.update(shown)
        if after is not None:
            after(i)
    bar.close()
    return meter.stop()


def update(opt: mpc.optim.Optimizer, loss: mpc.SecretTensor, clip: float | None) -> mpc.SecretTensor:
    """``loss.backward()``, the optional clipping (``--clip``), ``opt.step()``; returns the loss."""
    loss.backward()
    if clip:
        mpc.nn.utils.clip_grad_value_([p for g in opt.param_groups for p in g["params"]], clip)
    opt.step()
    return loss


def plaintext_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable[..., torch.Tensor],
                    x: torch.Tensor, t: torch.Tensor, n: int, batch: int, epoch: int,
                    clip: float | None = None) -> None:  # fmt: skip
    """The baseline's epoch: the same batches (and ``clip``) as ``train_epoch``, in torch."""
    for rows in batches(n, batch, epoch):
        opt.zero_grad()
        loss_fn(model(x[rows]), t[rows]).backward()
        if clip:
            torch.nn.utils.clip_grad_value_(model.parameters(), clip)
        opt.step()


def epoch_line(args: argparse.Namespace, rank: int, epoch: int, train_traffic: dict, eval_traffic: dict,
               compared: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> dict:  # fmt: skip
    """One epoch's record and report; ``compared`` = (private, plaintext predictions, labels) where they are held."""
    line: dict[str, Any] = {"epoch": epoch + 1, "train": train_traffic, "eval": eval_traffic}
    if compared is not None:
        predicted, plain, labels = compared
        line["private"] = (predicted == labels).double().mean().item()
        line["plaintext"] = (plain == labels).double().mean().item()
        line["agree"] = (predicted == plain).double().mean().item()
        say(f"epoch {epoch + 1}: test accuracy  private {line['private']:.4f}   plaintext {line['plaintext']:.4f}"
            f"   (same predicted class on {line['agree']:.1%} of the test rows)")  # fmt: skip
    if args.stats:
        say(f"party {rank}, epoch {epoch + 1}: training {traffic(train_traffic)}; "
            f"test predictions {traffic(eval_traffic)}")  # fmt: skip
    return line


def summary(ctx: mpc.PartyContext, what: str, epochs: int, seconds: float, private: float, plain: float) -> None:
    say(f"\n{what}, {ctx.world_size} parties ({ctx.config.protocol}), {epochs} epochs in {seconds:.0f} s:")
    say(f"  test accuracy, private training:  {private:.4f}")
    say(f"  test accuracy, plaintext torch:   {plain:.4f}   (same seeds, initial weights and batches; computed "
        "from the public data set)")  # fmt: skip
    say(f"  difference: {100 * (private - plain):+.2f} points")


def traffic(m: dict[str, float]) -> str:
    dealer = f", {m['dealer_bytes'] / 1e6:.1f} MB from the dealer" if m["dealer_bytes"] else ""
    return f"{m['rounds']:.0f} rounds, {m['bytes_sent'] / 1e6:.1f} MB sent{dealer}, {m['seconds']:.1f} s"


def say(*parts: Any) -> None:
    print(*parts, flush=True)


# ----- starting parties -------------------------------------------------------------------------------------


def parser(doc: str, epochs: int, batch: int, lr: float) -> argparse.ArgumentParser:
    """The options every training script takes (a script adds its own)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(doc.splitlines()[1:]))  # fmt: skip
    ap.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default {epochs})")
    ap.add_argument("--batch", type=int, default=batch, help=f"batch size (default {batch})")
    ap.add_argument("--lr", type=float, default=lr, help=f"learning rate (default {lr})")
    ap.add_argument("--stats", action="store_true", help="print rounds, bytes and seconds per epoch at every party")
    ap.add_argument("--quick", action="store_true", help="a fast run: one epoch on a quarter of the training rows")
    ap.add_argument("--clip", type=float, default=None, metavar="C",
                    help="clamp every gradient to [-C, C] before each step (mpc.nn.utils.clip_grad_value_; "
                         "4 rounds per step; default: no clipping)")  # fmt: skip
    ap.add_argument("--loss-to", default="0", metavar="K|last|none",
                    help="the party that receives the training loss (its progress bar shows it); 'last' is party "
                         "N-1, 'none' reveals no loss (default %(default)s)")  # fmt: skip
    ap.add_argument("--loss-every", type=int, default=5, metavar="K",
                    help="reveal the mean loss of every K batches to --loss-to (default 5)")  # fmt: skip
    ap.add_argument("--parties", type=int, default=2, help="parties under mpc.run (ignored under mpc launch)")
    ap.add_argument("--protocol", default="additive-dealer", help="protocol family under mpc.run (mpc launch has "
                    "its own --protocol); 'plaintext' is NOT secure, for dry runs")  # fmt: skip
    return ap


def add_checkpoint_options(ap: argparse.ArgumentParser) -> None:
    """``--checkpoint DIR`` and ``--checkpoint-every K`` (a script that checkpoints with ``checkpointer``)."""
    ap.add_argument("--checkpoint", metavar="DIR", default=None,
                    help="every --checkpoint-every steps, each party writes its own shares of the model and the "
                         "optimizer state (no input, no other party's share) to DIR/party<k>/step-N.mpc, keeping the "
                         "newest 3; after a crash, `mpc launch --resume DIR ... (the same options)` continues from "
                         "the newest step that every party has (default: no checkpoints; under --resume DIR the "
                         "checkpoints go on in DIR)")  # fmt: skip
    ap.add_argument("--checkpoint-every", type=_positive, default=20, metavar="K",
                    help="training steps (batches) between checkpoints (default %(default)s); a resumed run "
                         "repeats at most K steps")  # fmt: skip


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a positive number of steps is needed, got {text!r}")
    return int(text)


def checkpointer(ctx: mpc.PartyContext, args: argparse.Namespace, **objects: Any) -> mpc.Checkpointer:
    """The script's checkpointer (off without --checkpoint and --resume); ``resume()`` says where to start."""
    return mpc.Checkpointer(args.checkpoint, every=args.checkpoint_every, ctx=ctx, **objects)


def loss_party(args: argparse.Namespace, world: int) -> int | None:
    if str(args.loss_to).lower() == "none":
        return None
    k = world - 1 if args.loss_to == "last" else int(args.loss_to) if str(args.loss_to).isdigit() else -1
    if not 0 <= k < world:
        raise ValueError(f"--loss-to must be a party id in 0..{world - 1}, 'last' or 'none', got {args.loss_to!r}")
    return k


def main(party: Callable[[mpc.PartyContext, argparse.Namespace], Any], ap: argparse.ArgumentParser,
         argv: list[str] | None = None) -> int:  # fmt: skip
    """Run ``party(ctx, args)`` at this party (under ``mpc launch`` / ``mpc party``) or in N parties (``mpc.run``)."""
    args = ap.parse_args(argv)
    launched = "MPC_RANK" in os.environ  # started by `mpc launch` / `mpc party`
    ctx = mpc.init() if launched else None
    try:
        loss_party(args, ctx.world_size if ctx is not None else args.parties)  # every party stops here alike
    except ValueError as exc:
        ap.error(str(exc))
    if ctx is not None:
        party(ctx, args)
        return 0
    if args.protocol == "plaintext":
        say("WARNING: --protocol plaintext runs every value in the clear (a dry run, NOT secure)")
    mpc.run(functools.partial(party, args=args), parties=args.parties, protocol=args.protocol, timeout=120.0)
    return 0
