r"""``fedsim report``: compare runs by accuracy against the bytes they sent.

Reads run directories (``config.yaml``, ``metrics.jsonl``, optional
``summary.json``) and writes, into one output directory, ``report.md`` and
``report.csv`` (one row per run) plus accuracy against cumulative GB (the
paper's Figure 3 axes) and against rounds as PNG and SVG.

Rows are read as :class:`~fedsim.results.History` reads them: each round once
(should a file repeat one, its last row wins), a field an older file lacks at
its default. Only evaluated rounds (``accuracy`` not null) count for final/best
accuracy, the target and the figures.

Example
-------
>>> import json, tempfile
>>> run, out = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
>>> _ = (run / "config.yaml").write_text("name: demo\nmodel: {param: original}\n")
>>> row = RoundMetrics(round=0, accuracy=0.9, bytes_up=10**9, bytes_down=10**9,
...                    cumulative_bytes=2 * 10**9, num_clients=2, round_seconds=1.5)
>>> _ = (run / "metrics.jsonl").write_text(json.dumps(row.to_json()) + "\n")
>>> [p.name for p in write_report([run], out, target=0.8).paths[:3]]
['report.md', 'report.csv', 'accuracy_vs_gb.png']
>>> (out / "report.csv").read_text().splitlines()[1]
'demo,,original,,,examples,none/none,1.0,,2000000000.0,1,global,global,0.9,0.9,,,0.8,2.0,1.0,1.5,true'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from fedsim.comm import simulated_link_seconds
from fedsim.config import GLOBAL_VIEW_W2_0, PERSONAL_TEST_FRACTION, ConfigError
from fedsim.registry import DEFAULT as DEFAULT_STRATEGY
from fedsim.registry import STRATEGIES
from fedsim.report_plot import Curve, plot_curves
from fedsim.report_table import ReportRow, format_csv, format_markdown
from fedsim.results import History, RunSummary
from fedsim.tracking import RoundMetrics


class ReportError(ConfigError):
    """A run directory's content or a report option is unusable."""


@dataclass(frozen=True)
class Link:
    """A simulated client link, in megabits per second each way."""

    uplink_mbps: float
    downlink_mbps: float

    def client_seconds(self, p: RoundMetrics) -> float:
        """Link seconds of ONE client in round ``p``: download then upload.

        The round's ``bytes_down`` is split over the clients sampled
        (``num_clients + num_failed``), ``bytes_up`` over those that reported
        (``num_clients``); the two directions add up, stragglers are not modelled.

        Examples
        --------
        >>> p = RoundMetrics(round=0, bytes_down=3_000_000, bytes_up=2_000_000,
        ...                  cumulative_bytes=5_000_000, num_clients=2, num_failed=1)
        >>> Link(uplink_mbps=8, downlink_mbps=16).client_seconds(p)
        1.5
        """
        down = simulated_link_seconds(p.bytes_down, self.downlink_mbps)
        up = simulated_link_seconds(p.bytes_up, self.uplink_mbps)
        return down / max(p.num_clients + p.num_failed, 1) + up / max(p.num_clients, 1)


@dataclass(frozen=True)
class RunRecord:
    """What the report needs of one run directory."""

    name: str
    history: History
    arch: str = ""
    param: str = ""
    gamma: float | None = None
    strategy: str = ""
    params_travelling: int | None = None
    wall_seconds: float | None = None
    encoding: str = "none/none"
    weighting: str = ""
    scored_on: str = "global"
    personal_test_fraction: float = 0.0

    @property
    def global_view(self) -> str:
        """What its global accuracy measures (pFedPara: W1 alone)."""
        return GLOBAL_VIEW_W2_0 if self.param == "pfedpara" else "global"


@dataclass(frozen=True)
class ReportOutput:
    """The markdown table and every file written."""

    markdown: str
    paths: tuple[Path, ...]


