"""``fedsim report`` on hand-written run directories: every number hand-computed.

Three runs, target 0.8, link 8 Mbit/s up and 16 Mbit/s down, so one client's
link seconds are ``bytes_up / 1e6 + bytes_down / 2e6``:

* ``ori`` (original, summary.json present, old rows without personal_* keys):
  rounds 0-3, each 3 clients, 3e6 B down + 3e6 B up; accuracy 0.5 0.7 0.85 0.9.
  Target first reached in round 2 at 18e6 B = 0.018 GB. Per client and round:
  1e6/2e6 + 1e6/1e6 = 1.5 s; to target 3 rounds = 4.5 s.
* ``fed`` (fedpara, resumed after a crash: rounds 1 and 2 written twice plus a
  cut-short line; no summary.json). Last occurrences: bytes per round 1.2e6,
  1.2e6, 1.2e6, 1.0e6 (round 3: 2 clients reported, 1 failed) -> mean 1.15e6.
  Accuracy 0.4 0.65 0.82 0.81: final 0.81, best 0.82, target in round 2 at
  3.6e6 B = 0.0036 GB, 0.2 of the original's. Personal 0.5 0.66 0.75 0.7.
  Wall 1+2+3+4 = 10 s (from round_seconds). Link per client: 200k down and
  200k up every round (round 3: 600k/3 down, 400k/2 up) -> 0.1 + 0.2 = 0.3 s;
  to target 0.9 s.
* ``low_eval2`` (lowrank, eval_every=2, stopped after round 4 of 10): the
  simulator evaluates when (round + 1) % 2 == 0, so accuracy is null on rounds
  0, 2, 4 and 0.75, 0.6 on rounds 1, 3: final 0.6, best 0.75, target never
  reached. 2 clients, 400k B each way per round; wall 5 x 0.5 s; link 0.3 s.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsim.cli import main
from fedsim.results import History
from fedsim.tracking import RoundMetrics

TARGET = ["--target", "0.8"]
LINK = ["--uplink-mbps", "8", "--downlink-mbps", "16"]
MD_HEADER = (
    "| run | arch | param | γ | strategy | weighting | encoding up/down | trained on "
    "| params travelling | bytes/round | rounds | scored on | final global "
    "| best global | final personal | best personal | GB to 0.8 | GB ÷ original "
    "| wall s |"
)
MD_ORI = (
    "| ori | mlp_digits | original | 0.5 | fedavg | examples | none/none | 100% "
    "| 1,000 | 6,000,000 | 4 | global | 0.9000 | 0.9000 |  |  | 0.018 | 1.000 "
    "| 12.5 |"
)
MD_FED = (
    "| fed | mlp_digits | fedpara | 0.1 | fedavg | examples | none/none | 100% |  "
    "| 1,150,000 | 4 | global | 0.8100 | 0.8200 | 0.7000 | 0.7500 | 0.0036 "
    "| 0.200 | 10.0* |"
)
MD_LOW = (
    "| low_eval2 | mlp_digits | lowrank | 0.3 | fedprox | examples | none/none "
    "| 100% |  | 800,000 | 5 | global | 0.6000 | 0.7500 |  |  | not reached |  "
    "| 2.5* |"
)


def metrics_row(
    r: int,
    acc: float | None,
    down: int,
    up: int,
    cum: int,
    *,
    clients: int,
    failed: int = 0,
    seconds: float = 1.0,
    personal: float | None = None,
    old: bool = False,
) -> dict[str, Any]:
    """One line of metrics.jsonl in the simulator's schema."""
    row: dict[str, Any] = {
        "round": r,
        "accuracy": acc,
        "loss": None if acc is None else 1.0 - acc,
        "train_loss": 0.5,
        "bytes_up": up,
        "bytes_down": down,
        "cumulative_bytes": cum,
        "num_clients": clients,
        "num_failed": failed,
        "lr": 0.1,
        "round_seconds": seconds,
        "started_at": 1_700_000_000.0 + r,
        "bytes_by_channel": {"model": {"down": down, "up": up}},
    }
    if not old:
        row |= {
            "personal_accuracy": personal,
            "personal_p10": None if personal is None else personal - 0.1,
            "personal_p90": None if personal is None else personal + 0.1,
        }
    return row


