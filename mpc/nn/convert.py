"""From a plaintext torch model to a secret one and back, without ONNX.

``from_torch(module, owner=k)``: party k holds a ``torch.nn.Module``; every
other party passes a module of the same architecture (its weights are
ignored) or ``None``.  Party k describes the architecture as JSON (layer types,
hyperparameters, for a traced model its graph: no weights, no code, never
pickle) and sends it with one ``ctx.comm.exchange`` of a uint8 tensor; every
other party parses it with ``json`` (data only), validates it strictly against
the schema below (known layer types, typed hyperparameters in range, module
paths of identifiers, functions and methods from allow-lists, references to
earlier nodes only, at most 1 MiB), compares it with the description of its
own module if it gave one, and rebuilds the model.  Then every weight is
shared from party k (``mpc.share``: one metadata message each).

Two kinds of model:

* a tree of ``nn.Sequential`` and supported layers becomes the same tree of
  ``mpc.nn`` layers (module paths and ``state_dict`` keys as in torch);
* anything else is traced with ``torch.fx``: leaf modules must be supported
  layers, functions must be in the operation table (``mpc.ops``, reached
  through ``__torch_function__``) or ``operator``'s arithmetic and indexing,
  methods must be ``SecretTensor``'s; the graph then runs on secret tensors
  (``GraphModule``).  Residual blocks (``+`` of branches), ``torch.flatten``,
  ``view``/``reshape`` work this way.

Anything else raises ``MPCError`` naming the layer or function and where it
is (the module path, the fx node).  ``model.reveal(to=k)`` opens every weight
to party k in one round and returns a torch module: a copy of party k's own
module if it gave one, else one rebuilt from the description (a
``torch.nn.Sequential`` tree or a ``torch.fx.GraphModule``).
"""

from __future__ import annotations

import builtins
import json
import math
import operator
import re
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ..api import current_context
from ..context import Expect, PartyContext
from ..errors import MPCError, ProtocolError
from ..ops import TORCH_OPS, _torch_name, record
from ..tensor import SecretTensor
from .batchnorm import BatchNorm1d, BatchNorm2d
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
from .module import Identity, Module, Sequential, make_parameter

__all__ = ["from_torch", "GraphModule", "describe", "FORMAT", "MAX_DESCRIPTION_BYTES"]

FORMAT = "mpc-torch-model"
VERSION = 1
MAX_DESCRIPTION_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 20000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_]{1,100}$")


# ----- the schema ---------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(2**31) <= v <= 2**31


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _pair_of(low: int) -> Callable[[Any], Any]:
    def check(v: Any) -> tuple[int, int] | None:
        if _is_int(v):
            v = [v, v]
        if isinstance(v, list | tuple) and len(v) == 2 and all(_is_int(i) and i >= low for i in v):
            return (int(v[0]), int(v[1]))
        return None

    return check


def _ok(pred: Callable[[Any], bool], conv: Callable[[Any], Any] = lambda v: v) -> Callable[[Any], Any]:
    return lambda v: conv(v) if pred(v) else None


_INT = _ok(_is_int)
_POS = _ok(lambda v: _is_int(v) and v >= 1)
_BOOL = _ok(lambda v: isinstance(v, bool))
_NONNEG = _ok(lambda v: _num(v) and v >= 0, float)
_PROB = _ok(lambda v: _num(v) and 0 <= v <= 1, float)
_UNSET = object()


