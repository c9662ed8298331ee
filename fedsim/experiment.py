"""Put a run together: data, partition, run directory, backend, driver.

Example
-------
>>> from fedsim.config import load_config
>>> cfg = load_config("configs/quickstart.yaml", ["rounds=1", "log.progress=false"])
>>> summary = run_experiment(cfg, backend="local", run_dir=None)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
from fedsim.model import build_backbone
from fedsim.params import StateLayout, initial_state
from fedsim.state import ClientStateStore
from fedsim.strategy import build_strategy
from fedsim.tracking import Tracker, new_run_dir

log = logging.getLogger(__name__)

BackendName = Literal["ray", "local"]


@dataclass(frozen=True)
class RunResult:
    """Where a run wrote its files and what it ended with."""

    run_dir: Path
    summary: dict[str, Any]


def preflight(cfg: Config) -> None:
    """Everything that can be checked before Ray starts: data present, model buildable.

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
        build_backbone(cfg, info.num_classes, info.input_shape)
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


def run_experiment(
    cfg: Config,
    *,
    backend: BackendName = "ray",
    run_dir: Path | None = None,
    resume: bool = False,
) -> RunResult:
    """Run ``cfg`` to completion and return the run directory and summary.

    With ``backend="ray"`` Ray must already be initialized (see
    :func:`fedsim.backend.ray_pool.start_ray`). With ``resume=True``, ``run_dir``
    must hold a checkpoint; the run continues from its last saved round.
    """
    check_available(cfg.data.name, cfg.data.root)
    t_start = time.perf_counter()
    with make_backend(backend, cfg) as pool:  # workers start importing now
        data, partition = load_data(cfg)
        run_dir = run_dir or new_run_dir(cfg)
        tracker = Tracker(run_dir, cfg, resume=resume)
        try:
            info = data.info
            if not resume:
                tracker.log_partition(
                    partition_summary(partition, data.y_train, info.num_classes),
                    label_heatmap(partition, data.y_train, info.num_classes),
                )
            model = build_backbone(cfg, info.num_classes, info.input_shape)
            layout = StateLayout.of(model)
            state = (
                load_checkpoint(run_dir)
                if resume
                else ServerState(0, initial_state(model, layout))
            )
            store = (
                ClientStateStore(run_dir / "client_state")
                if layout.local_names
                else None
            )
            pool.attach(data, partition)
            strategy = build_strategy(cfg.server.strategy)
            final = Driver(cfg, pool, strategy, layout, tracker, store).run(state)
            seconds = time.perf_counter() - t_start
            summary = _summary(cfg, final, layout, model, seconds)
            tracker.finish(summary)
        finally:
            tracker.close()
    return RunResult(run_dir, summary)


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
