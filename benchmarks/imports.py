"""What each process of a run pays to import its libraries: CPU seconds and memory.

Each step runs in a fresh interpreter, on top of the steps before it, and
prints the CPU seconds it took (``time.process_time``) and the anonymous memory
it added (``RssAnon``, memory no other process shares). The steps are those of
a client actor (Ray, torch, ``torch._dynamo``, Lightning, ``fedsim.client``
with the lean torchmetrics import) and of the driver actor (``fedsim.experiment``
and the Ray pool, no Lightning); torch's shared libraries are also loaded one
by one with ctypes, which shows what the CUDA build of the pinned torch costs
on a machine without a GPU. Medians of ``--repeats`` runs; the last line is one
JSON object.

    .venv/bin/python benchmarks/imports.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (name, code run after the previous steps of the same chain)
CLIENT = [
    ("ray", "import ray"),
    ("torch", "import torch"),
    ("torch._dynamo", "import torch._dynamo"),
    (
        "lightning + torchmetrics (lean)",
        "from fedsim.backend.client_actor import lean_import; lean_import(); "
        "import lightning.fabric",
    ),
    ("fedsim.client", "import fedsim.client"),
]
DRIVER = [
    ("ray", "import ray"),
    ("fedsim.experiment", "import fedsim.experiment"),
    ("fedsim ray pool + driver actor", "import fedsim.backend.ray_driver"),
]
TORCH_LIBS = [
    (lib, f"ctypes.CDLL(str(LIB / '{lib}'), mode=ctypes.RTLD_GLOBAL)")
    for lib in ("libc10.so", "libtorch_cpu.so", "libc10_cuda.so", "libtorch_cuda.so")
] + [("torch (Python part)", "import torch")]

PROBE = """
import ctypes, json, sys, time
from pathlib import Path
LIB = Path(__import__("importlib.util").util.find_spec("torch").origin).parent / "lib"
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
out = []
for name, code in json.loads(sys.argv[1]):
    a, t = anon(), time.process_time()
    exec(code)
    out.append([name, time.process_time() - t, anon() - a])
print(json.dumps(out))
"""


def measure(chain: list[tuple[str, str]]) -> list[list]:
    """CPU seconds and MiB of anonymous memory of each step, in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(chain)],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    result: list[list] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for title, chain in (
        ("client actor", CLIENT),
        ("driver actor", DRIVER),
        ("torch, library by library", TORCH_LIBS),
    ):
        runs = [measure(chain) for _ in range(args.repeats)]
        steps = {
            name: {
                "cpu_s": round(statistics.median(r[i][1] for r in runs), 2),
                "anon_mib": round(statistics.median(r[i][2] for r in runs), 1),
            }
            for i, (name, _) in enumerate(chain)
        }
        summary[title] = steps
        print(f"{title}:")
        for name, fig in steps.items():
            cpu, mib = fig["cpu_s"], fig["anon_mib"]
            print(f"  {name:>34}: {cpu:5.2f} CPU s  {mib:6.1f} MiB")
        total_cpu = sum(f["cpu_s"] for f in steps.values())
        total_mib = sum(f["anon_mib"] for f in steps.values())
        print(f"  {'all':>34}: {total_cpu:5.2f} CPU s  {total_mib:6.1f} MiB")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
