import torch

from fedsim.algorithm import ClientAlgorithm
from fedsim.strategy import build_strategy
from fedsim.strategy.fedprox import FedProx, FedProxClient
from tests.fedsim.strategy.helpers import (
    aggregate,
    run_quadratic_client,
    settings,
    update,
)


def test_proximal_term_and_its_gradient_on_a_scalar() -> None:
    # Prepare: global w_g = 1, the client has moved to w = 3, mu = 0.5.
    w = torch.nn.Parameter(torch.tensor(1.0))
    algo = FedProxClient(mu=0.5)
    state = algo.begin({"w": w}, {"model": {"w": torch.tensor(1.0)}}, {})
    with torch.no_grad():
        w.fill_(3.0)
    # Execute
    loss = algo.loss(state, {"w": w}, w.square())
    loss.backward()
    # Assert: 3^2 + 0.5/2 * (3 - 1)^2 = 9 + 1 = 10; d/dw = 2*3 + 0.5*(3 - 1) = 7
    assert loss.item() == 10.0
    assert w.grad is not None and w.grad.item() == 7.0


def test_mu_zero_adds_nothing_to_the_graph() -> None:
    w = torch.nn.Parameter(torch.tensor(2.0))
    algo = FedProxClient(mu=0.0)
    state = algo.begin({"w": w}, {"model": {"w": torch.tensor(2.0)}}, {})
    loss = w.square()
    assert algo.loss(state, {"w": w}, loss) is loss


def test_local_sgd_follows_the_proximal_gradient() -> None:
    # Prepare: f(w) = 2/2 (w - 3)^2 from w_g = 0, mu = 1, lr = 0.1, 2 steps.
    payload = {"model": {"w": torch.tensor(0.0, dtype=torch.float64)}}
    # Execute
    up = run_quadratic_client(
        FedProxClient(mu=1.0), payload, {}, a=2.0, b=3.0, steps=2, lr=0.1
    )
    # Assert: g0 = 2*(0 - 3) + 0 = -6 -> w = 0.6;
    #         g1 = 2*(0.6 - 3) + 1*(0.6 - 0) = -4.2 -> w = 0.6 + 0.42 = 1.02
    assert abs(up.upload["model"]["w"].item() - 1.02) < 1e-12
    assert up.keep == {}
    assert set(up.upload) == {"model"}


def test_mu_zero_is_bit_identical_to_fedavg_training() -> None:
    payload = {"model": {"w": torch.tensor(0.3)}}
    kw = {"a": 1.7, "b": -2.0, "steps": 5, "lr": 0.13}
    fedavg = run_quadratic_client(ClientAlgorithm(), payload, {}, **kw)
    fedprox = run_quadratic_client(FedProxClient(mu=0.0), payload, {}, **kw)
    assert torch.equal(fedavg.upload["model"]["w"], fedprox.upload["model"]["w"])


def test_server_half_is_fedavg_with_the_proximal_client() -> None:
    # Prepare
    strategy = build_strategy(
        settings("server.strategy=fedprox", "server.settings.mu=0.3")
    )
    glob = {"w": torch.tensor([0.0])}
    ups = [
        update(0, 1, {"w": torch.tensor([2.0])}),
        update(1, 3, {"w": torch.tensor([6.0])}),
    ]
    # Execute
    plan = strategy.configure_train(0, glob, {}, [0, 1])
    new, state = aggregate(strategy, 0, glob, {}, ups)
    # Assert: (1*2 + 3*6) / 4 = 5
    assert isinstance(strategy, FedProx)
    assert isinstance(plan.algorithm, FedProxClient) and plan.algorithm.mu == 0.3
    assert set(plan.payload) == {"model"}
    assert new["w"].tolist() == [5.0]
    assert state == {}
