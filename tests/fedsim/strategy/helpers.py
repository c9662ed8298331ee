"""Shared tiny fixtures of the strategy tests: settings, replies, a client loop."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor

from fedsim.algorithm import ClientAlgorithm
from fedsim.config import load_config
from fedsim.messages import MODEL, ClientUpdate
from fedsim.strategy import EvalSchedule, StrategySettings, reply_problem


def settings(*overrides: str) -> StrategySettings:
    """StrategySettings of the default config with ``overrides`` applied."""
    cfg = load_config(None, list(overrides))
    schedule = EvalSchedule(
        every=cfg.server.eval_every,
        rounds=cfg.rounds,
        global_model=True,
        personal=False,
        personal_clients=None,
        num_clients=cfg.data.num_clients,
        seed=cfg.seed,
    )
    return StrategySettings(
        client=cfg.client,
        server=cfg.server,
        num_clients=cfg.data.num_clients,
        schedule=schedule,
    )


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
    """Plain SGD on ``f(w) = a/2 (w - b)^2`` in the client runner's call order.

    One float64 scalar parameter ``w`` travels; the hooks run exactly as
    ``fedsim.client`` calls them (fresh copy, begin, per step zero_grad / loss /
    backward / after_backward / step, end).
    """
    algo = copy.copy(algorithm)
    w = torch.nn.Parameter(payload[MODEL]["w"].clone())
    params = {"w": w}
    optimizer = torch.optim.SGD([w], lr=lr)
    algo.begin(params, payload, kept)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = algo.loss(params, a / 2 * (w - b).square().sum())
        loss.backward()
        algo.after_backward(params)
        optimizer.step()
    extra_upload, extra_keep = algo.end(params, steps, lr)
    return ClientUpdate(
        client_id=cid,
        upload={MODEL: {"w": w.detach().clone()}, **extra_upload},
        num_examples=n,
        train_loss=0.0,
        train_seconds=0.0,
        keep=extra_keep,
    )


def run_rounds(strategy, glob, state, kept, cohorts, a, b, n, steps, lr):  # type: ignore[no-untyped-def]
    """Each round: every cohort client runs the hooks on its quadratic, the server
    aggregates; yields ``(global, state)`` after each round (``kept`` is updated)."""
    for rnd, cohort in enumerate(cohorts):
        plan = strategy.configure_train(rnd, glob, state, cohort)
        ups = []
        for i in cohort:
            up = run_quadratic_client(
                plan.algorithm,
                plan.payload,
                kept.get(i, {}),
                a=a[i],
                b=b[i],
                steps=steps,
                lr=lr,
                cid=i,
                n=n[i],
            )
            assert reply_problem(up, plan.payload) is None
            kept[i] = dict(up.keep)
            ups.append(up)
        glob, state = strategy.aggregate_train(rnd, glob, state, ups)
        yield glob, state
