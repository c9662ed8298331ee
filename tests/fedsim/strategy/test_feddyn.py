import dataclasses

import pytest
import torch

from fedsim.strategy import build_strategy
from fedsim.strategy.feddyn import FedDyn, FedDynClient
from tests.fedsim.strategy.helpers import (
    aggregate,
    run_rounds,
    settings,
    update,
)

F64 = torch.float64


def feddyn_settings(alpha: float, num_clients: int = 3):
    return settings(
        "server.strategy=feddyn",
        f"server.settings.alpha={alpha}",
        f"data.num_clients={num_clients}",
        f"server.clients_per_round={min(num_clients, 2)}",
    )


def test_server_half_hand_computed() -> None:
    # Prepare: N = 4, alpha = 0.5, theta = 1, h = 0.2; 2 replies (weights ignored).
    strategy = build_strategy(feddyn_settings(0.5, num_clients=4))
    glob = {"w": torch.tensor([1.0])}
    state = {"h": {"w": torch.tensor([0.2])}}
    ups = [
        update(0, 1, {"w": torch.tensor([2.0])}),
        update(1, 3, {"w": torch.tensor([4.0])}),
    ]
    # Execute
    new, new_state = aggregate(strategy, 0, glob, state, ups)
    # Assert: h = 0.2 - 0.5/4 * ((2 - 1) + (4 - 1)) = -0.3;
    #         theta = (2 + 4)/2 - (-0.3)/0.5 = 3.6 (uniform mean, not (2 + 12)/4)
    assert isinstance(strategy, FedDyn)
    torch.testing.assert_close(new_state["h"]["w"], torch.tensor([-0.3]))
    torch.testing.assert_close(new["w"], torch.tensor([3.6]))
    assert torch.equal(state["h"]["w"], torch.tensor([0.2]))  # old state untouched


def test_init_and_plan() -> None:
    strategy = FedDyn(feddyn_settings(0.1))
    glob = {"w": torch.ones(2), "n": torch.tensor(3)}
    state = strategy.init(glob)
    plan = strategy.configure_train(0, glob, state, [0])
    assert set(state) == {"h"} and set(state["h"]) == {"w"}
    assert torch.equal(state["h"]["w"], torch.zeros(2))
    assert set(plan.payload) == {"model"}
    assert isinstance(plan.algorithm, FedDynClient) and plan.algorithm.alpha == 0.1


def test_client_terms_and_gradient_on_a_scalar() -> None:
    # Prepare: theta_g = 1, kept g_i = 2, alpha = 0.5; training moved theta to 3.
    w = torch.nn.Parameter(torch.tensor(1.0))
    algo = FedDynClient(alpha=0.5)
    state = algo.begin(
        {"w": w},
        {"model": {"w": torch.tensor(1.0)}},
        {"feddyn": {"w": torch.tensor(2.0)}},
    )
    with torch.no_grad():
        w.fill_(3.0)
    # Execute
    loss = algo.loss(state, {"w": w}, w.square())
    loss.backward()
    keep = algo.end(state, {"w": w}, steps=1, lr=0.1).keep
    # Assert: 9 - 2*3 + 0.5/2 * (3 - 1)^2 = 4; d/dw = 6 - 2 + 0.5*2 = 5;
    #         g_i = 2 - 0.5 * (3 - 1) = 1
    assert loss.item() == 4.0
    assert w.grad is not None and w.grad.item() == 5.0
    assert keep["feddyn"]["w"].item() == 1.0


def textbook(a, b, num_clients, alpha, theta, cohorts, steps, lr):
    """FedDyn in plain floats: (theta, h, g_i) after each round."""
    h, g, history = 0.0, {}, []
    for cohort in cohorts:
        thetas = {}
        for i in cohort:
            gi, w = g.get(i, 0.0), theta
            for _ in range(steps):
                w -= lr * (a[i] * (w - b[i]) - gi + alpha * (w - theta))
            g[i], thetas[i] = gi - alpha * (w - theta), w
        h -= alpha / num_clients * sum(t - theta for t in thetas.values())
        theta = sum(thetas.values()) / len(cohort) - h / alpha
        history.append((theta, h, dict(g)))
    return history


def test_two_rounds_on_quadratics_follow_the_textbook_recursion() -> None:
    # Prepare: f_i(w) = a_i/2 (w - b_i)^2, 3 clients; client 2 first joins in round 1.
    a, b, n = [1.0, 2.0, 4.0], [1.0, -1.0, 3.0], [2, 1, 1]
    cohorts, steps, lr, alpha = [[0, 1], [1, 2]], 3, 0.1, 0.5
    expected = textbook(a, b, 3, alpha, 0.5, cohorts, steps, lr)
    strategy = build_strategy(feddyn_settings(alpha))
    glob = {"w": torch.tensor(0.5, dtype=F64)}
    kept: dict[int, dict] = {}
    # Execute
    rounds = run_rounds(
        strategy, glob, strategy.init(glob), kept, cohorts, a, b, n, steps, lr
    )
    for (glob, state), (theta, h, g) in zip(rounds, expected, strict=True):
        # Assert: theta, h and every sampled client's g_i match the recursion,
        # and h is the mean of all N clients' g_i (0 for clients not yet seen).
        assert abs(glob["w"].item() - theta) < 1e-12
        assert abs(state["h"]["w"].item() - h) < 1e-12
        for i, value in g.items():
            assert abs(kept[i]["feddyn"]["w"].item() - value) < 1e-12
        assert abs(h - sum(g.values()) / 3) < 1e-12


