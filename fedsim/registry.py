"""The strategy registry: every strategy fedsim knows, in one torch-free table.

An entry says what the rest of fedsim may know about a strategy: its name, its
typed settings (``server.settings`` in a config), its traits and a one-line
summary of its conventions. The class that runs it is named by an import path
and imported only when a run builds it, so that reading a config, the command
line's help and ``fedsim compare`` stay free of torch. Config validation, the
compare variants, the CLI help and the README's strategy table read this table;
nothing else in fedsim names a strategy.

Adding a strategy is its own module under ``fedsim/strategy/`` plus one entry
here (and its settings class, when it has settings of its own).

Example
-------
>>> spec = STRATEGIES["fedprox"]
>>> spec.settings().mu, spec.builder
(0.01, 'fedsim.strategy.fedprox:FedProx')
>>> settings_problems(FedProxSettings(mu=-1.0))
[('mu', 'must be >= 0, got -1.0')]
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

DEFAULT = "fedavg"
"""The strategy of a config that names none."""

Weighting = Literal["examples", "uniform"]
"""``server.weighting``: each client's weight in every server mean.

``examples``: ``n_i`` (the objective ``sum_i n_i F_i / n``); ``uniform``: 1 (the
objective ``(1/N) sum_i F_i``). A strategy's default is its paper's.
"""


# --------------------------------------------------------------------------- settings
Check = tuple[str, Callable[[Any], bool], str]
"""``(field, is_allowed(value), what is allowed)``."""


@dataclass(frozen=True)
class Settings:
    """Base of every strategy's settings (``server.settings``); none by default.

    Subclasses add typed fields with defaults and, where values have limits,
    :meth:`checks` (read by :func:`settings_problems`).
    """

    def checks(self) -> list[Check]:
        """The limits of the fields."""
        return []


def _positive(name: str) -> Check:
    return name, lambda v: v > 0, "must be > 0"


@dataclass(frozen=True)
class FedProxSettings(Settings):
    """FedProx: ``mu``, the weight of ``mu/2 ||w - w_g||^2`` in every local loss."""

    mu: float = 0.01

    def checks(self) -> list[Check]:
        """The limits of the fields."""
        return [("mu", lambda v: v >= 0, "must be >= 0")]


@dataclass(frozen=True)
class FedDynSettings(Settings):
    """FedDyn: ``alpha``, its dynamic regularizer; an optional stabilizer.

    ``max_grad_norm``: clip each local step's gradient (of the whole FedDyn
    loss, over the travelling parameters) to this norm, as the authors' code
    (10) and FL-bench do; null: no clipping, the paper's algorithm. Their other
    stabilizer, weight decay (1e-3), is ``client.weight_decay``.
    ``all_client_mean``: also evaluate the mean of every client's last model
    (all ``N``, the initial model for those never sampled), the curve the
    authors plot (``all_model``), beside the corrected server model; the
    server then holds one model per client.
    """

    alpha: float = 0.1
    max_grad_norm: float | None = None
    all_client_mean: bool = False

    def checks(self) -> list[Check]:
        """The limits of the fields."""
        return [
            _positive("alpha"),
            ("max_grad_norm", lambda v: v is None or v > 0, "must be > 0 or null"),
        ]


@dataclass(frozen=True)
class ScaffoldSettings(Settings):
    """SCAFFOLD: ``lr``, the global step size eta_g (``x <- x + lr * mean dy``).

    1, Karimireddy et al.'s experiments and FL-bench's ``global_lr`` default.
    """

    lr: float = 1.0

    def checks(self) -> list[Check]:
        """The limits of the fields."""
        return [_positive("lr")]


@dataclass(frozen=True)
class ServerOptSettings(Settings):
    """FedAdam and FedYogi (Reddi et al., 2021): the server optimizer.

    ``lr`` 0.01: Flower's FedYogi default (Reddi et al. tune the server rate
    per task; Flower's FedAdam default is 0.1); ``beta1`` 0.9, ``beta2`` 0.99:
    Reddi et al.'s experiments; ``tau`` 1e-3: Flower's current FedAdam default
    (Reddi et al. tune it). ``bias_correction`` false: Reddi et
    al.'s Algorithm 2 has none; true scales ``lr`` by ``sqrt(1 - beta2^t) /
    (1 - beta1^t)`` (round ``t`` from 1), as Flower's FedAdam does. The second
    moment starts at ``v0 = tau^2`` (Reddi's ``v_{-1} >= tau^2``; Flower: 0).
    """

    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    bias_correction: bool = False

    def checks(self) -> list[Check]:
        """The limits of the fields."""
        in_01 = (lambda v: 0 <= v < 1, "must be in [0, 1)")
        return [_positive("lr"), ("beta1", *in_01), ("beta2", *in_01), _positive("tau")]


@dataclass(frozen=True)
class FedAdagradSettings(ServerOptSettings):
    """FedAdagrad: the server optimizer without momentum.

    ``beta1`` 0: plain Adagrad, as Reddi et al. state FedAdagrad and as
    Flower's FedAdagrad forces; ``lr`` 0.1: Flower's FedAdagrad default.
    """

    lr: float = 0.1
    beta1: float = 0.0


@dataclass(frozen=True)
class FedAvgMSettings(Settings):
    """FedAvgM (Hsu et al., 2019): server learning rate and momentum."""

    lr: float = 1.0
    momentum: float = 0.9

    def checks(self) -> list[Check]:
        """The limits of the fields."""
        return [
            _positive("lr"),
            ("momentum", lambda v: 0 <= v < 1, "must be in [0, 1)"),
        ]


@dataclass(frozen=True)
class FedPerSettings(Settings):
    """FedPer: how many of the model's last layers stay on each client."""

    layers: int = 1

    def checks(self) -> list[Check]:
        """The limits of the fields."""
        return [("layers", lambda v: v >= 1, "must be >= 1")]


def settings_problems(settings: Settings) -> list[tuple[str, str]]:
    """``(field, message)`` for each value outside its limits; empty when valid."""
    out = []
    for name, ok, allowed in settings.checks():
        value = getattr(settings, name)
        if not ok(value):
            out.append((name, f"{allowed}, got {value}"))
    return out


def settings_dict(settings: Settings) -> dict[str, Any]:
    """The settings' own fields as plain values (what config.yaml records)."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class StrategySpec:
    """What fedsim knows about one strategy without importing it.

    Attributes
    ----------
    name
        ``server.strategy``.
    builder
        ``"module:Class"`` of its :class:`~fedsim.strategy.base.Strategy`.
    summary
        One line: what it does and its conventions (CLI help, README table).
    settings
        Its settings class (``server.settings``).
    keeps_local
        Clients keep part of the model between rounds (FedPer's head, a
        local-only model); they need personal test splits.
    global_model
        The server's model is worth evaluating on the global test split
        (False: FedPer's head is never trained there, local-only has none).
    corrects_gradients
        Its client half changes gradients: fp16 loss scaling would scale them.
    channels
        What travels besides ``"model"`` (down, up).
    client_copies
        Copies of the travelling tensors each client keeps on disk between its
        rounds (SCAFFOLD's ``c_i``, FedDyn's ``g_i``): what ``fedsim params``
        counts as client state.
    variant
        Overrides ``fedsim compare`` adds to run it as a variant.
    weighting
        The default ``server.weighting``: the one its paper's objective names.
    """

    name: str
    builder: str
    summary: str
    settings: type[Settings] = Settings
    keeps_local: bool = False
    global_model: bool = True
    corrects_gradients: bool = False
    channels: tuple[str, ...] = ()
    client_copies: int = 0
    variant: tuple[str, ...] = ()
    weighting: Weighting = "examples"

    def build(self, *args: Any) -> Any:
        """Import the strategy class and instantiate it with ``args``."""
        module, _, name = self.builder.partition(":")
        return getattr(importlib.import_module(module), name)(*args)


def _table(*specs: StrategySpec) -> Mapping[str, StrategySpec]:
    return {spec.name: spec for spec in specs}


STRATEGIES: Mapping[str, StrategySpec] = _table(
    StrategySpec(
        "fedavg",
        "fedsim.strategy.fedavg:FedAvg",
        "weighted mean of every travelling tensor (McMahan et al., 2017: n_k/n)",
    ),
    StrategySpec(
        "fedavgm",
        "fedsim.strategy.fedavgm:FedAvgM",
        "FedAvg's mean as a pseudo-gradient, server SGD with momentum (Hsu et al., "
        "2019; Flower's form: v ← momentum·v + (x − mean), x ← x − lr·v)",
        FedAvgMSettings,
    ),
    StrategySpec(
        "fedprox",
        "fedsim.strategy.fedprox:FedProx",
        "FedAvg plus mu/2 ‖w − w_global‖² in each local loss, on the travelling "
        "tensors: FedPara factors, not composed weights (Li et al., 2020: p_k = "
        "n_k/n)",
        FedProxSettings,
    ),
    StrategySpec(
        "scaffold",
        "fedsim.strategy.scaffold:Scaffold",
        "control variates, option II; x ← x + lr·mean Δy, c ← c + (1/N)·Σ w_i Δc_i "
        "with the same weights (Karimireddy et al., 2020: objective (1/N) Σ f_i)",
        ScaffoldSettings,
        corrects_gradients=True,
        channels=("control",),
        weighting="uniform",
        client_copies=1,
    ),
    StrategySpec(
        "feddyn",
        "fedsim.strategy.feddyn:FedDyn",
        "dynamic regularizer alpha on the travelling tensors (FedPara factors), "
        "uniform model mean corrected by h; examples weighting gives client i "
        "alpha/w_i, w_i = n_i/mean n, as the authors' code (Acar et al., 2021: "
        "objective (1/m) Σ L_k)",
        FedDynSettings,
        weighting="uniform",
        client_copies=1,
    ),
    StrategySpec(
        "fednova",
        "fedsim.strategy.fednova:FedNova",
        "normalized averaging: each client's change divided by its local steps, "
        "scaled by the weighted mean steps (Wang et al., 2020: p_i = n_i/n)",
        channels=("steps",),
    ),
    *(
        StrategySpec(
            name,
            "fedsim.strategy.fedopt:FedOpt",
            f"{rule} on the mean's pseudo-gradient; v0 = tau², no bias "
            "correction (Reddi et al., 2021, Algorithm 2: uniform mean; Flower "
            "weights by examples, starts v at 0, and bias-corrects FedAdam)",
            settings,
            weighting="uniform",
        )
        for name, rule, settings in (
            ("fedadam", "Adam", ServerOptSettings),
            ("fedyogi", "Yogi", ServerOptSettings),
            ("fedadagrad", "Adagrad (no momentum)", FedAdagradSettings),
        )
    ),
    StrategySpec(
        "fedper",
        "fedsim.strategy.fedavg:FedPer",
        "FedAvg with the last `layers` layers kept on each client (Arivazhagan "
        "et al., 2019; Flower's baselines keep 2)",
        FedPerSettings,
        keeps_local=True,
        global_model=False,
    ),
    StrategySpec(
        "local_only",
        "fedsim.strategy.fedavg:LocalOnly",
        "every client trains its own model; nothing travels",
        keeps_local=True,
        global_model=False,
    ),
)
"""``server.strategy`` -> its :class:`StrategySpec`."""


def strategy_spec(name: str) -> StrategySpec:
    """The entry of ``name``; ValueError naming the choices when there is none."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}"
        ) from None


def _yaml(value: Any) -> str:
    """``value`` as a config file spells it (``null``, ``false``)."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def markdown_table() -> str:
    """The README's strategy table, rendered from this registry.

    >>> markdown_table().splitlines()[2].startswith("| `fedavg` |")
    True
    """
    rows = [
        "| strategy | what it does, and its conventions | default `server.weighting` "
        "| `server.settings` |",
        "|---|---|---|---|",
    ]
    for spec in STRATEGIES.values():
        defaults = settings_dict(spec.settings())
        keys = ", ".join(f"`{k}: {_yaml(v)}`" for k, v in defaults.items())
        traits = []
        if spec.channels:
            traits.append("also travels: " + ", ".join(f"`{c}`" for c in spec.channels))
        if spec.keeps_local:
            traits.append("clients keep a model part")
        extra = f" ({'; '.join(traits)})" if traits else ""
        rows.append(
            f"| `{spec.name}` | {spec.summary}{extra} | `{spec.weighting}` | {keys} |"
        )
    return "\n".join(rows)