def _opt(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: _UNSET if v is None else check(v)


def _out_size(v: Any) -> Any:
    if _is_int(v) and v >= 1:
        return (v, v)
    if isinstance(v, list | tuple) and len(v) == 2 and all(o is None or (_is_int(o) and o >= 1) for o in v):
        return tuple(v)
    return None


_PAIR_POS, _PAIR_NONNEG = _pair_of(1), _pair_of(0)

# type name: (torch class, mpc class, {hyperparameter: checker}, has parameters)
LAYERS: dict[str, tuple[type[torch.nn.Module], type[Module], dict[str, Callable[[Any], Any]], bool]] = {
    "Linear": (torch.nn.Linear, Linear, {"in_features": _POS, "out_features": _POS, "bias": _BOOL}, True),
    "Conv2d": (
        torch.nn.Conv2d,
        Conv2d,
        {
            "in_channels": _POS,
            "out_channels": _POS,
            "kernel_size": _PAIR_POS,
            "stride": _PAIR_POS,
            "padding": _PAIR_NONNEG,
            "dilation": _PAIR_POS,
            "groups": _POS,
            "bias": _BOOL,
        },
        True,
    ),  # fmt: skip
    "ReLU": (torch.nn.ReLU, ReLU, {}, False),
    "Sigmoid": (torch.nn.Sigmoid, Sigmoid, {}, False),
    "Tanh": (torch.nn.Tanh, Tanh, {}, False),
    "Identity": (torch.nn.Identity, Identity, {}, False),
    "Softmax": (torch.nn.Softmax, Softmax, {"dim": _INT}, False),
    "LogSoftmax": (torch.nn.LogSoftmax, LogSoftmax, {"dim": _INT}, False),
    "MaxPool2d": (
        torch.nn.MaxPool2d,
        MaxPool2d,
        {"kernel_size": _PAIR_POS, "stride": _PAIR_POS, "padding": _PAIR_NONNEG, "dilation": _PAIR_POS},
        False,
    ),  # fmt: skip
    "AvgPool2d": (
        torch.nn.AvgPool2d,
        AvgPool2d,
        {"kernel_size": _PAIR_POS, "stride": _PAIR_POS, "padding": _PAIR_NONNEG, "divisor_override": _opt(_POS)},
        False,
    ),  # fmt: skip
    "AdaptiveAvgPool2d": (torch.nn.AdaptiveAvgPool2d, AdaptiveAvgPool2d, {"output_size": _out_size}, False),
    "BatchNorm1d": (
        torch.nn.BatchNorm1d,
        BatchNorm1d,
        {"num_features": _POS, "eps": _NONNEG, "momentum": _opt(_PROB), "affine": _BOOL, "track_running_stats": _BOOL},
        True,
    ),  # fmt: skip
    "BatchNorm2d": (
        torch.nn.BatchNorm2d,
        BatchNorm2d,
        {"num_features": _POS, "eps": _NONNEG, "momentum": _opt(_PROB), "affine": _BOOL, "track_running_stats": _BOOL},
        True,
    ),  # fmt: skip
    "Flatten": (torch.nn.Flatten, Flatten, {"start_dim": _INT, "end_dim": _INT}, False),
    "Dropout": (torch.nn.Dropout, Dropout, {"p": _PROB}, False),
}
_BY_TORCH = {t: name for name, (t, _, _, _) in LAYERS.items()}

# torch-only options that must keep their default for the secret layer to match torch
_TORCH_ONLY = {
    "Conv2d": lambda m: None if m.padding_mode == "zeros" and not isinstance(m.padding, str)
    else f"padding_mode={m.padding_mode!r}, padding={m.padding!r} (only zeros and integer paddings)",
    "MaxPool2d": lambda m: None if not m.ceil_mode and not m.return_indices
    else "ceil_mode=True or return_indices=True",
    "AvgPool2d": lambda m: None if not m.ceil_mode and m.count_include_pad
    else "ceil_mode=True or count_include_pad=False",
    "Softmax": lambda m: None if m.dim is not None else "dim=None (give dim)",
    "LogSoftmax": lambda m: None if m.dim is not None else "dim=None (give dim)",
}  # fmt: skip

_OPERATORS = {f"operator.{n}": getattr(operator, n)
              for n in ("add", "sub", "mul", "truediv", "floordiv", "neg", "pos", "getitem", "matmul")}  # fmt: skip
_OPERATORS["builtins.getattr"] = builtins.getattr
_GETATTR_OK = ("shape", "ndim")
_REFUSED_METHODS = {"reveal", "item", "tolist", "numpy"}
_METHODS = frozenset(n for n in dir(SecretTensor) if not n.startswith("_") and n not in _REFUSED_METHODS
                     and callable(getattr(SecretTensor, n, None)))  # fmt: skip


def _functions() -> dict[str, Callable[..., Any]]:
    """Every callable a graph may call, by the name a description uses (the table's torch functions)."""
    table = dict(_OPERATORS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in TORCH_OPS:
            table.setdefault(_torch_name(f), f)
    return table


def _fn_name(f: Any) -> str:
    for name, g in _OPERATORS.items():
        if g is f:
            return name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _torch_name(f)


# ----- describing a torch module (at every party that holds one) ------------------------------------------


def _unsupported(what: str, where: str) -> MPCError:
    return MPCError(
        f"from_torch: {what} at {where} is not supported on secret tensors; supported layers: "
        f"{', '.join(sorted(LAYERS))} and nn.Sequential; functions: those of mpc.ops.OPS"
    )


def _layer_spec(m: torch.nn.Module, path: str) -> dict[str, Any]:
    name = _BY_TORCH.get(type(m))
    if name is None:
        raise _unsupported(f"layer {type(m).__module__}.{type(m).__qualname__}", f"module {path or '<root>'!r}")
    problem = _TORCH_ONLY.get(name, lambda m: None)(m)
    if problem:
        raise _unsupported(f"{name} with {problem}", f"module {path or '<root>'!r}")
    schema = LAYERS[name][2]
    hp: dict[str, Any] = {}
    for k, check in schema.items():
        v = (m.bias is not None) if k == "bias" else getattr(m, k)
        got = check(v)
        if got is None:
            raise _unsupported(f"{name} with {k}={v!r}", f"module {path or '<root>'!r}")
        hp[k] = None if got is _UNSET else (list(got) if isinstance(got, tuple) else got)
    return {"type": name, "hparams": hp}


def _is_tree(m: torch.nn.Module) -> bool:
    if isinstance(m, torch.nn.Sequential) and type(m) is torch.nn.Sequential:
        return all(_is_tree(c) for c in m.children())
    # a supported layer, or a torch layer we do not support (nn.LSTM, nn.GELU), which the walker names
    return type(m) in _BY_TORCH or type(m).__module__.startswith("torch.nn.")


def _tree_spec(m: torch.nn.Module, path: str, depth: int = 0) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise MPCError(f"from_torch: the model nests deeper than {MAX_DEPTH} levels at {path!r}")
    if type(m) is torch.nn.Sequential:
        kids = []
        for k, c in m.named_children():
            kids.append([k, _tree_spec(c, f"{path}.{k}" if path else k, depth + 1)])
        return {"type": "Sequential", "children": kids}
    return _layer_spec(m, path)


def _enc_arg(a: Any, where: str) -> Any:
    if isinstance(a, torch.fx.Node):
        return {"n": a.name}
    if a is None or isinstance(a, bool | str) or _is_int(a):
        return a
    if isinstance(a, float):
        if not math.isfinite(a):
            raise MPCError(f"from_torch: a non-finite constant in {where}")
        return a
    if isinstance(a, tuple):
        return {"t": [_enc_arg(b, where) for b in a]}
    if isinstance(a, list):
        return [_enc_arg(b, where) for b in a]
    if isinstance(a, slice):
        return {"s": [_enc_arg(a.start, where), _enc_arg(a.stop, where), _enc_arg(a.step, where)]}
    if a is Ellipsis:
        return {"e": 0}
    raise MPCError(f"from_torch: an argument of type {type(a).__name__} in {where} cannot be described")


def _graph_spec(model: torch.nn.Module) -> dict[str, Any]:
    cls = type(model).__name__
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - fx raises anything; it is reported with its text
        raise MPCError(
            f"from_torch: torch.fx cannot trace {cls} ({type(exc).__name__}: {exc}); use nn.Sequential, or "
            "a forward without data-dependent control flow"
        ) from None
    modules: list[list[Any]] = []
    attrs: list[list[Any]] = []
    nodes: list[dict[str, Any]] = []
    seen_mod: set[str] = set()
    for node in gm.graph.nodes:
        where = f"fx node {node.name!r} of {cls}"
        entry: dict[str, Any] = {"name": node.name, "op": node.op}
        if node.op == "call_module":
            sub = model.get_submodule(node.target)
            if node.target not in seen_mod:
                if type(sub) not in _BY_TORCH:
                    raise _unsupported(f"layer {type(sub).__module__}.{type(sub).__qualname__}",
                                       f"module {node.target!r} ({where})")  # fmt: skip
                modules.append([node.target, _layer_spec(sub, node.target)])
                seen_mod.add(node.target)
            entry["target"] = node.target
        elif node.op == "call_function":
            name = _fn_name(node.target)
            if name not in _OPERATORS and node.target not in TORCH_OPS:
                raise _unsupported(f"function {name}", where)
            if node.target is builtins.getattr and (len(node.args) != 2 or node.args[1] not in _GETATTR_OK):
                raise _unsupported(f"attribute {node.args[1:]!r}", where)
            entry["target"] = name
        elif node.op == "call_method":
            if node.target not in _METHODS:
                raise _unsupported(f"method Tensor.{node.target}", where)
            entry["target"] = node.target
        elif node.op == "get_attr":
            t = _get_path(model, node.target)
            if not isinstance(t, torch.Tensor):
                raise _unsupported(f"attribute {node.target!r} of type {type(t).__name__}", where)
            kind = "parameter" if isinstance(t, torch.nn.Parameter) else "buffer"
            attrs.append([node.target, kind, list(t.shape), str(t.dtype).removeprefix("torch.")])
            entry["target"] = node.target
        elif node.op in ("placeholder", "output"):
            entry["target"] = str(node.target)
        else:
            raise _unsupported(f"fx operation {node.op}", where)
        entry["args"] = [_enc_arg(a, where) for a in node.args]
        entry["kwargs"] = {k: _enc_arg(v, where) for k, v in node.kwargs.items()}
        nodes.append(entry)
    return {"type": "Graph", "class": cls if _IDENT.match(cls) else "GraphModule", "modules": modules,
            "attrs": attrs, "nodes": nodes}  # fmt: skip


def _get_path(root: Any, path: str) -> Any:
    obj = root
    for seg in path.split("."):
        obj = getattr(obj, seg)
    return obj


def describe(module: torch.nn.Module) -> dict[str, Any]:
    """The public description of a torch model's architecture (raises MPCError for what is unsupported)."""
    if not isinstance(module, torch.nn.Module):
        raise ProtocolError(f"from_torch takes a torch.nn.Module (or None at a party that is not the owner), "
                            f"got {type(module).__name__}")  # fmt: skip
    root = _tree_spec(module, "") if _is_tree(module) else _graph_spec(module)
    state = {}
    for path, m in module.named_modules():
        nbt = getattr(m, "num_batches_tracked", None)
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and isinstance(nbt, torch.Tensor):
            state[path] = int(nbt)
    return {"format": FORMAT, "version": VERSION, "root": root, "num_batches_tracked": state}


# ----- validating a received description (every rule checked before anything is built) ------------------


def _bad(where: str, what: str) -> MPCError:
    return MPCError(f"from_torch: the architecture description is invalid at {where}: {what}")


def _check_keys(d: Any, keys: set[str], where: str) -> None:
    if not isinstance(d, dict) or set(d) != keys:
        got = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise _bad(where, f"expected the keys {sorted(keys)}, got {got}")


def _check_path(p: Any, where: str) -> str:
    if not isinstance(p, str) or len(p) > 1000 or not all(_SEGMENT.match(s) for s in p.split(".")):
        raise _bad(where, f"{p!r} is not a module path (dot-separated identifiers)")
    return p


def _check_layer(spec: Any, where: str) -> None:
    _check_keys(spec, {"type", "hparams"}, where)
    name = spec["type"]
    if name not in LAYERS:
        raise _bad(where, f"unknown layer type {name!r}")
    schema = LAYERS[name][2]
    hp = spec["hparams"]
    _check_keys(hp, set(schema), f"{where}.hparams")
    for k, check in schema.items():
        if check(hp[k]) is None:
            raise _bad(f"{where}.hparams.{k}", f"{hp[k]!r} is not a valid value")


def _check_tree(spec: Any, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _bad(where, f"nested deeper than {MAX_DEPTH}")
    if isinstance(spec, dict) and spec.get("type") == "Sequential":
        _check_keys(spec, {"type", "children"}, where)
        kids = spec["children"]
        if not isinstance(kids, list):
            raise _bad(where, "children must be a list")
        names = set()
        for i, kid in enumerate(kids):
            if not isinstance(kid, list) or len(kid) != 2 or not isinstance(kid[0], str) or not _SEGMENT.match(kid[0]):
                raise _bad(f"{where}.children[{i}]", "expected [name, layer]")
            if kid[0] in names:
                raise _bad(f"{where}.children[{i}]", f"duplicate name {kid[0]!r}")
            names.add(kid[0])
            _check_tree(kid[1], f"{where}.{kid[0]}", depth + 1)
        return
    _check_layer(spec, where)


def _check_arg(a: Any, known: set[str], where: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise _bad(where, "arguments nest too deeply")
    if a is None or isinstance(a, bool | str) or _is_int(a) or (isinstance(a, float) and math.isfinite(a)):
        if isinstance(a, str) and len(a) > 200:
            raise _bad(where, "string argument too long")
        return
    if isinstance(a, list):
        for b in a:
            _check_arg(b, known, where, depth + 1)
        return
    if isinstance(a, dict) and len(a) == 1:
        ((tag, v),) = a.items()
        if tag == "n" and isinstance(v, str):
            if v not in known:
                raise _bad(where, f"reference to {v!r}, which is not an earlier node")
            return
        if tag in ("t", "s") and isinstance(v, list) and (tag == "t" or len(v) == 3):
            for b in v:
                _check_arg(b, known, where, depth + 1)
            return
        if tag == "e" and v == 0:
            return
    raise _bad(where, f"argument {str(a)[:80]!r} is not a value, a tuple, a slice or a node reference")


def _check_graph(spec: Any, where: str) -> None:
    _check_keys(spec, {"type", "class", "modules", "attrs", "nodes"}, where)
    if not isinstance(spec["class"], str) or not _IDENT.match(spec["class"]):
        raise _bad(f"{where}.class", "not an identifier")
    mods, attrs, nodes = spec["modules"], spec["attrs"], spec["nodes"]
    if not isinstance(mods, list) or not isinstance(attrs, list) or not isinstance(nodes, list):
        raise _bad(where, "modules, attrs and nodes must be lists")
    if len(nodes) > MAX_NODES or len(mods) > MAX_NODES or len(attrs) > MAX_NODES:
        raise _bad(where, f"more than {MAX_NODES} entries")
    mod_paths: set[str] = set()
    for i, m in enumerate(mods):
        if not isinstance(m, list) or len(m) != 2:
            raise _bad(f"{where}.modules[{i}]", "expected [path, layer]")
        p = _check_path(m[0], f"{where}.modules[{i}]")
        if p in mod_paths:
            raise _bad(f"{where}.modules[{i}]", f"duplicate path {p!r}")
        mod_paths.add(p)
        _check_layer(m[1], f"{where}.modules[{p}]")
    attr_paths: set[str] = set()
    for i, a in enumerate(attrs):
        ok = (
            isinstance(a, list)
            and len(a) == 4
            and a[1] in ("parameter", "buffer")
            and isinstance(a[2], list)
            and len(a[2]) <= 8
            and all(_is_int(d) and d >= 0 for d in a[2])
            and a[3] in ("float32", "float64")
        )
        if not ok:
            raise _bad(f"{where}.attrs[{i}]", "expected [path, 'parameter' | 'buffer', shape, 'float32' | 'float64']")
        attr_paths.add(_check_path(a[0], f"{where}.attrs[{i}]"))
    for p in attr_paths:
        for q in mod_paths:
            if p == q or p.startswith(q + ".") or q.startswith(p + "."):
                raise _bad(where, f"the paths {p!r} and {q!r} overlap")
    known: set[str] = set()
    fns = _functions()
    for i, node in enumerate(nodes):
        w = f"{where}.nodes[{i}]"
        _check_keys(node, {"name", "op", "target", "args", "kwargs"}, w)
        name, op, target = node["name"], node["op"], node["target"]
        if not isinstance(name, str) or not _IDENT.match(name) or name in known:
            raise _bad(w, f"node name {name!r} is not a fresh identifier")
        if op == "call_module" and target not in mod_paths:
            raise _bad(w, f"call_module of {target!r}, which the description does not list")
        elif op == "get_attr" and target not in attr_paths:
            raise _bad(w, f"get_attr of {target!r}, which the description does not list")
        elif op == "call_function" and target not in fns:
            raise _bad(w, f"function {target!r} is not supported on secret tensors")
        elif op == "call_method" and target not in _METHODS:
            raise _bad(w, f"method {target!r} is not supported on secret tensors")
        elif op == "placeholder" and (not isinstance(target, str) or not _IDENT.match(target.lstrip("*"))):
            raise _bad(w, f"placeholder {target!r} is not an identifier")
        elif op not in ("call_module", "get_attr", "call_function", "call_method", "placeholder", "output"):
            raise _bad(w, f"unknown operation {op!r}")
        if not isinstance(node["args"], list) or not isinstance(node["kwargs"], dict):
            raise _bad(w, "args must be a list and kwargs an object")
        for a in node["args"]:
            _check_arg(a, known, w)
        for k, a in node["kwargs"].items():
            if not _IDENT.match(k):
                raise _bad(w, f"keyword {k!r} is not an identifier")
            _check_arg(a, known, w)
        if op == "call_function" and target == "builtins.getattr":
            if len(node["args"]) != 2 or node["args"][1] not in _GETATTR_OK:
                raise _bad(w, f"getattr of anything but {_GETATTR_OK}")
        if op == "output" and i != len(nodes) - 1:
            raise _bad(w, "the output node must come last")
        known.add(name)
    if not nodes or nodes[-1]["op"] != "output":
        raise _bad(where, "the graph has no output node")


def validate(desc: Any) -> dict[str, Any]:
    """Check a description against the schema; returns it, or raises MPCError naming what is wrong."""
    _check_keys(desc, {"format", "version", "root", "num_batches_tracked"}, "the top level")
    if desc["format"] != FORMAT or desc["version"] != VERSION:
        raise _bad("the top level", f"format {desc['format']!r} version {desc['version']!r} is not "
                   f"{FORMAT!r} version {VERSION}")  # fmt: skip
    root = desc["root"]
    if isinstance(root, dict) and root.get("type") == "Graph":
        _check_graph(root, "root")
    else:
        _check_tree(root, "root", 0)
    nbt = desc["num_batches_tracked"]
    if not isinstance(nbt, dict) or not all(
        (k == "" or _check_path(k, "num_batches_tracked")) and _is_int(v) and v >= 0 for k, v in nbt.items()
    ):
        raise _bad("num_batches_tracked", "expected {module path: count}")
    return desc


def encode(desc: dict[str, Any]) -> torch.Tensor:
    raw = json.dumps(desc, allow_nan=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
    if len(raw) > MAX_DESCRIPTION_BYTES:
        raise MPCError(f"from_torch: the architecture description takes {len(raw)} bytes, over the "
                       f"{MAX_DESCRIPTION_BYTES}-byte limit")  # fmt: skip
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()


def decode(t: torch.Tensor) -> dict[str, Any]:
    if t.dtype != torch.uint8 or t.dim() != 1 or t.numel() > MAX_DESCRIPTION_BYTES:
        raise MPCError("from_torch: the architecture description must be at most 1 MiB of uint8 bytes")
    try:
        desc = json.loads(bytes(t.numpy().tobytes()).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MPCError(f"from_torch: the architecture description is not valid JSON ({type(exc).__name__})") from None
    return validate(desc)


# ----- building the secret model ------------------------------------------------------------------------


def _torch_values(module: torch.nn.Module | None, path: str) -> dict[str, torch.Tensor] | None:
    if module is None:
        return None
    m = module.get_submodule(path) if path else module
    vals = {k: v.detach() for k, v in m.named_parameters(recurse=False)}
    vals.update({k: v.detach() for k, v in m.named_buffers(recurse=False) if v is not None})
    return vals


def _build_layer(spec: dict[str, Any], values: Any, owner: int, ctx: PartyContext) -> Module:
    _, cls, schema, has_params = LAYERS[spec["type"]]
    hp = {}
    for k, check in schema.items():
        v = check(spec["hparams"][k])
        hp[k] = None if v is _UNSET else v
    if has_params:
        return cls(**hp, owner=owner, ctx=ctx, _values=values)
    return cls(**hp)


def _build_tree(spec: dict[str, Any], module: torch.nn.Module | None, path: str, owner: int, ctx) -> Module:
    if spec["type"] == "Sequential":
        seq = Sequential()
        for k, kid in spec["children"]:
            seq.add_module(k, _build_tree(kid, module, f"{path}.{k}" if path else k, owner, ctx))
        return seq
    return _build_layer(spec, _torch_values(module, path), owner, ctx)


def _dec_arg(a: Any, env: dict[str, Any]) -> Any:
    if isinstance(a, list):
        return [_dec_arg(b, env) for b in a]
    if isinstance(a, dict):
        ((tag, v),) = a.items()
        if tag == "n":
            return env[v]
        if tag == "t":
            return tuple(_dec_arg(b, env) for b in v)
        if tag == "s":
            return slice(*(_dec_arg(b, env) for b in v))
        return Ellipsis
    return a


class GraphModule(Module):
    """A traced torch model run on secret tensors: its fx graph, node by node, over ``mpc.nn`` layers.

    Sub-modules sit at torch's module paths, so ``state_dict`` keys are torch's.
    """

    def __init__(self, spec: dict[str, Any], module: torch.nn.Module | None, owner: int, ctx: PartyContext) -> None:
        super().__init__()
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_fns", _functions())
        for path, layer in spec["modules"]:
            self._install(path, _build_layer(layer, _torch_values(module, path), owner, ctx))
        for path, kind, shape, dtype in spec["attrs"]:
            value = None
            if module is not None and ctx.rank == owner:
                value = {"value": _get_path(module, path).detach().to(getattr(torch, dtype))}
            t = make_parameter(ctx, "value", tuple(shape), owner, value, fill=0.0, requires_grad=kind == "parameter")
            parent, _, leaf = path.rpartition(".")
            holder = self._container(parent)
            if kind == "parameter":
                holder.register_parameter(leaf, t)
            else:
                holder.register_buffer(leaf, t)

    def _container(self, path: str) -> Module:
        m: Module = self
        if not path:
            return m
        for seg in path.split("."):
            nxt = m._modules.get(seg)
            if nxt is None:
                nxt = Module()
                m.add_module(seg, nxt)
            m = nxt
        return m

    def _install(self, path: str, layer: Module) -> None:
        parent, _, leaf = path.rpartition(".")
        self._container(parent).add_module(leaf, layer)

    def _lookup(self, path: str) -> Any:
        obj: Any = self
        for seg in path.split("."):
            obj = getattr(obj, seg)
        return obj

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        env: dict[str, Any] = {}
        pos = list(args)
        for node in self._spec["nodes"]:
            op, target = node["op"], node["target"]
            a = _dec_arg(node["args"], env)
            kw = {k: _dec_arg(v, env) for k, v in node["kwargs"].items()}
            if op == "placeholder":
                name = target.lstrip("*")
                if pos:
                    out = pos.pop(0)
                elif name in kwargs:
                    out = kwargs[name]
                elif a:
                    out = a[0]
                else:
                    raise ProtocolError(f"{self._spec['class']}: missing input {name!r}")
            elif op == "get_attr":
                out = self._lookup(target)
            elif op == "call_module":
                out = self._lookup(target)(*a, **kw)
            elif op == "call_function":
                out = self._fns[target](*a, **kw)
            elif op == "call_method":
                out = getattr(a[0], target)(*a[1:], **kw)
            else:
                return a[0]
            env[node["name"]] = out
        raise ProtocolError("the graph has no output node")

    def to_torch_skeleton(self) -> torch.nn.Module:
        root = torch.nn.Module()
        spec = self._spec
        for path, _ in spec["modules"]:
            _torch_install(root, path, self._lookup(path).to_torch_skeleton())
        for path, kind, shape, dtype in spec["attrs"]:
            parent, _, leaf = path.rpartition(".")
            holder = _torch_container(root, parent)
            t = torch.zeros(shape, dtype=getattr(torch, dtype))
            if kind == "parameter":
                holder.register_parameter(leaf, torch.nn.Parameter(t))
            else:
                holder.register_buffer(leaf, t)
        graph = torch.fx.Graph()
        env: dict[str, torch.fx.Node] = {}
        fns = self._fns
        for node in spec["nodes"]:
            a = tuple(_dec_arg(node["args"], env))
            kw = {k: _dec_arg(v, env) for k, v in node["kwargs"].items()}
            op, target = node["op"], node["target"]
            if op == "placeholder":
                n = graph.placeholder(target, default_value=a[0] if a else torch.fx.node.inspect.Signature.empty)
            elif op == "output":
                graph.output(a[0])
                break
            else:
                tgt = fns[target] if op == "call_function" else target
                n = graph.create_node(op, tgt, a, kw, name=node["name"])
            env[node["name"]] = n
        return torch.fx.GraphModule(root, graph, class_name=spec["class"])


def _torch_container(root: torch.nn.Module, path: str) -> torch.nn.Module:
    m = root
    if not path:
        return m
    for seg in path.split("."):
        if not hasattr(m, seg):
            m.add_module(seg, torch.nn.Module())
        m = getattr(m, seg)
    return m


def _torch_install(root: torch.nn.Module, path: str, layer: torch.nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    _torch_container(root, parent).add_module(leaf, layer)


def from_torch(module: torch.nn.Module | None, owner: int = 0, ctx: PartyContext | None = None) -> Module:
    """A secret model with the architecture and (party ``owner``'s) weights of a plaintext torch model.

    Party ``owner`` passes its ``torch.nn.Module``; every other party passes a
    module of the same architecture (weights ignored; checked to match) or
    ``None``.  Costs one exchange of the description (a few kB) and one
    sharing per weight tensor.
    """
    ctx = current_context() if ctx is None else ctx
    n = ctx.world_size
    if not isinstance(owner, int) or isinstance(owner, bool) or not 0 <= owner < n:
        raise ProtocolError(f"from_torch: owner must be a party id in 0..{n - 1}, got {owner!r}")
    if ctx.rank == owner and module is None:
        raise ProtocolError(f"from_torch: party {owner} is the owner and must pass its torch module, got None")
    mine = describe(module) if module is not None else None
    record(ctx, "nn.from_torch", f"from_torch(owner={owner})")
    peers = [j for j in range(n) if j != owner]
    if ctx.rank == owner:
        assert mine is not None
        ctx.comm.exchange("nn.from_torch", {j: encode(mine) for j in peers}, {})
        desc = mine
    else:
        got = ctx.comm.exchange("nn.from_torch", {}, {owner: Expect(None, torch.uint8)})[owner]
        desc = decode(got)
        if mine is not None and mine["root"] != desc["root"]:
            raise MPCError(
                f"from_torch: the torch module of party {ctx.rank} ({type(module).__name__}) has another "
                f"architecture than party {owner}'s; pass the same architecture, or None"
            )
    values_from = module if ctx.rank == owner else None
    root = desc["root"]
    if root["type"] == "Graph":
        model: Module = GraphModule(root, values_from, owner, ctx)
    else:
        model = _build_tree(root, values_from, "", owner, ctx)
    for path, count in desc["num_batches_tracked"].items():
        m = model.get_submodule(path) if path else model
        nbt = getattr(m, "num_batches_tracked", None)
        if isinstance(nbt, torch.Tensor):
            nbt.fill_(count)
    if module is not None:
        object.__setattr__(model, "_torch_template", module)
    return model
