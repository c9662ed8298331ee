"""The one check that a client's reply can be aggregated.

A client sends back the channels it received, with the same tensor names and
shapes, trained on at least one example, with finite values in everything it
uploads and everything it keeps. Anything else is that client's recorded
failure, never a crash of the round and never absorbed into the model.

Example
-------
>>> import torch
>>> from fedsim.messages import ClientUpdate
>>> plan = {"model": {"w": torch.zeros(2)}}
>>> ok = ClientUpdate(client_id=0, upload={"model": {"w": torch.ones(2)}},
...                   num_examples=4, train_loss=0.0, train_seconds=0.0)
>>> reply_problem(ok, plan) is None
True
>>> bad = ClientUpdate(client_id=0, upload={"model": {"w": torch.ones(3)}},
...                    num_examples=4, train_loss=0.0, train_seconds=0.0)
>>> reply_problem(bad, plan)
"channel 'model': w has shape (3,), expected (2,)"
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from fedsim.messages import ClientUpdate
from fedsim.params import is_finite


def reply_problem(
    update: ClientUpdate, payload: Mapping[str, Mapping[str, Tensor]]
) -> str | None:
    """Why ``update`` cannot be aggregated against ``payload``; None when it can."""
    if update.num_examples <= 0:
        return "update trained on no examples"
    if set(update.upload) != set(payload):
        return (
            f"update sent channels {sorted(update.upload)}, expected {sorted(payload)}"
        )
    for channel, sent in payload.items():
        got = update.upload[channel]
        if set(got) != set(sent):
            missing, extra = sorted(set(sent) - set(got)), sorted(set(got) - set(sent))
            return f"channel {channel!r}: missing {missing}, unexpected {extra}"
        for name, t in sent.items():
            if tuple(got[name].shape) != tuple(t.shape):
                return (
                    f"channel {channel!r}: {name} has shape "
                    f"{tuple(got[name].shape)}, expected {tuple(t.shape)}"
                )
        if not is_finite(got):
            return f"non-finite values in channel {channel!r}"
    for namespace, kept in update.keep.items():
        if not is_finite(kept):
            return f"non-finite values in kept state {namespace!r}"
    return None
