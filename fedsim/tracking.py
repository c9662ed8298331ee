"""The run directory: resolved config, metrics.jsonl, TensorBoard, summary.

Layout of ``runs/<name>/<timestamp>/``::

    config.yaml       the resolved config
    metrics.jsonl     one JSON object per round
    comm.jsonl        bytes per client and direction, per round
    partition.json    examples and label histogram per client
    summary.json      final and best accuracy, bytes, parameters
    tb/               TensorBoard event files
    checkpoints/      server state (last.pt) for --resume
    client_state/     per-client local tensors (pFedPara)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.comm import RoundTraffic
from fedsim.config import Config, dump_config

if TYPE_CHECKING:
    from fedsim.strategy.evaluate import EvalMetrics

# Logged every round they have a value (evaluations: only rounds that ran them).
SCALARS = (
    "accuracy",
    "loss",
    "personal_accuracy",
    "personal_p10",
    "personal_p90",
    "train_loss",
    "bytes_up",
    "bytes_down",
    "cumulative_bytes",
    "num_clients",
    "num_failed",
    "lr",
    "round_seconds",
    "eval_seconds",
    "setup_seconds",
)


TIMING = frozenset(
    {"round_seconds", "eval_seconds", "train_seconds", "setup_seconds", "started_at"}
)
"""The fields of a metrics row that are wall-clock measurements: everything else
in a row is a pure function of the config (what a resumed or re-run run repeats
exactly)."""


@dataclass(frozen=True, kw_only=True)
class RoundMetrics:
    """The per-round record written to metrics.jsonl and TensorBoard.

    Evaluation fields are None (``null`` in JSON) on rounds that did not run
    that evaluation (``server.eval_every > 1``, or a run without it).
    """

    round: int
    accuracy: float | None = None
    loss: float | None = None
    personal_accuracy: float | None = None
    personal_p10: float | None = None
    personal_p90: float | None = None
    personal_clients: int = 0
    train_loss: float | None
    bytes_up: int
    bytes_down: int
    cumulative_bytes: int
    bytes_by_channel: dict[str, dict[str, int]] = field(default_factory=dict)
    num_clients: int
    num_failed: int
    lr: float
    round_seconds: float
    # Of round_seconds, the evaluation's part; train_seconds is the clients'
    # own time summed (they overlap across workers), setup_seconds its share
    # spent compiling or capturing the training step, steps their steps.
    eval_seconds: float = 0.0
    train_seconds: float = 0.0
    setup_seconds: float = 0.0
    steps: int = 0
    started_at: float  # unix time at the start of the round

    @staticmethod
    def evaluated(evaluation: EvalMetrics | None) -> dict[str, Any]:
        """The evaluation fields of a round from its :class:`EvalMetrics`."""
        if evaluation is None:
            return {}
        return {
            "accuracy": evaluation.accuracy,
            "loss": evaluation.loss,
            "personal_accuracy": evaluation.personal_accuracy,
            "personal_p10": evaluation.personal_p10,
            "personal_p90": evaluation.personal_p90,
            "personal_clients": evaluation.personal_clients,
        }

    def to_json(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dict(self.__dict__)


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
        self, run_dir: Path, cfg: Config, *, resume_round: int | None = None
    ) -> None:
        """Open the run directory; on resume, cut the logs back to ``resume_round``.

        Rows of rounds at or after the checkpoint's round were written by the
        interrupted run and are written again now: they are removed, and
        TensorBoard purges its events from that step on.
        """
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
        if resume_round is not None:
            for name in ("metrics.jsonl", "comm.jsonl"):
                _truncate_rounds(run_dir / name, resume_round)
        self._metrics = (run_dir / "metrics.jsonl").open("a")
        self._comm = (run_dir / "comm.jsonl").open("a")
        self.writer: Any = None
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=resume_round)
            if resume_round is None:
                self._write_hparams(cfg)

    def _write_hparams(self, cfg: Config) -> None:
        from torch.utils.tensorboard.summary import hparams

        flat = {
            k: (v if isinstance(v, int | float | str | bool) else str(v))
            for k, v in flatten(cfg.to_dict()).items()
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

    def log_round(self, metrics: RoundMetrics, traffic: RoundTraffic) -> None:
        """Append the round to metrics.jsonl, comm.jsonl and TensorBoard."""
        self._metrics.write(json.dumps(metrics.to_json()) + "\n")
        self._metrics.flush()
        self._comm.writelines(json.dumps(row) + "\n" for row in traffic.per_client())
        self._comm.flush()
        if self.writer is None:
            return
        step = metrics.round
        for tag in SCALARS:
            value = getattr(metrics, tag)
            if value is not None:
                self.writer.add_scalar(tag, value, step)
        # Accuracy against cumulative traffic, the paper's x-axis. TensorBoard
        # steps are integers, so the step is kilobytes: whole megabytes would
        # merge rounds of small models into one point.
        kb = round(metrics.cumulative_bytes / 1e3)
        for tag in ("accuracy", "personal_accuracy"):
            value = getattr(metrics, tag)
            if value is not None:
                self.writer.add_scalar(f"{tag}_vs_cumulative_kB", value, kb)
        self.writer.flush()

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Write summary.json and close the files."""
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.close()

    def close(self) -> None:
        """Close the files (idempotent)."""
        self._metrics.close()
        self._comm.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _truncate_rounds(path: Path, first_dropped: int) -> None:
    """Keep only the JSON rows of ``path`` whose round is before ``first_dropped``."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["round"] < first_dropped
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in keep))
    tmp.replace(path)


def read_metrics(run_dir: Path) -> Sequence[dict[str, Any]]:
    """The rows of a run's metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


PROGRESS_ROW = threading.local()
"""``PROGRESS_ROW.value``: the terminal row of this thread's progress bar (a sweep
runs several runs at once, one line each)."""


class Progress:
    """A progress bar over rounds showing accuracy, cumulative GB and failures."""

    def __init__(self, cfg: Config, initial: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=cfg.rounds,
            initial=initial,
            desc=cfg.name,
            unit="round",
            disable=not cfg.log.progress,
            dynamic_ncols=True,
            position=getattr(PROGRESS_ROW, "value", None),
        )
        self._shown: dict[str, str] = {}
        self._setup = 0.0
        r = cfg.resources
        if r.compile != "off" or r.cuda_graph:
            # The first round also compiles (or captures) every worker's step.
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
