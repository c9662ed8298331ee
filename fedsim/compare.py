"""``fedsim compare``: run the variants of one config side by side, then report.

A variant is a small set of overrides on top of the config (and its own
``key=value`` overrides): each parameterization (``original``, ``lowrank``,
``fedpara``, ``pfedpara``) sets ``model.param``, and ``<param>+<encoding>``
(``fedpara+int8``, ``original+topk``, see :data:`ENCODINGS`) sets its
``comm.uplink`` / ``comm.downlink`` codecs too; each strategy of
:data:`fedsim.registry.STRATEGIES` sets ``server.strategy`` (plus what its
entry adds), on the config's parameterization: FedPer, local-only and FedAvg
compare on the same layers, ``model.param=...`` changes it for all (the
``pfedpara`` variant keeps its own). Every variant keeps the config's seed and
data settings, so all of them train on the same partition and sample the same
cohorts; each gets its own run name, ``<name>_<variant>``, and so its own run
directory under ``log.root``. A ``server.settings.KEY=V`` override applies to
every variant whose strategy has that setting (FedProx's ``mu`` reaches the
FedProx variant, not FedAvg's); one that no variant's strategy has is refused.

When the set holds a personalization variant (``pfedpara``, or a strategy
whose clients keep part of the model), every variant carves the same personal test split
(``data.client_test_fraction``: the pfedpara variant's, 0.2 unless the config
says otherwise), so the personal accuracies compare like with like; runs with a
global model then evaluate ``both`` ways, FedPer and local-only ``personal``
(their global model has an untrained head, or there is none).

``fedsim compare`` runs the variants as a sweep along one axis, with
:func:`fedsim.sweep.run_sweep`: on Ray up to ``--max-concurrent`` at once (2 by
default), sharing the cluster's client slots; in-process one after another.
SIGINT or SIGTERM stops every running variant after its round, with a
checkpoint, and the message gives each one's resume line and the variants not
started. The report lists the variants in the order given, scored on personal
accuracy when the set holds a personalization variant (:func:`report_metric`).

Example
-------
>>> named = variant_configs(None, ["rounds=2"])  # the defaults: name quickstart
>>> [(cfg.name, cfg.model.param, cfg.seed) for _, cfg in named]
[('quickstart_original', 'original', 0), ('quickstart_lowrank', 'lowrank', 0), \
('quickstart_fedpara', 'fedpara', 0)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from fedsim.config import Config, ConfigError, load_config
from fedsim.registry import STRATEGIES
from lightning_modules.spec import ParamKind

PARAM_VARIANTS: dict[str, tuple[str, ...]] = {
    param: (f"model.param={param}",) for param in get_args(ParamKind)
}
#: encoding -> its comm.* overrides: both directions, or top-k / sign up and
#: int8 down (a download is the model itself, which they would destroy).
ENCODINGS: dict[str, tuple[str, ...]] = {
    **{
        codec: (f"comm.uplink.codec={codec}", f"comm.downlink.codec={codec}")
        for codec in ("fp16", "bf16", "int8", "int4")
    },
    "topk": (
        "comm.uplink.codec=topk",
        "comm.uplink.fraction=0.1",
        "comm.downlink.codec=int8",
    ),
    "sign": ("comm.uplink.codec=sign", "comm.downlink.codec=int8"),
}
#: variant -> the overrides that make it (applied after the user's overrides).
VARIANTS: dict[str, tuple[str, ...]] = {
    **PARAM_VARIANTS,
    **{
        f"{param}+{encoding}": (*PARAM_VARIANTS[param], *comm)
        for param in PARAM_VARIANTS
        for encoding, comm in ENCODINGS.items()
    },
    **{
        name: (f"server.strategy={name}", *spec.variant)
        for name, spec in STRATEGIES.items()
    },
}
DEFAULT_VARIANTS = ("original", "lowrank", "fedpara")
PERSONAL_PARAM = "pfedpara"
#: variants whose clients keep a part of the model: they need personal test splits.
PERSONAL_VARIANTS = frozenset(
    {
        *(n for n in VARIANTS if n.partition("+")[0] == PERSONAL_PARAM),
        *(n for n, spec in STRATEGIES.items() if spec.keeps_local),
    }
)
#: variants with no usable global model: evaluated on personal splits only.
PERSONAL_ONLY = frozenset(n for n, spec in STRATEGIES.items() if not spec.global_model)


def parse_variants(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"original,fedpara"`` -> ``("original", "fedpara")``, checked.

    Examples
    --------
    >>> parse_variants("original, fedpara")
    ('original', 'fedpara')
    >>> parse_variants("fedpara,fedpar")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fedsim.config.ConfigError: unknown variant fedpar (allowed: original, ...)
    """
    words = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(w.strip() for w in words if w.strip())
    allowed = ", ".join(VARIANTS)
    for name in names:
        if name not in VARIANTS:
            raise ConfigError(f"unknown variant {name} (allowed: {allowed})")
    if not names:
        raise ConfigError(f"--variants names no variant (allowed: {allowed})")
    if len(set(names)) != len(names):
        raise ConfigError(f"--variants names a variant twice: {','.join(names)}")
    return names


