"""``fedsim run``: one experiment, new or resumed, here or on Ray."""

from __future__ import annotations

import argparse
import os
from functools import partial
from pathlib import Path

from fedsim.backend.base import Backend
from fedsim.cli.common import (
    OVERRIDES_HELP,
    backend_of,
    is_override,
    summary_paragraph,
)
from fedsim.config import Config, load_config
from fedsim.data import check_available
from fedsim.launch import BackendName, absolute_dir, launch, resolve_paths
from fedsim.loop import Run
from fedsim.model import check_model_fits
from fedsim.rundir import check_free, check_writable


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fedsim run``."""
    run = sub.add_parser("run", help="run a federated experiment")
    run.add_argument(
        "config", nargs="?", help="YAML config (see configs/); omitted: the defaults"
    )
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    run.add_argument(
        "--run-dir", type=Path, help="where to write (default runs/NAME/TIME)"
    )
    run.add_argument(
        "--address", help="Ray cluster to join (default: RAY_ADDRESS or a local one)"
    )
    run.add_argument(
        "--backend",
        choices=["ray", "local"],
        default="ray",
        help="where clients train: 'ray' (default) runs a pool of actors on Ray; "
        "'local' trains them one after another in this process, without Ray",
    )
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint",
    )


def command(args: argparse.Namespace) -> int:
    """Run (or resume) the config, print its summary."""
    if args.resume is not None:
        from fedsim.experiment import resume_config

        overrides = [args.config, *args.overrides] if args.config else args.overrides
        cfg = resume_config(args.resume, overrides)
        run_dir: Path | None = args.resume
    else:
        config, overrides = _split_config(args.config, args.overrides)
        cfg = load_config(config, overrides)
        run_dir = args.run_dir
    # The user's paths are relative to here, wherever the driver runs.
    return run_and_report(
        resolve_paths(cfg),
        backend_of(args),
        absolute_dir(run_dir),
        args.address,
        args.resume is not None,
    )


def _split_config(
    config: str | None, overrides: list[str]
) -> tuple[str | None, list[str]]:
    """Allow ``fedsim run key=value ...`` with no file: the defaults plus overrides.

    A word is taken for the config file when it names an existing file or its part
    before ``=`` looks like a path, so a mistyped ``dir/a=b.yaml`` says that the
    file does not exist.
    """
    if (
        config is not None
        and is_override(config)
        and not _exists(config)
        and not any(sep in config.partition("=")[0] for sep in "/\\")
    ):
        return None, [config, *overrides]
    return config, overrides


def _memory() -> float:
    """The memory of the machine (bytes) where the driver loads the data."""
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _exists(word: str) -> bool:
    """Whether ``word`` names an existing path (a word too long for one: no)."""
    try:
        return Path(word).exists()
    except OSError:
        return False


def new_experiment(
    cfg: Config, run_dir: Path | None, resume: bool, pool: Backend
) -> Run:
    """The run of ``fedsim run``, made around its client pool.

    Picklable by reference, and it imports the experiment (and torch) only
    when called: in the driver actor on Ray, so this process stays light.
    """
    from fedsim.experiment import Experiment

    return Experiment(cfg, pool, run_dir, resume)


def run_and_report(
    cfg: Config,
    backend: BackendName,
    run_dir: Path | None,
    address: str | None,
    resume: bool,
) -> int:
    """Check the data, run (see :func:`fedsim.launch.launch`), print the summary.

    ``cfg``'s paths and ``run_dir`` should be absolute already. With Ray, this
    process only shows progress: the driver actor imports torch and runs the
    rounds.
    """
    # Before Ray or torch start: the data is there and the model can take it.
    check_available(cfg.data.name, cfg.data.root)
    cfg.data_request().check_fits(_memory())
    check_model_fits(cfg)
    # Before Ray starts: where the run writes is free and writable.
    check_writable(Path(cfg.log.root), cfg.name)
    check_free(run_dir, resume=resume)
    new_run = partial(new_experiment, cfg, run_dir, resume)
    result = launch(cfg, new_run, backend=backend, address=address)
    print(summary_paragraph(cfg, result))
    return 0
