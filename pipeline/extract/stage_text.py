"""Stage 3b, text model: ``--text-model`` used frozen, or a base model fine-tuned on train (cached).

The base is ``--text-base`` (a hub id such as ``roberta-large`` or a local RoBERTa/BERT-family folder) or
the shipped MiniLM. The fine-tuned model lives in :meth:`pipeline.store.layout.CacheLayout.text_model_dir`,
keyed by the base's identity (:func:`text_base_key`) and the hash of the corpus's train+dev manifest;
``m2f train-encoders --modality text`` writes the same folder (through :func:`finetune_default_text_model`),
so ``m2f extract`` then uses it instead of fine-tuning again.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.extract.options import ExtractError, ExtractOptions
from pipeline.extract.stage_prepare import manifest_hash
from pipeline.manifest import Utterance
from pipeline.shown import brief
from pipeline.store.atomic import atomic_write_json, content_identity
from pipeline.store.layout import CacheLayout

if TYPE_CHECKING:
    from pipeline.text.finetune.recipe import FinetuneConfig

logger = logging.getLogger(__name__)


def finetune_inputs(manifest: Sequence[Utterance]) -> list[Utterance]:
    """What the text model is fine-tuned on: train, and dev to select the epoch (never test)."""
    return [u for u in manifest if u.split in ("train", "dev")]


def resolve_text_base(base: str | None) -> tuple[str, bool]:
    """``(source, is_local)`` of a base model: a local folder made absolute, a hub id as given.

    ``None`` is the shipped MiniLM. Raises :class:`ExtractError` for a path-like name that is no folder.
    """
    from pipeline.text.embedder import resolve_model_source

    try:
        return resolve_model_source(base)
    except FileNotFoundError as e:
        raise ExtractError(f"--text-base: {e}") from e


def text_base_key(base: str | None) -> str:
    """The cache key of a base model: ``hub-<id>`` for a hub id, ``dir-<content hash>`` for a folder.

    A folder is named by the hash of its files, so the same weights anywhere share a fine-tune and
    changed weights never reuse an old one.
    """
    source, is_local = resolve_text_base(base)
    if is_local:
        return f"dir-{content_identity(source)}"
    return "hub-" + re.sub(r"[^A-Za-z0-9._-]", "--", source)


def finetune_key(manifest: Sequence[Utterance], context: str = "full") -> str:
    """The fine-tune's key below its base: the train+dev manifest's hash, ``-past`` for the causal context."""
    key = manifest_hash(finetune_inputs(manifest))
    return key if context == "full" else f"{key}-{context}"


def default_text_model_dir(
    layout: CacheLayout, manifest: Sequence[Utterance], base: str | None = None, context: str = "full"
) -> Path:
    """Folder of the text model fine-tuned from ``base`` on this corpus's train+dev utterances."""
    return layout.text_model_dir(finetune_key(manifest, context), text_base_key(base))


def cached_text_model(
    layout: CacheLayout, manifest: Sequence[Utterance], base: str | None = None, context: str = "full"
) -> Path | None:
    """The finished text model fine-tuned from ``base`` on this corpus, or None."""
    key, base_key = finetune_key(manifest, context), text_base_key(base)
    return layout.text_model_dir(key, base_key) if layout.text_model_marker(key, base_key).exists() else None


def finetune_default_text_model(
    layout: CacheLayout, manifest: Sequence[Utterance], config: FinetuneConfig | None = None
) -> Path:
    """Fine-tune ``config.base_model`` (None: the shipped MiniLM) on train+dev into
    :func:`default_text_model_dir`; return that folder.

    ``config`` is the run (:class:`pipeline.text.finetune.recipe.FinetuneConfig`, default: the recipe
    that follows the base, :func:`pipeline.text.finetune.recipe.resolve_defaults`) with its ``out`` left
    None: the folder is keyed by the base and ``config.context``. The marker file is written last, so a
    killed fine-tuning is never taken for a finished one.
    """
    from pipeline.text.finetune.loop import finetune_text
    from pipeline.text.finetune.recipe import FinetuneConfig

    config = config or FinetuneConfig()
    if config.out is not None:
        raise ValueError(f"config.out={config.out}: the default text model's folder is the cache's")
    base = config.base_model
    key, base_key = finetune_key(manifest, config.context), text_base_key(base)
    source = resolve_text_base(base)[0] if base is not None else None
    out = finetune_text(
        finetune_inputs(manifest),
        dataclasses.replace(config, out=layout.text_model_dir(key, base_key), base_model=source),
    )
    atomic_write_json(
        layout.text_model_marker(key, base_key),
        {"path": str(out.resolve()), "base": source or "shipped all-MiniLM-L6-v2"},
    )
    return out.resolve()


