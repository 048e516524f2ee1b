"""``fedge fl simulate``: the fedge ServerApp and ClientApp in Flower's simulation runtime from the CLI, no
controller. A run is always a subprocess (Ray never starts inside the test session): a 3-device, 2-round run
with local DP prints only JSON on stdout, with every round and the devices' epsilon; a bad option is one
line and exit 2 before anything heavy is imported (a subprocess with flwr, torch and ray unimportable). The
errors found once the runtime is imported (a strategy spec, a split, a missing flwr) are checked in this
process, where flwr, torch and scikit-learn are already loaded (a subprocess spends ~7 s importing them),
and no Ray starts before them."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

QUIET = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DO_NOT_TRACK": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def _fedge(tmp: Path, *args: str, timeout: float = 60, prelude: str = "") -> subprocess.CompletedProcess[str]:
    home = tmp / "flwr-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n')  # no outside host
    env = {**os.environ, **QUIET, "FLWR_HOME": str(home), "COLUMNS": "200"}
    code = f"import sys\n{prelude}\nfrom controller.user_cli import main\nsys.argv = ['fedge', *sys.argv[1:]]\nmain()"
    return subprocess.run(
        [sys.executable, "-c", code, "fl", "simulate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[2],
    )


def _fedge_here(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp: Path, *args: str
) -> tuple[int, str]:
    """``fedge fl simulate ARGS`` through the CLI's ``main()`` in this process: (exit code, stderr)."""
    from controller.user_cli import main

    home = tmp / "flwr-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n')
    for key, value in {**QUIET, "FLWR_HOME": str(home), "COLUMNS": "200"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "argv", ["fedge", "fl", "simulate", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr()
    assert out.out == ""
    return int(exited.value.code or 0), out.err


@pytest.mark.slow
@pytest.mark.heavy
def test_a_three_device_two_round_private_simulation_prints_every_round_as_json(tmp_path: Path) -> None:
    importlib.import_module("ray")
    output = tmp_path / "final.npz"
    run = _fedge(
        tmp_path, "--devices", "3", "--rounds", "2", "--model", "digits-linear", "--lr", "0.15",
        "--dp-epsilon", "8", "--seed", "1", "--cpus", "2", "--state-dir", str(tmp_path / "devices"),
        "--output", str(output), "--json", timeout=420,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)  # stdout is the JSON document and nothing else
    assert result["simulation"] == "flwr.simulation"
    assert result["devices"] == 3 and result["rounds"] == 2 and result["partition"] == "dirichlet"
    assert result["alpha"] == 0.5 and result["model"] == "digits-linear" and result["seed"] == 1
    assert result["dp"] == {"target_epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0}
    rows = result["per_round"]
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert r["participants"] == 3 and r["evaluated"] == 3 and r["failures"] == 0 and r["rejected"] == 0
        assert r["train_loss"] > 0 and 0 <= r["eval_accuracy"] <= 1
        assert r["bytes_sent"] > 0 and r["bytes_received"] > 0 and r["seconds"] > 0
        assert 0 < r["epsilon_max"] <= 8.0 + 1e-6
    assert rows[1]["epsilon_max"] > rows[0]["epsilon_max"]  # every round is paid for
    summary = result["summary"]
    assert summary["rounds_completed"] == 2 and summary["accuracy"] == rows[-1]["eval_accuracy"]
    assert summary["devices_accounted"] == 3 and summary["delta"] == 1e-5
    assert 0 < summary["epsilon_min"] <= summary["epsilon"] <= 8.0 + 1e-6
    assert summary["epsilon"] == pytest.approx(rows[-1]["epsilon_max"], abs=1e-6)
    assert summary["train_examples"] + summary["test_examples"] == 1797
    assert summary["output_path"] == str(output)
    with np.load(output) as saved:
        assert {name: saved[name].shape for name in saved.files} == {"1.weight": (10, 64), "1.bias": (10,)}
    assert len(list((tmp_path / "devices").glob("device-*/privacy/digits.json"))) == 3
    assert "round 1/2: train loss" in run.stderr and "round 2/2: train loss" in run.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--alpha", "0"), "error: --alpha must be a number > 0, got 0.0"),
        (("--iid", "--alpha", "1"), "error: --alpha and --iid exclude each other (--iid: no label skew)"),
        (
            ("--devices", "400", "--iid"),
            "error: --devices: the digits serve at most 359 devices (one test digit each), got 400",
        ),
        (
            ("--devices", "3", "--min-devices", "4"),
            "error: --min-devices must be in [1, --devices = 3], got 4",
        ),
    ],
)
def test_a_bad_option_is_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    prelude = "sys.modules['flwr'] = sys.modules['torch'] = sys.modules['ray'] = None"  # never imported
    run = _fedge(tmp_path, *args, prelude=prelude)
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines() == [message] and run.stdout == ""


def test_a_split_that_cannot_be_drawn_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stderr = _fedge_here(monkeypatch, capsys, tmp_path, "--devices", "100", "--alpha", "0.3")
    assert code == 2, stderr
    assert stderr.splitlines() == [
        "error: --devices/--alpha: no Dir(0.3) split gave every client 10 examples in 1000 tries (try a larger "
        "--alpha, fewer --devices or a lower --min-examples)"
    ]


def test_an_unknown_strategy_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stderr = _fedge_here(monkeypatch, capsys, tmp_path, "--strategy", '{"name": "fedavg", "mu": 1}')
    assert code == 2, stderr
    assert stderr.splitlines() == [
        "error: --strategy: fedavg: unknown parameter 'mu' (allowed: fraction_evaluate, fraction_train, "
        "min_available_nodes, min_evaluate_nodes, min_train_nodes)"
    ]


def test_without_flwr_the_error_is_one_line_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in ("flwr", "opacus")]:
        monkeypatch.delitem(sys.modules, name)  # put back after the test
    monkeypatch.setitem(sys.modules, "flwr", None)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "opacus", None)  # type: ignore[arg-type]
    code, stderr = _fedge_here(monkeypatch, capsys, tmp_path, "--dp-epsilon", "3")
    assert code == 1, stderr
    (line,) = stderr.splitlines()
    assert line.startswith("error: fedge fl simulate needs flwr[simulation]")
    assert "missing flwr[simulation], opacus" in line and line.endswith(
        "pip install 'fedge[agent,train,controller]'"
    )
