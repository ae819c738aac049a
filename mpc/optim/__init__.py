"""``mpc.optim``: torch's optimizers on secret parameters (public hyperparameters)."""

from __future__ import annotations

from .adam import Adam
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam"]
