"""Ray backend: a pool of client actors, each holding a CPU/GPU slice.

Virtual clients (any number) are multiplexed over a fixed pool of actors: an
actor builds its model and its view of the dataset once, then trains one client
after another. The dataset arrays are put into the object store once; every
actor on a node maps the same shared-memory copy (numpy arrays deserialize
zero-copy), and a client holds only its index array.

Placement (:mod:`fedsim.backend.placement`): the pool is sized from each node's
resources and reserved whole in one placement group, or refused (exit 2).
Faults (:mod:`fedsim.backend.scheduler`): a dead actor is replaced once in the
background and only its own task is retried; a task past
``resources.client_timeout_s`` fails with that reason; an evaluation shard
whose actor died is re-run on another actor.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fedsim.backend.base import (
    Backend,
    ClientResult,
    EvalOutcome,
    KeptStates,
    read_kept,
)
from fedsim.backend.client_actor import ClientActor
from fedsim.backend.placement import (
    alive_node_resources,
    fit_slice,
    in_group,
    node_capacity,
    pool_size,
    release,
    reserve,
)
from fedsim.backend.scheduler import Scheduler
from fedsim.backend.slots import Done, Job, Lost, Submit
from fedsim.config import Config
from fedsim.data import DataRequest, FederatedData, Partition
from fedsim.messages import MODEL, Channels, ClientFailure, ClientTask, EvalResult
from fedsim.model import WorkerSpec, worker_spec

if TYPE_CHECKING:  # torch-free at run time: the driver actor starts clients first
    from fedsim.params import StateLayout

LOAD_IN_TASK_BYTES = 64 * 2**20
"""Data at least this large (or of unknown size: read from files) loads in a task."""


class RayPool(Backend):
    """Client actors on Ray, sized per node and reserved in one placement group.

    The actors start as soon as the pool is made; :meth:`attach` puts the
    dataset and the partition into the object store once and hands every actor
    the same references.

    Example
    -------
    >>> pool = pool_for(cfg).attach(data, partition, layout)  # doctest: +SKIP
    >>> [p["gpu_ids"] for p in pool.placements()]  # doctest: +SKIP
    [['0'], ['0'], ['0'], ['0'], ['1'], ['1'], ['1'], ['1']]

    Parameters
    ----------
    worker
        What each actor builds; ``worker.resources`` sizes the pool and its
        actors (a GPU slice on a cluster without GPUs becomes a CPU slice:
        :attr:`resources` holds what was decided).
    cohort_size
        Clients per round: the pool never has more actors.
    stall_s
        With no actor alive, how long tasks wait for a replacement before
        they fail; by default ``resources.replacement_timeout_s``.

    Raises
    ------
    ConfigError
        When the cluster cannot hold the pool, or does not place its
        reservation within ``resources.placement_timeout_s``.
    """

    def __init__(
        self, worker: WorkerSpec, *, cohort_size: int, stall_s: float | None = None
    ) -> None:
        nodes = alive_node_resources()
        self.resources = res = fit_slice(worker.resources, nodes)
        self.worker = replace(worker, resources=res)
        self.num_workers = pool_size(res, cohort_size, nodes)
        capacity = sum(node_capacity(res, n) for n in nodes)
        self._group: Any = reserve(res, self.num_workers, capacity)
        self._refs: tuple[Any, Any, StateLayout] | None = None
        self._loaded: tuple[FederatedData, Partition, list[Any]] | None = None
        self._last_payload: tuple[dict[str, Mapping[str, Any]], list[Any]] | None = None
        if stall_s is None:
            stall_s = res.replacement_timeout_s
        try:
            self._scheduler = Scheduler(self._spawn, self.num_workers, stall_s=stall_s)
        except BaseException:
            release(self._group)
            raise

    def _spawn(self, index: int) -> Any:
        res = self.resources
        return ClientActor.options(  # type: ignore[attr-defined]
            num_cpus=res.cpus_per_client,
            num_gpus=res.gpus_per_client,
            **in_group(self._group, index),
        ).remote(self.worker)

    @property
    def actors(self) -> list[Any]:
        """The current actor of every slot (dead ones included)."""
        return [slot.actor for slot in self._scheduler.slots]

    @property
    def replacements(self) -> int:
        """Actors started to replace dead or hung ones, so far."""
        return self._scheduler.replacements

    def load(self, request: DataRequest) -> tuple[FederatedData, Partition]:
        """Load large data in a task on this node, straight into the object store.

        The task's worker holds the arrays while the object store copies them,
        then exits (``max_calls=1``); this process maps the stored copy
        (numpy arrays deserialize zero-copy) and reads only what it touches,
        the labels, so the driver never holds the images. :meth:`attach` of
        the returned pair shares that copy. Data under
        :data:`LOAD_IN_TASK_BYTES` loads here: a worker costs about a CPU
        second to start, more than copying it does.
        """
        if request.approx_bytes() < LOAD_IN_TASK_BYTES:
            return request()
        here = ray.get_runtime_context().get_node_id()
        refs: Any = _load.options(  # type: ignore[attr-defined]
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)
        ).remote(request)  # on this node: data.root was checked here
        try:
            data, partition = ray.get(refs)
        except RayTaskError as exc:  # DataError and the like: their own message
            raise exc.cause from None
        self._loaded = (data, partition, refs)
        return data, partition

    def attach(
        self, data: FederatedData, partition: Partition, layout: StateLayout
    ) -> RayPool:
        """Share ``data``, ``partition`` and ``layout`` with every actor; wait."""
        loaded, self._loaded = self._loaded, None
        if loaded is not None and loaded[0] is data and loaded[1] is partition:
            data_ref, partition_ref = loaded[2]  # already in the object store
        else:
            data_ref, partition_ref = ray.put(data), ray.put(partition)
        refs = self._refs = (data_ref, partition_ref, layout)
        self._scheduler.attach(lambda actor: actor.setup.remote(*refs))
        return self

    def placements(self) -> list[dict[str, Any]]:
        """Each live actor's placement."""
        live = [s.actor for s in self._scheduler.slots if s.state in ("idle", "busy")]
        return list(ray.get([a.placement.remote() for a in live]))

    def _put(self, payload: Mapping[str, Mapping[str, Any]]) -> list[Any]:
        """Put the payload into the object store once, boxed (see ClientActor).

        The model just evaluated is the next round's model channel: the same
        tensors, so it is put once and every actor fetches it once.
        """
        cached = self._last_payload
        if (
            cached is None
            or list(cached[0]) != list(payload)
            or any(cached[0][ch] is not payload[ch] for ch in payload)
        ):
            cached = self._last_payload = (dict(payload), [ray.put(dict(payload))])
        return cached[1]

    # ---------------------------------------------------------------- training

    def train(
        self,
        tasks: Sequence[ClientTask],
        payload: Mapping[str, Mapping[str, Any]],
        kept: KeptStates,
    ) -> Iterator[ClientResult]:
        """Dispatch tasks to free actors; yield results in the order of ``tasks``.

        Finished updates stay in the object store until it is their turn, so
        the driver holds one update at a time.
        """
        boxed = self._put(payload)
        res = self.resources
        if res.clients_per_actor > 1:
            yield from self._train_together(tasks, boxed, kept)
            return
        unreadable: dict[int, ClientFailure] = {}
        jobs: list[Job] = []
        for key, task in enumerate(tasks):  # a bad state fails that client only
            state = read_kept(kept, task.client_id)
            if isinstance(state, ClientFailure):
                unreadable[key] = state
                continue
            jobs.append(
                Job(
                    key=key,
                    name=f"client {task.client_id}",
                    submit=_train_call(task, boxed, state),
                    retries=res.max_client_retries,
                    timeout_s=res.client_timeout_s,
                )
            )
        outcomes = self._scheduler.run_in_order(jobs)
        for key, task in enumerate(tasks):
            if key in unreadable:
                yield unreadable.pop(key)
                continue
            yield _train_result(task.client_id, next(outcomes))

    def _train_together(
        self, tasks: Sequence[ClientTask], boxed: list[Any], kept: KeptStates
    ) -> Iterator[ClientResult]:
        """Contiguous groups of clients, one per actor, each trained K at a time.

        A group whose actor died is retried on another actor as a whole, up
        to ``resources.max_client_retries`` times; then its clients fail.
        """
        res, n = self.resources, self.num_workers
        states = {t.client_id: read_kept(kept, t.client_id) for t in tasks}
        readable = [
            (t, s)
            for t in tasks
            if not isinstance(s := states[t.client_id], ClientFailure)
        ]
        groups: list[list[tuple[ClientTask, Channels]]] = [[] for _ in range(n)]
        for i, job in enumerate(readable):  # contiguous groups, as even as can be
            groups[i * n // len(readable)].append(job)
        groups = [g for g in groups if g]
        jobs = [
            Job(
                key=k,
                name=f"client group {k + 1} of {len(groups)}",
                submit=_same(lambda a, g=g: a.train_together.remote(g, boxed)),
                retries=res.max_client_retries,
                timeout_s=(
                    None
                    if res.client_timeout_s is None
                    else res.client_timeout_s * len(g)
                ),
            )
            for k, g in enumerate(groups)
        ]
        done: dict[int, ClientResult] = {}
        for outcome, group in zip(
            self._scheduler.run_in_order(jobs), groups, strict=True
        ):
            if isinstance(outcome, Lost):
                done.update(
                    (
                        t.client_id,
                        ClientFailure(client_id=t.client_id, reason=outcome.reason),
                    )
                    for t, _ in group
                )
                continue
            try:
                replies: list[ClientResult] = ray.get(outcome.result)
            except RayError as exc:
                replies = [
                    ClientFailure(client_id=t.client_id, reason=f"result lost: {exc}")
                    for t, _ in group
                ]
            done.update((r.client_id, r) for r in replies)
        for task in tasks:
            state = states[task.client_id]
            yield state if isinstance(state, ClientFailure) else done[task.client_id]

    # ---------------------------------------------------------------- evaluation

    def evaluate(self, glob: Mapping[str, Any], batch_size: int) -> EvalResult:
        """Evaluate in one contiguous shard of the test split per actor.

        The shards are the same whichever actors run them (a dead actor's
        shard is re-run on another), so the result is too.
        """
        boxed, n = self._put({MODEL: glob}), self.num_workers
        jobs = [
            Job(
                key=i,
                name=f"evaluation shard {i + 1} of {n}",
                submit=_same(
                    lambda a, i=i: a.evaluate.remote(boxed, (i, n), batch_size)
                ),
                retries=n,
            )
            for i in range(n)
        ]
        parts: dict[int, EvalResult] = {}
        for outcome in self._scheduler.run(jobs):
            if isinstance(outcome, Lost):
                raise RuntimeError(
                    f"global evaluation: shard {outcome.key + 1} of {n} could not "
                    f"be evaluated ({outcome.reason})"
                )
            parts[outcome.key] = outcome.value
        return EvalResult.merge([parts[i] for i in range(n)])

    def evaluate_clients(
        self,
        clients: Sequence[int],
        glob: Mapping[str, Any],
        kept: KeptStates,
        batch_size: int,
    ) -> Iterator[EvalOutcome]:
        """Each actor evaluates a contiguous group of clients; yield in order.

        A group whose actor died is re-run on another actor.
        """
        boxed, n = self._put({MODEL: glob}), self.num_workers
        results: dict[int, EvalOutcome] = {}
        groups: list[list[tuple[int, Channels]]] = [[] for _ in range(n)]
        for i, client_id in enumerate(clients):
            state = read_kept(kept, client_id)  # unreadable: that client fails
            if isinstance(state, ClientFailure):
                results[client_id] = state
            else:  # contiguous groups, as even as can be
                groups[i * n // len(clients)].append((client_id, state))
        jobs = [
            Job(
                key=k,
                name=f"personal evaluation group {k + 1} of {n}",
                submit=_same(
                    lambda a, g=g: a.evaluate_clients.remote(boxed, g, batch_size)
                ),
                retries=n,
            )
            for k, g in enumerate(groups)
            if g
        ]
        for outcome in self._scheduler.run(jobs):
            if isinstance(outcome, Done):
                results.update((r.client_id, r) for r in outcome.value)
                continue
            for client_id, _ in groups[outcome.key]:
                reason = f"evaluation: {outcome.reason}"
                results[client_id] = ClientFailure(client_id=client_id, reason=reason)
        yield from (results[c] for c in clients)

    def shutdown(self) -> None:
        """Kill the actors, free the reservation and the object store (idempotent).

        Ray itself is stopped by whoever started it.
        """
        self._scheduler.kill_all()
        release(self._group)
        self._group = None
        self._refs = self._loaded = None  # the dataset and the partition
        self._last_payload = None


@ray.remote(num_cpus=0, max_calls=1, num_returns=2)
def _load(request: DataRequest) -> tuple[FederatedData, Partition]:
    """Load in a worker that exits afterwards, freeing its copy."""
    return request()


def _train_call(task: ClientTask, boxed: list[Any], state: Channels) -> Submit:
    def submit(actor: Any) -> tuple[Any, Any]:
        done, result = actor.train.remote(task, boxed, state)
        return done, result

    return submit


def _same(call: Any) -> Submit:
    """A job whose small result is its own done ref (evaluation)."""

    def submit(actor: Any) -> tuple[Any, Any]:
        ref = call(actor)
        return ref, ref

    return submit


def _train_result(client_id: int, outcome: Done | Lost) -> ClientResult:
    if isinstance(outcome, Lost):
        return ClientFailure(client_id=client_id, reason=outcome.reason)
    try:
        result: ClientResult = ray.get(outcome.result)
    except RayError as exc:  # its object was lost with its node
        return ClientFailure(client_id=client_id, reason=f"result lost: {exc}")
    return result


def pool_for(cfg: Config, **options: Any) -> RayPool:
    """The client pool of ``cfg``'s run: its workers, sized for its cohort."""
    slots = cfg.resources.clients_per_actor  # an actor trains K clients at once
    cohort = -(-cfg.server.clients_per_round // slots)
    return RayPool(worker_spec(cfg), cohort_size=cohort, **options)
