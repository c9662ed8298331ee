"""Ray on loopback for every test; Ray fixtures that always shut Ray down."""

from __future__ import annotations

import os

# Before anything imports Ray: keep every Ray process of the tests on 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest


@contextlib.contextmanager
def local_ray() -> Iterator[Any]:
    """A fresh Ray on loopback with 2 CPUs, shut down pass or fail."""
    import ray

    from fedsim.backend.cluster import start_ray

    start_ray(None, num_cpus=2)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def ray_session() -> Iterator[Any]:
    """Ray for one test."""
    with local_ray() as ray:
        yield ray


@pytest.fixture(scope="module")
def ray_module() -> Iterator[Any]:
    """One Ray shared by a module's tests (each run still gets its own actors)."""
    with local_ray() as ray:
        yield ray
