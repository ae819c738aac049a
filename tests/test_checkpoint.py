"""Checkpoint and resume (issue 11, item 8): ``mpc.save``, ``mpc.load``, ``mpc.Checkpointer``, ``--resume``.

* Pure tier: the file format refuses a foreign, truncated, extended,
  corrupted, malformed or future file, naming it.
* Thread tier: round trips of secret tensors, models (with BatchNorm's
  running statistics and public count) and SGD/Adam state under both
  families; every refusal (truncated, corrupted byte, another party's file,
  another training's, another model's, different steps, different saves, an
  unknown version) at every party, before any share is used (the objects are
  unchanged afterwards); the checkpointer's agreement on the newest common
  step after a party lost its newest file; a secure family's file holds this
  party's share and neither another party's nor the plaintext.
* Process tier: ``scripts/train_digits.py`` under ``mpc launch``, party 1
  killed with SIGKILL in the middle of training, then ``mpc launch --resume``:
  the resumed run repeats at most K steps and reaches the uninterrupted run's
  test accuracy within fixed-point noise.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import PLAINTEXT, REPO, SECURE

import mpc
from mpc.checkpoint import fileformat
from mpc.checkpoint.checkpointer import step_file
from mpc.config import MPCConfig
from parties import cli
from parties.env import PartyEnv

# ----- helpers ----------------------------------------------------------------------------------------------


def _net(hidden: int = 5, bn: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    norm = torch.nn.BatchNorm1d(hidden) if bn else torch.nn.Identity()
    return torch.nn.Sequential(torch.nn.Linear(4, hidden), norm, torch.nn.ReLU(), torch.nn.Linear(hidden, 3))


X = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
Y = torch.nn.functional.one_hot(torch.arange(8) % 3, 3).double()


def _build(ctx, kind: str = "sgd", hidden: int = 5, bn: bool = True):
    model = mpc.nn.from_torch(_net(hidden, bn) if ctx.rank == 0 else None, owner=0)
    if kind == "sgd":
        opt = mpc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = mpc.optim.Adam(model.parameters(), lr=0.01, eps=1e-3)  # eps: no rsqrt(0) at a dead unit
    return model, opt


def _train(ctx, model, opt, steps: int, start: int = 0, ck=None):
    x = mpc.share(X if ctx.rank == 0 else None, owner=0)
    y = mpc.share(Y if ctx.rank == 1 else None, owner=1)
    loss_fn = mpc.nn.CrossEntropyLoss()
    for i in range(start, steps):
        rows = torch.tensor([i % 8, (i + 3) % 8, (i + 5) % 8])
        opt.zero_grad()
        loss_fn(model(x[rows]), y[rows]).backward()
        opt.step()
        if ck is not None:
            ck.step(i + 1)


def _opened(model, opt) -> dict:
    """Every value of the model and of the optimizer's state, opened (a test's view, not a program's)."""
    out = {}
    for k, v in model.state_dict().items():
        out[k] = v.reveal() if isinstance(v, mpc.SecretTensor) else v.clone()
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"opt.{i}.{k}"] = v.reveal() if isinstance(v, mpc.SecretTensor) else v
    return out


def _same(a: dict, b: dict) -> bool:
    if sorted(a) != sorted(b):
        return False
    return all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)


def _rewrite(path: Path, version: int | None = None, header=None) -> None:
    """Rewrite a file with another version or header, and a valid checksum (what another release might write)."""
    data = path.read_bytes()
    magic, v, hlen, _ = struct.unpack_from("<8sIIQ", data)
    head = json.loads(data[24 : 24 + hlen])
    if header is not None:
        header(head)
    new_head = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
    pad = -(24 + len(new_head)) % 8
    body = data[24 + hlen + (-(24 + hlen) % 8) : -32]
    size = 24 + len(new_head) + pad + len(body) + 32
    out = struct.pack("<8sIIQ", magic, v if version is None else version, len(new_head), size)
    out += new_head + bytes(pad) + body
    out += hashlib.blake2b(out, digest_size=32, person=b"mpc-checkpoint").digest()
    path.write_bytes(out)


