"""One client's work: load the global payload, train with Lightning, reply.

A :class:`ClientRunner` lives for the lifetime of a worker (a Ray actor or the
in-process backend). It builds the LightningModule, the Fabric wrapper and the
optimizer once, then trains one virtual client after another. Everything that
makes a client's result depend on anything but ``(payload, local state, task)``
is reset per client: weights, optimizer state, RNG. That is what makes results
identical for any pool size.

Lightning Fabric runs the loop rather than ``Trainer.fit``: the Trainer's fixed
cost per fit is about 41 ms on this 2-core machine against 3 ms for Fabric
(``benchmarks/lightning_api.py``), and a client round is often only a few
batches long.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from lightning.fabric import Fabric
from torch import Tensor

from fedsim.config import Config
from fedsim.data import FederatedData, Partition
from fedsim.data.transforms import prepare_batch
from fedsim.messages import ClientTask, ClientUpdate, EvalResult
from fedsim.model import build_backbone
from fedsim.params import StateLayout, Tensors, payload_nbytes
from lightning_modules.classifier import Classifier

log = logging.getLogger(__name__)


def build_classifier(
    cfg: Config, num_classes: int, input_shape: tuple[int, ...]
) -> Classifier:
    """The config's backbone (seeded) inside the Lightning classifier."""
    c = cfg.client
    model = build_backbone(cfg, num_classes, input_shape)
    return Classifier(model, num_classes, c.lr, c.momentum, c.weight_decay)


def pick_device(gpus_per_client: float) -> torch.device:
    """CUDA when a GPU slice was granted and CUDA is present, else CPU."""
    if gpus_per_client > 0 and torch.cuda.is_available():
        return torch.device("cuda", 0)  # Ray's CUDA_VISIBLE_DEVICES makes it index 0
    return torch.device("cpu")


class ClientRunner:
    """Trains virtual clients one after another on one worker.

    Parameters
    ----------
    cfg
        The experiment config.
    data
        The dataset arrays (read-only, possibly shared zero-copy via Ray).
    partition
        Each client's training indices.
    """

    def __init__(self, cfg: Config, data: FederatedData, partition: Partition) -> None:
        self.cfg = cfg
        self.data = data
        self.partition = partition
        res = cfg.resources
        torch.set_num_threads(max(1, int(res.cpus_per_client)))
        self.device = pick_device(res.gpus_per_client)
        if (
            self.device.type == "cuda"
            and res.cap_gpu_memory
            and res.gpus_per_client < 1
        ):
            # One client may not starve the others sharing the GPU.
            torch.cuda.set_per_process_memory_fraction(res.gpus_per_client, 0)
        precision = res.precision
        if self.device.type == "cpu" and precision == "16-mixed":
            precision = "bf16-mixed"  # fp16 autocast needs CUDA
        info = data.info
        self.module = build_classifier(cfg, info.num_classes, info.input_shape)
        self.layout = StateLayout.of(self.module.model)
        _, self._initial_local = self.layout.split(self.module.model.state_dict())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.fabric = Fabric(
                accelerator=self.device.type, devices=1, precision=precision
            )
        optimizer = self.module.configure_optimizers()
        self.wrapped, self.optimizer = self.fabric.setup(self.module, optimizer)

    # ------------------------------------------------------------------ training

    def train(
        self, task: ClientTask, payload: Mapping[str, Tensor], local: Tensors | None
    ) -> ClientUpdate:
        """Train client ``task.client_id`` from ``payload`` and return its update."""
        t0 = time.perf_counter()
        self._load(payload, local if local is not None else self._initial_local)
        indices = self.partition.train[task.client_id]
        x_all = torch.from_numpy(np.ascontiguousarray(self.data.x_train[indices]))
        y_all = torch.from_numpy(np.ascontiguousarray(self.data.y_train[indices]))
        gen = torch.Generator().manual_seed(task.seed)
        torch.manual_seed(task.seed)  # dropout and anything else drawing globally
        for group in self.optimizer.param_groups:
            group["lr"] = task.lr
        self.optimizer.state.clear()  # fresh SGD momentum per client
        self.module.train()
        n = len(indices)
        loss_sum = torch.zeros((), device=self.device)
        for _ in range(task.epochs):
            loss_sum.zero_()
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, task.batch_size):
                idx = order[start : start + task.batch_size]
                x = prepare_batch(x_all[idx], self.data.info, train=True, generator=gen)
                batch = (x.to(self.device), y_all[idx].to(self.device))
                self.optimizer.zero_grad(set_to_none=True)
                # Calling training_step directly bypasses the wrapper's forward,
                # so mixed precision has to be entered here.
                with self.fabric.autocast():
                    loss = self.wrapped.training_step(batch, start)
                self.fabric.backward(loss)
                self.optimizer.step()
                loss_sum += loss.detach() * len(idx)
        glob, loc = self.layout.split(self.module.model.state_dict())
        return ClientUpdate(
            client_id=task.client_id,
            tensors=glob,
            num_examples=n,
            bytes_up=payload_nbytes(glob),
            train_loss=float(loss_sum) / max(n, 1),
            train_seconds=time.perf_counter() - t0,
            local_state=loc,
        )

    def _load(self, payload: Mapping[str, Tensor], local: Mapping[str, Tensor]) -> None:
        state = {**payload, **local}
        expected = set(self.layout.global_names) | set(self.layout.local_names)
        if set(state) != expected:
            raise ValueError(
                "payload does not match the model: "
                f"missing {sorted(expected - set(state))}"
                f", unexpected {sorted(set(state) - expected)}"
            )
        self.module.model.load_state_dict(state, strict=True)

    # ---------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(
        self,
        payload: Mapping[str, Tensor],
        batch_size: int,
        shard: tuple[int, int] = (0, 1),
    ) -> EvalResult:
        """Evaluate the global model on shard ``i`` of ``n`` of the test split.

        Accuracy comes from the LightningModule's torchmetrics metric; the
        shards are contiguous and together cover the split exactly once.
        """
        self._load(payload, self._initial_local)
        self.module.eval()
        accuracy = self.module.val_accuracy
        accuracy.reset()
        i, n = shard
        total = len(self.data.y_test)
        lo, hi = total * i // n, total * (i + 1) // n
        loss_sum = torch.zeros((), device=self.device)
        for start in range(lo, hi, batch_size):
            stop = min(start + batch_size, hi)
            # A copy: the arrays may be read-only views of Ray's shared memory.
            x = torch.tensor(self.data.x_test[start:stop])
            y = torch.tensor(self.data.y_test[start:stop]).to(self.device)
            x = prepare_batch(x, self.data.info, train=False).to(self.device)
            with self.fabric.autocast():
                loss_sum += self.module.validation_step((x, y), start)
        count = hi - lo
        correct = round(float(accuracy.compute()) * count) if count else 0
        return EvalResult(float(loss_sum), correct, count)
