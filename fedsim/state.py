"""Per-client persistent state that outlives actors: pFedPara's local factors.

State is kept on disk under the run directory, one file per client, so any
number of clients fits, the driver's memory stays flat, and a resumed run finds
it where it was left.

Example
-------
>>> import tempfile, torch
>>> store = ClientStateStore(tempfile.mkdtemp())
>>> store.get(4) is None
True
>>> store.put(4, {"fc.x2": torch.ones(2)})
>>> store.get(4)["fc.x2"].tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from fedsim.params import Tensors


class ClientStateStore:
    """Client id -> named tensors, one ``.pt`` file per client."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, client_id: int) -> Path:
        return self.directory / f"{client_id}.pt"

    def get(self, client_id: int) -> Tensors | None:
        """The client's tensors, or None before its first round."""
        path = self._path(client_id)
        if not path.exists():
            return None
        state: Tensors = torch.load(path, map_location="cpu", weights_only=True)
        return state

    def put(self, client_id: int, tensors: Mapping[str, Tensor]) -> None:
        """Save the client's tensors atomically (write, then rename)."""
        tmp = self._path(client_id).with_suffix(".tmp")
        torch.save(dict(tensors), tmp)
        os.replace(tmp, self._path(client_id))
