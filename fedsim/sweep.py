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

``fedsim sweep ... --submit`` runs the same grid as one Ray job: the command
checks every config of the grid here, fixes each run's directory
(``<log.root>/<name>/<time>``) and the report's (``<log.root>/<name>_sweep/<time>``
unless ``--out`` gives an absolute one), prints them, and submits ``python -m
ray_jobs.sweep job.yaml --grid ... --run-dir DIR ...`` (see
:mod:`fedsim.backend.jobs`): ``job.yaml`` is the config with every override
applied and its paths absolute, and the job expands the same grid from it and
runs it with :func:`run_sweep` on the cluster it runs on, then writes the
report. A grid over ``data.root`` or ``log.root`` is refused there: its values
would be relative to the job's folder.

SIGINT or SIGTERM (``fedsim stop`` of a sweep job) stops a sweep as it stops
one run: each running run finishes its round and checkpoints, queued runs do
not start, and :class:`SweepStopped` lists each stopped run's resume line and
the runs never started.

:func:`run_sweep` runs any list of configs: ``fedsim compare``'s variants
(:mod:`fedsim.compare`) are a sweep along one axis, run the same way.

Example
-------
>>> [c.name for c in sweep_configs(None, ["rounds=1"], ["model.param=original,fedpara",
...                                                      "model.gamma=0.1,0.3"])]
['quickstart_original_0.1', 'quickstart_original_0.3', 'quickstart_fedpara_0.1', \
'quickstart_fedpara_0.3']
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

from fedsim.config import Config, ConfigError, load_config
from fedsim.launch import absolute_dir
from fedsim.loop import RunResult, RunStopped, stop_on_signals, stop_requested
from fedsim.progress import PROGRESS_ROW
from fedsim.rundir import check_distinct, check_free

if TYPE_CHECKING:
    from fedsim.launch import BackendName

PATH_KEYS = ("data.root", "log.root")
"""Keys whose relative values are taken from the current folder (see
:func:`fedsim.launch.resolve_paths`)."""


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


def given_run_dirs(
    configs: Sequence[Config], run_dirs: Sequence[Path] | None
) -> list[Path | None]:
    """One run directory per config (``--run-dir``, made absolute), or all None.

    Each must be distinct and free (see :func:`fedsim.rundir.check_free`).

    >>> given_run_dirs(sweep_configs(None, [], ["seed=0,1"]), None)
    [None, None]
    """
    if not run_dirs:
        return [None] * len(configs)
    if len(run_dirs) != len(configs):
        raise ConfigError(
            f"--run-dir is given {len(run_dirs)} times for {len(configs)} runs: "
            "give it once per run, in grid order, or not at all"
        )
    absolute = [p for d in run_dirs if (p := absolute_dir(d)) is not None]
    check_distinct(absolute)
    for run_dir in absolute:
        check_free(run_dir, resume=False)
    return list(absolute)


def check_grid_can_travel(grid: Sequence[str]) -> None:
    """Refuse, for a submitted sweep, a grid over paths (the job has other cwd).

    >>> check_grid_can_travel(["log.root=a,b"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fedsim.config.ConfigError: --submit takes no grid over log.root: ...
    """
    for key, _ in parse_grid(grid):
        if key in PATH_KEYS:
            raise ConfigError(
                f"--submit takes no grid over {key}: the job would read its "
                f"values relative to its own folder; set {key} once (absolute, "
                "on a filesystem every node shares) and submit one sweep per value"
            )


def run_sweep(
    configs: Sequence[Config],
    backend: BackendName,
    max_concurrent: int,
    slots: int | None = None,
    run_dirs: Sequence[Path | None] | None = None,
    *,
    what: str = "sweep",
) -> list[RunResult]:
    """Run ``configs``, up to ``max_concurrent`` at once on Ray; results in order.

    ``slots`` (client actors the cluster holds) is divided among the concurrent
    runs whose config does not fix ``resources.num_actors``. ``run_dirs``, one
    per config (see :func:`given_run_dirs`), says where each run writes (None:
    ``<log.root>/<name>/<time>``). ``what`` names the set in a
    :class:`SweepStopped` message (``"compare"`` for ``fedsim compare``).
    """
    from fedsim.experiment import run_experiment

    dirs = list(run_dirs) if run_dirs is not None else [None] * len(configs)
    workers = max_concurrent if backend == "ray" else 1
    per_run = max(1, slots // min(workers, len(configs))) if slots else None

    def one(index: int, cfg: Config, run_dir: Path | None) -> RunResult | None:
        if stop_requested() is not None:
            return None  # stopping: a queued run does not start
        PROGRESS_ROW.value = index  # this run's progress line
        if per_run is not None and cfg.resources.num_actors is None:
            size = min(per_run, cfg.server.clients_per_round)
            cfg = replace(cfg, resources=replace(cfg.resources, num_actors=size))
        return run_experiment(cfg, backend=backend, run_dir=run_dir)

    # SIGINT/SIGTERM: every running run finishes its round and checkpoints.
    with stop_on_signals(), ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(one, i, cfg, run_dir)
            for i, (cfg, run_dir) in enumerate(zip(configs, dirs, strict=True))
        ]
        while wait(futures, timeout=0.5).not_done:
            pass  # the main thread wakes up, so a signal's handler runs
        signum = stop_requested()
    errors = [f.exception() for f in futures]
    for exc in errors:
        if exc is not None and not isinstance(exc, RunStopped):
            raise exc
    results = [
        None if exc else f.result() for f, exc in zip(futures, errors, strict=True)
    ]
    if all(isinstance(r, RunResult) for r in results):
        return cast(list[RunResult], results)
    raise SweepStopped(configs, results, errors, signum, what)


class SweepStopped(RunStopped):
    """Some runs of a sweep stopped (a signal, or a round that kept failing).

    Says how to resume each stopped run and which runs never started.
    """

    def __init__(
        self,
        configs: Sequence[Config],
        results: Sequence[RunResult | None],
        errors: Sequence[BaseException | None],
        signum: int | None,
        what: str = "sweep",
    ) -> None:
        stopped = [e for e in errors if isinstance(e, RunStopped)]
        done = sum(isinstance(r, RunResult) for r in results)
        why = f"by {signal.Signals(signum).name}" if signum else "early"
        lines = [f"{what} stopped {why}: {done} of {len(configs)} runs finished"]
        lines += [
            f"  {cfg.name}: {e}" for cfg, e in zip(configs, errors, strict=True) if e
        ]
        waiting = [
            cfg.name
            for cfg, r, e in zip(configs, results, errors, strict=True)
            if r is None and e is None
        ]
        if waiting:
            lines.append(f"  not started: {', '.join(waiting)}")
        code = 128 + signum if signum else stopped[0].exit_code
        super().__init__("\n".join(lines), None, code)

    def __str__(self) -> str:
        return self.message