def test_fixed_point_is_the_global_optimum_despite_local_steps() -> None:
    # Prepare: full participation, 5 local steps on heterogeneous quadratics.
    a, b, n = [1.0, 2.0, 4.0], [1.0, -1.0, 3.0], [1, 1, 1]
    optimum = sum(ai * bi for ai, bi in zip(a, b, strict=True)) / sum(a)  # 11/7
    strategy = FedDyn(feddyn_settings(1.0))
    glob = {"w": torch.tensor(0.5, dtype=F64)}
    kept: dict[int, dict] = {}
    # Execute: 100 rounds
    rounds = run_rounds(
        strategy, glob, strategy.init(glob), kept, [[0, 1, 2]] * 100, a, b, n, 5, 0.1
    )
    *_, (glob, state) = rounds
    # Assert: sum_i grad f_i(theta) = 0, h = 0 and each g_i = grad f_i(theta).
    theta = glob["w"].item()
    assert abs(theta - optimum) < 1e-8
    assert abs(state["h"]["w"].item()) < 1e-8
    for i in range(3):
        assert abs(kept[i]["feddyn"]["w"].item() - a[i] * (theta - b[i])) < 1e-7


def test_max_grad_norm_clips_the_step_gradient_as_pytorch_does() -> None:
    # Prepare: gradients of norm 5 (3, 4) and a limit of 1; then a limit above 5.
    grads = {"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}
    clipped = FedDynClient(alpha=0.1, max_grad_norm=1.0).gradients({}, grads)
    kept = FedDynClient(alpha=0.1, max_grad_norm=10.0).gradients({}, grads)
    # Assert: what torch.nn.utils.clip_grad_norm_ leaves in .grad
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in grads]
    for p, g in zip(params, grads.values(), strict=True):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
    torch.testing.assert_close(clipped["a"], params[0].grad)
    torch.testing.assert_close(clipped["b"], params[1].grad)
    torch.testing.assert_close(clipped["a"], torch.tensor([3.0 / 5]), atol=1e-6, rtol=0)
    assert torch.equal(kept["a"], grads["a"]) and torch.equal(kept["b"], grads["b"])
    assert FedDynClient(alpha=0.1).gradients({}, grads) is grads  # off by default


def test_examples_weighting_gives_each_client_alpha_over_its_weight() -> None:
    # Prepare: 4 clients of 1, 3, 2, 2 examples (mean 2): w_i = 0.5, 1.5, 1, 1.
    base = settings(
        "server.strategy=feddyn",
        "server.weighting=examples",
        "server.settings.alpha=0.3",
        "data.num_clients=4",
        "server.clients_per_round=2",
    )
    strategy = build_strategy(dataclasses.replace(base, client_examples=(1, 3, 2, 2)))
    glob = {"w": torch.tensor([0.0])}
    # Execute
    plan = strategy.configure_train(0, glob, strategy.init(glob), [0, 1])
    # Assert
    alphas = {cid: own.algorithm.alpha for cid, own in plan.clients.items()}
    assert alphas == pytest.approx({0: 0.6, 1: 0.2})
    uniform = build_strategy(settings("server.strategy=feddyn"))
    assert uniform.configure_train(0, glob, uniform.init(glob), [0, 1]).clients == {}


def test_all_client_mean_is_every_clients_last_model_averaged() -> None:
    # Prepare: N = 3 clients from w = 0; alpha large, so h hardly matters here.
    strategy = build_strategy(
        settings(
            "server.strategy=feddyn",
            "server.settings.all_client_mean=true",
            "data.num_clients=3",
            "server.clients_per_round=2",
        )
    )
    glob = {"w": torch.tensor([0.0], dtype=F64), "n": torch.tensor(4)}
    state = strategy.init(glob)
    assert strategy.extra_models(state)["all_client_mean"]["w"].item() == 0.0

    # Execute: round 0, clients 0 and 1 return 1 and 3; round 1, clients 1 and 2
    # return 6 and 3.
    def ups(*pairs: tuple[int, float]) -> list:
        return [update(c, 1, {"w": torch.tensor([w], dtype=F64), "n": glob["n"]})
                for c, w in pairs]  # fmt: skip

    glob, state = aggregate(strategy, 0, glob, state, ups((0, 1.0), (1, 3.0)))
    first = strategy.extra_models(state)["all_client_mean"]
    glob, state = aggregate(strategy, 1, glob, state, ups((1, 6.0), (2, 3.0)))
    second = strategy.extra_models(state)["all_client_mean"]
    # Assert: (1 + 3 + 0) / 3, then client 1's 3 replaced by 6: (1 + 6 + 3) / 3
    assert first["w"].item() == pytest.approx(4 / 3, abs=1e-12)
    assert second["w"].item() == pytest.approx(10 / 3, abs=1e-12)
    assert int(second["n"]) == 4  # a counter keeps its initial value
    off = build_strategy(settings("server.strategy=feddyn"))
    assert off.extra_models(off.init(glob)) == {} and set(off.init(glob)) == {"h"}
