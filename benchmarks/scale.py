"""fedsim at 1,000, 10,000 and 100,000 clients: start-up, round time, memory.

Workload: overhead.py's (the small FedPara CNN on synthetic CIFAR-shaped data,
1 local epoch, batch 32, lr 0.05, global evaluation on 1,000 test images every
round, 2 client actors of 1 CPU) with a cohort of 100 and the same number of
examples per client at every scale (``--per-client``, 2 by default), so that a
round is the same work at every scale and the dataset grows with the clients:
587 MiB of images at 100,000 clients, which this machine holds several times.

Each scale is one ``fedsim run`` command (embedded Ray) in a subprocess. A
sampler thread reads /proc every ``--interval`` seconds for every process of
the command's tree (the command, Ray's daemons, the driver actor, the client
actors): peak RSS per process (the kernel's VmHWM) and the summed PSS (shared
pages split between the processes that map them; the peak of the samples).

Printed per run: start-up (command start to first round start), the median
round time after the first, the driver actor's peak RSS (and its anonymous
part), the run's peak total PSS and the load average meanwhile (other work on
the machine slows everything). ``--repeats`` runs the scales in turn that many
times; the figures are the medians. Also printed: the seconds that generating
and splitting the data takes alone (a separate process; the driver actor does
the same at start-up), and the partition of the largest scale pickled as Ray
does (``ray.put`` once, ``ray.get`` in every actor) as fedsim holds it (one
flat array plus offsets, ``ClientIndices``), against a tuple of one index
array per client (the layout before). Ratios are of the largest scale to the
smallest, PSS is at the middle one, and the last line is one JSON object.

At 100,000 clients the data (587.5 MiB, past ``LOAD_IN_TASK_BYTES``; 10,000
clients' 62 MiB are just under it) is generated in a Ray task (``ray::_load`` in the PSS
table) whose result goes straight to the object store, so the driver actor
maps it and touches only the labels.

    .venv/bin/python benchmarks/scale.py [--clients 1000,10000,100000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GIB = 1024**3
CLIENTS = (1_000, 10_000, 100_000)
COHORT, ROUNDS, ACTORS = 100, 6, 2
IMAGE_BYTES = 3 * 32 * 32 + 8  # uint8 image + int64 label
GOALS = {
    "startup_ratio_100k_1k": 1.3,
    "time_ratio_100k_1k": 1.2,
    "driver_rss_growth_over_data": 1.2,
    "total_pss_gib": 2.0,
}


def overrides(
    clients: int,
    per_client: int,
    rounds: int,
    cohort: int = COHORT,
    name: str = "scale",
) -> list[str]:
    """The overhead workload at ``clients`` clients of ``per_client`` examples.

    overhead.py runs it too (100 clients, a cohort of 10): one definition.
    """
    return [
        f"name={name}",
        f"rounds={rounds}",
        "data.name=synthetic_cifar",
        f"data.synthetic_train={clients * per_client}",
        "data.synthetic_test=1000",
        f"data.num_clients={clients}",
        "data.partition=iid",
        "model.arch=cnn",
        "model.param=fedpara",
        "model.gamma=0.5",
        "client.epochs=1",
        "client.batch_size=32",
        "client.lr=0.05",
        f"server.clients_per_round={cohort}",
        f"resources.num_actors={ACTORS}",
        "resources.cpus_per_client=1",
        "log.progress=false",
        "log.checkpoint_every=0",
        "log.tensorboard=false",
    ]


# ------------------------------------------------------------------ /proc


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        kids[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
    return kids


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (Ray's daemons and workers included)."""
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids[pid])
    return out