def write_run(
    run_dir: Path,
    name: str,
    param: str,
    gamma: float,
    lines: list[str],
    *,
    strategy: str = "fedavg",
    eval_every: int = 1,
    summary: dict[str, Any] | None = None,
) -> Path:
    run_dir.mkdir(parents=True)
    cfg = {
        "name": name,
        "seed": 0,
        "rounds": 10,
        "model": {"arch": "mlp_digits", "param": param, "gamma": gamma},
        "server": {
            "strategy": strategy,
            "clients_per_round": 3,
            "eval_every": eval_every,
        },
        "data": {"name": "digits", "num_clients": 50},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def ori_run(root: Path) -> Path:
    accs = [0.5, 0.7, 0.85, 0.9]
    rows = [
        metrics_row(
            r, a, 3 * 10**6, 3 * 10**6, 6 * 10**6 * (r + 1), clients=3, old=True
        )
        for r, a in enumerate(accs)
    ]
    summary = {
        "name": "ori",
        "strategy": "fedavg",
        "final_accuracy": 0.9,
        "final_loss": 0.1,
        "best_accuracy": 0.9,
        "rounds": 4,
        "total_bytes": 24 * 10**6,
        "bytes_up": 12 * 10**6,
        "bytes_down": 12 * 10**6,
        "num_params": 1000,
        "num_params_travelling": 1000,
        "wall_seconds": 12.5,
    }  # a summary.json from before the personal accuracies: without them
    return write_run(
        root / "ori",
        "ori",
        "original",
        0.5,
        [json.dumps(x) for x in rows],
        summary=summary,
    )


def fed_run(root: Path) -> Path:
    k = 200_000
    # round, accuracy, bytes_up, cumulative, clients, failed, seconds, personal
    first = [
        (0, 0.4, 3 * k, 6 * k, 3, 0, 1.0, 0.5),
        (1, 0.6, 0, 9 * k, 0, 3, 100.0, 0.6),
        (2, 0.7, 3 * k, 15 * k, 3, 0, 50.0, 0.9),
    ]
    resumed = [  # continued from the checkpoint written after round 0
        (1, 0.65, 3 * k, 12 * k, 3, 0, 2.0, 0.66),
        (2, 0.82, 3 * k, 18 * k, 3, 0, 3.0, 0.75),
        (3, 0.81, 2 * k, 23 * k, 2, 1, 4.0, 0.7),
    ]

    def lines(
        rows: list[tuple[int, float, int, int, int, int, float, float]],
    ) -> list[str]:
        return [
            json.dumps(
                metrics_row(
                    r, a, 3 * k, up, cum, clients=c, failed=f, seconds=s, personal=p
                )
            )
            for r, a, up, cum, c, f, s, p in rows
        ]

    cut_short = '{"round": 3, "accur'  # the crash interrupted this write
    return write_run(
        root / "fed", "fed", "fedpara", 0.1, [*lines(first), cut_short, *lines(resumed)]
    )


def low_run(root: Path) -> Path:
    accs = [None, 0.75, None, 0.6, None]
    rows = [
        metrics_row(r, a, 400_000, 400_000, 800_000 * (r + 1), clients=2, seconds=0.5)
        for r, a in enumerate(accs)
    ]
    return write_run(
        root / "low",
        "low_eval2",
        "lowrank",
        0.3,
        [json.dumps(x) for x in rows],
        strategy="fedprox",
        eval_every=2,
    )


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f)}


def assert_csv_row(row: dict[str, str], expected: dict[str, object]) -> None:
    assert set(row) >= set(expected)
    for key, want in expected.items():
        if isinstance(want, float):
            assert float(row[key]) == pytest.approx(want), key
        else:
            assert row[key] == want, key


