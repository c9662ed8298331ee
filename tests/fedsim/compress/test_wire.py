"""The wire: error feedback conserves what was meant, and the driver measures it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from fedsim.checkpoint import ServerState, load_checkpoint, save_checkpoint
from fedsim.compress import (
    UPLINK_RESIDUAL,
    Wire,
    build_codec,
    residual_namespace,
    without_residual,
)
from fedsim.compress.codecs import HEADER_FIXED, Raw
from fedsim.config import CodecConfig, CommConfig, ConfigError, load_config
from fedsim.driver import sample_cohort
from fedsim.messages import MODEL, Channels, ClientTask, ClientUpdate
from fedsim.params import StateLayout, Tensors, initial_state
from fedsim.registry import STRATEGIES
from fedsim.strategy import ClientPlan, state_layout
from tests.fedsim.fakes import BoringBackend, boring_driver
from tests.fixtures import run_model, tiny_config

INT8_EF = (
    "comm.uplink.codec=int8",
    "comm.uplink.error_feedback=true",
    "comm.downlink.codec=int8",
)


@pytest.mark.parametrize(
    "uplink",
    [
        CodecConfig(codec="topk", fraction=0.2),
        CodecConfig(codec="sign"),
        CodecConfig(codec="int4", stochastic=True, error_feedback=True),
    ],
    ids=["topk", "sign", "int4-stochastic"],
)
def test_uplink_error_feedback_sends_every_delta_eventually(
    uplink: CodecConfig,
) -> None:
    """Sum over rounds of what was sent + the final residual = sum of true deltas."""
    wire = Wire(CommConfig(uplink=uplink), seed=3)
    gen = torch.Generator().manual_seed(0)
    received = {"w": torch.randn(4, 5, generator=gen), "n": torch.tensor(7)}
    residual: dict[str, torch.Tensor] = {}
    sent_sum, true_sum = torch.zeros(4, 5), torch.zeros(4, 5)
    for r in range(6):
        delta = torch.randn(4, 5, generator=gen)
        trained = {"w": received["w"] + delta, "n": received["n"]}
        sent = wire.encode_up(r, 2, trained, received, residual)
        sent_sum += sent.decoded["w"] - received["w"]
        true_sum += delta
        residual = sent.residual
        assert int(sent.decoded["n"]) == 7  # a counter travels as it is
    assert set(residual) == {"w"}
    torch.testing.assert_close(sent_sum + residual["w"], true_sum)


def test_downlink_error_feedback_conserves_every_channel() -> None:
    """Per channel: sum of what was sent + the final residual = sum of values."""
    down = CodecConfig(codec="int4", scale="tensor", error_feedback=True)
    wire = Wire(CommConfig(downlink=down), seed=0)
    gen = torch.Generator().manual_seed(1)
    residual: Channels = {}
    channels = (MODEL, "control")
    sent_sum = {ch: torch.zeros(3, 3) for ch in channels}
    true_sum = {ch: torch.zeros(3, 3) for ch in channels}
    for r in range(5):
        sending = channels if r != 2 else (MODEL,)  # no controls in round 2
        values = {ch: torch.randn(3, 3, generator=gen) for ch in sending}
        payload = {ch: {"w": v} for ch, v in values.items()}
        steps = torch.tensor([3, 4])
        payload["steps"] = {"tau": steps}
        decoded, sizes, residual = wire.download(r, payload, residual)
        for ch in sending:
            sent_sum[ch] += decoded[ch]["w"]
            true_sum[ch] += values[ch]
        assert decoded["steps"]["tau"] is steps  # an integer channel is not encoded
        # 9 codes, two per byte, one fp32 scale, the (3, 3) header; steps raw
        encoded = 5 + 4 + HEADER_FIXED + 2 * 4
        assert sizes == {**dict.fromkeys(sending, encoded), "steps": 16}
        assert set(residual) == set(channels)  # a channel not sent keeps its own
    for ch in channels:
        torch.testing.assert_close(sent_sum[ch] + residual[ch]["w"], true_sum[ch])


def test_uplink_error_feedback_conserves_every_channel() -> None:
    """Deltas of the channels received, values of one never sent, each its residual.

    The server sent ``sent``, the client decoded ``received``: the model's
    delta lands on ``sent``, the control's on ``received``.
    """
    wire = Wire(CommConfig(uplink=CodecConfig(codec="topk", fraction=0.3)), seed=5)
    gen = torch.Generator().manual_seed(2)
    sent = {ch: {"w": torch.randn(4, 5, generator=gen)} for ch in (MODEL, "control")}
    received = {ch: {"w": t["w"] + 0.01} for ch, t in sent.items()}  # downlink loss
    base = {MODEL: sent[MODEL]["w"], "control": received["control"]["w"]}
    channels = (MODEL, "control", "extra")
    kept: Channels = {"boring": {"n": torch.tensor(1)}}
    sent_sum = {ch: torch.zeros(4, 5) for ch in channels}
    true_sum = {ch: torch.zeros(4, 5) for ch in channels}
    for r in range(6):
        true = {ch: torch.randn(4, 5, generator=gen) for ch in channels}
        upload = {ch: {"w": received[ch]["w"] + true[ch]} for ch in base}
        upload["extra"] = {"w": true["extra"]}  # a channel the server never sent
        upload["steps"] = {"tau": torch.tensor(3)}
        if r == 3:  # no controls this time: their residual waits
            del upload["control"], true["control"]
        reply = ClientUpdate(
            client_id=2,
            upload=upload,
            num_examples=1,
            train_loss=0.0,
            train_seconds=0.0,
            keep={"boring": kept["boring"]},
        )
        got, sizes = wire.receive(r, reply, sent, received, {2: kept}.__getitem__)
        kept = got.keep
        for ch in true:
            sent_sum[ch] += got.upload[ch]["w"] - base.get(ch, torch.zeros(4, 5))
            true_sum[ch] += true[ch]
        assert got.upload["steps"] == upload["steps"] and sizes["steps"] == 8
        topk = build_codec(CodecConfig(codec="topk", fraction=0.3))
        assert sizes[MODEL] == topk.encode(true[MODEL]).nbytes
    assert set(kept) == {"boring", *map(residual_namespace, channels)}
    assert without_residual(kept).keys() == {"boring"}
    for ch in channels:
        left = kept[residual_namespace(ch)]["w"]
        assert left.abs().sum() > 0  # top-k dropped something to carry
        torch.testing.assert_close(sent_sum[ch] + left, true_sum[ch])


def test_the_driver_measures_the_encoded_upload_and_decodes_it(
    tmp_path: Path,
) -> None:
    backend = BoringBackend()
    driver, state = boring_driver(tmp_path, backend, *INT8_EF)
    new, metrics = driver.run_round(state)
    cohort = [t.client_id for t in backend.tasks]
    int8, raw = build_codec(CodecConfig(codec="int8")), Raw()
    glob = state.global_tensors
    down = sum(int8.encode(t).nbytes for n, t in glob.items() if n != "n")
    down += raw.encode(glob["n"]).nbytes
    up = 0
    for c in cohort:  # each client's delta is 0.1 (c + 1) on every float
        for name in ("w", "b"):
            delta = torch.full_like(glob[name], 0.1 * (c + 1))
            up += int8.encode(delta).nbytes
        up += raw.encode(glob["n"]).nbytes
    assert metrics.bytes_by_channel == {"model": {"down": 3 * down, "up": up}}
    assert metrics.bytes_down == 3 * down and metrics.bytes_up == up
    # The server decoded each upload onto its own model: glob + decoded delta
    # (a constant delta is exact in int8: its one code is 127, its scale delta/127).
    weights = [10 * (c + 1) for c in cohort]
    mean = sum(w * 0.1 * (c + 1) for w, c in zip(weights, cohort, strict=True))
    expected = glob["w"] + mean / sum(weights)
    torch.testing.assert_close(new.global_tensors["w"], expected)
    # The residual is kept state, committed with the round; clients never see it.
    assert set(driver.store.get(cohort[0])[UPLINK_RESIDUAL]) == {"w", "b"}
    driver.run_round(new)
    assert all(UPLINK_RESIDUAL not in driver._kept(c) for c in cohort)


def test_scaffold_int8_encodes_its_controls_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Controls: ~4x fewer bytes each way, dc_i decoded within int8's error."""
    sent: dict[int, Tensors] = {}  # each client's dc_i, before the wire

    def record(task: ClientTask, result):  # type: ignore[no-untyped-def]
        sent[task.client_id] = result.upload["control"]
        return result

    driver, _ = boring_driver(
        tmp_path, BoringBackend(record), "server.strategy=scaffold", *INT8_EF
    )
    gen = torch.Generator().manual_seed(0)
    glob = {"w": torch.randn(64, 32, generator=gen), "n": torch.tensor(5)}
    glob["b"] = torch.randn(64, generator=gen)
    c = {"w": torch.randn(64, 32, generator=gen), "b": torch.randn(64, generator=gen)}
    seen: list[ClientUpdate] = []  # what the strategy aggregates
    aggregate = driver.strategy.aggregate_train

    def spy(r, g, s, updates):  # type: ignore[no-untyped-def]
        seen.extend(updates)
        return aggregate(r, g, s, updates)

    monkeypatch.setattr(driver.strategy, "aggregate_train", spy)
    state = ServerState(round=0, global_tensors=glob, strategy_state={"c": c})
    _, metrics = driver.run_round(state)
    int8 = build_codec(CodecConfig(codec="int8"))
    one = sum(int8.encode(t).nbytes for t in c.values())
    assert metrics.bytes_by_channel["control"] == {"down": 3 * one, "up": 3 * one}
    assert one < 0.26 * sum(t.nbytes for t in c.values())
    received = {n: int8.decode(int8.encode(t)) for n, t in c.items()}
    assert len(seen) == 3
    for update in seen:
        for name, true in sent[update.client_id].items():
            err = (update.upload["control"][name] - true).abs().max()
            bound = (true - received[name]).abs().max() / 254  # half a step
            assert 0 < err <= bound + 1e-6


