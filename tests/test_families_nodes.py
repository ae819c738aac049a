"""The protocol family decides which nodes a run has: a family without a dealer starts none, anywhere.

Thread tier (``run_threads``), process tier (``mpc.run``, ``mpc launch``,
``mpc party``), the cluster schema, the environment a launched party gets, and
the ports a local run binds before its nodes start.  Dealer-less runs use
programs without secret arithmetic (the plaintext family has no protocols yet
in this tree): ranks, and an exchange through ``ctx.comm`` directly.
"""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mpc
import parties.runner
from mpc.config import MPCConfig
from mpc.context import Expect
from mpc.errors import ConfigError, ProtocolError
from parties import cli
from parties.cluster import Cluster, Node, load_cluster, parse_cluster, write_cluster
from parties.env import ENV_NAMES, PartyEnv
from parties.local import local_cluster
from parties.memory import MemoryCommunicator, MemoryHub
from parties.party import PLAINTEXT_WARNING
from parties.ports import Listeners
from parties.simulator import run_threads

# ----- programs (module level: mpc.run pickles them) ------------------------------------------------------------


def ranks(ctx):
    return ctx.rank, ctx.world_size


def ring_exchange(ctx):
    """Every party sends its rank to every other one; also reports whether a dealer id exists."""
    n, me = ctx.world_size, ctx.rank
    peers = [j for j in range(n) if j != me]
    got = ctx.comm.exchange("ranks", {j: torch.tensor([me]) for j in peers}, {j: Expect((1,)) for j in peers})
    try:
        dealer = f"node {ctx.comm.dealer_id}"
    except ProtocolError as exc:
        dealer = str(exc)
    return sorted(int(t) for t in got.values()), dealer


# ----- thread tier ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("transport", ["memory", "inproc"])
def test_plaintext_threads_start_no_dealer(n, transport, caplog):
    received: dict[int, list] = {}
    with caplog.at_level("WARNING", logger="mpc"):
        results = run_threads(
            ring_exchange, n, protocol="plaintext", timeout=20.0, transport=transport, received=received
        )
    for rank, (got, dealer) in enumerate(results):
        assert got == [j for j in range(n) if j != rank]
        assert "this run has no dealer" in dealer and "protocol='additive-dealer'" in dealer
    # Only the parties had a communicator (the recorder is made per node), and no frame names node n.
    assert sorted(received) == list(range(n))
    assert all(sender < n for frames in received.values() for sender, _h, _p in frames)
    # Every party warned, once, that the run is not secure.
    assert [r.getMessage() for r in caplog.records].count(PLAINTEXT_WARNING) == n
    assert "NOT secure" in PLAINTEXT_WARNING


@pytest.mark.timeout(60)
def test_dealer_family_threads_still_run_the_dealer():
    received: dict[int, list] = {}
    assert run_threads(ranks, 2, timeout=20.0, received=received) == [(0, 2), (1, 2)]
    assert sorted(received) == [0, 1, 2]  # the dealer (node 2) had a communicator


@pytest.mark.timeout(30)
def test_communicator_counts_follow_the_family():
    cfg = MPCConfig(protocol="plaintext", timeout=5.0)
    with pytest.raises(ConfigError, match="need 2 communicators .*the plaintext family has no dealer"):
        hub = MemoryHub(2)
        run_threads(ranks, 2, cfg, comms=[MemoryCommunicator(hub, r, 5.0, 1 << 20) for r in range(3)])
    hub = MemoryHub(2, dealer=False)
    comm = MemoryCommunicator(hub, 0, 5.0, 1 << 20)
    assert comm.nodes == 2 and not comm.has_dealer
    with pytest.raises(ProtocolError, match="this run has no dealer"):
        _ = comm.dealer_id
    with pytest.raises(ValueError, match="cannot send to node 2"):
        comm.send(2, "x", torch.zeros(1, dtype=torch.int64))


# ----- the cluster schema ---------------------------------------------------------------------------------------

