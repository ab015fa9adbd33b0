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
import threading
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


def split_even(utterances: Sequence[Utterance], n: int) -> list[list[Utterance]]:
    """Consecutive whole dialogues of one split in about ``n`` partitions of about equal size.

    A partition closes after the dialogue that takes the utterance count to the next of ``n`` evenly
    spaced boundaries (or at a change of split), so sizes differ by at most about one dialogue.
    """
    dialogues = group_dialogues(utterances)
    total = sum(len(d.utterances) for d in dialogues)
    parts: list[list[Utterance]] = []
    cur: list[Utterance] = []
    seen = 0
    for d in dialogues:
        if cur and cur[0].split != d.split:
            parts.append(cur)
            cur = []
        cur.extend(d.utterances)
        seen += len(d.utterances)
        if seen * n >= total * (len(parts) + 1):
            parts.append(cur)
            cur = []
    if cur:
        parts.append(cur)
    return parts


def balance(
    parts: list[list[Utterance]], utterances: Sequence[Utterance], workers: int
) -> list[list[Utterance]]:
    """``parts`` re-cut so that every worker gets as many utterances, largest partitions first.

    With ``k`` partitions on ``w`` workers the last round runs ``k mod w`` tasks while the other workers
    idle; the utterances are re-cut into the next multiple of ``w`` partitions (:func:`split_even`), and
    the larger ones are sent first, so the smaller ones fill the end. On 200 utterances and 2 workers
    this took the stage's idle tail from one partition's time to about a dialogue's.
    """
    if len(parts) > workers and len(parts) % workers:
        parts = split_even(utterances, -(-len(parts) // workers) * workers)
    return sorted(parts, key=len, reverse=True)  # stable: equal sizes keep corpus order


def make_local_cluster(n_workers: int, security=None):
    """``LocalCluster`` of ``n_workers`` process workers, one thread each, glibc malloc left at its defaults.

    The workers are forked from a forkserver that imported torch, facenet-pytorch and m2f's worker modules
    once (:mod:`pipeline.extract.preload`), not spawned to import them each: on 2 cores the first tasks
    start ~1.5 s sooner, and the cluster closes in ~0.1 s instead of ~1.2 s (bench/RESULTS.md).

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
    with dask.config.set(
        {
            f"distributed.nanny.pre-spawn-environ.{_DASK_TRIM}": None,
            "distributed.worker.multiprocessing-method": "forkserver",
        }
    ):
        from distributed.utils import get_mp_context

        # dask's own list (distributed, numpy, ...) and ours; ignored once the server runs
        get_mp_context().set_forkserver_preload(["distributed", "pipeline.extract.preload"])
        return LocalCluster(
            # a forked worker has the environment of the server (this process's when it first started
            # one): set this process's present one again, as a spawned worker would inherit it
            env={k: v for k, v in os.environ.items() if k != _DASK_TRIM},
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
        self._starting: threading.Thread | None = None  # start_soon's thread, joined by ``client``
        self._start_error: BaseException | None = None
        self._warming: list = []  # futures of warm tasks, held until the next stage's tasks are done
        self._warm_next: list[str] = []  # warm_after's modules
        self._shared: set[str] = set()  # paths every worker must read, checked before the next task
        self._security = load_security(opts.security)  # a bad --security file fails before any work

    def start_soon(self, modules: Sequence[str] = ()) -> None:
        """Start the LocalCluster now in a background thread, then its workers import ``modules``.

        For a driver that knows there is work but has checks to run first (loading the text model,
        importing torchvision): worker spawn, imports and the first task's module loading overlap them
        instead of following them. Does nothing with a given client or ``--scheduler`` (already running)
        or when a start is under way. :attr:`client` waits for the thread and raises what it raised.
        """
        if self._client is not None or self.opts.scheduler or self._starting is not None:
            return

        def start() -> None:
            try:
                self._warm(self._start_client(), modules)
            except BaseException as e:  # re-raised in the caller's thread by ``client``
                self._start_error = e

        self._starting = threading.Thread(target=start, name="m2f-cluster-start", daemon=True)
        self._starting.start()

    def warm_after(self, modules: Sequence[str]) -> None:
        """Every worker imports ``modules`` as soon as the next stage leaves it idle (its tail).

        For the time between stages (the last tasks running, the driver merging the stage's output and
        checking the next stage's models): the next stage's first tasks find the modules imported. Only on
        a cluster this engine starts; a user's cluster keeps its workers and their imports between runs.
        """
        self._warm_next = list(modules)

    def _warm(self, client, modules: Sequence[str]) -> None:
        if not modules:
            return
        from pipeline.extract.tasks import warm_worker

        for addr in client.scheduler_info().get("workers", {}):
            key = f"warm-{os.urandom(4).hex()}"
            self._warming.append(
                client.submit(warm_worker, list(modules), workers=[addr], pure=False, key=key)
            )

    def _wait_started(self) -> None:
        if self._starting is not None:
            self._starting.join()
            self._starting = None
            if self._start_error is not None:
                err, self._start_error = self._start_error, None
                raise err

    @property
    def client(self):
        self._wait_started()
        if self._client is None:
            self._start_client()
        return self._client

    def _start_client(self):
        """Connect to ``--scheduler`` or start a LocalCluster; the client is kept as ``_client``."""
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
                self._own.append(cluster)  # closed by ``close`` even if the client cannot connect
                self._client = Client(cluster)
                logger.info("started a LocalCluster: %d worker process(es), 1 thread each", n)
            self._own.insert(0, self._client)
        return self._client

    def n_workers(self) -> int:
        """Workers of the cluster (starts it)."""
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def partitions(self, todo: Sequence[Utterance]) -> list[list[Utterance]]:
        """:func:`partition` of ``todo``, about 4 per worker, evened out (:func:`balance`)."""
        if not todo:
            return []
        workers = self.n_workers()
        size = min(self.opts.partition, math.ceil(len(todo) / (4 * workers)))
        return balance(partition(todo, max(1, size)), todo, workers)

    def require_shared(self, paths: Sequence[str | os.PathLike]) -> None:
        """Paths every worker must read; checked (:func:`check_workers_see`) before the next task is sent."""
        self._shared.update(os.path.abspath(p) for p in paths)

    def _check_shared(self) -> None:
        if self._shared:
            check_workers_see(self.client, self._shared)
            self._shared.clear()

    def close(self) -> None:
        if self._starting is not None:  # a start under way: wait, then close what it started below
            self._starting.join()  # (a Ctrl-C here still stops the run)
            self._starting, self._start_error = None, None  # a failed start left nothing but its error
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
        before = len(self._warming)  # warm tasks sent earlier: they run first, held until the stage is done
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
            workers = self.n_workers()
            for i, fut in enumerate(as_completed(futures)):
                if self._warm_next and len(futures) - i <= workers and self._own:
                    self._warm(client, self._warm_next)  # a worker is idle from now on
                    self._warm_next = []
                on_result(fut.result())
                bar.update(sizes[fut.key])
                fut.release()
                if on_written is not None:
                    on_written(client, i)
        self._warm_next = []
        self._warming = self._warming[before:]  # those sent at this stage's tail, for the next stage
