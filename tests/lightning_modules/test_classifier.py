import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.classifier import Classifier


def make() -> Classifier:
    torch.manual_seed(0)
    return Classifier(nn.Linear(4, 3), num_classes=3, lr=0.2, momentum=0.5)


def test_training_step_is_mean_cross_entropy() -> None:
    module = make()
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    expected = F.cross_entropy(module.model(x), y)
    torch.testing.assert_close(module.training_step((x, y), 0), expected)


def test_validation_step_sums_loss_and_accumulates_accuracy() -> None:
    module = make()
    x = torch.randn(5, 4)
    logits = module.model(x)
    y = logits.argmax(1).clone()
    y[0] = (y[0] + 1) % 3  # exactly one wrong
    loss = module.validation_step((x[:3], y[:3]), 0) + module.validation_step(
        (x[3:], y[3:]), 1
    )
    torch.testing.assert_close(loss, F.cross_entropy(logits, y, reduction="sum"))
    assert float(module.val_accuracy.compute()) == pytest.approx(0.8)


def test_optimizer_from_constructor() -> None:
    opt = make().configure_optimizers()
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == 0.2
    assert opt.param_groups[0]["momentum"] == 0.5