PARTIES = "[[parties]]\nid = 0\naddress = 'tcp://h:2'\n[[parties]]\nid = 1\naddress = 'tcp://h:3'\n"
DEALER = "[dealer]\naddress = 'tcp://h:1'\n"


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cluster.toml"
    p.write_text(text)
    return p


@pytest.mark.timeout(30)
def test_cluster_dealer_section_follows_the_family(tmp_path):
    plain = load_cluster(_toml(tmp_path, "[options]\nprotocol = 'plaintext'\n" + PARTIES))
    assert plain.dealer is None and plain.addresses == ["tcp://h:2", "tcp://h:3"] and len(plain.nodes) == 2
    assert plain.config().protocol == "plaintext"
    with_dealer = load_cluster(_toml(tmp_path, DEALER + PARTIES))
    assert with_dealer.addresses[-1] == "tcp://h:1" and with_dealer.node(2).id == "dealer"

    with pytest.raises(ConfigError) as err:
        load_cluster(_toml(tmp_path, "[options]\nprotocol = 'plaintext'\n" + DEALER + PARTIES))
    assert "the plaintext protocol family needs no dealer: remove the [dealer] section" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_cluster(_toml(tmp_path, PARTIES))
    assert "the additive-dealer protocol family needs a dealer: add a [dealer] section" in str(err.value)
    with pytest.raises(ConfigError, match="unknown protocol family 'spdz'"):
        load_cluster(_toml(tmp_path, "[options]\nprotocol = 'spdz'\n" + PARTIES))
    # Built in code, the same rules hold.
    with pytest.raises(ConfigError, match="needs a dealer"):
        Cluster((Node(0, "tcp://h:2"), Node(1, "tcp://h:3")), None)


@pytest.mark.timeout(30)
def test_cluster_without_dealer_round_trips(tmp_path):
    c = parse_cluster(
        {
            "options": {"protocol": "plaintext"},
            "parties": [{"id": 0, "address": "tcp://h:2"}, {"id": 1, "address": "tcp://h:3"}],
        }
    )
    write_cluster(c, tmp_path / "c.toml")
    text = (tmp_path / "c.toml").read_text()
    assert "[dealer]" not in text and 'protocol = "plaintext"' in text
    assert load_cluster(tmp_path / "c.toml").addresses == c.addresses


@pytest.fixture
def mpc_logger():
    """Removes the handler that ``cli.main`` adds to the ``mpc`` logger on this test's stderr."""
    logger = logging.getLogger("mpc")
    level, handlers = logger.level, list(logger.handlers)
    yield
    for h in logger.handlers[:]:
        if h not in handlers:
            logger.removeHandler(h)
    logger.setLevel(level)


@pytest.mark.timeout(30)
def test_mpc_party_and_dealer_refuse_a_cluster_at_odds_with_the_family(tmp_path, capsys, mpc_logger):
    script = tmp_path / "s.py"
    script.write_text("")
    bad = _toml(tmp_path, "[options]\nprotocol = 'plaintext'\n" + DEALER + PARTIES)
    assert cli.main(["party", "--cluster", str(bad), "--id", "0", "--insecure", str(script)]) == 1
    assert "the plaintext protocol family needs no dealer" in capsys.readouterr().err
    missing = _toml(tmp_path, PARTIES)
    assert cli.main(["dealer", "--cluster", str(missing), "--insecure"]) == 1
    assert "the additive-dealer protocol family needs a dealer" in capsys.readouterr().err
    plain = _toml(tmp_path, "[options]\nprotocol = 'plaintext'\n" + PARTIES)
    assert cli.main(["dealer", "--cluster", str(plain), "--insecure"]) == 1
    assert "the plaintext protocol family needs no dealer: do not start one" in capsys.readouterr().err


# ----- local clusters and ports -----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_local_cluster_has_the_family_nodes():
    plain = local_cluster(3, True, {"protocol": "plaintext"})
    with plain.listeners:
        assert plain.cluster.dealer is None and len(plain.cluster.addresses) == 3
        assert plain.node_names == ["party 0", "party 1", "party 2"] and plain.secrets == (None,) * 3
    secure = local_cluster(2, False, {})
    with secure.listeners:
        assert secure.cluster.dealer is not None and secure.node_names[-1] == "dealer"
        assert all(s is not None and len(s) == 40 for s in secure.secrets)
        assert all(nd.public_key for nd in secure.cluster.nodes)
    with pytest.raises(ConfigError, match="at least 2 parties"):
        local_cluster(1, True, {"protocol": "plaintext"})