def test_a_clients_own_channel_is_encoded_for_it_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = BoringBackend()
    driver, state = boring_driver(tmp_path, backend, *INT8_EF)
    hint = torch.linspace(-1, 1, 64)  # mostly off int8's grid: it loses a little
    configure = driver.strategy.configure_train

    def per_client(r, g, s, cohort):  # type: ignore[no-untyped-def]
        plan = configure(r, g, s, cohort)
        own = ClientPlan(payload={"hint": {"h": hint}})
        return dataclasses.replace(plan, clients={cohort[1]: own})

    monkeypatch.setattr(driver.strategy, "configure_train", per_client)
    _, metrics = driver.run_round(state)
    int8 = build_codec(CodecConfig(codec="int8"))
    nbytes = int8.encode(hint).nbytes
    assert metrics.bytes_by_channel["hint"] == {"down": nbytes, "up": 0}
    assert [set(t.payload) for t in backend.tasks] == [set(), {"hint"}, set()]
    err = (backend.tasks[1].payload["hint"]["h"] - hint).abs().max()
    assert 0 < err <= 1 / 254 + 1e-7  # half a step of scale 1 / 127


PARAMS = ("original", "lowrank", "fedpara", "pfedpara")


@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_and_parameterization_runs_with_codecs(
    tmp_path: Path, strategy: str, param: str
) -> None:
    """Two rounds, int8 up (error feedback) and down, every channel encoded."""
    over = (f"server.strategy={strategy}", f"model.param={param}")
    cfg = tiny_config(tmp_path, *over)
    model = run_model(cfg)
    layout = state_layout(cfg, model)
    backend = BoringBackend()
    driver, _ = boring_driver(tmp_path, backend, *over, *INT8_EF)
    glob = initial_state(model, layout)
    state = ServerState(
        round=0, global_tensors=glob, strategy_state=driver.strategy.init(glob)
    )
    for _ in range(2):
        state, metrics = driver.run_round(state)
        assert metrics.num_clients == 3 and metrics.num_failed == 0
        assert all(
            torch.isfinite(t.double()).all() for t in state.global_tensors.values()
        )
    by_channel = metrics.bytes_by_channel
    if strategy != "local_only":
        raw_up = 3 * sum(t.nbytes for t in glob.values())
        assert 0 < by_channel["model"]["up"] < 0.5 * raw_up
    if strategy == "scaffold":  # the controls are encoded both ways
        raw_c = 3 * sum(t.nbytes for t in state.strategy_state["c"].values())
        assert 0 < by_channel["control"]["down"] < 0.5 * raw_c
        assert 0 < by_channel["control"]["up"] < 0.5 * raw_c
    if strategy == "fednova":  # its step counts are integers: they travel raw
        assert by_channel["steps"] == {"down": 0, "up": 3 * 4}  # int32, raw


def test_pfedpara_codecs_send_nothing_of_w2(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "model.param=pfedpara")
    model = run_model(cfg)
    layout = StateLayout.of(model)
    w2 = set(layout.local_names)
    assert w2  # pFedPara has local factors
    backend = BoringBackend()
    driver, _ = boring_driver(tmp_path, backend, *INT8_EF)
    glob = initial_state(model, layout)
    state = ServerState(round=0, global_tensors=glob)
    _, metrics = driver.run_round(state)
    int8, raw = build_codec(CodecConfig(codec="int8")), Raw()
    expected_down = sum(
        (int8 if t.is_floating_point() else raw).encode(t).nbytes for t in glob.values()
    )
    assert metrics.bytes_by_channel["model"]["down"] == 3 * expected_down
    kept = driver.store.get(backend.tasks[0].client_id)
    assert set(kept[UPLINK_RESIDUAL]) == {
        n for n, t in glob.items() if t.is_floating_point()
    }
    assert not w2 & set(kept[UPLINK_RESIDUAL])


def test_bad_codec_settings_are_refused_with_a_fix() -> None:
    with pytest.raises(ConfigError, match=r"comm\.uplink\.codec must be one of"):
        load_config(None, ["comm.uplink.codec=int3"])
    with pytest.raises(ConfigError, match=r"comm.uplink.fraction: must be in \(0, 1\]"):
        load_config(None, ["comm.uplink.codec=topk", "comm.uplink.fraction=0"])
    with pytest.raises(ConfigError, match="stochastic rounding is for codec int8"):
        load_config(None, ["comm.uplink.codec=topk", "comm.uplink.stochastic=true"])
    with pytest.raises(ConfigError, match=r"comm\.downlink\.codec: downloads carry"):
        load_config(None, ["comm.downlink.codec=sign"])


