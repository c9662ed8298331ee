from pathlib import Path

import pytest

from fedsim.cli import main
from fedsim.experiment import run_experiment
from fedsim.report import gb_to_target
from fedsim.tracking import read_metrics
from tests.fixtures import tiny_config


def test_gb_to_target_hand_computed() -> None:
    rows = [
        {"accuracy": 0.2, "cumulative_bytes": 5 * 10**8},
        {"accuracy": 0.9, "cumulative_bytes": 15 * 10**8},
        {"accuracy": 0.95, "cumulative_bytes": 25 * 10**8},
    ]
    assert gb_to_target(rows, 0.9) == 1.5
    assert gb_to_target(rows, 0.99) is None


def test_report_compares_fedpara_and_original(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = run_experiment(tiny_config(tmp_path, "name=fed"), backend="local")
    ori = run_experiment(
        tiny_config(tmp_path, "name=ori", "model.param=original"), backend="local"
    )
    png = tmp_path / "cmp.png"
    code = main(
        [
            "report",
            str(fed.run_dir),
            str(ori.run_dir),
            "--target",
            "0.0",
            "--plot",
            str(png),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "fed [mlp_digits fedpara" in out and "ori [mlp_digits original" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    fed_gb = read_metrics(fed.run_dir)[0]["cumulative_bytes"] / 1e9
    assert f"{fed_gb:.3f}" in out  # target 0 is reached in round 0


def test_report_rejects_non_run_dirs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
