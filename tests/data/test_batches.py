"""A round's batches built ahead on the device equal the per-batch loop's."""

from __future__ import annotations

import pytest
import torch

from fedsim.data import dataset_info, prepare_batch
from fedsim.data.batches import BatchPlan, client_batches

CIFAR = dataset_info("cifar10")
DIGITS = dataset_info("digits")


def _client(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
    return x, torch.randint(0, 10, (n,), generator=gen)


def _per_batch_loop(
    x_all: torch.Tensor, y_all: torch.Tensor, batch_size: int, epochs: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The loop fedsim ran before: permute per epoch, prepare each batch."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    n = len(x_all)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = prepare_batch(x_all[idx], CIFAR, train=True, generator=gen)
            out.append((x, y_all[idx]))
    return out


def _plan(n: int, batch_size: int, epochs: int, seed: int) -> BatchPlan:
    gen = torch.Generator().manual_seed(seed)
    return BatchPlan.draw(
        n, batch_size=batch_size, epochs=epochs, generator=gen, augment=True
    )


@pytest.mark.parametrize("block_examples", [4096, 20])  # one block; several
def test_batches_equal_the_per_batch_loop_bit_for_bit(block_examples: int) -> None:
    x, y = _client(70)
    expected = _per_batch_loop(x, y, batch_size=16, epochs=3, seed=5)
    plan = _plan(70, 16, 3, seed=5)
    got = list(client_batches(x, y, CIFAR, plan, block_examples=block_examples))
    assert len(got) == len(expected) == plan.steps == 3 * 5
    for (ex, ey), batch in zip(expected, got, strict=True):
        assert batch.weight is None and batch.size == len(ey)
        assert torch.equal(batch.x, ex) and torch.equal(batch.y, ey)
    assert [b.first for b in got] == [i % 5 == 0 for i in range(15)]


def test_padded_batches_keep_the_real_rows_and_weigh_the_filler_zero() -> None:
    x, y = _client(21)
    plain = list(client_batches(x, y, CIFAR, _plan(21, 8, 2, seed=1)))
    padded = list(client_batches(x, y, CIFAR, _plan(21, 8, 2, seed=1), pad=True))
    assert [b.size for b in padded] == [8, 8, 5] * 2
    for p, b in zip(padded, plain, strict=True):
        assert p.x.shape == (8, 3, 32, 32) and p.y.shape == (8,)
        assert torch.equal(p.x[: b.size], b.x) and torch.equal(p.y[: b.size], b.y)
        assert p.weight is not None
        assert torch.equal(p.weight[: b.size], torch.full((b.size,), 1.0 / b.size))
        assert not p.weight[b.size :].any() and not p.x[b.size :].any()


def test_a_client_smaller_than_a_batch_and_no_augmentation() -> None:
    x = torch.arange(3 * 64, dtype=torch.float32).view(3, 1, 8, 8)
    y = torch.tensor([4, 5, 6])
    gen = torch.Generator().manual_seed(0)
    plan = BatchPlan.draw(3, batch_size=16, epochs=2, generator=gen, augment=False)
    assert plan.draws is None and plan.steps == 2
    batches = list(client_batches(x, y, DIGITS, plan, pad=True))
    assert [b.size for b in batches] == [3, 3]
    for b in batches:
        assert b.x.shape == (16, 1, 8, 8)
        assert sorted(b.y[:3].tolist()) == [4, 5, 6]
        torch.testing.assert_close(b.x[:3], x[b.y[:3] - 4] / 16)


def test_the_plan_draws_what_the_loop_drew_and_nothing_more() -> None:
    plan_gen, loop_gen = torch.Generator().manual_seed(3), torch.Generator()
    loop_gen.manual_seed(3)
    BatchPlan.draw(10, batch_size=4, epochs=2, generator=plan_gen, augment=True)
    _per_batch_loop(*_client(10), batch_size=4, epochs=2, seed=3)  # its own gen
    for _ in range(2):  # the loop's draws, replayed on loop_gen
        torch.randperm(10, generator=loop_gen)
        for size in (4, 4, 2):
            torch.randint(0, 9, (size,), generator=loop_gen)
            torch.randint(0, 9, (size,), generator=loop_gen)
            torch.rand(size, generator=loop_gen)
    assert torch.equal(plan_gen.get_state(), loop_gen.get_state())
