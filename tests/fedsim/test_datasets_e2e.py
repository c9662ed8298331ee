"""One federated round on tiny files in every real on-disk format, via `fedsim run`.

Each test writes a few tens of examples in the format users download (CIFAR pickle
batches, CINIC-10 PNG folders, MNIST idx, LEAF json), then calls
:func:`fedsim.cli.main` exactly as the console script does, on the default Ray
backend, with a shipped config shrunk by overrides. The run directory is then read
back: one row per round in metrics.jsonl, the partition in partition.json.

One Ray instance on loopback serves the whole module: ``run_and_report`` starts Ray
only when it is not already initialized, so every run reuses it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedsim.cli import main
from fedsim.tracking import read_metrics
from tests.data.formats import (
    write_cifar10,
    write_cifar100,
    write_cinic10,
    write_femnist_leaf,
    write_mnist,
    write_shakespeare_leaf,
)
from tests.fixtures import QUICKSTART, REPO

# One Ray for the module (tests/conftest.py); the CLI reuses it.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_module")]

CONFIGS = REPO / "configs"

# The paper configs ask for GPU slices and 2 CPUs per client; on a CPU-only test
# Ray no actor would ever be scheduled, so every run here asks for CPUs only.
CPU_ONLY = ["resources.gpus_per_client=0", "resources.cpus_per_client=1"]


def run_cli(
    config: Path,
    log_root: Path,
    *,
    rounds: int,
    num_clients: int,
    clients_per_round: int,
    overrides: list[str],
) -> Path:
    """`fedsim run CONFIG ...` on the module's Ray; return the one run directory."""
    import ray

    argv = [
        "run",
        str(config),
        f"rounds={rounds}",
        f"data.num_clients={num_clients}",
        f"server.clients_per_round={clients_per_round}",
        "client.epochs=1",
        "log.progress=false",
        f"log.root={log_root}",
        *CPU_ONLY,
        *overrides,
    ]
    assert main(argv) == 0
    assert ray.is_initialized(), "the CLI must not stop a Ray it did not start"
    run_dirs = sorted(p.parent for p in log_root.glob("*/*/metrics.jsonl"))
    assert len(run_dirs) == 1, run_dirs
    return run_dirs[0]


