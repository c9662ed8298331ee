"""Codecs: one tensor in, the buffers that would go on the wire out, and back.

A codec's :meth:`~Codec.encode` returns an :class:`Encoded`: the actual
buffers (values, indices, scales) and the tensor's shape and dtype; its size
on the wire is the sum of the buffers' ``nbytes`` plus a stated header
(:data:`HEADER_FIXED` + :data:`HEADER_PER_DIM` per dimension: codec id,
dtype, flags, rank and the shape), measured, not computed from a formula.

Rules (``x`` the tensor, flattened or as rows ``(rows, row_numel)``):

``none``    the values as they are.
``fp16``, ``bf16``  the values cast to the half type.
``int8``, ``int4``  symmetric uniform quantization: ``scale = max|x| / q``
    with ``q = 127`` or ``7``, ``code = round(x / scale)`` (or
    ``floor(x / scale + u)``, ``u ~ U[0, 1)`` drawn from an explicit generator,
    with stochastic rounding), one fp32 scale per tensor or per row (first
    dimension; a tensor of rank < 2 has one); int4 codes are packed two per byte.
``topk``    the ``ceil(fraction * numel)`` largest magnitudes: fp32 values
    and int32 flat indices.
``sign``    one bit per element (``x >= 0``), packed eight per byte, and one
    fp32 scale ``mean|x|``.

Example
-------
>>> import torch
>>> codec = UniformQuant(bits=8, per_row=True)
>>> enc = codec.encode(torch.tensor([[127.0, -64.0], [0.25, 0.0]]))
>>> enc.nbytes  # 4 one-byte codes + 2 fp32 scales + a 12-byte header
24
>>> codec.decode(enc).tolist()[0]
[127.0, -64.0]
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

HEADER_FIXED = 4
"""Header bytes of every encoded tensor: codec id, dtype, flags, rank."""

HEADER_PER_DIM = 4
"""Header bytes per dimension of the tensor's shape (one uint32 each)."""


@dataclass(frozen=True)
class Encoded:
    """One tensor as it would travel: its buffers, shape and original dtype."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    buffers: dict[str, Tensor]

    @property
    def header_nbytes(self) -> int:
        """The stated header: :data:`HEADER_FIXED` + the shape."""
        return HEADER_FIXED + HEADER_PER_DIM * len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: every buffer's ``nbytes`` plus the header."""
        return self.header_nbytes + sum(b.nbytes for b in self.buffers.values())


class Codec(ABC):
    """Encode a tensor into wire buffers and decode them back."""

    name = "codec"
    biased = False
    """Whether error feedback is on by default (top-k and sign drop mass)."""

    @abstractmethod
    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Encoded:
        """The buffers that carry ``x`` (``generator``: stochastic rounding)."""

    @abstractmethod
    def decode(self, encoded: Encoded) -> Tensor:
        """The tensor the receiver reconstructs, in the original dtype."""


class Raw(Codec):
    """``none``: the values as they are (any dtype)."""

    name = "none"

    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Encoded:
        """See :meth:`Codec.encode`."""
        return Encoded(tuple(x.shape), x.dtype, {"values": x.detach().clone()})

    def decode(self, encoded: Encoded) -> Tensor:
        """See :meth:`Codec.decode`."""
        return encoded.buffers["values"].clone()


