"""Key hygiene: secret key files and keygen never go through links; cluster keys and addresses checked on read.

* ``load_secret_key`` opens with ``O_NOFOLLOW`` and checks the opened file
  (``fstat``): a symbolic link, a file of another user, or something that is
  not a regular file is refused, saying what to do.
* ``mpc keygen`` refuses a symlinked output directory and any existing entry
  (a planted link, dangling or not, or a file) under either name: nothing is
  written through a link and nothing is overwritten.
* The cluster file's public keys must be z85 text of 32 bytes, and two nodes
  may not share an address even when spelled differently (``localhost`` and
  ``127.0.0.1`` on one port).
"""

from __future__ import annotations

import os
import socket
import stat

import pytest
import zmq

from mpc.errors import ConfigError, SecurityError
from parties import cli
from parties.cluster import parse_cluster
from parties.keys import keygen, load_secret_key


@pytest.fixture
def pair(tmp_path):
    pub, sec = keygen(tmp_path / "keys", "party0")
    return pub, sec


@pytest.mark.timeout(30)
def test_a_real_secret_key_file_loads(pair):
    pub, sec = pair
    assert zmq.curve_public(load_secret_key(sec)).decode() == pub.read_text().strip()
    assert stat.S_IMODE(os.stat(sec).st_mode) == 0o600


@pytest.mark.timeout(30)
def test_a_symlinked_secret_key_is_refused(pair, tmp_path):
    _, sec = pair
    link = tmp_path / "link.key_secret"
    link.symlink_to(sec)
    with pytest.raises(SecurityError, match="is a symbolic link.*pass the file itself with --key"):
        load_secret_key(link)


@pytest.mark.timeout(30)
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file away needs root")
def test_a_secret_key_of_another_user_is_refused(pair):
    _, sec = pair
    os.chown(sec, 4242, -1)
    with pytest.raises(SecurityError, match="belongs to user id 4242.*use a key file of your own"):
        load_secret_key(sec)


@pytest.mark.timeout(30)
def test_a_secret_key_that_is_no_regular_file_is_refused(tmp_path):
    fifo = tmp_path / "fifo.key_secret"
    os.mkfifo(fifo, 0o600)  # opening it must not block waiting for a writer
    with pytest.raises(ConfigError, match="not a regular file"):
        load_secret_key(fifo)
    with pytest.raises(ConfigError, match="not found: create one with `mpc keygen"):
        load_secret_key(tmp_path / "missing.key_secret")


@pytest.mark.timeout(30)
def test_keygen_never_follows_a_planted_link(tmp_path):
    out = tmp_path / "keys"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / "p.key_secret").symlink_to(victim)
    with pytest.raises(SecurityError, match="is a symbolic link: `mpc keygen` never writes through one"):
        keygen(out, "p")
    assert victim.read_text() == "precious\n" and not (out / "p.key").exists()
    # A dangling link under the public name: its target is never created.
    (out / "q.key").symlink_to(tmp_path / "created-by-link")
    with pytest.raises(SecurityError, match="symbolic link"):
        keygen(out, "q")
    assert not (tmp_path / "created-by-link").exists() and not (out / "q.key_secret").exists()
    # A symlinked output directory.
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "linkdir").symlink_to(real)
    with pytest.raises(SecurityError, match="key directory .* is a symbolic link.*pass the real directory"):
        keygen(tmp_path / "linkdir", "r")
    assert list(real.iterdir()) == []


@pytest.mark.timeout(30)
def test_keygen_never_overwrites(tmp_path, capsys):
    out = tmp_path / "keys"
    out.mkdir()
    (out / "p.key").write_text("someone's public key\n")
    assert cli.main(["keygen", "--out", str(out), "--id", "p"]) == 2
    err = capsys.readouterr().err
    assert "p.key already exists; move it away first" in err
    assert (out / "p.key").read_text() == "someone's public key\n" and not (out / "p.key_secret").exists()
    assert cli.main(["keygen", "--out", str(out), "--id", "s"]) == 0
    assert cli.main(["keygen", "--out", str(out), "--id", "s"]) == 2
    assert "s.key_secret already exists" in capsys.readouterr().err


def _cluster(addresses: list[str], keys: list[str] | None = None) -> dict:
    keys = keys or [None] * len(addresses)
    parties = [
        {"id": i, "address": a, **({"public_key": k} if k else {})} for i, (a, k) in enumerate(zip(addresses, keys))
    ]
    return {"options": {"protocol": "plaintext"}, "parties": parties}


@pytest.mark.timeout(30)
def test_public_keys_must_be_z85_of_32_bytes():
    good = [zmq.curve_keypair()[0].decode() for _ in range(2)]
    parse_cluster(_cluster(["tcp://h:1", "tcp://h:2"], good))
    bad = '"' * 40  # 40 characters, none of them z85
    with pytest.raises(ConfigError, match="party 1 public_key .* is not a Curve25519 public key.*`mpc keygen`"):
        parse_cluster(_cluster(["tcp://h:1", "tcp://h:2"], [good[0], bad]))
    with pytest.raises(ConfigError, match="not a Curve25519 public key"):
        parse_cluster(_cluster(["tcp://h:1", "tcp://h:2"], [good[0], good[1][:39] + "é"]))


@pytest.mark.timeout(30)
def test_duplicate_addresses_compare_resolved_names():
    try:
        socket.getaddrinfo("localhost", 7000)
    except OSError:
        pytest.skip("localhost does not resolve here")
    with pytest.raises(ConfigError, match="party 1 claims the address tcp://localhost:7000 of party 0.*same address"):
        parse_cluster(_cluster(["tcp://127.0.0.1:7000", "tcp://localhost:7000"]))
    with pytest.raises(ConfigError, match="claims the address"):
        parse_cluster(_cluster(["tcp://10.0.0.1:7000", "tcp://10.0.0.1:7000"]))
    # Distinct ports, or distinct hosts on one port, are fine.
    parse_cluster(_cluster(["tcp://127.0.0.1:7000", "tcp://localhost:7001"]))
    parse_cluster(_cluster(["tcp://10.0.0.1:7000", "tcp://10.0.0.2:7000"]))
    # Names that do not resolve are compared as text.
    parse_cluster(_cluster(["tcp://no-such-host-a.invalid:7000", "tcp://no-such-host-b.invalid:7000"]))
