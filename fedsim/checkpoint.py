"""Server state and its checkpoint: plain tensors and numbers, loaded safely.

:class:`ServerState` is everything needed to continue a run: round, global
tensors, the strategy's state, the ledger and the best accuracies. It is a
frozen value, replaced every round. The checkpoint stores it as nested dicts
of tensors, numbers and strings only, written atomically and read with
``torch.load(weights_only=True)``, so loading a tampered file runs no code. It
carries a format version and the config it was made with, so a resume with a
different model, data, strategy or seed is refused with the keys that differ.

Example
-------
>>> import tempfile, torch
>>> from pathlib import Path
>>> run = Path(tempfile.mkdtemp())
>>> state = ServerState(round=3, global_tensors={"w": torch.ones(2)})
>>> _ = save_checkpoint(run, state, {"seed": 0})
>>> load_checkpoint(run, {"seed": 0}).round
3
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from fedsim.comm import Ledger, RoundTotals
from fedsim.config import Config, ConfigError
from fedsim.messages import MODEL, Channels
from fedsim.params import Tensors
from fedsim.rundir import CHECKPOINT
from fedsim.state import save_atomically
from fedsim.strategy import EvalMetrics, StrategyState
from fedsim.tracking import flatten

FORMAT = 2
# Keys a resume may change: how long, where and how it runs, what it logs.
RESUMABLE = ("rounds", "log", "resources", "name")


@dataclass(frozen=True, kw_only=True)
class ServerState:
    """Everything needed to continue a run: replaced, never edited, each round."""

    round: int
    global_tensors: Tensors
    strategy_state: StrategyState = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)
    best_accuracy: float | None = None
    best_personal_accuracy: float | None = None
    last_eval: EvalMetrics | None = None
    wall_seconds: float = 0.0  # of the whole run up to its last checkpoint
    # What the downlink codec dropped per channel, added back next round
    # (error feedback).
    downlink_residual: Channels = field(default_factory=dict)
    trained: frozenset[int] = frozenset()  # clients aggregated at least once

    def advance(
        self,
        *,
        global_tensors: Tensors,
        strategy_state: StrategyState,
        ledger: Ledger,
        evaluation: EvalMetrics | None,
        downlink_residual: Channels | None = None,
        trained: frozenset[int] | None = None,
    ) -> ServerState:
        """The state after this round (``trained``: None keeps the set)."""
        nxt = replace(
            self,
            round=self.round + 1,
            global_tensors=global_tensors,
            strategy_state=strategy_state,
            ledger=ledger,
            downlink_residual=downlink_residual or {},
            trained=self.trained if trained is None else trained,
        )
        if evaluation is None:
            return nxt
        return replace(
            nxt,
            last_eval=evaluation,
            best_accuracy=_best(self.best_accuracy, evaluation.accuracy),
            best_personal_accuracy=_best(
                self.best_personal_accuracy, evaluation.personal_accuracy
            ),
        )


def _best(old: float | None, new: float | None) -> float | None:
    if new is None:
        return old
    return new if old is None else max(old, new)


def _fingerprint(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RESUMABLE}


def save_checkpoint(
    run_dir: Path, state: ServerState, config: Mapping[str, Any]
) -> Path:
    """Write ``checkpoints/last.pt`` atomically and return its path."""
    path = run_dir / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    ledger = state.ledger
    blob = {
        "format": FORMAT,
        "config": json.dumps(_fingerprint(config), sort_keys=True),
        "round": state.round,
        "global": dict(state.global_tensors),
        "strategy": {ns: dict(t) for ns, t in state.strategy_state.items()},
        "ledger": {
            "total_down": ledger.total_down,
            "total_up": ledger.total_up,
            "rounds": [[t.round, t.bytes_down, t.bytes_up] for t in ledger.rounds],
        },
        "best_accuracy": state.best_accuracy,
        "best_personal_accuracy": state.best_personal_accuracy,
        "last_eval": None if state.last_eval is None else vars(state.last_eval),
        "wall_seconds": state.wall_seconds,
        "downlink_residual": {ch: dict(t) for ch, t in state.downlink_residual.items()},
        "trained": sorted(state.trained),
    }
    save_atomically(blob, path)
    return path


def load_checkpoint(
    run_dir: Path, config: Mapping[str, Any], like: Tensors | None = None
) -> ServerState:
    """Read the state saved by :func:`save_checkpoint` for a run of ``config``.

    ``like``, the model's own global tensors, are what the saved ones must match
    in names and shapes.

    Raises
    ------
    ConfigError
        No checkpoint, an unreadable, incomplete or foreign one, one made with a
        config that differs in more than the resumable keys (rounds, log,
        resources), or one whose tensors do not fit the model.
    """
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise ConfigError(
            f"{run_dir} has no checkpoint ({path} is missing); a run saves one "
            "every log.checkpoint_every rounds (0 disables checkpoints)"
        )
    try:
        blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses anything but plain data
        raise ConfigError(f"{path} is not a fedsim checkpoint: {exc}") from exc
    found = blob.get("format") if isinstance(blob, dict) else None
    if found != FORMAT:
        raise ConfigError(
            f"{path} has checkpoint format {found}; this fedsim reads format "
            f"{FORMAT} (resume it with the fedsim version that wrote it)"
        )
    saved = flatten(json.loads(blob["config"]))
    now = flatten(_fingerprint(config))
    # A key newer than the checkpoint, at its default, is the run it was.
    default = flatten(_fingerprint(Config().to_dict()))
    differ = sorted(
        k
        for k in saved.keys() | now.keys()
        if saved.get(k) != now.get(k)
        and not (k not in saved and k in default and now[k] == default[k])
    )
    if differ:
        shown = ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in differ)
        raise ConfigError(
            f"cannot resume {run_dir}: the config differs from the checkpoint's in "
            f"{shown}; only rounds, log.* and resources.* may change"
        )
    try:
        state = _state(blob)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{path} is not a complete fedsim checkpoint ({type(exc).__name__}: "
            f"{reprlib.repr(exc.args[0] if exc.args else '')}); resume from a "
            "copy of an intact one, or start the run again"
        ) from None
    if like is not None:
        _check_fits(path, state.global_tensors, like)
    return state


def _check_fits(path: Path, saved: Tensors, like: Tensors) -> None:
    """Refuse saved tensors whose names or shapes are not the model's."""
    missing, extra = sorted(like.keys() - saved.keys()), sorted(saved.keys() - like)
    wrong = sorted(
        f"{k} {_shape(saved[k])} (model: {_shape(like[k])})"
        for k in like.keys() & saved.keys()
        if _shape(saved[k]) != _shape(like[k])
    )
    problems = [
        f"{what} {reprlib.repr(names)}"
        for what, names in (
            ("missing", missing),
            ("unexpected", extra),
            ("wrong shape", wrong),
        )
        if names
    ]
    if problems:
        raise ConfigError(
            f"{path} does not fit the model ({'; '.join(problems)}): it was "
            "written for another model; resume with the config that made it"
        )


