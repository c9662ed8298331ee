"""The one check that a client's reply can be aggregated.

A client sends back the channels the round's plan declares (``TrainPlan.upload``:
channel -> tensor name -> shape), trained on at least one example, with finite
values in everything it uploads and everything it keeps. Anything else is that
client's recorded failure, never a crash of the round and never absorbed into
the model.

Example
-------
>>> import torch
>>> from fedsim.messages import ClientUpdate
>>> plan = {"model": {"w": (2,)}}
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

from fedsim.messages import ClientUpdate
from fedsim.params import is_finite
from fedsim.strategy.base import UploadSpec


def reply_problem(update: ClientUpdate, expected: UploadSpec) -> str | None:
    """Why ``update`` cannot be aggregated against the plan's ``expected`` upload."""
    if update.num_examples <= 0:
        return "update trained on no examples"
    if set(update.upload) != set(expected):
        return (
            f"update sent channels {sorted(update.upload)}, expected {sorted(expected)}"
        )
    for channel, layout in expected.items():
        got = update.upload[channel]
        if set(got) != set(layout):
            missing, extra = (
                sorted(set(layout) - set(got)),
                sorted(set(got) - set(layout)),
            )
            return f"channel {channel!r}: missing {missing}, unexpected {extra}"
        for name, shape in layout.items():
            if tuple(got[name].shape) != tuple(shape):
                return (
                    f"channel {channel!r}: {name} has shape "
                    f"{tuple(got[name].shape)}, expected {tuple(shape)}"
                )
        if not is_finite(got):
            return f"non-finite values in channel {channel!r}"
    for namespace, kept in update.keep.items():
        if not is_finite(kept):
            return f"non-finite values in kept state {namespace!r}"
    return None
