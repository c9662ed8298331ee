import io
import math

import pytest
import torch

from fedsim.strategy import build_strategy
from fedsim.strategy.fedopt import (
    FedOpt,
    adagrad_second_moment,
    adam_second_moment,
    yogi_second_moment,
)
from tests.fedsim.strategy.helpers import aggregate, settings, update

F64 = torch.float64


def fedopt(rule: str) -> FedOpt:
    strategy = build_strategy(
        settings(
            f"server.strategy={rule}",
            "server.settings.lr=1.0",
            "server.settings.beta1=0.5",
            "server.settings.beta2=0.8",
            "server.settings.tau=0.5",
            "server.weighting=examples",  # the replies' means below weigh 1 and 3
        )
    )
    assert isinstance(strategy, FedOpt)
    return strategy


def replies(x: float, low: float, high: float) -> list:
    # weights 1 and 3; a non-floating counter rides along (first client's value)
    return [
        update(0, 1, {"w": torch.tensor([x + low], dtype=F64), "n": torch.tensor(7)}),
        update(1, 3, {"w": torch.tensor([x + high], dtype=F64), "n": torch.tensor(9)}),
    ]


def test_second_moment_rules_hand_computed() -> None:
    v, beta2 = torch.tensor([1.0, 1.0]), 0.8
    d = torch.tensor([0.5, 2.0])  # d^2 = 0.25 (< v) and 4 (> v)
    # adam: 0.8*1 + 0.2*0.25 = 0.85; 0.8*1 + 0.2*4 = 1.6
    torch.testing.assert_close(
        adam_second_moment(v, d, beta2), torch.tensor([0.85, 1.6])
    )
    # yogi: 1 - 0.2*0.25*sign(0.75) = 0.95; 1 - 0.2*4*sign(-3) = 1.8
    torch.testing.assert_close(
        yogi_second_moment(v, d, beta2), torch.tensor([0.95, 1.8])
    )
    # adagrad: 1 + 0.25 = 1.25; 1 + 4 = 5
    torch.testing.assert_close(
        adagrad_second_moment(v, d, beta2), torch.tensor([1.25, 5.0])
    )


# lr = 1, beta1 = 0.5, beta2 = 0.8, tau = 0.5; x0 = 1, m0 = 0, v0 = tau^2 = 0.25.
# Round 0: mean = (1*1 + 3*(1 + 8/3)) / 4 = 3, d = 2, m1 = 0.5*2 = 1.
#   adam    v1 = 0.8*0.25 + 0.2*4 = 1     x1 = 1 + 1/(1 + 0.5)
#                                            = 1.666666666667
#   yogi    v1 = 0.25 + 0.2*4 = 1.05      x1 = 1 + 1/(1.024695077 + 0.5)
#                                            = 1.655868845745
#   adagrad v1 = 0.25 + 4 = 4.25          x1 = 1 + 1/(2.061552813 + 0.5)
#                                            = 1.390388203202
# Round 1: mean = x1 + (1*1 + 3*(-1)) / 4 = x1 - 0.5, d = -0.5, m2 = 0.5 - 0.25.
#   adam    v2 = 0.8*1 + 0.2*0.25 = 0.85  x2 = x1 + 0.25/(0.921954446 + 0.5)
#                                            = 1.842481019054
#   yogi    v2 = 1.05 - 0.2*0.25 = 1      x2 = x1 + 0.25/(1 + 0.5)
#                                            = 1.822535512412
#   adagrad v2 = 4.25 + 0.25 = 4.5        x2 = x1 + 0.25/(2.121320344 + 0.5)
#                                            = 1.485759988117
EXPECTED = {
    "fedadam": (1.0, 1.666666666667, 0.85, 1.842481019054),
    "fedyogi": (1.05, 1.655868845745, 1.0, 1.822535512412),
    "fedadagrad": (4.25, 1.390388203202, 4.5, 1.485759988117),
}


@pytest.mark.parametrize("rule", sorted(EXPECTED))
def test_two_rounds_with_the_state_carried(rule: str) -> None:
    # Prepare
    strategy = fedopt(rule)
    v1, x1, v2, x2 = EXPECTED[rule]
    glob = {"w": torch.tensor([1.0], dtype=F64), "n": torch.tensor(0)}
    state = strategy.init(glob)
    # Execute: round 0
    glob, state = aggregate(strategy, 0, glob, state, replies(1.0, 0.0, 8 / 3))
    # Assert
    assert glob["w"].item() == pytest.approx(x1, abs=1e-11)
    assert state["m"]["w"].item() == pytest.approx(1.0, abs=1e-12)
    assert state["v"]["w"].item() == pytest.approx(v1, abs=1e-12)
    assert int(glob["n"]) == 7
    # Execute: round 1, from the carried state
    x = glob["w"].item()
    glob, state = aggregate(strategy, 1, glob, state, replies(x, 1.0, -1.0))
    # Assert
    assert glob["w"].item() == pytest.approx(x2, abs=1e-11)
    assert state["m"]["w"].item() == pytest.approx(0.25, abs=1e-12)
    assert state["v"]["w"].item() == pytest.approx(v2, abs=1e-12)


