"""Stepping a run to its end: the part of a run that the caller owns.

Torch-free on purpose: with the Ray backend, the caller (``fedsim run`` or a
submitted job) only shows progress while the driver actor does the work, so
it never pays for importing torch.

Example
-------
>>> from fedsim.config import load_config
>>> result = drive(Experiment(cfg, pool), cfg)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fedsim.config import Config
from fedsim.messages import RoundMetrics
from fedsim.tracking import Progress


@dataclass(frozen=True)
class RunResult:
    """Where a run wrote its files and what it ended with."""

    run_dir: Path
    summary: dict[str, Any]


class Steps(Protocol):
    """A run that can be stepped: an Experiment, or a driver actor's handle."""

    def next_round(self) -> int:
        """The round the next :meth:`step` runs."""

    def step(self) -> RoundMetrics:
        """Run one round."""

    def finish(self) -> RunResult:
        """Write the summary; return the result."""

    def close(self) -> None:
        """Release everything (idempotent)."""


def drive(run: Steps, cfg: Config) -> RunResult:
    """Step ``run`` to ``cfg.rounds`` with a progress bar; always close it."""
    try:
        with Progress(cfg, run.next_round()) as progress:
            for _ in range(run.next_round(), cfg.rounds):
                progress.update(run.step())
        return run.finish()
    finally:
        run.close()
