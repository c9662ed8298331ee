"""Which Ray a command talks to, and starting or joining it.

A Ray cluster answers at two kinds of address, and each command needs one:

- the **GCS address** ``HOST:6379`` (what ``ray start --head`` prints), or a Ray
  Client address ``ray://HOST:10001``: ``fedsim run`` joins the cluster there;
- the **dashboard** ``http://HOST:8265``: ``fedsim submit | status | logs |
  stop`` and ``fedsim sweep --submit`` talk to its job API.

``--address``, ``resources.address`` and ``RAY_ADDRESS`` may hold either; the
helpers below tell them apart and say which one a command needs instead of
letting Ray fail with a traceback.

This module imports Ray only when it starts or joins it: the environment
variables Ray reads at import time are set first.

Example
-------
>>> address_kind("http://10.0.0.1:8265"), address_kind("10.0.0.1:6379")
('dashboard', 'gcs')
>>> address_kind("ray://10.0.0.1:10001")
'client'
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any, Literal

from fedsim.config import ConfigError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
AddressKind = Literal["dashboard", "client", "gcs"]

_RUN_NEEDS = (
    "fedsim run joins a cluster at its GCS address: pass --address HOST:6379 "
    "(the address `ray start --head` printed) or ray://HOST:10001, or unset "
    "RAY_ADDRESS to run on an embedded local Ray"
)
_JOBS_NEED = (
    "fedsim submit, sweep --submit, status, logs and stop talk to the Ray "
    "dashboard: pass --address http://HOST:8265 or set RAY_ADDRESS to it"
)


class ClusterError(Exception):
    """The cluster could not do what was asked; the message says what to fix.

    ``exit_code`` is what the command exits with (a failed job's own exit code
    when it is known).
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def address_kind(address: str) -> AddressKind:
    """Whether ``address`` names a dashboard, a Ray Client server or a GCS."""
    scheme = address.partition("://")[0].lower() if "://" in address else ""
    if scheme in ("http", "https"):
        return "dashboard"
    if scheme == "ray":
        return "client"
    return "gcs"


def _given(address: str | None) -> tuple[str | None, str]:
    """The address to use (argument, else RAY_ADDRESS) and where it came from."""
    if address:
        return address, address
    env = os.environ.get("RAY_ADDRESS") or None
    return env, f"RAY_ADDRESS={env}"


def cluster_address(address: str | None) -> str | None:
    """The address ``fedsim run`` joins: ``address``, else RAY_ADDRESS, else None.

    None means an embedded local Ray.

    Raises
    ------
    ConfigError
        The address is a dashboard's, which only the job commands use.
    """
    chosen, shown = _given(address)
    if chosen and address_kind(chosen) == "dashboard":
        raise ConfigError(f"{shown} is a Ray dashboard address; {_RUN_NEEDS}")
    return chosen


def dashboard_address(address: str | None) -> str:
    """The dashboard the job commands talk to: ``address``, else RAY_ADDRESS.

    Raises
    ------
    ConfigError
        No address, or one that names a GCS or a Ray Client server.
    """
    chosen, shown = _given(address)
    if not chosen:
        raise ConfigError(f"no cluster address: {_JOBS_NEED}")
    if address_kind(chosen) != "dashboard":
        raise ConfigError(
            f"{shown} is a cluster (GCS or Ray Client) address, for fedsim run; "
            f"{_JOBS_NEED}"
        )
    return chosen.rstrip("/")


def start_ray(
    address: str | None, *, num_cpus: int | None = None, num_gpus: int | None = None
) -> bool:
    """Join ``address`` (or RAY_ADDRESS), or start an embedded local instance.

    The embedded instance binds to loopback. Returns True when this call
    started Ray (so the caller should shut it down), False when Ray was
    already initialized in this process.

    Raises
    ------
    ConfigError
        ``address`` (or RAY_ADDRESS) is a dashboard address.
    """
    address = cluster_address(address)
    if address is None:
        # Read when Ray is imported: set it first (see also _node_ip_address).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    if address:
        _check_answers(address)
        ray.init(address=address, log_to_driver=True)
        return True
    # Ray turns token auth on for a new local instance and warns about it each
    # time; this one listens on loopback only, so the notice is noise here.
    notices = logging.getLogger(_TOKEN_NOTICE_LOGGER)
    notices.addFilter(_quiet_default_token_notice)
    try:
        with own_session():
            ray.init(
                # "local": always a new instance; a bare ray.init() would try to
                # join the last `ray start` cluster recorded in /tmp/ray, even a
                # dead one.
                address="local",
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                _node_ip_address=LOOPBACK,
                logging_level=logging.WARNING,
                configure_logging=True,
            )
    finally:
        notices.removeFilter(_quiet_default_token_notice)
    return True


PROBE_SECONDS = 5.0


def _check_answers(address: str, timeout: float = PROBE_SECONDS) -> None:
    """Refuse, within ``timeout``, a ``HOST:PORT`` where nothing listens.

    Ray itself retries a silent GCS for minutes; a mistyped port should say so
    at once. Addresses without a port (``auto``) are Ray's to resolve.

    Raises
    ------
    ConfigError
        Nothing accepts a connection at the address.
    """
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout).close()
    except (OSError, OverflowError) as exc:
        raise ConfigError(
            f"no Ray cluster answers at {address} "
            f"({getattr(exc, 'strerror', None) or exc}); start one with "
            "`ray start --head`, or pass the address it printed"
        ) from None


_TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextlib.contextmanager
def own_session() -> Iterator[None]:
    """Ray's processes started in the block run in a session of their own.

    ``timeout``, Slurm's scancel and systemd stop a job by signalling its whole
    process group. Ray starts its daemons (GCS, raylet, and through the raylet
    every worker: the driver actor, the client actors) in the caller's group,
    with only SIGINT blocked, so a group SIGTERM killed them under the run and
    it could neither finish its round nor checkpoint. In their own session the
    signal reaches only this process, which stops the run as a SIGTERM to it
    alone does; the daemons still die with this process (Ray sets their parent
    death signal) and are stopped by :func:`stop_ray`.
    """
    from ray._private import services

    popen = services.ConsolePopen

    class SessionPopen(popen):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["start_new_session"] = True
            super().__init__(*args, **kwargs)

    services.ConsolePopen = SessionPopen  # type: ignore[misc]
    try:
        yield
    finally:
        services.ConsolePopen = popen  # type: ignore[misc]


def _quiet_default_token_notice(record: logging.LogRecord) -> bool:
    """Drop Ray's notice that token auth is on by default; keep the rest."""
    return "Token authentication is enabled for this Ray cluster" not in str(record.msg)


STOP_SECONDS = 15.0


def stop_ray(timeout: float = STOP_SECONDS) -> None:
    """Disconnect from Ray (and stop an embedded instance), within ``timeout``.

    ``ray.shutdown`` can wait a minute on a GCS that is gone; past ``timeout``
    this returns anyway (a warning says so), so a stopped run still exits with
    its own code in time. The daemons of an embedded Ray end with this process
    (their parent death signal).
    """
    import ray

    done = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
    done.start()
    done.join(timeout)
    if done.is_alive():
        log.warning(
            "Ray did not shut down within %.0f s; its processes end with this one",
            timeout,
        )
