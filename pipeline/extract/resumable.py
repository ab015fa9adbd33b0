"""The skeleton the media and embed stages share: skip what is written, map the rest, finalize.

The driver alone writes: each partition's result becomes one atomic shard
(:class:`pipeline.store.cache.ShardedWriter`), so a ``kill -9`` of the whole run loses at most the partitions
in flight, and a rerun skips every utterance whose row is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from pipeline.extract.engine import Engine
from pipeline.extract.options import ExtractResult
from pipeline.manifest import Utterance
from pipeline.store.cache import ShardedWriter

logger = logging.getLogger(__name__)


def run_resumable_stage(
    engine: Engine,
    writer: ShardedWriter,
    selected: Sequence[Utterance],
    result: ExtractResult,
    *,
    stage: str,
    label: str,
    task: Callable,
    task_args: tuple,
    write: Callable[[dict], None],
    order: Mapping[str, Sequence[str]] | None = None,
    on_written: Callable[[object, int], None] | None = None,
) -> set[str]:
    """Run ``task(partition, *task_args)`` over the selected utterances ``writer`` does not hold yet.

    Parameters
    ----------
    engine : Engine
        Partitions the work and runs it (a cluster is started only if there is work).
    writer : ShardedWriter
        Open writer of the stage's output; finalized here once every row is written.
    selected : sequence of Utterance
        What the stage's output must hold.
    result : ExtractResult
        Gets the stage's wall time (``seconds[stage]``), summed worker seconds and worker stats.
    stage, label : str
        Name of the stage (progress bar, timings) and of its output (log lines ``<label>: complete``,
        ``<label>: k of n utterances already written``).
    task, task_args
        The worker task and its arguments after the partition.
    write : callable
        Writes one task result through ``writer`` (the driver side); its time counts as ``write``.
    order : mapping, optional
        Row order per split for :meth:`ShardedWriter.finalize`.
    on_written : callable, optional
        ``on_written(client, i)`` after the i-th partition is written (a test seam).

    Returns
    -------
    set of str
        Ids already written when the stage started (their rows were not recomputed).
    """
    done = writer.done_ids()
    todo = [u for u in selected if u.id not in done]
    if not todo and writer.is_complete():
        logger.info("%s: complete, %s", label, writer.path)
        return done
    logger.info(
        "%s: %d of %d utterances already written, %d to do",
        label,
        len(selected) - len(todo),
        len(selected),
        len(todo),
    )

    def on_result(res: dict) -> None:
        t = time.perf_counter()
        write(res)
        result.merge_work({"write": time.perf_counter() - t, **res["seconds"]})
        result.note_worker(res["stats"])

    t0 = time.perf_counter()
    engine.map_partitions(
        task, engine.partitions(todo), *task_args, desc=stage, on_result=on_result, on_written=on_written
    )
    t = time.perf_counter()
    writer.finalize(order)  # merged shard by shard, never the whole file in memory
    result.merge_work({"write": time.perf_counter() - t})
    result.seconds[stage] = time.perf_counter() - t0
    return done
