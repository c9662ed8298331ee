"""A client's training step: eager under Fabric, compiled, or one CUDA graph.

:class:`ClientRunner <fedsim.client.ClientRunner>` runs every step through a
:class:`StepEngine`, which picks one of three forms from ``resources``:

eager (``compile=off``, the default)
    Lightning Fabric's step: autocast, ``fabric.backward``, the optimizer. On
    the CPU, results are bit-identical for any number of actors.
compiled (``compile=default | max-autotune | reduce-overhead``)
    The forward pass and loss go through ``torch.compile`` (the backward pass
    follows through AOTAutograd); Fabric still runs backward and the optimizer.
    The module itself is not wrapped, so state-dict names stay as they are.
    Batches are padded to one shape (see :mod:`fedsim.data.batches`), so one
    graph serves every batch of every client.
captured (``cuda_graph=true``, CUDA only)
    The whole step -- forward, loss, backward, SGD update -- is one CUDA graph
    replayed per batch: one launch instead of hundreds. The batch, learning
    rate and momentum buffers are tensors the graph reads in place. This form
    is plain torch, not Fabric: Fabric's optimizer step is ``torch.optim.SGD``,
    which turns a tensor learning rate into a Python number (a host sync, and a
    constant frozen into the graph), and fp16 loss scaling (refused with this
    form) reads the gradients back to the host. The SGD update here is the
    same rule as ``torch.optim.SGD`` (weight decay, momentum, no dampening).
    The client algorithm's hooks are recorded too: the tensors they read
    (FedProx's global model, SCAFFOLD's correction, FedDyn's terms) are static
    inputs of the graph, refilled for every client.

Compilation and capture happen on the first client an actor trains; their
seconds are reported apart from training (:attr:`StepEngine.setup_seconds`).
The compiled kernels land in torch's on-disk caches (``compile_cache_dir``),
which the next actor on the node and a resumed run read instead of compiling.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fedsim.algorithm import AlgoState, ClientAlgorithm, hooked_step
from fedsim.config import ResourcesConfig
from fedsim.data.batches import Batch
from fedsim.messages import ClientHParams

if TYPE_CHECKING:
    from lightning.fabric import Fabric
    from torch import nn

    from lightning_modules.classifier import Classifier

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # before capture: cuBLAS/cuDNN set-up and compilation, lr 0


def apply_numeric_policy(resources: ResourcesConfig) -> None:
    """Set matmul/conv precision and cuDNN autotuning for this process.

    TF32 for convolutions follows ``matmul_precision``: torch enables it for
    cuDNN by default, which would make "highest" a half-truth on a GPU.
    """
    torch.set_float32_matmul_precision(resources.matmul_precision)
    torch.backends.cudnn.allow_tf32 = resources.matmul_precision != "highest"
    torch.backends.cudnn.benchmark = resources.cudnn_benchmark
    if resources.compile_cache_dir is not None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = resources.compile_cache_dir


def _step_state(algorithm: ClientAlgorithm, state: AlgoState) -> AlgoState:
    """The namespaces of ``state`` that the algorithm's step hooks read."""
    return {ns: state[ns] for ns in algorithm.step_state}


