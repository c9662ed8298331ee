"""Fixed cost per client round: Lightning Trainer.fit vs Fabric vs a plain loop.

The workload is deliberately tiny (7 batches of 32) so that what is measured is the
framework's fixed cost per client round, the number that decides which Lightning
API the client actors use. Prints medians in ms; the last line is JSON.

    .venv/bin/python benchmarks/lightning_api.py
"""

from __future__ import annotations

import json
import logging
import statistics
import time
import warnings

import lightning.pytorch as pl
import torch
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.classifier import Classifier

REPEATS = 15


def make_module() -> Classifier:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 32 * 32, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    return Classifier(net, num_classes=10, lr=0.05)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(224, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (224,), generator=g)
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, 224, 32)]


def plain(module: Classifier, data: list) -> None:
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    for batch in data:
        opt.zero_grad(set_to_none=True)
        module.training_step(batch, 0).backward()
        opt.step()


def trainer_fit(module: Classifier, data: list) -> None:
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, loader)


class FabricLoop:
    def __init__(self, module: Classifier) -> None:
        self.fabric = Fabric(accelerator="cpu", devices=1)
        opt = torch.optim.SGD(module.parameters(), lr=0.05)
        self.module, self.opt = self.fabric.setup(module, opt)

    def __call__(self, module: Classifier, data: list) -> None:
        self.opt.state.clear()
        for batch in data:
            self.opt.zero_grad(set_to_none=True)
            self.fabric.backward(self.module.training_step(batch, 0))
            self.opt.step()


def median_ms(fn, module: Classifier, data: list) -> float:
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn(module, data)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times[2:])


def main() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data = batches()
    module = make_module()
    res = {
        "plain_ms": median_ms(plain, module, data),
        "fabric_ms": median_ms(FabricLoop(module), module, data),
        "trainer_fit_ms": median_ms(trainer_fit, make_module(), data),
    }
    res["fabric_fixed_ms"] = res["fabric_ms"] - res["plain_ms"]
    res["trainer_fixed_ms"] = res["trainer_fit_ms"] - res["plain_ms"]
    for k, v in res.items():
        print(f"{k:>18}: {v:8.2f}")
    print(json.dumps({k: round(v, 2) for k, v in res.items()}))


if __name__ == "__main__":
    main()
