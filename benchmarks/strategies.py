"""One run of every strategy and personalization method on the quickstart data.

Prints a markdown table: final global and personal accuracy, total bytes and
wall time per run, from the configs that pair FedPara with each strategy
(configs/strategies/) and the personalization comparison on the 2-shards split
(configs/personalization/). Run: ``.venv/bin/python benchmarks/strategies.py``
(add ``--backend ray`` for the Ray path; default: in-process).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fedsim.config import load_config
from fedsim.experiment import run_experiment

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RUNS = [
    CONFIGS / "quickstart.yaml",
    *(
        CONFIGS / "strategies" / f"quickstart_{s}.yaml"
        for s in ("fedprox", "scaffold", "feddyn", "fedadam", "fedyogi", "fedadagrad")
    ),
    *(
        CONFIGS / "personalization" / f"quickstart_{s}.yaml"
        for s in ("fedavg", "pfedpara", "fedper", "local")
    ),
]


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["local", "ray"], default="local")
    args = parser.parse_args()
    if args.backend == "ray":
        from fedsim.backend.cluster import start_ray

        start_ray(None)
    root = tempfile.mkdtemp(prefix="fedsim-strategies-")
    print(
        "| config | strategy | model | final acc | final personal acc "
        "| total GB | wall s |\n|---|---|---|---|---|---|---|"
    )
    for path in RUNS:
        cfg = load_config(path, [f"log.root={root}", "log.progress=false"])
        t0 = time.perf_counter()
        s = run_experiment(cfg, backend=args.backend).summary
        wall = time.perf_counter() - t0
        print(
            f"| {path.relative_to(CONFIGS)} | {cfg.server.strategy} "
            f"| {cfg.model.param} | {fmt(s.final_accuracy)} "
            f"| {fmt(s.final_personal_accuracy)} | {s.total_bytes / 1e9:.4f} "
            f"| {wall:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
