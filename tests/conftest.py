"""Ray on loopback for every test; a Ray fixture that is always shut down."""

from __future__ import annotations

import os

# Before anything imports Ray: keep every Ray process of the tests on 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from collections.abc import Iterator

import pytest


@pytest.fixture
def ray_session() -> Iterator[object]:
    """Start a fresh Ray on loopback with 2 CPUs; shut it down pass or fail."""
    import ray

    from fedsim.backend.ray_pool import start_ray

    start_ray(None, num_cpus=2)
    try:
        yield ray
    finally:
        ray.shutdown()
