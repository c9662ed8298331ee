"""``fedsim sweep``: the grid, its runs and its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsim.cli import main
from fedsim.config import ConfigError
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
