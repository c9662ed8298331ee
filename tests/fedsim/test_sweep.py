"""``fedsim sweep``: the grid, its runs and its report."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from fedsim.backend import jobs
from fedsim.backend.cluster import ClusterError
from fedsim.cli import _parse_args, main
from fedsim.config import Config, ConfigError
from fedsim.launch import resolve_paths
from fedsim.sweep import parse_grid, sweep_configs
from tests.fixtures import QUICKSTART, TINY


def test_grid_is_the_product_of_its_axes() -> None:
    configs = sweep_configs(
        QUICKSTART,
        ["rounds=1"],
        ["model.param=original,lowrank,fedpara", "model.gamma=0.1,0.3"],
    )
    assert [(c.model.param, c.model.gamma) for c in configs] == [
        (p, g) for p in ("original", "lowrank", "fedpara") for g in (0.1, 0.3)
    ]
    assert len({c.name for c in configs}) == 6
    assert {c.seed for c in configs} == {0} and {c.rounds for c in configs} == {1}


@pytest.mark.parametrize("bad", ["model.gamma", "model.gamma=", "=1,2"])
def test_a_malformed_axis_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="--grid"):
        parse_grid([bad])


def sweep_argv(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        str(QUICKSTART),
        "--grid",
        "model.param=original,fedpara",
        *TINY,
        "rounds=1",
        "log.tensorboard=false",
        f"log.root={tmp_path / 'runs'}",
        "--out",
        str(tmp_path / "report"),
        *extra,
    ]


def test_sweep_runs_each_point_and_reports(tmp_path: Path) -> None:
    assert main(sweep_argv(tmp_path, "--backend", "local")) == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert [r.name for r in runs] == ["quickstart_fedpara", "quickstart_original"]
    params = set()
    for run in runs:
        (run_dir,) = run.iterdir()
        params.add(json.loads((run_dir / "summary.json").read_text())["name"])
    assert params == {"quickstart_fedpara", "quickstart_original"}
    table = (tmp_path / "report" / "report.md").read_text()
    assert "quickstart_original" in table and "quickstart_fedpara" in table


@pytest.mark.slow
def test_sweep_on_ray_runs_two_at_once_sharing_the_cluster(
    tmp_path: Path, ray_session: object
) -> None:
    import ray

    assert main(sweep_argv(tmp_path, "--max-concurrent", "2")) == 0
    starts, ends = [], []
    for run in (tmp_path / "runs").iterdir():
        (run_dir,) = run.iterdir()
        summary = run_dir / "summary.json"
        # A run spans [finish - wall time, finish]: its whole life, start-up included.
        finished = summary.stat().st_mtime
        starts.append(finished - json.loads(summary.read_text())["wall_seconds"])
        ends.append(finished)
    assert max(starts) < min(ends)  # the two runs were alive at the same time
    assert ray.available_resources().get("CPU") == 2.0  # every reservation freed


# `fedsim sweep --submit`, without a cluster: port 9 answers nothing, and the
# Job Submission SDK is replaced where a test gets that far.

NO_DASHBOARD = ["--address", "http://127.0.0.1:9"]


def refuse_to_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    def submit(*args: object) -> str:
        raise AssertionError("submitted although the sweep was refused")

    monkeypatch.setattr(jobs, "submit", submit)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ([], "log.root is the default 'runs', a folder of this machine"),
        (
            ["log.root=/shared/runs", "--out", "reports/x"],
            "--out reports/x is relative",
        ),
        (["--grid", "log.root=/a,/b"], "--submit takes no grid over log.root"),
        (["log.root=/shared/runs", "--backend", "local"], "drop --backend local"),
    ],
)
def test_a_submitted_sweep_refuses_what_the_cluster_cannot_write(
    extra: list[str],
    says: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refuse_to_submit(monkeypatch)
    argv = ["sweep", str(QUICKSTART), "--grid", "model.param=original,fedpara"]
    assert main([*argv, "--submit", *NO_DASHBOARD, *extra]) == 2
    out, err = capsys.readouterr()
    (line,) = [x for x in err.splitlines() if x.strip()]
    assert line.startswith("fedsim: error: ") and says in line
    assert "run directory" not in out  # nothing printed as if it would run


def test_no_wait_goes_with_submit(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sweep", str(QUICKSTART), "--grid", "seed=0,1", "--no-wait"]
    assert main(argv) == 2
    assert "--no-wait goes with --submit" in capsys.readouterr().err


def test_a_submitted_sweep_prints_where_it_writes_and_its_job_runs_that_grid(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # log.root=shared is the user's, relative to here
    sent: list[tuple[Config, str, str | None]] = []

    def submit(cfg: Config, command: str, address: str | None) -> str:
        sent.append((cfg, command, address))
        return "raysubmit_sweep"

    monkeypatch.setattr(jobs, "submit", submit)
    grid = ["model.param=original,fedpara", "model.gamma=0.1,0.3"]
    overrides = ["rounds=1", "data.num_clients=6", "server.clients_per_round=3"]
    # Overrides before the options, in --grid (a one-value axis) and after them.
    argv = ["sweep", str(QUICKSTART), overrides[0], "--grid", *grid, overrides[1]]
    argv += ["--max-concurrent", "3", "--target", "0.7", "--submit", overrides[2]]
    overrides.append("log.root=shared")
    assert main([*argv, "--no-wait", *NO_DASHBOARD, overrides[-1]]) == 0
    out = capsys.readouterr().out.splitlines()

    # Printed before submitting: each run's directory, then the report's.
    expected = [resolve_paths(c) for c in sweep_configs(QUICKSTART, overrides, grid)]
    shown = [Path(x.split()[2]) for x in out if x.startswith("run directory: ")]
    assert [d.parent for d in shown] == [tmp_path / "shared" / c.name for c in expected]
    assert out[len(shown)].startswith("report:        ")
    report = Path(out[len(shown)].split()[1])
    assert report.parent == tmp_path / "shared" / "quickstart_sweep"
    assert out[-2:] == [
        "submitted raysubmit_sweep",
        "follow it with: fedsim logs raysubmit_sweep; fedsim status raysubmit_sweep",
    ]

    # What travels: job.yaml and a command line that expand to the same runs.
    ((cfg, command, address),) = sent
    assert address == "http://127.0.0.1:9"
    words = shlex.split(command)
    assert words[:4] == ["python", "-m", "ray_jobs.sweep", jobs.JOB_CONFIG]
    package = tmp_path / "package"
    jobs.build_package(cfg, package)
    monkeypatch.chdir(package)  # where the job runs
    job = _parse_args(["sweep", *words[3:]])
    assert job.overrides == [] and job.grid == grid
    assert sweep_configs(job.config, job.overrides, job.grid) == expected
    assert job.run_dir == shown and job.out == report
    assert (job.max_concurrent, job.target, job.backend) == (3, 0.7, "ray")
    assert not job.submit and (package / "ray_jobs" / "sweep.py").is_file()

    # Followed, the command exits with the job's own status.
    def failed(job_id: str, address: str | None) -> int:
        raise ClusterError(f"job {job_id} FAILED: boom", 3)

    monkeypatch.setattr(jobs, "follow", failed)
    assert main([*argv, *NO_DASHBOARD, f"log.root={tmp_path}"]) == 3
    assert "job raysubmit_sweep FAILED: boom" in capsys.readouterr().err
