"""Communication ledger: the bytes that actually travel, per client and direction.

The ledger is a value: :meth:`Ledger.record` returns a new ledger, so it is saved
with the server state and a resumed run continues the same totals.

Example
-------
>>> ledger = Ledger()
>>> ledger = ledger.record(RoundTraffic(round=0, down={3: 40, 7: 40}, up={3: 40}))
>>> ledger.total_bytes, ledger.rounds[-1].bytes_up
(120, 40)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class RoundTraffic:
    """Bytes moved in one round, keyed by client id."""

    round: int
    down: Mapping[int, int]
    up: Mapping[int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "down", MappingProxyType(dict(self.down)))
        object.__setattr__(self, "up", MappingProxyType(dict(self.up)))

    @property
    def bytes_down(self) -> int:
        """Server-to-client bytes of the round."""
        return sum(self.down.values())

    @property
    def bytes_up(self) -> int:
        """Client-to-server bytes of the round."""
        return sum(self.up.values())

    def add(self, down: Mapping[int, int], up: Mapping[int, int]) -> RoundTraffic:
        """Add another attempt's traffic, client by client.

        >>> RoundTraffic(0, {1: 5}, {}).add({1: 5}, {1: 3}).per_client()
        [{'round': 0, 'client': 1, 'down': 10, 'up': 3}]
        """
        summed_down, summed_up = dict(self.down), dict(self.up)
        for c, n in down.items():
            summed_down[c] = summed_down.get(c, 0) + n
        for c, n in up.items():
            summed_up[c] = summed_up.get(c, 0) + n
        return RoundTraffic(self.round, summed_down, summed_up)

    def per_client(self) -> list[dict[str, int]]:
        """JSON-ready rows ``{round, client, down, up}`` sorted by client."""
        clients = sorted(set(self.down) | set(self.up))
        return [
            {
                "round": self.round,
                "client": c,
                "down": self.down.get(c, 0),
                "up": self.up.get(c, 0),
            }
            for c in clients
        ]

    def __reduce__(self) -> Any:
        return (RoundTraffic, (self.round, dict(self.down), dict(self.up)))


@dataclass(frozen=True)
class Ledger:
    """Cumulative traffic of a run.

    Only per-round totals are kept in memory; per-client rows go to the run
    directory's ``comm.jsonl`` as they are recorded.
    """

    total_down: int = 0
    total_up: int = 0
    rounds: tuple[RoundTotals, ...] = field(default=())

    @property
    def total_bytes(self) -> int:
        """Bytes moved in both directions since round 0."""
        return self.total_down + self.total_up

    def record(self, traffic: RoundTraffic) -> Ledger:
        """Return a new ledger with ``traffic`` added."""
        totals = RoundTotals(traffic.round, traffic.bytes_down, traffic.bytes_up)
        return replace(
            self,
            total_down=self.total_down + totals.bytes_down,
            total_up=self.total_up + totals.bytes_up,
            rounds=(*self.rounds, totals),
        )


@dataclass(frozen=True)
class RoundTotals:
    """Totals of one round: what :class:`Ledger` keeps per round."""

    round: int
    bytes_down: int
    bytes_up: int


def simulated_link_seconds(nbytes: int, mbit_per_s: float) -> float:
    """Seconds to move ``nbytes`` over a link of ``mbit_per_s`` megabits per second."""
    return nbytes * 8 / (mbit_per_s * 1e6)
