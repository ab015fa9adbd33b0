"""``m2f extract``: the dask engine that turns a corpus into ``features.h5``, resumable and crash-safe.

Stages (each skipped when its output is complete; paths from :class:`pipeline.store.layout.CacheLayout`)::

    prepare   corpus -> manifest (prepare.py)
    media     manifest -> media.h5 + problems.jsonl                      [dask] (media.py)
    encoders  the cached encoders of this media (trained if missing), --encoders DIR|random (encoders.py)
    text      --text-model, or the shipped MiniLM fine-tuned on train (cached) (text_model.py)
    embed     media.h5 + encoders + text model -> features.h5           [dask] (embed.py)

:func:`run_extract` (driver.py) runs them in order. The two dask stages share one resumable skeleton
(resumable.py): the driver alone writes, one atomic shard per partition, so a ``kill -9`` loses at most
the partitions in flight and a rerun skips what is written. The engine (engine.py) partitions the work
by dialogue and runs it on a given client, a scheduler address or a LocalCluster; the worker side
(tasks.py) loads each model once per process.
"""

from pipeline.extract.driver import run_extract
from pipeline.extract.engine import make_local_cluster
from pipeline.extract.options import ExtractError, ExtractOptions, ExtractResult, format_summary
from pipeline.extract.stage_encoders import encoder_identity

__all__ = [
    "ExtractError",
    "ExtractOptions",
    "ExtractResult",
    "encoder_identity",
    "format_summary",
    "make_local_cluster",
    "run_extract",
]
