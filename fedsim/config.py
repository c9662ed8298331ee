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
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from fedsim.quote import shown

if TYPE_CHECKING:
    from fedsim.data import DataRequest

from fedsim.data.base import DatasetName
from fedsim.data.partition import PartitionScheme
from fedsim.registry import (
    DEFAULT as DEFAULT_STRATEGY,
)
from fedsim.registry import (
    STRATEGIES,
    Settings,
    StrategySpec,
    Weighting,
    settings_problems,
    strategy_spec,
)
from lightning_modules.rank import RankRule
from lightning_modules.spec import Arch, ParamKind

Evaluate = Literal["auto", "global", "personal", "both"]
Precision = Literal["32-true", "16-mixed", "bf16-mixed"]
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune"]
MatmulPrecision = Literal["highest", "high", "medium"]
CodecName = Literal["none", "fp16", "bf16", "int8", "int4", "topk", "sign"]


PERSONAL_TEST_FRACTION = 0.2
"""``data.client_test_fraction`` of runs that keep a local model part, unset."""

GLOBAL_VIEW_W2_0 = "global view (W2=0)"
"""The label of a pFedPara run's global accuracy: W1 alone (W2 = 0)."""


NAME_MAX = 255
"""The longest file name (bytes) of common filesystems: ``name`` is a folder."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-6`` as the number YAML 1.2 says it is.

    YAML 1.1 wants a dot in a float (``1.0e-6``), so plain PyYAML reads ``1e-6``
    as a string, and a learning rate written that way was refused.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """``text`` as YAML (safe: plain data only), with ``1e-6`` a number.

    >>> load_yaml("lr: 1e-6")
    {'lr': 1e-06}
    """
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only


class ConfigError(ValueError):
    """A config key or value is wrong; the message says how to fix it."""


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where it lives, and how it is split across clients."""

    name: DatasetName = "digits"
    root: str | None = None
    num_clients: int = 50
    partition: PartitionScheme = "dirichlet"
    alpha: float = 0.5
    shards_per_client: int = 2
    # None: 0.2 for runs that keep a local model part (pFedPara, FedPer,
    # local-only), so they can be evaluated on personal test splits; else 0.
    client_test_fraction: float | None = None
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
    """Cohort size, strategy and its settings, and evaluation.

    ``strategy`` is a name from :data:`fedsim.registry.STRATEGIES`; ``settings``
    are that strategy's own (FedProx's ``mu``, the server optimizer's ``lr``,
    ...), typed by its registry entry: missing keys take its defaults.
    ``evaluate``: global (the server's model on the global test split),
    personal (each client's own model on its own test split), both, or auto
    (personal too when the run keeps a local model part).
    ``weighting``: each client's weight in the server's means (the model
    average, SCAFFOLD's control average, FedDyn's per-client terms): its
    training examples or 1; null takes the strategy's default (its paper's,
    :attr:`fedsim.registry.StrategySpec.weighting`), which the run's
    config.yaml then records.
    ``personal_eval_clients``: null evaluates every client, a number a seeded
    sample of that many per evaluated round; ``personal_eval_trained_only``:
    score only those that have trained at least once (the rest are counted).
    ``min_clients``: a round with fewer successful clients is not aggregated
    but run again with the same cohort, at most ``max_round_retries`` times;
    then the run stops (resumable).
    """

    strategy: str = DEFAULT_STRATEGY
    settings: Settings = field(default_factory=Settings)
    weighting: Weighting | None = None
    clients_per_round: int = 10
    eval_every: int = 1
    eval_batch_size: int = 128  # activations of one batch: 1024 costs 100 MiB per actor
    evaluate: Evaluate = "auto"
    personal_eval_clients: int | None = None
    personal_eval_trained_only: bool = True
    min_clients: int = 1
    max_round_retries: int = 1

    def __post_init__(self) -> None:
        spec = STRATEGIES.get(self.strategy)
        if spec is not None and type(self.settings) is Settings:
            # No settings given: the strategy's defaults.
            object.__setattr__(self, "settings", spec.settings())
        if spec is not None and self.weighting is None:
            object.__setattr__(self, "weighting", spec.weighting)

    @property
    def spec(self) -> StrategySpec:
        """The registry entry of ``strategy``."""
        return strategy_spec(self.strategy)


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
    # A client still training after this many seconds fails with that reason
    # and its actor is replaced; null: no deadline.
    client_timeout_s: float | None = None
    # How long the pool's reservation may wait for the cluster before the run
    # is refused (exit 2).
    placement_timeout_s: float = 60.0
    # With no client actor alive, how long the round's tasks wait for a
    # replacement before they fail.
    replacement_timeout_s: float = 60.0
    # The training step (README "GPU speed"): torch.compile mode of the step
    # (off: eager), and whether to capture the whole step in one CUDA graph.
    compile: CompileMode = "off"
    cuda_graph: bool = False
    # None: torch's default cache (node-local /tmp); compiled kernels are
    # shared by every actor of a node and reused by a resumed run.
    compile_cache_dir: str | None = None
    # The numeric policy, recorded with the run: float32 matmuls and convs in
    # full precision (highest), TF32 (high) or bf16 passes (medium); cuDNN's
    # autotuner picks the fastest convolution per shape (not bit-reproducible).
    matmul_precision: MatmulPrecision = "highest"
    cudnn_benchmark: bool = False
    # Clients an actor trains at once as one vectorized step (README "Training
    # clients together"); 1: one after another.
    clients_per_actor: int = 1
    # Memory of one GPU of the cluster (GB), for refusing at start a
    # clients_per_actor whose copies cannot fit the slice; null: not declared
    # (checked against the local GPU when there is one).
    gpu_memory_gb: float | None = None


