"""One client's work: load the global payload, train with Lightning, reply.

A :class:`ClientRunner` lives for the lifetime of a worker (a Ray actor or the
in-process backend). It builds the LightningModule, the Fabric wrapper and the
optimizer once, then trains one virtual client after another. Everything that
makes a client's result depend on anything but ``(payload, kept state, task)``
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
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from lightning.fabric import Fabric
from torch import Tensor

from fedsim.algorithm import AlgoState, ClientOutcome, local_training
from fedsim.data import FederatedData, Partition
from fedsim.data.batches import Batch, BatchPlan, client_batches
from fedsim.data.transforms import prepare_batch
from fedsim.messages import LOCAL, MODEL, Channels, ClientTask, ClientUpdate, EvalResult
from fedsim.model import WorkerSpec, seeded_model
from fedsim.params import StateLayout, Tensors, moved
from fedsim.train_step import StepEngine, apply_numeric_policy
from lightning_modules.classifier import Classifier
from lightning_modules.layers import composed_once, local_state_names
from lightning_modules.spec import ModelSpec

log = logging.getLogger(__name__)


def build_classifier(spec: ModelSpec, seed: int) -> Classifier:
    """``spec``'s backbone, drawn from ``seed``, inside the Lightning classifier."""
    # lr, momentum and weight decay are set per task (they travel with it).
    return Classifier(seeded_model(spec, seed), spec.num_classes)


def pick_device(gpus_per_client: float) -> torch.device:
    """CUDA when a GPU slice was granted and CUDA is present, else CPU."""
    if gpus_per_client > 0 and torch.cuda.is_available():
        return torch.device("cuda", 0)  # Ray's CUDA_VISIBLE_DEVICES makes it index 0
    return torch.device("cpu")


