"""The scheduler's state machine on a fake runtime: no cluster, a fake clock.

Actors and refs are plain objects. ``FakeRuntime.wait`` moves its clock on to
the first ref that becomes ready (or to the timeout), so a 600 s hang costs
microseconds and every timeline below is exact. Each job's attempts are
scripted as :class:`Call` values; the tests read what the caller gets (the
outcomes), which actors were started and killed, and which actor ran what.
"""

from __future__ import annotations

import gc
import math
import weakref
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from fedsim.backend.runtime import RemoteError
from fedsim.backend.scheduler import Scheduler
from fedsim.backend.slots import Done, Job, Lost

NEVER = math.inf


@dataclass(eq=False)
class Actor:
    name: str  # "actor <slot>.<generation>"
    dies_at: float = NEVER  # its process ends then: a crash, a lost node, a kill


@dataclass(eq=False)
class Ref:
    actor: Actor
    at: float  # when the call returns, if its actor is still alive then
    value: Any = None
    raises: str | None = None  # the task's own code raised this

    @property
    def ready_at(self) -> float:
        return min(self.at, self.actor.dies_at)


@dataclass(frozen=True)
class Call:
    """One attempt of a job on an actor: takes ``seconds``, then ends ``how``."""

    seconds: float = 1.0
    how: Literal["done", "die", "raise"] = "done"


HANG = Call(NEVER)


class FakeRuntime:
    """The scheduler's runtime, and the pool's side (spawn, setup, jobs).

    Setup takes ``setup_s`` (``replacement_s`` for a replacement); the setup of
    an actor named in ``broken`` dies, and with ``setup_raises`` every setup's
    code raises.
    """

    def __init__(
        self,
        *,
        setup_s: float = 1.0,
        replacement_s: float = 1.0,
        broken: Iterable[str] = (),
        setup_raises: str | None = None,
    ) -> None:
        self.clock = 0.0
        self.setup_s, self.replacement_s = setup_s, replacement_s
        self.broken, self.setup_raises = set(broken), setup_raises
        self.actors: dict[str, Actor] = {}  # every actor spawned, in order
        self.kills: list[str] = []
        self.calls: list[tuple[str, str]] = []  # (job, actor) per attempt
        self.waits = 0

    # ------------------------------------------------------------ the Runtime

    def wait(self, refs: Any, timeout: float | None) -> list[Any]:
        self.waits += 1
        assert self.waits < 1000, "the scheduler spins without moving on"
        first = min(refs, key=lambda r: r.ready_at)
        limit = NEVER if timeout is None else self.clock + timeout
        if first.ready_at > limit:
            assert timeout is not None, "the scheduler would wait forever"
            self.clock = limit
            return []
        self.clock = max(self.clock, first.ready_at)
        return [first]

    def get(self, ref: Ref) -> Any:
        assert ref.ready_at <= self.clock, "get of a ref that is not ready"
        if ref.actor.dies_at <= ref.at:
            died = RuntimeError(f"{ref.actor.name} died")
            raise RemoteError(died, actor_died=True)
        if ref.raises is not None:
            raise RemoteError(ValueError(ref.raises), actor_died=False)
        return ref.value

    def kill(self, actor: Actor) -> None:
        self.kills.append(actor.name)
        self.crash(actor.name)

    def now(self) -> float:
        return self.clock

    # ------------------------------------------------------------ the pool's side

    def spawn(self, index: int) -> Actor:
        generation = sum(n.startswith(f"actor {index}.") for n in self.actors)
        actor = Actor(f"actor {index}.{generation}")
        self.actors[actor.name] = actor
        return actor

    def setup(self, actor: Actor) -> Ref:
        seconds = self.setup_s if actor.name.endswith(".0") else self.replacement_s
        ref = Ref(actor, self.clock + seconds, raises=self.setup_raises)
        if actor.name in self.broken:
            actor.dies_at = ref.at
        return ref

    def job(
        self, key: int, *calls: Call, retries: int = 0, timeout_s: float | None = None
    ) -> Job:
        attempts, name = list(calls or [Call()]), f"job {key}"

        def submit(actor: Actor) -> tuple[Ref, str]:
            call = attempts.pop(0)  # an unscripted attempt is a test failure
            self.calls.append((name, actor.name))
            ref = Ref(actor, self.clock + call.seconds, value=f"{name} done")
            if call.how == "die":
                actor.dies_at = min(actor.dies_at, ref.at)
            if call.how == "raise":
                ref.raises = f"{name} raised"
            return ref, f"{name} result"

        return Job(
            key=key, name=name, submit=submit, retries=retries, timeout_s=timeout_s
        )

    def crash(self, name: str) -> None:
        actor = self.actors[name]
        actor.dies_at = min(actor.dies_at, self.clock)


