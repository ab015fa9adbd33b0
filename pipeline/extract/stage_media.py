"""Stage 2, media: every selected utterance decoded once (waveform, frames, MTCNN face crops) into media.h5.

Runs on the dask workers (:func:`pipeline.extract.tasks.media_partition`); bad media never stops the
run: each utterance's problems go into its row and into ``problems.jsonl`` beside ``media.h5``.

The cache is keyed (:func:`media_key`) by the media settings and by exactly the utterance fields that
change what is decoded (:data:`MEDIA_FIELDS`), not by labels or text: fixing a label reuses every
decoded clip. The ``label`` column of ``media.h5`` therefore holds the labels of the manifest the media
was first decoded from; ``m2f extract`` trains its default encoders on the current manifest's labels
(:func:`pipeline.extract.stage_encoders.training_labels`), never on that column.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pipeline.extract.engine import Engine
from pipeline.extract.options import ExtractOptions, ExtractResult
from pipeline.extract.resumable import run_resumable_stage
from pipeline.extract.tasks import media_partition
from pipeline.manifest import Utterance
from pipeline.store.atomic import commit_tmp, tmp_path
from pipeline.store.cache import ShardedWriter, config_hash


def media_config_dict(overrides: dict | None) -> dict:
    """The full media config (:class:`pipeline.utterance.process.MediaConfig` defaults with ``overrides``)."""
    from pipeline.utterance.process import MediaConfig

    return MediaConfig(**(overrides or {})).to_dict()


#: What of an utterance the media stage reads: its id and row place (corpus, split, dialogue, position),
#: the files (``clip``, ``audio``), the span (``start``, ``end``; also whether the corpus decodes whole
#: clips) and the IEMOCAP ``side``. Not ``label``, ``sentiment``, ``text``, ``speaker``, ``session``.
MEDIA_FIELDS = (
    "id",
    "corpus",
    "split",
    "dialogue_id",
    "position",
    "utterance_id",
    "clip",
    "audio",
    "start",
    "end",
    "side",
)


def media_key(media_cfg: dict, utterances: Sequence[Utterance]) -> str:
    """Key of a media cache: hash of the media config and the :data:`MEDIA_FIELDS` of the selected
    utterances (in order), so a label or transcript fix keeps the key and decodes nothing again."""
    inputs = [[getattr(u, name) for name in MEDIA_FIELDS] for u in utterances]
    return config_hash({"media": media_cfg, "utterances": inputs})


def stage_media(
    engine: Engine,
    opts: ExtractOptions,
    selected: list[Utterance],
    media_cfg: dict,
    key: str,
    result: ExtractResult,
    on_written: Callable[[object, int], None] | None = None,
) -> Path:
    """Decode every selected utterance once into ``media.h5``; skip what its shards hold."""
    path, problems_log = opts.layout.media_file(key), opts.layout.problems_file(key)
    attrs = {
        "kind": "m2f-media",
        "media_config": json.dumps(media_cfg, sort_keys=True),
        "dataset": opts.dataset,
    }
    # the writer holds the cache lock until the stage ends, also when it fails
    with ShardedWriter(path, attrs) as writer:

        def write(res: dict) -> None:
            writer.append(res["split"], rows_to_columns(res["rows"]))
            with open(problems_log, "a", encoding="utf-8") as f:
                for uid, probs in res["problems"].items():
                    f.write(json.dumps({"utt_id": uid, "problems": probs}, ensure_ascii=False) + "\n")

        run_resumable_stage(
            engine,
            writer,
            selected,
            result,
            stage="media",
            label="media",
            task=media_partition,
            task_args=(media_cfg, opts.device),
            write=write,
            on_written=on_written,
        )
        # whole and free of duplicates again, also should a kill have cut its last rewrite
        write_problems(path, problems_log)
    return path


def rows_to_columns(rows: Sequence[dict]) -> dict[str, object]:
    """Media rows -> columns for :meth:`ShardedWriter.append` (arrays with a dimension become ragged)."""
    cols: dict[str, object] = {}
    for name in rows[0]:
        vals = [r[name] for r in rows]
        if isinstance(vals[0], np.ndarray) and vals[0].ndim >= 1:
            cols[name] = [np.asarray(v) for v in vals]
        elif isinstance(vals[0], str) or vals[0] is None:
            cols[name] = np.array(["" if v is None else str(v) for v in vals], dtype=object)
        else:
            cols[name] = np.asarray(vals)
    return cols


def write_problems(media_path: Path, out: Path) -> dict[str, int]:
    """Rewrite ``problems.jsonl`` from the finished ``media.h5`` (manifest order, atomically).

    The live file is appended to as partitions finish; this rewrite makes it whole and free of
    duplicates even after a killed run. Returns the count of utterances with problems per split.
    """
    import h5py

    counts: dict[str, int] = {}
    tmp = tmp_path(out)
    with h5py.File(media_path, "r") as f, open(tmp, "w", encoding="utf-8") as dst:
        for split in f:
            ids = f[split]["utt_id"].asstr()[()]
            probs = f[split]["problems"].asstr()[()]
            for uid, p in zip(ids, probs, strict=True):
                items = json.loads(p) if p else []
                if items:
                    dst.write(
                        json.dumps({"utt_id": uid, "split": split, "problems": items}, ensure_ascii=False)
                        + "\n"
                    )
                    counts[split] = counts.get(split, 0) + 1
    commit_tmp(tmp, out)
    return counts
