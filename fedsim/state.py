"""Per-client state that outlives actors, versioned by round.

What a client keeps between its rounds (pFedPara's W2, FedPer's head, SCAFFOLD's
c_i, FedDyn's gradient term) lives on disk under the run directory, one file
per client and version, so any number of clients fits and the driver's memory
holds only an index. A version is named by the round that wrote it
(``<client>@<round>.pt``): a write never replaces what an earlier checkpoint
refers to, so a run that crashes between checkpoints resumes with exactly the
client states of the checkpointed round (:meth:`ClientStateStore.rollback`).
Every write deletes the client's versions that no checkpoint can need: it keeps
the newest one before the last checkpoint's round (what a resume reads) and
the newest one (what the next checkpoint will need), so a client has at most two
files, whether checkpoints are frequent, sparse or off.
:meth:`ClientStateStore.commit`, called with every checkpoint, moves that line.

Files hold plain tensors (``"namespace/name"`` keys) and load with
``torch.load(weights_only=True)``: no code runs on load.

Example
-------
>>> import tempfile, torch
>>> store = ClientStateStore(tempfile.mkdtemp())
>>> store.get(4)
{}
>>> store.put(4, 0, {"local": {"fc.x2": torch.ones(2)}})
>>> store.commit(2)  # a checkpoint taken after round 1
>>> store.put(4, 3, {"local": {"fc.x2": torch.zeros(2)}})
>>> store.put(4, 5, {"local": {"fc.x2": torch.zeros(2)}})  # drops 3
>>> store.get(4)["local"]["fc.x2"].tolist()
[0.0, 0.0]
>>> sorted(p.name for p in store.directory.iterdir())
['4@0.pt', '4@5.pt']
>>> store.rollback(2)  # resume from that checkpoint
>>> store.get(4)["local"]["fc.x2"].tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedsim.params import Tensors

KeptState = dict[str, Tensors]


def save_atomically(obj: Any, path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` through a temporary file and a rename.

    Serialized in memory first, so that a full disk fails as the write's own
    ``OSError`` (ENOSPC: "no space left on device"), where torch's file writer
    reports a cryptic ``RuntimeError``; the temporary file is removed and
    ``path`` keeps its previous version.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = path.with_suffix(".tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(buffer.getbuffer())
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


class ClientStateStore:
    """Client id -> namespaced tensors, one ``<client>@<round>.pt`` per version."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)  # made on the first put
        self._versions: dict[int, list[int]] = {}  # client -> sorted rounds
        self._written: set[int] = set()  # clients written since the last commit
        self._checkpointed = 0  # the round the last checkpoint resumes at
        for path in self.directory.glob("*@*.pt"):
            client, _, rnd = path.stem.partition("@")
            self._versions.setdefault(int(client), []).append(int(rnd))
        for rounds in self._versions.values():
            rounds.sort()

    def _path(self, client_id: int, server_round: int) -> Path:
        return self.directory / f"{client_id}@{server_round}.pt"

    def get(self, client_id: int) -> KeptState:
        """The client's newest kept state; empty before its first round."""
        rounds = self._versions.get(client_id)
        if not rounds:
            return {}
        flat: Tensors = torch.load(
            self._path(client_id, rounds[-1]), map_location="cpu", weights_only=True
        )
        kept: KeptState = {}
        for key, tensor in flat.items():
            namespace, _, name = key.partition("/")
            kept.setdefault(namespace, {})[name] = tensor
        return kept

    def put(
        self,
        client_id: int,
        server_round: int,
        kept: Mapping[str, Mapping[str, Tensor]],
    ) -> None:
        """Save what the client keeps after ``server_round`` (write, then rename)."""
        flat = {
            f"{ns}/{name}": t for ns, group in kept.items() for name, t in group.items()
        }
        path = self._path(client_id, server_round)
        self.directory.mkdir(parents=True, exist_ok=True)
        save_atomically(flat, path)
        rounds = self._versions.setdefault(client_id, [])
        if server_round not in rounds:
            rounds.append(server_round)
            rounds.sort()
        self._written.add(client_id)
        self._drop_unneeded(client_id)

    def _drop_unneeded(self, client_id: int) -> None:
        """Delete the client's versions that no checkpoint, past or next, reads.

        The last checkpoint reads the newest version before its round; the next
        one will read the newest version there is. Nothing reads the others.
        """
        rounds = self._versions[client_id]
        before = [r for r in rounds if r < self._checkpointed]
        keep = {rounds[-1], *before[-1:]}
        for r in rounds:
            if r not in keep:
                self._path(client_id, r).unlink(missing_ok=True)
        self._versions[client_id] = sorted(keep)

    def commit(self, next_round: int) -> None:
        """A checkpoint of ``next_round`` is written: drop versions it cannot need.

        Keeps each client's newest version before ``next_round`` (what a resume
        from this checkpoint reads) and anything newer.
        """
        self._checkpointed = next_round
        for client_id in sorted(self._written):
            self._drop_unneeded(client_id)
        self._written.clear()

    def rollback(self, next_round: int) -> None:
        """Forget versions written at or after ``next_round`` (resume from there)."""
        self._checkpointed = next_round
        for client_id, rounds in self._versions.items():
            for r in rounds:
                if r >= next_round:
                    self._path(client_id, r).unlink(missing_ok=True)
            self._versions[client_id] = [r for r in rounds if r < next_round]
        for tmp in self.directory.glob("*.tmp"):
            tmp.unlink()
