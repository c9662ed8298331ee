"""The command line: exit codes, fix-it messages, `fedsim params`, an end-to-end run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.cli import _parse_args, main
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
    assert report["num_params"] == num_params  # exact counts: the paper's sizes
    assert report["num_params_original"] == original
    k = report["clients_per_round"]
    assert report["bytes_per_round"] == 2 * k * report["num_params_travelling"] * 4
    assert report["bytes_per_round_original"] == 2 * k * original * 4
    assert report["ratio"] == pytest.approx(original / report["num_params_travelling"])


def test_params_overrides_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(REPO / "configs" / "cifar10_vgg16_fedpara.yaml")
    assert main(["params", cfg, "model.rank_rule=official", "--json"]) == 0
    official = json.loads(capsys.readouterr().out)
    assert official["num_params"] == 2_022_228
    assert main(["params", cfg, "model.param=original", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ratio"] == pytest.approx(1.0)
    assert main(["params", cfg]) == 0
    table = capsys.readouterr().out
    assert "bytes per round" in table and "fewer bytes" in table


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path: Path) -> None:
    """What `make run` does: the quickstart on an embedded Ray, as a subprocess."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_AUTH_MODE", None)  # as on a fresh shell
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
    # no noise from Ray: the embedded instance's token mode is set explicitly
    assert "WARNING" not in proc.stderr and "Token authentication" not in proc.stderr
    run_dir = Path(proc.stdout.split("run directory:")[1].split()[0])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_accuracy"] >= 0.85, summary
    assert summary["rounds"] == 40
    assert any((run_dir / "tb").iterdir())


# ------------------------------------------------- argument parsing (no Ray needed)

TINY_LOCAL = [
    "rounds=1",
    "data.num_clients=3",
    "server.clients_per_round=1",
    "client.epochs=1",
    "log.progress=false",
    "log.tensorboard=false",
]


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "CFG", "--backend", "local", "rounds=3", "seed=2"],
        ["run", "CFG", "rounds=3", "--backend", "local", "seed=2"],
        ["run", "--backend", "local", "CFG", "rounds=3", "seed=2"],
        ["run", "CFG", "rounds=3", "seed=2", "--backend", "local"],
    ],
)
def test_overrides_before_or_after_options_parse_alike(argv: list[str]) -> None:
    args = _parse_args(argv)
    assert (args.config, args.overrides, args.backend) == (
        "CFG",
        ["rounds=3", "seed=2"],  # command-line order: a later override wins
        "local",
    )


def test_late_overrides_of_params_submit_and_resume() -> None:
    params = _parse_args(["params", "CFG", "--json", "model.gamma=0.3"])
    assert (params.overrides, params.json) == (["model.gamma=0.3"], True)
    submit = _parse_args(["submit", "CFG", "--no-wait", "rounds=3", "--address", "A"])
    assert (submit.overrides, submit.no_wait, submit.address) == (
        ["rounds=3"],
        True,
        "A",
    )
    resume = _parse_args(["run", "--resume", "DIR", "--backend", "local", "rounds=60"])
    assert resume.resume == Path("DIR")
    assert [resume.config, *resume.overrides] == ["rounds=60"]


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "CFG", "rounds=3", "--bogus"],
        ["run", "CFG", "--backend", "local", "--bogus", "rounds=3"],
        ["params", "CFG", "--json", "stray"],
        ["status", "raysubmit_x", "rounds=3"],  # job commands take no overrides
    ],
)
def test_unknown_arguments_are_still_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("fedsim: error: unrecognized arguments:")
    assert argv[-1] in err or "--bogus" in err


def test_help_reads_as_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["-h"])
    top = capsys.readouterr().out
    assert "``" not in top and "fedsim" in top
    assert "stop a submitted job" in top and "stop of" not in top
    with pytest.raises(SystemExit):
        main(["run", "-h"])
    run_help = " ".join(capsys.readouterr().out.split())
    assert "--backend {ray,local} where clients train" in run_help
    assert "without Ray" in run_help


def test_params_takes_overrides_after_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", str(QUICKSTART), "--json", "model.gamma=0.3"]) == 0
    late = json.loads(capsys.readouterr().out)
    assert main(["params", str(QUICKSTART), "model.gamma=0.3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == late
    assert late["gamma"] == 0.3
    assert main(["params", str(QUICKSTART), "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert default["gamma"] == 0.5 and default["num_params"] != late["num_params"]


def test_submit_checks_a_late_override_before_the_cluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Port 9 (discard) has no Ray: getting past the check would fail differently.
    argv = ["submit", str(QUICKSTART), "--no-wait", "model.gama=1"]
    assert main([*argv, "--address", "http://127.0.0.1:9"]) == 2
    assert "did you mean model.gamma" in capsys.readouterr().err


def test_local_run_then_resume_with_overrides_after_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "runs"
    argv = ["run", str(QUICKSTART), "--backend", "local", *TINY_LOCAL]
    assert main([*argv, f"log.root={root}", "name=late"]) == 0
    (run_dir,) = (root / "late").iterdir()
    assert f"run directory: {run_dir}" in capsys.readouterr().out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 1

    assert (
        main(["run", "--resume", str(run_dir), "--backend", "local", "rounds=2"]) == 0
    )
    rows = [
        json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().split("\n") if x
    ]
    assert [row["round"] for row in rows] == [0, 1]


def test_run_with_only_overrides_uses_the_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No config file: `fedsim run key=value ...` starts from the built-in defaults.
    argv = ["run", "--backend", "local", *TINY_LOCAL, f"log.root={tmp_path}"]
    assert main([*argv, "name=defaults"]) == 0
    assert "defaults: 1 round of 1 clients" in capsys.readouterr().out.replace(
        "\n", " "
    )


def test_a_missing_config_path_with_an_equals_sign_is_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "a=b.yaml"
    assert main(["run", str(missing), "--backend", "local"]) == 2
    assert f"config file {missing} does not exist" in capsys.readouterr().err


def test_params_with_a_model_that_does_not_fit_the_data_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["params", str(QUICKSTART), "model.arch=vgg16"]) == 2
    assert "model.arch=vgg16 cannot be built for data.name=digits" in (
        capsys.readouterr().err
    )