def _opt_float(value: Any) -> float | None:
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def load_run(run_dir: Path) -> RunRecord:
    """Read one run directory (raises FileNotFoundError if it is not one).

    Examples
    --------
    >>> load_run(Path("/nonexistent"))
    Traceback (most recent call last):
    ...
    FileNotFoundError: not a run directory (no config.yaml or metrics.jsonl): ...
    """
    metrics, config = run_dir / "metrics.jsonl", run_dir / "config.yaml"
    if not (metrics.is_file() and config.is_file()):
        raise FileNotFoundError(
            f"not a run directory (no config.yaml or metrics.jsonl): {run_dir}"
        )
    try:
        history, summary = History.load(run_dir), RunSummary.load(run_dir)
    except ValueError as exc:
        raise ReportError(str(exc)) from exc
    if not history:
        raise ReportError(f"{metrics} has no rounds yet")
    cfg = yaml.safe_load(config.read_text()) or {}
    model, server = cfg.get("model") or {}, cfg.get("server") or {}
    # The run's conventions, as its Config resolves them (config.yaml of an
    # older fedsim may lack the keys: the registry's defaults then).
    spec = STRATEGIES.get(str(server.get("strategy") or DEFAULT_STRATEGY))
    keeps_local = model.get("param") == "pfedpara" or bool(spec and spec.keeps_local)
    carve = (cfg.get("data") or {}).get("client_test_fraction")
    if carve is None:
        carve = PERSONAL_TEST_FRACTION if keeps_local else 0.0
    return RunRecord(
        name=str(cfg.get("name", run_dir.name)),
        history=history,
        arch=str(model.get("arch", "")),
        param=str(model.get("param", "")),
        gamma=_opt_float(model.get("gamma")),
        strategy=str(server.get("strategy", "")),
        params_travelling=summary.num_params_travelling if summary else None,
        wall_seconds=summary.wall_seconds if summary else None,
        encoding=_encoding(cfg.get("comm") or {}),
        weighting=str(server.get("weighting") or (spec.weighting if spec else "")),
        scored_on="personal" if keeps_local else "global",
        personal_test_fraction=float(carve),
    )


def _encoding(comm: dict[str, Any]) -> str:
    """``uplink/downlink`` codecs of a run's ``comm`` section (top-k's fraction).

    >>> _encoding({"uplink": {"codec": "topk", "fraction": 0.05}})
    'topk(0.05)/none'
    """
    names = []
    for direction in ("uplink", "downlink"):
        codec = comm.get(direction) or {}
        name = str(codec.get("codec", "none"))
        if name == "topk":
            name += f"({codec.get('fraction')})"
        names.append(name)
    return "/".join(names)


METRICS = ("auto", "global", "personal")


def scored_metric(
    points: Sequence[RoundMetrics], metric: str = "auto", scored_on: str = "global"
) -> str:
    """The field a run is scored on: its curve and its GB to the target.

    ``"global"``: the server model's accuracy; ``"personal"``: the clients' own
    models' accuracy; ``"auto"``: the run's own (``scored_on``: personal for a
    run whose clients keep a model part, as the paper scores pFedPara, whose
    global accuracy is only W1's "global view (W2=0)"), else global, or
    personal for a run without a global accuracy.

    >>> row = RoundMetrics(round=0, accuracy=0.7, personal_accuracy=0.9,
    ...                    bytes_up=0, bytes_down=0, cumulative_bytes=0)
    >>> scored_metric([row]), scored_metric([row], scored_on="personal")
    ('accuracy', 'personal_accuracy')
    """
    if metric != "auto":
        return "personal_accuracy" if metric == "personal" else "accuracy"
    if scored_on == "personal" and any(p.personal_accuracy is not None for p in points):
        return "personal_accuracy"
    if any(p.accuracy is not None for p in points):
        return "accuracy"
    if any(p.personal_accuracy is not None for p in points):
        return "personal_accuracy"
    return "accuracy"


def first_reaching(
    points: Sequence[RoundMetrics], target: float, metric: str = "accuracy"
) -> RoundMetrics | None:
    """The first evaluated round with ``metric >= target`` (None if never).

    Examples
    --------
    >>> def row(r, acc, gb):
    ...     return RoundMetrics(round=r, accuracy=acc, bytes_up=0, bytes_down=0,
    ...                         cumulative_bytes=gb * 10**9)
    >>> pts = [row(0, 0.5, 1), row(1, None, 2), row(2, 0.8, 3)]
    >>> first_reaching(pts, 0.7).cumulative_bytes / 1e9, first_reaching(pts, 0.9)
    (3.0, None)
    """
    return next(
        (p for p in points if (v := getattr(p, metric)) is not None and v >= target),
        None,
    )


def summarize(
    run: RunRecord, target: float, link: Link | None = None, metric: str = "auto"
) -> ReportRow:
    """One report row, without the ratio to the original (see :func:`build_rows`).

    Examples
    --------
    >>> row = RoundMetrics(round=0, accuracy=0.9, bytes_up=4, bytes_down=0,
    ...                    cumulative_bytes=4)
    >>> run = RunRecord("a", History.of([row]))
    >>> row = summarize(run, target=0.5)
    >>> row.bytes_per_round, row.final_accuracy, row.gb_to_target
    (4.0, 0.9, 4e-09)
    """
    pts = run.history.rows
    acc = [a for p in pts if (a := p.accuracy) is not None]
    personal = [a for p in pts if (a := p.personal_accuracy) is not None]
    scored = scored_metric(pts, metric, run.scored_on)
    reached = first_reaching(pts, target, scored)
    link_s = [link.client_seconds(p) for p in pts] if link else []
    wall = run.wall_seconds
    return ReportRow(
        name=run.name, arch=run.arch, param=run.param, gamma=run.gamma,
        strategy=run.strategy, weighting=run.weighting,
        train_fraction=1.0 - run.personal_test_fraction,
        params_travelling=run.params_travelling,
        bytes_per_round=sum(p.bytes_up + p.bytes_down for p in pts) / len(pts),
        rounds=len(pts),
        scored_on="personal" if scored == "personal_accuracy" else "global",
        global_view=run.global_view,
        final_accuracy=acc[-1] if acc else None,
        best_accuracy=max(acc, default=None),
        final_personal_accuracy=personal[-1] if personal else None,
        best_personal_accuracy=max(personal, default=None),
        target=target,
        gb_to_target=reached.cumulative_bytes / 1e9 if reached else None,
        gb_ratio_to_original=None,
        wall_seconds=sum(p.round_seconds for p in pts) if wall is None else wall,
        wall_seconds_from_rounds=run.wall_seconds is None,
        link_seconds_per_round=sum(link_s) / len(pts) if link else None,
        link_seconds_to_target=(
            sum(link_s[: pts.index(reached) + 1]) if link and reached else None
        ),
        encoding=run.encoding,
    )  # fmt: skip


def build_rows(
    runs: Sequence[RunRecord],
    target: float,
    link: Link | None = None,
    metric: str = "auto",
) -> tuple[ReportRow, ...]:
    """Rows of all runs, with GB to target divided by the first original run's.

    Only runs scored on the same accuracy as that original run get a ratio.

    Examples
    --------
    >>> def pts(gb):
    ...     return History.of([RoundMetrics(round=0, accuracy=0.9, bytes_up=0,
    ...                        bytes_down=0, cumulative_bytes=gb * 10**9)])
    >>> runs = [RunRecord("o", pts(10), param="original"), RunRecord("f", pts(2))]
    >>> [row.gb_ratio_to_original for row in build_rows(runs, target=0.5)]
    [1.0, 0.2]
    """
    rows = [summarize(run, target, link, metric) for run in runs]
    base = next((r for r in rows if r.param == "original"), None)
    if base is None or not base.gb_to_target:
        return tuple(rows)
    return tuple(
        replace(r, gb_ratio_to_original=r.gb_to_target / base.gb_to_target)
        if r.gb_to_target is not None and r.scored_on == base.scored_on
        else r
        for r in rows
    )


def make_link(uplink_mbps: float | None, downlink_mbps: float | None) -> Link | None:
    """The simulated link of the CLI options: both or neither, both positive.

    Examples
    --------
    >>> make_link(None, None) is None, make_link(10, 50)
    (True, Link(uplink_mbps=10, downlink_mbps=50))
    """
    if uplink_mbps is None and downlink_mbps is None:
        return None
    if uplink_mbps is None or downlink_mbps is None:
        raise ReportError("give both --uplink-mbps and --downlink-mbps, or neither")
    if uplink_mbps <= 0 or downlink_mbps <= 0:
        raise ReportError("--uplink-mbps and --downlink-mbps must be > 0")
    return Link(uplink_mbps, downlink_mbps)


def write_report(
    run_dirs: Sequence[Path],
    out_dir: Path,
    target: float = 0.8,
    link: Link | None = None,
    metric: str = "auto",
) -> ReportOutput:
    """Write report.md, report.csv and the four figures into ``out_dir``.

    Every directory is checked before anything is written; runs sharing a
    name are told apart by their directory's name (or path, if that is shared
    too). See the module example.
    """
    runs = _unique_names([load_run(Path(d)) for d in run_dirs], run_dirs)
    rows = build_rows(runs, target, link, metric)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = format_markdown(rows, target, link, metric)
    md_path, csv_path = out_dir / "report.md", out_dir / "report.csv"
    md_path.write_text(markdown + "\n")
    csv_path.write_text(format_csv(rows, link))
    figures = plot_curves([_curve(r, metric) for r in runs], out_dir, target)
    return ReportOutput(markdown, (md_path, csv_path, *figures))


def _curve(run: RunRecord, scored: str) -> Curve:
    rows = run.history.rows
    metric = scored_metric(rows, scored, run.scored_on)
    evaluated = [(p, v) for p in rows if (v := getattr(p, metric)) is not None]
    personal = " (personal)" if metric == "personal_accuracy" else ""
    return Curve(
        label=run.name + personal,
        rounds=tuple(p.round + 1 for p, _ in evaluated),
        gb=tuple(p.cumulative_bytes / 1e9 for p, _ in evaluated),
        accuracy=tuple(v for _, v in evaluated),
    )


def _unique_names(
    runs: Sequence[RunRecord], run_dirs: Sequence[Path]
) -> list[RunRecord]:
    names = [r.name for r in runs]
    bases = [Path(d).name for d in run_dirs]
    tags = [
        b if bases.count(b) == 1 else str(d)
        for b, d in zip(bases, run_dirs, strict=True)
    ]
    return [
        replace(r, name=f"{r.name} ({tag})") if names.count(r.name) > 1 else r
        for r, tag in zip(runs, tags, strict=True)
    ]