class Cast(Codec):
    """``fp16`` / ``bf16``: the values cast to a half type."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.name = "fp16" if dtype == torch.float16 else "bf16"

    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Encoded:
        """See :meth:`Codec.encode`."""
        return Encoded(tuple(x.shape), x.dtype, {"values": x.detach().to(self.dtype)})

    def decode(self, encoded: Encoded) -> Tensor:
        """See :meth:`Codec.decode`."""
        return encoded.buffers["values"].to(encoded.dtype)


class UniformQuant(Codec):
    """``int8`` / ``int4``: symmetric uniform codes and fp32 scales."""

    def __init__(
        self, bits: int, *, per_row: bool = True, stochastic: bool = False
    ) -> None:
        self.bits, self.per_row, self.stochastic = bits, per_row, stochastic
        self.levels = 2 ** (bits - 1) - 1  # 127 or 7 on each side of zero
        self.name = f"int{bits}"

    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Encoded:
        """See :meth:`Codec.encode`."""
        rows = _rows(x, self.per_row)  # (R, C)
        peak = rows.abs().amax(dim=1, keepdim=True)  # (R, 1)
        scale = torch.where(peak > 0, peak / self.levels, torch.ones_like(peak))
        scaled = rows / scale
        if self.stochastic:
            noise = torch.rand(scaled.shape, generator=generator, dtype=scaled.dtype)
            codes = torch.floor(scaled + noise)
        else:
            codes = torch.round(scaled)
        codes = codes.clamp(-self.levels, self.levels).to(torch.int8).reshape(-1)
        values = codes if self.bits == 8 else _pack_nibbles(codes)
        buffers = {"values": values, "scales": scale.reshape(-1).float()}
        return Encoded(tuple(x.shape), x.dtype, buffers)

    def decode(self, encoded: Encoded) -> Tensor:
        """See :meth:`Codec.decode`."""
        numel = math.prod(encoded.shape)
        values = encoded.buffers["values"]
        codes = values if self.bits == 8 else _unpack_nibbles(values, numel)
        scales = encoded.buffers["scales"]
        rows = codes.float().reshape(len(scales), -1) * scales[:, None]
        return rows.reshape(encoded.shape).to(encoded.dtype)


class TopK(Codec):
    """``topk``: the largest ``fraction`` of the magnitudes, with their indices."""

    biased = True

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.name = "topk"

    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Encoded:
        """See :meth:`Codec.encode`."""
        flat = x.detach().reshape(-1).float()
        k = min(flat.numel(), math.ceil(self.fraction * flat.numel()))
        index = torch.topk(flat.abs(), k, sorted=False).indices
        buffers = {"values": flat[index], "indices": index.to(torch.int32)}
        return Encoded(tuple(x.shape), x.dtype, buffers)

    def decode(self, encoded: Encoded) -> Tensor:
        """See :meth:`Codec.decode`."""
        flat = torch.zeros(math.prod(encoded.shape))
        flat[encoded.buffers["indices"].long()] = encoded.buffers["values"]
        return flat.reshape(encoded.shape).to(encoded.dtype)


class Sign(Codec):
    """``sign``: one bit per element and the mean magnitude as the scale."""

    biased = True
    name = "sign"

    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Encoded:
        """See :meth:`Codec.encode`."""
        flat = x.detach().reshape(-1).float()
        scale = flat.abs().mean() if flat.numel() else torch.zeros(())
        buffers = {"bits": _pack_bits(flat >= 0), "scale": scale.reshape(1)}
        return Encoded(tuple(x.shape), x.dtype, buffers)

    def decode(self, encoded: Encoded) -> Tensor:
        """See :meth:`Codec.decode`."""
        numel = math.prod(encoded.shape)
        signs = _unpack_bits(encoded.buffers["bits"], numel).float() * 2 - 1
        flat = signs * encoded.buffers["scale"]
        return flat.reshape(encoded.shape).to(encoded.dtype)


# ---------------------------------------------------------------- bit packing
def _rows(x: Tensor, per_row: bool) -> Tensor:
    """``x`` as float rows: ``(shape[0], rest)`` per row, else ``(1, numel)``."""
    if per_row and x.dim() >= 2:
        return x.detach().float().reshape(x.shape[0], -1)
    return x.detach().float().reshape(1, -1)


def _pack_nibbles(codes: Tensor) -> Tensor:
    """Codes in [-7, 7] as ``codes + 8``, two per byte (low nibble first)."""
    nibbles = (codes.to(torch.int16) + 8).to(torch.uint8)
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, nibbles.new_zeros(1)])
    pairs = nibbles.reshape(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def _unpack_nibbles(packed: Tensor, numel: int) -> Tensor:
    low, high = packed & 0x0F, packed >> 4
    nibbles = torch.stack([low, high], dim=1).reshape(-1)[:numel]
    return (nibbles.to(torch.int16) - 8).to(torch.int8)


_BIT = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)


def _pack_bits(bits: Tensor) -> Tensor:
    """Booleans, eight per byte (element ``i`` in bit ``i % 8``)."""
    padded = torch.zeros(8 * math.ceil(bits.numel() / 8), dtype=torch.uint8)
    padded[: bits.numel()] = bits.to(torch.uint8)
    return (padded.reshape(-1, 8) * _BIT).sum(dim=1).to(torch.uint8)


def _unpack_bits(packed: Tensor, numel: int) -> Tensor:
    bits = (packed[:, None] & _BIT) > 0
    return bits.reshape(-1)[:numel]