def kind(pid: int) -> str:
    """A short name for a process of the run (Ray's process title if any)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    if argv[0].startswith("ray::"):  # ray::ClientActor.train -> ray::ClientActor
        return argv[0].split()[0].split(".")[0]
    if "-m" in argv and "fedsim" in argv:
        return "fedsim command"
    scripts = [Path(a).stem for a in argv if a.endswith(".py")]
    return scripts[0] if scripts else Path(argv[0]).name


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (its reaped children too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def status_kb(pid: int, *keys: str) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            out[key] = int(value.split()[0])
    return out


def pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    """Polls a process tree: peak RSS per process, peak summed PSS."""

    def __init__(self, root: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.stop = threading.Event()
        self.hwm_kb: dict[int, int] = {}  # pid -> peak RSS (VmHWM)
        self.anon_kb: dict[int, int] = {}  # pid -> peak RssAnon (sampled)
        self.kinds: dict[int, str] = {}
        self.peak_pss_kb = 0
        self.peak_pss_by_kind: dict[str, int] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)

    def sample(self) -> None:
        total, by_kind = 0, collections.Counter[str]()
        for pid in process_tree(self.root):
            try:
                name = kind(pid)  # a worker's title changes when it becomes an actor
                if name and (name != "ray::IDLE" or pid not in self.kinds):
                    self.kinds[pid] = name  # (an exiting process has no title)
                st = status_kb(pid, "VmHWM", "RssAnon")
                pss = pss_kb(pid)
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile (or a kernel thread)
            self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), st.get("VmHWM", 0))
            self.anon_kb[pid] = max(self.anon_kb.get(pid, 0), st.get("RssAnon", 0))
            total += pss
            by_kind[self.kinds.get(pid, "?")] += pss
        if total > self.peak_pss_kb:
            self.peak_pss_kb, self.peak_pss_by_kind = total, dict(by_kind)

    def peak_of(self, name: str, table: dict[int, int]) -> float:
        """The largest peak, in MiB, among the processes of kind ``name``."""
        values = [v for pid, v in table.items() if self.kinds.get(pid) == name]
        return max(values, default=0) / 1024


# ------------------------------------------------------------------ runs


def run_scale(clients: int, per_client: int, rounds: int, interval: float) -> dict:
    """One ``fedsim run`` at ``clients`` clients, sampled; its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        cmd = [sys.executable, "-m", "fedsim", "run", "--run-dir", f"{tmp}/run"]
        t_cmd = time.time()
        proc = subprocess.Popen(
            [*cmd, *overrides(clients, per_client, rounds)],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )
        sampler = Sampler(proc.pid, interval)
        sampler.start()
        if proc.wait() != 0:
            raise SystemExit(f"fedsim run at {clients} clients failed")
        wall = time.time() - t_cmd
        sampler.stop.set()
        sampler.join()
        lines = Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
    return {
        "clients": clients,
        "startup_s": rows[0]["started_at"] - t_cmd,
        "first_round_s": rows[0]["round_seconds"],
        "steady_round_s": statistics.median(r["round_seconds"] for r in rows[1:]),
        "wall_s": wall,
        "failed": sum(r["num_failed"] for r in rows),
        "data_mib": clients * per_client * IMAGE_BYTES / 2**20,
        "driver_peak_rss_mib": sampler.peak_of("ray::DriverActor", sampler.hwm_kb),
        "driver_peak_anon_mib": sampler.peak_of("ray::DriverActor", sampler.anon_kb),
        "actor_peak_rss_mib": sampler.peak_of("ray::ClientActor", sampler.hwm_kb),
        "command_peak_rss_mib": sampler.peak_of("fedsim command", sampler.hwm_kb),
        "total_pss_peak_mib": sampler.peak_pss_kb / 1024,
        "pss_by_kind_mib": {
            k: round(v / 1024, 1)
            for k, v in sorted(sampler.peak_pss_by_kind.items(), key=lambda kv: -kv[1])
        },
    }


