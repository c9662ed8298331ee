"""``fedsim params``: parameters and bytes of a config's model against the original.

Example
-------
>>> from fedsim.config import load_config
>>> report = model_report(load_config(None))
>>> report["num_params"] < report["num_params_original"]
True
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fedsim.config import Config
from fedsim.model import checked_model
from fedsim.registry import STRATEGIES
from fedsim.strategy import state_layout

FP32_BYTES = 4


def _counts(cfg: Config) -> tuple[int, int]:
    model = checked_model(cfg)
    layout = state_layout(cfg, model)
    total = sum(p.numel() for p in model.parameters())
    return total, layout.num_global(model)


def model_report(cfg: Config) -> dict[str, Any]:
    """Parameter and byte counts of ``cfg``'s model and of its original form."""
    total, travelling = _counts(cfg)
    original_cfg = replace(cfg, model=replace(cfg.model, param="original"))
    total_o, travelling_o = _counts(original_cfg)
    k = cfg.server.clients_per_round
    # What a client keeps on disk: its local part of the model plus the
    # strategy's copies of the travelling part; at most two versions each
    # (see fedsim.state), for every client.
    copies = STRATEGIES[cfg.server.strategy].client_copies
    client_state = (total - travelling + copies * travelling) * FP32_BYTES
    per_round = 2 * k * travelling * FP32_BYTES
    per_round_o = 2 * k * travelling_o * FP32_BYTES
    return {
        "arch": cfg.model.arch,
        "param": cfg.model.param,
        "gamma": cfg.model.gamma,
        "rank_rule": cfg.model.rank_rule,
        "dataset": cfg.data.name,
        "clients_per_round": k,
        "num_params": total,
        "num_params_travelling": travelling,
        "bytes_per_model": travelling * FP32_BYTES,
        "bytes_per_round": per_round,
        "bytes_total": per_round * cfg.rounds,
        "num_params_original": total_o,
        "bytes_per_model_original": travelling_o * FP32_BYTES,
        "bytes_per_round_original": per_round_o,
        "bytes_total_original": per_round_o * cfg.rounds,
        "ratio": per_round_o / per_round,
        "num_clients": cfg.data.num_clients,
        "bytes_client_state": client_state,
        "bytes_client_state_disk": 2 * cfg.data.num_clients * client_state,
    }


def format_report(r: dict[str, Any]) -> str:
    """Human-readable table of :func:`model_report`."""

    def mb(n: int) -> str:
        return f"{n / 1e6:,.2f} MB"

    def gb(n: int) -> str:
        return f"{n / 1e9:,.3f} GB"

    rows = [
        (
            "model",
            f"{r['arch']} ({r['param']}, gamma={r['gamma']}, "
            f"rank_rule={r['rank_rule']}) on {r['dataset']}",
        ),
        ("parameters", f"{r['num_params']:,} (original {r['num_params_original']:,})"),
        (
            "travelling per client",
            f"{r['num_params_travelling']:,} params, {mb(r['bytes_per_model'])} fp32",
        ),
        (
            "bytes per round",
            f"{gb(r['bytes_per_round'])} = 2 x {r['clients_per_round']} "
            f"clients x {mb(r['bytes_per_model'])} "
            f"(original {gb(r['bytes_per_round_original'])})",
        ),
        (
            "bytes per run",
            f"{gb(r['bytes_total'])} (original {gb(r['bytes_total_original'])})",
        ),
        ("original / this", f"{r['ratio']:.2f}x fewer bytes"),
        (
            "client state on disk",
            f"up to {mb(r['bytes_client_state_disk'])} = 2 versions x "
            f"{r['num_clients']:,} clients x {mb(r['bytes_client_state'])}",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:>{width}}  {v}" for k, v in rows)
