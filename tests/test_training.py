"""Issue 10, item 5: private training and inference on real data against plaintext torch.

Each test builds a plaintext torch model first (torch's default init under a
fixed seed); party 0 turns it into a secret model with ``mpc.nn.from_torch``
(so the secret and the plaintext runs start from the same weights, rounded to
the fixed-point grid), party 1 holds the data (training rows, labels, test
rows) and receives the predictions.  The plaintext baseline is the same model
in float64 torch, trained with the same optimizer, hyperparameters, batches
and batch order (a public permutation from a fixed seed).  Test accuracy is
measured on private predictions: party 1 shares the test rows, the secret
model computes a secret class (``argmax``, or ``logit > 0``) and only that is
opened, to party 1.

Bounds, as the issue states them (``|private - plaintext|`` in accuracy points):

* logistic regression, breast cancer (80/20 split, standardised): <= 1;
* MLP, digits: <= 2;
* CNN with two conv layers and max pooling, digits (a fixed subset of 500
  training images, 3 epochs): <= 3 after the same steps;
* inference of models trained in plaintext and imported with ``from_torch``
  (an MLP, and a CNN with a residual block): the predicted class equals
  torch's on >= 99% of the test set.

Each test also checks that the plaintext baseline learned something (a bound
well under its measured accuracy), so that agreeing with it means something.

Tier and cost: the secure family (additive shares with a dealer), 2 parties,
thread tier, except the MLP inference, which runs in real processes over
ZeroMQ (``mpc.run``).  Runtimes measured on the 2-core CI machine (loaded by
other jobs) are in each test's comment; the file took 42-73 s (load average 2.5-6).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import SECURE

import mpc
import mpc.nn as mnn

sklearn_datasets = pytest.importorskip("sklearn.datasets")
model_selection = pytest.importorskip("sklearn.model_selection")

SPLIT_SEED = 0  # the fixed 80/20 split
ORDER_SEED = 1  # the batch order (public)
# A receive timeout far above any step on a loaded machine: a lost message still fails the test long before the
# per-test pytest timeout would.
TIMEOUT = 60.0


# ----- data (loaded once per process, never at import) ---------------------------------------------------------


def _split(x, y):
    xtr, xte, ytr, yte = model_selection.train_test_split(x, y, test_size=0.2, random_state=SPLIT_SEED, stratify=y)
    return (torch.tensor(xtr, dtype=torch.float32), torch.tensor(ytr), torch.tensor(xte, dtype=torch.float32),
            torch.tensor(yte))  # fmt: skip


@functools.cache
def breast_cancer():
    """569 rows, 30 features: 455 train, 114 test, standardised with the training rows' mean and std."""
    d = sklearn_datasets.load_breast_cancer()
    xtr, ytr, xte, yte = _split(d.data, d.target)
    mean, std = xtr.mean(0), xtr.std(0)
    return (xtr - mean) / std, ytr, (xte - mean) / std, yte


@functools.cache
def digits():
    """1797 8x8 images (pixels 0..16 scaled to [0, 1]): 1437 train, 360 test."""
    d = sklearn_datasets.load_digits()
    return _split(d.data / 16.0, d.target)


def batches(n: int, batch: int, epochs: int) -> list[torch.Tensor]:
    """The public batch order: a fresh permutation of ``n`` rows per epoch, cut into batches (the last may be short)."""
    g = torch.Generator().manual_seed(ORDER_SEED)
    return [b for _ in range(epochs) for b in torch.randperm(n, generator=g).split(batch)]


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return (pred.reshape(-1).long() == labels.reshape(-1).long()).double().mean().item()


# ----- the plaintext baseline ----------------------------------------------------------------------------------


def plaintext_train(net, binary, x, y, order, lr, momentum):
    """The same model in float64 torch, trained with torch's SGD on the same batches in the same order."""
    ref = copy.deepcopy(net).double()
    opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=momentum)
    x = x.double()
    for idx in order:
        opt.zero_grad()
        out = ref(x[idx])
        if binary:
            loss = F.binary_cross_entropy_with_logits(out, y[idx].double().reshape(-1, 1))
        else:
            loss = F.cross_entropy(out, y[idx])
        loss.backward()
        opt.step()
    return ref


def plaintext_predict(model, x, binary):
    with torch.no_grad():
        out = model.double().eval()(x.double())
    return (out > 0).long().reshape(-1) if binary else out.argmax(1)


# ----- party programs (module level: mpc.run pickles them) ------------------------------------------------------


