"""A run directory belongs to one run: claimed empty, locked while in use.

A new run writes only into a directory it creates, or one that exists and is
empty; a non-empty one (an earlier run, a user's own files) is refused unless
the run resumes it. Whoever runs or resumes a directory holds an exclusive
``flock`` on ``RUN_DIR/.lock`` until it closes, so a second process on the same
directory is refused with the holder's pid and host instead of interleaving
its rounds, client states and logs with the first one's. The lock dies with its
process (the kernel releases it), so a crash never leaves it stale.

Example
-------
>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> lock = claim(root / "a", resume=False)
>>> claim(root / "a", resume=True)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fedsim.rundir.RunDirError: run directory ... is in use by pid ... on ...
>>> lock.release()
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import IO

from fedsim.config import ConfigError
from fedsim.quote import quoted

LOCK_NAME = ".lock"
CHECKPOINT = Path("checkpoints", "last.pt")  # in a run directory: what --resume reads


class RunDirError(ConfigError):
    """A run directory cannot be used (taken, in use, not writable)."""


class RunDirLock:
    """An exclusive ``flock`` on ``RUN_DIR/.lock``, held until :meth:`release`."""

    def __init__(self, run_dir: Path, handle: IO[str]) -> None:
        self.run_dir, self._handle = run_dir, handle

    def release(self) -> None:
        """Let another process use the directory (idempotent)."""
        if not self._handle.closed:
            self._handle.close()  # closing the descriptor drops the flock


INPUT_ERRNOS = frozenset(
    {errno.EROFS, errno.EACCES, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}
)
"""OS errors that a different path in the input fixes (exit 2, not 1)."""


def os_problem(exc: OSError, path: Path | str) -> str:
    """An :class:`OSError` of ``path`` in plain words (for a one-line error)."""
    name = str(exc.filename or path)
    where = quoted(name if len(name) <= 200 else f"{name[:200]}...")
    plain = {
        errno.ENOSPC: "no space left on device: free some space (or choose "
        "another log.root) and resume",
        errno.EDQUOT: "disk quota exceeded: free some space and resume",
        errno.EROFS: "read-only file system: choose a writable log.root",
        errno.EACCES: "permission denied: choose a writable log.root",
        errno.ENOTDIR: "a file stands where a directory is needed: choose "
        "another log.root or --run-dir",
        errno.ENAMETOOLONG: "file name too long: shorten name (or the path)",
        errno.EISDIR: "a directory stands where a file is needed: give the file",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return f"{where}: {plain}" if name else plain


def _create(run_dir: Path) -> None:
    """Make ``run_dir`` and its parents; an existing directory is fine."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunDirError(
            f"run directory {quoted(run_dir)} exists and is not a directory: "
            "choose another --run-dir"
        ) from None
    except OSError as exc:
        raise RunDirError(os_problem(exc, run_dir)) from None


def _holder(path: Path) -> str:
    try:
        pid, _, host = path.read_text().partition(" ")
    except OSError:
        return "another process"
    return f"pid {pid or '?'} on {host.strip() or '?'}"


def lock(run_dir: Path) -> RunDirLock:
    """Take ``run_dir``'s lock, or say who holds it.

    Raises
    ------
    RunDirError
        Another process runs or resumes ``run_dir`` now.
    """
    path = run_dir / LOCK_NAME
    try:
        handle = path.open("a+")
    except OSError as exc:
        raise RunDirError(os_problem(exc, path)) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunDirError(
            f"run directory {quoted(run_dir)} is in use by {_holder(path)} "
            "(a run or resume of it holds its .lock): wait for it to end, or "
            "choose another --run-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()} {socket.gethostname()}\n")
    handle.flush()
    return RunDirLock(run_dir, handle)


def claim(run_dir: Path, *, resume: bool) -> RunDirLock:
    """Lock ``run_dir`` for a run: a new run's must be empty, a resume's exist.

    The check comes after the lock, so of two runs racing for one directory the
    second sees the first one's files and is refused.

    Raises
    ------
    RunDirError
        The directory is taken (not empty, without ``resume``), missing (with
        ``resume``), in use by another process, or cannot be written.
    """
    if resume and not run_dir.is_dir():
        raise RunDirError(f"cannot resume {quoted(run_dir)}: no such run directory")
    if not resume:
        _refuse_taken(run_dir)  # before the lock file: a user's folder stays as it is
    _create(run_dir)
    held = lock(run_dir)
    if not resume:
        try:
            _refuse_taken(run_dir)  # another run got here between the two looks
        except RunDirError:
            held.release()
            raise
    return held


def claim_new(base: Path) -> tuple[Path, RunDirLock]:
    """Create and lock ``base``, or ``base-1``, ``base-2``, ...: the first one free.

    Each is created with an exclusive ``mkdir``, so two runs started in the same
    second never share a directory.
    """
    _create(base.parent)
    candidate, i = base, 1
    while True:
        try:
            candidate.mkdir()
        except FileExistsError:
            candidate, i = base.with_name(f"{base.name}-{i}"), i + 1
            continue
        except OSError as exc:
            raise RunDirError(os_problem(exc, candidate)) from None
        return candidate, lock(candidate)


def _refuse_taken(run_dir: Path) -> None:
    if run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
        raise RunDirError(
            f"run directory {quoted(run_dir)} is not empty: resume it with "
            f"'fedsim run --resume {quoted(run_dir)}', or choose another --run-dir"
        )


def check_writable(root: Path, name: str) -> None:
    """Refuse, before anything starts, a log.root that cannot hold ``name``'s runs.

    The nearest existing folder of ``root`` must be a writable directory, and
    each part of ``root/name`` must fit the filesystem's name length.

    >>> check_writable(Path("/"), "x" * 300)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fedsim.rundir.RunDirError: name is 300 bytes long: ... at most 255 ...
    """
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        longest = os.pathconf(existing, "PC_NAME_MAX") if existing.is_dir() else 255
    except OSError:
        longest = 255
    for part in (*root.parts, name):
        if (size := len(os.fsencode(part))) > longest:
            what = "name" if part == name else f"the log.root part {quoted(part[:40])}…"
            raise RunDirError(
                f"{what} is {size} bytes long: a file name holds at most "
                f"{longest} bytes here; shorten it"
            )
    if not existing.is_dir():
        raise RunDirError(
            f"log.root {quoted(root)}: {quoted(existing)} is a file, not a "
            "directory; choose another log.root"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(
            f"log.root {quoted(root)}: {quoted(existing)} is not writable (read-only "
            "or another user's); choose a writable log.root"
        )


def check_free(run_dir: Path | None, *, resume: bool) -> None:
    """Refuse a taken or busy ``run_dir`` before anything starts (then let go).

    The run claims the directory itself (:func:`claim`) where it writes; this
    early look only makes the common mistakes fail before Ray starts.
    """
    if run_dir is None:
        return
    if not resume and not run_dir.exists():
        return
    claim(run_dir, resume=resume).release()


def check_distinct(run_dirs: list[Path]) -> None:
    """Refuse a run directory named twice (two runs of a sweep in one place).

    >>> check_distinct([Path("/a"), Path("/b")])
    >>> check_distinct([Path("/a"), Path("/a")])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fedsim.rundir.RunDirError: --run-dir /a is given 2 times: ...
    """
    for path in dict.fromkeys(run_dirs):
        if (n := run_dirs.count(path)) > 1:
            raise RunDirError(
                f"--run-dir {quoted(path)} is given {n} times: each run of a sweep "
                "needs its own directory"
            )
