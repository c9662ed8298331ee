"""Every strategy through the whole loop: runs, bytes by channel, identities.

Real training end to end, so all of it is marked slow; the protocol's side of
the same things runs on the boring backend in tests/fedsim/test_driver_protocol.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from fedsim.checkpoint import load_checkpoint
from fedsim.cli import main
from fedsim.config import load_config
from fedsim.experiment import run_experiment
from fedsim.registry import STRATEGIES
from fedsim.tracking import TIMING, read_metrics
from tests.fixtures import QUICKSTART, REPO, TINY


def cli_run(tmp_path: Path, name: str, *overrides: str) -> Path:
    root = tmp_path / name
    code = main(
        [
            "run",
            str(QUICKSTART),
            *TINY,
            f"log.root={root}",
            *overrides,
            "--backend",
            "local",
        ]
    )
    assert code == 0
    (run_dir,) = (root / "quickstart").iterdir()
    return run_dir


def global_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return load_checkpoint(run_dir, cfg).global_tensors


@pytest.mark.slow
def test_fedprox_with_mu_zero_is_fedavg_bit_for_bit(tmp_path: Path) -> None:
    avg = cli_run(tmp_path, "avg", "server.strategy=fedavg")
    prox = cli_run(tmp_path, "prox", "server.strategy=fedprox", "server.settings.mu=0")
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(avg)]
    assert strip == [
        {k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(prox)
    ]
    a, b = global_tensors(avg), global_tensors(prox)
    for name, tensor in a.items():
        torch.testing.assert_close(tensor, b[name], rtol=0, atol=0)
    # And mu > 0 changes the result: the proximal term is really applied.
    pulled = cli_run(tmp_path, "mu", "server.strategy=fedprox", "server.settings.mu=1")
    c = global_tensors(pulled)
    assert any(not torch.equal(a[n], c[n]) for n in a)


@pytest.mark.slow
def test_scaffold_moves_twice_fedavgs_bytes_both_ways(tmp_path: Path) -> None:
    avg = read_metrics(cli_run(tmp_path, "avg", "server.strategy=fedavg"))
    sca = read_metrics(cli_run(tmp_path, "sca", "server.strategy=scaffold"))
    for a, s in zip(avg, sca, strict=True):
        assert s["bytes_down"] == 2 * a["bytes_down"]
        assert s["bytes_up"] == 2 * a["bytes_up"]
        by = s["bytes_by_channel"]
        assert by["control"] == by["model"] == a["bytes_by_channel"]["model"]


def shipped_config(name: str) -> Path:
    """The config that pairs FedPara with strategy ``name`` on the quickstart data."""
    configs = REPO / "configs"
    if name == "fedavg":
        return configs / "quickstart.yaml"
    if name == "local_only":
        return configs / "personalization" / "quickstart_local.yaml"
    if name == "fedper":
        return configs / "personalization" / f"quickstart_{name}.yaml"
    return configs / "strategies" / f"quickstart_{name}.yaml"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_runs_and_learns_from_its_shipped_config(
    tmp_path: Path, name: str
) -> None:
    cfg = load_config(shipped_config(name), [*TINY, "rounds=3", f"log.root={tmp_path}"])
    assert cfg.server.strategy == name
    result = run_experiment(cfg, backend="local")
    rows = read_metrics(result.run_dir)
    assert [r["num_failed"] for r in rows] == [0, 0, 0]
    last = rows[-1]
    score = (
        last["accuracy"] if last["accuracy"] is not None else last["personal_accuracy"]
    )
    assert score is not None and score > 0.2, (name, score)  # chance is 0.1
    if name == "local_only":
        assert last["cumulative_bytes"] == 0
    else:
        assert last["bytes_up"] > 0 and last["bytes_down"] > 0


@pytest.mark.slow
def test_pfedpara_moves_about_half_of_fedparas_bytes(tmp_path: Path) -> None:
    fed = read_metrics(cli_run(tmp_path, "fed", "model.param=fedpara"))
    pfed = read_metrics(cli_run(tmp_path, "pfed", "model.param=pfedpara"))
    ratio = pfed[0]["bytes_up"] / fed[0]["bytes_up"]
    assert 0.45 < ratio < 0.6, ratio  # W2's factors stay; biases still travel
    assert pfed[0]["bytes_down"] == pfed[0]["bytes_up"]


@pytest.mark.slow
def test_fednova_uploads_its_step_counts_and_they_are_counted(tmp_path: Path) -> None:
    avg = read_metrics(cli_run(tmp_path, "avg", "server.strategy=fedavg"))
    nova_dir = cli_run(tmp_path, "nova", "server.strategy=fednova")
    nova = read_metrics(nova_dir)
    for a, n in zip(avg, nova, strict=True):
        by = n["bytes_by_channel"]
        assert by["steps"] == {"down": 0, "up": 4 * n["num_clients"]}  # float32
        assert n["bytes_up"] == a["bytes_up"] + 4 * n["num_clients"]
        assert n["bytes_down"] == a["bytes_down"]
        assert n["strategy"]["tau_eff"] > 0
    rows = [json.loads(line) for line in (nova_dir / "clients.jsonl").open()]
    assert rows and all(r["status"] == "ok" and r["tau"] == r["steps"] for r in rows)
    assert all(r["a_norm"] == r["steps"] for r in rows)  # plain SGD: ||a|| = tau
