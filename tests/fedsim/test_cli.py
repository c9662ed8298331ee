"""The command line: exit codes, fix-it messages, `fedsim params`, an end-to-end run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.cli import main
from tests.fixtures import QUICKSTART, REPO


def test_unknown_key_exits_2_before_ray_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import ray

    code = main(["run", str(QUICKSTART), "model.gama=0.3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "model.gama" in err and "did you mean model.gamma" in err
    assert not ray.is_initialized()


def test_wrong_type_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(QUICKSTART), "client.epochs=two"]) == 2
    assert "client.epochs must be an integer" in capsys.readouterr().err


def test_missing_dataset_names_path_and_fetch_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    code = main(
        [
            "run",
            str(QUICKSTART),
            "data.name=cifar10",
            f"data.root={tmp_path}",
            "model.arch=vgg16",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err
    assert "fedsim data download cifar10" in err
    assert not ray.is_initialized()


def test_model_that_does_not_fit_the_data_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import ray

    assert main(["run", str(QUICKSTART), "model.arch=vgg16", "--backend", "local"]) == 2
    err = capsys.readouterr().err
    assert "model.arch=vgg16 cannot be built for data.name=digits" in err
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    ("config", "gamma", "num_params", "original"),
    [
        ("cifar10_vgg16_fedpara.yaml", 0.1, 1_546_844, 15_253_578),
        ("cifar100_vgg16_fedpara.yaml", 0.4, 4_531_856, 15_299_748),
    ],
)
def test_params_json_matches_paper_sizes(
    capsys: pytest.CaptureFixture[str],
    config: str,
    gamma: float,
    num_params: int,
    original: int,
) -> None:
    assert main(["params", str(REPO / "configs" / config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gamma"] == gamma
    assert report["num_params"] == pytest.approx(num_params, rel=0.005)
    assert report["num_params_original"] == pytest.approx(original, rel=0.005)
    k = report["clients_per_round"]
    assert report["bytes_per_round"] == 2 * k * report["num_params_travelling"] * 4
    assert report["bytes_per_round_original"] == 2 * k * original * 4
    assert report["ratio"] == pytest.approx(original / report["num_params_travelling"])


def test_params_overrides_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(REPO / "configs" / "cifar10_vgg16_fedpara.yaml")
    assert main(["params", cfg, "model.rank_rule=official", "--json"]) == 0
    official = json.loads(capsys.readouterr().out)
    assert official["num_params"] == pytest.approx(2_022_228, rel=0.005)
    assert main(["params", cfg, "model.param=original", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ratio"] == pytest.approx(1.0)
    assert main(["params", cfg]) == 0
    table = capsys.readouterr().out
    assert "bytes per round" in table and "fewer bytes" in table


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path: Path) -> None:
    """What `make run` does: the quickstart on an embedded Ray, as a subprocess."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim",
            "run",
            str(QUICKSTART),
            f"log.root={tmp_path}",
            "log.progress=false",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run directory:" in proc.stdout and "tensorboard --logdir" in proc.stdout
    run_dir = Path(proc.stdout.split("run directory:")[1].split()[0])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_accuracy"] >= 0.85, summary
    assert summary["rounds"] == 40
    assert any((run_dir / "tb").iterdir())
