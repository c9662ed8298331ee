"""Ray backend: a pool of client actors, each holding a CPU/GPU slice.

Virtual clients (any number) are multiplexed over a fixed pool of actors: an
actor builds its model and its view of the dataset once, then trains one client
after another. The dataset arrays are put into the object store once; every
actor on a node maps the same shared-memory copy (numpy arrays deserialize
zero-copy), and a client holds only its index array.

Placement: each actor asks for ``num_cpus=cpus_per_client`` and
``num_gpus=gpus_per_client``; with 0.25, four actors share a GPU and Ray sets
``CUDA_VISIBLE_DEVICES`` for each.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayActorError, RayError

from fedsim.backend.base import Backend, ClientResult, LocalStates
from fedsim.config import Config, ConfigError
from fedsim.data import FederatedData, Partition
from fedsim.messages import ClientFailure, ClientTask, EvalResult

if TYPE_CHECKING:
    from fedsim.client import ClientRunner

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def start_ray(
    address: str | None, *, num_cpus: int | None = None, num_gpus: int | None = None
) -> bool:
    """Join ``address`` (or RAY_ADDRESS), or start an embedded local instance.

    The embedded instance binds to loopback. Returns True when this call
    started Ray (so the caller should shut it down).
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=True)
        return True
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(
        # "local": always a new instance; a bare ray.init() would try to join
        # the last `ray start` cluster recorded in /tmp/ray, even a dead one.
        address="local",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    return True


def fit_slice(cfg: Config, nodes: Sequence[Mapping[str, float]]) -> Config:
    """Check that one client's slice fits a node; without GPUs, train on CPU.

    ``nodes`` are the alive nodes' total resources. A GPU slice asked of a
    cluster that has no GPU at all falls back to CPU training with a warning
    (the paper configs ask for 0.25 GPU); a slice that no node can hold is an
    error, since Ray would otherwise wait for it forever.

    >>> from fedsim.config import load_config
    >>> cfg = load_config(None, ["resources.gpus_per_client=0.25"])
    >>> fit_slice(cfg, [{"CPU": 2.0}]).resources.gpus_per_client
    0.0
    """
    res = cfg.resources
    if res.gpus_per_client > 0 and not any(n.get("GPU", 0) > 0 for n in nodes):
        log.warning(
            "the Ray cluster has no GPU: clients train on CPU "
            "(set resources.gpus_per_client=0 to say so and silence this)"
        )
        res = replace(res, gpus_per_client=0.0)
    fits = any(
        n.get("CPU", 0) >= res.cpus_per_client
        and n.get("GPU", 0) >= res.gpus_per_client
        for n in nodes
    )
    if not fits:
        biggest = max(
            nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={}
        )
        raise ConfigError(
            f"resources: one client asks for {res.cpus_per_client} CPU and "
            f"{res.gpus_per_client} GPU, but the largest node has "
            f"{biggest.get('CPU', 0)} CPU and {biggest.get('GPU', 0)} GPU; lower "
            "resources.cpus_per_client / resources.gpus_per_client"
        )
    return replace(cfg, resources=res)


def alive_node_resources() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected cluster."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def pool_size(cfg: Config, resources: Mapping[str, float]) -> int:
    """Actors that fit the cluster's resources, capped by the cohort size."""
    res = cfg.resources
    if res.num_actors is not None:
        return res.num_actors
    fits = int(resources.get("CPU", 1) // res.cpus_per_client)
    if res.gpus_per_client > 0:
        fits = min(fits, int(resources.get("GPU", 0) / res.gpus_per_client + 1e-9))
    return max(1, min(fits, cfg.server.clients_per_round))


@ray.remote
class ClientActor:
    """A Ray actor wrapping one :class:`fedsim.client.ClientRunner`."""

    def __init__(self, cfg: Config) -> None:
        # torch and Lightning load now, while the driver is still loading data.
        import fedsim.client

        self._client_module = fedsim.client
        self.cfg = cfg
        self._runner: ClientRunner | None = None
        self._payload_ref: Any = None
        self._payload: Mapping[str, Any] = {}

    def setup(self, data: FederatedData, partition: Partition) -> None:
        """Build the model and the dataset view once for this actor's lifetime."""
        self._runner = self._client_module.ClientRunner(self.cfg, data, partition)

    @property
    def runner(self) -> ClientRunner:
        """The runner built by :meth:`setup`."""
        if self._runner is None:
            raise RuntimeError("ClientActor.setup(data, partition) was not called")
        return self._runner

    def _resolve(self, boxed: list[Any]) -> Mapping[str, Any]:
        # The ref arrives boxed so Ray does not deserialize it for every task;
        # the actor fetches each round's payload once.
        ref = boxed[0]
        if ref != self._payload_ref:
            self._payload = ray.get(ref)
            self._payload_ref = ref
        return self._payload

    def train(self, task: ClientTask, boxed: list[Any], local: Any) -> ClientResult:
        """Train one client; exceptions come back as a ClientFailure."""
        try:
            return self.runner.train(task, self._resolve(boxed), local)
        except Exception as exc:
            reason = "".join(traceback.format_exception_only(exc)).strip()
            return ClientFailure(task.client_id, reason)

    def evaluate(self, boxed: list[Any], shard: tuple[int, int]) -> EvalResult:
        """Evaluate the global model on one shard of the test split."""
        return self.runner.evaluate(
            self._resolve(boxed), self.cfg.server.eval_batch_size, shard
        )

    def touch_data(self, private_copy: bool = False) -> int:
        """Read every byte of the training inputs (for the memory benchmark).

        ``private_copy`` keeps a copy in this actor, the control case that
        the benchmark must be able to see.
        """
        x = self.runner.data.x_train
        if private_copy:
            self._copy = x.copy()
            x = self._copy
        return int(x.reshape(len(x), -1).sum(axis=1, dtype="int64").sum())

    def placement(self) -> dict[str, Any]:
        """Where this actor runs: pid, node, GPU ids, CUDA_VISIBLE_DEVICES, device."""
        ctx = ray.get_runtime_context()
        return {
            "pid": os.getpid(),
            "node_id": ctx.get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": str(self.runner.device),
        }


class RayPool(Backend):
    """Client actors on Ray, sized from the cluster and the config's slice.

    The actors start as soon as the pool is made; :meth:`attach` puts the
    dataset and the partition into the object store once and hands every actor
    the same references.

    Example
    -------
    >>> pool = RayPool(cfg).attach(data, partition)  # doctest: +SKIP
    >>> [p["gpu_ids"] for p in pool.placements()]  # doctest: +SKIP
    [['0'], ['0'], ['0'], ['0'], ['1'], ['1'], ['1'], ['1']]
    """

    def __init__(self, cfg: Config) -> None:
        cfg = fit_slice(cfg, alive_node_resources())
        self.cfg = cfg
        self.num_workers = pool_size(cfg, ray.cluster_resources())
        self._refs: tuple[Any, Any] | None = None
        self._last_payload: tuple[Mapping[str, Any], list[Any]] | None = None
        self._options = {
            "num_cpus": cfg.resources.cpus_per_client,
            "num_gpus": cfg.resources.gpus_per_client,
        }
        self.actors = [self._spawn() for _ in range(self.num_workers)]

    def _put(self, payload: Mapping[str, Any]) -> list[Any]:
        """Put the payload into the object store once, boxed (see ``_resolve``).

        The model just evaluated is the next round's payload: the same object,
        so it is put once and every actor fetches it once.
        """
        if self._last_payload is None or self._last_payload[0] is not payload:
            self._last_payload = (payload, [ray.put(dict(payload))])
        return self._last_payload[1]

    def _spawn(self) -> Any:
        return ClientActor.options(**self._options).remote(self.cfg)  # type: ignore[attr-defined]

    def attach(self, data: FederatedData, partition: Partition) -> RayPool:
        """Share ``data`` and ``partition`` with every actor; wait until ready."""
        self._refs = (ray.put(data), ray.put(partition))
        ray.get([a.setup.remote(*self._refs) for a in self.actors])
        return self

    def _new_actor(self) -> Any:
        actor = self._spawn()
        if self._refs is not None:
            ray.get(actor.setup.remote(*self._refs))
        return actor

    def placements(self) -> list[dict[str, Any]]:
        """Each actor's placement (waits for the actors to start)."""
        return list(ray.get([a.placement.remote() for a in self.actors]))

    def train(
        self,
        tasks: Sequence[ClientTask],
        payload: Mapping[str, Any],
        local_state: LocalStates,
    ) -> Iterator[ClientResult]:
        """Dispatch tasks to free actors; yield results in the order of ``tasks``.

        Finished updates stay in the object store until it is their turn, so
        the driver holds one update at a time.
        """
        boxed = self._put(payload)
        pending = deque(tasks)
        retries = {t.client_id: self.cfg.resources.max_client_retries for t in tasks}
        idle = deque(range(len(self.actors)))
        in_flight: dict[Any, tuple[int, ClientTask]] = {}
        done: dict[int, tuple[int, Any]] = {}
        for task in tasks:
            while True:
                while task.client_id not in done:
                    while idle and pending:
                        slot, nxt = idle.popleft(), pending.popleft()
                        ref = self.actors[slot].train.remote(
                            nxt, boxed, local_state(nxt.client_id)
                        )
                        in_flight[ref] = (slot, nxt)
                    ready, _ = ray.wait(list(in_flight), num_returns=1)
                    slot, finished = in_flight.pop(ready[0])
                    idle.append(slot)
                    done[finished.client_id] = (slot, ready[0])
                slot, ref = done.pop(task.client_id)
                result = self._fetch(ref, task, slot)
                if result is None and retries[task.client_id] > 0:
                    retries[task.client_id] -= 1
                    log.warning("client %d: its actor died; retrying", task.client_id)
                    pending.appendleft(task)
                    continue
                yield result or ClientFailure(task.client_id, "actor died")
                break

    def _fetch(self, ref: Any, task: ClientTask, slot: int) -> ClientResult | None:
        """The task's result; None when its actor died (the actor is replaced)."""
        try:
            result: ClientResult = ray.get(ref)
            return result
        except RayActorError:
            self.actors[slot] = self._new_actor()
            return None
        except RayError as exc:
            return ClientFailure(task.client_id, f"ray error: {exc}")

    def evaluate(self, payload: Mapping[str, Any]) -> EvalResult:
        """Every actor evaluates one contiguous shard of the test split."""
        boxed = self._put(payload)
        n = len(self.actors)
        parts = ray.get(
            [a.evaluate.remote(boxed, (i, n)) for i, a in enumerate(self.actors)]
        )
        return EvalResult.merge(parts)

    def shutdown(self) -> None:
        """Kill the actors (Ray itself is stopped by whoever started it)."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
