"""``fedsim report``: compare runs by accuracy against bytes sent.

Reads run directories (``metrics.jsonl`` + ``config.yaml``), prints a table of
final/best accuracy, total GB and GB to reach a target accuracy, and writes a
plot of accuracy against cumulative GB (the paper's Figure 3 axes).

Example
-------
>>> rows = [{"accuracy": 0.5, "cumulative_bytes": 10**9},
...         {"accuracy": 0.8, "cumulative_bytes": 2 * 10**9}]
>>> gb_to_target(rows, 0.7)
2.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedsim.tracking import read_metrics


@dataclass(frozen=True)
class RunCurve:
    """One run's accuracy against cumulative GB."""

    label: str
    run_dir: Path
    rounds: int
    gb: list[float]
    accuracy: list[float]
    gb_to_target: float | None


def gb_to_target(rows: Sequence[Mapping[str, Any]], target: float) -> float | None:
    """Cumulative GB when accuracy first reaches ``target`` (None if never)."""
    for row in rows:
        if row["accuracy"] >= target:
            return float(row["cumulative_bytes"]) / 1e9
    return None


def load_curve(run_dir: Path, target: float) -> RunCurve:
    """Read one run directory."""
    rows = read_metrics(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    m = cfg["model"]
    label = f"{cfg['name']} [{m['arch']} {m['param']} γ={m['gamma']}]"
    return RunCurve(
        label=label,
        run_dir=run_dir,
        rounds=len(rows),
        gb=[r["cumulative_bytes"] / 1e9 for r in rows],
        accuracy=[r["accuracy"] for r in rows],
        gb_to_target=gb_to_target(rows, target),
    )


def format_table(curves: Sequence[RunCurve], target: float) -> str:
    """Plain-text comparison table."""
    head = (
        f"{'run':<48} {'rounds':>6} {'final':>7} {'best':>7} {'GB':>9} "
        f"{f'GB to {target:.0%}':>11}"
    )
    lines = [head, "-" * len(head)]
    for c in curves:
        to_target = f"{c.gb_to_target:.3f}" if c.gb_to_target is not None else "never"
        lines.append(
            f"{c.label[:48]:<48} {c.rounds:>6} {c.accuracy[-1]:>7.4f} "
            f"{max(c.accuracy):>7.4f} {c.gb[-1]:>9.3f} {to_target:>11}"
        )
    return "\n".join(lines)


def plot(curves: Sequence[RunCurve], out: Path, target: float) -> Path:
    """Accuracy against cumulative GB, one line per run, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in curves:
        ax.plot(c.gb, c.accuracy, label=c.label)
    ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("cumulative communication (GB, up + down)")
    ax.set_ylabel("global test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def report(run_dirs: Sequence[Path], target: float, out: Path | None) -> str:
    """Table of the runs; with ``out``, also the plot."""
    missing = [d for d in run_dirs if not (d / "metrics.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(
            f"not a run directory (no metrics.jsonl): {', '.join(map(str, missing))}"
        )
    curves = [load_curve(d, target) for d in run_dirs]
    text = format_table(curves, target)
    if out is not None:
        text += f"\nplot: {plot(curves, out, target)}"
    return text
