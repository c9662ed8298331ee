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
    return checked_model(cfg)


def checked_model(cfg: Config) -> nn.Module:
    """The config's model for its dataset, or a ConfigError saying why not."""
    spec = check_model_fits(cfg)
    return build_backbone(cfg, spec.num_classes, spec.input_shape)


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
