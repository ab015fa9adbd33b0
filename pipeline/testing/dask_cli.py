"""A dask cluster started the way users start one: the ``dask scheduler`` and ``dask worker`` commands as
separate processes, listening on 127.0.0.1 only, speaking TLS with a certificate written to a
``--security`` file (tests, benchmarks).

Every process runs in its own folder and its own process group; :meth:`DaskCLICluster.close` kills the
groups, so no worker (nor a nanny's child) outlives the cluster.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: The ``dask`` command installed beside this Python.
DASK = Path(sys.executable).with_name("dask")
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env() -> dict[str, str]:
    """The environment of the scheduler and workers: this checkout first on the path, offline hub, one
    thread per library, glibc's malloc trimming at its default."""
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    log = open(cwd / "log.txt", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        cmd, cwd=cwd, env=cluster_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM then SIGKILL ``proc``'s process group (a worker's nanny children live in it too)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class DaskCLICluster:
    """A running ``dask scheduler`` + ``dask worker --nworkers N``.

    Attributes
    ----------
    address : str
        ``tls://127.0.0.1:PORT``: pass it as ``m2f extract --scheduler``.
    security : Path
        The ``--security`` YAML a client needs (the cluster's certificate and key).
    folder : Path
        Holds ``scheduler/``, ``workers/`` (their working folders and logs) and ``tls/``.
    """

    address: str
    security: Path
    folder: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def client(self, **kw):
        """A ``distributed.Client`` of this cluster (close it, or use it as a context manager)."""
        from distributed import Client

        from pipeline.extract.cluster import load_security

        return Client(self.address, security=load_security(str(self.security)), **kw)

    def cli_args(self) -> list[str]:
        """``m2f extract`` options that run on this cluster."""
        return ["--scheduler", self.address, "--security", str(self.security)]

    def options(self) -> dict[str, str]:
        """:class:`pipeline.extract.ExtractOptions` fields that run on this cluster."""
        return {"scheduler": self.address, "security": str(self.security)}

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop_group(proc)
        self.procs = []


def start_dask_cli_cluster(folder: str | Path, n_workers: int = 2, timeout: float = 120) -> DaskCLICluster:
    """Start the scheduler and ``n_workers`` one-thread worker processes; return once all are connected.

    Raises
    ------
    FileNotFoundError
        No ``dask`` command beside this Python.
    """
    from distributed.security import Security

    from pipeline.testing.tls import security_file

    if not DASK.exists():
        raise FileNotFoundError(f"no dask command beside {sys.executable}")
    folder = Path(folder)
    security = security_file(Security.temporary(), folder / "tls")
    tls = ["--tls-ca-file", "cert.pem", "--tls-cert", "cert.pem", "--tls-key", "key.pem"]
    tls = [a if a.startswith("--") else str(security.parent / a) for a in tls]
    port = free_port()
    cluster = DaskCLICluster(f"tls://127.0.0.1:{port}", security, folder)
    scheduler = [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard", *tls]
    cluster.procs.append(_start(scheduler, folder / "scheduler"))
    try:
        worker = [str(DASK), "worker", cluster.address, "--nworkers", str(n_workers), "--nthreads", "1"]
        worker += ["--host", "127.0.0.1", "--no-dashboard", "--death-timeout", "60", *tls]
        cluster.procs.append(_start(worker, folder / "workers"))
        with cluster.client(timeout=timeout) as client:
            client.wait_for_workers(n_workers, timeout=timeout)
    except BaseException:
        cluster.close()
        raise
    return cluster