def load_seconds(clients: int, per_client: int) -> float:
    """Seconds to generate and split the data alone, in a fresh process."""
    out = subprocess.run(
        [sys.executable, __file__, "--load", str(clients), str(per_client)],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout
    return float(out.strip().splitlines()[-1])


def _load(clients: int, per_client: int) -> float:
    from fedsim.config import load_config

    cfg = load_config(None, overrides(clients, per_client, 1))
    t0 = time.perf_counter()
    cfg.data_request()()
    return time.perf_counter() - t0


def partition_layouts(clients: int, per_client: int) -> dict[str, float]:
    """Pickle round trip of the partition: tuple of arrays vs one CSR pair.

    Pickled as Ray does (protocol 5, buffers out of band); the labels alone
    are enough to make the partition.
    """
    import numpy as np

    from fedsim.data import PartitionSpec, make_partition

    labels = np.arange(clients * per_client, dtype=np.int64) % 10
    part = make_partition(labels, PartitionSpec("iid", clients), 0)
    out: dict[str, float] = {}
    for name, obj in (
        ("tuple", (tuple(part.train), tuple(part.test))),  # the layout before
        ("csr", part),  # what fedsim puts: ClientIndices, flat plus offsets
    ):
        buffers: list[Any] = []
        t0 = time.perf_counter()
        blob = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        t1 = time.perf_counter()
        back = pickle.loads(blob, buffers=buffers)
        t2 = time.perf_counter()
        out[f"{name}_put_s"] = round(t1 - t0, 3)
        out[f"{name}_get_s"] = round(t2 - t1, 3)
        out[f"{name}_objects"] = len(buffers)
        out[f"{name}_in_memory_mb"] = round(_nbytes_deep(back) / 1e6, 1)
    return out


def _nbytes_deep(obj: Any) -> int:
    """Bytes held by nested tuples of arrays: objects and their own buffers."""
    from fedsim.data import ClientIndices, Partition

    if isinstance(obj, Partition):
        return sys.getsizeof(obj) + _nbytes_deep((obj.train, obj.test))
    if isinstance(obj, ClientIndices):
        return sys.getsizeof(obj) + _nbytes_deep((obj.flat, obj.offsets))
    if isinstance(obj, tuple):
        return sys.getsizeof(obj) + sum(_nbytes_deep(o) for o in obj)
    return sys.getsizeof(obj) + (obj.nbytes if obj.base is not None else 0)


# ------------------------------------------------------------------ report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--clients", default=",".join(map(str, CLIENTS)), help="comma-separated"
    )
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--repeats", type=int, default=1, help="medians over these")
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--load", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        print(_load(*args.load))
        return
    scales = [int(c) for c in args.clients.split(",")]
    load_s = {n: load_seconds(n, args.per_client) for n in scales}
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in scales}
    for i in range(args.repeats):  # the scales alternate: same machine for each
        for n in scales:
            busy = os.getloadavg()[0]
            r = run_scale(n, args.per_client, args.rounds, args.interval)
            r["loadavg"] = round((busy + os.getloadavg()[0]) / 2, 1)
            runs[n].append(r)
            print(
                f"run {i + 1}, {n:>6} clients: start-up {r['startup_s']:.1f} s, "
                f"round {r['steady_round_s']:.2f} s (first {r['first_round_s']:.2f} "
                f"s), driver peak RSS {r['driver_peak_rss_mib']:.0f} MiB (anon "
                f"{r['driver_peak_anon_mib']:.0f}), actor peak RSS "
                f"{r['actor_peak_rss_mib']:.0f} MiB, total PSS "
                f"{r['total_pss_peak_mib']:.0f} MiB, failed {r['failed']}, "
                f"load average {r['loadavg']}",
                flush=True,
            )
            print(f"  PSS at the peak by process: {r['pss_by_kind_mib']}", flush=True)
    med = {
        n: {
            k: statistics.median(r[k] for r in rs)
            for k in rs[0]
            if isinstance(rs[0][k], int | float)
        }
        for n, rs in runs.items()
    }
    lo, mid, hi = med[scales[0]], med[scales[len(scales) // 2]], med[scales[-1]]
    summary: dict[str, Any] = {
        "clients": scales,
        "per_client": args.per_client,
        "repeats": args.repeats,
        "data_mib": [round(med[n]["data_mib"], 1) for n in scales],
        "data_load_s": [round(load_s[n], 2) for n in scales],
        "startup_s": [round(med[n]["startup_s"], 2) for n in scales],
        "steady_round_s": [round(med[n]["steady_round_s"], 3) for n in scales],
        "driver_peak_rss_mib": [round(med[n]["driver_peak_rss_mib"]) for n in scales],
        "total_pss_peak_mib": [round(med[n]["total_pss_peak_mib"]) for n in scales],
        "loadavg": [med[n]["loadavg"] for n in scales],
        "time_ratio_10k_1k": round(mid["steady_round_s"] / lo["steady_round_s"], 3),
        "time_ratio_100k_1k": round(hi["steady_round_s"] / lo["steady_round_s"], 3),
        "startup_ratio_100k_1k": round(hi["startup_s"] / lo["startup_s"], 3),
        # Start-up less the data's own generation (which grows with the data).
        "startup_ratio_100k_1k_less_data": round(
            (hi["startup_s"] - load_s[scales[-1]])
            / (lo["startup_s"] - load_s[scales[0]]),
            3,
        ),
        "driver_rss_growth_over_data": round(
            (hi["driver_peak_rss_mib"] - lo["driver_peak_rss_mib"]) / hi["data_mib"],
            3,
        ),
        "driver_anon_growth_over_data": round(
            (hi["driver_peak_anon_mib"] - lo["driver_peak_anon_mib"]) / hi["data_mib"],
            3,
        ),
        "total_pss_gib": round(mid["total_pss_peak_mib"] / 1024, 3),
        "partition": partition_layouts(scales[-1], args.per_client),
    }
    print(f"data alone (generate and split, seconds): {load_s}")
    print(f"partition of {scales[-1]} clients as pickled: {summary['partition']}")
    for key, goal in GOALS.items():
        value = summary[key]
        mark = "met" if value <= goal else "NOT met"
        print(f"{key:>30}: {value:8.3f}  (goal <= {goal}: {mark})")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
