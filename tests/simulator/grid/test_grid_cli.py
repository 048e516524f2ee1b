"""The typer app mounted as ``fedge grid``: simulate, train, evaluate, export, and their errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulator.grid.cli import app
from simulator.grid.model import GridModel

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_simulate_prints_metrics_and_saves_a_plot(tmp_path: Path, summer_day: int) -> None:
    result = runner.invoke(app, ["simulate", "--day", str(summer_day), "--out", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert "scr" in result.output and "ssr" in result.output and "score" in result.output
    png = tmp_path / f"day_{summer_day:03d}.png"
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_simulate_with_the_heuristic_plots_before_and_after(tmp_path: Path, summer_day: int) -> None:
    result = runner.invoke(
        app, ["simulate", "--day", str(summer_day), "--out", str(tmp_path), "--policy", "heuristic"]
    )

    assert result.exit_code == 0, result.output
    assert "->" in result.output
    assert (tmp_path / f"day_{summer_day:03d}_heuristic.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(("day", "message"), [("0", "no PV generation"), ("400", "cover days")])
def test_simulate_a_day_without_data_fails_clearly(day: str, message: str) -> None:
    result = runner.invoke(app, ["simulate", "--day", day])

    assert result.exit_code == 1
    assert message in result.output


def test_shares_marks_the_seven_controllable_loads() -> None:
    result = runner.invoke(app, ["shares"])

    assert result.exit_code == 0, result.output
    assert len(re.findall(r"^ \* Load_", result.output, flags=re.MULTILINE)) == 7


def test_train_then_evaluate_on_held_out_days(tmp_path: Path, model: GridModel) -> None:
    out = tmp_path / "ppo"
    trained = runner.invoke(
        app,
        [
            "train",
            "--algo",
            "ppo",
            "--timesteps",
            "64",
            "--n-envs",
            "1",
            "--actions-per-day",
            "8",
            "--out",
            str(out),
            "--set",
            "n_steps=64",
            "--set",
            "batch_size=32",
            "--set",
            "n_epochs=1",
            "--set",
            "net_arch=[16, 16]",
        ],
        env={"COLUMNS": "200"},
    )
    assert trained.exit_code == 0, trained.output
    assert (out / "policy.json").is_file() and (out / "policy.onnx").is_file()

    days = ",".join(str(d) for d in model.test_days()[40:42])
    report = tmp_path / "eval.json"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--policy",
            str(out),
            "--days",
            days,
            "--json",
            str(report),
            "--plots",
            str(tmp_path / "p"),
        ],
        env={"COLUMNS": "200"},
    )

    assert result.exit_code == 0, result.output
    means = dict(re.findall(r"^mean (\S+): ([0-9.]+)$", result.output, flags=re.MULTILINE))
    assert set(means) == {"no-shift", "sb3-ppo", "heuristic"}
    saved = json.loads(report.read_text())
    assert saved["days"] == [int(d) for d in days.split(",")]
    for name, value in means.items():
        assert float(value) == pytest.approx(sum(saved["scores"][name]) / 2, abs=1e-6)
    assert (tmp_path / "p" / "scores.png").read_bytes()[:8] == PNG_MAGIC

    onnx_run = runner.invoke(app, ["evaluate", "--policy", str(out), "--days", days, "--onnx"])
    assert onnx_run.exit_code == 0, onnx_run.output
    onnx_means = dict(re.findall(r"^mean (\S+): ([0-9.]+)$", onnx_run.output, flags=re.MULTILINE))
    # same policy network in ONNX Runtime: float differences may flip a near-tie between two actions
    assert float(onnx_means["onnx-ppo"]) == pytest.approx(float(means["sb3-ppo"]), abs=1e-4)

    exported = runner.invoke(app, ["export", "--policy", str(out), "--out", str(tmp_path / "x.onnx")])
    assert exported.exit_code == 0 and "True" in exported.output
    # the exported file alone is enough: its settings are embedded (what a device gets from the registry)
    from_file = runner.invoke(app, ["evaluate", "--policy", str(tmp_path / "x.onnx"), "--days", days])
    assert from_file.exit_code == 0, from_file.output
    file_means = dict(re.findall(r"^mean (\S+): ([0-9.]+)$", from_file.output, flags=re.MULTILINE))
    assert file_means["onnx-ppo"] == onnx_means["onnx-ppo"]


def test_evaluate_refuses_a_missing_policy(tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", "--policy", str(tmp_path / "nothing"), "--days", "test"])

    assert result.exit_code == 1
    assert "not a policy directory" in result.output
