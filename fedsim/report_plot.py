"""Figures of ``fedsim report``: accuracy against cumulative GB and against rounds.

Every run is one line on a shared axis, labelled by its run name; only rounds
with a global evaluation are drawn. Each figure is saved as PNG and SVG with
matplotlib's Agg backend (no display needed).

Example
-------
>>> import tempfile
>>> curve = Curve("fedpara", rounds=(1, 2), gb=(0.5, 1.0), accuracy=(0.6, 0.8))
>>> with tempfile.TemporaryDirectory() as d:
...     paths = plot_curves([curve], Path(d), target=0.7)
...     [p.name for p in paths[:2]]
['accuracy_vs_gb.png', 'accuracy_vs_gb.svg']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

GB_STEM = "accuracy_vs_gb"
ROUNDS_STEM = "accuracy_vs_rounds"


@dataclass(frozen=True)
class Curve:
    """One run's evaluated rounds: rounds completed, cumulative GB, accuracy."""

    label: str
    rounds: tuple[int, ...]
    gb: tuple[float, ...]
    accuracy: tuple[float, ...]


def plot_curves(
    curves: Sequence[Curve], out_dir: Path, target: float | None = None
) -> tuple[Path, ...]:
    """Write accuracy against GB and against rounds, PNG and SVG, into ``out_dir``.

    Parameters
    ----------
    curves
        One per run; a curve without points is left out of the figures.
    out_dir
        Existing directory to write into.
    target
        Accuracy drawn as a dotted horizontal line (none if ``None``).

    Returns
    -------
    tuple of Path
        ``accuracy_vs_gb.{png,svg}`` then ``accuracy_vs_rounds.{png,svg}``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     len(plot_curves([], Path(d)))
    4
    """
    gb = _figure(
        curves,
        [c.gb for c in curves],
        "cumulative communication (GB, up + down)",
        target,
        out_dir / GB_STEM,
    )
    rounds = _figure(
        curves,
        [tuple(float(r) for r in c.rounds) for c in curves],
        "rounds completed",
        target,
        out_dir / ROUNDS_STEM,
        integer_x=True,
    )
    return (*gb, *rounds)


def _figure(
    curves: Sequence[Curve],
    xs: Sequence[tuple[float, ...]],
    xlabel: str,
    target: float | None,
    stem: Path,
    integer_x: bool = False,
) -> tuple[Path, Path]:
    """One figure, one line per non-empty curve, saved as ``stem``.png and .svg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for curve, x in zip(curves, xs, strict=True):
        if curve.accuracy:
            ax.plot(x, curve.accuracy, marker=".", label=curve.label)
            drawn += 1
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("global test accuracy")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    fig.tight_layout()
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    fig.savefig(png, dpi=120)
    fig.savefig(svg)
    plt.close(fig)
    return png, svg