def _shape(value: Any) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    return None if shape is None else tuple(shape)


def _state(blob: Mapping[str, Any]) -> ServerState:
    led = blob["ledger"]
    return ServerState(
        round=int(blob["round"]),
        global_tensors=dict(blob["global"]),
        strategy_state={ns: dict(t) for ns, t in blob["strategy"].items()},
        ledger=Ledger(
            total_down=led["total_down"],
            total_up=led["total_up"],
            rounds=tuple(RoundTotals(*row) for row in led["rounds"]),
        ),
        best_accuracy=blob["best_accuracy"],
        best_personal_accuracy=blob["best_personal_accuracy"],
        last_eval=None
        if blob["last_eval"] is None
        else EvalMetrics(**blob["last_eval"]),
        wall_seconds=float(blob["wall_seconds"]),
        downlink_residual=_residual(blob.get("downlink_residual", {})),
        trained=frozenset(int(c) for c in blob.get("trained", ())),
    )


def _residual(saved: Mapping[str, Any]) -> Channels:
    """The downlink residual per channel; a flat one is the model channel's.

    Checkpoints written before every channel was encoded keep the model
    channel's residual as flat tensors.
    """
    if any(isinstance(t, torch.Tensor) for t in saved.values()):
        return {MODEL: dict(saved)}
    return {ch: dict(t) for ch, t in saved.items()}
