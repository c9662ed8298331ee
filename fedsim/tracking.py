"""The run directory: resolved config, metrics.jsonl, TensorBoard, summary.

Layout of ``runs/<name>/<timestamp>/``::

    config.yaml       the resolved config
    metrics.jsonl     one JSON object per round
    comm.jsonl        bytes per client and direction, per round
    clients.jsonl     each client's result per round: examples, steps, loss,
                      seconds, diagnostics (client and strategy), or failure
    partition.json    examples and label histogram per client
    summary.json      final and best accuracy, bytes, parameters
    tb/               TensorBoard event files
    checkpoints/      server state (last.pt) for --resume
    client_state/     what each client keeps between rounds, by round

:class:`RoundMetrics` declares a metrics row, once; :mod:`fedsim.results`
reads a run directory back (its ``History`` and ``RunSummary``).
"""

from __future__ import annotations

import json
import logging
import math
import reprlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import yaml

from fedsim.comm import RoundTraffic
from fedsim.config import Config, ConfigError, LogConfig

if TYPE_CHECKING:
    from fedsim.results import RunSummary
    from fedsim.strategy.evaluate import EvalMetrics

log = logging.getLogger(__name__)

LOGGED: Mapping[str, bool] = MappingProxyType({"tensorboard": True})
"""Field metadata: a TensorBoard scalar every round the field has a value (a
``dict[str, float]`` field: one tag per key, ``<field>/<key>``)."""
TIMED: Mapping[str, bool] = MappingProxyType({"timing": True})
"""Field metadata: a wall-clock measurement. Every other field of a row is a pure
function of the config, what a resumed or re-run run repeats exactly."""
LOGGED_TIMED: Mapping[str, bool] = MappingProxyType({**LOGGED, **TIMED})


