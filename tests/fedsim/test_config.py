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
        ("model.gamma=1.5", "model.gamma: must be in [0, 1]"),
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
    assert isinstance(cfg, Config)


@pytest.mark.parametrize("path", sorted(QUICKSTART.parent.glob("*.yaml")))
def test_every_shipped_config_loads(path: Path) -> None:
    load_config(path)


def test_config_choices_match_what_the_code_builds() -> None:
    from typing import get_args

    from fedsim import config
    from fedsim.data import DATASETS
    from lightning_modules import models, rank

    assert get_args(config.Arch) == models.ARCHS
    assert get_args(config.ParamKind) == get_args(models.ParamKind)
    assert get_args(config.RankRule) == get_args(rank.RankRule)
    assert get_args(config.DatasetName) == DATASETS
