"""What the scheduler asks of the cluster: wait, get, kill, and the time.

:class:`~fedsim.backend.scheduler.Scheduler` moves jobs between actor slots;
every question it puts to the cluster goes through a :class:`Runtime`.
:class:`RayRuntime` answers from Ray and is the only place the scheduler's Ray
calls live; a test hands the scheduler a fake one (plain objects for actors and
refs, and a clock it moves itself), so the state machine runs without a cluster.

A failed call is a :class:`RemoteError` that says whether the actor died (its
job may be retried elsewhere) or the task's own code raised (it may not).

Example
-------
>>> exc = RemoteError(ValueError("bad layout"), actor_died=False)
>>> str(exc), exc.actor_died
('bad layout', False)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

log = logging.getLogger(__name__)


class RemoteError(Exception):
    """A remote call failed: its actor died, or the task's code raised.

    Parameters
    ----------
    error
        The runtime's own exception (with Ray, a ``RayError``); its message
        is this one's, and a caller that cannot go on re-raises it.
    actor_died
        Whether the actor (not the task's code) failed: died, was killed, or
        was lost with its node.
    """

    def __init__(self, error: BaseException, actor_died: bool) -> None:
        super().__init__(error, actor_died)  # both in args: it pickles
        self.error = error
        self.actor_died = actor_died

    def __str__(self) -> str:
        return str(self.error)


class Runtime(Protocol):
    """The cluster as the scheduler sees it.

    Refs and actors are opaque: the scheduler only compares and hashes refs,
    and passes actors back to :meth:`kill`.

    Example
    -------
    >>> class Instant:  # every ref is its own value, ready at once
    ...     def wait(self, refs, timeout): return list(refs[:1])
    ...     def get(self, ref): return ref
    ...     def kill(self, actor): pass
    ...     def now(self): return 0.0
    >>> runtime: Runtime = Instant()
    >>> runtime.wait(["a", "b"], timeout=None), runtime.get("a")
    (['a'], 'a')
    """

    def wait(self, refs: Sequence[Any], timeout: float | None) -> list[Any]:
        """Some of ``refs`` once ready (one at least); none after ``timeout`` s.

        ``timeout=None`` waits for as long as it takes.
        """

    def get(self, ref: Any) -> Any:
        """The value of the ready ``ref``; :class:`RemoteError` if its call failed."""

    def kill(self, actor: Any) -> None:
        """End ``actor`` for good, without a restart; one already gone is fine."""

    def now(self) -> float:
        """Seconds on a clock that never goes back (deadlines are measured on it)."""


class RayRuntime:
    """:class:`Runtime` on Ray: ``ray.wait``, ``ray.get`` and ``ray.kill``."""

    def wait(self, refs: Sequence[Any], timeout: float | None) -> list[Any]:
        """The first of ``refs`` to be ready, or none within ``timeout`` s."""
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=timeout)
        return list(ready)

    def get(self, ref: Any) -> Any:
        """``ray.get(ref)``; a ``RayError`` becomes a :class:`RemoteError`."""
        try:
            return ray.get(ref)
        except RayError as exc:
            raise RemoteError(exc, actor_died=is_actor_death(exc)) from exc

    def kill(self, actor: Any) -> None:
        """Kill ``actor`` for good; one already gone is fine."""
        try:
            ray.kill(actor, no_restart=True)
        except (RayError, ValueError) as exc:  # gone already, or not an actor
            log.debug("kill: %s", exc)

    def now(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()


def is_actor_death(exc: BaseException) -> bool:
    """Whether ``exc`` says the actor (not the task's own code) failed."""
    if isinstance(exc, RayActorError):
        return True
    return isinstance(exc, RayTaskError) and isinstance(exc.cause, RayActorError)
