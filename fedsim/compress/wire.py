"""Every channel on the wire: encoded, measured and decoded at the boundary.

The driver hands every round's download to :meth:`Wire.download` and every
reply to :meth:`Wire.receive`; both encode each floating channel (the model,
SCAFFOLD's controls, any channel a strategy sends or a client uploads) with
the direction's codec, measure the encoded buffers per channel (the bytes that
count) and decode, so the clients, the reply check and the strategy only ever
see plain tensors:

- downloads encode each channel's values (every client gets the same bytes;
  a delta would need to know what each client last received);
- an upload of a channel the client also received encodes the delta to what
  it received; the server's copy of the model is its own model plus the
  decoded delta, of any other channel what the client received plus the
  decoded delta (the value the client computed); a channel the server never
  sent is encoded as a value;
- with error feedback, what a codec dropped is added to the next value it
  encodes on the same channel: the client's residual of channel ``ch`` is
  the kept-state namespace :func:`residual_namespace` (committed with the
  round, versioned and checkpointed with every kept state), the server's is
  ``ServerState.downlink_residual[ch]``; a channel not sent in a round keeps
  its residual for the next.

A client's own channels (``TrainPlan.clients``) are encoded for it alone
(:meth:`Wire.download_own`), without error feedback. Integer tensors
(counters, FedNova's step counts) travel raw in every direction and are
measured raw: a channel of integers only as it is (no header), an integer
tensor in a floating channel with its header.

Example
-------
>>> import torch
>>> from fedsim.config import CodecConfig, CommConfig
>>> wire = Wire(CommConfig(uplink=CodecConfig(codec="int8")), seed=0)
>>> sent = wire.encode_up(0, 3, {"w": torch.full((2, 2), 0.5)},
...                       {"w": torch.zeros(2, 2)}, residual={})
>>> sent.nbytes  # 4 one-byte codes + one fp32 scale + a 12-byte header
20
>>> residual_namespace("model"), residual_namespace("control")
('uplink_residual', 'uplink_residual.control')
"""

from __future__ import annotations

import zlib
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
"""The kept-state namespace of a client's error-feedback residual (model channel).

Another channel's is ``uplink_residual.<channel>``: :func:`residual_namespace`.
"""

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
    """The two directions of every channel for one run."""

    def __init__(self, comm: CommConfig, seed: int) -> None:
        self.seed = seed
        self.up, self.down = build_codec(comm.uplink), build_codec(comm.downlink)
        self.up_feedback = _feedback(comm.uplink, self.up)
        self.down_feedback = _feedback(comm.downlink, self.down)

    # ------------------------------------------------------------ downlink
    def download(
        self, server_round: int, payload: Channels, residual: Channels
    ) -> tuple[dict[str, Tensors], dict[str, int], Channels]:
        """(decoded payload, bytes per channel, next server residual per channel)."""
        if self.down is _RAW:
            return _as_sent(payload), _sizes(payload), residual
        own = residual if self.down_feedback else None
        return self._down(server_round, -1, payload, own)

    def download_own(
        self, server_round: int, client_id: int, payload: Channels
    ) -> tuple[dict[str, Tensors], dict[str, int]]:
        """One client's own channels (``TrainPlan.clients``): (decoded, bytes).

        Encoded like the shared payload, without error feedback: the server
        keeps one residual per channel, not one per client.
        """
        if self.down is _RAW:
            return _as_sent(payload), _sizes(payload)
        decoded, sizes, _ = self._down(server_round, client_id, payload, None)
        return decoded, sizes

    def _down(
        self,
        server_round: int,
        client_id: int,
        payload: Channels,
        residual: Channels | None,
    ) -> tuple[dict[str, Tensors], dict[str, int], Channels]:
        """Encode every floating channel for ``client_id`` (-1: every client)."""
        decoded, sizes = _as_sent(payload), _sizes(payload)
        # A channel not sent this time keeps its residual for the next.
        left = {ch: dict(t) for ch, t in (residual or {}).items() if ch not in payload}
        for ch, tensors in payload.items():
            if not _floating(tensors):
                continue  # counters travel raw
            own = None if residual is None else residual.get(ch, {})
            gen = _generator(self.seed, server_round, client_id, ch, down=True)
            sent = send(self.down, tensors, own, gen)
            decoded[ch], sizes[ch] = sent.decoded, sent.nbytes
            if residual is not None:
                left[ch] = sent.residual
        return decoded, sizes, left

    # ------------------------------------------------------------ uplink
    def encode_up(
        self,
        server_round: int,
        client_id: int,
        trained: Mapping[str, Tensor],
        received: Mapping[str, Tensor] | None,
        residual: Mapping[str, Tensor],
        base: Mapping[str, Tensor] | None = None,
        channel: str = MODEL,
    ) -> Sent:
        """One channel of an upload through the uplink codec.

        ``received`` None (a channel the server never sent): the values are
        encoded as they are. Otherwise the delta ``trained - received`` is,
        and the decoded values are the server's copy of the upload:
        ``base + decode(encode(delta + residual))``, ``base`` being
        ``received`` unless given (:meth:`receive` gives the server's own
        model for the model channel).
        """
        gen = _generator(self.seed, server_round, client_id, channel)
        own = residual if self.up_feedback else None
        if received is None:
            return send(self.up, trained, own, gen)
        base = received if base is None else base
        delta = {
            n: t - received[n] if t.is_floating_point() else t
            for n, t in trained.items()
        }
        sent = send(self.up, delta, own, gen)
        values = {
            n: base[n] + d if d.is_floating_point() else d
            for n, d in sent.decoded.items()
        }
        return replace(sent, decoded=values)

    def receive(
        self,
        server_round: int,
        update: ClientUpdate,
        sent: Channels,
        received: Channels,
        kept: Callable[[int], Channels],
    ) -> tuple[ClientUpdate, dict[str, int]]:
        """The reply as the server decodes it, and its measured bytes per channel.

        ``sent`` is what the server encoded for this client, ``received`` what
        the client decoded, per channel: an uploaded channel's delta is taken
        from the latter. The model's is added to the former (what the
        downlink codec lost never enters the global model); any other
        channel's to the latter, so the server gets the value the client
        computed (SCAFFOLD's ``dc_i``) within the uplink codec's error.

        A reply with a channel that does not match what the client received
        (names, shapes) or with non-finite values is passed on as it came,
        measured raw: the reply check rejects it. ``kept(client_id)`` is read
        only with error feedback (the client's residuals).
        """
        sizes = _sizes(update.upload)
        if self.up is _RAW or not all(
            _matches(t, received.get(ch)) for ch, t in update.upload.items()
        ):
            return update, sizes
        cid = update.client_id
        state = kept(cid) if self.up_feedback else {}
        upload, keep = dict(update.upload), dict(update.keep)
        for ch, tensors in update.upload.items():
            if not _floating(tensors):
                continue  # counters travel raw
            ns = residual_namespace(ch)
            up = self.encode_up(
                server_round,
                cid,
                tensors,
                received.get(ch),
                state.get(ns, {}),
                sent.get(ch) if ch == MODEL else None,
                channel=ch,
            )
            upload[ch], sizes[ch] = up.decoded, up.nbytes
            if self.up_feedback:
                keep[ns] = up.residual
        for ns, t in state.items():  # a channel not uploaded keeps its residual
            if _is_residual(ns):
                keep.setdefault(ns, t)
        return replace(update, upload=upload, keep=keep), sizes


