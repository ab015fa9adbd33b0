"""The dask side of the driver: a client started on first use, partitions, one task per partition.

Work is partitioned by dialogue (a partition = whole dialogues, about ``partition_size`` utterances, all
of one split). Each partition is one ``client.submit`` (with ``retries``); results are taken with
``as_completed`` and handed to the driver, which alone writes them. A worker that dies is replaced by
its nanny and its tasks are rescheduled.

The executor is injected: pass ``client=`` (any ``distributed.Client``) or ``scheduler=`` (an address,
e.g. a dask-jobqueue SLURM cluster); otherwise a ``LocalCluster`` of process workers is started when
there is work to do (a complete rerun starts nothing).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import suppress

from pipeline.extract.cluster import check_workers_see, load_security
from pipeline.extract.options import ExtractOptions
from pipeline.manifest import Utterance, group_dialogues

logger = logging.getLogger(__name__)

#: dask's nanny sets this for its workers; any explicit value turns off glibc's dynamic mmap threshold,
#: so every large torch buffer is mmap'd and page-faulted afresh: CPU convolutions run about twice as
#: slow (bench/RESULTS.md, "Extraction (extract_throughput)").
_DASK_TRIM = "MALLOC_TRIM_THRESHOLD_"


def partition(utterances: Sequence[Utterance], size: int) -> list[list[Utterance]]:
    """Consecutive whole dialogues of one split, about ``size`` utterances per partition."""
    parts: list[list[Utterance]] = []
    cur: list[Utterance] = []
    for d in group_dialogues(utterances):
        if cur and (len(cur) >= size or cur[0].split != d.split):
            parts.append(cur)
            cur = []
        cur.extend(d.utterances)
    if cur:
        parts.append(cur)
    return parts


def make_local_cluster(n_workers: int, security=None):
    """``LocalCluster`` of ``n_workers`` process workers, one thread each, glibc malloc left at its defaults.

    Use this (not a bare ``LocalCluster``) to run the engine's tasks at full speed. For an external
    cluster (``--scheduler``) set ``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_: null``
    in its dask config for the same effect. The scheduler, workers and dashboard listen on 127.0.0.1
    only, and the scheduler and workers speak TLS with mutual certificates: ``security`` (a
    ``distributed.security.Security``, see :func:`pipeline.extract.cluster.load_security`) when given,
    else dask's temporary credentials (:meth:`Security.temporary`: a fresh self-signed key and
    certificate held in memory by this process and its workers only). dask runs whatever pickled
    function a client sends, so without them any other user of the machine could connect to
    127.0.0.1 and run code as this user; a client needs this cluster's certificate
    (``Client(cluster)`` takes it from ``cluster.security``).
    """
    import dask
    from distributed import LocalCluster
    from distributed.security import Security

    if security is None:
        security = Security.temporary()
    if os.environ.get(_DASK_TRIM) == "65536":  # left in this process's environment by an earlier nanny
        del os.environ[_DASK_TRIM]
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{_DASK_TRIM}": None}):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,
            security=security,
        )


def local_worker_count(opts: ExtractOptions) -> int:
    """Worker processes of the LocalCluster: ``opts.workers``, with ``device`` cpu or cuda alike.

    On a GPU machine the media stage is decode-bound (CPU work), so one worker per core all sharing the
    one GPU for MTCNN, the encoders and the text model keeps every core and the GPU busy; a single GPU
    worker would decode on one core while the others idle.
    """
    return max(1, opts.workers)


class Engine:
    """A dask client, started on first use; closes what it started.

    Parameters
    ----------
    opts : ExtractOptions
    client : distributed.Client, optional
        Use this client (not closed here).
    """

    def __init__(self, opts: ExtractOptions, client=None):
        self.opts, self._client = opts, client
        self._own: list = []  # the client and cluster this engine started, closed in this order
        self._shared: set[str] = set()  # paths every worker must read, checked before the next task
        self._security = load_security(opts.security)  # a bad --security file fails before any work

    @property
    def client(self):
        if self._client is None:
            from distributed import Client

            if self.opts.scheduler:
                self._client = Client(self.opts.scheduler, security=self._security)
                logger.info(
                    "connected to %s; dashboard: %s", self.opts.scheduler, self._client.dashboard_link
                )
            else:
                n = local_worker_count(self.opts)
                cluster = make_local_cluster(n, self._security)
                self._client = Client(cluster)
                self._own.append(cluster)
                logger.info("started a LocalCluster: %d worker process(es), 1 thread each", n)
            self._own.insert(0, self._client)
        return self._client

    def n_workers(self) -> int:
        """Workers of the cluster (starts it)."""
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def partitions(self, todo: Sequence[Utterance]) -> list[list[Utterance]]:
        """:func:`partition` of ``todo``, small enough for about 4 partitions per worker."""
        if not todo:
            return []
        size = min(self.opts.partition, math.ceil(len(todo) / (4 * self.n_workers())))
        return partition(todo, max(1, size))

    def require_shared(self, paths: Sequence[str | os.PathLike]) -> None:
        """Paths every worker must read; checked (:func:`check_workers_see`) before the next task is sent."""
        self._shared.update(os.path.abspath(p) for p in paths)

    def _check_shared(self) -> None:
        if self._shared:
            check_workers_see(self.client, self._shared)
            self._shared.clear()

    def close(self) -> None:
        for obj in self._own:
            with suppress(Exception):
                obj.close()
        self._own = []

    def map_partitions(
        self,
        fn: Callable,
        parts: Sequence[list[Utterance]],
        *args,
        desc: str,
        on_result: Callable[[dict], None],
        on_written: Callable[[object, int], None] | None = None,
    ) -> None:
        """Submit ``fn(part, *args)`` per partition; call ``on_result`` in completion order.

        A tqdm bar on stderr counts utterances. ``on_written(client, i)`` runs after the i-th result
        was handled (a test seam).
        """
        from distributed import as_completed
        from tqdm import tqdm

        if not parts:
            return
        client = self.client
        self._check_shared()
        futures = [
            client.submit(
                fn, p, *args, retries=self.opts.retries, pure=False, key=f"{desc}-{i}-{os.urandom(4).hex()}"
            )
            for i, p in enumerate(parts)
        ]
        sizes = {f.key: len(p) for f, p in zip(futures, parts, strict=True)}
        with tqdm(
            total=sum(sizes.values()),
            desc=desc,
            unit="utt",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.5,
        ) as bar:
            for i, fut in enumerate(as_completed(futures)):
                on_result(fut.result())
                bar.update(sizes[fut.key])
                fut.release()
                if on_written is not None:
                    on_written(client, i)
