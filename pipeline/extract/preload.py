"""Imported once by the forkserver that the LocalCluster's worker processes are forked from.

With ``spawn`` (dask's default) every worker imports torch, torchvision, facenet-pytorch and transformers
itself, about 3.5 CPU seconds each, all on the critical path of the first stage. m2f's LocalCluster
(:func:`pipeline.extract.engine.make_local_cluster`) starts its workers with ``forkserver`` instead: a
server process imports this module once, then forks a worker per request, which finds every module
imported (and shares their pages with its siblings until written). The server forks from a process that
ran no torch operation and started no thread (torch's thread pools do not exist yet), which is what makes
forking safe.

What the imports made is frozen (``gc.freeze``): it lives as long as the process, the cyclic collector
need not traverse it in every full collection, and a worker's exit no longer spends ~0.7 s collecting
it.
"""

from __future__ import annotations

import gc
import importlib

try:
    import distributed  # noqa: F401

    from pipeline.extract.tasks import warm_modules

    for name in warm_modules((), "media"):  # torch comes with them
        importlib.import_module(name)
except Exception:
    # a broken install (e.g. torchaudio built for another torch): the server would print a traceback;
    # each worker imports what it needs itself instead, and the driver reports the failure in one line
    pass

gc.freeze()
