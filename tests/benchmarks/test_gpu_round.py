"""benchmarks/gpu_round.py runs end to end in its CPU smoke mode (it cannot rot)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def test_the_smoke_mode_runs_every_part(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_round.py", "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == json.loads((tmp_path / "gpu_round.json").read_text())
    for param in ("fedpara", "original"):
        proxy = report["proxies"][param]
        assert proxy["kernel_ops_per_step"] <= proxy["aten_ops_per_step"]
        assert proxy["host_ms_per_step_tiny"] > 0
        for part in ("client", "plain"):
            row = report[part][f"{param}/eager"]
            assert row["ms_per_step"] > 0, (part, row)
        assert report["client"][f"{param}/eager"]["vs_plain"] > 0
    # FedPara's step has more ops than the original's (its weight composition)
    proxies = report["proxies"]
    assert (
        proxies["fedpara"]["aten_ops_per_step"]
        > proxies["original"]["aten_ops_per_step"]
    )
    run = report["run"]["actors_1"]
    assert run["rounds"] == 2 and run["steps_per_round"] > 0, run
    vectorized = report["vectorized"]
    sequential = vectorized["fedpara/sequential"]
    for slots in (4, 8, 16):
        row = vectorized[f"fedpara/k{slots}"]
        assert row["client_steps"] == sequential["client_steps"], row
        assert 0 < row["slot_occupancy"] <= 1 and row["ms_per_client_step"] > 0
        assert vectorized[f"fedpara/k{slots}+graph"] == {"skipped": "needs CUDA"}
    # One step of 16 clients launches far fewer ops per client than 16 steps
    # (op counts, not times: the same on any machine).
    k16 = vectorized["fedpara/k16"]
    assert k16["step_kernel_ops_per_client_step_vs_sequential"] < 0.5, k16
