"""Evaluation decisions: when to evaluate, which clients, and how results combine.

Two kinds of evaluation, chosen by ``server.evaluate``:

global
    the server's model on the dataset's global test split (sharded over the
    workers, combined as exact sums).
personal
    each evaluated client's *own* model (the global part plus its own kept
    local part: pFedPara's W2, FedPer's head, a local-only model) on its *own*
    test split (carved by ``data.client_test_fraction``, or LEAF's per-writer
    test data). Only clients that have trained at least once are scored
    (``server.personal_eval_trained_only``, default true): a never-trained
    client's own model is an untrained local part (FedPer's random head, a
    local-only model at its initialization), which would bias the comparison
    against the methods that keep more; the round records how many were
    scored (``personal_clients``) and how many were left out
    (``personal_untrained``). ``personal_accuracy`` is the example-weighted
    (micro) mean over the scored clients, ``personal_accuracy_per_client`` the
    per-client (macro) mean; p10/p90 of the per-client accuracies show the
    spread. ``server.personal_eval_clients`` evaluates a seeded sample per
    round instead of every client, so 10,000 clients stay affordable.

Example
-------
>>> s = EvalSchedule(every=2, rounds=5, global_model=True, personal=True,
...                  personal_clients=2, num_clients=10, seed=0)
>>> s.plan(0).global_model, s.plan(1).global_model, s.plan(4).global_model
(False, True, True)
>>> len(s.plan(1).personal_clients)
2
>>> m = EvalMetrics.of(None, [])
>>> m.accuracy is None and m.personal_accuracy is None
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedsim.messages import ClientEval, EvalResult

# Its own random stream: sampling evaluated clients never shifts the cohorts.
_EVAL_STREAM = 7


@dataclass(frozen=True, kw_only=True)
class EvalPlan:
    """What to evaluate after one round."""

    global_model: bool
    personal_clients: tuple[int, ...]
    trained_only: bool = True

    @property
    def any(self) -> bool:
        """Whether anything is evaluated this round."""
        return self.global_model or bool(self.personal_clients)


@dataclass(frozen=True, kw_only=True)
class EvalSchedule:
    """Every ``every`` rounds and after the last: global, personal, or both."""

    every: int
    rounds: int
    global_model: bool
    personal: bool
    personal_clients: int | None
    num_clients: int
    seed: int
    trained_only: bool = True

    def plan(self, server_round: int) -> EvalPlan:
        """The evaluations after ``server_round`` (0-based)."""
        due = (server_round + 1) % self.every == 0 or server_round + 1 == self.rounds
        if not due:
            return EvalPlan(global_model=False, personal_clients=())
        clients: tuple[int, ...] = ()
        if self.personal:
            k = self.personal_clients
            if k is None or k >= self.num_clients:
                clients = tuple(range(self.num_clients))
            else:
                rng = np.random.default_rng([self.seed, server_round, _EVAL_STREAM])
                draw = rng.choice(self.num_clients, size=k, replace=False)
                clients = tuple(sorted(int(c) for c in draw))
        return EvalPlan(
            global_model=self.global_model,
            personal_clients=clients,
            trained_only=self.trained_only,
        )


@dataclass(frozen=True, kw_only=True)
class EvalMetrics:
    """One round's evaluation; None where that evaluation did not run."""

    accuracy: float | None = None
    loss: float | None = None
    personal_accuracy: float | None = None
    personal_accuracy_per_client: float | None = None
    personal_loss: float | None = None
    personal_p10: float | None = None
    personal_p90: float | None = None
    personal_clients: int = 0
    personal_untrained: int = 0
    # Accuracy of models the strategy names besides the global one, on the
    # global test split (FedDyn's all-client mean).
    extra_accuracy: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def of(
        global_result: EvalResult | None,
        personal: Sequence[ClientEval],
        untrained: int = 0,
        extra: Mapping[str, EvalResult] | None = None,
    ) -> EvalMetrics:
        """Combine the global result and the clients' own results.

        ``untrained``: evaluated clients left out because they never trained;
        ``extra``: results of the strategy's other models, by name.

        >>> ev = [ClientEval(client_id=0, result=EvalResult(1.0, 1, 2)),
        ...       ClientEval(client_id=1, result=EvalResult(1.0, 3, 3))]
        >>> m = EvalMetrics.of(None, ev, untrained=4)
        >>> m.personal_accuracy, m.personal_accuracy_per_client, m.personal_clients
        (0.8, 0.75, 2)
        >>> m.personal_untrained
        4
        """
        scored = [e.result for e in personal if e.result.num_examples > 0]
        out = EvalMetrics(
            accuracy=global_result.accuracy if global_result else None,
            loss=global_result.loss if global_result else None,
            personal_untrained=untrained,
            extra_accuracy={k: r.accuracy for k, r in (extra or {}).items()},
        )
        if not scored:
            return out
        merged = EvalResult.merge(scored)
        per_client = np.array([r.accuracy for r in scored])
        return EvalMetrics(
            accuracy=out.accuracy,
            loss=out.loss,
            personal_accuracy=merged.accuracy,
            personal_accuracy_per_client=float(per_client.mean()),
            personal_loss=merged.loss,
            personal_p10=float(np.percentile(per_client, 10)),
            personal_p90=float(np.percentile(per_client, 90)),
            personal_clients=len(scored),
            personal_untrained=untrained,
            extra_accuracy=out.extra_accuracy,
        )
