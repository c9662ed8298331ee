import pytest
import torch

from fedsim.strategy import WeightedMean, reply_problem
from fedsim.strategy.fedavg import FedAvg
from tests.fedsim.strategy.helpers import aggregate, settings, update


def test_factor_wise_weighted_mean_hand_computed() -> None:
    # Prepare: 3 clients, two factors each, weights 1, 2, 1.
    ups = [
        update(0, 1, {"x1": torch.tensor([1.0, 2.0]), "y1": torch.tensor([[0.0]])}),
        update(1, 2, {"x1": torch.tensor([4.0, 0.0]), "y1": torch.tensor([[2.0]])}),
        update(2, 1, {"x1": torch.tensor([-1.0, 6.0]), "y1": torch.tensor([[4.0]])}),
    ]
    glob = {"x1": torch.zeros(2), "y1": torch.zeros(1, 1)}
    # Execute
    out, state = aggregate(FedAvg(settings()), 0, glob, {}, ups)
    # Assert: (1*1 + 2*4 - 1) / 4 = 2.0, (2 + 0 + 6) / 4 = 2.0, (0 + 4 + 4) / 4 = 2.0
    torch.testing.assert_close(out["x1"], torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(out["y1"], torch.tensor([[2.0]]))
    assert state == {}


def test_dtype_kept_and_int_tensors_take_first_value() -> None:
    mean = WeightedMean()
    mean.add({"w": torch.ones(2, dtype=torch.float16), "n": torch.tensor(3)}, 1)
    mean.add({"w": torch.zeros(2, dtype=torch.float16), "n": torch.tensor(9)}, 1)
    out = mean.result()
    assert out["w"].dtype == torch.float16
    assert out["w"].tolist() == [0.5, 0.5]
    assert int(out["n"]) == 3


def test_mismatched_tensors_rejected_before_aggregation() -> None:
    # The driver checks every reply against the plan before aggregating it.
    plan = FedAvg(settings()).configure_train(0, {"x1": torch.zeros(1)}, {}, [0])
    bad = update(1, 1, {"x2": torch.zeros(1)})
    assert reply_problem(bad, plan.upload) == (
        "channel 'model': missing ['x1'], unexpected ['x2']"
    )


def test_no_update_aggregates_to_nothing() -> None:
    assert FedAvg(settings()).aggregate_train(0, {"x1": torch.zeros(1)}, {}, []) is None


def test_lr_schedule() -> None:
    strategy = FedAvg(settings("client.lr=0.1", "client.lr_decay=0.5"))
    assert strategy.client_hparams(2).lr == pytest.approx(0.025)
