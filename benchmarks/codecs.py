"""Codec cost on the driver: encode + decode of one client's upload, per codec.

The wire (``fedsim.compress.wire``) encodes, measures and decodes every upload
in the driver's process, so its cost adds to each round once per client. This
times ``send`` (error feedback on, as for top-k and sign) over the global
tensors of VGG16-GN with FedPara layers at gamma 0.1 (the paper's CIFAR-10
model), and prints per codec: milliseconds per client, MB/s of fp32 input, and
the encoded bytes as a fraction of fp32.

    .venv/bin/python benchmarks/codecs.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from fedsim.client import build_classifier
from fedsim.compress.wire import build_codec, send
from fedsim.config import CodecConfig, load_config
from fedsim.model import worker_spec
from fedsim.params import initial_state
from fedsim.strategy import state_layout

CODECS = (
    CodecConfig(codec="fp16"),
    CodecConfig(codec="bf16"),
    CodecConfig(codec="int8"),
    CodecConfig(codec="int8", scale="row", stochastic=True),
    CodecConfig(codec="int4"),
    CodecConfig(codec="topk", fraction=0.1),
    CodecConfig(codec="sign"),
)
REPEATS = 3


def main() -> None:
    """Print one JSON line per codec."""
    torch.set_num_threads(1)
    cfg = load_config(
        None,
        ["data.name=cifar10", "model.arch=vgg16", "model.gamma=0.1"],
    )
    model = build_classifier(worker_spec(cfg).model, cfg.seed).model
    glob = initial_state(model, state_layout(cfg, model))
    delta = {n: torch.randn_like(t) * 1e-3 for n, t in glob.items()}
    raw = sum(t.nbytes for t in delta.values())
    for codec_cfg in CODECS:
        codec = build_codec(codec_cfg)
        t0 = time.perf_counter()
        for i in range(REPEATS):
            sent = send(codec, delta, {}, torch.Generator().manual_seed(i))
        seconds = (time.perf_counter() - t0) / REPEATS
        print(
            json.dumps(
                {
                    "codec": codec.name,
                    "scale": codec_cfg.scale,
                    "stochastic": codec_cfg.stochastic,
                    "ms_per_client": round(seconds * 1e3, 1),
                    "input_mb_per_s": round(raw / seconds / 1e6, 1),
                    "bytes_fraction_of_fp32": round(sent.nbytes / raw, 4),
                }
            )
        )


if __name__ == "__main__":
    main()
