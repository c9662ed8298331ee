import dataclasses
import typing
from pathlib import Path

import pytest

from fedsim.config import Config, ConfigError, from_dict, load_config
from tests.fixtures import QUICKSTART


def test_defaults_and_overrides() -> None:
    cfg = load_config(None, ["rounds=3", "model.gamma=0.25", "data.root=null"])
    assert cfg.rounds == 3
    assert cfg.model.gamma == 0.25
    assert cfg.data.root is None
    assert cfg.model.param == "fedpara"


def test_quickstart_loads() -> None:
    cfg = load_config(QUICKSTART)
    assert (cfg.data.name, cfg.data.num_clients, cfg.data.partition) == (
        "digits",
        50,
        "dirichlet",
    )
    assert cfg.server.clients_per_round == 10


def test_int_accepted_where_float_expected() -> None:
    assert load_config(None, ["client.lr=1"]).client.lr == 1.0


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("model.gamm=0.1", "unknown key model.gamm; did you mean model.gamma?"),
        ("model.param=dense", "model.param must be one of original, lowrank"),
        ("rounds=ten", "rounds must be an integer"),
        ("rounds=2.5", "rounds must be an integer"),
        ("log.progress=1", "log.progress must be true or false"),
        ("model.gamma=1.5", "model.gamma: must be in (0, 1], got 1.5"),
        ("model.gamma=0", "model.gamma: must be in (0, 1], got 0.0"),
        ("client.lr=.nan", "client.lr: must be a finite number, got nan"),
        ("data.alpha=.inf", "data.alpha: must be a finite number, got inf"),
        ("rounds=[", "override 'rounds=[': '[' is not a YAML value"),
        ("seed=-1", "seed: must be in [0, 2**63), got -1"),
        ("name=../elsewhere", "name: names the run's folder"),
        ("client.momentum=1", "client.momentum: must be in [0, 1), got 1.0"),
        ("client.weight_decay=-1", "client.weight_decay: must be >= 0, got -1.0"),
        ("server.eval_batch_size=0", "server.eval_batch_size: must be >= 1, got 0"),
        ("data.synthetic_test=0", "data.synthetic_test: must be >= 1, got 0"),
        ("resources.gpus_per_client=-2", "resources.gpus_per_client: must be 0"),
        ("resources.gpus_per_client=1.5", "or a whole number of GPUs, got 1.5"),
        ("resources.num_actors=0", "resources.num_actors: must be >= 1, or null"),
        ("log.checkpoint_every=-1", "log.checkpoint_every: must be >= 0 (0: never)"),
        ("log.root=' '", "log.root: must be a non-empty folder path"),
        ("server.clients_per_round=60", "server.clients_per_round: must be between 1"),
        ("data.alpha=0", "data.alpha: must be > 0"),
        ("bogus=1", "unknown key bogus"),
        ("rounds", "must look like key=value"),
    ],
)
def test_errors_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(QUICKSTART, [override])
    assert fragment in str(info.value)


def test_section_must_be_mapping() -> None:
    with pytest.raises(ConfigError, match="model must be a mapping"):
        from_dict({"model": 3})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_frozen_and_roundtrip(tmp_path: Path) -> None:
    cfg = load_config(QUICKSTART)
    with pytest.raises(AttributeError):
        cfg.rounds = 1  # type: ignore[misc]
    assert from_dict(cfg.to_dict()) == cfg


def _float_keys() -> list[str]:
    """Every dotted key whose type admits a float, read from the dataclasses."""
    keys = []
    for section, cls in typing.get_type_hints(Config).items():
        if cls is float:
            keys.append(section)
        fields = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        for name, tp in fields.items():
            if tp is float or float in typing.get_args(tp):
                keys.append(f"{section}.{name}")
    return keys


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize("key", _float_keys())
def test_every_float_key_must_be_finite(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{key}={value}"])
    assert str(info.value).startswith(f"{key}: must be a finite number, got ")


def test_float_keys_are_found() -> None:
    # The fields the NaN test must cover at least (more may be added).
    assert {"client.lr", "model.gamma", "data.alpha", "resources.cpus_per_client"} <= (
        set(_float_keys())
    )


@pytest.mark.parametrize("path", sorted(QUICKSTART.parent.glob("*.yaml")))
def test_every_shipped_config_loads(path: Path) -> None:
    load_config(path)
