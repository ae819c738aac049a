"""``scripts/bench.py --vs crypten`` without running a benchmark: workloads, errors, the table, the no-CrypTen path.

Pure tier: no parties start.  ``measure_vs`` and CrypTen's ``measure`` are
replaced by fakes, so the test neither needs CrypTen nor depends on whether it
is installed.
"""

from __future__ import annotations

import json
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
    monkeypatch.setattr(bench, "measure_vs", lambda name, n, repeat, insecure=False: calls.append((name, n)) or OURS)
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

    def fake(name, n, provider, repeat):
        if provider == "TFP":
            raise RuntimeError("CrypTen mul, rank 1: died")
        return THEIRS

    monkeypatch.setattr(bench_crypten, "measure", fake)
    monkeypatch.setattr(bench, "measure_vs", lambda *a, **k: OURS)
    logged = []
    rows = bench.compare(["mul"], [2], 3, log=logged.append)
    assert rows[0]["crypten_ttp"] == THEIRS and rows[0]["crypten_tfp"] == {"failed": "CrypTen mul, rank 1: died"}
    assert "1.50x" in logged[-1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--vs", "crypten", "--workloads", "mul,nope"], "unknown workload(s) nope"),
        (["--vs", "crypten", "--repeat", "2"], "at least 3"),
    ],
)
def test_bad_arguments_say_what_to_change(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert message in capsys.readouterr().err
