"""``fedsim sweep``: a grid of experiments sharing one cluster, then one report.

``--grid model.param=original,lowrank,fedpara model.gamma=0.1,0.3`` is the
cartesian product of each key's values: six runs here, each a separate
experiment with its own name (``<name>_<value>_<value>``), run directory and
client pool, all with the config's seed (put ``seed=0,1,2`` in the grid for
repeats). On Ray, up to ``max_concurrent`` runs share the cluster at once: each
reserves its own slice of it (``resources.num_actors``, the cluster's client
slots divided among the concurrent runs unless the config fixes it) and frees it,
object-store data included, when it ends. In-process (``--backend local``) runs
go one after another: they would share torch's global random state.

Example
-------
>>> [c.name for c in sweep_configs(None, ["rounds=1"], ["model.param=original,fedpara",
...                                                      "model.gamma=0.1,0.3"])]
['quickstart_original_0.1', 'quickstart_original_0.3', 'quickstart_fedpara_0.1', \
'quickstart_fedpara_0.3']
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from fedsim.config import Config, ConfigError, load_config
from fedsim.tracking import PROGRESS_ROW

if TYPE_CHECKING:
    from fedsim.launch import BackendName
    from fedsim.loop import RunResult


def parse_grid(grid: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["a.b=1,2", "c=x"]`` -> ``[("a.b", ["1", "2"]), ("c", ["x"])]``.

    >>> parse_grid(["model.gamma=0.1,0.3"])
    [('model.gamma', ['0.1', '0.3'])]
    """
    axes = []
    for item in grid:
        key, sep, values = item.partition("=")
        choices = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not choices:
            raise ConfigError(
                f"--grid {item!r} must look like key=value1,value2 "
                "(e.g. model.param=original,lowrank,fedpara)"
            )
        axes.append((key.strip(), choices))
    if not axes:
        raise ConfigError("--grid needs at least one key=value1,value2")
    return axes


def sweep_configs(
    config: str | Path | None, overrides: Sequence[str], grid: Sequence[str]
) -> list[Config]:
    """One config per point of the grid, each named after its values."""
    axes = parse_grid(grid)
    base = load_config(config, overrides)
    configs = []
    for values in itertools.product(*(choices for _, choices in axes)):
        point = [f"{key}={v}" for (key, _), v in zip(axes, values, strict=True)]
        name = "_".join([base.name, *(v.replace("/", "-") for v in values)])
        configs.append(load_config(config, [*overrides, *point, f"name={name}"]))
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"--grid gives runs of the same name: {names}")
    return configs


def run_sweep(
    configs: Sequence[Config],
    backend: BackendName,
    max_concurrent: int,
    slots: int | None = None,
) -> list[RunResult]:
    """Run ``configs``, up to ``max_concurrent`` at once on Ray; results in order.

    ``slots`` (client actors the cluster holds) is divided among the concurrent
    runs whose config does not fix ``resources.num_actors``.
    """
    from fedsim.experiment import run_experiment

    workers = max_concurrent if backend == "ray" else 1
    per_run = max(1, slots // min(workers, len(configs))) if slots else None

    def one(index: int, cfg: Config) -> RunResult:
        PROGRESS_ROW.value = index  # this run's progress line
        if per_run is not None and cfg.resources.num_actors is None:
            size = min(per_run, cfg.server.clients_per_round)
            cfg = replace(cfg, resources=replace(cfg.resources, num_actors=size))
        return run_experiment(cfg, backend=backend)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(one, i, cfg) for i, cfg in enumerate(configs)]
        return [f.result() for f in futures]