def shapes_of(tensors: Mapping[str, Tensor]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Names and shapes of ``tensors``, hashable (a capture's key)."""
    return tuple((name, tuple(t.shape)) for name, t in tensors.items())


class StepEngine:
    """Runs a client's optimizer steps in the form ``resources`` asks for.

    Parameters
    ----------
    module
        The classifier (its ``training_step`` gives the loss).
    fabric, wrapped, optimizer
        Fabric and what ``fabric.setup`` returned for ``module``.
    device
        Where training runs; capture needs CUDA and is skipped elsewhere.
    resources
        ``compile``, ``cuda_graph`` and ``precision``.
    """

    def __init__(
        self,
        module: Classifier,
        fabric: Fabric,
        wrapped: Any,
        optimizer: Any,
        device: torch.device,
        resources: ResourcesConfig,
    ) -> None:
        self.module, self.fabric = module, fabric
        self.wrapped, self.optimizer = wrapped, optimizer
        self.device = device
        self.capture = resources.cuda_graph and device.type == "cuda"
        if resources.cuda_graph and not self.capture:
            log.warning("resources.cuda_graph needs CUDA; steps run uncaptured here")
        self.compiled = resources.compile != "off"
        self.loss_fn: Callable[..., Tensor] = module.training_step
        if self.compiled:
            mode = None if resources.compile == "default" else resources.compile
            self.loss_fn = torch.compile(module.training_step, mode=mode, dynamic=False)
        self.autocast_dtype = {"bf16-mixed": torch.bfloat16}.get(resources.precision)
        self.loss_sum = torch.zeros((), device=device)
        self.setup_seconds = 0.0  # compile and capture, since the last read
        self._warm = not self.compiled  # the compiled step has run once
        self._graph: _CapturedStep | None = None
        # What records a captured step: a CUDA graph (tests use EagerRecorder).
        self.recorder: StepRecorder = StepRecorder()

    @property
    def padded(self) -> bool:
        """Whether every batch must have the same shape (compiled or captured)."""
        return self.compiled or self.capture

    def take_setup_seconds(self) -> float:
        """Seconds spent compiling or capturing since the last call."""
        seconds, self.setup_seconds = self.setup_seconds, 0.0
        return seconds

    # ---------------------------------------------------------------- a client

    def prepare(
        self,
        hp: ClientHParams,
        algorithm: ClientAlgorithm,
        state: AlgoState,
        params: Mapping[str, nn.Parameter],
        example: Batch,
    ) -> bool:
        """Set up for a client before it is seeded; True if its steps are captured.

        Capture (on the first client, or when the batch size, optimizer
        settings, algorithm or the layout of its step state change) runs
        warm-up steps on ``example``, a padded batch of the client's shape,
        and those draw random numbers: so it happens here, before the caller
        seeds the client's generators. The algorithm's step state (FedProx's
        global model, SCAFFOLD's correction) becomes static tensors of the
        graph, refilled for every client.
        """
        if not self.capture:
            return False
        step_state = _step_state(algorithm, state)
        key = (
            hp.batch_size,
            hp.momentum,
            hp.weight_decay,
            algorithm,
            tuple((ns, shapes_of(t)) for ns, t in step_state.items()),
        )
        if self._graph is None or self._graph.key != key:
            t0 = time.perf_counter()
            self._graph = None  # free the old graph's pool first
            self._graph = _CapturedStep(
                self, key, algorithm, step_state, params, example
            )
            self._warm = True  # warm-up compiled the step too
            self.setup_seconds += time.perf_counter() - t0
        return True

    def begin(self, hp: ClientHParams, state: AlgoState, captured: bool) -> None:
        """Fresh optimizer state, this client's learning rate and step state."""
        for group in self.optimizer.param_groups:
            group.update(lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        self.optimizer.state.clear()  # fresh SGD momentum per client
        if captured:
            assert self._graph is not None
            self._graph.reset(hp.lr, state)

    def step(
        self,
        batch: Batch,
        params: Mapping[str, nn.Parameter],
        algorithm: ClientAlgorithm,
        state: AlgoState,
        captured: bool,
    ) -> None:
        """One optimizer step on ``batch``; its summed loss adds to ``loss_sum``."""
        if captured:
            assert self._graph is not None
            self._graph.replay(batch)
            return
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        # training_step is called directly (not through the wrapper's forward),
        # so mixed precision is entered here.
        with self.fabric.autocast():
            loss = self.loss_fn(_inputs(batch), 0)
        hooked_step(algorithm, state, params, loss, self.fabric.backward)
        self.optimizer.step()
        self.loss_sum += loss.detach() * batch.size
        if not self._warm:  # the first compiled step: tracing and compiling
            self._warm = True
            self.setup_seconds += time.perf_counter() - t0

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The precision context of a captured step (no autocast weight cache).

        A captured graph replays kernels on fixed memory: autocast's cache of
        casted weights would hold copies made at capture time.
        """
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(
            self.device.type, dtype=self.autocast_dtype, cache_enabled=False
        )


@torch.no_grad()
def sgd_update(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    buffers: Sequence[Tensor],
    neg_lr: Tensor,
    *,
    momentum: float,
    weight_decay: float,
) -> None:
    """``torch.optim.SGD``'s step (no dampening, no Nesterov) with a tensor lr.

    ``buffers`` start at zero for a client: ``momentum * 0 + g`` is the ``g``
    that SGD copies into a new buffer. ``neg_lr`` is ``-lr`` as a 0-d tensor on
    the parameters' device, read by the kernels when they run, so a captured
    graph follows a new learning rate without a capture or a host sync.

    Examples
    --------
    >>> p, g = [torch.ones(2)], [torch.full((2,), 0.5)]
    >>> sgd_update(p, g, [torch.zeros(2)], torch.tensor(-0.1),
    ...            momentum=0.0, weight_decay=0.0)
    >>> p[0].tolist()
    [0.949999988079071, 0.949999988079071]
    """
    step: list[Tensor] = list(grads)
    if weight_decay:
        step = list(torch._foreach_add(step, list(params), alpha=weight_decay))
    if momentum:
        torch._foreach_mul_(list(buffers), momentum)
        torch._foreach_add_(list(buffers), step)
        step = list(buffers)
    torch._foreach_add_(list(params), list(torch._foreach_mul(step, neg_lr)))


def _inputs(batch: Batch) -> tuple[Tensor, ...]:
    if batch.weight is None:
        return (batch.x, batch.y)
    return (batch.x, batch.y, batch.weight)


class StepRecorder:
    """Turns a step function into a replayable step: a CUDA graph.

    ``record(step, params)`` warms ``step`` up (cuBLAS and cuDNN set-up,
    compilation), records it once and returns the replay. Warm-up runs with
    a learning rate of 0, so the weights do not move.
    """

    def record(
        self, step: Callable[[], None], params: list[Tensor]
    ) -> Callable[[], None]:
        """Warm up on a side stream, then capture one step; return its replay."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                for p in params:
                    p.grad = None
                step()
        torch.cuda.current_stream().wait_stream(side)
        for p in params:
            p.grad = None  # the graph allocates its gradients in its own pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return graph.replay


class EagerRecorder(StepRecorder):
    """The same protocol without a GPU: replay runs the step again.

    What a captured step adds to training -- the static inputs, the tensor
    learning rate, the in-place momentum, the loss summed on the device, the
    warm-up that must not move the weights -- then runs on the CPU, where
    tests can compare it with the eager step.
    """

    def record(
        self, step: Callable[[], None], params: list[Tensor]
    ) -> Callable[[], None]:
        """Warm up as the CUDA recorder does; replay = a fresh eager step."""

        def replay() -> None:
            for p in params:
                p.grad = None  # a graph's backward writes its gradients anew
            step()

        for _ in range(WARMUP_STEPS):
            replay()
        return replay


class _CapturedStep:
    """The whole training step, recorded once over static tensors."""

    def __init__(
        self,
        engine: StepEngine,
        key: Any,
        algorithm: ClientAlgorithm,
        step_state: AlgoState,
        params: Mapping[str, nn.Parameter],
        example: Batch,
    ) -> None:
        if example.weight is None:
            raise ValueError("a captured step takes padded batches")
        self.engine, self.key, self.algorithm = engine, key, algorithm
        _, self.momentum, self.weight_decay, _, _ = key
        self.params: list[Tensor] = [
            p for p in engine.module.parameters() if p.requires_grad
        ]
        self.named = dict(params)  # the travelling parameters the hooks see
        self.neg_lr = torch.zeros((), device=engine.device)  # -lr; 0 in warm-up
        self.buffers = [torch.zeros_like(p) for p in self.params]  # SGD momentum
        self.count = torch.zeros((), device=engine.device)  # real rows of the batch
        self.static = (example.x.clone(), example.y.clone(), example.weight.clone())
        self.state = {
            ns: {n: t.detach().clone() for n, t in group.items()}
            for ns, group in step_state.items()
        }
        saved_sum = engine.loss_sum.clone()
        self._replay = engine.recorder.record(self._one_step, self.params)
        engine.loss_sum.copy_(saved_sum)  # warm-up losses are not the client's
        torch._foreach_zero_(self.buffers)
        log.info("captured the training step (batch %s)", key[0])

    def reset(self, lr: float, state: AlgoState) -> None:
        """A new client: its learning rate, zero momentum, its step state."""
        self.neg_lr.fill_(-lr)
        torch._foreach_zero_(self.buffers)
        for ns, group in self.state.items():
            for name, t in group.items():
                t.copy_(state[ns][name])

    def replay(self, batch: Batch) -> None:
        """Copy ``batch`` into the static inputs and run the recorded step."""
        x, y, w = self.static
        if batch.weight is None or batch.x.shape != x.shape:
            raise ValueError(
                f"a captured step takes padded batches of shape {tuple(x.shape)}"
            )
        x.copy_(batch.x)
        y.copy_(batch.y)
        w.copy_(batch.weight)
        self.count.fill_(batch.size)
        self._replay()

    def _one_step(self) -> None:
        engine, algorithm = self.engine, self.algorithm
        with engine.autocast():
            loss = engine.loss_fn(self.static, 0)
        algorithm.loss(self.state, self.named, loss).backward()
        grads = {n: p.grad for n, p in self.named.items() if p.grad is not None}
        corrected = algorithm.gradients(self.state, grads)  # type: ignore[arg-type]
        by_id = {id(self.named[n]): g for n, g in corrected.items()}
        step = [by_id.get(id(p), p.grad) for p in self.params]
        if any(g is None for g in step):
            raise RuntimeError("a trainable parameter got no gradient in the step")
        sgd_update(
            self.params,
            step,  # type: ignore[arg-type]
            self.buffers,
            self.neg_lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
        )
        engine.loss_sum.add_(loss.detach() * self.count)
