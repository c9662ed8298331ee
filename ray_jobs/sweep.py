"""Entry point of a submitted sweep: ``python -m ray_jobs.sweep CONFIG [args]``.

``fedsim sweep ... --submit`` runs ``python -m ray_jobs.sweep job.yaml --grid
KEY=V1,V2 ... --max-concurrent N --target ACC --out REPORT_DIR --run-dir
RUN_DIR ...`` in the package it uploads (see :mod:`fedsim.backend.jobs`):
``job.yaml`` is the config with every override applied and its paths absolute,
and the run directories (one per point of the grid, in grid order) and the
report folder are the absolute ones that ``fedsim sweep --submit`` printed.
This is ``fedsim sweep`` with those arguments: it checks the data on the
cluster, joins the cluster the job runs on (Ray Jobs sets RAY_ADDRESS), runs
the grid there, several runs at once, writes the report, and exits non-zero
on failure.
"""

from __future__ import annotations

import sys

from fedsim.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["sweep", *sys.argv[1:]]))