@pytest.mark.timeout(30)
def test_listeners_hold_their_ports_until_handed_over():
    with Listeners(3) as ls:
        ports = [int(a.rsplit(":", 1)[1]) for a in ls.addresses]
        assert len(set(ports)) == 3
        # Held: nobody else can bind one meanwhile (the race of "free port" guessing is gone).
        s = socket.socket()
        try:
            with pytest.raises(OSError) as err:
                s.bind(("127.0.0.1", ports[0]))
            assert err.value.errno == errno.EADDRINUSE
        finally:
            s.close()
        fd = ls.take(1)
        with pytest.raises(ValueError, match="already taken"):
            ls.take(1)
    socket.socket(fileno=fd).close()


# ----- mpc.run ----------------------------------------------------------------------------------------------------


class _RecordingMP:
    """Stands in for ``multiprocessing`` in parties.runner: records the names of the processes it starts."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def get_context(self, method: str):
        real, names = multiprocessing.get_context(method), self.names

        class _Ctx:
            Pipe = staticmethod(real.Pipe)

            @staticmethod
            def Process(*args, name=None, **kw):  # noqa: N802 - multiprocessing's name
                names.append(name)
                return real.Process(*args, name=name, **kw)

        return _Ctx()


@pytest.mark.timeout(120)
def test_mpc_run_plaintext_starts_no_dealer(monkeypatch):
    rec = _RecordingMP()
    monkeypatch.setattr(parties.runner, "mp", rec)
    results = mpc.run(ring_exchange, parties=2, protocol="plaintext", timeout=30.0)
    assert [r[0] for r in results] == [[1], [0]]
    assert all("this run has no dealer" in r[1] for r in results)
    assert rec.names == ["mpc-party-0", "mpc-party-1"]
    # The same runner with the dealer family starts the dealer.
    rec.names.clear()
    assert mpc.run(ranks, parties=2, timeout=30.0, insecure=True) == [(0, 2), (1, 2)]
    assert rec.names == ["mpc-party-0", "mpc-party-1", "mpc-dealer"]


@pytest.mark.timeout(30)
def test_mpc_run_refuses_an_unknown_protocol():
    with pytest.raises(ConfigError, match="unknown protocol family 'spdz'"):
        mpc.run(ranks, parties=2, protocol="spdz")


# ----- mpc launch, mpc party, the environment --------------------------------------------------------------------

ENV_SCRIPT = """
import json, os, sys
import mpc
from parties.cluster import load_cluster
from parties.env import ENV_NAMES, PartyEnv

