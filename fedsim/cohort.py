"""Training clients together: one worker trains up to K clients as one step.

With ``resources.clients_per_actor`` K > 1, a worker's share of the cohort is
trained K clients at a time. Every tensor of the model is stacked along a new
first dimension, one row per *slot*; one vectorized step
(``torch.func.vmap`` over ``grad`` of ``functional_call``) computes every
slot's loss and gradients on its own batch, and one foreach SGD update moves
every slot by its own learning rate, with its own momentum buffer. Each client
keeps what it has alone: its data, its batch order and augmentation draws
(:meth:`ClientRunner.batch_plan <fedsim.client.ClientRunner.batch_plan>`, the
same draws as the sequential path), its learning rate and its algorithm state.
The algorithm's ``loss`` and ``gradients`` hooks are pure tensor functions
(:mod:`fedsim.algorithm`), so they run inside the vectorized step unchanged,
on each slot's own state (FedProx's anchor, SCAFFOLD's correction, FedDyn's
terms); ``begin`` and ``end`` run per client on its slot's rows. Local parts
(pFedPara's W2, FedPer's head, a local-only model) are rows like the rest.

Slot refill: clients take different numbers of steps. When a slot's client
has taken its last step, its reply is built from its rows and the next client
of the queue is loaded into the slot. The queue holds the longest clients
first (a client's steps are known before it starts), so that the clients left
at the end, beside the last long one, are short. A slot with no client left
runs masked steps: a zero learning rate and unchanged momentum, so its rows do
not move. :meth:`CohortRun.occupancy` is the share of slot-steps that trained
a client.

Within a slot, short batches are padded (:mod:`fedsim.data.batches`): their
filler rows weigh 0, so a slot's loss and gradients are its real rows'.

The results are the sequential path's to float rounding (a vectorized
convolution is a grouped convolution, summed in another order). Dropout draws
differ from the sequential path's: they come from the global generator seeded
once per call, so for a fixed cohort and K a run repeats exactly.

Example
-------
>>> slot_steps = [11, 3, 3, 3]  # four clients on two slots, refilled
>>> occupancy_of(slot_steps, slots=2, steps_run=11)
0.9090909090909091
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fedsim.algorithm import AlgoState, ClientAlgorithm
from fedsim.data.base import DatasetInfo
from fedsim.data.batches import Batch, client_batches, pad_rows
from fedsim.data.transforms import prepare_batch
from fedsim.messages import (
    MODEL,
    Channels,
    ClientFailure,
    ClientTask,
    ClientUpdate,
    EvalResult,
)
from fedsim.params import moved
from lightning_modules.classifier import weighted_cross_entropy
from lightning_modules.layers import FactorizedLayer

if TYPE_CHECKING:
    from fedsim.client import ClientRunner

SLOT_OCCUPANCY = "slot_occupancy"
"""A client's metric: the occupancy of the vectorized run it trained in."""

StackedState = dict[str, dict[str, Tensor]]
"""Step state of every slot: ``{namespace: {name: (K, ...)}}``."""


def occupancy_of(client_steps: Sequence[int], *, slots: int, steps_run: int) -> float:
    """Share of the ``slots * steps_run`` slot-steps that trained a client."""
    total = slots * steps_run
    return sum(client_steps) / total if total else 1.0


@dataclass(frozen=True)
class _GroupKey:
    """What the clients of one vectorized run share."""

    batch_size: int
    momentum: float
    weight_decay: float
    algorithm: ClientAlgorithm
    travelling: tuple[str, ...]


@dataclass(eq=False)
class _Slot:
    """The client a slot trains: its task, state, batches and progress."""

    task: ClientTask
    payload: Channels
    state: AlgoState
    batches: Iterator[Batch]
    started: float
    steps: int = 0


@dataclass
class CohortRun:
    """What a call of :meth:`CohortTrainer.train` did (for metrics)."""

    steps_run: int = 0
    client_steps: list[int] = field(default_factory=list)
    setup_seconds: float = 0.0  # compiling or recording the step

    def occupancy(self, slots: int) -> float:
        """Share of slot-steps that trained a client."""
        return occupancy_of(self.client_steps, slots=slots, steps_run=self.steps_run)


