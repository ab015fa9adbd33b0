"""What a dask cluster must offer the engine: shared paths, and TLS when asked for.

Workers read the clips, ``media.h5`` and the weights by the driver's absolute paths, so they must see
the same file system; :func:`check_workers_see` asks every worker before the first task.
``m2f extract --security FILE`` gives dask's TLS certificates (:func:`load_security`) for a LocalCluster
and for ``--scheduler tls://...``; without it the LocalCluster m2f starts uses dask's temporary
credentials (:func:`pipeline.extract.engine.make_local_cluster`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline.extract.options import ExtractError
from pipeline.manifest import Utterance

#: ``tls_cert``/``tls_key`` in a security file stand for the same certificate in every role.
_ROLES = ("client", "scheduler", "worker")


def missing_paths(paths: Sequence[str]) -> list[str]:
    """Those of ``paths`` this process cannot read (runs on each worker)."""
    return [p for p in paths if not (os.path.exists(p) and os.access(p, os.R_OK))]


def paths_missing_on_workers(client, paths: Sequence[str]) -> dict[str, list[str]]:
    """Worker address -> the paths it cannot read (workers that see every path are left out)."""
    answers = client.run(missing_paths, list(paths))
    return {addr: miss for addr, miss in sorted(answers.items()) if miss}


def check_workers_see(client, paths: Iterable[str]) -> None:
    """Raise :class:`ExtractError` naming a worker and a path it cannot read.

    Parameters
    ----------
    client : distributed.Client
    paths : iterable of str
        Absolute paths every worker must read (clip folders, the cache folder, weights).
    """
    paths = sorted(set(paths))
    if not paths:
        return
    missing = paths_missing_on_workers(client, paths)
    if missing:
        addr, miss = next(iter(missing.items()))
        more = f" (and {len(missing) - 1} other worker(s))" if len(missing) > 1 else ""
        raise ExtractError(
            f"dask worker {addr}{more} cannot read {miss[0]}: the workers need the driver's "
            "file paths; run them on a shared file system mounted at the same path"
        )


def clip_folders(utterances: Iterable[Utterance], most: int = 16) -> list[str]:
    """The distinct folders of the utterances' clips and audio files that the driver sees (at most ``most``).

    A folder missing here too is left out: its clips are reported as problems per utterance, as without
    a cluster.
    """
    folders: dict[str, bool] = {}
    for u in utterances:
        for p in (u.clip, u.audio):
            if p:
                folder = os.path.dirname(os.path.abspath(p))
                if folder not in folders:
                    folders[folder] = os.path.isdir(folder)
    return [f for f, seen in folders.items() if seen][:most]


def load_security(path: str | Path | None):
    """A ``distributed.security.Security`` from a YAML (or JSON) file of its keyword arguments.

    The file maps ``Security`` keywords to values, e.g.::

        tls_ca_file: ca.pem
        tls_cert: node.pem      # shorthand: the cert of every role (client, scheduler, worker)
        tls_key: node-key.pem   # shorthand: the key of every role

    or the per-role ``tls_client_cert``, ``tls_scheduler_key``, ... Relative paths are relative to the
    file. None gives None (no TLS).

    Raises
    ------
    ExtractError
        The file is missing, unreadable, or names an unknown keyword or a missing certificate.
    """
    if path is None:
        return None
    import yaml
    from distributed.security import Security

    path = Path(path).expanduser().resolve()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ExtractError(f"--security {path}: cannot read it ({e})") from e
    if not isinstance(raw, dict):
        raise ExtractError(f"--security {path}: expected a mapping of distributed.security.Security keywords")
    kwargs = dict(raw)
    for part in ("cert", "key"):
        if f"tls_{part}" in kwargs:
            value = kwargs.pop(f"tls_{part}")
            for role in _ROLES:
                kwargs.setdefault(f"tls_{role}_{part}", value)
    for name, value in kwargs.items():
        if name.endswith(("_file", "_cert", "_key")) and isinstance(value, str):
            file = (path.parent / value).expanduser().resolve()
            if not file.is_file():
                raise ExtractError(f"--security {path}: {name} {file} does not exist")
            kwargs[name] = str(file)
    try:
        return Security(**kwargs)
    except (TypeError, ValueError) as e:
        raise ExtractError(f"--security {path}: {e}") from e