def started(fake: FakeRuntime, size: int, *, stall_s: float = 30.0) -> Scheduler:
    scheduler = Scheduler(fake.spawn, size, stall_s=stall_s, runtime=fake)
    scheduler.attach(fake.setup)
    return scheduler


def ends(outcomes: Iterable[Done | Lost]) -> dict[int, str]:
    """Each job's end: its done value, or ``lost: <reason>``."""
    return {
        o.key: o.value if isinstance(o, Done) else f"lost: {o.reason}" for o in outcomes
    }


def attempts(fake: FakeRuntime) -> Counter[str]:
    return Counter(job for job, _ in fake.calls)


# ------------------------------------------------------------------ tests


def test_jobs_run_on_the_free_actors_and_end_done_with_their_refs() -> None:
    fake = FakeRuntime()
    scheduler = started(fake, 2)
    outcomes = list(scheduler.run([fake.job(k, Call(2.0)) for k in range(3)]))
    assert outcomes == [Done(k, f"job {k} done", f"job {k} result") for k in range(3)]
    assert fake.calls == [
        ("job 0", "actor 0.0"),
        ("job 1", "actor 1.0"),
        ("job 2", "actor 0.0"),  # the first actor free again
    ]
    assert fake.clock == 1.0 + 2.0 + 2.0  # setup, then two jobs after another
    assert fake.kills == []


@pytest.mark.parametrize("retries", [1, 0])
def test_an_actor_dying_mid_job_is_replaced_once_and_only_its_job_is_retried(
    retries: int,
) -> None:
    fake = FakeRuntime()
    scheduler = started(fake, 2)
    jobs = [
        fake.job(0, Call(3.0)),  # actor 0 is busy with the head of the round
        fake.job(1, Call(1.0, "die"), Call(1.0), retries=retries),
        *(fake.job(k) for k in range(2, 6)),
    ]
    died = {1: "lost: its client actor died"} if retries == 0 else {}
    assert ends(scheduler.run(jobs)) == {
        **{k: f"job {k} done" for k in range(6)},
        **died,
    }
    assert fake.kills == ["actor 1.0"]
    assert list(fake.actors) == ["actor 0.0", "actor 1.0", "actor 1.1"]
    assert attempts(fake) == {f"job {k}": 1 for k in range(6)} | {"job 1": 1 + retries}
    # The jobs after the death ran on the live actor and the replacement only.
    assert {actor for _, actor in fake.calls[2:]} <= {"actor 0.0", "actor 1.1"}


def test_a_job_past_its_deadline_is_lost_with_its_reason_and_its_actor_replaced() -> (
    None
):
    fake = FakeRuntime()
    scheduler = started(fake, 2)
    jobs = [
        fake.job(0, timeout_s=5),
        fake.job(1, HANG, retries=1, timeout_s=5),  # a deadline is not retried
        fake.job(2, timeout_s=5),
    ]
    assert ends(scheduler.run(jobs)) == {
        0: "job 0 done",
        1: "lost: timed out after 5 s",
        2: "job 2 done",
    }
    assert fake.clock == 1.0 + 5  # given up at its deadline, not waited on
    assert fake.kills == ["actor 1.0"]
    assert list(fake.actors)[-1] == "actor 1.1"
    assert attempts(fake)["job 1"] == 1