# ----- pure tier: the file ----------------------------------------------------------------------------------


def _write_plain_file(path: Path) -> None:
    header = {"format": "test"}
    entries = [{"name": "a", "kind": "public", "dtype": "float32", "shape": [2, 3]}]
    fileformat.write_atomic(path, header, entries, [torch.arange(6, dtype=torch.float32).reshape(2, 3)])


@pytest.mark.timeout(30)
def test_file_round_trip_and_every_refusal(tmp_path):
    p = tmp_path / "sub" / "f.mpc"
    _write_plain_file(p)
    assert oct(p.stat().st_mode & 0o777) == "0o600" and oct(p.parent.stat().st_mode & 0o777) == "0o700"
    assert [q.name for q in p.parent.iterdir()] == ["f.mpc"]  # no temporary left behind
    f = fileformat.read_file(p)
    assert f.header["format"] == "test" and [e.name for e in f.entries] == ["a"]
    assert torch.equal(f.tensor(f.entries[0]), torch.arange(6, dtype=torch.float32).reshape(2, 3))
    good = p.read_bytes()

    cases = {
        "not a checkpoint file": b"PK\x03\x04" + good[4:],
        "is truncated": good[:-7],
        "bytes more than": good + b"\0",
        "is corrupted: its checksum": good[:30] + bytes([good[30] ^ 1]) + good[31:],
    }
    for expected, data in cases.items():
        p.write_bytes(data)
        with pytest.raises(mpc.CheckpointError, match=expected) as err:
            fileformat.read_file(p)
        assert str(p) in str(err.value)
    p.write_bytes(good)
    _rewrite(p, version=2)
    with pytest.raises(mpc.CheckpointError, match="format version 2; this mpc-torch reads version 1"):
        fileformat.read_file(p)
    p.write_bytes(good)
    _rewrite(p, header=lambda h: h["entries"][0].update(shape=[3, 3]))  # a valid checksum over a lying header
    with pytest.raises(mpc.CheckpointError, match="malformed: entry 0 .* does not lie where its shape says"):
        fileformat.read_file(p)
    with pytest.raises(mpc.CheckpointError, match="no checkpoint file"):
        fileformat.read_file(tmp_path / "missing.mpc")


# ----- thread tier: round trips -------------------------------------------------------------------------------


def _round_trip(ctx, d: str, kind: str):
    x = mpc.share(torch.tensor([[1.5, -2.25], [3.0, 0.125]]) if ctx.rank == 0 else None, owner=0)
    model, opt = _build(ctx, kind)
    _train(ctx, model, opt, 3)  # momentum buffers / Adam moments and step, BatchNorm running statistics and count
    path = f"{d}/party{ctx.rank}/all.mpc"
    assert mpc.save({"x": x, "model": model, "optimizer": opt}, path, step=3) == Path(path)
    before = _opened(model, opt)
    x2 = mpc.share(torch.zeros(2, 2) if ctx.rank == 0 else None, owner=0)
    model2, opt2 = _build(ctx, kind)
    back = mpc.load(path, into={"x": x2, "model": model2, "optimizer": opt2}, step=3)
    assert back["model"] is model2 and back["optimizer"] is opt2
    after = _opened(model2, opt2)
    # a lone tensor, and loading without `into`
    mpc.save(x, f"{d}/party{ctx.rank}/x.mpc")
    x3 = mpc.load(f"{d}/party{ctx.rank}/x.mpc")
    # both copies go on training alike (up to the truncation's rounding)
    _train(ctx, model, opt, 5, start=3)
    _train(ctx, model2, opt2, 5, start=3)
    a, b = _opened(model, opt), _opened(model2, opt2)
    gap = max(float((a[k].double() - b[k].double()).abs().max()) for k, _ in model.named_parameters())
    return x2.reveal(), x3.reveal(), _same(before, after), gap, sorted(after)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_round_trip_of_tensors_models_and_optimizer_state(sim, protocol, kind, tmp_path):
    results = sim(functools.partial(_round_trip, d=str(tmp_path / protocol), kind=kind), 2, protocol=protocol)
    x = torch.tensor([[1.5, -2.25], [3.0, 0.125]])
    for x2, x3, same, gap, keys in results:
        assert torch.equal(x2, x) and torch.equal(x3, x)
        assert same, "the loaded model and optimizer state differ from the saved ones"
        assert gap < 2e-2, gap  # two more steps (BatchNorm's rsqrt, Adam's scale-free step) rounded independently
        assert "1.running_mean" in keys and "1.num_batches_tracked" in keys
        assert any(k.endswith(".momentum_buffer") for k in keys) == (kind == "sgd")
        assert any(k.endswith(".step") for k in keys) == (kind == "adam")
    header = mpc.checkpoint.read_header(tmp_path / protocol / "party1" / "all.mpc")
    assert header["party"] == 1 and header["world_size"] == 2 and header["protocol"] == protocol
    assert header["secure"] == (protocol == SECURE) and header["step"] == 3 and header["frac_bits"] == 16
    assert [o["name"] for o in header["objects"]] == ["x", "model", "optimizer"]


