"""One client's Lightning training: reset per client, precision, payload checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedsim.client import ClientRunner, pick_device
from fedsim.messages import MODEL
from fedsim.model import build_backbone, worker_spec
from fedsim.params import StateLayout, initial_state
from tests.fixtures import load_data, tiny_config, tiny_task

task = tiny_task


def make_runner(tmp_path: Path, *overrides: str) -> tuple[ClientRunner, dict]:
    cfg = tiny_config(tmp_path, *overrides)
    data, part = load_data(cfg)
    layout = StateLayout.of(build_backbone(cfg, 10, (1, 8, 8)))
    runner = ClientRunner(worker_spec(cfg), data, part, layout)
    payload = {MODEL: initial_state(runner.module.model, layout)}
    return runner, payload


def test_a_client_result_does_not_depend_on_earlier_clients(tmp_path: Path) -> None:
    runner, payload = make_runner(tmp_path, "client.momentum=0.9")
    alone = runner.train(task(1, momentum=0.9), payload, {})
    runner.train(task(0, momentum=0.9), payload, {})  # leaves weights, momentum
    again = runner.train(task(1, momentum=0.9), payload, {})
    assert alone.num_examples == again.num_examples > 0
    for name, tensor in alone.upload[MODEL].items():
        torch.testing.assert_close(tensor, again.upload[MODEL][name], rtol=0, atol=0)
    assert alone.train_loss == again.train_loss


def test_mixed_precision_reaches_the_training_step(tmp_path: Path) -> None:
    runner, payload = make_runner(tmp_path, "resources.precision=bf16-mixed")
    seen: list[torch.dtype] = []
    first = next(
        m for m in runner.module.model.modules() if list(m.parameters(recurse=False))
    )
    first.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    runner.train(task(0), payload, {})
    assert seen and set(seen) == {torch.bfloat16}


def test_payload_must_match_the_model(tmp_path: Path) -> None:
    runner, payload = make_runner(tmp_path)
    broken = dict(payload[MODEL])
    missing = sorted(broken)[0]
    del broken[missing]
    with pytest.raises(RuntimeError, match=f'Missing key.*"{missing}"'):
        runner.train(task(0), {MODEL: broken}, {})


@pytest.mark.parametrize(
    ("cuda", "gpus", "expected"),
    [
        (False, 0.0, torch.device("cpu")),
        (False, 0.25, torch.device("cpu")),  # a GPU slice but no CUDA: fall back
        (False, 2.0, torch.device("cpu")),
        (True, 0.0, torch.device("cpu")),  # CUDA present, but no slice granted
        (True, 0.25, torch.device("cuda", 0)),  # Ray remaps the GPU to index 0
        (True, 1.0, torch.device("cuda", 0)),
    ],
)
def test_cpu_fallback_without_cuda(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, gpus: float, expected: torch.device
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert pick_device(gpus) == expected


def test_evaluation_shards_combine_to_the_whole_split(tmp_path: Path) -> None:
    from fedsim.messages import EvalResult

    runner, payload = make_runner(tmp_path)
    update = runner.train(task(0), payload, {})
    whole = runner.evaluate(update.upload[MODEL], 64)
    parts = [runner.evaluate(update.upload[MODEL], 64, (i, 3)) for i in range(3)]
    merged = EvalResult.merge(parts)
    assert whole.num_examples == merged.num_examples == len(runner.data.y_test)
    assert whole.correct == merged.correct
    assert 0 < whole.correct < whole.num_examples
    assert merged.loss == pytest.approx(whole.loss, rel=1e-5)
