"""The model a config describes, built without importing Lightning.

The driver only needs the backbone (for the state layout and the initial global
tensors); clients wrap the same backbone in the Lightning classifier. Both build
it with the run seed, so every process starts from the same weights.

Example
-------
>>> from fedsim.config import load_config
>>> model = build_backbone(load_config(None), num_classes=10, input_shape=(1, 8, 8))
>>> sum(p.numel() for p in model.parameters()) > 0
True
"""

from __future__ import annotations

import torch
from torch import nn

from fedsim.config import Config
from lightning_modules.models import ModelSpec, build_model


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


def build_backbone(
    cfg: Config, num_classes: int, input_shape: tuple[int, ...]
) -> nn.Module:
    """Build the config's backbone, seeded with the run seed."""
    torch.manual_seed(cfg.seed)
    return build_model(model_spec(cfg, num_classes, input_shape))
