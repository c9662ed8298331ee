"""``server.weighting`` names the objective every strategy converges to.

Five 1-D quadratics ``f_i(w) = a_i/2 (w - b_i)^2`` with unequal client sizes
``n = [1, 10, 2, 20, 5]``: the uniform objective ``(1/N) sum f_i`` and the
example-weighted one ``sum n_i f_i / n`` have different optima, and each
strategy, run through its own client hooks, lands on the one its weighting
names.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedsim.registry import STRATEGIES
from fedsim.strategy import build_strategy
from tests.fedsim.strategy.helpers import run_rounds, settings

F64 = torch.float64
A = [1.0, 2.0, 1.0, 3.0, 2.0]
B = [1.0, -1.0, 2.0, -0.5, 0.3]
N = [1, 10, 2, 20, 5]


def optimum(weights: list[float]) -> float:
    """``argmin sum_i weights_i f_i``."""
    num = sum(w * a * b for w, a, b in zip(weights, A, B, strict=True))
    return num / sum(w * a for w, a in zip(weights, A, strict=True))


OPTIMA = {"uniform": optimum([1.0] * 5), "examples": optimum([float(n) for n in N])}

# Every strategy with a server mean (local-only has none; FedPer is FedAvg's).
STRATEGY_RUNS = {
    # name: (local steps, client lr, rounds, cohorts per round, extra overrides)
    "fedavg": (1, 0.1, 80, 5, ()),
    "fedavgm": (1, 0.1, 80, 5, ("server.settings.momentum=0.5",)),
    "fedprox": (1, 0.1, 80, 5, ()),
    "fednova": (1, 0.1, 80, 5, ()),
    # Adaptive server steps: lr small enough to settle within the tolerance.
    "fedadam": (1, 0.1, 200, 5, ("server.settings.lr=0.01",)),
    "fedyogi": (1, 0.1, 200, 5, ("server.settings.lr=0.01",)),
    "fedadagrad": (1, 0.1, 150, 5, ("server.settings.lr=0.1",)),
    # Drift-correcting strategies: 5 local steps, 2 of 5 clients per round.
    "scaffold": (5, 0.05, 250, 2, ()),
    "feddyn": (5, 0.05, 250, 2, ("server.settings.alpha=1.0",)),
}


def converge(name: str, weighting: str) -> float:
    steps, lr, rounds, per_round, extra = STRATEGY_RUNS[name]
    strategy_settings = settings(
        f"server.strategy={name}",
        f"server.weighting={weighting}",
        "data.num_clients=5",
        f"server.clients_per_round={per_round}",
        *extra,
    )
    strategy = build_strategy(
        dataclasses.replace(strategy_settings, client_examples=tuple(N))
    )
    glob = {"w": torch.tensor(0.0, dtype=F64)}
    state = strategy.init(glob)
    # A fixed rotation of cohorts: every client joins every 5 / per_round rounds.
    cohorts = [
        sorted((r * per_round + k) % 5 for k in range(per_round)) for r in range(rounds)
    ]
    kept: dict[int, dict] = {}
    rounds = run_rounds(strategy, glob, state, kept, cohorts, A, B, N, steps, lr)
    *_, (last, _) = rounds
    return float(last["w"].item())


def test_the_two_objectives_differ() -> None:
    assert abs(OPTIMA["uniform"] - OPTIMA["examples"]) > 0.3


@pytest.mark.parametrize("weighting", ["uniform", "examples"])
@pytest.mark.parametrize("name", sorted(STRATEGY_RUNS))
def test_every_strategy_converges_to_the_optimum_its_weighting_names(
    name: str, weighting: str
) -> None:
    w = converge(name, weighting)
    assert w == pytest.approx(OPTIMA[weighting], abs=1e-3), (name, weighting, OPTIMA)


def test_every_aggregating_strategy_is_covered() -> None:
    keeps_all = {n for n, s in STRATEGIES.items() if s.keeps_local}
    assert set(STRATEGIES) - keeps_all == set(STRATEGY_RUNS)
