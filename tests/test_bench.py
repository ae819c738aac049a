"""``scripts/bench.py --vs crypten``, ``--latency`` and ``--bandwidth`` without running a benchmark: workloads,
errors, the tables, the no-CrypTen path, the arguments, the namespace's set-up and clean-up.

Pure tier: no parties start.  ``measure_vs`` and CrypTen's ``measure`` are
replaced by fakes, so the test neither needs CrypTen nor depends on whether it
is installed; ``--bandwidth``'s commands go to a fake ``subprocess.run``, so it
needs no root.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import bench  # noqa: E402
import bench_crypten  # noqa: E402
import bench_workloads as wl  # noqa: E402

OURS = {"seconds": 0.2, "rounds": 2, "bytes_per_party": 24e6, "dealer_bytes": 24e6, "max_error": 2.5e-5}
THEIRS = {"seconds": 0.3, "rounds": 1, "bytes_per_party": 16e6, "dealer_bytes": 8e6, "max_error": 4e-5}


@pytest.mark.parametrize("name", list(wl.WORKLOADS))
def test_inputs_are_deterministic_and_owned(name):
    a, b = wl.inputs(name), wl.inputs(name)
    assert a.keys() == b.keys() and "x" in a
    for k, (t, owner) in a.items():
        assert t.dtype == torch.float64 and owner in (0, 1)
        assert torch.equal(t, b[k][0])


def test_nonlinear_benchmarks_share_the_inputs():
    import bench_nonlinear

    for name in ("relu", "sigmoid", "exp", "reciprocal"):
        elements, shape, _, _ = bench_nonlinear.BENCHES[name]
        assert wl.inputs(name)["x"][0].shape == shape and elements == wl.WORKLOADS[name].size


def test_references_in_float64():
    out = wl.reference("logreg", wl.inputs("logreg"))["weights"]
    assert out.shape == (64, 1) and out.abs().max() > 0.1  # ten steps moved the weights
    train = wl.reference("mlp-train", wl.inputs("mlp-train"))
    assert train["weights"].numel() == sum(p.numel() for p in wl.torch_model("mlp-train").parameters())
    assert train["loss"].item() > 0
    assert wl.reference("lenet-infer", wl.inputs("lenet-infer"))["out"].shape == (32, 10)


def test_errors_absolute_below_one_relative_above():
    want = {"out": torch.tensor([0.5, 100.0, 2.0], dtype=torch.float64)}
    got = {"out": torch.tensor([0.505, 100.5, 2.1], dtype=torch.float64)}
    e = wl.errors(got, want)
    assert e["max_abs_error"] == pytest.approx(0.5)
    assert e["max_error"] == pytest.approx(0.05)  # 0.005 absolute at 0.5, 0.5/100 and 0.1/2 relative above 1
    assert e["elements_over_1e-2"] == 1 and e["elements"] == 3 and set(e) <= set(wl.ERROR_KEYS)


def test_table_rows_ratios_and_missing_figures():
    rows = [
        {"label": "multiply 10^6", "parties": 2, "ours": OURS, "crypten_ttp": THEIRS, "crypten_tfp": {"seconds": 0.1}},
        {"label": "ReLU 10^6", "parties": 3, "ours": OURS, "crypten_ttp": {"failed": "boom"}},
        {"label": "exp 10^5", "parties": 2, "ours": OURS},
    ]
    text = bench.vs_table(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| workload | n | ours s | CrypTen-TTP s | TTP/ours |")
    assert lines[2] == (
        "| multiply 10^6 | 2 | 0.2 | 0.3 | 1.50x | 0.1 | 24 / 16 | 24 / 8 | 2 / 1 | 2.5e-05 / 4.0e-05 |"
    )
    assert "| 3 |" in lines[3] and "failed" in lines[3] and "| - |" in lines[3]
    assert lines[4].endswith("| 2.5e-05 / - |")  # no CrypTen: its cells say so
    assert "median" in text  # the notes
    assert "\n\n" not in bench.vs_table(rows, notes=False)


def test_without_crypten_runs_ours_alone_and_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench_crypten, "available", lambda: False)
    monkeypatch.setattr(bench_crypten, "measure", lambda *a, **k: pytest.fail("CrypTen must not run"))
    calls = []
    monkeypatch.setattr(
        bench, "measure_vs", lambda name, n, repeat, insecure=False, **k: calls.append((name, n)) or OURS
    )
    out = tmp_path / "vs.json"
    argv = ["--vs", "crypten", "--workloads", "mul,exp", "--parties", "2", "--repeat", "3", "--json", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "pip install --no-deps crypten==0.4.1" in printed
    assert calls == [("mul", 2), ("exp", 2)]
    saved = json.loads(out.read_text())
    assert [r["workload"] for r in saved["rows"]] == ["mul", "exp"]
    assert all("crypten_ttp" not in r for r in saved["rows"])
    assert saved["date"] and saved["argv"] == argv


def test_with_crypten_a_failed_run_keeps_the_others(monkeypatch):
    monkeypatch.setattr(bench_crypten, "available", lambda: True)

    def fake(name, n, provider, repeat, calls=1):
        if provider == "TFP":
            raise RuntimeError("CrypTen mul, rank 1: died")
        return THEIRS

    monkeypatch.setattr(bench_crypten, "measure", fake)
    monkeypatch.setattr(bench, "measure_vs", lambda *a, **k: OURS)
    logged = []
    rows = bench.compare(["mul"], [2], 3, log=logged.append)
    assert rows[0]["crypten_ttp"] == THEIRS and rows[0]["crypten_tfp"] == {"failed": "CrypTen mul, rank 1: died"}
    assert "1.50x" in logged[-1]


def test_back_to_back_times_calls_in_a_row_for_both_systems(monkeypatch, capsys):
    monkeypatch.setattr(bench_crypten, "available", lambda: True)
    seen = []
    monkeypatch.setattr(
        bench_crypten, "measure", lambda name, n, provider, repeat, calls=1: seen.append(calls) or THEIRS
    )
    monkeypatch.setattr(
        bench, "measure_vs", lambda name, n, repeat, insecure=False, calls=1: seen.append(calls) or OURS
    )
    assert bench.main(["--vs", "crypten", "--workloads", "exp", "--parties", "2", "--back-to-back", "4"]) == 0
    assert seen == [4, 4, 4]  # ours, CrypTen-TTP, CrypTen-TFP
    assert "made 4 calls in a row; figures are per call" in capsys.readouterr().out


def test_looped_steps_are_timed_per_call():
    made, between = [], []
    run = wl.looped(lambda: made.append(1) or len(made), 3, lambda: between.append(1))
    counts = {"rounds": 0}

    def step():
        counts["rounds"] += 4 * 3  # 4 rounds a call
        return run()

    row = wl.timed(step, 2, lambda: None, lambda: dict(counts))
    assert len(made) == 6 and len(between) == 4  # 3 calls a run, the inputs renewed between calls
    per = wl.per_call(row, 3)
    assert per["rounds"] == 4 and per["calls"] == 3
    assert per["seconds"] == pytest.approx(row["seconds"] / 3)
    assert per["all_seconds"] == pytest.approx([t / 3 for t in row["all_seconds"]])
    assert wl.looped(step, 1) is step and wl.per_call(row, 1) is row
    with pytest.raises(ValueError, match="1 or more"):
        wl.looped(step, 0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--vs", "crypten", "--workloads", "mul,nope"], "unknown workload(s) nope"),
        (["--vs", "crypten", "--repeat", "2"], "at least 3"),
        (["--latency", "5", "--repeat", "2"], "at least 3"),
        (["--latency", "5", "--workloads", "nope"], "unknown workload(s) nope"),
        (["--latency", "0"], "milliseconds in (0, 1000]"),
        (["--latency", "-5"], "milliseconds in (0, 1000]"),
        (["--latency", "nan"], "milliseconds in (0, 1000]"),
        (["--latency", "5ms"], "milliseconds in (0, 1000]"),
        (["--latency", "5000"], "milliseconds in (0, 1000]"),
        (["--latency", "5", "--pairs", "0"], "--pairs takes a number of runs"),
        (["--bandwidth", "1gigabit"], "a tc rate such as 1gbit"),
        (["--bandwidth", "0mbit"], "a tc rate such as 1gbit"),
        (["--vs", "crypten", "--back-to-back", "0"], "--back-to-back takes a number of calls, 1 or more"),
        (["--back-to-back", "4"], "--back-to-back goes with --vs"),
    ],
)
def test_bad_arguments_say_what_to_change(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert message in capsys.readouterr().err


# ----- --latency ---------------------------------------------------------------------------------------------

LATE = dict(OURS, seconds=0.23)  # 2 rounds at 5 ms each way: 30 ms more, 10 ms of it the floor


def test_latency_table_shows_the_floor_and_what_the_delay_added():
    rows = [
        {"label": "multiply 10^6", "parties": 2, "ours": OURS, "ours_delayed": LATE, "crypten_ttp": THEIRS},
        {"label": "ReLU 10^6", "parties": 2, "ours": OURS, "ours_delayed": LATE, "crypten_ttp": {"failed": "boom"}},
        {"label": "exp 10^5", "parties": 2, "ours": OURS, "ours_delayed": LATE},
    ]
    text = bench.latency_table(rows, 0.005)
    lines = text.splitlines()
    assert lines[0].startswith("| workload | n | rounds | MB/party | dealer MB | s, no delay | s, 5 ms | added s |")
    assert "floor, rounds x 5 ms" in lines[0] and lines[1].count("---") == 13
    assert lines[2] == "| multiply 10^6 | 2 | 2 | 24 | 24 | 0.2 | 0.23 | 0.03 | 0.01 | 3.00 | 1 | 0.3 | 0.005 |"
    assert lines[3].endswith("| failed | failed | failed |")
    assert lines[4].endswith("| 3.00 | - | - | - |")  # no CrypTen: its cells say so
    assert "one delay" in text and "no delay is\ninjected" in text  # the notes say what the floor and CrypTen are
    assert "\n\n" not in bench.latency_table(rows, 0.005, notes=False)


def test_latency_runs_ours_without_and_with_the_delay(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench_crypten, "available", lambda: True)
    peer = []
    monkeypatch.setattr(bench_crypten, "measure", lambda name, n, provider, repeat: peer.append(provider) or THEIRS)
    calls = []

    def fake(name, n, repeat, insecure=False, link_delay=0.0):
        calls.append((name, n, link_delay))
        return LATE if link_delay else OURS

    monkeypatch.setattr(bench, "measure_vs", fake)
    out = tmp_path / "latency.json"
    argv = ["--latency", "5", "--vs", "crypten", "--workloads", "mul", "--parties", "2", "--repeat", "3",
            "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    assert calls == [("mul", 2, 0.0), ("mul", 2, 0.005)]
    assert peer == ["TTP"]  # CrypTen without delay, for its rounds: TTP only
    assert "| multiply 10^6 | 2 | 2 |" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["rows"][0]["delay_ms"] == 5 and saved["rows"][0]["ours_delayed"]["seconds"] == LATE["seconds"]
    assert saved["argv"] == argv and saved["bandwidth"] is None


def test_latency_pairs_alternate_the_settings_and_take_medians(monkeypatch):
    calls = []

    def fake(name, n, repeat, insecure=False, link_delay=0.0):
        calls.append(link_delay)
        seconds = 0.1 * len(calls)
        return dict(LATE if link_delay else OURS, seconds=seconds, all_seconds=[seconds])

    monkeypatch.setattr(bench, "measure_vs", fake)
    rows = bench.latency_compare(["mul"], [2], 3, 0.005, pairs=3, log=lambda *_: None)
    assert calls == [0.0, 0.005] * 3
    assert rows[0]["ours"]["seconds"] == pytest.approx(0.3) and rows[0]["ours_delayed"]["seconds"] == pytest.approx(0.4)
    assert rows[0]["ours"]["all_seconds"] == pytest.approx([0.1, 0.3, 0.5]) and rows[0]["ours"]["rounds"] == 2


def test_latency_without_vs_runs_ours_alone(monkeypatch):
    monkeypatch.setattr(bench_crypten, "available", lambda: True)
    monkeypatch.setattr(bench_crypten, "measure", lambda *a, **k: pytest.fail("CrypTen runs only with --vs"))
    monkeypatch.setattr(bench, "measure_vs", lambda *a, **k: OURS)
    rows = bench.latency_compare(["mul"], [2], 3, 0.005, log=lambda *_: None)
    assert "crypten_ttp" not in rows[0]


# ----- --bandwidth -------------------------------------------------------------------------------------------


def test_rates_and_the_token_bucket():
    assert bench.rate_bytes("1gbit") == 125e6 and bench.rate_bytes("100Mbit") == 12.5e6
    assert bench.rate_bytes("50mbps") == 50e6 and bench.rate_bytes("2.5kbit") == 312.5
    tbf = bench.tbf_command("1gbit")
    assert tbf[:9] == ["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1gbit"]
    assert tbf[tbf.index("burst") + 1] == "125000"  # 1 ms at the rate
    small = bench.tbf_command("1mbit")
    assert int(small[small.index("burst") + 1]) >= 1500 * 10  # above the MTU, or tbf drops every packet


def test_the_worker_runs_the_same_benchmark_without_bandwidth():
    argv = ["--bandwidth", "1gbit", "--vs", "crypten", "--bandwidth=2gbit", "--repeat", "3"]
    assert bench.worker_args(argv, "1gbit") == ["--vs", "crypten", "--repeat", "3", "--under-rate", "1gbit"]


def test_bandwidth_without_root_says_so_and_exits_nonzero(monkeypatch, capsys):
    monkeypatch.setattr(bench.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: pytest.fail("nothing may run without root"))
    assert bench.main(["--bandwidth", "1gbit", "--vs", "crypten"]) == 2
    err = capsys.readouterr().err
    assert "--bandwidth needs root" in err and "--latency" in err


def _fake_ip(monkeypatch, worker):
    """``subprocess.run`` that records every command and runs ``worker(cmd)`` for the benchmark's own."""
    ran: list[list[str]] = []

    def run(cmd, *args, **kwargs):
        ran.append(list(cmd))
        if sys.executable in cmd:
            return worker(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(bench.os, "geteuid", lambda: 0)
    monkeypatch.setattr(bench.shutil, "which", lambda tool: f"/usr/sbin/{tool}")
    monkeypatch.setattr(bench.subprocess, "run", run)
    return ran


def test_bandwidth_runs_the_worker_in_a_limited_namespace_and_deletes_it(monkeypatch, capsys):
    ran = _fake_ip(monkeypatch, lambda cmd: subprocess.CompletedProcess(cmd, 0))
    assert bench.main(["--bandwidth", "1gbit", "--latency", "5", "--workloads", "mul"]) == 0
    ns = ran[0][-1]
    assert ran[0] == ["ip", "netns", "add", ns] and ran[-1] == ["ip", "netns", "del", ns]
    inside = [c[4:] for c in ran if c[:4] == ["ip", "netns", "exec", ns]]
    assert ["ip", "link", "set", "lo", "mtu", "1500"] in inside and ["ip", "link", "set", "lo", "up"] in inside
    assert bench.tbf_command("1gbit") in inside
    worker = next(c for c in inside if sys.executable in c)
    assert worker[2:] == ["--latency", "5", "--workloads", "mul", "--under-rate", "1gbit"]
    assert "tbf rate 1gbit" in capsys.readouterr().out


def test_the_namespace_goes_when_the_worker_is_interrupted(monkeypatch, capsys):
    def interrupted(cmd):
        raise KeyboardInterrupt

    ran = _fake_ip(monkeypatch, interrupted)
    assert bench.main(["--bandwidth", "1gbit", "--vs", "crypten"]) == 130
    assert ran[-1][:3] == ["ip", "netns", "del"] and ran[-1][3] == ran[0][3]
    assert "deleting the network namespace" in capsys.readouterr().err


def test_a_namespace_that_cannot_be_made_is_reported(monkeypatch, capsys):
    ran = _fake_ip(monkeypatch, lambda cmd: pytest.fail("no worker without a namespace"))

    def refuse(cmd, *a, **k):
        ran.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="mount --make-shared failed")

    monkeypatch.setattr(bench.subprocess, "run", refuse)
    assert bench.main(["--bandwidth", "1gbit"]) == 1
    err = capsys.readouterr().err
    assert "making the network namespace failed" in err and "make-shared" in err
    assert not any(c[:3] == ["ip", "netns", "del"] for c in ran)  # nothing was made: nothing to delete


