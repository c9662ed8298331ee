"""Entry point of a submitted Ray job: ``python -m ray_jobs.train CONFIG [k=v ...]``.

Joins the cluster the job runs on (RAY_ADDRESS is set by Ray Jobs) and runs one
experiment; exits non-zero on failure.
"""

from __future__ import annotations

import sys

from fedsim.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["run", *sys.argv[1:]]))
