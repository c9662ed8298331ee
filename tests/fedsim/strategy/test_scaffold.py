import dataclasses

import pytest
import torch

from fedsim.strategy import build_strategy
from fedsim.strategy.scaffold import Scaffold, ScaffoldClient
from tests.fedsim.strategy.helpers import (
    aggregate,
    run_rounds,
    settings,
    update,
)

F64 = torch.float64


def test_server_half_hand_computed() -> None:
    # Prepare: N = 4 clients, 2 reply with weights 1 and 3, c = 0.3.
    strategy = build_strategy(
        settings(
            "server.strategy=scaffold",
            "data.num_clients=4",
            "server.clients_per_round=2",
        )
    )
    glob = {"w": torch.tensor([0.0])}
    state = {"c": {"w": torch.tensor([0.3])}}
    ups = [
        update(0, 1, {"w": torch.tensor([1.0])}, control={"w": torch.tensor([0.2])}),
        update(1, 3, {"w": torch.tensor([4.0])}, control={"w": torch.tensor([-0.6])}),
    ]
    # Execute
    new, new_state = aggregate(strategy, 0, glob, state, ups)
    # Assert: uniform (the paper's): x = (1 + 4) / 2 = 2.5;
    # c = 0.3 + 1/4 * (0.2 - 0.6) = 0.2
    assert isinstance(strategy, Scaffold)
    torch.testing.assert_close(new["w"], torch.tensor([2.5]))
    torch.testing.assert_close(new_state["c"]["w"], torch.tensor([0.2]))
    assert torch.equal(
        state["c"]["w"], torch.tensor([0.3])
    )  # the old state is left as it was


def test_init_and_payload_carry_both_channels() -> None:
    strategy = Scaffold(settings("server.strategy=scaffold"))
    glob = {"w": torch.ones(2, 3), "n": torch.tensor(7)}
    state = strategy.init(glob)
    plan = strategy.configure_train(0, glob, state, [0])
    # c: zeros for the floating tensors only (an int counter has no control).
    assert set(state) == {"c"} and set(state["c"]) == {"w"}
    assert torch.equal(state["c"]["w"], torch.zeros(2, 3))
    assert set(plan.payload) == {"model", "control"}
    assert plan.payload["control"] is state["c"]
    assert isinstance(plan.algorithm, ScaffoldClient)


def test_buffers_get_zero_control_and_keep_their_c_i() -> None:
    # Prepare: "w" is a parameter; "buf" travels but is not trained.
    w = torch.nn.Parameter(torch.tensor([1.0]))
    payload = {
        "model": {"w": torch.tensor([1.0]), "buf": torch.tensor([5.0])},
        "control": {"w": torch.tensor([0.5]), "buf": torch.tensor([0.25])},
    }
    kept = {"scaffold": {"w": torch.tensor([0.1]), "buf": torch.tensor([0.7])}}
    algo = ScaffoldClient()
    # Execute: one step of lr 0.5 with gradient 1 - 0.1 + 0.5 = 1.4: w = 0.3
    state = algo.begin({"w": w}, payload, kept)
    grads = algo.gradients(state, {"w": torch.tensor([1.0])})
    with torch.no_grad():
        w.sub_(0.5 * grads["w"])
    out = algo.end(state, {"w": w}, steps=1, lr=0.5)
    upload, keep = out.upload, out.keep
    # Assert: c_i+ = 0.1 - 0.5 + (1 - 0.3) / 0.5 = 1.0 = g (the last gradient)
    torch.testing.assert_close(keep["scaffold"]["w"], torch.tensor([1.0]))
    torch.testing.assert_close(upload["control"]["w"], torch.tensor([0.9]))
    assert torch.equal(keep["scaffold"]["buf"], torch.tensor([0.7]))
    assert upload["control"]["buf"].tolist() == [0.0]
    assert torch.equal(
        kept["scaffold"]["w"], torch.tensor([0.1])
    )  # the kept input is untouched


def textbook(a, b, n, num_clients, x, cohorts, steps, lr):
    """SCAFFOLD option II in plain floats: (x, c, c_i) after each round."""
    c, c_i, history = 0.0, {}, []
    for cohort in cohorts:
        ys, dcs = {}, []
        for i in cohort:
            ci = c_i.get(i, 0.0)
            y = x
            for _ in range(steps):
                y -= lr * (a[i] * (y - b[i]) - ci + c)
            new_ci = ci - c + (x - y) / (steps * lr)
            dcs.append(new_ci - ci)
            c_i[i], ys[i] = new_ci, y
        x = sum(ys[i] for i in cohort) / len(cohort)  # the paper's: uniform
        c = c + len(cohort) / num_clients * sum(dcs) / len(cohort)
        history.append((x, c, dict(c_i)))
    return history