def residual_namespace(channel: str) -> str:
    """The kept-state namespace of a client's uplink residual on ``channel``.

    The model channel's is :data:`UPLINK_RESIDUAL`, the name it had before
    other channels were encoded, so client stores written then resume exactly.
    """
    return UPLINK_RESIDUAL if channel == MODEL else f"{UPLINK_RESIDUAL}.{channel}"


def without_residual(kept: Channels) -> Channels:
    """A client's kept state as its training sees it: no codec residual."""
    return {ns: t for ns, t in kept.items() if not _is_residual(ns)}


def _is_residual(namespace: str) -> bool:
    return namespace == UPLINK_RESIDUAL or namespace.startswith(f"{UPLINK_RESIDUAL}.")


def _feedback(cfg: CodecConfig, codec: Codec) -> bool:
    if cfg.error_feedback is None:
        return codec.biased
    return cfg.error_feedback and codec is not _RAW


def _as_sent(payload: Channels) -> dict[str, Tensors]:
    return {ch: dict(t) for ch, t in payload.items()}


def _sizes(channels: Channels) -> dict[str, int]:
    """Bytes per channel of tensors that travel as they are."""
    return {ch: payload_nbytes(t) for ch, t in channels.items()}


def _floating(tensors: Mapping[str, Tensor]) -> bool:
    return any(t.is_floating_point() for t in tensors.values())


def _matches(
    upload: Mapping[str, Tensor], received: Mapping[str, Tensor] | None
) -> bool:
    """Finite, and shaped as what the client received of the channel (if any)."""
    if received is None:
        return is_finite(upload)
    shaped = all(
        n in received and t.shape == received[n].shape for n, t in upload.items()
    )
    return shaped and is_finite(upload)


def _generator(
    seed: int, server_round: int, client_id: int, channel: str, *, down: bool = False
) -> torch.Generator:
    """Stochastic rounding's draws, from ``(seed, round, client, channel, way)``.

    ``client_id`` -1 is the shared download. The shared download and the
    uploads of the model channel draw what they drew before other channels
    were encoded (same runs, same results); a client's own download draws
    apart from its upload.
    """
    entropy = [seed, server_round, client_id + 1, 19]
    own_download = down and client_id >= 0
    if channel != MODEL or own_download:
        entropy.append(zlib.crc32(channel.encode()))
    if own_download:
        entropy.append(1)
    words = np.random.SeedSequence(entropy)
    return torch.Generator().manual_seed(int(words.generate_state(1)[0]))