class CohortTrainer:
    """Trains a worker's clients ``slots`` at a time, as one vectorized step.

    Parameters
    ----------
    runner
        The worker's :class:`~fedsim.client.ClientRunner`: its model, data,
        layout and device (its own training path is not used).
    slots
        K, the clients trained at once.
    """

    def __init__(self, runner: ClientRunner, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.runner, self.slots = runner, slots
        self.model: nn.Module = runner.module.model
        self.device = runner.device

        def stacked(t: Tensor) -> Tensor:  # (K, ...) rows of t
            return t.detach().unsqueeze(0).repeat(slots, *[1] * t.dim()).clone()

        self.params = {n: stacked(p) for n, p in self.model.named_parameters()}
        self.buffers = {n: stacked(b) for n, b in self.model.named_buffers()}
        self.neg_lr = torch.zeros(slots, device=self.device)  # -lr of each slot
        self.loss_sum = torch.zeros(slots, device=self.device)  # of its last epoch
        self.last_run = CohortRun()
        self._step: _VectorStep | None = None

    # ------------------------------------------------------------------ training

    def train(
        self, jobs: Sequence[tuple[ClientTask, Channels]], payload: Channels
    ) -> Iterator[ClientUpdate | ClientFailure]:
        """Train every ``(task, kept state)``; yield each reply as it finishes.

        Clients whose batch size, optimizer settings, algorithm or travelling
        tensors differ cannot share a step: they run in separate groups, one
        after another. :attr:`last_run` then holds the slot occupancy.
        """
        self.last_run = CohortRun()
        groups: dict[_GroupKey, list[tuple[ClientTask, Channels]]] = {}
        for task, kept in jobs:
            groups.setdefault(self._key(task, payload), []).append((task, kept))
        if jobs:  # dropout: one stream per call, the same for a fixed cohort and K
            torch.manual_seed(jobs[0][0].seed)
        self.runner.module.train()
        for key, members in groups.items():
            yield from self._run_group(key, members, payload)

    def train_in_order(
        self, jobs: Sequence[tuple[ClientTask, Channels]], payload: Channels
    ) -> list[ClientUpdate | ClientFailure]:
        """:meth:`train`'s replies in the order of ``jobs``.

        Each update's metrics gain ``slot_occupancy``, the share of this
        call's slot-steps that trained a client. The clients trained at the
        same time, so the call's seconds (and its recording's) are shared out
        by their steps: summed, they are the worker's time, as with K = 1.
        """
        t0 = time.perf_counter()
        replies = {r.client_id: r for r in self.train(jobs, payload)}
        seconds = time.perf_counter() - t0
        run = self.last_run
        occupancy = run.occupancy(self.slots)
        steps = max(sum(run.client_steps), 1)
        out: list[ClientUpdate | ClientFailure] = []
        for task, _ in jobs:
            reply = replies[task.client_id]
            if isinstance(reply, ClientUpdate):  # the worker's time, by steps
                reply = dataclasses.replace(
                    reply,
                    train_seconds=seconds * reply.steps / steps,
                    setup_seconds=run.setup_seconds * reply.steps / steps,
                    metrics={**reply.metrics, SLOT_OCCUPANCY: occupancy},
                )
            out.append(reply)
        return out

    def _key(self, task: ClientTask, payload: Channels) -> _GroupKey:
        hp = task.hparams
        model_in = {**payload, **task.payload}.get(MODEL, {})
        travelling = tuple(n for n in self.params if n in model_in)
        return _GroupKey(
            hp.batch_size, hp.momentum, hp.weight_decay, task.algorithm, travelling
        )

    def _run_group(
        self,
        key: _GroupKey,
        members: Sequence[tuple[ClientTask, Channels]],
        payload: Channels,
    ) -> Iterator[ClientUpdate | ClientFailure]:
        # Longest first: what is left at the end are short clients, so slots idle less.
        queue = deque(sorted(members, key=lambda job: -self._steps_of(job[0])))
        slots: list[_Slot | None] = [None] * self.slots
        if self._step is None or self._step.key != key:
            self._step = None  # free the old graph's memory first
            self._step = _VectorStep(self, key)
        step = self._step
        filler: dict[tuple[int, ...], Batch] = {}
        while True:
            batches: list[Batch | None] = [None] * self.slots
            for k in range(self.slots):
                while batches[k] is None:
                    slot = slots[k]
                    if slot is None:
                        if not queue:
                            break
                        task, kept = queue.popleft()
                        try:
                            slots[k] = self._start(
                                k, step, task, {**payload, **task.payload}, kept
                            )
                        except Exception as exc:  # that client fails, not the run
                            yield _failure(task.client_id, exc)
                        continue
                    batch = next(slot.batches, None)
                    if batch is None:
                        slots[k] = None
                        yield self._finish(k, key, slot)
                        continue
                    if batch.first:
                        self.loss_sum[k] = 0.0
                    slot.steps += 1
                    batches[k] = batch
            if all(b is None for b in batches):
                return
            self.last_run.steps_run += 1
            x, y, w = _stack(batches, filler)
            try:
                step(x, y, w)
            except Exception as exc:  # every client of the step fails
                for k, slot in enumerate(slots):
                    if slot is not None and batches[k] is not None:
                        slots[k] = None
                        yield _failure(slot.task.client_id, exc)

    def _steps_of(self, task: ClientTask) -> int:
        """The steps ``task`` will take (known before it starts)."""
        n, hp = len(self.runner.partition.train[task.client_id]), task.hparams
        return hp.epochs * -(-n // hp.batch_size)

    def _start(
        self,
        k: int,
        step: _VectorStep,
        task: ClientTask,
        payload: Channels,
        kept: Channels,
    ) -> _Slot:
        """Load a client into slot ``k``: its model, state, batches and lr."""
        started = time.perf_counter()
        state = {**payload.get(MODEL, {}), **self.runner.load_local(kept)}
        self._load_rows(k, state)
        for buf in step.momentum.values():
            buf[k].zero_()
        key = step.key
        params = {n: self.params[n][k] for n in key.travelling}
        # The client's own algorithm: equal ones share the step, but values that
        # are step state (FedDyn's per-client alpha) differ by client.
        algo_state = task.algorithm.begin(params, payload, kept)  # type: ignore[arg-type]
        for ns in task.algorithm.step_state:
            group = step.state.setdefault(ns, {})
            for name, t in algo_state[ns].items():
                if name not in group:
                    group[name] = t.new_zeros((self.slots, *t.shape))
                group[name][k].copy_(t)
        x_all, y_all = self.runner.client_examples(task.client_id)
        plan = self.runner.batch_plan(task, len(y_all))
        info = self.runner.data.info
        batches = client_batches(x_all, y_all, info, plan, pad=True)
        self.neg_lr[k] = -task.hparams.lr
        self.loss_sum[k] = 0.0
        return _Slot(task, payload, algo_state, batches, started)

    def _load_rows(self, k: int, state: Mapping[str, Tensor]) -> None:
        """Copy a client's model state into row ``k`` (strict, as load_state_dict)."""
        rows = {**self.params, **self.buffers}
        missing, unexpected = rows.keys() - state.keys(), state.keys() - rows.keys()
        if missing or unexpected:
            raise RuntimeError(
                f"the client's model state does not match the model: missing "
                f"{sorted(missing)}, unexpected {sorted(unexpected)}"
            )
        if self.device.type != "cpu":
            state = moved(state, self.device)
        with torch.no_grad():
            for name, t in state.items():
                if tuple(t.shape) != tuple(rows[name].shape[1:]):
                    raise RuntimeError(
                        f"size mismatch for {name}: got {tuple(t.shape)}, the "
                        f"model has {tuple(rows[name].shape[1:])}"
                    )
                rows[name][k].copy_(t)

    def _finish(
        self, k: int, key: _GroupKey, slot: _Slot
    ) -> ClientUpdate | ClientFailure:
        """The reply of slot ``k``'s client, from its rows."""
        task = slot.task
        try:
            params = {n: self.params[n][k] for n in key.travelling}
            outcome = task.algorithm.end(
                slot.state,
                params,  # type: ignore[arg-type]
                slot.steps,
                task.hparams.lr,
            )
            rows = {**self.params, **self.buffers}
            self.last_run.client_steps.append(slot.steps)
            return self.runner.reply(
                task,
                slot.payload,
                {n: t[k] for n, t in rows.items()},
                outcome,
                steps=slot.steps,
                loss_sum=float(self.loss_sum[k]),
                seconds=time.perf_counter() - slot.started,
            )
        except Exception as exc:
            return _failure(task.client_id, exc)

    # ---------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate_clients(
        self,
        jobs: Sequence[tuple[int, Channels]],
        glob: Mapping[str, Tensor],
        batch_size: int,
    ) -> list[EvalResult | ClientFailure]:
        """Each ``(client, kept state)``'s own model on its own test split.

        K clients at a time, one vectorized forward pass per batch, slots
        refilled as clients run out of test examples; the sums (loss, correct
        predictions) are those of :meth:`ClientRunner.evaluate_client
        <fedsim.client.ClientRunner.evaluate_client>`, in the order of ``jobs``.
        """
        runner, info = self.runner, self.runner.data.info
        forward = vmap(
            lambda p, b, x: functional_call(self.model, {**p, **b}, (x,)),
            randomness="same",  # eval mode: no dropout draws
        )
        self.runner.module.eval()
        queue = deque(jobs)
        results: dict[int, EvalResult | ClientFailure] = {}
        slots: list[_Scored | None] = [None] * self.slots
        loss_sum = torch.zeros(self.slots, device=self.device)
        correct = torch.zeros(self.slots, device=self.device, dtype=torch.long)
        filler: dict[tuple[int, ...], Batch] = {}
        while True:
            batches: list[Batch | None] = [None] * self.slots
            for k in range(self.slots):
                while batches[k] is None:
                    scored = slots[k]
                    if scored is None:
                        if not queue:
                            break
                        client_id, kept = queue.popleft()
                        try:
                            self._load_rows(k, {**glob, **runner.load_local(kept)})
                            x, y = runner.client_test_examples(client_id)
                        except Exception as exc:
                            results[client_id] = _failure(client_id, exc)
                            continue
                        slots[k] = _Scored(client_id, x, y)
                        loss_sum[k], correct[k] = 0.0, 0
                        continue
                    batch = scored.next_batch(batch_size, info)
                    if batch is None:
                        slots[k] = None
                        results[scored.client_id] = EvalResult(
                            float(loss_sum[k]), int(correct[k]), len(scored.y)
                        )
                        continue
                    batches[k] = batch
            if all(b is None for b in batches):
                break
            x, y, w = _stack(batches, filler)
            with runner.engine.autocast():
                logits = forward(self.params, self.buffers, x).float()  # (K, B, C)
            real = w > 0
            ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            loss_sum.add_((ce.view_as(w) * real).sum(1))
            correct.add_(((logits.argmax(-1) == y) & real).sum(1))
        return [results[client_id] for client_id, _ in jobs]


@dataclass(eq=False)
class _Scored:
    """A client whose test split a slot is scoring, and how far it got."""

    client_id: int
    x: Tensor
    y: Tensor
    done: int = 0

    def next_batch(self, size: int, info: DatasetInfo) -> Batch | None:
        """The next test batch, padded to ``size`` rows; None after the last."""
        lo, hi = self.done, min(self.done + size, len(self.y))
        if lo >= hi:
            return None
        self.done = hi
        x = prepare_batch(self.x[lo:hi], info, train=False)
        y = self.y[lo:hi]
        weight = torch.zeros(size, device=y.device)
        weight[: hi - lo] = 1.0
        if hi - lo < size:
            x, y = pad_rows(x, size), pad_rows(y, size)
        return Batch(x, y, weight, hi - lo)


class _VectorStep:
    """Every slot's step for one group key: its state, and its form.

    Eager by default; the vectorized gradient function goes through
    ``torch.compile`` with ``resources.compile``, and the whole step (the
    gradients and the masked SGD update) is recorded once and replayed with
    ``resources.cuda_graph`` on CUDA, as the one-client step is
    (:mod:`fedsim.train_step`): the batch is copied into static tensors, and
    the learning rates, momentum and algorithm state are tensors it reads.
    """

    def __init__(self, trainer: CohortTrainer, key: _GroupKey) -> None:
        self.trainer, self.key = trainer, key
        self.state: StackedState = {}  # filled by each slot's client's begin
        self.momentum = (
            {n: torch.zeros_like(p) for n, p in trainer.params.items()}
            if key.momentum
            else {}
        )
        engine = trainer.runner.engine
        gradients = _vectorized(trainer.model, key, engine.autocast)
        mode = trainer.runner.resources.compile
        if mode != "off":
            gradients = torch.compile(
                gradients, mode=None if mode == "default" else mode, dynamic=False
            )
        self.gradients = gradients
        self._warm = mode == "off"  # a compiled step has run once
        self._replay: Callable[[], None] | None = None
        self._static: tuple[Tensor, Tensor, Tensor] | None = None

    def __call__(self, x: Tensor, y: Tensor, w: Tensor) -> None:
        """One step of every slot on ``(K, B, ...)`` batches."""
        engine = self.trainer.runner.engine
        if not engine.capture:
            t0 = time.perf_counter()
            self._run(x, y, w)
            if not self._warm:  # the first compiled step: tracing and compiling
                self._warm = True
                self.trainer.last_run.setup_seconds += time.perf_counter() - t0
            return
        if self._replay is None or self._static is None:
            t0 = time.perf_counter()
            # Zero weights: every slot is empty, so warm-up moves nothing.
            static = self._static = (
                torch.zeros_like(x),
                torch.zeros_like(y),
                torch.zeros_like(w),
            )
            self._replay = engine.recorder.record(lambda: self._run(*static), [])
            self.trainer.last_run.setup_seconds += time.perf_counter() - t0
        for target, value in zip(self._static, (x, y, w), strict=True):
            target.copy_(value)
        self._replay()

    def _run(self, x: Tensor, y: Tensor, w: Tensor) -> None:
        """Gradients of every slot, then one masked SGD update of all rows.

        An empty slot (all weights 0) does not move: its learning rate is
        multiplied by 0 and its momentum buffer is kept.
        """
        trainer, key = self.trainer, self.key
        grads, losses = self.gradients(
            trainer.params, trainer.buffers, self.state, x, y, w
        )
        with torch.no_grad():
            counts = (w > 0).sum(1)  # (K,) real rows; 0 in an empty slot
            active = (counts > 0).to(trainer.neg_lr.dtype)
            trainer.loss_sum.add_(losses.detach().float() * counts)
            names = list(trainer.params)
            params = [trainer.params[n] for n in names]
            step = [grads[n] for n in names]
            if key.weight_decay:
                step = list(torch._foreach_add(step, params, alpha=key.weight_decay))
            if key.momentum:  # buf <- m * buf + g; an empty slot keeps its buffer
                keep = active * key.momentum + (1 - active)
                buffers = [self.momentum[n] for n in names]
                torch._foreach_mul_(buffers, _rows(keep, params))
                gated = torch._foreach_mul(step, _rows(active, params))
                torch._foreach_add_(buffers, gated)
                step = buffers
            neg_lr = _rows(trainer.neg_lr * active, params)
            torch._foreach_add_(params, torch._foreach_mul(step, neg_lr))


def _vectorized(
    model: nn.Module,
    key: _GroupKey,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> Callable[..., Any]:
    """Every slot's ``(gradients, loss)`` from its rows, state and batch.

    The algorithm's ``loss`` and ``gradients`` hooks run inside, per slot.
    """
    algorithm, travelling = key.algorithm, key.travelling

    def client(
        params: dict[str, Tensor],
        buffers: dict[str, Tensor],
        state: StackedState,
        x: Tensor,
        y: Tensor,
        w: Tensor,
    ) -> tuple[dict[str, Tensor], Tensor]:
        def objective(p: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            with autocast():
                logits = functional_call(model, {**p, **buffers}, (x,))
            loss = weighted_cross_entropy(logits, y, w)
            named = {n: p[n] for n in travelling}
            return algorithm.loss(state, named, loss), loss  # type: ignore[arg-type]

        grads, loss = grad(objective, has_aux=True)(params)
        corrected = algorithm.gradients(state, {n: grads[n] for n in travelling})
        return {**grads, **corrected}, loss

    return vmap(client, randomness="different")  # type: ignore[no-any-return]


def _rows(values: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """``values`` (K,) viewed as ``(K, 1, ...)`` against each stacked tensor."""
    return [values.view(-1, *[1] * (t.dim() - 1)) for t in like]


def _stack(
    batches: Sequence[Batch | None], filler: dict[tuple[int, ...], Batch]
) -> tuple[Tensor, Tensor, Tensor]:
    """The slots' batches as ``(K, B, ...)``; an empty slot gets a zero batch."""
    real = next(b for b in batches if b is not None)
    shape = tuple(real.x.shape)
    empty = filler.get(shape)
    if empty is None:
        weight = torch.zeros(len(real.y), device=real.y.device)
        empty = filler[shape] = Batch(
            torch.zeros_like(real.x), torch.zeros_like(real.y), weight, 0
        )
    picked = [b if b is not None else empty for b in batches]
    if any(b.weight is None for b in picked):
        raise ValueError("a vectorized step takes padded batches")
    x = torch.stack([b.x for b in picked])
    y = torch.stack([b.y for b in picked])
    w = torch.stack([b.weight for b in picked])  # type: ignore[misc]
    return x, y, w


def _failure(client_id: int, exc: BaseException) -> ClientFailure:
    """As the backends record a client's exception: its one-line reason."""
    reason = "".join(traceback.format_exception_only(exc)).strip()
    return ClientFailure(client_id=client_id, reason=reason)


# ------------------------------------------------------------------ memory

ALGORITHM_COPIES = 3
"""Model-sized tensors a client's algorithm may hold on the device (FedDyn's
anchor and ``g_i``, the snapshot its ``begin`` takes)."""


def slot_bytes(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    batch_size: int,
    integer_inputs: bool,
    momentum: bool,
) -> int:
    """Estimated device bytes of one slot: one client trained in the step.

    Its rows (parameters, gradients, momentum, up to
    :data:`ALGORITHM_COPIES` algorithm copies), its composed FedPara weights
    (kept for backward, with their gradients), its batch and its activations
    (every leaf module's output at this batch size, kept for backward, with
    its gradient), measured by one forward pass of one example.
    """
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    param_bytes += sum(b.numel() * b.element_size() for b in model.buffers())
    copies = 2 + int(momentum) + ALGORITHM_COPIES
    per_example = [0]
    composed = [0]

    def count(module: nn.Module, _: Any, out: Any) -> None:
        if isinstance(module, FactorizedLayer):
            w = module.composed_weight()
            composed[0] += w.numel() * w.element_size()
        if isinstance(out, Tensor) and not list(module.children()):
            per_example[0] += out.numel() * out.element_size()

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    dtype = torch.long if integer_inputs else torch.float32
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), dtype=dtype))
    finally:
        for hook in hooks:
            hook.remove()
    example = torch.zeros(input_shape, dtype=dtype)
    batch = batch_size * (2 * per_example[0] + example.numel() * example.element_size())
    return copies * param_bytes + 2 * composed[0] + batch
