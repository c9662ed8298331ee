"""What a model is, and whether it can take a dataset's examples: torch-free.

The names of the architectures and parameterizations, the :class:`ModelSpec`
that :func:`lightning_modules.models.build_model` builds, and the check that an
architecture can take an input shape live here without torch, so a command line
can refuse a model that does not fit the data before anything heavy starts.

Example
-------
>>> input_problem(ModelSpec("vgg16", 10, (1, 8, 8)))
'vgg16 needs input_shape (C, H, W) with H, W >= 32, got (1, 8, 8)'
>>> input_problem(ModelSpec("mlp_digits", 10, (1, 8, 8))) is None
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from lightning_modules.rank import RankRule

ParamKind = Literal["original", "lowrank", "fedpara", "pfedpara"]
Arch = Literal["vgg16", "mlp", "mlp_digits", "lstm", "cnn"]
ARCHS: tuple[Arch, ...] = get_args(Arch)

# The smallest image side each convolutional architecture can take.
MIN_IMAGE_SIDE = {"vgg16": 32, "cnn": 16}


@dataclass(frozen=True)
class ModelSpec:
    """What to build.

    Parameters
    ----------
    arch : str
        One of ``ARCHS``.
    num_classes : int
        Number of output logits (vocabulary size for ``lstm``).
    input_shape : tuple of int
        Shape of one example: ``(C, H, W)`` for images, ``(seq_len,)`` for ``lstm``.
    param : {"original", "lowrank", "fedpara", "pfedpara"}
        Parameterization of the reparameterizable layers.
    gamma : float
        Rank knob in [0, 1], meaning set by ``rank_rule``.
    rank_rule : {"paper", "official"}
        Rule turning ``gamma`` into an inner rank.
    nonlinear : bool
        FedPara tanh variant ``tanh(W1) ⊙ tanh(W2)``.
    """

    arch: str
    num_classes: int
    input_shape: tuple[int, ...]
    param: ParamKind = "fedpara"
    gamma: float = 0.1
    rank_rule: RankRule = "paper"
    nonlinear: bool = False


def input_problem(spec: ModelSpec) -> str | None:
    """Why ``spec.arch`` cannot take examples of ``spec.input_shape``, or None."""
    shape, arch = spec.input_shape, spec.arch
    if arch in MIN_IMAGE_SIDE:
        side = MIN_IMAGE_SIDE[arch]
        if len(shape) != 3 or min(shape) < 1 or min(shape[1:]) < side:
            return (
                f"{arch} needs input_shape (C, H, W) with H, W >= {side}, got {shape!r}"
            )
    elif arch == "lstm":
        if len(shape) != 1 or shape[0] < 1:
            return f"lstm needs input_shape (seq_len,), got {shape}"
    elif len(shape) == 0 or min(shape) < 1:
        return f"{arch} needs a non-empty input_shape, got {shape}"
    return None
