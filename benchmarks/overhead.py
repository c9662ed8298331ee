"""fedsim against a plain sequential PyTorch loop on the same FedAvg workload.

Workload: the small CNN (FedPara) on synthetic CIFAR-shaped data, 100 clients of
200 images (IID), 10 clients per round, 1 local epoch, batch 32, 20 rounds,
global evaluation on 1,000 test images every round, in both.

* plain: one process, torch's default threads, clients trained one after another.
* fedsim: ``fedsim run`` as a subprocess on an embedded Ray with 2 client actors.

Printed: both wall times, steady-state seconds per round (rounds after the
first; median), fedsim's start-up (command start to first round start), and the
fixed cost per client round: fedsim's minus the plain loop's wall seconds per
client round (steady round time / clients per round), as the issue defines it.
A stricter figure, ``actor_overhead_ms_per_client_round``, charges fedsim its
busy actor-seconds (steady round time x actors / clients per round) against the
plain loop at one thread, as an actor has (a short 4-round run): what remains is
evaluation, aggregation and Ray. Both programs are timed as whole commands,
interpreter start and imports included. The last line is one JSON object.

    .venv/bin/python benchmarks/overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.scale import cpu_seconds, kind, overrides, process_tree  # noqa: E402
from fedsim.config import load_config  # noqa: E402

STARTUP_GOAL_S = 6.0  # command start to first round start

CLIENTS, PER_CLIENT, COHORT, ROUNDS, ACTORS = 100, 200, 10, 20, 2
OVERRIDES = overrides(CLIENTS, PER_CLIENT, ROUNDS, COHORT, name="overhead")


def plain_loop(rounds: int) -> dict[str, float]:
    """The same rounds as fedsim, written as the shortest honest PyTorch loop."""
    from fedsim.data.transforms import prepare_batch
    from fedsim.driver import client_seed, sample_cohort
    from fedsim.model import model_spec
    from lightning_modules.models import build_model

    t_start = time.perf_counter()
    cfg = load_config(None, OVERRIDES)
    data, part = cfg.data_request()()
    info = data.info
    torch.manual_seed(cfg.seed)
    model = build_model(model_spec(cfg, info.num_classes, info.input_shape))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.client.lr)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    x_test = torch.from_numpy(data.x_test.copy())
    y_test = torch.from_numpy(data.y_test.copy())
    round_times = []
    for r in range(rounds):
        t0 = time.perf_counter()
        sums = {
            k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_state.items()
        }
        total = 0
        for c in sample_cohort(cfg.seed, r, CLIENTS, COHORT):
            model.load_state_dict(global_state)
            idx = part.train[c]
            x_all = torch.from_numpy(data.x_train[idx])
            y_all = torch.from_numpy(data.y_train[idx])
            gen = torch.Generator().manual_seed(client_seed(cfg.seed, r, c))
            order = torch.randperm(len(idx), generator=gen)
            for s in range(0, len(idx), 32):
                b = order[s : s + 32]
                x = prepare_batch(x_all[b], info, train=True, generator=gen)
                opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(x), y_all[b])
                loss.backward()
                opt.step()
            for k, v in model.state_dict().items():
                sums[k] += v.double() * len(idx)
            total += len(idx)
        global_state = {k: (v / total).float() for k, v in sums.items()}
        model.load_state_dict(global_state)
        with torch.no_grad():
            logits = model(prepare_batch(x_test, info, train=False))
            _ = float((logits.argmax(1) == y_test).float().mean())
        round_times.append(time.perf_counter() - t0)
    return {
        "loop_s": time.perf_counter() - t_start,
        "steady_round_s": statistics.median(round_times[1:]),
    }


def fedsim_run(
    overrides: list[str] | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """``fedsim run`` in a subprocess, timed from the command's start.

    Until the first round starts, the CPU seconds of every process of the
    command's tree are read from /proc (``startup_cpu``, by process kind):
    where the start-up goes on a machine whose cores are all busy meanwhile.
    """
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **(env or {})}
        metrics = Path(f"{tmp}/run/metrics.jsonl")
        t_cmd = time.time()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedsim",
                "run",
                "--run-dir",
                f"{tmp}/run",
                *(OVERRIDES if overrides is None else overrides),
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )
        cpu: dict[int, tuple[str, float]] = {}
        while proc.poll() is None and not (metrics.exists() and metrics.stat().st_size):
            for pid in process_tree(proc.pid):
                try:
                    cpu[pid] = (kind(pid), cpu_seconds(pid))
                except (OSError, ValueError, IndexError):
                    continue  # exited meanwhile
            time.sleep(0.1)
        if proc.wait() != 0:
            raise SystemExit("fedsim run failed")
        wall = time.time() - t_cmd
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    by_kind: dict[str, float] = collections.Counter()
    for name, seconds in cpu.values():
        by_kind[name] += seconds
    return {
        "wall_s": wall,
        "startup_s": rows[0]["started_at"] - t_cmd,
        "steady_round_s": statistics.median(r["round_seconds"] for r in rows[1:]),
        "final_accuracy": rows[-1]["accuracy"],
        "startup_cpu": {k: round(v, 2) for k, v in by_kind.most_common()},
    }


def run_plain(threads: int, rounds: int) -> dict[str, float]:
    """The plain loop as its own command, timed from the command's start."""
    t_cmd = time.time()
    out = subprocess.run(
        [sys.executable, __file__, "--plain", str(threads), str(rounds)],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    result["wall_s"] = time.time() - t_cmd
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--plain",
        nargs=2,
        type=int,
        metavar=("THREADS", "ROUNDS"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()
    if args.plain:
        torch.set_num_threads(args.plain[0])
        print(json.dumps(plain_loop(args.plain[1])))
        return
    runs = []
    for i in range(args.repeats):
        plain = run_plain(torch.get_num_threads(), ROUNDS)
        # The per-client compute of an actor (1 thread), to isolate fixed costs.
        plain1 = run_plain(1, 4)
        fed = fedsim_run()
        actor_s = fed["steady_round_s"] * ACTORS / COHORT
        run = {
            "plain_wall_s": plain["wall_s"],
            "fedsim_wall_s": fed["wall_s"],
            "plain_steady_round_s": plain["steady_round_s"],
            "fedsim_steady_round_s": fed["steady_round_s"],
            "startup_s": fed["startup_s"],
            "ratio": fed["wall_s"] / plain["wall_s"],
            "steady_ratio": fed["steady_round_s"] / plain["steady_round_s"],
            # The definition: wall time per client round, fedsim - plain.
            "fixed_ms_per_client_round": 1000
            * (fed["steady_round_s"] - plain["steady_round_s"])
            / COHORT,
            # Stricter: busy actor-seconds per client round - plain at 1 thread.
            "actor_overhead_ms_per_client_round": 1000
            * (actor_s - plain1["steady_round_s"] / COHORT),
            "plain_1thread_ms_per_client_round": 1000
            * plain1["steady_round_s"]
            / COHORT,
            "fedsim_final_accuracy": fed["final_accuracy"],
            "startup_cpu_s": sum(fed["startup_cpu"].values()),
        }
        runs.append(run)
        print(
            f"run {i + 1}: " + ", ".join(f"{k}={v:.3f}" for k, v in run.items()),
            flush=True,
        )
        print(f"  CPU seconds until the first round: {fed['startup_cpu']}", flush=True)
    medians: dict[str, Any] = {
        k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]
    }
    medians["repeats"] = args.repeats
    medians["torch_threads_plain"] = torch.get_num_threads()
    print("medians: " + ", ".join(f"{k}={v}" for k, v in medians.items()))
    met = "met" if medians["startup_s"] <= STARTUP_GOAL_S else "NOT met"
    print(
        f"start-up {medians['startup_s']:.1f} s (goal <= {STARTUP_GOAL_S:g} s: {met}; "
        f"{medians['startup_cpu_s']:.1f} CPU seconds on {os.cpu_count()} cores)"
    )
    print(json.dumps(medians))


if __name__ == "__main__":
    main()