@pytest.mark.timeout(60)
def test_optimizer_state_dict_round_trip(sim):
    def prog(ctx):
        model, opt = _build(ctx, "adam")
        _train(ctx, model, opt, 2)
        sd = opt.state_dict()
        model2, opt2 = _build(ctx, "adam")
        sd2 = {"state": sd["state"], "param_groups": sd["param_groups"]}
        opt2.load_state_dict({**sd2, "state": {i: {**st} for i, st in sd["state"].items()}})
        with pytest.raises(mpc.ProtocolError, match="parameter groups"):
            opt2.load_state_dict({"state": {}, "param_groups": []})
        return sorted(sd["state"]), [g["params"] for g in sd["param_groups"]], opt2.state_dict()["state"][0]["step"]

    for keys, params, step in sim(prog, 2, protocol=PLAINTEXT):
        assert keys == [0, 1, 2, 3, 4, 5] and params == [[0, 1, 2, 3, 4, 5]] and step == 2


# ----- thread tier: refusals ----------------------------------------------------------------------------------


def _refusal(ctx, d: str, case: str):
    """Save, spoil one thing, load: every party must refuse, and its objects must be untouched."""
    model, opt = _build(ctx)
    objs = {"model": model, "optimizer": opt}
    mine = Path(d) / f"party{ctx.rank}"
    mpc.save(objs, mine / "a1.mpc", step=1)
    mpc.save(objs, mine / "a2.mpc", step=2, lineage=mpc.checkpoint.read_header(mine / "a1.mpc")["lineage"])
    mpc.save(objs, mine / "b1.mpc", step=1)  # another training (a fresh lineage)
    target = mine / "a1.mpc"
    if case == "truncated" and ctx.rank == 1:
        target.write_bytes(target.read_bytes()[:-100])
    elif case == "corrupted" and ctx.rank == 1:
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x10
        target.write_bytes(bytes(data))
    elif case == "version" and ctx.rank == 1:
        _rewrite(target, version=7)
    elif case == "another party" and ctx.rank == 0:
        target = Path(d) / "party1" / "a1.mpc"
    elif case == "another run" and ctx.rank == 1:
        target = mine / "b1.mpc"
    elif case == "different steps" and ctx.rank == 1:
        target = mine / "a2.mpc"
    fresh, fresh_opt = _build(ctx, hidden=6 if case == "another model" else 5)
    into = {"model": fresh, "optimizer": fresh_opt}
    before = _opened(fresh, fresh_opt)
    try:
        mpc.load(target, into=into)
    except mpc.CheckpointError as exc:
        message = str(exc)
    else:
        message = None
    return message, _same(before, _opened(fresh, fresh_opt))


