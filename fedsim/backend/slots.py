"""What the pool's scheduler keeps: one record per actor slot, and its jobs.

Each :class:`Slot` holds its actor, the actor's generation and the one job in
flight on it; nothing else is kept on the side (see
:mod:`fedsim.backend.scheduler` for the loop that moves them on). A
:class:`Job` is one unit of work; it ends :class:`Done` or :class:`Lost`.

Example
-------
>>> slot = Slot(index=0, actor="actor0")
>>> slot.state
'new'
>>> slot.ready_once = True
>>> slot.state, Slot(index=1, actor="a", dead=True).state
('idle', 'dead')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Submit = Callable[[Any], tuple[Any, Any]]
"""``submit(actor) -> (done_ref, result_ref)``: start a job on an actor.

The small ``done_ref`` is fetched as soon as it is ready, to see a dead actor
at once; ``result_ref`` (which may be the same ref) stays in the object store
until the caller wants it.
"""


@dataclass(eq=False, kw_only=True)
class Job:
    """One unit of work: a client's training, an eval shard or client group.

    ``key`` identifies it to the caller, ``name`` to the log; ``retries``
    counts down with each death of the actor it was on.
    """

    key: int
    name: str
    submit: Submit
    retries: int
    timeout_s: float | None = None
    epoch: int = 0  # the run it belongs to


@dataclass(frozen=True)
class Done:
    """A finished job: the small done value, and the ref of its result."""

    key: int
    value: Any
    result: Any


@dataclass(frozen=True)
class Lost:
    """A job that did not finish, and why."""

    key: int
    reason: str


@dataclass(eq=False)
class Slot:
    """One actor slot: the actor, its generation and its work in flight."""

    index: int
    actor: Any
    generation: int = 0
    setup: Any = None  # the setup ref while the actor starts
    job: Job | None = None
    ref: Any = None  # the job's done ref
    result: Any = None  # the job's result ref
    since: float = 0.0  # when the job started (runtime clock), for its deadline
    ready_once: bool = False  # a slot that never became ready is not replaced
    dead: bool = False

    @property
    def state(self) -> str:
        """``new``, ``starting``, ``idle``, ``busy`` or ``dead``."""
        if self.dead:
            return "dead"
        if self.setup is not None:
            return "starting"
        if self.job is not None:
            return "busy"
        return "idle" if self.ready_once else "new"
