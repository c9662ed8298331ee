"""Stepping a run to its end: the part of a run that the caller owns.

Torch-free on purpose: with the Ray backend, the caller (``fedsim run`` or a
submitted job) only shows progress while the driver actor does the work, so
it never pays for importing torch.

SIGINT (Ctrl-C) and SIGTERM (what ``ray job stop`` and schedulers send) do not
kill a run mid-round: the round in flight finishes, a checkpoint is written,
everything is released, and :class:`RunStopped` says how to resume. A second
signal stops at once (the last checkpoint still holds). Runs driven in
threads (``fedsim sweep``) stop the same way, each after its own round, when
the main thread holds :func:`stop_on_signals`.

Example
-------
>>> import tempfile
>>> run_dir = Path(tempfile.mkdtemp())
>>> stopped = RunStopped("stopped by SIGTERM after round 4", run_dir, 143)
>>> str(stopped).partition("; ")[2]
'no checkpoint was written: the run cannot be resumed'
>>> (run_dir / "checkpoints").mkdir()
>>> (run_dir / CHECKPOINT).touch()
>>> str(stopped).partition("; ")[2] == f"resume with: fedsim run --resume {run_dir}"
True
"""

from __future__ import annotations

import contextlib
import logging
import reprlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from fedsim.config import Config
from fedsim.progress import Progress
from fedsim.quote import quoted
from fedsim.results import RunSummary
from fedsim.rundir import CHECKPOINT
from fedsim.tracking import RoundMetrics

if TYPE_CHECKING:
    from fedsim.backend.base import Backend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """Where a run wrote its files and what it ended with."""

    run_dir: Path
    summary: RunSummary


class RunStopped(Exception):
    """A run stopped before its last round; its checkpoint lets it resume.

    The message gives the resume command only when the run directory holds a
    checkpoint (read where it is printed: the driver runs on the caller's
    node); otherwise it says that nothing can be resumed. Picklable (it crosses
    from the driver actor to the caller).
    """

    def __init__(
        self, message: str, run_dir: Path | None = None, exit_code: int = 1
    ) -> None:
        super().__init__(message, run_dir, exit_code)
        self.message, self.run_dir, self.exit_code = message, run_dir, exit_code

    def __str__(self) -> str:
        if self.run_dir is None:
            return f"{self.message}; resume with: fedsim run --resume RUN_DIR"
        if not (self.run_dir / CHECKPOINT).is_file():
            return (
                f"{self.message}; no checkpoint was written: the run cannot be resumed"
            )
        return (
            f"{self.message}; resume with: fedsim run --resume {quoted(self.run_dir)}"
        )


class StartStopped(RunStopped):
    """A signal stopped the command while Ray was starting: no round ran."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} while Ray was starting", None, 128 + signum
        )
        self.signum = signum

    def __reduce__(self) -> tuple[type[StartStopped], tuple[int]]:
        return StartStopped, (self.signum,)

    def __str__(self) -> str:
        return f"{self.message}: no round ran, nothing to resume"


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


RunFactory = Callable[["Backend"], Run]
"""Builds a run around its client pool: ``new_run(pool)``; picklable for Ray."""


class _StopRequest:
    """SIGINT/SIGTERM ask every run of this process to stop after its round.

    Handlers can only be installed by the main thread: :func:`drive` installs
    them for a run it drives there, :func:`stop_on_signals` around runs driven
    in threads (a sweep), whose loops read the same request. A second signal
    gets the previous handlers back: it stops at once.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._depth = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # the main thread's handlers (if any) serve this thread's run
            return
        if self._depth == 0:
            self.signum = None
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                for sig, handler in self._previous.items():
                    signal.signal(sig, handler)
                self._previous.clear()
                self.signum = None


_STOP = _StopRequest()
stop_on_signals = _STOP.installed


def stop_requested() -> int | None:
    """The signal that asked this process's runs to stop, if one did."""
    return _STOP.signum


def drive(run: Run, cfg: Config) -> RunResult:
    """Step ``run`` to ``cfg.rounds`` with a progress bar; always close it.

    Raises
    ------
    RunStopped
        A signal stopped the run between rounds (after a checkpoint), or a
        round could not be completed.
    """
    stopped = False
    try:
        r = cfg.resources
        progress_bar = Progress(
            cfg.name,
            rounds=cfg.rounds,
            initial=run.next_round(),
            enabled=cfg.log.progress,
            compiles=r.compile != "off" or r.cuda_graph,
        )
        with progress_bar as progress, stop_on_signals():
            for _ in range(run.next_round(), cfg.rounds):
                progress.update(run.step())
                if (signum := stop_requested()) is not None:
                    run.checkpoint()
                    name = signal.Signals(signum).name
                    raise RunStopped(
                        f"stopped by {name} after round {run.next_round() - 1}",
                        run.run_dir,
                        128 + signum,
                    )
        return run.finish()
    except RunStopped:
        # The stop's message (and exit code) is what matters now: a teardown
        # that fails after it is a warning, not a traceback and exit 1.
        stopped = True
        try:
            run.close()
        except (Exception, KeyboardInterrupt) as exc:  # a second Ctrl-C too
            log.warning("closing the stopped run failed: %s", reprlib.repr(exc))
        raise
    finally:
        if not stopped:
            run.close()