def _strategy_of(variant: str, base: Config) -> str:
    """The strategy a variant runs: its own, or the config's."""
    for item in VARIANTS[variant]:
        key, _, value = item.partition("=")
        if key == "server.strategy":
            return value
    return base.server.strategy


def variant_overrides(
    variant: str, base: Config, shared_split: float | None = None
) -> tuple[str, ...]:
    """The overrides that turn ``base`` into ``variant``.

    ``shared_split``: the personal test fraction every variant carves (None:
    not a personalization comparison). A strategy variant of a ``pfedpara``
    config uses ``fedpara`` layers, so it differs from the ``pfedpara`` variant.

    Examples
    --------
    >>> base = Config()
    >>> variant_overrides("lowrank", base)
    ('model.param=lowrank',)
    >>> variant_overrides("lowrank", base, 0.2)  # doctest: +NORMALIZE_WHITESPACE
    ('model.param=lowrank', 'data.client_test_fraction=0.2', 'server.evaluate=both')
    """
    parse_variants([variant])
    out = VARIANTS[variant]
    sets_param = any(item.startswith("model.param=") for item in out)
    if base.model.param == PERSONAL_PARAM and not sets_param:
        out = (*out, "model.param=fedpara")
    if shared_split is not None:
        personal_only = _strategy_of(variant, base) in PERSONAL_ONLY
        out = (
            *out,
            f"data.client_test_fraction={shared_split!r}",
            f"server.evaluate={'personal' if personal_only else 'both'}",
        )
    return out


def variant_configs(
    config: str | Path | None,
    overrides: Sequence[str] = (),
    variants: Sequence[str] = DEFAULT_VARIANTS,
) -> list[tuple[str, Config]]:
    """``(variant, config)`` for every variant, in order; raises ConfigError.

    Every config is ``config`` + ``overrides`` + :func:`variant_overrides`,
    named ``<name>_<variant>``; seed and data settings are the config's for all.
    """
    names = parse_variants(variants)
    general = [o for o in overrides if not o.startswith(SETTINGS)]
    settings = [o for o in overrides if o.startswith(SETTINGS)]
    base = load_config(
        config, [*general, *_applicable(settings, None, config, general)]
    )
    shared: float | None = None
    if PERSONAL_VARIANTS.intersection(names):
        personal = [*general, *VARIANTS[PERSONAL_PARAM]]
        shared = load_config(config, personal).personal_test_fraction
    out, used = [], set()
    for name in names:
        own = variant_overrides(name, base, shared)
        strategy = _strategy_of(name, base)
        kept = _applicable(settings, strategy, config, general)
        used.update(kept)
        cfg = load_config(config, [*general, *own, *kept, f"name={base.name}_{name}"])
        out.append((name, cfg))
    if unused := [o for o in settings if o not in used]:
        raise ConfigError(
            f"{', '.join(unused)}: no variant's strategy has this setting "
            f"(variants: {', '.join(names)})"
        )
    return out


SETTINGS = "server.settings."


def _applicable(
    settings: Sequence[str],
    strategy: str | None,
    config: str | Path | None,
    general: Sequence[str],
) -> list[str]:
    """The ``server.settings.*`` overrides ``strategy`` has (None: the config's)."""
    if strategy is None:
        strategy = load_config(config, general).server.strategy
    fields = {f.name for f in dataclasses.fields(STRATEGIES[strategy].settings)}
    return [o for o in settings if o[len(SETTINGS) :].partition("=")[0] in fields]


def report_metric(variants: Sequence[str]) -> str:
    """The report's ``--metric`` for a set of variants.

    >>> report_metric(["original", "fedpara"]), report_metric(["fedavg", "pfedpara"])
    ('auto', 'personal')
    """
    return "personal" if PERSONAL_VARIANTS.intersection(variants) else "auto"
