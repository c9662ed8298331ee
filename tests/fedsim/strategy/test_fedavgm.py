import torch

from fedsim.strategy import build_strategy
from fedsim.strategy.fedavgm import FedAvgM
from tests.fedsim.strategy.helpers import aggregate, settings, update


def fedavgm(lr: float, momentum: float) -> FedAvgM:
    strategy = build_strategy(
        settings(
            "server.strategy=fedavgm",
            f"server.settings.lr={lr}",
            f"server.settings.momentum={momentum}",
        )
    )
    assert isinstance(strategy, FedAvgM)
    return strategy


def test_two_rounds_hand_computed() -> None:
    # Prepare: x = 1; round 0 replies 0 (weight 1) and 2/3 (weight 3): mean 0.5.
    strategy = fedavgm(lr=1.0, momentum=0.9)
    glob = {"w": torch.tensor([1.0], dtype=torch.float64), "n": torch.tensor(4)}
    state = strategy.init(glob)
    ups = [
        update(
            0, 1, {"w": torch.tensor([0.0], dtype=torch.float64), "n": torch.tensor(7)}
        ),
        update(
            1,
            3,
            {"w": torch.tensor([2 / 3], dtype=torch.float64), "n": torch.tensor(9)},
        ),
    ]
    # Execute: round 0
    glob, state = aggregate(strategy, 0, glob, state, ups)
    # Assert: d = 1 - 0.5 = 0.5, v = 0.5, x = 1 - 0.5 = 0.5; counters take the first
    assert (
        abs(glob["w"].item() - 0.5) < 1e-12
        and abs(state["v"]["w"].item() - 0.5) < 1e-12
    )
    assert int(glob["n"]) == 7 and set(state["v"]) == {"w"}
    # Execute: round 1, both clients reply 0.25: d = 0.25, v = 0.45 + 0.25 = 0.7
    ups = [
        update(
            i, 1, {"w": torch.tensor([0.25], dtype=torch.float64), "n": torch.tensor(1)}
        )
        for i in (0, 1)
    ]
    glob, state = aggregate(strategy, 1, glob, state, ups)
    # Assert: x = 0.5 - 0.7 = -0.2 (momentum carried the first step on)
    assert abs(glob["w"].item() + 0.2) < 1e-12
    assert abs(state["v"]["w"].item() - 0.7) < 1e-12


def test_lr_one_momentum_zero_is_fedavg_and_metrics_report_the_step() -> None:
    strategy = fedavgm(lr=1.0, momentum=0.0)
    glob = {"w": torch.tensor([3.0, 4.0])}
    ups = [update(0, 1, {"w": torch.zeros(2)})]
    out = strategy.aggregate_train(0, glob, strategy.init(glob), ups)
    assert out is not None
    assert out.global_tensors["w"].tolist() == [0.0, 0.0]
    assert out.metrics == {"step_norm": 5.0}
    assert strategy.aggregate_train(0, glob, strategy.init(glob), []) is None
