"""The strategy registry: entries build, settings are typed, one place names them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

from fedsim.config import ConfigError, from_dict, load_config
from fedsim.registry import STRATEGIES, Settings, settings_problems
from fedsim.strategy import Strategy, build_strategy, strategy_settings
from tests.fixtures import REPO


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_entry_builds_its_strategy_with_valid_default_settings(name: str) -> None:
    cfg = load_config(None, [f"server.strategy={name}"])
    spec = STRATEGIES[name]
    assert type(cfg.server.settings) is spec.settings
    assert issubclass(spec.settings, Settings)
    assert settings_problems(cfg.server.settings) == []
    strategy = build_strategy(strategy_settings(cfg))
    assert isinstance(strategy, Strategy) and strategy.name == name
    assert spec.summary and spec.builder.startswith("fedsim.strategy.")


def test_settings_are_typed_checked_and_recorded() -> None:
    cfg = load_config(None, ["server.strategy=fedprox", "server.settings.mu=0.25"])
    assert cfg.server.settings.mu == 0.25
    assert cfg.to_dict()["server"]["settings"] == {"mu": 0.25}
    assert load_config(None, ["server.strategy=fedadam"]).to_dict()["server"][
        "settings"
    ] == {
        "lr": 0.01,
        "beta1": 0.9,
        "beta2": 0.99,
        "tau": 0.001,
        "bias_correction": False,
    }
    with pytest.raises(ConfigError, match=r"server\.settings\.mu: must be >= 0"):
        load_config(None, ["server.strategy=fedprox", "server.settings.mu=-1"])
    with pytest.raises(ConfigError, match=r"not a setting of server\.strategy=fedavg"):
        load_config(None, ["server.settings.mu=0.1"])
    with pytest.raises(ConfigError, match=r"server\.settings\.mu must be a number"):
        load_config(None, ["server.strategy=fedprox", "server.settings.mu=high"])
    with pytest.raises(ConfigError, match=r"server\.strategy must be one of fedavg"):
        load_config(None, ["server.strategy=fedsgd"])
    # Found by the alias fuzz: a strategy that is not a string (YAML list).
    with pytest.raises(ConfigError, match=r"one of fedavg.*; got \[\[None, None\]\]"):
        from_dict({"server": {"strategy": [[None, None]]}})


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("client.prox_mu=0.1", "server.settings.mu"),
        ("server.feddyn_alpha=0.1", "server.settings.alpha"),
        ("server.beta1=0.5", "server.settings.beta1"),
        ("server.fedper_layers=2", "server.settings.layers"),
    ],
)
def test_keys_of_earlier_versions_say_where_they_moved(old: str, new: str) -> None:
    with pytest.raises(ConfigError, match=f"is now {new}"):
        load_config(None, [old])


def test_traits_decide_what_a_config_evaluates() -> None:
    assert load_config(None, ["server.strategy=fedper"]).evaluates == (False, True)
    assert load_config(None, ["server.strategy=scaffold"]).evaluates == (True, False)
    with pytest.raises(ConfigError, match="scaffold corrects gradients"):
        load_config(None, ["server.strategy=scaffold", "resources.precision=16-mixed"])


def test_the_import_contract_forbids_exactly_the_registry_modules() -> None:
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"][
        "importlinter"
    ]["contracts"]
    (contract,) = [c for c in contracts if "concrete strategies" in c["name"]]
    modules = {spec.builder.partition(":")[0] for spec in STRATEGIES.values()}
    assert set(contract["forbidden_modules"]) == modules, (
        "a strategy module was added or removed: list it in pyproject.toml's "
        "'Only fedsim.strategy imports the concrete strategies' contract"
    )
    package = REPO / "fedsim"
    every = {
        f"fedsim.{p.stem if p.is_file() else p.name}"
        for p in package.iterdir()
        if (p.suffix == ".py" and p.stem not in {"__init__", "__main__"})
        or (p / "__init__.py").is_file()
    } - {"fedsim.strategy"}
    assert every <= set(contract["source_modules"]), (
        f"{sorted(every - set(contract['source_modules']))}: add them to the "
        "contract's source_modules so that they cannot import a strategy either"
    )


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def test_no_module_outside_the_strategies_spells_a_strategy_name() -> None:
    allowed = {
        REPO / "fedsim" / "registry.py",
        *(REPO / "fedsim" / "strategy").rglob("*.py"),
    }
    names = set(STRATEGIES)
    offenders = {}
    for folder in ("fedsim", "ray_jobs", "lightning_modules"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path in allowed:
                continue
            found = names & _string_constants(path)
            if found:
                offenders[str(path.relative_to(REPO))] = sorted(found)
    assert offenders == {}, "ask fedsim.registry instead of naming strategies"


def test_the_readme_table_is_the_registry() -> None:
    from fedsim.registry import markdown_table

    text = (REPO / "README.md").read_text()
    start = text.index("<!-- strategies:")
    table = text[text.index("\n", start) + 1 : text.index("<!-- /strategies -->")]
    assert table.strip() == markdown_table(), "paste fedsim.registry.markdown_table()"
