"""The tables of ``fedsim report``: one :class:`ReportRow` per run, as markdown or CSV.

Markdown rounds for reading (accuracies to 4 decimals, GB to 4 significant
digits, "not reached" for a target never met); CSV keeps full precision and
leaves missing values empty.

Example
-------
>>> row = ReportRow("fed", "mlp", "fedpara", 0.1, "fedavg", 100, 800.0, 2,
...                 0.75, 0.8, None, None, 0.8, 1.6e-06, 0.25, 3.0, False,
...                 weighting="examples", train_fraction=1.0)
>>> row.md_cells(link=False)[5:8], row.md_cells(link=False)[-3:]
(['examples', 'none/none', '100%'], ['1.6e-06', '0.250', '3.0'])
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedsim.report import Link

MD_HEADERS = (
    "run", "arch", "param", "γ", "strategy", "weighting", "encoding up/down",
    "trained on", "params travelling", "bytes/round", "rounds", "scored on",
    "final global", "best global", "final personal", "best personal", "GB to {t}",
    "GB ÷ original", "wall s",
)  # fmt: skip
CSV_HEADERS = (
    "name", "arch", "param", "gamma", "strategy", "weighting", "encoding",
    "train_fraction", "params_travelling", "bytes_per_round", "rounds", "scored_on",
    "global_view", "final_accuracy", "best_accuracy", "final_personal_accuracy",
    "best_personal_accuracy", "target", "gb_to_target", "gb_ratio_to_original",
    "wall_seconds", "wall_seconds_from_rounds",
)  # fmt: skip
SCORING_NOTE = (
    "scored on: the accuracy of GB to target and GB ÷ original (personal: each "
    "client's own model on its own test split, example-weighted over the clients "
    "that trained; global: the server's model on the global test split), a ratio "
    "only between runs scored alike. global view (W2=0): pFedPara's W1 alone, a "
    "model no client keeps, never a run's score. trained on: the share of each "
    "client's examples it trained on (the rest is its personal test split)."
)
LINK_MD_HEADERS = ("link s/round", "link s to {t}")
LINK_CSV_HEADERS = ("link_seconds_per_round", "link_seconds_to_target")


@dataclass(frozen=True)
class ReportRow:
    """One row of ``report.md`` / ``report.csv``; None prints as an empty cell."""

    name: str
    arch: str
    param: str
    gamma: float | None
    strategy: str
    params_travelling: int | None
    bytes_per_round: float
    rounds: int
    final_accuracy: float | None
    best_accuracy: float | None
    final_personal_accuracy: float | None
    best_personal_accuracy: float | None
    target: float
    gb_to_target: float | None
    gb_ratio_to_original: float | None
    wall_seconds: float
    wall_seconds_from_rounds: bool
    link_seconds_per_round: float | None = None
    link_seconds_to_target: float | None = None
    encoding: str = "none/none"  # uplink/downlink codec (comm.*.codec)
    weighting: str = ""
    train_fraction: float | None = None
    scored_on: str = "global"
    global_view: str = "global"

    def _global(self, value: float | None) -> str:
        """A global accuracy, labelled when it is not the server's model."""
        cell = _fmt(value, ".4f")
        return (
            f"{cell} [{self.global_view}]"
            if cell and self.global_view != "global"
            else cell
        )

    def md_cells(self, link: bool) -> list[str]:
        """Markdown cells, in the order of :data:`MD_HEADERS`."""
        cells = [
            self.name.replace("|", r"\|"), self.arch, self.param,
            _fmt(self.gamma, "g"), self.strategy, self.weighting, self.encoding,
            _fmt(self.train_fraction, ".0%"), _fmt(self.params_travelling, ","),
            _fmt(self.bytes_per_round, ",.0f"), str(self.rounds), self.scored_on,
            self._global(self.final_accuracy), self._global(self.best_accuracy),
            _fmt(self.final_personal_accuracy, ".4f"),
            _fmt(self.best_personal_accuracy, ".4f"),
            _fmt(self.gb_to_target, ".4g") or "not reached",
            _fmt(self.gb_ratio_to_original, ".3f"),
            f"{self.wall_seconds:.1f}" + "*" * self.wall_seconds_from_rounds,
        ]  # fmt: skip
        if link:
            cells.append(_fmt(self.link_seconds_per_round, ".4g"))
            cells.append(_fmt(self.link_seconds_to_target, ".4g") or "not reached")
        return cells

    def csv_cells(self, link: bool) -> list[str]:
        """CSV cells at full precision, in the order of :data:`CSV_HEADERS`."""
        cells = [
            self.name, self.arch, self.param, _fmt(self.gamma), self.strategy,
            self.weighting, self.encoding, _fmt(self.train_fraction),
            _fmt(self.params_travelling), _fmt(self.bytes_per_round), str(self.rounds),
            self.scored_on, self.global_view, _fmt(self.final_accuracy),
            _fmt(self.best_accuracy),
            _fmt(self.final_personal_accuracy), _fmt(self.best_personal_accuracy),
            _fmt(self.target), _fmt(self.gb_to_target),
            _fmt(self.gb_ratio_to_original), _fmt(self.wall_seconds),
            str(self.wall_seconds_from_rounds).lower(),
        ]  # fmt: skip
        if link:
            cells.append(_fmt(self.link_seconds_per_round))
            cells.append(_fmt(self.link_seconds_to_target))
        return cells