def test_tables_with_link_hand_computed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = [str(f(tmp_path)) for f in (ori_run, fed_run, low_run)]
    out = tmp_path / "out"
    assert main(["report", *dirs, "--out", str(out), *TARGET, *LINK]) == 0

    md = (out / "report.md").read_text().splitlines()
    assert md[0] == MD_HEADER[:-1] + "| link s/round | link s to 0.8 |"
    assert md[1] == "|" + "---|" * 21
    assert md[2] == MD_ORI + " 1.5 | 4.5 |"
    assert md[3] == MD_FED + " 0.3 | 0.9 |"
    assert md[4] == MD_LOW + " 0.3 | not reached |"
    assert md[5] == ""
    assert md[6].startswith("scored on: the accuracy of GB to target")
    assert md[8].startswith(r"\* no summary.json (unfinished run)")
    assert md[10].startswith("Simulated link: 8 Mbit/s up, 16 Mbit/s down")

    printed = capsys.readouterr().out
    assert "\n".join(md) in printed
    for name in ("report.md", "report.csv", "accuracy_vs_gb.png", "accuracy_vs_gb.svg"):
        assert f"wrote {out / name}" in printed

    header = (out / "report.csv").read_text().splitlines()[0]
    assert header == (
        "name,arch,param,gamma,strategy,weighting,encoding,train_fraction,"
        "params_travelling,bytes_per_round,rounds,scored_on,global_view,"
        "final_accuracy,best_accuracy,final_personal_accuracy,best_personal_accuracy,"
        "target,gb_to_target,gb_ratio_to_original,wall_seconds,"
        "wall_seconds_from_rounds,link_seconds_per_round,link_seconds_to_target"
    )
    rows = read_csv(out / "report.csv")
    assert list(rows) == ["ori", "fed", "low_eval2"]
    common = {"arch": "mlp_digits", "target": 0.8}
    assert_csv_row(rows["ori"], common | {
        "param": "original", "gamma": 0.5, "strategy": "fedavg",
        "params_travelling": "1000", "bytes_per_round": 6e6, "rounds": "4",
        "final_accuracy": 0.9, "best_accuracy": 0.9,
        "final_personal_accuracy": "", "best_personal_accuracy": "",
        "gb_to_target": 0.018, "gb_ratio_to_original": 1.0,
        "wall_seconds": 12.5, "wall_seconds_from_rounds": "false",
        "link_seconds_per_round": 1.5, "link_seconds_to_target": 4.5,
    })  # fmt: skip
    assert_csv_row(rows["fed"], common | {
        "param": "fedpara", "gamma": 0.1, "strategy": "fedavg",
        "params_travelling": "", "bytes_per_round": 1.15e6, "rounds": "4",
        "final_accuracy": 0.81, "best_accuracy": 0.82,
        "final_personal_accuracy": 0.7, "best_personal_accuracy": 0.75,
        "gb_to_target": 0.0036, "gb_ratio_to_original": 0.2,
        "wall_seconds": 10.0, "wall_seconds_from_rounds": "true",
        "link_seconds_per_round": 0.3, "link_seconds_to_target": 0.9,
    })  # fmt: skip
    assert_csv_row(rows["low_eval2"], common | {
        "param": "lowrank", "gamma": 0.3, "strategy": "fedprox",
        "params_travelling": "", "bytes_per_round": 8e5, "rounds": "5",
        "final_accuracy": 0.6, "best_accuracy": 0.75,
        "final_personal_accuracy": "", "best_personal_accuracy": "",
        "gb_to_target": "", "gb_ratio_to_original": "",
        "wall_seconds": 2.5, "wall_seconds_from_rounds": "true",
        "link_seconds_per_round": 0.3, "link_seconds_to_target": "",
    })  # fmt: skip


def test_without_link_or_original(tmp_path: Path) -> None:
    out = tmp_path / "out"
    dirs = [str(fed_run(tmp_path)), str(low_run(tmp_path))]
    assert main(["report", *dirs, "--out", str(out), *TARGET]) == 0
    md = (out / "report.md").read_text().splitlines()
    assert md[:2] == [MD_HEADER, "|" + "---|" * 19]
    # no original run in the set: the ratio column stays empty
    assert md[2] == MD_FED.replace("| 0.200 |", "|  |")
    assert md[3] == MD_LOW
    assert "Simulated link" not in "\n".join(md)
    header = (out / "report.csv").read_text().splitlines()[0].split(",")
    assert "link_seconds_per_round" not in header
    assert read_csv(out / "report.csv")["fed"]["gb_ratio_to_original"] == ""


def test_figures_are_written(tmp_path: Path) -> None:
    out = tmp_path / "figs"
    dirs = [str(ori_run(tmp_path)), str(low_run(tmp_path))]
    assert main(["report", *dirs, "--out", str(out)]) == 0
    for stem in ("accuracy_vs_gb", "accuracy_vs_rounds"):
        png = (out / f"{stem}.png").read_bytes()
        svg = (out / f"{stem}.svg").read_text()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        assert "<svg" in svg and len(svg) > 10_000
        assert "<!-- ori -->" in svg and "<!-- low_eval2 -->" in svg  # legend


