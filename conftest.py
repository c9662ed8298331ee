"""Root pytest configuration: which modules' docstring examples are not run yet.

``pyproject.toml`` runs pytest with ``--doctest-modules`` over ``tests``,
``lightning_modules`` and ``fedsim``. The modules below are left out: their
examples would start Ray or run the command line. Doctests must not start Ray or
download anything.
"""

from __future__ import annotations

collect_ignore_glob = [
    "fedsim/__main__.py",  # runs the CLI on import
    "fedsim/backend/ray_*.py",  # examples need a Ray cluster (marked +SKIP)
]
