"""The model a config describes: its spec, whether it fits the data, the backbone.

Checking that the model can take the dataset's examples is torch-free, so the
command line refuses a model that does not fit the data before Ray or torch
start. The driver only needs the backbone (for the state layout and the initial
global tensors); clients wrap the same backbone in the Lightning classifier. Both
build it with the run seed, so every process starts from the same weights.

Example
-------
>>> from fedsim.config import load_config
>>> check_model_fits(load_config(None, ["model.arch=vgg16"]))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fedsim.config.ConfigError: model.arch=vgg16 cannot be built for data.name=digits ...
>>> model = build_backbone(load_config(None), num_classes=10, input_shape=(1, 8, 8))
>>> sum(p.numel() for p in model.parameters()) > 0
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedsim.config import Config, ConfigError, ResourcesConfig
from fedsim.data import dataset_info
from lightning_modules.spec import ModelSpec, input_problem

if TYPE_CHECKING:
    from torch import nn


def model_spec(
    cfg: Config, num_classes: int, input_shape: tuple[int, ...]
) -> ModelSpec:
    """The :class:`ModelSpec` of ``cfg`` for a dataset of this shape."""
    m = cfg.model
    return ModelSpec(
        arch=m.arch,
        num_classes=num_classes,
        input_shape=input_shape,
        param=m.param,
        gamma=m.gamma,
        rank_rule=m.rank_rule,
        nonlinear=m.nonlinear,
    )


def check_model_fits(cfg: Config) -> ModelSpec:
    """The spec of ``cfg``'s model for its dataset; ConfigError if it cannot fit."""
    info = dataset_info(cfg.data.name)
    spec = model_spec(cfg, info.num_classes, info.input_shape)
    problem = input_problem(spec)
    if problem is not None:
        raise ConfigError(
            f"model.arch={cfg.model.arch} cannot be built for data.name="
            f"{cfg.data.name} (input {info.input_shape}): {problem}"
        )
    return spec


def build_backbone(
    cfg: Config, num_classes: int, input_shape: tuple[int, ...]
) -> nn.Module:
    """Build the config's backbone, seeded with the run seed."""
    return seeded_model(model_spec(cfg, num_classes, input_shape), cfg.seed)


def preflight(cfg: Config) -> nn.Module:
    """Check that the data is present and the model fits it; return the model.

    Raises
    ------
    DataError
        The dataset is missing (the message says how to fetch it).
    ConfigError
        The model cannot be built for this dataset.
    """
    from fedsim.data import check_available

    check_available(cfg.data.name, cfg.data.root)
    model = checked_model(cfg)
    check_slots_fit(cfg, model)
    return model


def checked_model(cfg: Config) -> nn.Module:
    """The config's model for its dataset, or a ConfigError saying why not."""
    spec = check_model_fits(cfg)
    return build_backbone(cfg, spec.num_classes, spec.input_shape)


def check_slots_fit(cfg: Config, model: nn.Module) -> None:
    """Refuse a ``clients_per_actor`` whose clients cannot fit the GPU slice.

    The slice is ``gpus_per_client`` of ``resources.gpu_memory_gb`` (or of
    this machine's first GPU when that is not declared); K slots need K times
    :func:`fedsim.cohort.slot_bytes`. Nothing is checked for CPU slices or
    when no GPU size is known.

    Raises
    ------
    ConfigError
        When K slots do not fit (the message gives the K that does).
    """
    res = cfg.resources
    if res.clients_per_actor == 1 or res.gpus_per_client == 0:
        return
    import torch

    from fedsim.cohort import slot_bytes

    if res.gpu_memory_gb is not None:
        gpu = res.gpu_memory_gb * 2**30
    elif torch.cuda.is_available():
        gpu = torch.cuda.get_device_properties(0).total_memory
    else:
        return
    info = dataset_info(cfg.data.name)
    with torch.random.fork_rng(devices=[]):  # dropout: keep the caller's stream
        per_slot = slot_bytes(
            model,
            info.input_shape,
            batch_size=cfg.client.batch_size,
            integer_inputs=info.integer_inputs,
            momentum=cfg.client.momentum > 0,
        )
    budget = gpu * min(res.gpus_per_client, 1.0)
    fits = int(budget // per_slot)
    if res.clients_per_actor * per_slot > budget:
        gib = 2**30
        raise ConfigError(
            f"resources.clients_per_actor: {res.clients_per_actor} clients at "
            f"once need about {res.clients_per_actor * per_slot / gib:.2f} GiB "
            f"({per_slot / gib:.3f} GiB each: model, gradients, optimizer and "
            f"algorithm state, a batch of {cfg.client.batch_size} with its "
            f"activations), but the GPU slice holds {budget / gib:.2f} GiB "
            f"(gpus_per_client={res.gpus_per_client} of a {gpu / gib:.1f} GiB "
            f"GPU); set resources.clients_per_actor to at most {max(fits, 1)}, "
            "give each actor more of a GPU (resources.gpus_per_client) or "
            "use a smaller client.batch_size"
        )


def seeded_model(spec: ModelSpec, seed: int) -> nn.Module:
    """``spec``'s model drawn from ``seed``: the same weights in every process."""
    import torch  # here, so that checking a config never imports torch

    from lightning_modules.models import build_model

    torch.manual_seed(seed)
    return build_model(spec)


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """What a client worker is built from: its model, the run's seed, its slice.

    Workers take this, not the whole config: the training settings travel with
    each task, the data with :meth:`~fedsim.backend.base.Backend.attach`.
    """

    model: ModelSpec
    seed: int
    resources: ResourcesConfig


def worker_spec(cfg: Config) -> WorkerSpec:
    """The :class:`WorkerSpec` of ``cfg`` (torch-free)."""
    info = dataset_info(cfg.data.name)
    return WorkerSpec(
        model=model_spec(cfg, info.num_classes, info.input_shape),
        seed=cfg.seed,
        resources=cfg.resources,
    )
