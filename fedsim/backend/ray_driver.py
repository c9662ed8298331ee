"""The driver actor: a run's round loop inside the Ray cluster.

:func:`fedsim.launch.launch` creates one :class:`DriverActor` on the caller's
node, pinned there so that the run directory lands on the caller's disk. The
actor makes the client pool, then the run from the factory it is given (for
example ``functools.partial(Experiment, cfg, run_dir=..., resume=...)``), and
steps it; the caller only shows progress. The actor asks for no CPU, so every
core stays with the client actors.

This module knows nothing of what a run is beyond :class:`fedsim.loop.Run`.

Example
-------
>>> handle = DriverHandle(partial(Experiment, cfg), cfg)  # doctest: +SKIP
>>> result = drive(handle, cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import ray
from ray import cloudpickle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fedsim.config import Config, ConfigError
from fedsim.data import DataError
from fedsim.loop import RunFactory, RunResult, RunStopped
from fedsim.tracking import RoundMetrics

"""Builds a run around its client pool: ``new_run(pool) -> Run``; picklable."""


CLOSE_SECONDS = 15.0
"""How long the caller waits for the actor to close its run (with
:data:`~fedsim.backend.cluster.STOP_SECONDS`, within a scheduler's 30 s grace)."""


@ray.remote(num_cpus=0, max_restarts=0)
class DriverActor:
    """Owns a run (an :class:`~fedsim.experiment.Experiment`) inside the cluster.

    The run is built by :meth:`start`, not in ``__init__``, so that a
    configuration or data error reaches the caller as that error's own type.
    """

    def __init__(self) -> None:
        self._run: Any = None

    def start(self, cfg: Config, new_run: bytes) -> tuple[int, Path]:
        """Make the pool, then the run; return the next round and the run dir.

        ``new_run`` is the pickled :data:`RunFactory`. It is unpickled only
        once the client actors are starting, so that they import torch and
        Lightning while this actor imports the run's modules and loads the data.
        """
        from fedsim.backend.ray_pool import pool_for  # imports no torch: fast

        pool = pool_for(cfg)
        try:
            factory: RunFactory = cloudpickle.loads(new_run)
            self._run = factory(pool)
        except BaseException:
            pool.shutdown()
            raise
        return int(self._run.next_round()), Path(self._run.run_dir)

    def step(self) -> RoundMetrics:
        """Run one round."""
        metrics: RoundMetrics = self._run.step()
        return metrics

    def checkpoint(self) -> None:
        """Save the state after the last finished round."""
        self._run.checkpoint()

    def finish(self) -> Any:
        """Write the summary and release the client actors."""
        return self._run.finish()

    def close(self) -> None:
        """Release the client actors and close the files."""
        if self._run is not None:
            self._run.close()


class DriverHandle:
    """The caller's side of a :class:`DriverActor`: a :class:`~fedsim.loop.Run`.

    Ray must be initialized. ``new_run`` is called in the actor with the
    actor's :class:`~fedsim.backend.ray_pool.RayPool`.
    """

    def __init__(self, new_run: RunFactory, cfg: Config) -> None:
        here = ray.get_runtime_context().get_node_id()
        self._actor = DriverActor.options(  # type: ignore[attr-defined]
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote()
        try:
            started: tuple[int, Path] = ray.get(
                self._actor.start.remote(cfg, cloudpickle.dumps(new_run))
            )
            self._next, self.run_dir = started
        except ray.exceptions.RayTaskError as exc:
            ray.kill(self._actor)
            if isinstance(exc.cause, ConfigError | DataError | OSError):
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
        try:
            metrics: RoundMetrics = ray.get(self._actor.step.remote())
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, RunStopped | OSError):
                raise exc.cause from None  # one line (how to resume; a full disk)
            raise
        except ray.exceptions.RayActorError as exc:
            # Its node was lost, or its process killed: the checkpoint remains.
            raise RunStopped(
                f"the driver actor died in round {self._next} ({type(exc).__name__})",
                self.run_dir,
            ) from None
        self._next = metrics.round + 1
        return metrics

    def checkpoint(self) -> None:
        """Checkpoint in the actor."""
        ray.get(self._actor.checkpoint.remote())

    def finish(self) -> RunResult:
        """Finish the run in the actor and return its result."""
        result: RunResult = ray.get(self._actor.finish.remote())
        return result

    def close(self) -> None:
        """Close the run and end the actor (idempotent)."""
        # A RayError here means the actor is gone already, its client actors too.
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(self._actor.close.remote(), timeout=CLOSE_SECONDS)
        ray.kill(self._actor)
