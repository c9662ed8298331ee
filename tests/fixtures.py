"""Tiny shared fixtures: the quickstart config shrunk to seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsim.config import Config, load_config
from fedsim.driver import client_seed
from fedsim.messages import ClientHParams, ClientTask

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"

TINY = [
    "rounds=2",
    "data.num_clients=6",
    "server.clients_per_round=3",
    "client.epochs=1",
    "log.progress=false",
    "log.checkpoint_every=1",
]


def tiny_config(tmp_path: Path, *overrides: str) -> Config:
    """The quickstart shrunk to seconds, writing under ``tmp_path``."""
    return load_config(QUICKSTART, [*TINY, f"log.root={tmp_path}", *overrides])


def tiny_task(client: int, server_round: int = 0, **hparams: float) -> ClientTask:
    """A client's task with the quickstart's training settings (one epoch)."""
    settings = {"lr": 0.05, "epochs": 1, "batch_size": 16, **hparams}
    return ClientTask(
        client_id=client,
        round=server_round,
        seed=client_seed(0, server_round, client),
        hparams=ClientHParams(**settings),  # type: ignore[arg-type]
    )


def run_model(cfg: Config) -> Any:
    """The model a run of ``cfg`` starts from (the backbone, seeded)."""
    from fedsim.client import build_classifier
    from fedsim.model import worker_spec

    return build_classifier(worker_spec(cfg).model, cfg.seed).model


def readme_keys(file: str) -> list[str]:
    """The keys the README's run-directory table lists for ``file`` (in order).

    The row reads ``| `metrics.jsonl` | one object per round: `round, ...`; ...``:
    the first backticked list after the file name.
    """
    (row,) = [
        line
        for line in (REPO / "README.md").read_text().splitlines()
        if line.startswith(f"| `{file}` |")
    ]
    listed = row.split("|")[2].split("`")[1]
    return [key.strip() for key in listed.split(",")]


def load_data(cfg: Config) -> Any:
    """``(data, partition)`` of ``cfg``, loaded and split in this process."""
    return cfg.data_request()()