def test_with_no_actor_left_the_jobs_wait_for_a_replacement_then_run() -> None:
    fake = FakeRuntime(replacement_s=10.0)
    scheduler = started(fake, 1, stall_s=30.0)
    fake.crash("actor 0.0")  # between rounds: the scheduler cannot know yet
    jobs = [fake.job(0, Call(), Call(), retries=1), fake.job(1)]
    assert ends(scheduler.run(jobs)) == {0: "job 0 done", 1: "job 1 done"}
    assert fake.calls == [
        ("job 0", "actor 0.0"),
        ("job 0", "actor 0.1"),
        ("job 1", "actor 0.1"),
    ]
    assert fake.clock == 1.0 + 10.0 + 2 * 1.0


def test_with_no_actor_left_and_none_ready_in_the_stall_wait_the_jobs_fail() -> None:
    fake = FakeRuntime(replacement_s=10.0)
    scheduler = started(fake, 1, stall_s=0.5)
    fake.crash("actor 0.0")
    jobs = [fake.job(0, Call(), retries=1), fake.job(1)]
    reason = "lost: no client actor alive: 1 replacement(s) not ready within 0.5 s"
    assert ends(scheduler.run(jobs)) == {0: reason, 1: reason}
    assert fake.clock == 1.0 + 0.5  # not the replacement's 10 s, nor forever
    assert fake.kills == ["actor 0.0"]


def test_a_replacement_that_dies_starting_is_not_replaced_and_the_jobs_fail() -> None:
    fake = FakeRuntime(broken={"actor 0.1"})
    scheduler = started(fake, 1)
    jobs = [fake.job(0, Call(1.0, "die"), retries=1), fake.job(1)]
    reason = "lost: every client actor died and none could be replaced"
    assert ends(scheduler.run(jobs)) == {0: reason, 1: reason}
    assert list(fake.actors) == ["actor 0.0", "actor 0.1"]  # no third try
    assert fake.kills == ["actor 0.0", "actor 0.1"]


def test_a_job_whose_code_raises_is_lost_with_the_error_and_not_retried() -> None:
    fake = FakeRuntime()
    scheduler = started(fake, 1)
    jobs = [fake.job(0, Call(1.0, "raise"), retries=1), fake.job(1)]
    assert ends(scheduler.run(jobs)) == {
        0: "lost: ray error: job 0 raised",
        1: "job 1 done",
    }
    assert fake.calls == [("job 0", "actor 0.0"), ("job 1", "actor 0.0")]
    assert fake.kills == []


def test_a_setup_whose_code_raises_is_raised_by_attach_as_itself() -> None:
    fake = FakeRuntime(setup_raises="bad layout")
    scheduler = Scheduler(fake.spawn, 2, stall_s=30.0, runtime=fake)
    with pytest.raises(ValueError, match=r"^bad layout$"):
        scheduler.attach(fake.setup)


def test_outcomes_come_back_as_jobs_end_or_in_the_order_of_the_jobs() -> None:
    def slow_head(fake: FakeRuntime) -> list[Job]:
        return [fake.job(0, Call(5.0)), fake.job(1), fake.job(2)]

    fake = FakeRuntime()
    as_they_end = [o.key for o in started(fake, 2).run(slow_head(fake))]
    fake = FakeRuntime()
    in_order = [o.key for o in started(fake, 2).run_in_order(slow_head(fake))]
    assert (as_they_end, in_order) == ([1, 2, 0], [0, 1, 2])


def test_kill_all_kills_every_actor_and_lets_go_of_the_setup() -> None:
    fake = FakeRuntime()
    scheduler = Scheduler(fake.spawn, 2, stall_s=30.0, runtime=fake)

    def setup(actor: Actor) -> Ref:  # in the pool, its closure holds the data
        return fake.setup(actor)

    forgotten = weakref.ref(setup)
    scheduler.attach(setup)
    del setup
    scheduler.kill_all()
    gc.collect()
    assert fake.kills == ["actor 0.0", "actor 1.0"]
    assert forgotten() is None