@dataclass(frozen=True)
class LogConfig:
    """Run directory, TensorBoard and checkpoints."""

    root: str = "runs"
    checkpoint_every: int = 5
    tensorboard: bool = True
    progress: bool = True


@dataclass(frozen=True)
class CodecConfig:
    """How every floating channel travels in one direction (:mod:`fedsim.compress`).

    ``codec``: none, fp16, bf16, int8, int4 (uniform quantization), topk or
    sign. ``scale``: one quantization scale per ``row`` (first dimension) or
    per ``tensor``; ``stochastic``: stochastic rounding (int8, int4);
    ``fraction``: the share of entries top-k sends; ``error_feedback``: add
    what the codec dropped last time (null: on for topk and sign).
    """

    codec: CodecName = "none"
    scale: Literal["row", "tensor"] = "tensor"
    stochastic: bool = False
    fraction: float = 0.01
    error_feedback: bool | None = None


@dataclass(frozen=True)
class CommConfig:
    """Encodings of what travels: uploads (deltas) and downloads (values)."""

    uplink: CodecConfig = field(default_factory=CodecConfig)
    downlink: CodecConfig = field(default_factory=CodecConfig)


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
    comm: CommConfig = field(default_factory=CommConfig)

    def __post_init__(self) -> None:
        _validate(self)
        _validate_comm(self.comm)
        _validate_strategy(self)
        _validate_resources(self)

    @property
    def keeps_local_model(self) -> bool:
        """Whether clients keep part of the model (pFedPara, FedPer, local-only)."""
        return self.model.param == "pfedpara" or self.server.spec.keeps_local

    @property
    def global_view(self) -> str:
        """What the global ``accuracy`` measures.

        The server's model, or for pFedPara ``"global view (W2=0)"``: W1
        alone, a model no client keeps.
        """
        return GLOBAL_VIEW_W2_0 if self.model.param == "pfedpara" else "global"

    @property
    def scored_on(self) -> str:
        """The accuracy a comparison scores this run on.

        ``personal`` for a run whose clients keep a model part (the paper
        scores pFedPara on each client's own model), else ``global``.
        """
        return "personal" if self.keeps_local_model else "global"

    @property
    def personal_test_fraction(self) -> float:
        """``data.client_test_fraction``, or its default for this kind of run."""
        f = self.data.client_test_fraction
        if f is not None:
            return f
        return PERSONAL_TEST_FRACTION if self.keeps_local_model else 0.0

    @property
    def evaluates(self) -> tuple[bool, bool]:
        """(global, personal): the evaluations ``server.evaluate`` resolves to."""
        mode = self.server.evaluate
        if mode == "auto":
            if not self.server.spec.global_model:
                mode = "personal"  # an untrained head (FedPer), or none (local)
            elif self.keeps_local_model:
                mode = "both"
            else:
                mode = "global"
        return mode in ("global", "both"), mode in ("personal", "both")

    def data_request(self) -> DataRequest:
        """The dataset and its partition, as a value any worker can load.

        >>> Config().data_request().spec.num_clients
        50
        """
        from fedsim.data import DataRequest, PartitionSpec

        d = self.data
        spec = PartitionSpec(
            scheme=d.partition,
            num_clients=d.num_clients,
            alpha=d.alpha,
            shards_per_client=d.shards_per_client,
            client_test_fraction=self.personal_test_fraction,
        )
        return DataRequest(
            d.name,
            d.root,
            spec,
            self.seed,
            synthetic_train=d.synthetic_train,
            synthetic_test=d.synthetic_test,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain nested dicts (YAML/JSON ready)."""
        return dataclasses.asdict(self)


def _check(ok: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigError` ``"key: message"`` unless ``ok``.

    ``message`` says what is allowed and what was given, e.g. ``must be >= 1,
    got 0``.
    """
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _validate(cfg: Config) -> None:
    # Every float key first, sections included: NaN fails no comparison below
    # the way one expects (``nan > 0`` is False, ``not nan <= 1`` is True) and
    # inf passes ``> 0``; new float fields are covered without a line here.
    for prefix, node in [("", cfg), ("server.settings.", cfg.server.settings)] + [
        (f"{f.name}.", getattr(cfg, f.name))
        for f in dataclasses.fields(cfg)
        if dataclasses.is_dataclass(getattr(cfg, f.name))
    ]:
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            _check(
                not isinstance(value, float) or math.isfinite(value),
                prefix + f.name,
                f"must be a finite number, got {value}",
            )

    def at_least(key: str, value: int, low: int, note: str = "") -> None:
        _check(value >= low, key, f"must be >= {low}{note}, got {value}")

    _check(bool(cfg.name.strip()), "name", "must be a non-empty string")
    _check(
        cfg.name not in (".", "..") and not any(ch in cfg.name for ch in "/\\\0"),
        "name",
        "names the run's folder log.root/NAME/TIME: one folder name, without "
        f"'/' or '\\', not '.' or '..'; got {shown(cfg.name)}",
    )
    _check(
        len(cfg.name.encode()) <= NAME_MAX,
        "name",
        f"names a folder, at most {NAME_MAX} bytes; got {len(cfg.name.encode())}",
    )
    _check(0 <= cfg.seed < 2**63, "seed", f"must be in [0, 2**63), got {cfg.seed}")
    at_least("rounds", cfg.rounds, 1)
    d, m, c, s, r = cfg.data, cfg.model, cfg.client, cfg.server, cfg.resources
    at_least("data.num_clients", d.num_clients, 1)
    _check(d.alpha > 0, "data.alpha", f"must be > 0 (paper: 0.5), got {d.alpha}")
    at_least("data.shards_per_client", d.shards_per_client, 1)
    _check(
        d.client_test_fraction is None or 0.0 <= d.client_test_fraction < 1.0,
        "data.client_test_fraction",
        f"must be in [0, 1), or null for the default, got {d.client_test_fraction}",
    )
    at_least("data.synthetic_train", d.synthetic_train, 1)
    at_least("data.synthetic_test", d.synthetic_test, 1)
    _check(0.0 < m.gamma <= 1.0, "model.gamma", f"must be in (0, 1], got {m.gamma}")
    at_least("client.epochs", c.epochs, 1)
    at_least("client.batch_size", c.batch_size, 1)
    _check(c.lr > 0, "client.lr", f"must be > 0, got {c.lr}")
    _check(
        0 < c.lr_decay <= 1,
        "client.lr_decay",
        f"must be in (0, 1] (1: no decay), got {c.lr_decay}",
    )
    _check(
        0 <= c.momentum < 1, "client.momentum", f"must be in [0, 1), got {c.momentum}"
    )
    _check(
        c.weight_decay >= 0,
        "client.weight_decay",
        f"must be >= 0, got {c.weight_decay}",
    )
    _check(
        1 <= s.clients_per_round <= d.num_clients,
        "server.clients_per_round",
        f"must be between 1 and data.num_clients ({d.num_clients}), "
        f"got {s.clients_per_round}",
    )
    at_least("server.eval_every", s.eval_every, 1)
    at_least("server.eval_batch_size", s.eval_batch_size, 1)
    _check(
        r.cpus_per_client > 0,
        "resources.cpus_per_client",
        f"must be > 0, got {r.cpus_per_client}",
    )
    _check(
        0 <= r.gpus_per_client <= 1
        or (r.gpus_per_client > 1 and float(r.gpus_per_client).is_integer()),
        "resources.gpus_per_client",
        "must be 0 (CPU), a fraction of one GPU (e.g. 0.25 for four clients per "
        f"GPU) or a whole number of GPUs, got {r.gpus_per_client}",
    )
    if r.num_actors is not None:
        at_least(
            "resources.num_actors", r.num_actors, 1, ", or null to fit the cluster"
        )
    at_least("resources.max_client_retries", r.max_client_retries, 0)
    at_least("log.checkpoint_every", cfg.log.checkpoint_every, 0, " (0: never)")
    _check(bool(cfg.log.root.strip()), "log.root", "must be a non-empty folder path")


def _validate_strategy(cfg: Config) -> None:
    s = cfg.server
    _check(
        s.strategy in STRATEGIES,
        "server.strategy",
        f"must be one of {', '.join(STRATEGIES)}; got {s.strategy!r}",
    )
    spec = s.spec
    _check(
        type(s.settings) is spec.settings,
        "server.settings",
        f"holds {type(s.settings).__name__}, but server.strategy={s.strategy} takes "
        f"{spec.settings.__name__}",
    )
    for name, message in settings_problems(s.settings):
        _check(False, f"server.settings.{name}", f"{message} ({s.strategy})")
    _check(
        1 <= s.min_clients <= s.clients_per_round,
        "server.min_clients",
        f"must be between 1 and server.clients_per_round ({s.clients_per_round}), "
        f"got {s.min_clients}",
    )
    _check(s.max_round_retries >= 0, "server.max_round_retries", "must be >= 0")
    _check(
        s.personal_eval_clients is None or s.personal_eval_clients >= 1,
        "server.personal_eval_clients",
        "must be >= 1, or null to evaluate every client",
    )
    _check(
        not (spec.corrects_gradients and cfg.resources.precision == "16-mixed"),
        "resources.precision",
        f"{s.strategy} corrects gradients that fp16 loss scaling has scaled; use "
        f"bf16-mixed or 32-true with server.strategy={s.strategy}",
    )
    personal_data = cfg.personal_test_fraction > 0 or cfg.data.partition == "natural"
    _check(
        personal_data or not cfg.evaluates[1],
        "server.evaluate",
        "personal evaluation needs personal test splits: set "
        "data.client_test_fraction (e.g. 0.2)",
    )


def _validate_comm(comm: CommConfig) -> None:
    for direction in ("uplink", "downlink"):
        c: CodecConfig = getattr(comm, direction)
        key = f"comm.{direction}"
        _check(
            0 < c.fraction <= 1,
            f"{key}.fraction",
            f"must be in (0, 1] (the share of entries topk sends), got {c.fraction}",
        )
        _check(
            not c.stochastic or c.codec in ("int8", "int4"),
            f"{key}.stochastic",
            f"stochastic rounding is for codec int8 or int4, not {c.codec}; "
            "set it to false or pick int8/int4",
        )
    _check(
        comm.downlink.codec not in ("topk", "sign"),
        "comm.downlink.codec",
        "downloads carry the global model itself, which top-k or sign would "
        "destroy; use none, fp16, bf16, int8 or int4 "
        f"(got {comm.downlink.codec})",
    )


def _validate_resources(cfg: Config) -> None:
    r = cfg.resources
    _check(
        r.client_timeout_s is None or r.client_timeout_s > 0,
        "resources.client_timeout_s",
        f"must be > 0 seconds, or null for no deadline, got {r.client_timeout_s}",
    )
    for key, seconds in (
        ("placement_timeout_s", r.placement_timeout_s),
        ("replacement_timeout_s", r.replacement_timeout_s),
    ):
        _check(seconds > 0, f"resources.{key}", f"must be > 0 seconds, got {seconds}")
    _check(
        not (r.cuda_graph and r.compile == "reduce-overhead"),
        "resources.cuda_graph",
        "compile=reduce-overhead already captures the forward and backward "
        "passes in CUDA graphs; use cuda_graph=true with compile=off or "
        "compile=default (the whole step in one graph)",
    )
    _check(
        r.clients_per_actor >= 1,
        "resources.clients_per_actor",
        f"must be >= 1 (1: clients one after another), got {r.clients_per_actor}",
    )
    _check(
        r.gpu_memory_gb is None or r.gpu_memory_gb > 0,
        "resources.gpu_memory_gb",
        f"must be > 0 GB, or null when not declared, got {r.gpu_memory_gb}",
    )
    _check(
        not (r.clients_per_actor > 1 and r.precision == "16-mixed"),
        "resources.clients_per_actor",
        "fp16 loss scaling is per optimizer, not per client; use "
        "precision=bf16-mixed or 32-true with clients_per_actor > 1",
    )
    _check(
        not (r.cuda_graph and r.precision == "16-mixed"),
        "resources.cuda_graph",
        "fp16 loss scaling reads the gradients back to the host every step, "
        "which a CUDA graph cannot hold; use precision=bf16-mixed or 32-true",
    )


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
            loaded = load_yaml(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p} cannot be read: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{p} must hold a mapping of keys, not {type(loaded).__name__}"
            )
        raw = _extend(p, loaded or {}, (p.resolve(),))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value")
        try:
            parsed = load_yaml(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc
            raise ConfigError(
                f"override {item!r}: {value!r} is not a YAML value ({problem})"
            ) from exc
        _set_dotted(raw, key.strip(), parsed)
    return from_dict(raw)


def _extend(path: Path, raw: dict[str, Any], seen: tuple[Path, ...]) -> dict[str, Any]:
    """Resolve ``extends: other.yaml`` (relative to ``path``): its keys, then ours.

    A config file holds only what differs from the file it extends, as a config
    without ``extends`` holds only what differs from the defaults.
    """
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends must be a path to a YAML file")
    base_path = (path.parent / parent).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: extends {parent} makes a cycle")
    if not base_path.is_file():
        raise ConfigError(f"{path}: extends {parent}, which does not exist")
    try:
        base = load_yaml(base_path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{base_path} cannot be read: {exc}") from exc
    if not isinstance(base, dict):
        raise ConfigError(f"{base_path} must hold a mapping of keys")
    return _merge(_extend(base_path, base, (*seen, base_path)), raw)


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


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
    if cls is ServerConfig:  # its settings are typed by the strategy it names
        raw = dict(raw)
        kwargs["settings"] = _build_settings(
            raw.get("strategy"), raw.pop("settings", {})
        )
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(_unknown_key(f"{prefix}{key}", fields, prefix))
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the field check
        raise ConfigError(str(exc)) from exc


MOVED = {
    "client.prox_mu": "server.settings.mu (with server.strategy: fedprox)",
    "server.feddyn_alpha": "server.settings.alpha (with server.strategy: feddyn)",
    "server.fedper_layers": "server.settings.layers (with server.strategy: fedper)",
    **{
        f"server.{key}": f"server.settings.{key} (with server.strategy: fedadam, "
        "fedyogi or fedadagrad; fedavgm has lr and momentum, scaffold lr)"
        for key in ("lr", "beta1", "beta2", "tau")
    },
}
"""Keys of earlier versions and where they live now (a fix-it for old configs)."""


def _unknown_key(key: str, fields: set[str], prefix: str) -> str:
    if key in MOVED:
        return f"{key} is now {MOVED[key]}"
    leaf = key[len(prefix) :]
    close = difflib.get_close_matches(leaf, sorted(fields), n=1)
    hint = f"; did you mean {prefix}{close[0]}?" if close else ""
    allowed = ", ".join(sorted(fields)) or "none"
    return f"unknown key {key}{hint} (allowed: {allowed})"


def _build_settings(strategy: Any, raw: Any) -> Settings:
    """``server.settings`` as the typed settings of ``strategy``."""
    name = DEFAULT_STRATEGY if strategy is None else strategy
    if not isinstance(name, str) or name not in STRATEGIES:
        raise ConfigError(
            f"server.strategy must be one of {', '.join(STRATEGIES)}; got {shown(name)}"
        )
    cls = STRATEGIES[name].settings
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"server.settings must be a mapping of {name}'s settings")
    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            allowed = ", ".join(sorted(fields)) or "none"
            raise ConfigError(
                f"server.settings.{key} is not a setting of server.strategy={name} "
                f"(its settings: {allowed})"
            )
        kwargs[key] = _coerce(hints[key], value, f"server.settings.{key}")
    return cls(**kwargs)


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
                f"{key} must be one of {', '.join(map(str, allowed))}; "
                f"got {shown(value)}"
            )
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false; got {shown(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer; got {shown(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number; got {shown(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string; got {shown(value)}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover
