"""Stage 1, prepare: the corpus read once into a cached manifest; selection, row order and its hash."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.cache import config_hash
from pipeline.extract.options import ExtractError
from pipeline.layout import CacheLayout
from pipeline.manifest import Utterance, group_dialogues, read_jsonl, write_jsonl

logger = logging.getLogger(__name__)


def load_manifest(layout: CacheLayout, corpus_root: str | Path | None) -> tuple[Path, list[Utterance]]:
    """The corpus's manifest: read from the cache, else read from the corpus and cached.

    The corpus root is resolved first, so the clip paths in the manifest are absolute.

    Raises
    ------
    ExtractError
        The corpus cannot be read (the reader's message says why).
    """
    path = layout.manifest(corpus_root)
    if path.exists():
        logger.info("prepare: using %s", path)
        return path, read_jsonl(path)
    from pipeline.corpora import CorpusError, prepare_corpus

    try:
        utterances = prepare_corpus(layout.dataset, Path(corpus_root).resolve() if corpus_root else None)
    except CorpusError as e:
        raise ExtractError(str(e)) from e
    write_jsonl(utterances, path)
    logger.info("prepare: %d utterances -> %s", len(utterances), path)
    return path, utterances


def select(utterances: Sequence[Utterance], splits: Sequence[str], limit: int | None) -> list[Utterance]:
    """Utterances of ``splits`` in dialogue-then-position order, at most ``limit`` per split.

    The limit keeps the first dialogues whole where it can; the last one kept may be cut to its first
    utterances (positions stay ``0..k-1``).
    """
    out: list[Utterance] = []
    for split in splits:
        n = 0
        for d in group_dialogues(u for u in utterances if u.split == split):
            for u in d.utterances:
                if limit is not None and n >= limit:
                    break
                out.append(u)
                n += 1
    return out


def manifest_hash(utterances: Sequence[Utterance]) -> str:
    """Hash of the selected manifest (ids, texts, paths, spans)."""
    return config_hash({"utterances": [u.to_json() for u in utterances]})


def order_by_split(utterances: Sequence[Utterance]) -> dict[str, list[str]]:
    """Final row order per split (manifest order: dialogue, then position)."""
    order: dict[str, list[str]] = {}
    for u in utterances:
        order.setdefault(u.split, []).append(u.id)
    return order