def check_run(
    run_dir: Path, *, rounds: int, num_clients: int, clients_per_round: int
) -> list[dict[str, Any]]:
    """Assert what every healthy run leaves behind; return the metrics rows."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    assert [row["round"] for row in rows] == list(range(rounds)), rows  # 0-based
    cumulative = 0
    for row in rows:
        assert row["num_failed"] == 0, row
        assert row["num_clients"] == clients_per_round, row
        assert row["bytes_up"] > 0 and row["bytes_down"] > 0, row
        cumulative += row["bytes_up"] + row["bytes_down"]
        assert row["cumulative_bytes"] == cumulative, row
        assert row["loss"] == row["loss"], row  # not NaN
    partition = json.loads((run_dir / "partition.json").read_text())
    assert partition["num_clients"] == num_clients
    assert [c["client"] for c in partition["clients"]] == list(range(num_clients))
    assert all(c["num_train"] > 0 for c in partition["clients"]), partition
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == rounds
    assert summary["final_accuracy"] == rows[-1]["accuracy"]
    return rows


def _one_round(
    config: Path,
    tmp_path: Path,
    *,
    num_clients: int,
    clients_per_round: int,
    overrides: list[str],
) -> tuple[Path, dict[str, Any]]:
    run_dir = run_cli(
        config,
        tmp_path / "runs",
        rounds=1,
        num_clients=num_clients,
        clients_per_round=clients_per_round,
        # One actor trains the cohort in turn: each actor start imports torch and
        # Lightning, the bulk of a tiny run on two cores.
        overrides=["resources.num_actors=1", *overrides],
    )
    (row,) = check_run(
        run_dir, rounds=1, num_clients=num_clients, clients_per_round=clients_per_round
    )
    return run_dir, row


# ------------------------------------------------------------ CIFAR / CINIC images


@pytest.mark.parametrize(
    ("config", "name", "write"),
    [
        ("cifar10_vgg16_fedpara.yaml", "cifar10", write_cifar10),
        ("cifar100_vgg16_fedpara.yaml", "cifar100", write_cifar100),
        ("cinic10_vgg16_fedpara.yaml", "cinic10", write_cinic10),
    ],
)
def test_image_format_one_round_cnn(
    tmp_path: Path, config: str, name: str, write: Any
) -> None:
    root = write(tmp_path / "data", n_train=40, n_test=10, seed=1)
    _one_round(  # its check_run asserts the round, cohort size and partition
        CONFIGS / config,
        tmp_path,
        num_clients=4,
        clients_per_round=2,
        overrides=[
            f"data.root={root}",
            "model.arch=cnn",
            "client.batch_size=8",
            "server.eval_batch_size=16",
        ],
    )


def test_cifar10_vgg16_one_round(tmp_path: Path) -> None:
    """The paper's model itself, on a handful of CIFAR-10 images."""
    root = write_cifar10(tmp_path / "data", n_train=10, n_test=4, seed=2)
    run_dir, _ = _one_round(
        CONFIGS / "cifar10_vgg16_fedpara.yaml",
        tmp_path,
        num_clients=2,
        clients_per_round=1,
        overrides=[
            f"data.root={root}",
            "data.partition=iid",
            "client.batch_size=5",
            "server.eval_batch_size=4",
        ],
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    # VGG16 FedPara at gamma 0.1 travels about 1.55M parameters (tests/fedsim/test_cli).
    assert summary["num_params_travelling"] > 1_000_000


# ------------------------------------------------------------------- MNIST idx


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_mnist_idx_pfedpara_one_round(tmp_path: Path, gz: bool) -> None:
    """configs/mnist_pfedpara.yaml: shards, personal test splits, local W2 factors."""
    root = write_mnist(tmp_path / "data", n_train=40, n_test=10, seed=3, gz=gz)
    run_dir, _ = _one_round(
        CONFIGS / "mnist_pfedpara.yaml",
        tmp_path,
        num_clients=4,
        clients_per_round=2,
        overrides=[f"data.root={root}"],
    )
    partition = json.loads((run_dir / "partition.json").read_text())
    assert partition["num_train"] + partition["num_test"] == 40
    assert partition["num_test"] > 0  # client_test_fraction 0.2 from the config
    # pFedPara keeps each trained client's local factors on disk.
    assert any((run_dir / "client_state").iterdir())


# ----------------------------------------------------------------------- LEAF json


def test_femnist_leaf_natural_pfedpara_one_round(tmp_path: Path) -> None:
    """configs/femnist_pfedpara.yaml: LEAF writers as clients, MLP, pFedPara."""
    root = write_femnist_leaf(tmp_path / "data", num_users=6, seed=4)
    run_dir, _ = _one_round(
        CONFIGS / "femnist_pfedpara.yaml",
        tmp_path,
        num_clients=4,
        clients_per_round=2,
        overrides=[f"data.root={root}", "data.partition=natural", "model.arch=mlp"],
    )
    partition = json.loads((run_dir / "partition.json").read_text())
    assert partition["num_classes"] == 62
    # Each writer's own LEAF test data is its personal test set, and is scored.
    assert partition["test_source"] == "test" and partition["num_test"] > 0
    (row,) = read_metrics(run_dir)
    # (the 2 writers that trained this round; the other 2 are counted, not scored)
    assert row["personal_accuracy"] is not None
    assert (row["personal_clients"], row["personal_untrained"]) == (2, 2)


def test_shakespeare_leaf_natural_lstm_one_round(tmp_path: Path) -> None:
    """configs/shakespeare_lstm_fedpara.yaml: roles as clients, FedPara LSTM."""
    root = write_shakespeare_leaf(tmp_path / "data", num_users=4, seed=6)
    _, row = _one_round(
        CONFIGS / "shakespeare_lstm_fedpara.yaml",
        tmp_path,
        num_clients=3,
        clients_per_round=2,
        overrides=[f"data.root={root}", "data.partition=natural", "model.arch=lstm"],
    )
    assert row["train_loss"] > 0


# ------------------------------------------------------------ quickstart partitions


@pytest.mark.parametrize("partition", ["shards", "iid"])
def test_quickstart_partition_end_to_end(tmp_path: Path, partition: str) -> None:
    """`fedsim run configs/quickstart.yaml data.partition=...` (digits, built in)."""
    run_dir = run_cli(
        QUICKSTART,
        tmp_path / "runs",
        rounds=2,
        num_clients=6,
        clients_per_round=3,
        overrides=[f"data.partition={partition}"],
    )
    check_run(run_dir, rounds=2, num_clients=6, clients_per_round=3)
    config = (run_dir / "config.yaml").read_text()
    assert f"partition: {partition}" in config
    partition_json = json.loads((run_dir / "partition.json").read_text())
    # Both schemes hand out every train example of the digits set.
    assert partition_json["num_train"] == sum(
        c["num_train"] for c in partition_json["clients"]
    )
    if partition == "shards":
        # Two label shards per client: at most a few labels each.
        assert all(
            sum(1 for n in c["label_histogram"] if n) <= 4
            for c in partition_json["clients"]
        ), partition_json["clients"]


# ------------------------------------------------------------- shipped GPU slices


def test_paper_config_as_shipped_trains_on_cpu_without_gpus(tmp_path: Path) -> None:
    """A shipped paper config (0.25 GPU per client) on a CPU-only embedded Ray.

    It falls back to CPU with a warning. A hang (the bug this guards against: an
    actor asking for a GPU no node has is never scheduled) would block in
    ``ray.get``, which ignores pytest-timeout's alarm, so the run is a subprocess
    (with its own Ray) that gets Ctrl-C, as a user would, when it hangs.
    """
    import torch

    assert not torch.cuda.is_available()
    root = write_cifar10(tmp_path / "data", n_train=20, n_test=5, seed=7)
    argv = [
        sys.executable,
        "-m",
        "fedsim",
        "run",
        str(CONFIGS / "cifar10_vgg16_fedpara.yaml"),
        "rounds=1",
        f"data.root={root}",
        "data.num_clients=2",
        "server.clients_per_round=1",
        "client.epochs=1",
        "log.progress=false",
        f"log.root={tmp_path / 'runs'}",
        "model.arch=cnn",
    ]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ADDRESS": ""}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    hung = False
    try:
        _, err = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        hung = True
        proc.send_signal(signal.SIGINT)  # lets the CLI shut its Ray down
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert not hung, f"fedsim run hung for 40 s:\n{err[-2000:]}"
    assert proc.returncode == 0, err[-2000:]
    assert "the Ray cluster has no GPU: clients train on CPU" in err