# ----- scripts/profile_workload.py --------------------------------------------------------------------------


def test_profile_kinds_sort_the_functions():
    import profile_workload as pw

    assert pw.kind_of(("/x/site-packages/zmq/sugar/poll.py", 80, "poll")) == "waiting"
    assert pw.kind_of(("~", 0, "<method 'encrypt_into' of 'cryptography...AESGCM' objects>")) == "link cipher"
    assert pw.kind_of(("~", 0, "<method 'update_into' of '...CipherContext' objects>")) == "randomness"
    assert pw.kind_of(("~", 0, "<method 'gather' of 'torch._C.TensorBase' objects>")) == "torch"
    assert pw.kind_of(("~", 0, "<built-in method torch.cat>")) == "torch"
    assert pw.kind_of(("~", 0, "<method 'astype' of 'numpy.ndarray' objects>")) == "numpy / copies"
    assert pw.kind_of(("/x/site-packages/zmq/sugar/socket.py", 638, "send")) == "zmq"
    assert pw.kind_of(("/work/protocols/lookup.py", 103, "_select_rows")) == "python"


@pytest.mark.timeout(180)
def test_profile_of_a_workload_reports_both_parties_and_the_dealer(capsys):
    """A real (small) run: party 0's and the last party's kinds of work, and the dealer's replayed requests."""
    import profile_workload as pw

    assert pw.main(["matmul", "--repeat", "1", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "party 0: wall" in out and "party 1: wall" in out
    assert "dealer (replayed): " in out and "for 1 requests, 3.15 MB of corrections" in out  # one fused ptrunc
    assert out.count("seconds by kind") == 3 and "waiting" in out and "randomness" in out


# ----- scripts/timeline.py ------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_timeline_shows_each_partys_sends_and_receives_and_the_dealers_answer(capsys):
    """A real (small) run: the matmul's two rounds at both parties, the last party's request to the dealer and
    its answer (3.15 MB: one fused ptrunc), in time order."""
    import timeline

    assert timeline.main(["matmul", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "matmul, 2 parties: runs (party 0)" in out
    party1 = out.split("party 1\n")[1]
    lines = [ln.split() for ln in party1.splitlines()]
    assert lines[0][1] == "start" and lines[-1][1] == "end"
    times = [float(ln[0]) for ln in lines]
    assert times == sorted(times)
    assert ["send", "dealer", "corr:ptrunc"] == lines[1][1:4]
    answer = next(ln for ln in lines if ln[1] == "recv" and ln[2] == "dealer")
    assert answer[3] == "corr:ptrunc" and int(answer[4]) == 3_145_728
    assert sum(ln[1] == "send" and ln[2:4] == ["party", "0"] for ln in lines) == 2  # two rounds
