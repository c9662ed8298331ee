r"""What a run ends with, typed: its :class:`History` and its :class:`RunSummary`.

A run directory's ``metrics.jsonl`` reads back as a :class:`History`, the
run's :class:`~fedsim.tracking.RoundMetrics` keyed by round (Flower's
``Result``), and its ``summary.json`` as a :class:`RunSummary`, the value a
finished run returns (:class:`fedsim.loop.RunResult`) and the CLI prints.

Example
-------
>>> row = RoundMetrics(round=0, accuracy=0.5, bytes_up=1, bytes_down=1,
...                    cumulative_bytes=2)
>>> text = json.dumps(row.to_json()) + "\n"
>>> history = History.parse(text + text.replace("0.5", "0.7"))  # round 0 again
>>> len(history), history.rounds[0].accuracy  # read once, the last row wins
(1, 0.7)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from fedsim.tracking import RoundMetrics, json_fields

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class History:
    """A run's rounds keyed by round, in round order: what metrics.jsonl holds."""

    rounds: dict[int, RoundMetrics]

    @classmethod
    def of(cls, rows: Iterable[RoundMetrics]) -> History:
        """Key ``rows`` by round, sorted; a round given twice keeps its last row.

        A resumed run's log is cut back to its checkpoint, but files written
        before that repeat the rounds an interrupted run had run past it.
        """
        by_round = {row.round: row for row in rows}
        return cls({r: by_round[r] for r in sorted(by_round)})

    @classmethod
    def parse(cls, text: str, source: str = "metrics.jsonl") -> History:
        r"""The rounds of a ``metrics.jsonl`` text (see :meth:`of`).

        A line that is not JSON (a write cut short by a crash) is skipped with
        a warning; a JSON line that is not a row raises ValueError.

        >>> History.parse('{"round": 0}\n')  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: metrics.jsonl: line 1 is not a metrics row (TypeError(...))
        """
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s: line %d is not JSON; skipped", source, n)
                continue
            try:
                rows.append(RoundMetrics.from_json(obj))
            except TypeError as exc:
                msg = f"{source}: line {n} is not a metrics row ({exc!r})"
                raise ValueError(msg) from exc
        return cls.of(rows)

    @classmethod
    def load(cls, run_dir: Path) -> History:
        """Read ``run_dir/metrics.jsonl`` (FileNotFoundError if there is none)."""
        path = run_dir / "metrics.jsonl"
        return cls.parse(path.read_text(), str(path))

    @property
    def rows(self) -> tuple[RoundMetrics, ...]:
        """The rows in round order."""
        return tuple(self.rounds.values())

    def __len__(self) -> int:
        return len(self.rounds)


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """What a finished run ended with; its fields are summary.json's keys.

    Accuracies are None where the run never ran that evaluation. The fields
    with defaults came later: an older summary.json reads without them.

    Examples
    --------
    >>> s = RunSummary(name="qs", final_accuracy=0.9, final_loss=0.3,
    ...                best_accuracy=0.91, rounds=2, total_bytes=8, bytes_up=4,
    ...                bytes_down=4, num_params=10, num_params_travelling=10,
    ...                wall_seconds=1.5)
    >>> RunSummary.from_json(json.loads(json.dumps(s.to_json()))) == s
    True
    """

    name: str
    strategy: str = ""
    final_accuracy: float | None
    final_loss: float | None
    best_accuracy: float | None
    final_personal_accuracy: float | None = None
    best_personal_accuracy: float | None = None
    rounds: int
    total_bytes: int
    bytes_up: int
    bytes_down: int
    num_params: int
    num_params_travelling: int
    wall_seconds: float
    # What the accuracies mean: the accuracy a comparison scores the run on
    # (personal for runs whose clients keep a model part), what the global
    # accuracy measures ("global view (W2=0)": pFedPara's W1 alone), the
    # server's weighting, and the share of each client's training examples
    # carved off as its personal test split (the rest it trained on).
    scored_on: str = "global"
    global_view: str = "global"
    weighting: str = ""
    personal_test_fraction: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Plain dict for JSON, keys in field order."""
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> RunSummary:
        """A summary read back (unknown keys ignored; TypeError if one is missing)."""
        return cls(**json_fields(fields(cls), obj))

    @classmethod
    def load(cls, run_dir: Path) -> RunSummary | None:
        """``run_dir/summary.json``, or None for a run that has not finished.

        Raises
        ------
        ValueError
            The file is not a run summary.
        """
        path = run_dir / "summary.json"
        if not path.is_file():
            return None
        try:
            return cls.from_json(json.loads(path.read_text()))
        except TypeError as exc:
            raise ValueError(f"{path} is not a run summary ({exc})") from exc