def test_two_rounds_on_quadratics_follow_the_textbook_recursion() -> None:
    # Prepare: f_i(w) = a_i/2 (w - b_i)^2, 3 clients; client 2 first joins in round 1.
    a, b, n = [1.0, 2.0, 4.0], [1.0, -1.0, 3.0], [2, 1, 1]
    cohorts, steps, lr = [[0, 1], [1, 2]], 3, 0.1
    expected = textbook(a, b, n, 3, 0.5, cohorts, steps, lr)
    strategy = build_strategy(
        settings(
            "server.strategy=scaffold",
            "data.num_clients=3",
            "server.clients_per_round=2",
        )
    )
    glob = {"w": torch.tensor(0.5, dtype=F64)}
    state = strategy.init(glob)
    kept: dict[int, dict] = {}
    # Execute: each client runs the hooks in plain SGD; the server aggregates.
    rounds = run_rounds(strategy, glob, state, kept, cohorts, a, b, n, steps, lr)
    for rnd, (glob, state) in enumerate(rounds):
        # Assert: x, c and every sampled client's c_i match the recursion.
        x, c, c_i = expected[rnd]
        assert abs(glob["w"].item() - x) < 1e-12
        assert abs(state["c"]["w"].item() - c) < 1e-12
        for i, value in c_i.items():
            assert abs(kept[i]["scaffold"]["w"].item() - value) < 1e-12
    assert set(kept) == {0, 1, 2}


def test_the_global_step_size_scales_the_model_step_not_the_control() -> None:
    # Prepare: one round of the same replies under server.settings.lr 1 and 0.5.
    def one_round(lr: float) -> tuple[float, float]:
        strategy = build_strategy(
            settings(
                "server.strategy=scaffold",
                f"server.settings.lr={lr}",
                "data.num_clients=4",
                "server.clients_per_round=2",
            )
        )
        glob = {"w": torch.tensor([1.0], dtype=F64)}
        state = {"c": {"w": torch.tensor([0.3], dtype=F64)}}
        ups = [
            update(
                0,
                1,
                {"w": torch.tensor([2.0], dtype=F64)},
                control={"w": torch.tensor([0.2], dtype=F64)},
            ),
            update(
                1,
                3,
                {"w": torch.tensor([4.0], dtype=F64)},
                control={"w": torch.tensor([-0.6], dtype=F64)},
            ),
        ]
        new, new_state = aggregate(strategy, 0, glob, state, ups)
        return new["w"].item() - 1.0, new_state["c"]["w"].item()

    # Execute
    full, c_full = one_round(1.0)
    half, c_half = one_round(0.5)
    # Assert: eta_g = 1 moves to the uniform mean 3 (a step of 2); 0.5 half as far.
    assert full == pytest.approx(2.0, abs=1e-12)
    assert half == pytest.approx(0.5 * full, abs=1e-12)
    assert c_half == c_full == pytest.approx(0.3 + (0.2 - 0.6) / 4, abs=1e-12)


def test_examples_weighting_weighs_both_averages_by_examples() -> None:
    # Prepare: N = 4 clients of 1, 3, 2, 2 examples (mean 2); clients 0 and 1 reply.
    base = settings(
        "server.strategy=scaffold",
        "server.weighting=examples",
        "data.num_clients=4",
        "server.clients_per_round=2",
    )
    strategy = build_strategy(dataclasses.replace(base, client_examples=(1, 3, 2, 2)))
    glob = {"w": torch.tensor([0.0])}
    state = {"c": {"w": torch.tensor([0.3])}}
    ups = [
        update(0, 1, {"w": torch.tensor([1.0])}, control={"w": torch.tensor([0.2])}),
        update(1, 3, {"w": torch.tensor([4.0])}, control={"w": torch.tensor([-0.6])}),
    ]
    # Execute
    new, new_state = aggregate(strategy, 0, glob, state, ups)
    # Assert: x = (1*1 + 3*4) / 4 = 3.25; w_i = n_i / 2:
    # c = 0.3 + (0.5*0.2 + 1.5*(-0.6)) / 4 = 0.1
    torch.testing.assert_close(new["w"], torch.tensor([3.25]))
    torch.testing.assert_close(new_state["c"]["w"], torch.tensor([0.1]))


def test_examples_weighting_without_client_sizes_says_what_is_missing() -> None:
    strategy = build_strategy(
        settings("server.strategy=scaffold", "server.weighting=examples")
    )
    glob = {"w": torch.tensor([0.0])}
    ups = [update(0, 1, {"w": torch.tensor([1.0])}, control={"w": torch.tensor([0.2])})]
    with pytest.raises(ValueError, match="needs every client's training examples"):
        strategy.aggregate_train(0, glob, strategy.init(glob), ups)
