"""``fedsim compare``: the variant table, and one comparison end to end (local)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fedsim.cli import main
from fedsim.compare import VARIANTS, parse_variants, variant_configs
from fedsim.config import ConfigError
from tests.fixtures import QUICKSTART, REPO

PERSONALIZATION = REPO / "configs" / "personalization" / "quickstart_fedavg.yaml"
TINY = [
    "rounds=2",
    "data.num_clients=6",
    "server.clients_per_round=3",
    "client.epochs=1",
    "log.progress=false",
    "log.tensorboard=false",
]


def test_default_variants_differ_only_in_param_and_name() -> None:
    named = variant_configs(QUICKSTART, ["rounds=3"])
    assert [n for n, _ in named] == ["original", "lowrank", "fedpara"]
    assert [c.name for _, c in named] == [
        "quickstart_original",
        "quickstart_lowrank",
        "quickstart_fedpara",
    ]
    assert [c.model.param for _, c in named] == ["original", "lowrank", "fedpara"]
    first = named[0][1]
    for _, cfg in named:
        assert cfg.rounds == 3 and cfg.seed == first.seed
        assert cfg.data == first.data and cfg.server == first.server
        assert cfg.personal_test_fraction == 0.0  # no carve: nothing personal


def test_strategy_variants_set_the_strategy() -> None:
    names = ["fedavg", "fedprox", "scaffold", "feddyn", "fedadam", "fedyogi"]
    named = variant_configs(QUICKSTART, [], [*names, "fedadagrad"])
    assert [c.server.strategy for _, c in named] == [*names, "fedadagrad"]
    assert {c.model.param for _, c in named} == {"fedpara"}
    assert len({c.name for _, c in named}) == len(named)


def test_personalization_set_shares_one_split() -> None:
    variants = ["fedavg", "fedper", "pfedpara", "local_only"]
    named = dict(variant_configs(PERSONALIZATION, ["name=qs"], variants))
    assert [c.name for c in named.values()] == [f"qs_{v}" for v in variants]
    assert {c.data for c in named.values()} == {named["fedavg"].data}
    assert {c.personal_test_fraction for c in named.values()} == {0.2}
    # one parameterization for every strategy (pFedPara's is its own layers)
    assert named["fedper"].model.param == named["local_only"].model.param == "fedpara"
    assert named["fedper"].server.settings.layers == 1
    assert named["fedper"].server.strategy == "fedper"
    assert named["pfedpara"].model.param == "pfedpara"
    assert named["local_only"].server.strategy == "local_only"
    assert {v: c.server.evaluate for v, c in named.items()} == {
        "fedavg": "both",
        "fedper": "personal",
        "pfedpara": "both",
        "local_only": "personal",
    }


def test_personal_split_follows_the_config_and_reaches_every_variant() -> None:
    # The quickstart sets no fraction: the pfedpara variant's default (0.2) is
    # carved for the original model too, so both see the same training data.
    named = dict(variant_configs(QUICKSTART, [], ["original", "pfedpara"]))
    assert {c.data.client_test_fraction for c in named.values()} == {0.2}
    named = dict(
        variant_configs(
            QUICKSTART, ["data.client_test_fraction=0.3"], ["original", "pfedpara"]
        )
    )
    assert {c.personal_test_fraction for c in named.values()} == {0.3}
    assert named["original"].server.evaluate == "both"


def test_strategy_variant_of_a_pfedpara_config_uses_fedpara_layers() -> None:
    named = dict(
        variant_configs(QUICKSTART, ["model.param=pfedpara"], ["fedavg", "pfedpara"])
    )
    assert named["fedavg"].model.param == "fedpara"
    assert named["pfedpara"].model.param == "pfedpara"


def test_unknown_variant_lists_the_allowed_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ConfigError, match="allowed: original, lowrank"):
        parse_variants("original,fedpar")
    with pytest.raises(ConfigError, match="twice"):
        parse_variants("original,original")
    argv = ["compare", str(QUICKSTART), "--variants", "fedpara,nope", "--backend"]
    assert main([*argv, "local"]) == 2
    err = capsys.readouterr().err
    assert "unknown variant nope" in err
    assert all(v in err for v in VARIANTS)


def test_compare_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, out = tmp_path / "runs", tmp_path / "report"
    argv = ["compare", str(QUICKSTART), *TINY, "--backend", "local"]
    assert main([*argv, "--out", str(out), f"log.root={root}", "--target", "0.3"]) == 0
    printed = capsys.readouterr().out

    names = ["quickstart_original", "quickstart_lowrank", "quickstart_fedpara"]
    run_dirs = [next((root / n).iterdir()) for n in names]
    for name in ("report.md", "report.csv", "accuracy_vs_gb.png", "accuracy_vs_gb.svg"):
        assert (out / name).is_file()
    table = (out / "report.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| quickstart_")]
    assert [row.split("|")[1].strip() for row in rows] == names
    assert table.strip() in printed

    partitions = {(d / "partition.json").read_text() for d in run_dirs}
    assert len(partitions) == 1  # the same split for all three
    configs = [yaml.safe_load((d / "config.yaml").read_text()) for d in run_dirs]
    assert {c["seed"] for c in configs} == {0}
    assert [c["model"]["param"] for c in configs] == ["original", "lowrank", "fedpara"]
    cohorts = {_cohorts(d) for d in run_dirs}
    assert len(cohorts) == 1  # same seed: the same clients each round
    summaries = [json.loads((d / "summary.json").read_text()) for d in run_dirs]
    assert [s["rounds"] for s in summaries] == [2, 2, 2]
    original, lowrank, fedpara = (s["total_bytes"] for s in summaries)
    assert lowrank == fedpara < original  # same budget, fewer bytes


def _cohorts(run_dir: Path) -> tuple[tuple[int, int], ...]:
    rows = (run_dir / "comm.jsonl").read_text().splitlines()
    return tuple((r["round"], r["client"]) for r in map(json.loads, rows))


def test_compare_checks_max_concurrent_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compare", str(QUICKSTART), *TINY, f"log.root={tmp_path / 'runs'}"]
    assert main([*argv, "--backend", "local", "--max-concurrent", "0"]) == 2
    assert "--max-concurrent must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_compare_on_ray_runs_variants_at_once(
    tmp_path: Path, ray_session: object, capsys: pytest.CaptureFixture[str]
) -> None:
    # A one-axis sweep: two variants alive at the same time, sharing the slots.
    import ray

    root, out = tmp_path / "runs", tmp_path / "report"
    argv = ["compare", str(QUICKSTART), *TINY, f"log.root={root}", "rounds=1"]
    argv += ["--variants", "original,fedpara", "--max-concurrent", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    starts, ends = [], []
    for name in ("quickstart_original", "quickstart_fedpara"):
        (run_dir,) = (root / name).iterdir()
        summary = run_dir / "summary.json"
        finished = summary.stat().st_mtime
        starts.append(finished - json.loads(summary.read_text())["wall_seconds"])
        ends.append(finished)
    assert max(starts) < min(ends)  # the two runs were alive at the same time
    assert ray.available_resources().get("CPU") == 2.0  # every reservation freed
    printed = capsys.readouterr().out
    assert printed.count("run directory:") == 2 and (out / "report.md").is_file()


def test_a_strategy_setting_reaches_the_variants_that_have_it() -> None:
    from fedsim.compare import variant_configs

    named = dict(
        variant_configs(
            QUICKSTART, ["server.settings.mu=0.3"], ["fedavg", "fedprox", "fedpara"]
        )
    )
    assert named["fedprox"].server.settings.mu == 0.3
    assert named["fedavg"].server.strategy == "fedavg"
    with pytest.raises(ConfigError, match="no variant's strategy has this setting"):
        variant_configs(QUICKSTART, ["server.settings.mu=0.3"], ["fedavg", "scaffold"])


def test_encoding_variants_cross_parameterization_with_codecs() -> None:
    names = "original,original+int8,fedpara,fedpara+int8,fedpara+topk"
    named = variant_configs(None, ["rounds=2"], parse_variants(names))
    got = {
        name: (cfg.model.param, cfg.comm.uplink.codec, cfg.comm.downlink.codec)
        for name, cfg in named
    }
    assert got == {
        "original": ("original", "none", "none"),
        "original+int8": ("original", "int8", "int8"),
        "fedpara": ("fedpara", "none", "none"),
        "fedpara+int8": ("fedpara", "int8", "int8"),
        "fedpara+topk": ("fedpara", "topk", "int8"),
    }
    assert {(cfg.seed, cfg.data) for _, cfg in named} == {
        (named[0][1].seed, named[0][1].data)
    }
    assert [cfg.name for _, cfg in named][-1] == "quickstart_fedpara+topk"
