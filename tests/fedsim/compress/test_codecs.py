"""Each codec against a hand-written reference of its rule, and its measured bytes.

The references work on Python floats, element by element, with none of the
codecs' tensor code: what they share with the codecs is only the rule.
"""

from __future__ import annotations

import math
import struct

import pytest
import torch

from fedsim.compress.codecs import (
    HEADER_FIXED,
    HEADER_PER_DIM,
    Cast,
    Codec,
    Encoded,
    Raw,
    Sign,
    TopK,
    UniformQuant,
)

X = torch.tensor([[0.9, -0.31, 0.02], [-2.5, 0.4, 1.25]])
"""A small (2, 3) tensor: rows of different ranges, no ties in magnitude."""


def buffer_bytes(enc: Encoded) -> int:
    return sum(b.numel() * b.element_size() for b in enc.buffers.values())


def header(shape: tuple[int, ...]) -> int:
    return HEADER_FIXED + HEADER_PER_DIM * len(shape)


# ------------------------------------------------------------------ references
def ref_quant(rows: list[list[float]], levels: int) -> list[list[float]]:
    out = []
    for row in rows:
        peak = max(abs(v) for v in row)
        scale = peak / levels if peak > 0 else 1.0
        out.append([max(-levels, min(levels, round(v / scale))) * scale for v in row])
    return out


def ref_fp16(v: float) -> float:
    value: float = struct.unpack("<e", struct.pack("<e", v))[0]
    return value


def ref_bf16(v: float) -> float:
    """Round-to-nearest-even on the top 16 bits of the float32 pattern."""
    bits = struct.unpack("<I", struct.pack("<f", v))[0]
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    value: float = struct.unpack("<f", struct.pack("<I", bits))[0]
    return value


def ref_topk(values: list[float], fraction: float) -> list[float]:
    k = math.ceil(fraction * len(values))
    keep = sorted(range(len(values)), key=lambda i: -abs(values[i]))[:k]
    return [v if i in keep else 0.0 for i, v in enumerate(values)]


def ref_sign(values: list[float]) -> list[float]:
    scale = sum(abs(v) for v in values) / len(values)
    return [scale if v >= 0 else -scale for v in values]


def f32(values: list[float]) -> list[float]:
    return torch.tensor(values).tolist()  # the references' floats, as float32


# ------------------------------------------------------------------ round trips
def roundtrip(codec: Codec, x: torch.Tensor) -> torch.Tensor:
    return codec.decode(codec.encode(x))


def test_none_returns_the_values_and_their_bytes() -> None:
    enc = Raw().encode(X)
    assert torch.equal(Raw().decode(enc), X)
    assert enc.nbytes == 6 * 4 + header((2, 3))


@pytest.mark.parametrize(
    ("dtype", "ref"), [(torch.float16, ref_fp16), (torch.bfloat16, ref_bf16)]
)
def test_half_casts_round_like_the_reference(dtype: torch.dtype, ref) -> None:  # type: ignore[no-untyped-def]
    codec = Cast(dtype)
    got = roundtrip(codec, X)
    expected = [[ref(v) for v in row] for row in X.tolist()]
    assert got.dtype == torch.float32
    assert got.tolist() == expected
    assert codec.encode(X).nbytes == 6 * 2 + header((2, 3))


@pytest.mark.parametrize(("bits", "levels"), [(8, 127), (4, 7)])
def test_uniform_quantization_per_row_and_per_tensor(bits: int, levels: int) -> None:
    rows = X.tolist()
    per_row = UniformQuant(bits, per_row=True)
    torch.testing.assert_close(
        roundtrip(per_row, X), torch.tensor(ref_quant(rows, levels))
    )
    per_tensor = UniformQuant(bits, per_row=False)
    flat = ref_quant([[v for row in rows for v in row]], levels)[0]
    torch.testing.assert_close(
        roundtrip(per_tensor, X), torch.tensor(flat).reshape(2, 3)
    )
    # codes: one byte each (int8) or two per byte (int4); fp32 scales
    code_bytes = 6 if bits == 8 else 3
    for codec, scales in ((per_row, 2), (per_tensor, 1)):
        enc = codec.encode(X)
        assert enc.nbytes == buffer_bytes(enc) + header((2, 3))
        assert buffer_bytes(enc) == code_bytes + 4 * scales


def test_int4_packs_two_codes_per_byte_low_nibble_first() -> None:
    x = torch.tensor([-7.0, 0.0, 7.0])  # scale 1: codes -7, 0, 7 -> nibbles 1, 8, 15
    enc = UniformQuant(4, per_row=False).encode(x)
    assert enc.buffers["values"].tolist() == [1 | 8 << 4, 15]
    assert enc.nbytes == 2 + 4 + header((3,))


def test_stochastic_rounding_follows_its_generator_and_is_unbiased() -> None:
    x = torch.tensor([0.3, -0.7, 1.0, 0.05])
    codec = UniformQuant(8, per_row=False, stochastic=True)
    got = codec.decode(codec.encode(x, torch.Generator().manual_seed(5)))
    # reference: floor(v / s + u) with the same generator's uniform draws
    u = torch.rand(4, generator=torch.Generator().manual_seed(5)).tolist()
    scale = 1.0 / 127
    expected = [
        math.floor(v / scale + w) * scale for v, w in zip(x.tolist(), u, strict=True)
    ]
    torch.testing.assert_close(got, torch.tensor(expected))
    again = codec.decode(codec.encode(x, torch.Generator().manual_seed(5)))
    assert torch.equal(got, again)
    gen = torch.Generator().manual_seed(0)
    mean = sum(codec.decode(codec.encode(x, gen)) for _ in range(2000)) / 2000
    torch.testing.assert_close(mean, x, atol=1e-3, rtol=0)  # unbiased on average


def test_topk_keeps_the_largest_fraction_with_int32_indices() -> None:
    codec = TopK(0.34)  # ceil(0.34 * 6) = 3 entries
    got = roundtrip(codec, X)
    expected = ref_topk([v for row in X.tolist() for v in row], 0.34)
    assert got.reshape(-1).tolist() == f32(expected)
    enc = codec.encode(X)
    assert enc.buffers["indices"].dtype == torch.int32
    assert enc.nbytes == 3 * 4 + 3 * 4 + header((2, 3))


def test_sign_sends_one_bit_per_entry_and_the_mean_magnitude() -> None:
    x = torch.tensor([0.5, -1.0, 0.0, 2.0, -0.25, 0.1, 0.3, -0.2, 4.0])
    got = roundtrip(Sign(), x)
    torch.testing.assert_close(got, torch.tensor(ref_sign(x.tolist())))
    enc = Sign().encode(x)
    # bits 1,0,1,1,0,1,1,0 | 1 -> 0b01101101, 0b1
    assert enc.buffers["bits"].tolist() == [0b01101101, 1]
    assert enc.nbytes == 2 + 4 + header((9,))


def test_zero_tensors_survive_every_codec() -> None:
    zeros = torch.zeros(3, 2)
    for codec in (UniformQuant(8), UniformQuant(4), TopK(0.5), Sign(), Raw()):
        assert torch.equal(roundtrip(codec, zeros).abs(), zeros), codec.name