REFUSALS = {
    "truncated": r"party 1: .*party1/a1\.mpc is truncated",
    "corrupted": r"party 1: .*party1/a1\.mpc is corrupted: its checksum",
    "version": r"party 1: .*party1/a1\.mpc has checkpoint format version 7; this mpc-torch reads version 1",
    "another party": r"party 0: .*party1/a1\.mpc is party 1's file, not party 0's",
    "another run": r"different trainings, a file of another run: party 0 lineage \w+ .*party 1 lineage \w+",
    "different steps": r"would resume from different steps: party 0 from step 1 .*party 1 from step 2",
    "another model": r"party (\d): .*party\1/a1\.mpc holds another model: 'model': entry '0\.weight' is secret \[5, 4\] "
    r"float32 in the file, secret \[6, 4\] float32 here",
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(REFUSALS))
def test_every_refusal_names_the_problem_at_every_party_before_any_share_is_used(sim, case, tmp_path):
    for rank, (message, untouched) in enumerate(sim(functools.partial(_refusal, d=str(tmp_path), case=case), 2)):
        assert message is not None, f"party {rank} loaded a {case} checkpoint"
        assert re.search(REFUSALS[case], message), message
        assert untouched, f"party {rank}'s model changed although the checkpoint was refused"


# ----- thread tier: secrecy -----------------------------------------------------------------------------------


def _shares(ctx, d: str):
    x = mpc.share(torch.tensor([3.25, -1.5, 1000.0, 0.75]) if ctx.rank == 0 else None, owner=0)
    w = mpc.share(torch.tensor([[0.5, 2.0], [-7.0, 0.01]]) if ctx.rank == 1 else None, owner=1)
    mpc.save({"x": x, "w": w}, f"{d}/party{ctx.rank}/s.mpc")
    return x.share.data.clone(), w.share.data.clone()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_a_file_holds_this_partys_shares_and_nothing_else(sim, tmp_path, n):
    shares = sim(functools.partial(_shares, d=str(tmp_path)), n, protocol=SECURE)
    plain = [torch.tensor([3.25, -1.5, 1000.0, 0.75]), torch.tensor([[0.5, 2.0], [-7.0, 0.01]])]
    encodings = []
    for v in plain:  # the values as a float, a double, and their fixed-point ring encoding
        encodings += [v.numpy().tobytes(), v.double().numpy().tobytes()]
        encodings.append(torch.round(v.double() * 2**16).to(torch.int64).numpy().tobytes())
    for rank in range(n):
        data = (tmp_path / f"party{rank}" / "s.mpc").read_bytes()
        for i in range(2):
            assert shares[rank][i].numpy().tobytes() in data, "the party's own share is missing"
            for other in range(n):
                if other != rank:
                    assert shares[other][i].numpy().tobytes() not in data, f"party {other}'s share is in the file"
        for enc in encodings:
            assert enc not in data, "a plaintext value is in the file"
        header = mpc.checkpoint.read_header(tmp_path / f"party{rank}" / "s.mpc")
        assert header["secure"] is True


# ----- thread tier: the checkpointer --------------------------------------------------------------------------


def _ck_train(ctx, d: str, steps: int, kill_after: int | None = None, resume: bool | None = None, step=None,
              keep: int = 3):  # fmt: skip
    """Train ``steps`` steps with a checkpointer (every 2); stop after ``kill_after`` steps (a crash)."""
    model, opt = _build(ctx, bn=False)
    ck = mpc.Checkpointer(d, every=2, model=model, optimizer=opt, resume=resume, keep=keep)
    start = ck.resume(step)
    _train(ctx, model, opt, steps if kill_after is None else kill_after, start, ck)
    return start, ck.lineage, ck.steps(), _opened(model, opt)


def _files(d: Path, rank: int) -> list[str]:
    return sorted(p.name for p in (d / f"party{rank}").iterdir())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("n", [2, 3])
