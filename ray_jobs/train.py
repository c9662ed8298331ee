"""Entry point of a submitted Ray job: ``python -m ray_jobs.train CONFIG [args]``.

``fedsim submit`` runs ``python -m ray_jobs.train job.yaml --run-dir RUN_DIR``
in the package it uploads (see :mod:`fedsim.backend.jobs`): ``job.yaml`` is the
resolved config (absolute paths), ``RUN_DIR`` the absolute run directory that
``fedsim submit`` printed. This is ``fedsim run`` with those arguments: it
checks the data on the cluster, joins the cluster the job runs on (Ray Jobs
sets RAY_ADDRESS), runs one experiment, and exits non-zero on failure.
"""

from __future__ import annotations

import sys

from fedsim.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["run", *sys.argv[1:]]))
