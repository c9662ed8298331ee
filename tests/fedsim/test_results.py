"""A run directory read back: what the Tracker writes, History and RunSummary read."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from fedsim.comm import RoundTraffic
from fedsim.config import load_config
from fedsim.results import History, RunSummary
from fedsim.tracking import RoundMetrics, Tracker
from tests.fixtures import readme_keys

SUMMARY = RunSummary(
    name="t", strategy="fedavg", final_accuracy=0.5, final_loss=1.0,
    best_accuracy=0.6, rounds=2, total_bytes=12, bytes_up=4, bytes_down=8,
    num_params=10, num_params_travelling=4, wall_seconds=3.0,
)  # fmt: skip


def row(r: int, accuracy: float | None) -> RoundMetrics:
    traffic = {"bytes_up": 2, "bytes_down": 4, "cumulative_bytes": 6 * (r + 1)}
    return RoundMetrics(round=r, accuracy=accuracy, **traffic)


def test_what_the_tracker_writes_reads_back(tmp_path: Path) -> None:
    cfg = load_config(None, ["log.tensorboard=false"])
    tracker = Tracker(
        tmp_path, cfg.log, config=cfg.to_dict(), strategy=cfg.server.strategy
    )
    rows = [row(0, None), row(1, 0.5)]
    for r in rows:
        tracker.log_round(r, RoundTraffic(round=r.round, down={0: 4}, up={0: 2}))
    tracker.finish(SUMMARY)
    assert History.load(tmp_path).rows == tuple(rows)
    assert RunSummary.load(tmp_path) == SUMMARY
    keys = list(json.loads((tmp_path / "summary.json").read_text()))
    assert keys == [f.name for f in fields(RunSummary)]


def test_the_readme_names_exactly_the_keys_of_a_summary() -> None:
    assert readme_keys("summary.json") == [f.name for f in fields(RunSummary)]


def test_history_keys_rounds_in_order_and_keeps_the_last_row() -> None:
    text = "\n".join(
        json.dumps(r.to_json()) for r in (row(1, 0.2), row(0, None), row(1, 0.3))
    )
    history = History.parse(text + '\n{"round": 2, "accur')  # a write cut short
    assert list(history.rounds) == [0, 1] and len(history) == 2
    assert history.rounds[1] == row(1, 0.3)
    with pytest.raises(ValueError, match=r"m\.jsonl: line 4 is not a metrics row"):
        History.parse(text + '\n{"round": 2}', "m.jsonl")


def test_a_summary_that_is_missing_or_not_one(tmp_path: Path) -> None:
    assert RunSummary.load(tmp_path) is None  # unfinished run
    older = {k: v for k, v in SUMMARY.to_json().items() if "personal" not in k}
    (tmp_path / "summary.json").write_text(json.dumps(older))
    assert RunSummary.load(tmp_path) == SUMMARY  # the personal ones came later
    (tmp_path / "summary.json").write_text(json.dumps({"rounds": 2}))
    with pytest.raises(ValueError, match="is not a run summary"):
        RunSummary.load(tmp_path)


def test_a_pfedpara_run_leads_with_personal_accuracy_and_labels_w1_alone(
    tmp_path: Path,
) -> None:
    from fedsim.cli.common import summary_paragraph
    from fedsim.loop import RunResult

    cfg = load_config(None, ["model.param=pfedpara"])
    assert (cfg.scored_on, cfg.global_view) == ("personal", "global view (W2=0)")
    summary = RunSummary(
        name="p", final_accuracy=0.7, final_loss=1.0, best_accuracy=0.75,
        final_personal_accuracy=0.9, best_personal_accuracy=0.91, rounds=2,
        total_bytes=8, bytes_up=4, bytes_down=4, num_params=10,
        num_params_travelling=5, wall_seconds=1.0, scored_on=cfg.scored_on,
        global_view=cfg.global_view, personal_test_fraction=0.2,
    )  # fmt: skip
    text = summary_paragraph(cfg, RunResult(tmp_path, summary))
    assert "reached a final personal accuracy of 0.9000 (best 0.9100) and a " in text
    assert "final global view (W2=0) accuracy of 0.7000" in text
    plain = load_config(None, [])
    assert (plain.scored_on, plain.global_view) == ("global", "global")
