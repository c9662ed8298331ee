"""The driver actor: the round loop runs inside the Ray cluster.

``fedsim run`` (or a submitted job) creates one :class:`DriverActor` on its own
node, pinned there so that the run directory lands on the caller's disk. The
actor builds the :class:`fedsim.experiment.Experiment` (client pool, data in the
object store, server state) and steps it; the caller only shows progress.
The actor asks for no CPU, so every core stays with the client actors.

Example
-------
>>> result = run_on_ray(cfg, run_dir=None, resume=False)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fedsim.config import Config, ConfigError
from fedsim.data import DataError
from fedsim.loop import RunResult, drive
from fedsim.messages import RoundMetrics


@ray.remote(num_cpus=0, max_restarts=0)
class DriverActor:
    """Owns an :class:`~fedsim.experiment.Experiment` inside the cluster.

    The experiment is built by :meth:`start`, not in ``__init__``, so that a
    configuration or data error reaches the caller as that error's own type.
    """

    def __init__(self) -> None:
        self._exp: Any = None

    def start(self, cfg: Config, run_dir: Path | None, resume: bool) -> int:
        """Build the experiment; return the next round to run."""
        from fedsim.backend.ray_pool import RayPool  # imports no torch: fast

        # Client actors start importing torch and Lightning now, while this
        # actor imports them and loads the data.
        pool = RayPool(cfg)
        try:
            from fedsim.experiment import Experiment

            self._exp = Experiment(cfg, pool, run_dir, resume)
        except BaseException:
            pool.shutdown()
            raise
        return int(self._exp.next_round())

    def step(self) -> RoundMetrics:
        """Run one round."""
        metrics: RoundMetrics = self._exp.step()
        return metrics

    def finish(self) -> Any:
        """Write the summary and release the client actors."""
        return self._exp.finish()

    def close(self) -> None:
        """Release the client actors and close the files."""
        if self._exp is not None:
            self._exp.close()


class DriverHandle:
    """The caller's side of a :class:`DriverActor`, shaped like an Experiment."""

    def __init__(self, cfg: Config, run_dir: Path | None, resume: bool) -> None:
        here = ray.get_runtime_context().get_node_id()
        self._actor = DriverActor.options(  # type: ignore[attr-defined]
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote()
        try:
            self._next = int(ray.get(self._actor.start.remote(cfg, run_dir, resume)))
        except ray.exceptions.RayTaskError as exc:
            ray.kill(self._actor)
            if isinstance(exc.cause, ConfigError | DataError):
                raise exc.cause from None  # a fix-it message, not a remote traceback
            raise
        except BaseException:
            ray.kill(self._actor)
            raise

    def next_round(self) -> int:
        """The round the next :meth:`step` runs."""
        return self._next

    def step(self) -> RoundMetrics:
        """Run one round in the actor."""
        metrics: RoundMetrics = ray.get(self._actor.step.remote())
        self._next = metrics.round + 1
        return metrics

    def finish(self) -> RunResult:
        """Finish the run in the actor and return its result."""
        result: RunResult = ray.get(self._actor.finish.remote())
        return result

    def close(self) -> None:
        """Close the experiment and end the actor (idempotent)."""
        # A RayError here means the actor is gone already, its client actors too.
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(self._actor.close.remote(), timeout=60)
        ray.kill(self._actor)


def run_on_ray(cfg: Config, run_dir: Path | None, resume: bool) -> RunResult:
    """Run ``cfg`` in a driver actor on this node; show progress here."""
    return drive(DriverHandle(cfg, run_dir, resume), cfg)
