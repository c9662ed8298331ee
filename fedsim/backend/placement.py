"""Where the client pool goes: per-node sizing and one atomic reservation.

A pool is sized from each alive node's own resources, never from the cluster's
totals: two nodes of 3 CPUs hold two 2-CPU actors, not three, and two 1-GPU
nodes hold four 0.4-GPU actors, not five (a fractional slice must fit inside
one GPU). The pool is then reserved in one Ray placement group, so it is placed
whole or not at all: two runs started at once on one cluster cannot each take
half of it and wait for the other forever. A reservation that is not placed
within ``resources.placement_timeout_s`` is removed and refused with a
:class:`~fedsim.config.ConfigError` (exit 2) that says what the cluster holds.

Example
-------
>>> res = ResourcesConfig(cpus_per_client=2)
>>> node_capacity(res, {"CPU": 3.0}), pool_size(res, 10, [{"CPU": 3.0}] * 2)
(1, 2)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import ray
from ray.util.placement_group import (
    PlacementGroup,
    placement_group,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from fedsim.config import ConfigError, ResourcesConfig

log = logging.getLogger(__name__)

_EPS = 1e-9  # 1.0 / 0.1 is 9.999...: floor it as 10


def alive_node_resources() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected cluster."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def fit_slice(
    res: ResourcesConfig, nodes: Sequence[Mapping[str, float]]
) -> ResourcesConfig:
    """Check that one client's slice fits a node; without GPUs, train on CPU.

    ``nodes`` are the alive nodes' total resources. A GPU slice asked of a
    cluster that has no GPU at all falls back to CPU training with a warning
    (the paper configs ask for 0.25 GPU); a slice that no node can hold is an
    error, since Ray would otherwise wait for it forever.

    Returns the slice as decided (the config itself is never rewritten).

    >>> fit_slice(ResourcesConfig(gpus_per_client=0.25), [{"CPU": 2.0}]).gpus_per_client
    0.0
    """
    if res.gpus_per_client > 0 and not any(n.get("GPU", 0) > 0 for n in nodes):
        log.warning(
            "the Ray cluster has no GPU: clients train on CPU "
            "(set resources.gpus_per_client=0 to say so and silence this)"
        )
        res = replace(res, gpus_per_client=0.0)
    if not any(node_capacity(res, n) for n in nodes):
        biggest = max(
            nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={}
        )
        raise ConfigError(
            f"resources: one client asks for {res.cpus_per_client} CPU and "
            f"{res.gpus_per_client} GPU, but the largest node has "
            f"{biggest.get('CPU', 0)} CPU and {biggest.get('GPU', 0)} GPU; lower "
            "resources.cpus_per_client / resources.gpus_per_client"
        )
    return res


def node_capacity(res: ResourcesConfig, node: Mapping[str, float]) -> int:
    """How many client slices one node holds.

    A fraction of a GPU must fit inside one GPU (Ray never splits a slice
    across two), so a node of 2 GPUs holds 4 slices of 0.4, not 5.

    >>> from fedsim.config import ResourcesConfig
    >>> node_capacity(ResourcesConfig(gpus_per_client=0.4), {"CPU": 8, "GPU": 2})
    4
    >>> node_capacity(ResourcesConfig(gpus_per_client=2), {"CPU": 8, "GPU": 5})
    2
    """
    fits = math.floor(node.get("CPU", 0) / res.cpus_per_client + _EPS)
    gpu = res.gpus_per_client
    if gpu > 0:
        gpus = node.get("GPU", 0)
        if gpu < 1:
            per_gpu = math.floor(1 / gpu + _EPS)
            fits = min(fits, math.floor(gpus + _EPS) * per_gpu)
        else:
            fits = min(fits, math.floor(gpus / gpu + _EPS))
    return max(0, fits)


def cluster_slots(res: ResourcesConfig) -> int:
    """Client slices of ``res``'s size the connected cluster holds in all."""
    nodes = alive_node_resources()
    fitted = fit_slice(res, nodes)
    return sum(node_capacity(fitted, node) for node in nodes)


def pool_size(
    res: ResourcesConfig, cohort_size: int, nodes: Sequence[Mapping[str, float]]
) -> int:
    """Actors the alive ``nodes`` hold, at most one cohort; or the fixed number.

    Raises
    ------
    ConfigError
        When ``resources.num_actors`` is more than the nodes can hold.
    """
    per_node = [node_capacity(res, n) for n in nodes]
    capacity = sum(per_node)
    if res.num_actors is None:
        return max(1, min(capacity, cohort_size))
    if res.num_actors > capacity:
        raise ConfigError(
            f"resources.num_actors: the cluster holds {capacity} client actors "
            f"of {_slice(res)} (per node: {', '.join(map(str, per_node))}), "
            f"not {res.num_actors}; lower resources.num_actors (null fits the "
            "cluster) or resources.cpus_per_client / resources.gpus_per_client"
        )
    return res.num_actors


def reserve(res: ResourcesConfig, size: int, capacity: int) -> PlacementGroup:
    """Reserve ``size`` slices in one placement group, or refuse.

    PACK puts the actors on as few nodes as can hold them (each node keeps one
    copy of the dataset in its object store); Ray still spreads the bundles
    when one node is not enough.

    Raises
    ------
    ConfigError
        When the group is not placed within ``resources.placement_timeout_s``
        (the group is removed first, so nothing stays reserved).
    """
    bundle = {"CPU": res.cpus_per_client}
    if res.gpus_per_client > 0:
        bundle["GPU"] = res.gpus_per_client
    group: PlacementGroup = placement_group(
        [dict(bundle) for _ in range(size)], strategy="PACK"
    )
    if group.wait(timeout_seconds=res.placement_timeout_s):
        return group
    remove_placement_group(group)
    raise ConfigError(
        f"resources: {size} client actors of {_slice(res)} could not be reserved "
        f"within resources.placement_timeout_s={res.placement_timeout_s:g} s; "
        f"the cluster holds {capacity} such actors when idle, so other runs or "
        "Ray work hold part of it: wait for them, lower resources.num_actors, "
        "or raise resources.placement_timeout_s"
    )


def in_group(group: PlacementGroup, index: int) -> dict[str, Any]:
    """Actor options that place an actor in bundle ``index`` of ``group``."""
    return {
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_bundle_index=index
        )
    }


def release(group: PlacementGroup | None) -> None:
    """Remove a reservation (its actors die with it); ignore one already gone."""
    if group is None:
        return
    try:
        remove_placement_group(group)
    except Exception as exc:  # Ray down or group removed: nothing to release
        log.debug("placement group already released: %s", exc)


def _slice(res: ResourcesConfig) -> str:
    return f"{res.cpus_per_client:g} CPU and {res.gpus_per_client:g} GPU each"
