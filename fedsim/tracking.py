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
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedsim.comm import RoundTraffic
from fedsim.config import Config, dump_config
from fedsim.messages import RoundMetrics

SCALARS = (
    "accuracy",
    "loss",
    "train_loss",
    "bytes_up",
    "bytes_down",
    "cumulative_bytes",
    "num_clients",
    "num_failed",
    "lr",
    "round_seconds",
)


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

    def __init__(self, run_dir: Path, cfg: Config, *, resume: bool = False) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            dump_config(cfg, run_dir / "config.yaml")
        self._metrics = (run_dir / "metrics.jsonl").open("a")
        self._comm = (run_dir / "comm.jsonl").open("a")
        self.writer: Any = None
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"))
            if not resume:
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
            self.writer.add_scalar(tag, getattr(metrics, tag), step)
        # Accuracy against cumulative traffic, the paper's x-axis. TensorBoard
        # steps are integers, so the step is kilobytes: whole megabytes would
        # merge rounds of small models into one point.
        self.writer.add_scalar(
            "accuracy_vs_cumulative_kB",
            metrics.accuracy,
            round(metrics.cumulative_bytes / 1e3),
        )
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


def read_metrics(run_dir: Path) -> Sequence[dict[str, Any]]:
    """The rows of a run's metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


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
        )

    def update(self, metrics: RoundMetrics) -> None:
        """Advance one round."""
        self._bar.update(1)
        self._bar.set_postfix(
            acc=f"{metrics.accuracy:.4f}",
            GB=f"{metrics.cumulative_bytes / 1e9:.3f}",
            failed=metrics.num_failed,
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()