def test_checkpointer_resumes_from_the_newest_step_every_party_has(sim, tmp_path, n):
    d = tmp_path / "ck"
    straight = sim(functools.partial(_ck_train, d=str(tmp_path / "straight"), steps=10), n)
    first = sim(functools.partial(_ck_train, d=str(d), steps=10, kill_after=7), n)
    assert [r[0] for r in first] == [0] * n and len({r[1] for r in first}) == 1  # one lineage, agreed
    assert [r[2] for r in first] == [[2, 4, 6]] * n and _files(d, 0) == [step_file(s) for s in (2, 4, 6)]
    # Party 1 was killed while it wrote step 6: its file never got its name; a temporary is left.
    (d / "party1" / step_file(6)).rename(d / "party1" / f".{step_file(6)}.tmp-123-abcd")
    second = sim(functools.partial(_ck_train, d=str(d), steps=10, resume=True), n)
    assert [r[0] for r in second] == [4] * n, "not the newest step every party has"
    assert second[0][1] == first[0][1], "the lineage changed on resume"
    # the others' step 6 (of the abandoned continuation) and party 1's temporary are gone; later steps are written
    assert all(_files(d, k) == [step_file(s) for s in (6, 8, 10)] for k in range(n))
    gap = max(
        float((torch.as_tensor(straight[0][3][k]).double() - torch.as_tensor(second[0][3][k]).double()).abs().max())
        for k in straight[0][3]
    )
    assert gap < 2e-3, f"the resumed training ends {gap} away from the uninterrupted one"


def _resume_only(ctx, d: str, resume: bool | None, step=None):
    model, opt = _build(ctx, bn=False)
    try:
        return mpc.Checkpointer(d, every=2, model=model, optimizer=opt, resume=resume).resume(step)
    except mpc.CheckpointError as exc:
        return str(exc)


@pytest.mark.timeout(180)
def test_checkpointer_refuses_what_cannot_resume_alike(sim, tmp_path):
    d = tmp_path / "ck"
    sim(functools.partial(_ck_train, d=str(d), steps=6), 2)  # steps 2, 4, 6 at both parties

    def every(resume, step=None, parties=2, rank_resume=None):
        fn = functools.partial(_resume_only, d=str(d), resume=resume, step=step)
        if rank_resume is not None:
            return sim(lambda ctx: _resume_only(ctx, str(d), rank_resume[ctx.rank]), parties)
        return sim(fn, parties)

    # A fresh start over an existing training.
    for msg in every(resume=False):
        assert "already holds checkpoints of a training (steps [2, 4, 6]): continue it with --resume" in msg
    # Parties that disagree on resuming.
    for msg in every(None, rank_resume=[True, False]):
        assert "do not agree whether to resume (party 0 resumes, party 1 starts afresh)" in msg
    # A step that one party lacks.
    (d / "party1" / step_file(4)).unlink()
    for msg in every(resume=True, step=4):
        assert re.search(r"cannot resume from step 4: parties \[1\] do not hold it .*party 1 has \[2, 6\]", msg), msg
    assert every(resume=True) == [6, 6]
    # No step in common: different steps.
    for s in (2, 6):
        (d / "party1" / step_file(s)).unlink(missing_ok=True)
    (d / "party1" / step_file(8)).write_bytes((d / "party0" / step_file(6)).read_bytes())
    for msg in every(resume=True):
        assert "party 1: " in msg and "is party 0's file, not party 1's" in msg  # a copied file is refused
    (d / "party1" / step_file(8)).unlink()
    for msg in every(resume=True):
        assert re.search(r"some parties have no checkpoint \(party 0 has \[2, 4, 6\] .*party 1 has none", msg), msg


