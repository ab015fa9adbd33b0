"""Exclusive ``flock`` locks on cache files and folders, and the errors of a cache that cannot be written now.

:func:`folder_lock` is the one flock helper: the cache writers (:class:`pipeline.store.cache.ShardedWriter`,
through :func:`acquire_lock`), encoder training and text fine-tuning take it, so two runs writing the
same file or folder with the same temporary names cannot overlap. The lock file holds the holder's pid,
which :class:`CacheLockedError` names; the lock is released when its file is closed or its process ends
(even by ``kill -9``). :class:`CacheError` is the base of every "cannot write the cache now" error
(the CLI turns it into a one-line message).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


class CacheError(RuntimeError):
    """A cache file or folder cannot be written now; the message says why and what to do."""


class CacheLockedError(CacheError):
    """Another live process holds the lock of the same file or folder."""


def _lock_holder(lock_path: Path) -> str:
    try:
        return lock_path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def acquire_lock(lock_path: str | Path, doing: str, kept: str = "") -> TextIO:
    """Take an exclusive ``flock`` on ``lock_path`` (created with its folder) and write this pid into it.

    Returns the open lock file: closing it releases the lock (so does the end of the process, even
    by ``kill -9``). Prefer :func:`folder_lock` unless the lock outlives one ``with`` block.

    Parameters
    ----------
    lock_path : path-like
        The lock file.
    doing : str
        What the holder does, for the error, e.g. ``"writing cache/meld/x/features.h5"``.
    kept : str
        What a stopped holder keeps, for the error, e.g. ``" (its finished batches are kept)"``.

    Raises
    ------
    CacheLockedError
        Another live process holds it; the message names its pid.
    """
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(lock_path, "a+")  # noqa: SIM115 - returned to the caller, who closes it
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise CacheLockedError(
            f"another m2f process is {doing}: locked by another run (pid {_lock_holder(lock_path)}, lock "
            f"{lock_path}); let it finish or stop it{kept}, then run this command again"
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


@contextmanager
def folder_lock(folder: str | Path, name: str, doing: str) -> Iterator[Path]:
    """Hold ``<folder>/<name>`` (see :func:`acquire_lock`) for the ``with`` block; yields the folder.

    Two runs that would write the same folder with the same temporary names (two extracts of one
    corpus training its encoders, or fine-tuning its text model) cannot overlap: the second gets
    :class:`CacheLockedError` naming the first one's pid.

    Examples
    --------
    >>> with folder_lock("encoders", ".train.lock", "training") as folder:
    ...     folder.name
    'encoders'
    """
    folder = Path(folder)
    lock = acquire_lock(folder / name, doing)
    try:
        yield folder
    finally:
        lock.close()
