"""Put a run together: data, partition, run directory, backend, driver.

:class:`Experiment` owns one run and steps it round by round;
:func:`run_experiment` steps it to the end (:func:`fedsim.loop.drive`, with a
progress bar), in this process or in a driver actor on Ray.

Example
-------
>>> from fedsim.config import load_config
>>> cfg = load_config("configs/quickstart.yaml", ["rounds=1", "log.progress=false"])
>>> summary = run_experiment(cfg, backend="local", run_dir=None)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from fedsim.backend.base import Backend
from fedsim.checkpoint import ServerState, load_checkpoint, save_checkpoint
from fedsim.compress import Wire
from fedsim.config import Config, ConfigError, load_config
from fedsim.data import FederatedData, Partition, label_heatmap, partition_summary
from fedsim.driver import Cohort, Driver, RoundFailed
from fedsim.launch import BackendName, absolute_dir, launch, local_pool, resolve_paths
from fedsim.loop import RunResult, RunStopped
from fedsim.model import preflight
from fedsim.params import StateLayout, initial_state
from fedsim.quote import quoted
from fedsim.results import RunSummary
from fedsim.rundir import claim, claim_new
from fedsim.state import ClientStateStore
from fedsim.strategy import build_strategy, strategy_settings
from fedsim.tracking import RoundMetrics, Tracker, new_run_dir

log = logging.getLogger(__name__)


class Experiment:
    """One run, round by round: what the driver owns.

    Made in this process for the in-process backend, and inside the driver
    actor for Ray (see :mod:`fedsim.backend.ray_driver`). Building it loads and
    splits the data, opens the run directory, puts the server state in place
    (from the checkpoint when resuming) and hands the workers the data.
    """

    def __init__(
        self,
        cfg: Config,
        pool: Backend,
        run_dir: Path | None = None,
        resume: bool = False,
    ) -> None:
        self.cfg = cfg
        self._t_start = time.perf_counter()
        self.pool = pool  # its workers may still be starting: they finish meanwhile
        try:
            self.model = preflight(cfg)
            # Held until close: no second process writes here meanwhile.
            if run_dir is None:
                self.run_dir, self._lock = claim_new(new_run_dir(cfg))
            else:
                self.run_dir, self._lock = run_dir, claim(run_dir, resume=resume)
        except BaseException:
            self.pool.shutdown()
            raise
        try:
            # Loaded where the pool keeps it: on Ray, by a task whose result goes
            # straight to the object store, so this process maps it, no copy.
            data, partition = self.pool.load(cfg.data_request())
            self.strategy = build_strategy(
                strategy_settings(cfg, partition.train.sizes().tolist())
            )
            self.layout = StateLayout.of(
                self.model, self.strategy.local_names(self.model)
            )
            self.state = self._initial_state(resume)
            self._wall_before = self.state.wall_seconds
            self.tracker = Tracker(
                self.run_dir,
                cfg.log,
                config=cfg.to_dict(),
                strategy=cfg.server.strategy,
                resume_round=self.state.round if resume else None,
            )
        except BaseException:
            self.pool.shutdown()
            self._lock.release()
            raise
        try:
            self._setup(data, partition, resume)
        except BaseException:
            self.close()
            raise

    def _initial_state(self, resume: bool) -> ServerState:
        glob = initial_state(self.model, self.layout)
        if resume:
            state = load_checkpoint(self.run_dir, self.cfg.to_dict(), like=glob)
            if state.round > self.cfg.rounds:
                raise ConfigError(
                    f"cannot resume {quoted(self.run_dir)} with rounds="
                    f"{self.cfg.rounds}: its checkpoint is after round "
                    f"{state.round - 1}; give rounds={state.round} or more"
                )
            return state
        return ServerState(
            round=0, global_tensors=glob, strategy_state=self.strategy.init(glob)
        )

    def _setup(self, data: FederatedData, partition: Partition, resume: bool) -> None:
        cfg, info = self.cfg, data.info
        if not resume:
            self.tracker.log_partition(
                partition_summary(partition, data.y_train, info.num_classes),
                # The heatmap is for TensorBoard only (and costs matplotlib).
                label_heatmap(partition, data.y_train, info.num_classes)
                if cfg.log.tensorboard
                else None,
            )
        self.store = ClientStateStore(self.run_dir / "client_state")
        if resume:  # versions written after the checkpoint belong to lost rounds
            self.store.rollback(self.state.round)
        self.pool.attach(data, partition, self.layout)
        self.driver = Driver(
            cohort=Cohort(
                seed=cfg.seed,
                num_clients=cfg.data.num_clients,
                size=cfg.server.clients_per_round,
            ),
            backend=self.pool,
            strategy=self.strategy,
            tracker=self.tracker,
            store=self.store,
            eval_batch_size=cfg.server.eval_batch_size,
            min_clients=cfg.server.min_clients,
            max_round_retries=cfg.server.max_round_retries,
            wire=Wire(cfg.comm, seed=cfg.seed),
        )

    def next_round(self) -> int:
        """The round :meth:`step` runs next (``cfg.rounds`` when done)."""
        return self.state.round

    def step(self) -> RoundMetrics:
        """Run one round, checkpoint when due, and return its metrics.

        Raises
        ------
        RunStopped
            The round kept failing (``server.min_clients``); the state before
            it is checkpointed, so the run resumes at that round.
        """
        try:
            self.state, metrics = self.driver.run_round(self.state)
        except RoundFailed as exc:
            self.checkpoint()
            raise RunStopped(str(exc), self.run_dir) from None
        every, r = self.cfg.log.checkpoint_every, self.state.round
        if every and (r % every == 0 or r == self.cfg.rounds):
            self.checkpoint()
        return metrics

    def checkpoint(self) -> None:
        """Save the server state and commit the client states with it."""
        state = replace(self.state, wall_seconds=self.wall_seconds())
        save_checkpoint(self.run_dir, state, self.cfg.to_dict())
        self.store.commit(self.state.round)

    def wall_seconds(self) -> float:
        """Wall time of the whole run: earlier sessions (resume) plus this one."""
        return self._wall_before + time.perf_counter() - self._t_start

    def finish(self) -> RunResult:
        """Write summary.json, release the workers, return the result."""
        summary = _summary(
            self.cfg, self.state, self.layout, self.model, self.wall_seconds()
        )
        self.tracker.finish(summary)
        self.close()
        return RunResult(self.run_dir, summary)

    def close(self) -> None:
        """Release the workers and close the files (idempotent)."""
        self.pool.shutdown()
        self.tracker.close()
        self._lock.release()


def run_experiment(
    cfg: Config,
    *,
    backend: BackendName = "ray",
    run_dir: Path | None = None,
    resume: bool = False,
    make_pool: Callable[[Config], Backend] = local_pool,
) -> RunResult:
    """Run ``cfg`` to completion and return the run directory and summary.

    Where the driver runs is :func:`fedsim.launch.launch`'s business:
    ``backend="ray"`` in a driver actor on this node, with client actors (Ray
    is joined or started if this process has not initialized it);
    ``backend="local"`` in this process. Relative paths in ``cfg`` are taken
    from the current directory. With ``resume=True``, ``run_dir`` must hold a
    checkpoint; the run continues from its last saved round. ``make_pool``
    makes the pool of a ``"local"`` run (tests pass pools that misbehave).
    """
    cfg = resolve_paths(cfg)
    new_run = partial(Experiment, cfg, run_dir=absolute_dir(run_dir), resume=resume)
    return launch(cfg, new_run, backend=backend, make_pool=make_pool)


def _summary(
    cfg: Config, state: ServerState, layout: StateLayout, model: Any, seconds: float
) -> RunSummary:
    ev = state.last_eval
    return RunSummary(
        name=cfg.name,
        strategy=cfg.server.strategy,
        final_accuracy=ev.accuracy if ev else None,
        final_loss=ev.loss if ev else None,
        best_accuracy=state.best_accuracy,
        final_personal_accuracy=ev.personal_accuracy if ev else None,
        best_personal_accuracy=state.best_personal_accuracy,
        rounds=state.round,
        total_bytes=state.ledger.total_bytes,
        bytes_up=state.ledger.total_up,
        bytes_down=state.ledger.total_down,
        num_params=sum(p.numel() for p in model.parameters()),
        num_params_travelling=layout.num_global(model),
        wall_seconds=seconds,
        scored_on=cfg.scored_on,
        global_view=cfg.global_view,
        weighting=str(cfg.server.weighting),
        personal_test_fraction=cfg.personal_test_fraction,
    )


def resume_config(run_dir: Path, overrides: list[str]) -> Config:
    """The config saved in ``run_dir`` with ``overrides`` (e.g. more rounds)."""
    return load_config(run_dir / "config.yaml", overrides)
