"""Experiment configuration: YAML into typed, frozen dataclasses.

A config file holds only the keys that differ from the defaults below; ``key=value``
overrides are applied on top. Every key and value is checked before anything starts,
and a mistake raises :class:`ConfigError` with a message that names the key and says
what is allowed.

Example
-------
>>> cfg = load_config(None, ["rounds=3", "model.gamma=0.25"])
>>> cfg.rounds, cfg.model.gamma, cfg.model.param
(3, 0.25, 'fedpara')
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from fedsim.data.base import DatasetName

Partition = Literal["iid", "dirichlet", "shards", "natural"]
ParamKind = Literal["original", "lowrank", "fedpara", "pfedpara"]
RankRule = Literal["paper", "official"]
StrategyName = Literal["fedavg"]
Precision = Literal["32-true", "16-mixed", "bf16-mixed"]
Arch = Literal["vgg16", "mlp", "mlp_digits", "lstm", "cnn"]


class ConfigError(ValueError):
    """A config key or value is wrong; the message says how to fix it."""


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where it lives, and how it is split across clients."""

    name: DatasetName = "digits"
    root: str | None = None
    num_clients: int = 50
    partition: Partition = "dirichlet"
    alpha: float = 0.5
    shards_per_client: int = 2
    client_test_fraction: float = 0.0
    synthetic_train: int = 50_000
    synthetic_test: int = 10_000


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and its parameterization (see ``lightning_modules.models``)."""

    arch: Arch = "mlp_digits"
    param: ParamKind = "fedpara"
    gamma: float = 0.5
    rank_rule: RankRule = "paper"
    nonlinear: bool = False


@dataclass(frozen=True)
class ClientConfig:
    """Local training: the learning rate of round t is ``lr * lr_decay**t``."""

    epochs: int = 5
    batch_size: int = 16
    lr: float = 0.05
    lr_decay: float = 1.0
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass(frozen=True)
class ServerConfig:
    """Cohort size, aggregation strategy and global evaluation."""

    strategy: StrategyName = "fedavg"
    clients_per_round: int = 10
    eval_every: int = 1
    eval_batch_size: int = 1024


@dataclass(frozen=True)
class ResourcesConfig:
    """Where clients run: Ray address, actor pool size and each actor's slice."""

    address: str | None = None
    num_actors: int | None = None
    cpus_per_client: float = 1.0
    gpus_per_client: float = 0.0
    cap_gpu_memory: bool = True
    precision: Precision = "32-true"
    max_client_retries: int = 1


@dataclass(frozen=True)
class LogConfig:
    """Run directory, TensorBoard and checkpoints."""

    root: str = "runs"
    checkpoint_every: int = 5
    tensorboard: bool = True
    progress: bool = True


@dataclass(frozen=True)
class Config:
    """One federated experiment."""

    name: str = "quickstart"
    seed: int = 0
    rounds: int = 20
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain nested dicts (YAML/JSON ready)."""
        return dataclasses.asdict(self)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _validate(cfg: Config) -> None:
    _check(cfg.rounds >= 1, "rounds", f"must be >= 1, got {cfg.rounds}")
    _check(bool(cfg.name.strip()), "name", "must be a non-empty string")
    d, m, c, s, r = cfg.data, cfg.model, cfg.client, cfg.server, cfg.resources
    _check(d.num_clients >= 1, "data.num_clients", "must be >= 1")
    _check(d.alpha > 0, "data.alpha", f"must be > 0 (paper: 0.5), got {d.alpha}")
    _check(d.shards_per_client >= 1, "data.shards_per_client", "must be >= 1")
    _check(
        0.0 <= d.client_test_fraction < 1.0,
        "data.client_test_fraction",
        f"must be in [0, 1), got {d.client_test_fraction}",
    )
    _check(0.0 <= m.gamma <= 1.0, "model.gamma", f"must be in [0, 1], got {m.gamma}")
    _check(c.epochs >= 1, "client.epochs", "must be >= 1")
    _check(c.batch_size >= 1, "client.batch_size", "must be >= 1")
    _check(c.lr > 0, "client.lr", f"must be > 0, got {c.lr}")
    _check(0 < c.lr_decay <= 1, "client.lr_decay", "must be in (0, 1]")
    _check(
        1 <= s.clients_per_round <= d.num_clients,
        "server.clients_per_round",
        f"must be between 1 and data.num_clients ({d.num_clients}), "
        f"got {s.clients_per_round}",
    )
    _check(s.eval_every >= 1, "server.eval_every", "must be >= 1")
    _check(r.cpus_per_client > 0, "resources.cpus_per_client", "must be > 0")
    _check(
        0 <= r.gpus_per_client <= 1 or float(r.gpus_per_client).is_integer(),
        "resources.gpus_per_client",
        "must be a fraction of one GPU (e.g. 0.25 for four clients per GPU) "
        "or a whole number of GPUs",
    )
    _check(
        r.num_actors is None or r.num_actors >= 1,
        "resources.num_actors",
        "must be >= 1, or null to size the pool from the cluster",
    )
    _check(r.max_client_retries >= 0, "resources.max_client_retries", "must be >= 0")
    _check(cfg.log.checkpoint_every >= 0, "log.checkpoint_every", "0 disables; >= 0")


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML file (or the defaults when ``path`` is None) and apply overrides.

    Parameters
    ----------
    path
        A YAML file holding a subset of the keys of :class:`Config`.
    overrides
        ``"dotted.key=value"`` strings; ``value`` is parsed as YAML (``null``,
        ``0.25``, ``true``, ``[1, 2]``).

    Raises
    ------
    ConfigError
        On a missing file, malformed YAML, unknown key or wrong type.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist (see configs/)")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p} must hold a mapping of keys, not {type(loaded)}")
        raw = loaded or {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value")
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    return from_dict(raw)


def from_dict(raw: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from nested mappings, checking keys and types."""
    return _build(Config, raw, "")


def dump_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
        node = child
    node[leaf] = value


_T = typing.TypeVar("_T")


def _build(cls: type[_T], raw: Mapping[str, Any], prefix: str) -> _T:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), sorted(fields), n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            raise ConfigError(
                f"unknown key {prefix}{key}{hint} "
                f"(allowed: {', '.join(sorted(fields))})"
            )
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the field check
        raise ConfigError(str(exc)) from exc


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value if value is not None else {}, key + ".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{key} must be one of {', '.join(map(str, allowed))}; got {value!r}"
            )
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false; got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer; got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number; got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string; got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover
