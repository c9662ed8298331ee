"""Encodings of what travels: codecs, error feedback and every channel on the wire.

:mod:`fedsim.compress.codecs` holds the codecs (tensor -> wire buffers ->
tensor); :mod:`fedsim.compress.wire` applies them to every floating channel of
a round, both directions, with error feedback per channel.
"""

from fedsim.compress.codecs import Codec, Encoded
from fedsim.compress.wire import (
    UPLINK_RESIDUAL,
    Wire,
    build_codec,
    residual_namespace,
    without_residual,
)

__all__ = [
    "UPLINK_RESIDUAL",
    "Codec",
    "Encoded",
    "Wire",
    "build_codec",
    "residual_namespace",
    "without_residual",
]
