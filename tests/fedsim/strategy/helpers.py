"""Shared tiny fixtures of the strategy tests: settings, replies, a client loop."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedsim.algorithm import AlgoState, ClientAlgorithm, hooked_step, local_training
from fedsim.config import load_config
from fedsim.messages import MODEL, ClientUpdate
from fedsim.strategy import StrategySettings, reply_problem, strategy_settings


def settings(*overrides: str) -> StrategySettings:
    """StrategySettings of the default config with ``overrides`` applied."""
    return strategy_settings(load_config(None, list(overrides)))


def aggregate(strategy, *args):  # type: ignore[no-untyped-def]
    """``strategy.aggregate_train(*args)`` as ``(global, state)``; it must aggregate."""
    out = strategy.aggregate_train(*args)
    assert out is not None, "nothing was aggregated"
    return out.global_tensors, out.state


def update(
    cid: int, n: int, model: Mapping[str, Tensor], **channels: Mapping[str, Tensor]
) -> ClientUpdate:
    """A reply of client ``cid`` trained on ``n`` examples."""
    return ClientUpdate(
        client_id=cid,
        upload={MODEL: model, **channels},
        num_examples=n,
        train_loss=0.0,
        train_seconds=0.0,
    )


def run_quadratic_client(
    algorithm: ClientAlgorithm,
    payload: Mapping[str, Mapping[str, Tensor]],
    kept: Mapping[str, Mapping[str, Tensor]],
    *,
    a: float,
    b: float,
    steps: int,
    lr: float,
    cid: int = 0,
    n: int = 1,
) -> ClientUpdate:
    """Plain SGD on ``f(w) = a/2 (w - b)^2`` through fedsim's own client loop.

    One float64 scalar parameter ``w`` travels; the hooks run in the order
    ``ClientRunner.train`` runs them, because both call
    :func:`fedsim.algorithm.local_training` and :func:`fedsim.algorithm.hooked_step`.
    """
    w = torch.nn.Parameter(payload[MODEL]["w"].clone())
    params = {"w": w}
    optimizer = torch.optim.SGD([w], lr=lr)

    def step(_: int, state: AlgoState) -> None:
        optimizer.zero_grad()
        loss = a / 2 * (w - b).square().sum()
        hooked_step(algorithm, state, params, loss, lambda total: total.backward())
        optimizer.step()

    outcome, done = local_training(
        algorithm, params, payload, kept, start=lambda _: range(steps), step=step, lr=lr
    )
    assert done == steps
    return ClientUpdate(
        client_id=cid,
        upload={MODEL: {"w": w.detach().clone()}, **outcome.upload},
        num_examples=n,
        train_loss=0.0,
        train_seconds=0.0,
        keep=outcome.keep,
        metrics=outcome.metrics,
    )


def run_rounds(strategy, glob, state, kept, cohorts, a, b, n, steps, lr):  # type: ignore[no-untyped-def]
    """Each round: every cohort client runs the hooks on its quadratic, the server
    aggregates; yields ``(global, state)`` after each round (``kept`` is updated)."""
    for rnd, cohort in enumerate(cohorts):
        plan = strategy.configure_train(rnd, glob, state, cohort)
        ups = []
        for i in cohort:
            own = plan.clients.get(i)
            up = run_quadratic_client(
                own.algorithm if own and own.algorithm else plan.algorithm,
                {**plan.payload, **(own.payload if own else {})},
                kept.get(i, {}),
                a=a[i],
                b=b[i],
                steps=steps,
                lr=lr,
                cid=i,
                n=n[i],
            )
            assert reply_problem(up, plan.upload) is None
            kept[i] = dict(up.keep)
            ups.append(up)
        out = strategy.aggregate_train(rnd, glob, state, ups)
        assert out is not None
        glob, state = out.global_tensors, out.state
        yield glob, state
