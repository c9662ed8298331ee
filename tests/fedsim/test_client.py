"""One client's Lightning training: reset per client, precision, payload checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedsim.client import ClientRunner, pick_device
from fedsim.driver import client_seed
from fedsim.experiment import load_data
from fedsim.messages import ClientTask
from fedsim.params import StateLayout, initial_state
from tests.fixtures import tiny_config


def make_runner(tmp_path: Path, *overrides: str) -> tuple[ClientRunner, dict]:
    cfg = tiny_config(tmp_path, *overrides)
    data, part = load_data(cfg)
    runner = ClientRunner(cfg, data, part)
    payload = initial_state(runner.module.model, StateLayout.of(runner.module.model))
    return runner, payload


def task(client: int) -> ClientTask:
    return ClientTask(client, 0, client_seed(0, 0, client), 0.05, 1, 16)


def test_a_client_result_does_not_depend_on_earlier_clients(tmp_path: Path) -> None:
    runner, payload = make_runner(tmp_path, "client.momentum=0.9")
    alone = runner.train(task(1), payload, None)
    runner.train(task(0), payload, None)  # leaves weights and momentum behind
    again = runner.train(task(1), payload, None)
    assert alone.num_examples == again.num_examples > 0
    for name, tensor in alone.tensors.items():
        torch.testing.assert_close(tensor, again.tensors[name], rtol=0, atol=0)
    assert alone.train_loss == again.train_loss
    assert alone.bytes_up == sum(t.numel() * 4 for t in alone.tensors.values())


def test_mixed_precision_reaches_the_training_step(tmp_path: Path) -> None:
    runner, payload = make_runner(tmp_path, "resources.precision=bf16-mixed")
    seen: list[torch.dtype] = []
    first = next(
        m for m in runner.module.model.modules() if list(m.parameters(recurse=False))
    )
    first.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    runner.train(task(0), payload, None)
    assert seen and set(seen) == {torch.bfloat16}


def test_payload_must_match_the_model(tmp_path: Path) -> None:
    runner, payload = make_runner(tmp_path)
    broken = dict(payload)
    missing = sorted(broken)[0]
    del broken[missing]
    with pytest.raises(ValueError, match=f"missing \\['{missing}'\\]"):
        runner.train(task(0), broken, None)


def test_cpu_fallback_without_cuda() -> None:
    assert pick_device(0.0).type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device(0.25).type == expected


def test_evaluation_shards_combine_to_the_whole_split(tmp_path: Path) -> None:
    from fedsim.messages import EvalResult

    runner, payload = make_runner(tmp_path)
    update = runner.train(task(0), payload, None)
    whole = runner.evaluate(update.tensors, 64)
    parts = [runner.evaluate(update.tensors, 64, (i, 3)) for i in range(3)]
    merged = EvalResult.merge(parts)
    assert whole.num_examples == merged.num_examples == len(runner.data.y_test)
    assert whole.correct == merged.correct
    assert 0 < whole.correct < whole.num_examples
    assert merged.loss == pytest.approx(whole.loss, rel=1e-5)
