"""Put a run together: data, partition, run directory, backend, driver.

:class:`Experiment` owns one run and steps it round by round; :func:`drive`
steps any such run to the end with a progress bar; :func:`run_experiment`
does both, in this process or in a driver actor on Ray.

Example
-------
>>> from fedsim.config import load_config
>>> cfg = load_config("configs/quickstart.yaml", ["rounds=1", "log.progress=false"])
>>> summary = run_experiment(cfg, backend="local", run_dir=None)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

from torch import nn

from fedsim.backend.base import Backend
from fedsim.config import Config, ConfigError, load_config
from fedsim.data import (
    FederatedData,
    Partition,
    PartitionSpec,
    check_available,
    dataset_info,
    label_heatmap,
    load_dataset,
    make_partition,
    partition_summary,
)
from fedsim.driver import Driver, ServerState, load_checkpoint
from fedsim.loop import RunResult, drive
from fedsim.messages import RoundMetrics
from fedsim.model import build_backbone
from fedsim.params import StateLayout, initial_state
from fedsim.state import ClientStateStore
from fedsim.strategy import build_strategy
from fedsim.tracking import Tracker, new_run_dir

log = logging.getLogger(__name__)

BackendName = Literal["ray", "local"]


def preflight(cfg: Config) -> nn.Module:
    """Check that the data is present and the model fits it; return the model.

    Raises
    ------
    DataError
        The dataset is missing (the message says how to fetch it).
    ConfigError
        The model cannot be built for this dataset.
    """
    check_available(cfg.data.name, cfg.data.root)
    info = dataset_info(cfg.data.name)
    try:
        return build_backbone(cfg, info.num_classes, info.input_shape)
    except ValueError as exc:
        raise ConfigError(
            f"model.arch={cfg.model.arch} cannot be built for data.name="
            f"{cfg.data.name} (input {info.input_shape}): {exc}"
        ) from exc


def load_data(cfg: Config) -> tuple[FederatedData, Partition]:
    """Load the dataset and split it, a pure function of the config."""
    d = cfg.data
    data = load_dataset(
        d.name,
        d.root,
        synthetic_train=d.synthetic_train,
        synthetic_test=d.synthetic_test,
        seed=cfg.seed,
    )
    spec = PartitionSpec(
        scheme=d.partition,
        num_clients=d.num_clients,
        alpha=d.alpha,
        shards_per_client=d.shards_per_client,
        client_test_fraction=d.client_test_fraction,
    )
    return data, make_partition(data.y_train, spec, cfg.seed, data.users)


def make_backend(name: BackendName, cfg: Config) -> Backend:
    """The in-process or the Ray backend (Ray must already be initialized).

    Ray actors start here, before the data is loaded, so that their imports
    and the driver's loading overlap.
    """
    if name == "local":
        from fedsim.backend.local import LocalBackend

        return LocalBackend(cfg)
    from fedsim.backend.ray_pool import RayPool

    return RayPool(cfg)


class Experiment:
    """One run, round by round: what the driver owns.

    Made in this process for the in-process backend, and inside the driver
    actor for Ray (see :mod:`fedsim.backend.ray_driver`). Building it starts
    loads and splits the data, opens the run directory, puts the server state in
    place (from the checkpoint when resuming) and hands the workers the data.
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
            data, partition = load_data(cfg)
            self.run_dir = run_dir or new_run_dir(cfg)
            self.tracker = Tracker(self.run_dir, cfg, resume=resume)
        except BaseException:
            self.pool.shutdown()
            raise
        try:
            self._setup(data, partition, resume)
        except BaseException:
            self.close()
            raise

    def _setup(self, data: FederatedData, partition: Partition, resume: bool) -> None:
        cfg, info = self.cfg, data.info
        if not resume:
            self.tracker.log_partition(
                partition_summary(partition, data.y_train, info.num_classes),
                label_heatmap(partition, data.y_train, info.num_classes),
            )
        self.layout = StateLayout.of(self.model)
        self.state = (
            load_checkpoint(self.run_dir)
            if resume
            else ServerState(0, initial_state(self.model, self.layout))
        )
        store = (
            ClientStateStore(self.run_dir / "client_state")
            if self.layout.local_names
            else None
        )
        self.pool.attach(data, partition)
        strategy = build_strategy(cfg.server.strategy)
        self.driver = Driver(cfg, self.pool, strategy, self.layout, self.tracker, store)

    def next_round(self) -> int:
        """The round :meth:`step` runs next (``cfg.rounds`` when done)."""
        return self.state.round

    def step(self) -> RoundMetrics:
        """Run one round, checkpoint when due, and return its metrics."""
        self.state, metrics = self.driver.run_round(self.state)
        self.driver.maybe_checkpoint(self.state)
        return metrics

    def finish(self) -> RunResult:
        """Write summary.json, release the workers, return the result."""
        seconds = time.perf_counter() - self._t_start
        summary = _summary(self.cfg, self.state, self.layout, self.model, seconds)
        self.tracker.finish(summary)
        self.close()
        return RunResult(self.run_dir, summary)

    def close(self) -> None:
        """Release the workers and close the files (idempotent)."""
        self.pool.shutdown()
        self.tracker.close()


def run_experiment(
    cfg: Config,
    *,
    backend: BackendName = "ray",
    run_dir: Path | None = None,
    resume: bool = False,
) -> RunResult:
    """Run ``cfg`` to completion and return the run directory and summary.

    ``backend="ray"``: a driver actor on this node owns the round loop and the
    client actors (Ray must already be initialized, see
    :func:`fedsim.backend.ray_pool.start_ray`). ``backend="local"``: the same
    loop in this process. With ``resume=True``, ``run_dir`` must hold a
    checkpoint; the run continues from its last saved round.
    """
    if backend == "ray":
        from fedsim.backend.ray_driver import run_on_ray

        return run_on_ray(cfg, run_dir, resume)
    return drive(Experiment(cfg, make_backend(backend, cfg), run_dir, resume), cfg)


def _summary(
    cfg: Config, state: ServerState, layout: StateLayout, model: Any, seconds: float
) -> dict[str, Any]:
    ev = state.last_eval
    return {
        "name": cfg.name,
        "final_accuracy": ev.accuracy if ev else None,
        "final_loss": ev.loss if ev else None,
        "best_accuracy": state.best_accuracy,
        "rounds": state.round,
        "total_bytes": state.ledger.total_bytes,
        "bytes_up": state.ledger.total_up,
        "bytes_down": state.ledger.total_down,
        "num_params": sum(p.numel() for p in model.parameters()),
        "num_params_travelling": layout.num_global(model),
        "wall_seconds": seconds,
    }


def resume_config(run_dir: Path, overrides: list[str]) -> Config:
    """The config saved in ``run_dir`` with ``overrides`` (e.g. more rounds)."""
    return load_config(run_dir / "config.yaml", overrides)
