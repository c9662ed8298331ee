"""A model's state as named tensors: which travel, which stay local, and their bytes.

Parameters travel keyed by their ``state_dict`` name. For pFedPara the W2 factors
(``x2``, ``y2``, ``t2`` of personalized layers) stay on the client; everything else
travels.

Example
-------
>>> import torch
>>> tensors = {"w": torch.zeros(3, 4), "b": torch.zeros(4, dtype=torch.float16)}
>>> payload_nbytes(tensors)
56
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_modules.layers import local_state_names

Tensors = dict[str, Tensor]


def payload_nbytes(tensors: Mapping[str, Tensor]) -> int:
    """Bytes on the wire for ``tensors``: the sum of numel x element size."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def moved(tensors: Mapping[str, Tensor], device: torch.device) -> Tensors:
    """Detached copies of ``tensors`` on ``device``, one transfer per dtype.

    A model's state is a hundred or more small tensors; copying each across the
    host/GPU boundary on its own costs a synchronizing copy apiece. Here each
    dtype group is packed on its source device, moved once and unpacked. On the
    CPU every result owns its own storage (a view would carry the whole packed
    buffer with it when pickled); on an accelerator the results are views of
    the moved buffer, for a caller that copies them into a model.

    >>> out = moved({"a": torch.ones(2, 2), "b": torch.zeros(3)}, torch.device("cpu"))
    >>> {k: tuple(v.shape) for k, v in out.items()}
    {'a': (2, 2), 'b': (3,)}
    """
    groups: dict[tuple[torch.dtype, torch.device], list[str]] = {}
    for name, t in tensors.items():
        groups.setdefault((t.dtype, t.device), []).append(name)
    out: Tensors = {}
    for (_, source), names in groups.items():
        parts = [tensors[n].detach() for n in names]
        if source == device or len(parts) == 1:
            out.update(
                {n: t.to(device, copy=True) for n, t in zip(names, parts, strict=True)}
            )
            continue
        packed = torch.cat([t.reshape(-1) for t in parts]).to(device)
        pieces = packed.split([t.numel() for t in parts])
        for n, t, piece in zip(names, parts, pieces, strict=True):
            # On an accelerator the caller copies them into the model.
            out[n] = (
                piece.view(t.shape).clone()
                if device.type == "cpu"
                else piece.view(t.shape)
            )
    return {n: out[n] for n in tensors}  # the caller's order


@dataclass(frozen=True)
class StateLayout:
    """Which ``state_dict`` entries of a model travel and which stay on the client.

    Attributes
    ----------
    global_names
        Sorted names of the tensors sent to and averaged by the server.
    local_names
        Sorted names of the tensors kept in per-client state (pFedPara's W2).
    """

    global_names: tuple[str, ...]
    local_names: tuple[str, ...]

    @classmethod
    def of(
        cls, model: nn.Module, also_local: frozenset[str] = frozenset()
    ) -> StateLayout:
        """Split ``model``'s state: the layers' own local names plus ``also_local``.

        ``also_local`` is what a strategy keeps on clients beyond pFedPara's W2
        (FedPer's head, a local-only model's everything).
        """
        local = local_state_names(model) | also_local
        names = list(model.state_dict().keys())
        return cls(
            global_names=tuple(sorted(n for n in names if n not in local)),
            local_names=tuple(sorted(n for n in names if n in local)),
        )

    def split(self, state: Mapping[str, Tensor]) -> tuple[Tensors, Tensors]:
        """Return detached CPU copies of (global tensors, local tensors)."""
        glob = moved({n: state[n] for n in self.global_names}, torch.device("cpu"))
        loc = moved({n: state[n] for n in self.local_names}, torch.device("cpu"))
        return glob, loc

    def num_global(self, model: nn.Module) -> int:
        """Number of elements that travel each way per client per round."""
        state = model.state_dict()
        return sum(state[n].numel() for n in self.global_names)


def last_layer_names(model: nn.Module, k: int) -> frozenset[str]:
    """State-dict names of the last ``k`` layers that hold parameters (FedPer's head).

    A layer is a module with parameters of its own, in registration order.

    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> sorted(last_layer_names(net, 1))
    ['2.bias', '2.weight']
    """
    layers = [
        (prefix, module)
        for prefix, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    ]
    names: set[str] = set()
    for prefix, module in layers[-k:]:
        for name, _ in module.named_parameters(recurse=False):
            names.add(f"{prefix}.{name}" if prefix else name)
    return frozenset(names)


def initial_state(model: nn.Module, layout: StateLayout) -> Tensors:
    """The global tensors of a freshly built model (the server's round-0 state)."""
    glob, _ = layout.split(model.state_dict())
    return glob


def is_finite(tensors: Mapping[str, Tensor]) -> bool:
    """True when every floating tensor holds only finite values."""
    return all(
        bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point()
    )
