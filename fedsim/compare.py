"""``fedsim compare``: run the variants of one config side by side, then report.

A variant is a small set of overrides on top of the config (and its own
``key=value`` overrides): ``original``, ``lowrank``, ``fedpara`` and
``pfedpara`` set ``model.param``; ``fedavg``, ``fedprox``, ``scaffold``,
``feddyn``, ``fedadam``, ``fedyogi``, ``fedadagrad``, ``fedper`` and ``local``
set ``server.strategy``. Every variant keeps the config's seed and data
settings, so all of them train on the same partition and sample the same
cohorts; each gets its own run name, ``<name>_<variant>``, and so its own run
directory under ``log.root``.

When the set holds a personalization variant (``pfedpara``, ``fedper``,
``local``), every variant carves the same personal test split
(``data.client_test_fraction``: the pfedpara variant's, 0.2 unless the config
says otherwise), so the personal accuracies compare like with like; runs with a
global model then evaluate ``both`` ways, FedPer and local-only ``personal``
(their global model has an untrained head, or there is none).

Variants run one after another, in the order given (the report lists them in
that order). Running them concurrently on one Ray cluster is not done here.

Example
-------
>>> named = variant_configs(None, ["rounds=2"])  # the defaults: name quickstart
>>> [(cfg.name, cfg.model.param, cfg.seed) for _, cfg in named]
[('quickstart_original', 'original', 0), ('quickstart_lowrank', 'lowrank', 0), \
('quickstart_fedpara', 'fedpara', 0)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedsim.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from fedsim.experiment import BackendName
    from fedsim.loop import RunResult

#: variant -> the overrides that make it (applied after the user's overrides).
VARIANTS: dict[str, tuple[str, ...]] = {
    "original": ("model.param=original",),
    "lowrank": ("model.param=lowrank",),
    "fedpara": ("model.param=fedpara",),
    "pfedpara": ("model.param=pfedpara",),
    "fedavg": ("server.strategy=fedavg",),
    "fedprox": ("server.strategy=fedprox",),
    "scaffold": ("server.strategy=scaffold",),
    "feddyn": ("server.strategy=feddyn",),
    "fedadam": ("server.strategy=fedadam",),
    "fedyogi": ("server.strategy=fedyogi",),
    "fedadagrad": ("server.strategy=fedadagrad",),
    "fedper": ("server.strategy=fedper", "model.param=original"),
    "local": ("server.strategy=local",),
}
DEFAULT_VARIANTS = ("original", "lowrank", "fedpara")
#: variants whose clients keep a part of the model: they need personal test splits.
PERSONAL_VARIANTS = frozenset({"pfedpara", "fedper", "local"})
#: variants with no usable global model: evaluated on personal splits only.
PERSONAL_ONLY = frozenset({"fedper", "local"})


def parse_variants(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"original,fedpara"`` -> ``("original", "fedpara")``, checked.

    Examples
    --------
    >>> parse_variants("original, fedpara")
    ('original', 'fedpara')
    >>> parse_variants("fedpara,fedpar")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fedsim.config.ConfigError: unknown variant fedpar (allowed: original, ..., local)
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
    >>> variant_overrides("fedper", base, 0.2)  # doctest: +NORMALIZE_WHITESPACE
    ('server.strategy=fedper', 'model.param=original',
     'data.client_test_fraction=0.2', 'server.evaluate=personal')
    """
    parse_variants([variant])
    out = VARIANTS[variant]
    sets_param = any(item.startswith("model.param=") for item in out)
    if base.model.param == "pfedpara" and not sets_param:
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
    base = load_config(config, overrides)
    shared: float | None = None
    if PERSONAL_VARIANTS.intersection(names):
        pfedpara = load_config(config, [*overrides, *VARIANTS["pfedpara"]])
        shared = pfedpara.personal_test_fraction
    return [
        (
            name,
            load_config(
                config,
                [
                    *overrides,
                    *variant_overrides(name, base, shared),
                    f"name={base.name}_{name}",
                ],
            ),
        )
        for name in names
    ]


def run_variants(
    configs: Sequence[tuple[str, Config]],
    backend: BackendName = "local",
    on_result: Callable[[str, Config, RunResult], None] | None = None,
) -> list[RunResult]:
    """Run every config one after another with ``run_experiment``.

    With ``backend="ray"``, Ray must already be initialized by the caller
    (:func:`fedsim.backend.ray_pool.start_ray`, as ``fedsim compare`` does);
    each run starts and releases its own pool of client actors. ``on_result``
    is called after each run (to print its summary). A
    :class:`~fedsim.loop.RunStopped` from a run propagates; the runs before it
    keep their directories.
    """
    from fedsim.experiment import run_experiment

    results = []
    for name, cfg in configs:
        result = run_experiment(cfg, backend=backend)
        if on_result is not None:
            on_result(name, cfg, result)
        results.append(result)
    return results
