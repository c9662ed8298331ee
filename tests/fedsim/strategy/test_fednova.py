import pytest
import torch

from fedsim.messages import MODEL
from fedsim.strategy import build_strategy, reply_problem
from fedsim.strategy.fednova import STEPS, FedNova, FedNovaClient, tau_norm
from tests.fedsim.strategy.helpers import (
    aggregate,
    run_quadratic_client,
    settings,
    update,
)


def fednova(*overrides: str) -> FedNova:
    strategy = build_strategy(settings("server.strategy=fednova", *overrides))
    assert isinstance(strategy, FedNova)
    return strategy


def steps(tau: float) -> dict:
    return {"tau": torch.tensor(tau)}


def test_server_half_hand_computed() -> None:
    # Prepare: x = 0; A (1 example) took 2 steps to -2, B (3 examples) 4 steps to -2.
    ups = [
        update(0, 1, {"w": torch.tensor([-2.0], dtype=torch.float64)}, steps=steps(2)),
        update(1, 3, {"w": torch.tensor([-2.0], dtype=torch.float64)}, steps=steps(4)),
    ]
    glob = {"w": torch.tensor([0.0], dtype=torch.float64)}
    # Execute
    out = fednova().aggregate_train(0, glob, {}, ups)
    # Assert: d_A = 2/2 = 1, d_B = 2/4 = 0.5; p = 1/4, 3/4;
    #   tau_eff = 0.25*2 + 0.75*4 = 3.5; x = 0 - 3.5 * (0.25 + 0.375) = -2.1875
    #   (FedAvg would give -2: the client that did more steps no longer dominates)
    assert out is not None
    assert abs(out.global_tensors["w"].item() + 2.1875) < 1e-12
    assert out.metrics == {"tau_eff": 3.5}
    assert out.client_metrics == {0: {"a_norm": 2.0}, 1: {"a_norm": 4.0}}


def test_equal_steps_is_fedavg() -> None:
    ups = [
        update(0, 1, {"w": torch.tensor([1.0], dtype=torch.float64)}, steps=steps(3)),
        update(1, 3, {"w": torch.tensor([5.0], dtype=torch.float64)}, steps=steps(3)),
    ]
    glob, _ = aggregate(
        fednova(), 0, {"w": torch.tensor([0.0], dtype=torch.float64)}, {}, ups
    )
    assert abs(glob["w"].item() - 4.0) < 1e-12  # (1 + 15) / 4


def test_momentum_norm_of_the_aggregation_vector() -> None:
    # rho = 0.5, tau = 2: a = [(1 - 0.25)/0.5, (1 - 0.5)/0.5] = [1.5, 1.0]
    assert tau_norm(2, momentum=0.5) == pytest.approx(2.5)
    assert tau_norm(7, momentum=0.0) == 7.0


def test_clients_upload_a_channel_the_server_never_sent() -> None:
    strategy = fednova()
    glob = {"w": torch.tensor(0.5, dtype=torch.float64)}
    plan = strategy.configure_train(0, glob, {}, [0])
    assert set(plan.payload) == {MODEL}
    assert set(plan.upload) == {MODEL, STEPS} and plan.upload[STEPS] == {"tau": ()}
    assert isinstance(plan.algorithm, FedNovaClient)
    up = run_quadratic_client(
        plan.algorithm, plan.payload, {}, a=1.0, b=0.0, steps=5, lr=0.1
    )
    assert up.upload[STEPS]["tau"].item() == 5.0 and up.metrics == {"tau": 5.0}
    assert reply_problem(up, plan.upload) is None
    missing = update(0, 1, {"w": torch.tensor(0.5, dtype=torch.float64)})
    assert "expected ['model', 'steps']" in str(reply_problem(missing, plan.upload))
