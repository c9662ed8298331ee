"""The client pool's scheduler: jobs onto actor slots, faults as data.

A slot is *starting* (its setup ref is pending), *idle*, *busy* or *dead*.

- Any ref of an actor that errors with an actor error (died, killed, lost with
  its node) marks that slot dead at once. It is replaced once, in the
  background: the new actor and its setup ref are created and the slot joins
  the idle ones when setup is done, while the round goes on with the actors it
  has. Only the job that was on the slot is retried (``Job.retries``).
- A job past its deadline (``Job.timeout_s``) is lost with the reason, and its
  actor is killed and replaced (a running actor task cannot be interrupted).
- With no actor alive, the jobs wait ``stall_s`` for a replacement, then are
  lost with the reason, rather than waiting forever.

Every wait, result, kill and clock reading goes through a
:class:`~fedsim.backend.runtime.Runtime` (Ray by default), so the state
machine runs on a fake one in the unit tests.

Example
-------
>>> table = Scheduler(spawn=lambda i: f"actor{i}", size=2, stall_s=60)
>>> [(s.index, s.state) for s in table.slots]
[(0, 'new'), (1, 'new')]
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fedsim.backend.runtime import RayRuntime, RemoteError, Runtime
from fedsim.backend.slots import Done, Job, Lost, Slot

log = logging.getLogger(__name__)

Event = tuple[Job, Done | Lost]


class Scheduler:
    """Slots of actors and the loop that runs jobs on them.

    Parameters
    ----------
    spawn
        ``spawn(index)``: a new actor for slot ``index`` (in its bundle).
    size
        Number of slots.
    stall_s
        How long jobs wait for a replacement when no actor is alive.
    runtime
        Waits, results, kills and the clock; :class:`RayRuntime` by default.

    Attributes
    ----------
    slots
        One :class:`~fedsim.backend.slots.Slot` per actor.
    replacements
        Actors started so far to replace dead or hung ones.
    """

    def __init__(
        self,
        spawn: Callable[[int], Any],
        size: int,
        *,
        stall_s: float,
        runtime: Runtime | None = None,
    ) -> None:
        self.spawn = spawn
        self.stall_s = stall_s
        self.runtime: Runtime = runtime if runtime is not None else RayRuntime()
        self.slots = [Slot(index=i, actor=spawn(i)) for i in range(size)]
        self.replacements = 0
        self._setup: Callable[[Any], Any] | None = None
        self._epoch = 0  # one per run; a run abandoned half-way keeps its own
        self._stalled_since: float | None = None
        self._short = 0  # slots missing when the log last said so

    @property
    def live(self) -> int:
        """Slots whose actor is ready (idle or busy)."""
        return sum(s.state in ("idle", "busy") for s in self.slots)

    # ------------------------------------------------------------------ lifecycle

    def attach(self, setup: Callable[[Any], Any]) -> None:
        """Set every actor up with ``setup(actor) -> ref``; wait for them all.

        The slots are reserved, so every actor starts; one that dies while
        starting leaves its slot dead. An exception in ``setup`` itself (a
        bug, the same on every actor) is raised.
        """
        self._setup = setup
        for slot in self.slots:
            slot.setup = setup(slot.actor)
        while refs := self._setup_refs():
            for slot in self._ready_slots(self._wait(refs, timeout=None)):
                self._set_up(slot, strict=True)
        if not any(s.state == "idle" for s in self.slots):
            raise RuntimeError("no client actor could start; see the Ray logs")

    def kill_all(self) -> None:
        """Kill every actor and forget the setup; the table is empty afterwards."""
        for slot in self.slots:
            self.runtime.kill(slot.actor)
        self.slots = []
        self._setup = None  # its closure holds the dataset's refs

    def replace(self, slot: Slot, why: str) -> None:
        """Mark ``slot`` dead; start its replacement (once) in the background.

        A slot whose actor never became ready is not replaced again: the
        same cause (a lost node, a broken start) would kill the next one too.
        """
        self.runtime.kill(slot.actor)
        slot.job = slot.ref = slot.result = slot.setup = None
        slot.dead = True
        again = slot.ready_once and self._setup is not None
        log.warning(
            "client actor %d %s; %s, going on with %d of %d meanwhile",
            slot.index,
            why,
            "replacing it in the background" if again else "not replacing it",
            self.live,
            len(self.slots),
        )
        if not again or self._setup is None:
            return
        slot.actor = self.spawn(slot.index)
        slot.generation += 1
        slot.setup = self._setup(slot.actor)
        slot.ready_once = slot.dead = False
        self.replacements += 1

    # ------------------------------------------------------------------ running

    def run(self, jobs: Sequence[Job]) -> Iterator[Done | Lost]:
        """Run ``jobs``; yield each one's outcome as it ends (in any order)."""
        self._epoch += 1
        for job in jobs:
            job.epoch = self._epoch
        self._stalled_since = None  # every run waits its own stall_s at most
        self._say_shortfall()
        pending = deque(jobs)
        left = len(jobs)
        while left:
            self._dispatch(pending)
            for job, outcome in self._step(pending):
                if job.epoch == self._epoch:  # else: an abandoned run's job
                    left -= 1
                    yield outcome

    def run_in_order(self, jobs: Sequence[Job]) -> Iterator[Done | Lost]:
        """Run ``jobs``; yield their outcomes in the order of ``jobs``.

        An outcome that ends early waits here (a result ref, not the result)
        until the jobs before it have ended.
        """
        outcomes, parked = self.run(jobs), dict[int, Done | Lost]()
        for job in jobs:
            while job.key not in parked:
                outcome = next(outcomes)
                parked[outcome.key] = outcome
            yield parked.pop(job.key)

    def _dispatch(self, pending: deque[Job]) -> None:
        for slot in self.slots:
            if pending and slot.state == "idle":
                job = pending.popleft()
                slot.job, slot.since = job, self.runtime.now()
                slot.ref, slot.result = job.submit(slot.actor)

    def _step(self, pending: deque[Job]) -> list[Event]:
        """Wait for one ref or deadline; the jobs that ended meanwhile."""
        if self.live:
            self._stalled_since = None
        elif lost := self._stalled(pending):
            return lost
        refs = [s.ref for s in self.slots if s.ref is not None]
        ready = self._wait(refs + self._setup_refs(), self._next_deadline())
        events: list[Event] = []
        for slot in self._ready_slots(ready):
            if slot.setup is not None:
                self._set_up(slot, strict=False)
            else:
                events.extend(self._finish(slot, pending))
        return events + self._expire()

    def _set_up(self, slot: Slot, *, strict: bool) -> None:
        ref, slot.setup = slot.setup, None
        try:
            self.runtime.get(ref)
        except RemoteError as exc:
            if strict and not exc.actor_died:
                raise exc.error from None  # a bug in setup: as it was raised
            first_line = str(exc).strip().splitlines()[:1]
            self.replace(slot, f"failed to start ({''.join(first_line)})")
            return
        slot.ready_once = True
        if slot.generation:
            log.warning("client actor %d is back: %d ready", slot.index, self.live)

    def _finish(self, slot: Slot, pending: deque[Job]) -> list[Event]:
        job, ref, result = slot.job, slot.ref, slot.result
        slot.job = slot.ref = slot.result = None
        if job is None:
            return []
        try:
            value = self.runtime.get(ref)
        except RemoteError as exc:
            if not exc.actor_died:
                return [(job, Lost(job.key, f"ray error: {exc}"))]
            self.replace(slot, f"died running {job.name}")
            if job.retries > 0 and job.epoch == self._epoch:
                job.retries -= 1
                log.warning("%s: its actor died; retrying it", job.name)
                pending.appendleft(job)
                return []
            return [(job, Lost(job.key, "its client actor died"))]
        return [(job, Done(job.key, value, result))]

    def _expire(self) -> list[Event]:
        """Jobs past their deadline: lost, their actors killed and replaced."""
        now, events = self.runtime.now(), list[Event]()
        for slot in self.slots:
            job = slot.job
            if job is None or job.timeout_s is None:
                continue
            if now - slot.since >= job.timeout_s:
                self.replace(slot, f"ran {job.name} past its deadline")
                events.append(
                    (job, Lost(job.key, f"timed out after {job.timeout_s:g} s"))
                )
        return events

    def _stalled(self, pending: deque[Job]) -> list[Event]:
        """No actor alive: wait while a replacement may come, then lose the jobs."""
        now, starting = self.runtime.now(), len(self._setup_refs())
        if starting and self._stalled_since is None:
            self._stalled_since = now
            log.warning(
                "no client actor is alive; waiting up to %g s for %d replacement(s)",
                self.stall_s,
                starting,
            )
        if starting and now - (self._stalled_since or now) < self.stall_s:
            return []
        reason = (
            f"no client actor alive: {starting} replacement(s) not ready "
            f"within {self.stall_s:g} s"
            if starting
            else "every client actor died and none could be replaced"
        )
        lost: list[Event] = [(job, Lost(job.key, reason)) for job in pending]
        pending.clear()
        return lost

    # ------------------------------------------------------------------ helpers

    def _ready_slots(self, ready: list[Any]) -> list[Slot]:
        done = set(ready)  # object refs compare and hash by id
        return [s for s in self.slots if {s.setup, s.ref} & done]

    def _next_deadline(self) -> float | None:
        """Seconds until the next job deadline or the end of a stall."""
        now = self.runtime.now()
        ends = [
            s.since + s.job.timeout_s - now
            for s in self.slots
            if s.job is not None and s.job.timeout_s is not None
        ]
        if self._stalled_since is not None:
            ends.append(self._stalled_since + self.stall_s - now)
        return max(0.0, min(ends)) if ends else None

    def _setup_refs(self) -> list[Any]:
        return [s.setup for s in self.slots if s.setup is not None]

    def _wait(self, refs: list[Any], timeout: float | None) -> list[Any]:
        return self.runtime.wait(refs, timeout) if refs else []

    def _say_shortfall(self) -> None:
        """Say once per change that a run goes on with fewer actors."""
        short = sum(s.state in ("starting", "dead") for s in self.slots)
        if short and short != self._short:
            log.warning(
                "going on with %d of %d client actors (the others start or are dead)",
                len(self.slots) - short,
                len(self.slots),
            )
        self._short = short
