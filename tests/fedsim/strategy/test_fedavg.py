import pytest
import torch

from fedsim.messages import ClientUpdate
from fedsim.strategy import AggregationError, FedAvg, WeightedMean


def update(cid: int, n: int, **tensors: torch.Tensor) -> ClientUpdate:
    return ClientUpdate(cid, tensors, n, 0, 0.0, 0.0)


def test_factor_wise_weighted_mean_hand_computed() -> None:
    # Prepare: 3 clients, two factors each, weights 1, 2, 1.
    ups = [
        update(0, 1, x1=torch.tensor([1.0, 2.0]), y1=torch.tensor([[0.0]])),
        update(1, 2, x1=torch.tensor([4.0, 0.0]), y1=torch.tensor([[2.0]])),
        update(2, 1, x1=torch.tensor([-1.0, 6.0]), y1=torch.tensor([[4.0]])),
    ]
    # Execute
    out = FedAvg().aggregate_train({"x1": torch.zeros(2), "y1": torch.zeros(1, 1)}, ups)
    # Assert: (1*1 + 2*4 - 1) / 4 = 2.0, (2 + 0 + 6) / 4 = 2.0, (0 + 4 + 4) / 4 = 2.0
    torch.testing.assert_close(out["x1"], torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(out["y1"], torch.tensor([[2.0]]))


def test_dtype_kept_and_int_tensors_take_first_value() -> None:
    mean = WeightedMean()
    mean.add({"w": torch.ones(2, dtype=torch.float16), "n": torch.tensor(3)}, 1)
    mean.add({"w": torch.zeros(2, dtype=torch.float16), "n": torch.tensor(9)}, 1)
    out = mean.result()
    assert out["w"].dtype == torch.float16
    assert out["w"].tolist() == [0.5, 0.5]
    assert int(out["n"]) == 3


def test_mismatched_tensors_rejected() -> None:
    with pytest.raises(AggregationError, match="client 1"):
        FedAvg().aggregate_train(
            {"x1": torch.zeros(1)},
            [update(0, 1, x1=torch.zeros(1)), update(1, 1, x2=torch.zeros(1))],
        )


def test_no_update_is_an_error() -> None:
    with pytest.raises(AggregationError, match="no client update"):
        FedAvg().aggregate_train({"x1": torch.zeros(1)}, [])


def test_lr_schedule() -> None:
    from fedsim.config import load_config

    cfg = load_config(None, ["client.lr=0.1", "client.lr_decay=0.5"])
    assert FedAvg().client_lr(2, cfg.client) == pytest.approx(0.025)
