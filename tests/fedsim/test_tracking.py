"""The metrics row: one declaration, and everything read off it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from fedsim.comm import RoundTraffic
from fedsim.config import LogConfig
from fedsim.messages import ClientEval, EvalResult
from fedsim.strategy.evaluate import EvalMetrics
from fedsim.tracking import LOGGED, SCALARS, TIMING, RoundMetrics, Tracker
from tests.fixtures import readme_keys

BYTES = {"bytes_up": 1, "bytes_down": 2, "cumulative_bytes": 3}


def test_the_readme_names_exactly_the_fields_of_a_row() -> None:
    assert readme_keys("metrics.jsonl") == [f.name for f in fields(RoundMetrics)]


def test_tensorboard_tags_and_timings_are_read_off_the_fields() -> None:
    assert set(SCALARS) == {
        "accuracy", "loss", "personal_accuracy", "personal_accuracy_per_client",
        "personal_loss", "personal_p10", "personal_p90", "train_loss", "bytes_up",
        "bytes_down", "cumulative_bytes",
        "num_clients", "num_failed", "lr", "round_seconds", "eval_seconds",
        "setup_seconds",
    }  # fmt: skip
    timing = {"round_seconds", "eval_seconds", "train_seconds", "setup_seconds"}
    assert timing | {"started_at"} == TIMING


def test_every_evaluation_field_reaches_the_row() -> None:
    # Two clients' own models: 1 of 2 and 3 of 3 right, loss sums 1.0 and 2.0:
    # personal loss (1.0 + 2.0) / 5 = 0.6, personal accuracy 4 / 5.
    personal = [
        ClientEval(client_id=0, result=EvalResult(1.0, 1, 2)),
        ClientEval(client_id=1, result=EvalResult(2.0, 3, 3)),
    ]
    evaluation = EvalMetrics.of(None, personal)
    row = RoundMetrics(round=0, **BYTES, **RoundMetrics.evaluated(evaluation))
    assert row.personal_loss == pytest.approx(0.6)
    assert row.personal_accuracy == pytest.approx(0.8)
    assert dict(row.scalars())["personal_loss"] == pytest.approx(0.6)
    names = {f.name for f in fields(RoundMetrics)}
    assert {f.name for f in fields(EvalMetrics)} <= names


def test_a_row_of_the_first_schema_reads_with_defaults() -> None:
    oldest = {  # what the first commits wrote (NaN: not evaluated)
        "round": 3, "accuracy": float("nan"), "loss": float("nan"),
        "train_loss": 0.5, "num_clients": 2, "num_failed": 1, "lr": 0.1,
        "round_seconds": 1.5, "started_at": 1.7e9, **BYTES,
    }  # fmt: skip
    row = RoundMetrics.from_json(oldest | {"dropped_later": 1})
    assert (row.accuracy, row.loss, row.personal_loss) == (None, None, None)
    assert (row.num_failed, row.eval_seconds, row.bytes_by_channel) == (1, 0.0, {})
    assert RoundMetrics.from_json(row.to_json()) == row
    with pytest.raises(TypeError, match="cumulative_bytes"):
        RoundMetrics.from_json({"round": 0, "bytes_up": 1, "bytes_down": 1})
    with pytest.raises(TypeError, match="JSON object"):
        RoundMetrics.from_json([0, 1])


def test_a_new_metric_is_one_field() -> None:
    # What adding a metric takes, e.g. strategy metrics: the one line below.
    @dataclass(frozen=True, kw_only=True)
    class WithStrategy(RoundMetrics):
        strategy: dict[str, float] = field(default_factory=dict, metadata=LOGGED)

    row = WithStrategy(round=1, **BYTES, strategy={"drift": 0.25})
    assert row.to_json()["strategy"] == {"drift": 0.25}
    assert WithStrategy.from_json(row.to_json()) == row
    assert dict(row.scalars())["strategy/drift"] == 0.25
    assert WithStrategy.from_json({"round": 0, **BYTES}).strategy == {}


@pytest.mark.parametrize(
    ("param", "tag"),
    [("pfedpara", "global_view_W2=0/accuracy"), ("fedpara", "accuracy")],
)
def test_a_pfedpara_runs_global_accuracy_is_tagged_as_the_global_view(
    tmp_path: Path, param: str, tag: str
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    tracker = Tracker(
        tmp_path, LogConfig(), config={"model": {"param": param}}, strategy="fedavg"
    )
    row = RoundMetrics(round=0, accuracy=0.7, loss=1.0, personal_accuracy=0.9, **BYTES)
    tracker.log_round(row, RoundTraffic(0, {0: 1}, {0: 1}), [])
    tracker.writer.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {tag, tag.replace("accuracy", "accuracy_vs_cumulative_kB")} <= scalars
    assert "personal_accuracy" in scalars
    if param == "pfedpara":
        assert "accuracy" not in scalars and "loss" not in scalars
        assert "global_view_W2=0/loss" in scalars
