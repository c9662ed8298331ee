"""The caller's progress bar over a run's rounds.

Example
-------
>>> with Progress("quickstart", rounds=2, initial=0, enabled=False) as bar:
...     bar.update(RoundMetrics(round=0, bytes_up=1, bytes_down=1, cumulative_bytes=2))
"""

from __future__ import annotations

import threading

from fedsim.tracking import RoundMetrics

PROGRESS_ROW = threading.local()
"""``PROGRESS_ROW.value``: the terminal row of this thread's progress bar (a sweep
runs several runs at once, one line each)."""


class Progress:
    """A progress bar over rounds showing accuracy, cumulative GB and failures.

    ``compiles``: the run compiles or records its training step (the first
    round says so, then the compile seconds show).
    """

    def __init__(
        self,
        name: str,
        *,
        rounds: int,
        initial: int,
        enabled: bool = True,
        compiles: bool = False,
    ) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=rounds,
            initial=initial,
            desc=name,
            unit="round",
            disable=not enabled,
            dynamic_ncols=True,
            position=getattr(PROGRESS_ROW, "value", None),
        )
        self._shown: dict[str, str] = {}
        self._setup = 0.0
        if compiles:  # the first round also compiles every worker's step
            self._bar.set_postfix_str("compiling the training step")

    def update(self, metrics: RoundMetrics) -> None:
        """Advance one round (accuracies shown as of the last evaluation)."""
        self._bar.update(1)
        if metrics.accuracy is not None:
            self._shown["acc"] = f"{metrics.accuracy:.4f}"
        if metrics.personal_accuracy is not None:
            self._shown["personal"] = f"{metrics.personal_accuracy:.4f}"
        self._setup += metrics.setup_seconds
        shown = {
            **self._shown,
            "GB": f"{metrics.cumulative_bytes / 1e9:.3f}",
            "failed": metrics.num_failed,
        }
        if self._setup:
            shown["compile_s"] = f"{self._setup:.1f}"
        self._bar.set_postfix(shown)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()