def given_text_model(opts: ExtractOptions) -> str | None:
    """``--text-model`` as workers get it: an existing local folder made absolute, a hub id as given."""
    if opts.text_model is None:
        return None
    local = Path(opts.text_model).expanduser()
    if local.exists():
        return str(local.resolve())
    if looks_like_path(opts.text_model):
        raise ExtractError(
            f"--text-model {opts.text_model}: no such folder ({local.resolve()}); pass a "
            "folder saved with save_pretrained, or a hub id such as "
            "sentence-transformers/all-MiniLM-L6-v2"
        )
    return opts.text_model


def looks_like_path(name: str) -> bool:
    """True for a local path (``./x``, ``/x``, ``~/x``, ``a/b/c``); a hub id is ``name`` or ``org/name``.

    >>> looks_like_path("./missing"), looks_like_path("roberta-base"), looks_like_path("org/model")
    (True, False, False)
    """
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name


def check_text_model(model: str) -> str:
    """Load the text model once on the driver (before the first task) and return its identity.

    Raises
    ------
    ExtractError
        One line naming the model and why it cannot be loaded.
    """
    try:
        return text_identity(model)
    except Exception as e:  # missing files, a corrupt weights file, no network for a hub id
        raise ExtractError(
            f"--text-model {model} cannot be loaded ({type(e).__name__}: {brief(e)}); pass a "
            "folder saved with save_pretrained, or a hub id in the local cache"
        ) from e


def stage_text_model(opts: ExtractOptions, manifest: Sequence[Utterance]) -> str | None:
    """The text model workers load: ``--text-model``, else the base fine-tuned on train (cached).

    The base is ``--text-base`` or the shipped MiniLM. A local ``--text-model`` folder is returned as an
    absolute path; a hub id as given. Without a train split (or without the fine-tuning code) the
    shipped MiniLM is used frozen; an explicit ``--text-base`` then raises :class:`ExtractError`.
    """
    if "text" not in opts.modalities:
        return None
    if opts.text_model is not None:
        return given_text_model(opts)
    base = opts.text_base
    name = base if base is not None else "the shipped MiniLM"
    try:
        import pipeline.text.finetune.loop  # noqa: F401
    except ImportError as e:
        if base is not None or opts.text_context != "full":
            raise ExtractError(f"--text-base / --text-context: fine-tuning is not available ({e})") from e
        logger.info(
            "text: fine-tuning is not available; using the shipped all-MiniLM-L6-v2 frozen "
            "(pass --text-model to choose)"
        )
        return None
    if not any(u.split == "train" for u in manifest):
        if opts.text_context != "full":  # the frozen fallback would read the next utterance
            raise ExtractError(
                f"--text-context {opts.text_context}: the corpus has no train split to "
                "fine-tune a text model on; pass --text-model with a folder fine-tuned with "
                "that context"
            )
        if base is not None:
            raise ExtractError(
                f"--text-base {base}: the corpus has no train split to fine-tune on; pass "
                "--text-model to use a model frozen"
            )
        logger.info("text: no train split to fine-tune on; using the shipped all-MiniLM-L6-v2 frozen")
        return None
    context = opts.text_context
    cached = cached_text_model(opts.layout, manifest, base, context)
    if cached is not None:
        logger.info("text: using cached fine-tuned model %s", cached)
        return str(cached)
    logger.info(
        "text: fine-tuning %s on %d train+dev utterances -> %s (pass --text-model to use a model "
        "frozen instead)",
        name,
        len(finetune_inputs(manifest)),
        default_text_model_dir(opts.layout, manifest, base, context),
    )
    from pipeline.text.finetune.recipe import FinetuneConfig

    try:
        return str(
            finetune_default_text_model(
                opts.layout, manifest, FinetuneConfig(base_model=base, device=opts.device, context=context)
            )
        )
    except OSError as e:  # a hub id that cannot be fetched, a folder that is no model
        if base is None:
            raise
        raise ExtractError(f"--text-base {base}: {e}") from e


def text_identity(model: str | None) -> str:
    """Identity of the text model (part of the features cache key)."""
    from pipeline.text.embedder import TextEmbedder

    return TextEmbedder(model, device="cpu").identity


def text_head_classes(model: str | None) -> tuple[str, ...] | None:
    """The classes of the text model's classification head (a folder fine-tuned by m2f), or None when it
    has none (the shipped sentence model, a hub id, a plain folder): then no ``text_logits`` are written."""
    from pipeline.text.embedder import head_classes, resolve_model_source

    source, is_local = resolve_model_source(model)
    try:
        return head_classes(source) if is_local else None
    except ValueError as e:
        raise ExtractError(str(e)) from e
