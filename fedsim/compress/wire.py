"""The model channel on the wire: encoded, measured and decoded at the boundary.

The driver hands every round's download to :meth:`Wire.download` and every
reply to :meth:`Wire.receive`; both encode with the direction's codec, measure
the encoded buffers (the bytes that count) and decode, so the clients, the
reply check and the strategy only ever see plain tensors:

- downloads encode the global model itself (every client gets the same
  bytes; a delta would need to know what each client last received);
- uploads encode the client's delta to the model it received, and the
  server's copy of the upload is that model plus the decoded delta;
- with error feedback, what a codec dropped is added to the next value it
  encodes: the client's residual is a kept-state namespace
  (:data:`UPLINK_RESIDUAL`, committed with the round, versioned and
  checkpointed with every kept state), the server's is part of the server
  state.

Only floating tensors of the ``"model"`` channel are encoded; integer
tensors (counters) and every other channel (SCAFFOLD's controls) travel as
they are, and are measured as they are.

Example
-------
>>> import torch
>>> from fedsim.config import CodecConfig, CommConfig
>>> wire = Wire(CommConfig(uplink=CodecConfig(codec="int8")), seed=0)
>>> sent = wire.encode_up(0, 3, {"w": torch.full((2, 2), 0.5)},
...                       {"w": torch.zeros(2, 2)}, residual={})
>>> sent.nbytes  # 4 one-byte codes + one fp32 scale + a 12-byte header
20
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from fedsim.compress.codecs import Cast, Codec, Encoded, Raw, Sign, TopK, UniformQuant
from fedsim.config import CodecConfig, CommConfig
from fedsim.messages import MODEL, Channels, ClientUpdate
from fedsim.params import Tensors, is_finite, payload_nbytes

UPLINK_RESIDUAL = "uplink_residual"
"""The kept-state namespace of a client's error-feedback residual."""

_RAW = Raw()


def build_codec(cfg: CodecConfig) -> Codec:
    """The codec ``cfg`` names.

    >>> build_codec(CodecConfig(codec="int4", scale="tensor")).name
    'int4'
    """
    per_row = cfg.scale == "row"
    match cfg.codec:
        case "none":
            return _RAW
        case "fp16":
            return Cast(torch.float16)
        case "bf16":
            return Cast(torch.bfloat16)
        case "int8" | "int4":
            bits = 8 if cfg.codec == "int8" else 4
            return UniformQuant(bits, per_row=per_row, stochastic=cfg.stochastic)
        case "topk":
            return TopK(cfg.fraction)
        case "sign":
            return Sign()


@dataclass(frozen=True)
class Sent:
    """Tensors after a trip: their encodings, bytes, decoded values, residual."""

    encoded: dict[str, Encoded]
    decoded: Tensors
    residual: Tensors

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: every encoded tensor's buffers and header."""
        return sum(e.nbytes for e in self.encoded.values())


def send(
    codec: Codec,
    tensors: Mapping[str, Tensor],
    residual: Mapping[str, Tensor] | None,
    generator: torch.Generator,
) -> Sent:
    """Encode ``tensors`` (plus ``residual`` when error feedback is on).

    ``residual`` None: no error feedback (the returned residual is empty).
    The new residual is what the codec dropped: ``value - decode(encode(value))``.
    """
    encoded: dict[str, Encoded] = {}
    decoded: Tensors = {}
    left: Tensors = {}
    for name, t in tensors.items():
        if not t.is_floating_point() or codec is _RAW:
            encoded[name] = _RAW.encode(t)
            decoded[name] = t
            continue
        value = t if residual is None or name not in residual else t + residual[name]
        encoded[name] = codec.encode(value, generator)
        decoded[name] = codec.decode(encoded[name])
        if residual is not None:
            left[name] = value - decoded[name]
    return Sent(encoded, decoded, left)