def _branch(ctx, d: str):
    """Steps 2 and 4; resume from 2 as if 4 had been lost; write 4 again: two saves of step 4 exist."""
    model, opt = _build(ctx, bn=False)
    ck = mpc.Checkpointer(d, every=2, model=model, optimizer=opt, resume=False)
    ck.resume()
    _train(ctx, model, opt, 4, 0, ck)
    return ck.lineage


@pytest.mark.timeout(180)
def test_files_of_different_saves_never_mix(sim, tmp_path):
    d = tmp_path / "ck"
    sim(functools.partial(_branch, d=str(d)), 2)
    old = (d / "party1" / step_file(4)).read_bytes()
    (d / "party0" / step_file(4)).unlink()  # party 0 lost step 4: both resume from 2, and write 4 again
    again = sim(functools.partial(_ck_train, d=str(d), steps=4, resume=True), 2)
    assert [r[0] for r in again] == [2, 2]
    new = (d / "party0" / step_file(4)).read_bytes()

    def mix() -> None:  # party 0's step 4 of this continuation, party 1's of the abandoned one
        (d / "party0" / step_file(4)).write_bytes(new)
        (d / "party1" / step_file(4)).write_bytes(old)

    mix()
    # Resuming takes the newest step both wrote in the same save (2), not the mixed step 4 ...
    assert sim(functools.partial(_resume_only, d=str(d), resume=True), 2) == [2, 2]
    mix()  # (resuming deleted both step-4 files as newer than the step it resumed from)
    # ... asking for step 4 is refused, and so is loading the mixed pair directly.
    for msg in sim(functools.partial(_resume_only, d=str(d), resume=True, step=4), 2):
        assert "cannot resume from step 4: the parties' files of it come from different saves" in msg

    def direct(ctx):
        model, opt = _build(ctx, bn=False)
        try:
            mpc.load(d / f"party{ctx.rank}" / step_file(4), into={"model": model, "optimizer": opt})
        except mpc.CheckpointError as exc:
            return str(exc)

    for msg in sim(direct, 2):
        assert "files of step 4 were written by different saves" in msg


@pytest.mark.timeout(60)
def test_checkpointer_off_and_its_arguments(sim, tmp_path):
    def prog(ctx):
        model, opt = _build(ctx)
        off = mpc.Checkpointer(None, every=5, model=model)
        errors = []
        for kw in (dict(every=0), dict(every=2, keep=1)):
            try:
                mpc.Checkpointer(tmp_path, model=model, **kw)
            except mpc.ConfigError as exc:
                errors.append(str(exc))
        try:
            mpc.Checkpointer(tmp_path, every=2).resume()
        except mpc.ProtocolError as exc:
            errors.append(str(exc))
        return off.enabled, off.resume(), off.step(5), errors

    for enabled, start, saved, errors in sim(prog, 2):
        assert (enabled, start, saved) == (False, 0, None)
        assert "every must be an integer >= 1" in errors[0] and "keep must be an integer >= 2" in errors[1]
        assert "give what to checkpoint" in errors[2]
    assert list(tmp_path.iterdir()) == []


# ----- the command line and the environment -------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_resume_reaches_the_config_from_the_cli_and_the_environment(tmp_path, capsys):
    assert MPCConfig(resume_dir="/a").fingerprint() == MPCConfig().fingerprint()  # each party's own path
    with pytest.raises(mpc.ConfigError, match="resume_dir"):
        MPCConfig(resume_dir="")
    env = PartyEnv("/tmp/c.toml", 1, 2, None, True, str(tmp_path))
    assert env.variables()["MPC_RESUME"] == str(tmp_path) and PartyEnv.read(env.variables()) == env
    script = tmp_path / "s.py"
    script.write_text("")
    assert cli.main(["launch", "-n", "2", "--resume", str(tmp_path / "missing"), str(script)]) == 2
    assert "--resume " + str(tmp_path / "missing") + ": no such directory" in capsys.readouterr().err
    for sub in ("launch", "party"):
        with pytest.raises(SystemExit):
            cli.main([sub, "--help"])
        assert "--resume DIR" in capsys.readouterr().out


