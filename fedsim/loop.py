"""Stepping a run to its end: the part of a run that the caller owns.

Torch-free on purpose: with the Ray backend, the caller (``fedsim run`` or a
submitted job) only shows progress while the driver actor does the work, so
it never pays for importing torch.

SIGINT (Ctrl-C) and SIGTERM (what ``ray job stop`` and schedulers send) do not
kill a run mid-round: the round in flight finishes, a checkpoint is written,
everything is released, and :class:`RunStopped` says how to resume. A second
signal stops at once (the last checkpoint still holds).

Example
-------
>>> str(RunStopped("stopped by SIGTERM after round 4", Path("runs/a/1"), 143))
'stopped by SIGTERM after round 4; resume with: fedsim run --resume runs/a/1'
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from fedsim.config import Config
from fedsim.tracking import Progress, RoundMetrics


@dataclass(frozen=True)
class RunResult:
    """Where a run wrote its files and what it ended with."""

    run_dir: Path
    summary: dict[str, Any]


class RunStopped(Exception):
    """A run stopped before its last round; its checkpoint lets it resume.

    Picklable (it crosses from the driver actor to the caller).
    """

    def __init__(
        self, message: str, run_dir: Path | None = None, exit_code: int = 1
    ) -> None:
        super().__init__(message, run_dir, exit_code)
        self.message, self.run_dir, self.exit_code = message, run_dir, exit_code

    def __str__(self) -> str:
        where = self.run_dir if self.run_dir is not None else "RUN_DIR"
        return f"{self.message}; resume with: fedsim run --resume {where}"


class Run(Protocol):
    """A run that can be stepped: an Experiment, or a driver actor's handle."""

    run_dir: Path

    def next_round(self) -> int:
        """The round the next :meth:`step` runs."""

    def step(self) -> RoundMetrics:
        """Run one round."""

    def checkpoint(self) -> None:
        """Save the state after the last finished round."""

    def finish(self) -> RunResult:
        """Write the summary; return the result."""

    def close(self) -> None:
        """Release everything (idempotent)."""


class _Signals:
    """SIGINT/SIGTERM set a flag the loop reads between rounds (main thread only)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        for sig, handler in self._previous.items():  # a second signal: at once
            signal.signal(sig, handler)

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def drive(run: Run, cfg: Config) -> RunResult:
    """Step ``run`` to ``cfg.rounds`` with a progress bar; always close it.

    Raises
    ------
    RunStopped
        A signal stopped the run between rounds (after a checkpoint), or a
        round could not be completed.
    """
    try:
        with Progress(cfg, run.next_round()) as progress, _Signals() as signals:
            for _ in range(run.next_round(), cfg.rounds):
                progress.update(run.step())
                if signals.received is not None:
                    run.checkpoint()
                    name = signal.Signals(signals.received).name
                    raise RunStopped(
                        f"stopped by {name} after round {run.next_round() - 1}",
                        run.run_dir,
                        128 + signals.received,
                    )
        return run.finish()
    finally:
        run.close()