def test_a_checkpoint_from_before_comm_resumes_only_at_the_defaults(
    tmp_path: Path,
) -> None:
    cfg = load_config(None, [f"log.root={tmp_path}"]).to_dict()
    older = {k: v for k, v in cfg.items() if k != "comm"}  # written before comm.*
    save_checkpoint(tmp_path, ServerState(round=2, global_tensors={}), older)
    assert load_checkpoint(tmp_path, cfg).round == 2
    int8 = load_config(None, [f"log.root={tmp_path}", "comm.uplink.codec=int8"])
    with pytest.raises(ConfigError, match=r"comm\.uplink\.codec \(None -> 'int8'\)"):
        load_checkpoint(tmp_path, int8.to_dict())


def test_a_flat_downlink_residual_is_the_model_channels(tmp_path: Path) -> None:
    """Checkpoints from before per-channel residuals resume with theirs."""
    cfg = load_config(None, [f"log.root={tmp_path}"]).to_dict()
    per_channel = {MODEL: {"w": torch.ones(2)}, "control": {"w": torch.zeros(2)}}
    state = ServerState(round=1, global_tensors={}, downlink_residual=per_channel)
    path = save_checkpoint(tmp_path, state, cfg)
    torch.testing.assert_close(
        load_checkpoint(tmp_path, cfg).downlink_residual, per_channel
    )
    blob = torch.load(path, weights_only=True)
    blob["downlink_residual"] = {"w": torch.ones(2)}  # as the first delivery wrote
    torch.save(blob, path)
    old = load_checkpoint(tmp_path, cfg).downlink_residual
    torch.testing.assert_close(old, {MODEL: {"w": torch.ones(2)}})


def test_bad_replies_are_rejected_not_encoded(tmp_path: Path) -> None:
    """A NaN upload, a wrong shape: the reply check rejects them, nothing crashes."""

    def bad(task: ClientTask, result):  # type: ignore[no-untyped-def]
        model = dict(result.upload[MODEL])
        if task.client_id == cohort[0]:
            model["w"] = torch.full((2,), float("nan"))
        elif task.client_id == cohort[1]:
            model["b"] = torch.zeros(4)
        else:
            return result
        return dataclasses.replace(result, upload={MODEL: model})

    cohort = sample_cohort(0, 0, 6, 3)  # the boring driver's first round
    backend = BoringBackend(bad)
    driver, state = boring_driver(tmp_path, backend, *INT8_EF)
    state, metrics = driver.run_round(state)
    assert metrics.num_clients == 1 and metrics.num_failed == 2
    assert UPLINK_RESIDUAL not in driver.store.get(cohort[0])
    assert torch.isfinite(state.global_tensors["w"]).all()