def test_init_state_and_dtypes() -> None:
    glob = {
        "w": torch.ones(2, 3),
        "h": torch.ones(2, dtype=torch.float16),
        "n": torch.tensor(1),
    }
    state = fedopt("fedadam").init(glob)
    assert set(state) == {"m", "v"} and set(state["m"]) == set(state["v"]) == {"w", "h"}
    assert torch.equal(state["m"]["w"], torch.zeros(2, 3))
    torch.testing.assert_close(state["v"]["w"], torch.full((2, 3), 0.25))
    # moments of half-precision factors are kept in float32
    assert state["v"]["h"].dtype == torch.float32


def test_resume_from_a_saved_state_continues_exactly() -> None:
    # Prepare: two rounds straight, and one round + save/load + a fresh strategy.
    glob0 = {"w": torch.tensor([1.0, -2.0])}
    ups0 = [
        update(0, 2, {"w": torch.tensor([3.0, 0.5])}),
        update(1, 1, {"w": torch.tensor([-1.0, 1.0])}),
    ]
    ups1 = [
        update(0, 1, {"w": torch.tensor([0.2, 0.1])}),
        update(2, 5, {"w": torch.tensor([2.0, -3.0])}),
    ]
    straight = fedopt("fedyogi")
    g, s = aggregate(straight, 0, glob0, straight.init(glob0), ups0)
    buffer = io.BytesIO()
    torch.save({"global": g, "state": s}, buffer)
    # Execute
    g_straight, s_straight = aggregate(straight, 1, g, s, ups1)
    buffer.seek(0)
    saved = torch.load(buffer)
    g_resumed, s_resumed = aggregate(
        fedopt("fedyogi"), 1, saved["global"], saved["state"], ups1
    )
    # Assert: bit-identical
    assert torch.equal(g_straight["w"], g_resumed["w"])
    for key in ("m", "v"):
        assert torch.equal(s_straight[key]["w"], s_resumed[key]["w"])


def test_fedopt_refuses_a_strategy_without_a_second_moment_rule() -> None:
    with pytest.raises(
        ValueError, match=r"server\.strategy in fedadam, fedyogi, fedadagrad"
    ):
        FedOpt(settings("server.strategy=fedavg"))


# The clients' mean of rounds 1..6 (Flower's server_round), x0 = 0.
TARGETS = [0.8, 1.5, 1.1, 2.0, 1.7, 1.9]


def flower_fedadam(eta: float, beta1: float, beta2: float, tau: float) -> list[float]:
    """Flower's FedAdam (server/strategy/fedadam.py), in floats: m, v from 0;
    eta_norm = eta * sqrt(1 - beta2^(r+1)) / (1 - beta1^(r+1)), r from 1."""
    x, m, v, out = 0.0, 0.0, 0.0, []
    for r, target in enumerate(TARGETS, start=1):
        delta = target - x
        m = beta1 * m + (1 - beta1) * delta
        v = beta2 * v + (1 - beta2) * delta * delta
        eta_norm = eta * math.sqrt(1 - beta2 ** (r + 1)) / (1 - beta1 ** (r + 1))
        x = x + eta_norm * m / (math.sqrt(v) + tau)
        out.append(x)
    return out


def reddi_fedadam(eta: float, beta1: float, beta2: float, tau: float) -> list[float]:
    """Reddi et al.'s Algorithm 2 (FedAdam), in floats: v_{-1} = tau^2, no bias
    correction."""
    x, m, v, out = 0.0, 0.0, tau * tau, []
    for target in TARGETS:
        delta = target - x
        m = beta1 * m + (1 - beta1) * delta
        v = beta2 * v + (1 - beta2) * delta * delta
        x = x + eta * m / (math.sqrt(v) + tau)
        out.append(x)
    return out


def fedsim_fedadam(*overrides: str) -> list[float]:
    strategy = build_strategy(settings("server.strategy=fedadam", *overrides))
    glob = {"w": torch.tensor(0.0, dtype=F64)}
    state = strategy.init(glob)
    out = []
    for rnd, target in enumerate(TARGETS):  # fedsim's rounds count from 0
        ups = [update(0, 1, {"w": torch.tensor(target, dtype=F64)})]
        glob, state = aggregate(strategy, rnd, glob, state, ups)
        out.append(glob["w"].item())
    return out


def test_bias_corrected_fedadam_follows_flowers_formula_step_by_step() -> None:
    # tau 1e-9 (Flower's default): fedsim's v0 = tau^2 = 1e-18 vanishes beside d^2.
    ours = fedsim_fedadam(
        "server.settings.lr=0.1",
        "server.settings.tau=0.000000001",
        "server.settings.bias_correction=true",
    )
    flower = flower_fedadam(0.1, 0.9, 0.99, 1e-9)
    assert ours == pytest.approx(flower, rel=1e-12)
    # ... and it is not Reddi's: the first step differs by sqrt(1-.99^2)/(1-.9^2)
    assert ours[0] != pytest.approx(reddi_fedadam(0.1, 0.9, 0.99, 1e-9)[0], rel=0.1)


def test_fedadam_without_bias_correction_is_reddis_algorithm_2() -> None:
    ours = fedsim_fedadam("server.settings.lr=0.1", "server.settings.tau=0.01")
    assert ours == pytest.approx(reddi_fedadam(0.1, 0.9, 0.99, 0.01), rel=1e-12)