def test_resumed_rows_last_occurrence_wins() -> None:
    row = metrics_row(1, 0.2, 5, 5, 10, clients=1)
    text = "\n".join(
        json.dumps(x)
        for x in (
            row,
            metrics_row(0, None, 1, 1, 2, clients=1),
            row | {"accuracy": 0.3},
        )
    )
    history = History.parse(text + "\n{cut short")
    assert list(history.rounds) == [0, 1]
    assert history.rounds[1] == RoundMetrics.from_json(row | {"accuracy": 0.3})
    assert history.rounds[1].accuracy == 0.3 and history.rounds[0].accuracy is None


def test_same_names_are_told_apart(tmp_path: Path) -> None:
    a, b = ori_run(tmp_path / "a"), ori_run(tmp_path / "b")
    out = tmp_path / "out"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    assert list(read_csv(out / "report.csv")) == [f"ori ({a})", f"ori ({b})"]
    b = b.rename(b.parent / "x")
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    assert list(read_csv(out / "report.csv")) == ["ori (ori)", "ori (x)"]


def test_not_a_run_directory_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = ori_run(tmp_path), tmp_path / "empty"
    bad.mkdir()
    out = tmp_path / "out"
    assert main(["report", str(good), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedsim: error: not a run directory")
    assert err[0].endswith(str(bad))
    assert not out.exists()


def test_link_needs_both_directions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["report", str(ori_run(tmp_path)), "--out", str(tmp_path / "o")]
    assert main([*args, "--uplink-mbps", "8"]) == 2
    assert capsys.readouterr().err.startswith("fedsim: error: give both")


def test_a_run_without_a_global_model_is_scored_on_personal_accuracy(
    tmp_path: Path,
) -> None:
    # FedPer: no global accuracy; personal 0.6 then 0.85, 1e6 B per round each way.
    lines = [
        json.dumps(metrics_row(r, None, 10**6, 10**6, (r + 1) * 2 * 10**6,
                               clients=3, personal=p))
        for r, p in enumerate((0.6, 0.85))
    ]  # fmt: skip
    run = write_run(tmp_path / "per", "per", "original", 0.5, lines, strategy="fedper")
    out = tmp_path / "out"
    assert main(["report", str(run), "--out", str(out), *TARGET]) == 0
    (row,) = csv.DictReader((out / "report.csv").read_text().splitlines())
    assert row["final_accuracy"] == "" and float(row["final_personal_accuracy"]) == 0.85
    assert float(row["gb_to_target"]) == pytest.approx(0.004)  # round 1: 4e6 B
    assert row["scored_on"] == "personal" and row["train_fraction"] == "0.8"
    assert "per (personal)" in (out / "accuracy_vs_gb.svg").read_text()


def test_auto_scores_pfedpara_on_personal_accuracy_and_labels_its_global_view(
    tmp_path: Path,
) -> None:
    # pFedPara: W1 alone (global view) 0.5 then 0.9, personal 0.6 then 0.85;
    # an original FedAvg run reaches 0.8 globally in round 1 at 2e6 B.
    def rows(glob: tuple[float, float], pers: tuple[float, float] | None) -> list:
        cum = [2 * 10**6, 4 * 10**6]
        return [
            json.dumps(metrics_row(r, g, 10**6, 10**6, cum[r], clients=3,
                                   personal=pers[r] if pers else None))
            for r, g in enumerate(glob)
        ]  # fmt: skip

    pfp = write_run(tmp_path / "p", "p", "pfedpara", 0.5, rows((0.5, 0.9), (0.6, 0.85)))
    ori = write_run(tmp_path / "o", "o", "original", 0.5, rows((0.5, 0.9), None))
    out = tmp_path / "out"
    assert main(["report", str(ori), str(pfp), "--out", str(out), *TARGET]) == 0
    by_name = read_csv(out / "report.csv")
    row = by_name["p"]
    assert row["scored_on"] == "personal" and row["global_view"] == "global view (W2=0)"
    # GB to 0.8 on personal accuracy: round 1 (4e6 B), though W1 alone is 0.9 too
    assert float(row["gb_to_target"]) == pytest.approx(0.004)
    # ... and no ratio to an original run scored on another accuracy
    assert row["gb_ratio_to_original"] == "" and by_name["o"]["scored_on"] == "global"
    md = (out / "report.md").read_text()
    assert "| 0.9000 [global view (W2=0)] |" in md
    assert "p (personal)" in (out / "accuracy_vs_gb.svg").read_text()
    # --metric global still scores it on W1 alone when asked explicitly
    assert (
        main(["report", str(pfp), "--out", str(out), *TARGET, "--metric", "global"])
        == 0
    )
    assert read_csv(out / "report.csv")["p"]["scored_on"] == "global"
