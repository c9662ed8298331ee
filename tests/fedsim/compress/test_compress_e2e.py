"""Real training with encoded links, on the in-process backend (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedsim.compress import UPLINK_RESIDUAL, build_codec
from fedsim.config import CodecConfig
from fedsim.experiment import run_experiment
from fedsim.messages import LOCAL
from fedsim.params import StateLayout, initial_state
from fedsim.state import ClientStateStore
from fedsim.tracking import read_metrics
from tests.fixtures import run_model, tiny_config

INT8 = (
    "comm.uplink.codec=int8",
    "comm.uplink.error_feedback=true",
    "comm.downlink.codec=int8",
)


@pytest.mark.slow
def test_pfedpara_with_int8_sends_a_quarter_and_nothing_of_w2(tmp_path: Path) -> None:
    over = ("model.param=pfedpara", "data.partition=shards", "rounds=3")
    fp32 = run_experiment(tiny_config(tmp_path / "fp32", *over), backend="local")
    cfg = tiny_config(tmp_path / "int8", *over, *INT8)
    int8 = run_experiment(cfg, backend="local")
    model = run_model(cfg)
    layout = StateLayout.of(model)
    glob = initial_state(model, layout)
    w2 = set(layout.local_names)
    assert w2 and not w2 & set(glob)
    # per client and direction: the global tensors' int8 encodings, nothing more
    codec = build_codec(CodecConfig(codec="int8"))
    per_client = sum(codec.encode(t).nbytes for t in glob.values())
    k = cfg.server.clients_per_round
    for a, b in zip(
        read_metrics(fp32.run_dir), read_metrics(int8.run_dir), strict=True
    ):
        assert b["bytes_by_channel"] == {
            "model": {"down": k * per_client, "up": k * per_client}
        }
        assert b["bytes_up"] <= 0.27 * a["bytes_up"]
        assert b["accuracy"] == pytest.approx(a["accuracy"], abs=0.05)
    # each client keeps its W2 (never encoded) and a residual of the global part
    store = ClientStateStore(int8.run_dir / "client_state")
    kept = [store.get(c) for c in range(cfg.data.num_clients)]
    trained = [s for s in kept if s]
    assert trained
    for state in trained:
        assert set(state[LOCAL]) == w2
        assert set(state[UPLINK_RESIDUAL]) == set(glob)
        assert all(torch.isfinite(t).all() for t in state[UPLINK_RESIDUAL].values())
    # TensorBoard has the encoded bytes per channel and direction
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    events = EventAccumulator(str(int8.run_dir / "tb"))
    events.Reload()
    up = [e.value for e in events.Scalars("bytes/model_up")]
    assert up == [k * per_client] * 3