@dataclass(frozen=True, kw_only=True)
class RoundMetrics:
    """The per-round record written to metrics.jsonl and TensorBoard.

    The one declaration of a metrics row: its fields are the JSON keys, in this
    order; :data:`SCALARS` and :data:`TIMING` are read off their metadata. Adding
    a metric is one line here, e.g.
    ``extra: dict[str, float] = field(default_factory=dict, metadata=LOGGED)``.

    Evaluation fields are None (``null`` in JSON) on rounds that did not run
    that evaluation (``server.eval_every > 1``, or a run without it). Only the
    round and its bytes have no default: every row ever written has them, and a
    field an older file lacks reads as its default (:meth:`from_json`).

    Examples
    --------
    >>> row = RoundMetrics(round=0, bytes_up=4, bytes_down=4, cumulative_bytes=8)
    >>> RoundMetrics.from_json(row.to_json()) == row
    True
    >>> old = {"round": 0, "accuracy": float("nan"), "bytes_up": 4,
    ...        "bytes_down": 4, "cumulative_bytes": 8, "gone": 1}
    >>> RoundMetrics.from_json(old).accuracy is None  # NaN: not evaluated
    True
    """

    round: int
    accuracy: float | None = field(default=None, metadata=LOGGED)
    loss: float | None = field(default=None, metadata=LOGGED)
    personal_accuracy: float | None = field(default=None, metadata=LOGGED)
    personal_accuracy_per_client: float | None = field(default=None, metadata=LOGGED)
    personal_loss: float | None = field(default=None, metadata=LOGGED)
    personal_p10: float | None = field(default=None, metadata=LOGGED)
    personal_p90: float | None = field(default=None, metadata=LOGGED)
    # Clients scored, and evaluated clients left out as never trained.
    personal_clients: int = 0
    personal_untrained: int = 0
    # The strategy's other models on the global test split (FedDyn's
    # all-client mean; TensorBoard: "extra_accuracy/<name>").
    extra_accuracy: dict[str, float] = field(default_factory=dict, metadata=LOGGED)
    train_loss: float | None = field(default=None, metadata=LOGGED)
    bytes_up: int = field(metadata=LOGGED)
    bytes_down: int = field(metadata=LOGGED)
    cumulative_bytes: int = field(metadata=LOGGED)
    bytes_by_channel: dict[str, dict[str, int]] = field(default_factory=dict)
    num_clients: int = field(default=0, metadata=LOGGED)
    num_failed: int = field(default=0, metadata=LOGGED)
    lr: float | None = field(default=None, metadata=LOGGED)
    # The strategy's own round metrics (TensorBoard: "<strategy>/<name>").
    strategy: dict[str, float] = field(default_factory=dict, metadata=LOGGED)
    round_seconds: float = field(default=0.0, metadata=LOGGED_TIMED)
    # Of round_seconds, the evaluation's part; train_seconds is the clients'
    # own time summed (they overlap across workers), setup_seconds its share
    # spent compiling or capturing the training step, steps their steps.
    eval_seconds: float = field(default=0.0, metadata=LOGGED_TIMED)
    train_seconds: float = field(default=0.0, metadata=TIMED)
    setup_seconds: float = field(default=0.0, metadata=LOGGED_TIMED)
    steps: int = 0
    # unix time at the start of the round
    started_at: float | None = field(default=None, metadata=TIMED)

    @staticmethod
    def evaluated(evaluation: EvalMetrics | None) -> dict[str, Any]:
        """The evaluation fields of a round: all of its :class:`EvalMetrics`.

        Each field of ``EvalMetrics`` is a field of a row too, so nothing an
        evaluation computes is dropped on the way to metrics.jsonl.
        """
        if evaluation is None:
            return {}
        return {f.name: getattr(evaluation, f.name) for f in fields(evaluation)}

    def scalars(self) -> Iterator[tuple[str, float]]:
        """``(tag, value)`` of every TensorBoard scalar of the round.

        >>> row = RoundMetrics(round=0, bytes_up=1, bytes_down=2, cumulative_bytes=3)
        >>> dict(row.scalars())["cumulative_bytes"], "accuracy" in dict(row.scalars())
        (3, False)
        """
        for f in fields(self):
            if not f.metadata.get("tensorboard"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                yield from (
                    (f"{f.name}/{k}", v) for k, v in value.items() if v is not None
                )
            elif value is not None:
                yield f.name, value

    def to_json(self) -> dict[str, Any]:
        """Plain dict for JSON, keys in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, obj: Any) -> RoundMetrics:
        """A row read back from JSON (see :func:`json_fields`).

        Unknown keys are ignored, missing ones take their default, and a
        non-finite number where None is allowed reads as None (older files
        wrote NaN for a round without evaluation).

        Raises
        ------
        TypeError
            ``obj`` is not a JSON object, or lacks the round or its bytes.
        """
        return cls(**json_fields(fields(cls), obj))


SCALARS = tuple(
    f.name
    for f in fields(RoundMetrics)
    if f.metadata.get("tensorboard") and f.default_factory is not dict
)
"""The per-round scalar TensorBoard tags, logged every round they have a value
(a dict field's tags are ``<field>/<key>``, one per key it holds)."""

TIMING = frozenset(f.name for f in fields(RoundMetrics) if f.metadata.get("timing"))
"""The fields of a metrics row that are wall-clock measurements: everything else
in a row is a pure function of the config (what a resumed or re-run run repeats
exactly)."""


def json_fields(declared: tuple[Field[Any], ...], obj: Any) -> dict[str, Any]:
    """The values of a JSON object for a dataclass's ``declared`` fields.

    Unknown keys are left out, missing ones too (the dataclass default applies);
    a non-finite float of a field whose default is None becomes None.

    >>> from dataclasses import fields
    >>> json_fields(fields(RoundMetrics), {"round": 1, "loss": float("inf"), "x": 0})
    {'round': 1, 'loss': None}
    """
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
    values = {}
    for f in declared:
        if f.name in obj:
            value = obj[f.name]
            if f.default is None and isinstance(value, float):
                value = value if math.isfinite(value) else None
            values[f.name] = value
    return values


def new_run_dir(cfg: Config) -> Path:
    """``<log.root>/<name>/<YYYYmmdd-HHMMSS>``, made unique if it exists."""
    base = Path(cfg.log.root) / cfg.name / time.strftime("%Y%m%d-%H%M%S")
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Tracker:
    """Writes everything a run leaves behind, as it happens."""

    def __init__(
        self,
        run_dir: Path,
        log: LogConfig,
        *,
        config: Mapping[str, Any],
        strategy: str,
        resume_round: int | None = None,
    ) -> None:
        """Open the run directory; on resume, cut the logs back to ``resume_round``.

        ``config`` is the resolved config as plain data (written to config.yaml
        and shown in TensorBoard's hyperparameters); ``strategy`` names the
        TensorBoard group of the strategy's own metrics. Rows of rounds at or
        after the checkpoint's round were written by the interrupted run and
        are written again now: they are removed, and TensorBoard purges its
        events from that step on.
        """
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_round is not None:  # first: a refused resume records nothing
            for name in ("metrics.jsonl", "comm.jsonl", "clients.jsonl"):
                _truncate_rounds(run_dir / name, resume_round)
        (run_dir / "config.yaml").write_text(
            yaml.safe_dump(dict(config), sort_keys=False)
        )
        self.strategy = strategy
        # pFedPara's global accuracy is W1 alone: its TensorBoard tags say so.
        model = config.get("model") or {}
        self._global_tag = (
            "global_view_W2=0/" if model.get("param") == "pfedpara" else ""
        )
        self._metrics = (run_dir / "metrics.jsonl").open("a")
        self._comm = (run_dir / "comm.jsonl").open("a")
        self._clients = (run_dir / "clients.jsonl").open("a")
        self.writer: Any = None
        if log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=resume_round)
            if resume_round is None:
                self._write_hparams(config)

    def _write_hparams(self, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        flat = {
            k: (v if isinstance(v, int | float | str | bool) else str(v))
            for k, v in flatten(config).items()
        }
        # The metrics named here are the scalar tags logged every round.
        exp, ssi, sei = hparams(flat, {"accuracy": 0.0, "cumulative_bytes": 0.0})
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)

    def log_partition(self, summary: Mapping[str, Any], figure: Any | None) -> None:
        """Save partition.json and the label heatmap."""
        (self.run_dir / "partition.json").write_text(json.dumps(summary))
        if self.writer is not None and figure is not None:
            self.writer.add_figure("data/label_distribution", figure, global_step=0)

    def log_round(
        self,
        metrics: RoundMetrics,
        traffic: RoundTraffic,
        clients: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Append the round to metrics.jsonl, comm.jsonl, clients.jsonl, TensorBoard."""
        self._metrics.write(json.dumps(metrics.to_json()) + "\n")
        self._metrics.flush()
        self._comm.writelines(json.dumps(row) + "\n" for row in traffic.per_client())
        self._comm.flush()
        self._clients.writelines(json.dumps(row) + "\n" for row in clients)
        self._clients.flush()
        if self.writer is None:
            return
        step = metrics.round
        for tag, value in metrics.scalars():
            if tag.startswith("strategy/"):  # under the strategy's own name
                tag = f"{self.strategy}/{tag.removeprefix('strategy/')}"
            elif tag in ("accuracy", "loss"):
                tag = self._global_tag + tag
            self.writer.add_scalar(tag, value, step)
        for channel, directions in metrics.bytes_by_channel.items():
            for direction, n in directions.items():  # encoded bytes, as measured
                self.writer.add_scalar(f"bytes/{channel}_{direction}", n, step)
        # Accuracy against cumulative traffic, the paper's x-axis. TensorBoard
        # steps are integers, so the step is kilobytes: whole megabytes would
        # merge rounds of small models into one point.
        kb = round(metrics.cumulative_bytes / 1e3)
        for tag in ("accuracy", "personal_accuracy"):
            value = getattr(metrics, tag)
            if value is not None:
                prefix = self._global_tag if tag == "accuracy" else ""
                self.writer.add_scalar(f"{prefix}{tag}_vs_cumulative_kB", value, kb)
        self.writer.flush()

    def finish(self, summary: RunSummary) -> None:
        """Write summary.json and close the files."""
        text = json.dumps(summary.to_json(), indent=2)
        (self.run_dir / "summary.json").write_text(text)
        self.close()

    def close(self) -> None:
        """Close the files (idempotent)."""
        self._metrics.close()
        self._comm.close()
        self._clients.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _truncate_rounds(path: Path, first_dropped: int) -> None:
    """Keep only the JSON rows of ``path`` whose round is before ``first_dropped``.

    A last line cut short (the process was killed, or the disk filled, while it
    was written) is dropped with a warning: it belongs to a round that is run
    again anyway. A broken line before the last one is not a cut: refused.

    Raises
    ------
    ConfigError
        A line other than the last is not a JSON row with a round.
    """
    if not path.exists():
        return
    lines = path.read_text(errors="replace").splitlines()
    keep = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row_round = json.loads(line)["round"]
        except (ValueError, TypeError, KeyError):
            if number < len(lines):
                raise ConfigError(
                    f"{path} line {number} is not a JSON row with a round "
                    f"({reprlib.repr(line)}): repair or delete that line, then "
                    "resume again"
                ) from None
            log.warning("%s: dropped its cut-off last line (%d bytes)", path, len(line))
            continue
        if row_round < first_dropped:
            keep.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in keep))
    tmp.replace(path)


def read_metrics(run_dir: Path) -> Sequence[dict[str, Any]]:
    """The rows of a run's metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]
