"""Start-up of overhead.py's workload, with and without the lean torchmetrics import.

``fedsim run`` (embedded Ray, 2 client actors) of overhead.py's workload, 2
rounds, timed from the command's start to the first round's start; runs with
``FEDSIM_LEAN_IMPORTS=1`` (the default: client actors import torchmetrics
without scipy, torchvision and matplotlib, see fedsim/backend/client_actor.py)
and ``=0`` alternate, so that both see the same machine. Printed: median
start-up and median CPU seconds by process until the first round. The last line
is one JSON object.

    .venv/bin/python benchmarks/startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.overhead import OVERRIDES, STARTUP_GOAL_S, fedsim_run

RUN = [o for o in OVERRIDES if not o.startswith("rounds=")] + ["rounds=2"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"lean": [], "whole": []}
    for i in range(args.repeats):
        for name, flag in (("lean", "1"), ("whole", "0")):
            run = fedsim_run(RUN, env={"FEDSIM_LEAN_IMPORTS": flag})
            runs[name].append(run)
            print(
                f"run {i + 1} {name}: start-up {run['startup_s']:.2f} s, "
                f"CPU {sum(run['startup_cpu'].values()):.1f} s {run['startup_cpu']}",
                flush=True,
            )
    out: dict[str, Any] = {"repeats": args.repeats}
    for name, rows in runs.items():
        cpu: dict[str, list[float]] = collections.defaultdict(list)
        for r in rows:
            for k, v in r["startup_cpu"].items():
                cpu[k].append(v)
        out[f"{name}_startup_s"] = round(
            statistics.median(r["startup_s"] for r in rows), 2
        )
        out[f"{name}_startup_cpu_s"] = round(
            statistics.median(sum(r["startup_cpu"].values()) for r in rows), 2
        )
        out[f"{name}_cpu_by_process"] = {
            k: round(statistics.median(v), 2) for k, v in cpu.items()
        }
    out["saved_s"] = round(out["whole_startup_s"] - out["lean_startup_s"], 2)
    for name in runs:
        met = "met" if out[f"{name}_startup_s"] <= STARTUP_GOAL_S else "NOT met"
        print(
            f"{name:>5}: start-up {out[f'{name}_startup_s']:.2f} s "
            f"({out[f'{name}_startup_cpu_s']:.1f} CPU s; goal <= {STARTUP_GOAL_S:g} s: "
            f"{met}) {out[f'{name}_cpu_by_process']}"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
