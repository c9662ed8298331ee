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

from typing import TYPE_CHECKING

from fedsim.config import Config, ConfigError
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
    import torch  # here, so that checking a config never imports torch

    from lightning_modules.models import build_model

    torch.manual_seed(cfg.seed)
    return build_model(model_spec(cfg, num_classes, input_shape))