# ----- process tier: kill a party, resume -------------------------------------------------------------------

K = 8  # steps between checkpoints
SCRIPT = REPO / "scripts" / "train_digits.py"
# one epoch of the 1438 training rows (45 steps); each step's loss revealed to party 1, which logs every opening
TRAIN = ["--epochs", "1", "--loss-to", "1", "--loss-every", "1", "--checkpoint-every", str(K)]


def _accuracy(out: str) -> float:
    return float(re.search(r"test accuracy, private training:\s+([0-9.]+)", out).group(1))


def _party_pid(marker: str, rank: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [c.decode("utf-8", "replace") for c in cmd]
        if marker in text and "party" in text and "--id" in text and text[text.index("--id") + 1] == str(rank):
            return int(entry.name)
    return None


@pytest.mark.timeout(150)
def test_a_killed_party_resumes_to_the_uninterrupted_accuracy(party_logs, mpc_cmd, env, tmp_path):
    pytest.importorskip("sklearn")
    ck = tmp_path / "ck"
    launch = [*mpc_cmd, "launch", "-n", "2", "--timeout", "20"]
    t0 = time.monotonic()
    straight = subprocess.run([*launch, str(SCRIPT), *TRAIN], capture_output=True, text=True, env=env, timeout=100)
    party_logs.record("uninterrupted", straight.stdout + straight.stderr)
    assert straight.returncode == 0

    killed = party_logs.start("killed", [*launch, str(SCRIPT), *TRAIN, "--checkpoint", str(ck)], tmp_path)
    seen = []
    for step in (K, 2 * K):  # the time K steps take here, then a kill at a random point of the next K steps
        deadline = time.monotonic() + 60
        while not (ck / "party1" / step_file(step)).exists():
            assert killed.poll() is None and time.monotonic() < deadline, f"no checkpoint of step {step}"
            time.sleep(0.01)
        seen.append(time.monotonic())
    time.sleep(random.uniform(0.0, seen[1] - seen[0]))
    pid = _party_pid(str(ck), 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert killed.wait(30) != 0
    out = party_logs.output("killed")
    assert "party 1 was killed by SIGKILL" in out
    done = len(re.findall(r"^\[party 1\] revealing a torch\.\w+ tensor of shape \(\) to party 1", out, re.M))

    resumed = subprocess.run([*launch, "--resume", str(ck), str(SCRIPT), *TRAIN], capture_output=True, text=True,
                             env=env, timeout=100)  # fmt: skip
    party_logs.record("resumed", resumed.stdout + resumed.stderr)
    assert resumed.returncode == 0
    start = int(re.search(r"resuming from step (\d+)", resumed.stdout).group(1))
    acc, acc_straight = _accuracy(resumed.stdout), _accuracy(straight.stdout)
    report = (f"uninterrupted {acc_straight:.4f}, resumed {acc:.4f}; party 1 killed after {done} steps, resumed "
              f"from step {start}: {done - start} repeated (K = {K}); {time.monotonic() - t0:.0f} s")  # fmt: skip
    print(report, file=sys.stderr)
    party_logs.record("summary", report)
    assert start >= 2 * K and start % K == 0 and start <= done
    assert done - start <= K, report
    assert abs(acc - acc_straight) <= 2 / 359 + 1e-9, report  # fixed-point noise: two test images at most
    # the resumed run went on checkpointing the same training; nothing but step files is left
    assert _files(ck, 0) == _files(ck, 1) == [step_file(s) for s in (24, 32, 40)]


@pytest.mark.timeout(30)
def test_the_api_is_exported():
    for name in ("save", "load", "Checkpointer", "CheckpointError"):
        assert name in mpc.__all__ and getattr(mpc, name) is not None
    assert issubclass(mpc.CheckpointError, mpc.MPCError)
    assert "CheckpointError" in mpc.errors.__doc__ and "CheckpointError" in mpc.errors.__all__