class Wire:
    """The two directions of the model channel for one run."""

    def __init__(self, comm: CommConfig, seed: int) -> None:
        self.seed = seed
        self.up, self.down = build_codec(comm.uplink), build_codec(comm.downlink)
        self.up_feedback = _feedback(comm.uplink, self.up)
        self.down_feedback = _feedback(comm.downlink, self.down)

    # ------------------------------------------------------------ downlink
    def download(
        self, server_round: int, payload: Channels, residual: Tensors
    ) -> tuple[dict[str, Tensors], dict[str, int], Tensors]:
        """(decoded payload, bytes per channel, next server residual)."""
        sizes = {ch: payload_nbytes(t) for ch, t in payload.items()}
        if MODEL not in payload or self.down is _RAW:
            return {ch: dict(t) for ch, t in payload.items()}, sizes, residual
        gen = _generator(self.seed, server_round, -1)
        sent = send(
            self.down, payload[MODEL], residual if self.down_feedback else None, gen
        )
        sizes[MODEL] = sent.nbytes
        decoded = {ch: dict(t) for ch, t in payload.items()}
        decoded[MODEL] = sent.decoded
        return decoded, sizes, sent.residual

    # ------------------------------------------------------------ uplink
    def encode_up(
        self,
        server_round: int,
        client_id: int,
        trained: Mapping[str, Tensor],
        received: Mapping[str, Tensor],
        residual: Mapping[str, Tensor],
        base: Mapping[str, Tensor] | None = None,
    ) -> Sent:
        """The client's delta ``trained - received`` through the uplink codec.

        The decoded values are the server's copy of the upload:
        ``base + decode(encode(delta + residual))``, where ``base`` is the
        server's own (unencoded) model, ``received`` by default: what the
        downlink codec lost never enters the server's model.
        """
        base = received if base is None else base
        delta = {
            n: t - received[n] if t.is_floating_point() else t
            for n, t in trained.items()
        }
        gen = _generator(self.seed, server_round, client_id)
        sent = send(self.up, delta, residual if self.up_feedback else None, gen)
        model = {
            n: base[n] + d if d.is_floating_point() else d
            for n, d in sent.decoded.items()
        }
        return replace(sent, decoded=model)

    def receive(
        self,
        server_round: int,
        update: ClientUpdate,
        sent: Mapping[str, Tensor],
        received: Mapping[str, Tensor],
        kept: Callable[[int], Channels],
    ) -> tuple[ClientUpdate, dict[str, int]]:
        """The reply as the server decodes it, and its measured bytes per channel.

        ``sent`` is the model the server encoded for this client, ``received``
        what the client decoded: the client's delta is taken from the latter
        and added to the former.

        A reply whose model does not match what the client received (names,
        shapes, non-finite values) is passed on as it came, measured raw: the
        reply check rejects it. ``kept(client_id)`` is read only with error
        feedback (the client's residual).
        """
        sizes = {ch: payload_nbytes(t) for ch, t in update.upload.items()}
        model = update.upload.get(MODEL)
        if self.up is _RAW or model is None or not _matches(model, received):
            return update, sizes
        cid = update.client_id
        residual = kept(cid).get(UPLINK_RESIDUAL, {}) if self.up_feedback else {}
        up = self.encode_up(server_round, cid, model, received, residual, sent)
        sizes[MODEL] = up.nbytes
        keep = dict(update.keep)
        if self.up_feedback:
            keep[UPLINK_RESIDUAL] = up.residual
        upload = {**update.upload, MODEL: up.decoded}
        return replace(update, upload=upload, keep=keep), sizes


def without_residual(kept: Channels) -> Channels:
    """A client's kept state as its training sees it: no codec residual."""
    return {ns: t for ns, t in kept.items() if ns != UPLINK_RESIDUAL}


def _feedback(cfg: CodecConfig, codec: Codec) -> bool:
    if cfg.error_feedback is None:
        return codec.biased
    return cfg.error_feedback and codec is not _RAW


def _matches(model: Mapping[str, Tensor], received: Mapping[str, Tensor]) -> bool:
    return (
        set(model) == set(received)
        and all(model[n].shape == received[n].shape for n in model)
        and is_finite(model)
    )


def _generator(seed: int, server_round: int, client_id: int) -> torch.Generator:
    """Stochastic rounding's draws, from ``(seed, round, client)`` (-1: server)."""
    words = np.random.SeedSequence([seed, server_round, client_id + 1, 19])
    return torch.Generator().manual_seed(int(words.generate_state(1)[0]))