ctx = mpc.init()  # the context the CLI opened
env = PartyEnv.read(os.environ)
cluster_text = open(os.environ["MPC_CLUSTER"]).read()
print("ENV " + json.dumps({
    "rank": ctx.rank, "world": ctx.world_size, "env_rank": env.rank, "env_world": env.world_size,
    "insecure": env.insecure, "key": env.key, "set": sorted(k for k in os.environ if k.startswith("MPC_")),
    "names": list(ENV_NAMES), "dealer_section": "[dealer]" in cluster_text,
    "cluster_dealer": load_cluster(env.cluster).dealer is not None,
}), flush=True)
"""


def _env_lines(stdout: str) -> dict[str, dict]:
    out = {}
    for ln in stdout.splitlines():
        if "] ENV " in ln:
            who, _, rest = ln.partition(" ENV ")
            out[who.strip("[]")] = json.loads(rest)
    return out


@pytest.mark.timeout(120)
def test_launch_plaintext_starts_no_dealer_and_warns_every_party(party_logs, mpc_cmd, env, tmp_path):
    script = tmp_path / "env_script.py"
    script.write_text(ENV_SCRIPT)
    run = subprocess.run(
        [*mpc_cmd, "launch", "-n", "3", "--protocol", "plaintext", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=100,
    )
    party_logs.record("launch plaintext", run.stdout + run.stderr)
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in run.stdout.splitlines() if ln.strip()]
    assert not any(ln.startswith("[dealer]") for ln in lines), lines
    for i in range(3):
        warnings = [ln for ln in lines if ln.startswith(f"[party {i}] ") and "is NOT secure" in ln]
        assert len(warnings) == 1, lines
    got = _env_lines(run.stdout)
    assert sorted(got) == ["party 0", "party 1", "party 2"]
    for i in range(3):
        e = got[f"party {i}"]
        assert (e["rank"], e["world"], e["env_rank"], e["env_world"]) == (i, 3, i, 3)
        assert not e["dealer_section"] and not e["cluster_dealer"]
        # The launcher's keys travel through the same names that mpc.init reads.
        assert not e["insecure"] and e["key"] and e["key"].endswith(f"party{i}.key_secret")
        assert set(e["set"]) <= set(e["names"]) and {"MPC_CLUSTER", "MPC_RANK", "MPC_KEY"} <= set(e["set"])


@pytest.mark.timeout(30)
def test_env_round_trip():
    written = PartyEnv("/tmp/c.toml", 2, 3, "/tmp/k", False).variables()
    assert set(written) <= set(ENV_NAMES)
    assert PartyEnv.read(written) == PartyEnv("/tmp/c.toml", 2, 3, "/tmp/k", False)
    insecure = PartyEnv("/tmp/c.toml", 0, None, None, True)
    assert PartyEnv.read(insecure.variables()) == insecure
    assert PartyEnv.read({}) is None
    with pytest.raises(ConfigError, match="MPC_RANK must be a party id"):
        PartyEnv.read({"MPC_CLUSTER": "/tmp/c.toml", "MPC_RANK": "one"})


INIT_SCRIPT = """
import mpc, torch
from mpc.context import Expect
ctx = mpc.init()  # no CLI here: the party comes from the environment alone
peer = 1 - ctx.rank
got = ctx.comm.exchange("hello", {peer: torch.tensor([10 + ctx.rank])}, {peer: Expect((1,))})
print("GOT", ctx.rank, int(got[peer]), flush=True)
"""


@pytest.mark.timeout(120)
def test_init_opens_a_party_from_the_variables_the_cli_writes(party_logs, env, tmp_path):
    """Two plain ``python script.py`` processes whose environment is what ``mpc party`` writes."""
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(
        "[options]\nprotocol = 'plaintext'\ntimeout = 30.0\n"
        + "".join(f"[[parties]]\nid = {i}\naddress = 'ipc://{tmp_path}/p{i}.sock'\n" for i in range(2))
    )
    script = tmp_path / "init_script.py"
    script.write_text(INIT_SCRIPT)
    for i in range(2):
        child = dict(env, **PartyEnv(str(cluster), i, 2, None, True).variables())
        party_logs.start(f"party {i}", [sys.executable, str(script)], tmp_path, env=child)
    done = party_logs.wait_all(90)
    assert {w: c for w, (c, _) in done.items()} == {"party 0": 0, "party 1": 0}
    assert "GOT 0 11" in party_logs.output("party 0") and "GOT 1 10" in party_logs.output("party 1")


@pytest.mark.timeout(180)
def test_concurrent_launches_get_their_own_ports(party_logs, mpc_cmd, env, tmp_path):
    """Two launches at once (and then one more): every node listens on the socket its launcher bound."""
    script = tmp_path / "env_script.py"
    script.write_text(ENV_SCRIPT)
    cmd = [*mpc_cmd, "launch", "-n", "2", "--insecure", "--protocol", "plaintext", str(script)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    outs = [p.communicate(timeout=150) for p in procs]
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=100)
    for k, (out, err) in enumerate([*outs, (again.stdout, again.stderr)]):
        party_logs.record(f"launch {k}", out + err)
    assert [p.returncode for p in procs] == [0, 0] and again.returncode == 0
    for out, _ in [*outs, (again.stdout, again.stderr)]:
        assert sorted(_env_lines(out)) == ["party 0", "party 1"]
