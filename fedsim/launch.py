"""Where a run's driver lives: in this process, or in a driver actor on Ray.

:func:`launch` runs a run to its end wherever ``backend`` says:

- ``"local"``: the driver and its clients in this process, one client after
  another (no Ray);
- ``"ray"``: a :class:`~fedsim.backend.ray_driver.DriverActor` on this node owns
  the round loop and a pool of client actors; this process joins the cluster
  (or starts an embedded Ray on 127.0.0.1), shows progress, and stops what it
  started.

The run comes from a factory, ``new_run(pool) -> Run`` (see
:class:`fedsim.loop.Run`): :func:`fedsim.experiment.run_experiment` passes
``functools.partial(Experiment, cfg, run_dir=..., resume=...)``; ``fedsim run``
passes one that imports the experiment (and torch) only where it is called, in
the driver actor. So this module imports neither the experiment nor Ray, and
nothing it imports imports it back.

Paths in a config are the user's, relative to where the command runs:
:func:`resolve_paths` makes them absolute before anything starts, and the
resolved config is what travels to the driver actor or a job.

Example
-------
>>> from fedsim.config import load_config
>>> cfg = resolve_paths(load_config(None, ["log.root=runs"]), cwd=Path("/home/me"))
>>> cfg.log.root
'/home/me/runs'
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Literal

from fedsim.backend.base import Backend
from fedsim.config import Config
from fedsim.loop import RunFactory, RunResult, StartStopped, drive

BackendName = Literal["ray", "local"]
log = logging.getLogger(__name__)


def _absolute(path: str | Path, cwd: Path | None) -> str:
    """``path`` with ``~`` expanded, relative to ``cwd`` (default: the cwd)."""
    expanded = os.path.expanduser(str(path))
    return os.path.normpath(os.path.join(cwd or os.getcwd(), expanded))


def resolve_paths(cfg: Config, cwd: Path | None = None) -> Config:
    """``cfg`` with ``data.root`` and ``log.root`` absolute (relative to ``cwd``)."""
    data_root = cfg.data.root
    return replace(
        cfg,
        data=replace(
            cfg.data, root=None if data_root is None else _absolute(data_root, cwd)
        ),
        log=replace(cfg.log, root=_absolute(cfg.log.root, cwd)),
    )


def absolute_dir(path: Path | None, cwd: Path | None = None) -> Path | None:
    """A run directory given on the command line, made absolute."""
    return None if path is None else Path(_absolute(path, cwd))


def local_pool(cfg: Config) -> Backend:
    """The in-process pool of a ``"local"`` run: clients one after another here."""
    from fedsim.backend.local import LocalBackend
    from fedsim.model import worker_spec

    return LocalBackend(worker_spec(cfg))


@contextlib.contextmanager
def ray_cluster(address: str | None) -> Iterator[None]:
    """Ray for the block: join ``address`` (else RAY_ADDRESS) or start one here.

    Already initialized Ray is used as it is; what this started is stopped,
    pass or fail.

    Raises
    ------
    ConfigError
        ``address`` (or RAY_ADDRESS) names a dashboard, not a cluster.
    StartStopped
        Ctrl-C or SIGTERM came while Ray was starting (what had started is
        stopped again).
    """
    from fedsim.backend.cluster import start_ray, stop_ray

    try:
        started = start_ray(address)
    except KeyboardInterrupt:
        stop_ray()
        raise StartStopped(signal.SIGINT) from None
    except SystemExit as exc:
        if exc.code != signal.SIGTERM:
            raise
        stop_ray()  # ray.init's own SIGTERM handler exits with the signal number
        raise StartStopped(signal.SIGTERM) from None
    try:
        yield
    finally:
        if started:
            try:
                stop_ray()
            except KeyboardInterrupt:  # a second Ctrl-C: Ray ends with this process
                log.warning("stopping Ray was interrupted")


def launch(
    cfg: Config,
    new_run: RunFactory,
    *,
    backend: BackendName = "ray",
    address: str | None = None,
    make_pool: Callable[[Config], Backend] = local_pool,
) -> RunResult:
    """Run ``new_run``'s run to ``cfg.rounds`` where ``backend`` says.

    ``address`` (else ``resources.address``, else RAY_ADDRESS) is the cluster a
    ``"ray"`` run joins when Ray is not initialized yet; none starts an
    embedded Ray on 127.0.0.1 for this run. ``make_pool`` makes the pool of a
    ``"local"`` run (tests pass pools that misbehave on purpose).

    Raises
    ------
    RunStopped
        A signal stopped the run between rounds, or a round kept failing; the
        message says how to resume.
    ConfigError, DataError
        The config or the data does not fit (also from the driver actor).
    """
    if backend == "local":
        return drive(new_run(make_pool(cfg)), cfg)
    with ray_cluster(address or cfg.resources.address):
        from fedsim.backend.ray_driver import DriverHandle

        return drive(DriverHandle(new_run, cfg), cfg)