def _predict(ctx, model, x, binary):
    """Party 1 shares ``x``; the secret model's class (argmax, or logit > 0) is opened to party 1 only."""
    model.eval()
    with mpc.no_grad(ctx):
        xs = mpc.share(x if ctx.rank == 1 else None, owner=1, ctx=ctx)
        out = model(xs)
        pred = (out > 0).reshape(-1) if binary else out.argmax(dim=1)
        return pred.reveal(to=1)


def _train(ctx, net, binary, data, order, lr, momentum):
    """Party 0 owns the initial model, party 1 the data; train with secret SGD, then predict the test set privately.

    Labels are shared by party 1 as float targets: a (B, 1) column for BCE, one-hot rows for cross-entropy.
    """
    xtr, ytr, xte = data if ctx.rank == 1 else (None, None, None)
    model = mnn.from_torch(net if ctx.rank == 0 else None, owner=0)
    opt = mpc.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_fn = mnn.BCEWithLogitsLoss() if binary else mnn.CrossEntropyLoss()
    for idx in order:
        if ctx.rank == 1:
            xb = xtr[idx]
            tb = ytr[idx].float().reshape(-1, 1) if binary else F.one_hot(ytr[idx], 10).float()
        else:
            xb = tb = None
        xs = mpc.share(xb, owner=1)
        ts = mpc.share(tb, owner=1)
        opt.zero_grad()
        loss_fn(model(xs), ts).backward()
        opt.step()
    pred = _predict(ctx, model, xte, binary)
    return pred, model.reveal(to=0)


def _infer(ctx, net, x):
    """Private inference: party 0 owns ``net`` (trained in plaintext), party 1 the inputs and the predictions."""
    model = mnn.from_torch(net if ctx.rank == 0 else None, owner=0)
    return _predict(ctx, model, x if ctx.rank == 1 else None, binary=False)


# ----- helpers for the tests ---------------------------------------------------------------------------------------


def _weight_gap(revealed: nn.Module, ref: nn.Module) -> float:
    """Largest difference between the privately trained weights (opened to party 0) and the plaintext ones."""
    want = ref.state_dict()
    return max((v.double() - want[k]).abs().max().item() for k, v in revealed.state_dict().items())


def _train_and_compare(sim, net, binary, data, order, lr, momentum):
    xtr, ytr, xte, yte = data
    ref = plaintext_train(net, binary, xtr, ytr, order, lr, momentum)
    plain = accuracy(plaintext_predict(ref, xte, binary), yte)
    out = sim(
        functools.partial(_train, net=net, binary=binary, data=(xtr, ytr, xte), order=order, lr=lr, momentum=momentum),
        2,
        protocol=SECURE,
        timeout=TIMEOUT,
    )
    (pred0, revealed), (pred1, other) = out
    assert pred0 is None and other is None  # predictions only at party 1, the trained model only at party 0
    private = accuracy(pred1, yte)
    return private, plain, _weight_gap(revealed, ref)


def _torch_seeded(seed: int, make):
    torch.manual_seed(seed)  # torch's default init: the same initial weights for both runs
    return make()


# ----- private training -------------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_logistic_regression_breast_cancer_within_1_point(sim):
    # 2 epochs of 15 batches of 32 rows (30 steps), SGD lr 0.1 momentum 0.9. Measured: 4-6 s.
    xtr, ytr, xte, yte = breast_cancer()
    net = _torch_seeded(0, lambda: nn.Linear(30, 1))
    order = batches(len(xtr), 32, epochs=2)
    private, plain, gap = _train_and_compare(sim, net, True, (xtr, ytr, xte, yte), order, 0.1, 0.9)
    print(f"logistic regression: private {private:.4f}, plaintext {plain:.4f}, weight gap {gap:.2e}")
    assert plain >= 0.9, f"the plaintext baseline learned too little ({plain:.3f})"
    assert abs(private - plain) <= 0.01, f"private {private:.4f} vs plaintext {plain:.4f} (weights off by {gap:.2e})"


@pytest.mark.timeout(240)
def test_mlp_digits_within_2_points(sim):
    # 64-64-10 with ReLU, 2 epochs over the 1437 training images in batches of 32 (90 steps), SGD lr 0.1
    # momentum 0.9. Measured: 11-17 s.
    xtr, ytr, xte, yte = digits()
    net = _torch_seeded(1, lambda: nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)))
    order = batches(len(xtr), 32, epochs=2)
    private, plain, gap = _train_and_compare(sim, net, False, (xtr, ytr, xte, yte), order, 0.1, 0.9)
    print(f"MLP: private {private:.4f}, plaintext {plain:.4f}, weight gap {gap:.2e}")
    assert plain >= 0.9, f"the plaintext baseline learned too little ({plain:.3f})"
    assert abs(private - plain) <= 0.02, f"private {private:.4f} vs plaintext {plain:.4f} (weights off by {gap:.2e})"


