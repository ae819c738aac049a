"""``mpc.nn``: torch's layers, losses and module protocol on secret tensors, and the bridge to torch.

Layers (``Linear``, ``Conv2d``, activations, pools, ``BatchNorm1d/2d``,
``Flatten``, ``Dropout``) take torch's arguments and defaults; their
parameters are secret tensors shared by a party (see ``mpc.nn.module`` for
initialisation).  ``from_torch(module, owner=k)`` turns a plaintext torch
model held by party k into a secret one of the same structure, and
``model.reveal(to=k)`` gives party k a plaintext torch module back.
"""

from __future__ import annotations

from . import utils
from .batchnorm import BatchNorm1d, BatchNorm2d
from .convert import GraphModule, from_torch
from .dropout import Dropout
from .layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    Conv2d,
    Flatten,
    Linear,
    LogSoftmax,
    MaxPool2d,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from .loss import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from .module import Identity, Module, Parameter, Sequential

__all__ = [
    "Module",
    "Parameter",
    "Sequential",
    "Identity",
    "Linear",
    "Conv2d",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "LogSoftmax",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "Flatten",
    "Dropout",
    "MSELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "from_torch",
    "GraphModule",
    "utils",
]
