"""Stage 3b, text model: ``--text-model`` used frozen, or the shipped MiniLM fine-tuned on train (cached).

The fine-tuned model lives in :meth:`pipeline.layout.CacheLayout.text_model_dir`, keyed by the hash of
the corpus's train+dev manifest; ``m2f train-encoders --modality text`` writes the same folder (through
:func:`finetune_default_text_model`), so ``m2f extract`` then uses it instead of fine-tuning again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.atomic import atomic_write_json
from pipeline.extract.options import ExtractError, ExtractOptions
from pipeline.extract.prepare import manifest_hash
from pipeline.layout import CacheLayout
from pipeline.manifest import Utterance

logger = logging.getLogger(__name__)


def finetune_inputs(manifest: Sequence[Utterance]) -> list[Utterance]:
    """What the default text model is fine-tuned on: train, and dev to select the epoch (never test)."""
    return [u for u in manifest if u.split in ("train", "dev")]


def default_text_model_dir(layout: CacheLayout, manifest: Sequence[Utterance]) -> Path:
    """Folder of the text model fine-tuned on this corpus's train+dev utterances."""
    return layout.text_model_dir(manifest_hash(finetune_inputs(manifest)))


def cached_text_model(layout: CacheLayout, manifest: Sequence[Utterance]) -> Path | None:
    """The finished fine-tuned text model of this corpus, or None."""
    key = manifest_hash(finetune_inputs(manifest))
    return layout.text_model_dir(key) if layout.text_model_marker(key).exists() else None


def finetune_default_text_model(layout: CacheLayout, manifest: Sequence[Utterance], device: str = "cpu",
                                **finetune_kw) -> Path:
    """Fine-tune the shipped MiniLM on train+dev into :func:`default_text_model_dir`; returns that folder.

    ``finetune_kw`` go to :func:`pipeline.encoders.text_finetune.finetune_text` (e.g. ``epochs``). The
    marker file is written last, so a killed fine-tuning is never taken for a finished one.
    """
    from pipeline.encoders.text_finetune import finetune_text

    inputs = finetune_inputs(manifest)
    key = manifest_hash(inputs)
    out = finetune_text(inputs, layout.text_model_dir(key), device=device, **finetune_kw)
    atomic_write_json(layout.text_model_marker(key), {"path": str(Path(out).resolve())})
    return Path(out).resolve()


def given_text_model(opts: ExtractOptions) -> str | None:
    """``--text-model`` as workers get it: an existing local folder made absolute, a hub id as given."""
    if opts.text_model is None:
        return None
    local = Path(opts.text_model).expanduser()
    if local.exists():
        return str(local.resolve())
    if looks_like_path(opts.text_model):
        raise ExtractError(f"--text-model {opts.text_model}: no such folder ({local.resolve()}); pass a "
                           "folder saved with save_pretrained, or a hub id such as "
                           "sentence-transformers/all-MiniLM-L6-v2")
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
        first = " ".join(str(e).split())[:300]
        raise ExtractError(f"--text-model {model} cannot be loaded ({type(e).__name__}: {first}); pass a "
                           "folder saved with save_pretrained, or a hub id in the local cache") from e


def stage_text_model(opts: ExtractOptions, manifest: Sequence[Utterance]) -> str | None:
    """The text model workers load: ``--text-model``, else the MiniLM fine-tuned on train (cached).

    A local ``--text-model`` folder is returned as an absolute path; a hub id as given.
    """
    if "text" not in opts.modalities:
        return None
    if opts.text_model is not None:
        return given_text_model(opts)
    try:
        import pipeline.encoders.text_finetune  # noqa: F401
    except ImportError:
        logger.info("text: fine-tuning is not available; using the shipped all-MiniLM-L6-v2 frozen "
                    "(pass --text-model to choose)")
        return None
    if not any(u.split == "train" for u in manifest):
        logger.info("text: no train split to fine-tune on; using the shipped all-MiniLM-L6-v2 frozen")
        return None
    cached = cached_text_model(opts.layout, manifest)
    if cached is not None:
        logger.info("text: using cached fine-tuned model %s", cached)
        return str(cached)
    logger.info("text: fine-tuning the shipped MiniLM on %d train+dev utterances -> %s (pass --text-model to "
                "use a model frozen instead)", len(finetune_inputs(manifest)),
                default_text_model_dir(opts.layout, manifest))
    return str(finetune_default_text_model(opts.layout, manifest, device=opts.device))


def text_identity(model: str | None) -> str:
    """Identity of the text model (part of the features cache key)."""
    from pipeline.modalities.text import TextEmbedder

    return TextEmbedder(model, device="cpu").identity
