"""A lost driver actor: the run stops with the resume command; resume works."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fedsim.backend import ray_driver
from fedsim.experiment import run_experiment
from fedsim.loop import RunStopped
from fedsim.tracking import read_metrics
from tests.fixtures import tiny_config


@pytest.mark.slow
def test_a_lost_driver_actor_stops_the_run_and_resume_finishes_it(
    tmp_path: Path, ray_session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    handles: list[Any] = []
    original = ray_driver.DriverHandle.__init__

    def keep(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        handles.append(self)

    monkeypatch.setattr(ray_driver.DriverHandle, "__init__", keep)
    over = ("rounds=8", "log.checkpoint_every=2", "resources.num_actors=1")
    cfg = tiny_config(tmp_path, *over)
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            run_experiment(cfg, backend="ray")
        except BaseException as exc:  # the thread reports whatever ended it
            outcome["exc"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = list(tmp_path.glob("quickstart/*/metrics.jsonl"))
        if rows and len(rows[0].read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    ray_session.kill(handles[0]._actor)  # as if its node went away
    thread.join(timeout=120)
    stopped = outcome.get("exc")
    assert isinstance(stopped, RunStopped), stopped
    assert "the driver actor died" in str(stopped)
    assert "resume with: fedsim run --resume" in str(stopped)
    run_dir = stopped.run_dir
    assert run_dir is not None
    resumed = run_experiment(cfg, backend="ray", run_dir=run_dir, resume=True)
    assert [r["round"] for r in read_metrics(resumed.run_dir)] == list(range(8))