def _fmt(value: float | None, spec: str = "") -> str:
    return "" if value is None else format(value, spec)


def format_markdown(
    rows: Sequence[ReportRow],
    target: float,
    link: Link | None = None,
    metric: str = "auto",
) -> str:
    """The markdown table, with footnotes on estimated wall time and the link.

    Examples
    --------
    >>> from fedsim.report import RunRecord, build_rows
    >>> from fedsim.results import History
    >>> from fedsim.tracking import RoundMetrics
    >>> row = RoundMetrics(round=0, accuracy=0.5, bytes_up=7, bytes_down=0,
    ...                    cumulative_bytes=7, round_seconds=2.0)
    >>> run = RunRecord("a", History.of([row]))
    >>> line = format_markdown(build_rows([run], 0.9), 0.9).splitlines()[2]
    >>> line.split(" | ")[5:13]
    ['', 'none/none', '100%', '', '7', '1', 'global', '0.5000']
    """
    t = f"{target:g}"
    headers = [h.format(t=t) for h in MD_HEADERS + (LINK_MD_HEADERS if link else ())]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r.md_cells(link is not None)) + " |" for r in rows]
    lines += ["", SCORING_NOTE]
    if any(r.wall_seconds_from_rounds for r in rows):
        lines += [
            "",
            r"\* no summary.json (unfinished run): wall s is the sum of round_seconds.",
        ]
    if link:
        lines += [
            "",
            f"Simulated link: {link.uplink_mbps:g} Mbit/s up, "
            f"{link.downlink_mbps:g} Mbit/s down, seconds of one client per round "
            "(bytes_down / clients sampled + bytes_up / clients that reported; "
            "directions add up, stragglers not modelled); time to target sums "
            "the rounds up to the first that reaches it.",
        ]
    return "\n".join(lines)


def format_csv(rows: Sequence[ReportRow], link: Link | None = None) -> str:
    """The CSV table: full precision, empty cells for missing values.

    Examples
    --------
    >>> from fedsim.report import RunRecord, build_rows
    >>> from fedsim.results import History
    >>> from fedsim.tracking import RoundMetrics
    >>> row = RoundMetrics(round=0, accuracy=0.5, bytes_up=7, bytes_down=0,
    ...                    cumulative_bytes=7, round_seconds=2.0)
    >>> run = RunRecord("a", History.of([row]))
    >>> print(format_csv(build_rows([run], 0.9)).splitlines()[1])
    a,,,,,,none/none,1.0,,7.0,1,global,global,0.5,0.5,,,0.9,,,2.0,true
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADERS + (LINK_CSV_HEADERS if link else ()))
    writer.writerows(r.csv_cells(link is not None) for r in rows)
    return buf.getvalue()