def small_cnn() -> nn.Module:
    """Two conv layers with max pooling on 1x8x8 digits: 8@3x3 (pad 1), pool 2, 16@3x3 (pad 1), pool 2, fc 10."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 10),
    )  # fmt: skip


CNN_TRAIN_IMAGES = 500  # a fixed subset (the first 500 of the training split) keeps CI time low


@pytest.mark.timeout(240)
def test_cnn_digits_within_3_points(sim):
    # 3 epochs over 500 images in batches of 50 (30 steps), SGD lr 0.1 momentum 0.9; the full 360-image test set.
    # Pixels standardised with the subset's mean and std (party 1's preprocessing): without it this CNN needs
    # about three times the steps to learn as much. Measured: 14-37 s (the most sensitive to load).
    xtr, ytr, xte, yte = digits()
    xtr, ytr = xtr[:CNN_TRAIN_IMAGES], ytr[:CNN_TRAIN_IMAGES]
    mean, std = xtr.mean(), xtr.std()
    xtr, xte = ((xtr - mean) / std).reshape(-1, 1, 8, 8), ((xte - mean) / std).reshape(-1, 1, 8, 8)
    net = _torch_seeded(2, small_cnn)
    order = batches(len(xtr), 50, epochs=3)
    private, plain, gap = _train_and_compare(sim, net, False, (xtr, ytr, xte, yte), order, 0.1, 0.9)
    print(f"CNN: private {private:.4f}, plaintext {plain:.4f}, weight gap {gap:.2e}")
    assert plain >= 0.8, f"the plaintext baseline learned too little ({plain:.3f})"
    assert abs(private - plain) <= 0.03, f"private {private:.4f} vs plaintext {plain:.4f} (weights off by {gap:.2e})"


# ----- private inference of models trained in plaintext -----------------------------------------------------------


class ResidualCNN(nn.Module):
    """conv 8@3x3, then a residual block (two 8@3x3 convs added to their input), max pool 2, fc 10 (fx-traced)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.conv2(torch.relu(self.conv1(h))) + h)
        return self.fc(torch.flatten(self.pool(h), 1))


def trained_in_plaintext(make, seed: int, image: bool, epochs: int) -> nn.Module:
    """Party 0's model: trained in float32 torch on the whole digits training split (Adam, batches of 64)."""
    xtr, ytr, _, _ = digits()
    if image:
        xtr = xtr.reshape(-1, 1, 8, 8)
    net = _torch_seeded(seed, make)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for idx in batches(len(xtr), 64, epochs):
        opt.zero_grad()
        F.cross_entropy(net(xtr[idx]), ytr[idx]).backward()
        opt.step()
    return net.eval()


def _agreement(pred: torch.Tensor, model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        want = model(x).argmax(1)  # plaintext torch, as party 0 would run it
    return (pred.reshape(-1) == want).double().mean().item()


@pytest.mark.timeout(180)
def test_mlp_inference_in_processes_agrees_with_torch():
    # Real processes over ZeroMQ (sealed links): 2 parties and the dealer. Measured: 10-19 s, mostly process start-up.
    _, _, xte, yte = digits()
    net = trained_in_plaintext(lambda: nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), 3, False, 5)
    out = mpc.run(functools.partial(_infer, net=net, x=xte), parties=2, timeout=TIMEOUT, run_timeout=150)
    assert out[0] is None
    agree = _agreement(out[1], net, xte)
    print(f"MLP inference: agreement {agree:.4f}, private accuracy {accuracy(out[1], yte):.4f}")
    assert agree >= 0.99, f"private predictions equal torch's on only {agree:.2%} of the test set"


@pytest.mark.timeout(180)
# A trained weight or two below 2^-17 rounds to 0 when party 0 shares it (FixedPointWarning): expected, harmless.
@pytest.mark.filterwarnings("ignore:.*below half the fixed-point resolution")
def test_residual_cnn_inference_agrees_with_torch(sim):
    # fx-traced model with a residual block; the whole 360-image test set in one batch. Measured: 1-5 s.
    _, _, xte, yte = digits()
    xte = xte.reshape(-1, 1, 8, 8)
    net = trained_in_plaintext(ResidualCNN, 4, True, 3)
    out = sim(functools.partial(_infer, net=net, x=xte), 2, protocol=SECURE, timeout=TIMEOUT)
    assert out[0] is None
    agree = _agreement(out[1], net, xte)
    print(f"residual CNN inference: agreement {agree:.4f}, private accuracy {accuracy(out[1], yte):.4f}")
    assert agree >= 0.99, f"private predictions equal torch's on only {agree:.2%} of the test set"
