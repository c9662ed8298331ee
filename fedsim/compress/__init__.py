"""Encodings of what travels: codecs, error feedback and the measured link.

:mod:`fedsim.compress.codecs` holds the codecs (tensor -> wire buffers ->
tensor); :mod:`fedsim.compress.link` applies them to the model channel of a
round, both directions, with error feedback.
"""

from fedsim.compress.codecs import Codec, Encoded
from fedsim.compress.link import UPLINK_RESIDUAL, Link, build_codec, without_residual

__all__ = [
    "UPLINK_RESIDUAL",
    "Codec",
    "Encoded",
    "Link",
    "build_codec",
    "without_residual",
]