class ClientRunner:
    """Trains and evaluates virtual clients one after another on one worker.

    Parameters
    ----------
    worker
        The model, the run's seed and this worker's resources (the training
        settings travel with each task).
    data
        The dataset arrays (read-only, possibly shared zero-copy via Ray).
    partition
        Each client's training (and personal test) indices.
    layout
        Which state-dict entries travel and which each client keeps; handed
        over by the driver, so both sides agree by construction.
    """

    def __init__(
        self,
        worker: WorkerSpec,
        data: FederatedData,
        partition: Partition,
        layout: StateLayout,
    ) -> None:
        self.data = data
        self.partition = partition
        self.layout = layout
        self.resources = res = worker.resources
        torch.set_num_threads(max(1, int(res.cpus_per_client)))
        apply_numeric_policy(res)
        self.device = pick_device(res.gpus_per_client)
        self._memory_budget = 0  # bytes of device memory this worker may use
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            self._memory_budget = int(total * min(res.gpus_per_client, 1.0))
            if res.cap_gpu_memory and res.gpus_per_client < 1:
                # One client may not starve the others sharing the GPU.
                torch.cuda.set_per_process_memory_fraction(res.gpus_per_client, 0)
        precision = res.precision
        if self.device.type == "cpu" and precision == "16-mixed":
            precision = "bf16-mixed"  # fp16 autocast needs CUDA
        self.module = build_classifier(worker.model, worker.seed)
        _, self._initial_local = layout.split(self.module.model.state_dict())
        self._global_view_local = _global_view(self.module.model, self._initial_local)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.fabric = Fabric(
                accelerator=self.device.type, devices=1, precision=precision
            )
        optimizer = self.module.configure_optimizers()
        self.wrapped, self.optimizer = self.fabric.setup(self.module, optimizer)
        self.engine = StepEngine(
            self.module, self.fabric, self.wrapped, self.optimizer, self.device, res
        )
        self._test_shard: tuple[tuple[int, int], Tensor, Tensor] | None = None

    # ------------------------------------------------------------------ training

    def train(
        self, task: ClientTask, payload: Channels, kept: Channels
    ) -> ClientUpdate:
        """Train client ``task.client_id`` from ``payload`` and its kept state.

        ``payload`` is the round's shared payload; ``task.payload`` adds the
        client's own channels.
        """
        t0 = time.perf_counter()
        hp, info, algo = task.hparams, self.data.info, task.algorithm
        payload = {**payload, **task.payload}
        model_in = payload.get(MODEL, {})
        self._load(model_in, self.load_local(kept))
        x_all, y_all = self.client_examples(task.client_id)
        params = {
            name: p
            for name, p in self.module.model.named_parameters()
            if name in model_in
        }
        captured = False

        def start(state: AlgoState) -> Iterator[Batch]:
            nonlocal captured
            # Capture draws random numbers: before the client's generators are seeded.
            example = self._example(hp.batch_size)
            captured = self.engine.prepare(hp, algo, state, params, example)
            torch.manual_seed(task.seed)  # dropout and anything else drawing globally
            plan = self.batch_plan(task, len(y_all))
            self.engine.begin(hp, state, captured)
            self.module.train()
            return client_batches(x_all, y_all, info, plan, pad=self.engine.padded)

        loss_sum = self.engine.loss_sum  # of the last epoch, on the device

        def step(batch: Batch, state: AlgoState) -> None:
            if batch.first:
                loss_sum.zero_()
            self.engine.step(batch, params, algo, state, captured)

        outcome, steps = local_training(
            algo, params, payload, kept, start=start, step=step, lr=hp.lr
        )
        return self.reply(
            task,
            payload,
            self.module.model.state_dict(),
            outcome,
            steps=steps,
            loss_sum=float(loss_sum),  # the round's one host sync
            seconds=time.perf_counter() - t0,
            setup_seconds=self.engine.take_setup_seconds(),
        )

    def reply(
        self,
        task: ClientTask,
        payload: Channels,
        model_state: Mapping[str, Tensor],
        outcome: ClientOutcome,
        *,
        steps: int,
        loss_sum: float,
        seconds: float,
        setup_seconds: float = 0.0,
    ) -> ClientUpdate:
        """The client's :class:`ClientUpdate` from its trained model state.

        ``payload`` is what the client received (the model travels back when
        it came); ``loss_sum`` is the summed loss of its last epoch.
        """
        n = len(self.partition.train[task.client_id])
        glob, loc = self.layout.split(model_state)
        upload = {MODEL: glob, **outcome.upload} if MODEL in payload else outcome.upload
        keep = {LOCAL: loc, **outcome.keep} if loc else outcome.keep
        return ClientUpdate(
            client_id=task.client_id,
            upload=upload,
            keep=keep,
            num_examples=n,
            train_loss=loss_sum / max(n, 1),
            train_seconds=seconds,
            steps=steps,
            setup_seconds=setup_seconds,
            metrics=outcome.metrics,
        )

    def client_examples(self, client_id: int) -> tuple[Tensor, Tensor]:
        """The client's raw training examples and labels, on the training device."""
        indices = self.partition.train[client_id]
        return self._on_device(self.data.x_train, self.data.y_train, indices)

    def batch_plan(self, task: ClientTask, n: int) -> BatchPlan:
        """The client's draws of the round (order, crops), from its seed."""
        info = self.data.info
        return BatchPlan.draw(
            n,
            batch_size=task.hparams.batch_size,
            epochs=task.hparams.epochs,
            generator=torch.Generator().manual_seed(task.seed),
            augment=info.augment and not info.integer_inputs,
        )

    def load_local(self, kept: Channels) -> Mapping[str, Tensor]:
        """The client's local tensors: kept, or their initial values at first."""
        return kept.get(LOCAL, self._initial_local)

    def _load(self, glob: Mapping[str, Tensor], local: Mapping[str, Tensor]) -> None:
        state = {**glob, **local}
        if self.device.type != "cpu":  # one host-to-device copy per dtype
            state = moved(state, self.device)
        # strict: a payload that does not match the model is this client's failure
        self.module.model.load_state_dict(state, strict=True)

    def _on_device(
        self, x: np.ndarray, y: np.ndarray, indices: Sequence[int] | np.ndarray
    ) -> tuple[Tensor, Tensor]:
        """Rows ``indices`` of ``x`` and ``y`` as tensors on the training device.

        A copy, gathered on the host and moved in one transfer per array: the
        arrays may be read-only views of Ray's shared memory.
        """
        idx = np.asarray(indices)
        xs = torch.from_numpy(np.ascontiguousarray(x[idx]))
        ys = torch.from_numpy(np.ascontiguousarray(y[idx]))
        return xs.to(self.device), ys.to(self.device)

    def _example(self, batch_size: int) -> Batch:
        """A padded batch of the model's input shape (for capturing the step)."""
        info = self.data.info
        dtype = torch.long if info.integer_inputs else torch.float32
        x = torch.zeros(
            (batch_size, *info.input_shape), dtype=dtype, device=self.device
        )
        y = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        weight = torch.full((batch_size,), 1.0 / batch_size, device=self.device)
        return Batch(x, y, weight, batch_size)

    # ---------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(
        self,
        glob: Mapping[str, Tensor],
        batch_size: int,
        shard: tuple[int, int] = (0, 1),
    ) -> EvalResult:
        """Evaluate the global model on shard ``i`` of ``n`` of the test split.

        The global model is the travelling tensors with the *global view* of
        the local ones: pFedPara's W2 = 0 (so W = W1 ⊙ (0 + 1) = W1), any
        other kept tensor at its seeded initial value. The shards are
        contiguous and together cover the split exactly once.
        """
        self._load(glob, self._global_view_local)
        i, n = shard
        total = len(self.data.y_test)
        lo, hi = total * i // n, total * (i + 1) // n
        x, y = self._test_rows(lo, hi)
        return self._score(x, y, batch_size)

    @torch.no_grad()
    def evaluate_client(
        self,
        client_id: int,
        glob: Mapping[str, Tensor],
        kept: Channels,
        batch_size: int,
    ) -> EvalResult:
        """The client's own model (global part + its kept part) on its own test split.

        A client that never trained is scored with the initial local part,
        the state it would start from.
        """
        self._load(glob, self.load_local(kept))
        return self._score(*self.client_test_examples(client_id), batch_size)

    def client_test_examples(self, client_id: int) -> tuple[Tensor, Tensor]:
        """The client's own raw test examples and labels, on the device."""
        indices = self.partition.test[client_id]
        if self.partition.test_source == "test":
            x, y = self.data.x_test, self.data.y_test
        else:
            x, y = self.data.x_train, self.data.y_train
        return self._on_device(x, y, indices)

    def _test_rows(self, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        """Rows ``[lo, hi)`` of the test split on the device.

        On a GPU they stay there between evaluations (an actor evaluates the
        same shard every round) when they take at most a tenth of the slice.
        """
        cached = self._test_shard
        if cached is not None and cached[0] == (lo, hi):
            return cached[1], cached[2]
        x, y = self._on_device(self.data.x_test, self.data.y_test, range(lo, hi))
        if x.is_cuda and x.nbytes + y.nbytes <= self._memory_budget // 10:
            self._test_shard = ((lo, hi), x, y)
        return x, y

    def _score(self, x_all: Tensor, y_all: Tensor, batch_size: int) -> EvalResult:
        """Summed loss and correct count of the examples ``x_all``, ``y_all``.

        Every factorized weight is composed once for the whole evaluation.
        Accuracy comes from the LightningModule's torchmetrics metric.
        """
        self.module.eval()
        accuracy = self.module.val_accuracy
        accuracy.reset()
        loss_sum = torch.zeros((), device=self.device)
        count = len(y_all)
        with composed_once(self.module.model):
            for start in range(0, count, batch_size):
                y = y_all[start : start + batch_size]
                x = prepare_batch(
                    x_all[start : start + batch_size], self.data.info, train=False
                )
                with self.fabric.autocast():
                    loss_sum += self.module.validation_step((x, y), start)
        correct = round(float(accuracy.compute()) * count) if count else 0
        return EvalResult(float(loss_sum), correct, count)


def _global_view(model: torch.nn.Module, initial_local: Tensors) -> Tensors:
    """The local tensors as the server's model sees them: pFedPara's W2 = 0."""
    w2 = local_state_names(model)
    return {
        name: torch.zeros_like(t) if name in w2 else t
        for name, t in initial_local.items()
    }
