"""The dependency direction, read from the source with ``ast`` (STYLE.md, "A layout that shows the architecture").

    mpc core  <-  protocols  <-  mpc user layer  <-  parties  <-  tests, scripts

* the core (``mpc.ring``, ``fixedpoint``, ``prg``, ``buffers``, ``config``,
  ``context``, ``errors``) imports only the core;
* ``protocols`` imports nothing from ``parties`` nor from the user layer
  (``mpc.tensor``, ``mpc.api``, the ``mpc`` facade);
* nothing in ``mpc`` imports ``parties`` statically: the facade's lazy
  ``importlib`` lookup of ``run``, ``run_threads`` and ``init`` in
  ``mpc/__init__.py`` is the one documented exception;
* only ``parties`` imports zmq, subprocess, argparse or multiprocessing;
* no import hides inside a function in ``mpc`` or ``protocols`` (an import
  placed there to escape a cycle means the layering is wrong), except that one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE = {
    "ring",
    "kernels",
    "shapes",
    "fixedpoint",
    "prg",
    "buffers",
    "config",
    "context",
    "errors",
    "shares",
    "dtypes",
    "callsite",
    "transcript",
}
OUTER_ONLY = {"zmq", "subprocess", "argparse", "multiprocessing"}
FACADE = "mpc/__init__.py"


def _module_name(rel: str) -> str:
    parts = rel[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(rel: str, source: str) -> list[tuple[str, int, bool]]:
    """(absolute module imported, line, inside a function) for every import statement of a file."""
    module = _module_name(rel)
    package = module if rel.endswith("__init__.py") else module.rpartition(".")[0]
    tree = ast.parse(source, rel)
    nested: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            nested.update(id(n) for n in ast.walk(fn) if n is not fn)
    out = []
    for node in ast.walk(tree):
        inner = id(node) in nested
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, inner) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None:  # from . import a, b: each name is a module
                out += [(f"{target}.{a.name}".lstrip("."), node.lineno, inner) for a in node.names]
            else:
                out.append((target, node.lineno, inner))
    return out


def dynamic_imports(rel: str, source: str) -> list[int]:
    """Lines that call importlib.import_module or __import__."""
    lines = []
    for node in ast.walk(ast.parse(source, rel)):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__"):
                lines.append(node.lineno)
    return lines


def _top(mod: str) -> str:
    return mod.split(".")[0]


def violations(files: dict[str, str]) -> list[str]:
    """Every breach of the rules above in ``files`` ({repo-relative path: source})."""
    found = []
    for rel, source in sorted(files.items()):
        layer = rel.split("/")[0]
        if layer not in ("mpc", "protocols", "parties"):
            continue
        is_core = layer == "mpc" and Path(rel).stem in CORE
        for mod, line, inner in imports_of(rel, source):
            where = f"{rel}:{line} imports {mod}"
            top = _top(mod)
            if layer != "parties" and top in OUTER_ONLY:
                found.append(f"{where}: only parties/ may import {top}")
            if layer in ("mpc", "protocols") and top == "parties":
                found.append(f"{where}: {layer}/ must not import the outer layer")
            if is_core and top == "protocols":
                found.append(f"{where}: the core must not import protocols")
            if is_core and top == "mpc" and (mod == "mpc" or mod.split(".")[1] not in CORE):
                found.append(f"{where}: the core imports only the core")
            if (
                layer == "protocols"
                and top == "mpc"
                and (mod == "mpc" or mod.split(".")[1] in ("tensor", "api", "functional"))
            ):
                found.append(f"{where}: protocols/ must not import the user layer")
            if inner and layer in ("mpc", "protocols") and not (rel == FACADE and mod == "importlib"):
                found.append(f"{where} inside a function: the layering should make that unnecessary")
        for line in dynamic_imports(rel, source):
            if rel != FACADE:
                found.append(f"{rel}:{line} imports dynamically; only the mpc facade may")
    return found


def _tree() -> dict[str, str]:
    files = {}
    for layer in ("mpc", "protocols", "parties"):
        for path in sorted((REPO / layer).rglob("*.py")):
            files[path.relative_to(REPO).as_posix()] = path.read_text()
    return files


@pytest.mark.timeout(30)
def test_the_source_tree_respects_the_layering():
    files = _tree()
    assert {"mpc/ring.py", "mpc/context.py", "protocols/sharing.py", "parties/wire.py", FACADE} <= set(files)
    assert violations(files) == []


@pytest.mark.timeout(30)
def test_the_facade_looks_up_only_the_outer_entry_points():
    import mpc

    source = (REPO / FACADE).read_text()
    assert len(dynamic_imports(FACADE, source)) == 1
    assert set(mpc._ENTRY_POINTS.values()) <= {"parties.runner", "parties.simulator"}
    assert set(mpc._ENTRY_POINTS) == {"run", "run_threads", "init"}


@pytest.mark.timeout(30)
def test_the_checker_finds_each_kind_of_breach():
    """The test above can fail: every rule catches a planted breach (and relative imports resolve)."""
    planted = {
        "mpc/ring.py": "from .tensor import SecretTensor\n",
        "mpc/prg.py": "import protocols.sharing\n",
        "mpc/config.py": "from mpc import share\n",
        "mpc/errors.py": "from .. import parties\n",
        "mpc/api.py": "from parties.runner import run\n",
        "mpc/tensor.py": "def f():\n    from protocols import beaver\n",
        "protocols/beaver.py": "from mpc.tensor import SecretTensor\n",
        "protocols/sharing.py": "import mpc\n",
        "protocols/truncation.py": "from parties import wire\n",
        "protocols/families.py": "import zmq.auth\nimport subprocess\n",
        "protocols/correlated.py": "from multiprocessing import Pool\nimport argparse\n",
        "mpc/context.py": "import importlib\nm = importlib.import_module('parties.cli')\n",
        "parties/cli.py": "import argparse, subprocess, zmq\nfrom mpc.tensor import SecretTensor\n",  # allowed
        "protocols/ok.py": "from mpc.ring import msb\nfrom .sharing import open_all\nfrom . import beaver\n",  # allowed
        "mpc/fixedpoint.py": "from .errors import EncodingError\nfrom mpc.config import MPCConfig\n",  # allowed
    }
    found = violations(planted)
    for rel in planted:
        hits = [v for v in found if v.startswith(rel + ":")]
        if rel.startswith("parties/") or rel in ("protocols/ok.py", "mpc/fixedpoint.py"):
            assert hits == [], hits
        else:
            assert hits, f"no breach found in {rel}"
    assert any("protocols/families.py:1 imports zmq.auth" in v for v in found)
    assert any("protocols/families.py:2 imports subprocess" in v for v in found)
    assert any("mpc/errors.py:1 imports parties" in v for v in found)
    assert any("mpc/tensor.py:2 imports protocols inside a function" in v for v in found)
    assert imports_of("protocols/families.py", "from . import beaver, sharing\n") == [
        ("protocols.beaver", 1, False),
        ("protocols.sharing", 1, False),
    ]


@pytest.mark.timeout(60)
def test_importing_the_core_and_protocols_loads_no_transport():
    code = (
        "import sys, mpc, mpc.tensor, protocols.families, protocols.correlated\n"
        # (torch itself loads multiprocessing, argparse and subprocess: only zmq and parties can be told apart)
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('zmq', 'parties'))\n"
        "print(bad)\n"
        "from parties.runner import run\n"
        "assert mpc.run is run\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


# ----- the user layer never touches a ring tensor ----------------------------------------------------------

USER_LAYER = (
    "mpc/tensor.py",
    "mpc/arith.py",
    "mpc/functional.py",
    "mpc/api.py",
    "mpc/ops.py",
    "mpc/autograd.py",
    "mpc/grads.py",
)


def ring_touches(rel: str, source: str) -> list[str]:
    """Places where user-layer code reaches below the share objects: a share's ring tensor (``.data``),
    the fixed-point scale (``frac_bits``, ``encoder``), a decision on a party's rank, or a ring module."""
    found = []
    for node in ast.walk(ast.parse(source, rel)):
        if isinstance(node, ast.Attribute) and node.attr in ("data", "frac_bits", "encoder", "value"):
            found.append(f"{rel}:{node.lineno} uses .{node.attr}")
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                if isinstance(side, ast.Attribute) and side.attr == "rank":
                    found.append(f"{rel}:{node.lineno} decides on a party's rank")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.LShift | ast.RShift):
            found.append(f"{rel}:{node.lineno} shifts bits")
    for mod, line, _ in imports_of(rel, source):
        if mod in ("mpc.ring", "mpc.fixedpoint") or _top(mod) == "protocols":
            found.append(f"{rel}:{line} imports {mod}")
    return found


@pytest.mark.timeout(30)
def test_the_user_layer_never_touches_a_ring_tensor():
    files = _tree()
    assert all(rel in files for rel in USER_LAYER)
    assert [v for rel in USER_LAYER for v in ring_touches(rel, files[rel])] == []
    # the check can fail: each kind of breach is found
    planted = (
        "def f(x, ctx):\n    a = x.share.data\n    b = ctx.config.frac_bits\n"
        "    if ctx.rank == 0:\n        pass\n    return a << 16\nfrom mpc.ring import msb\n"
    )
    hits = ring_touches("mpc/arith.py", planted)
    assert len(hits) == 5, hits
