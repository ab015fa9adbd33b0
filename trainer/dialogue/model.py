"""The dialogue-level M2FNet (docs/DESIGN.md section 3): modality transformers, attention fusion, classifier.

Per modality, N Transformer encoder layers over the utterances of a dialogue, each wrapped in a skip
connection (Eq. 5). Then m Multi-Head Attention Fusion layers (Eq. 6): in each, one attention with
Q = V = text and K = audio, one with Q = V = text and K = visual; their outputs and the text input
are concatenated and a fully connected layer maps them back to D_T; the next layer's "text" is this
output while F_A and F_V stay fixed. Eq. 7 concatenates the fused text with F_A and F_V; Eq. 8 is two
fully connected layers to the class logits.

Decisions where the paper is silent (all options of :class:`DialogueModelConfig`):

* A missing modality (``has_* = False``) is replaced by a learned per-modality "missing" embedding
  before its encoder, so the zeros of the cache are never read as a signal.
* Padding positions are excluded from every attention by key-padding masks.
* Feed-forward width of the encoder layers = ``ff_mult * D``; classifier hidden width ``hidden``.
* Order and speakers (options; the paper's encoders see neither, so a dialogue is a bag of utterances):
  ``positions="relative"`` adds a learned bias to every attention score of the modality encoders by
  the clipped relative distance ``key - query`` (one value per layer, head and distance in
  ``[-relative_clip, relative_clip]``); ``speakers="same-other"`` adds a learned bias by whether the
  two utterances have the same speaker, different speakers, or an unknown speaker (per layer and
  head). Both start at zero (the bag model) and enter the attention as a float mask.
* ``causal=True``: every utterance attends only to itself and earlier ones, in the encoders and in
  the fusion attentions, so its prediction never depends on later utterances.
* ``head_residual=True`` (``m2f train-dialog --head-residual``): the final logits are the classifier's
  output plus the fine-tuned text model's own head logits saved at extraction (``text_logits``, in the
  class map's order), and the classifier's last layer starts at zero, so the untrained model predicts
  exactly what the text head predicts and training learns a correction to it.
* ``fusion="concat"`` concatenates the encoded modalities (Table 2's "T+A+V concatenated"); one
  modality skips fusion. Attention fusion needs text as its query unless no text is selected, in
  which case the first selected of audio, visual is the query (an extension; the paper has no A+V row).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

FUSIONS = ("attention", "concat")
POSITIONS = ("none", "relative")
SPEAKERS = ("none", "same-other")
#: Speaker index of padding and of an utterance whose speaker is unknown (empty in the features file).
NO_SPEAKER = -1


@dataclass(frozen=True)
class DialogueModelConfig:
    """Everything that defines the network's shape. Saved in every checkpoint.

    Parameters
    ----------
    dims : dict letter -> int
        Input width per modality (``t``, ``a``, ``v``), from the features file.
    n_classes : int
    modalities : str
        Canonical subset of ``tav``.
    fusion : str
        ``attention`` or ``concat``.
    layers : dict letter -> int
        N per modality (Eq. 5).
    fusion_layers : int
        m (Eq. 6).
    heads : int
        Attention heads everywhere; must divide every width it is used with.
    dropout : float
    hidden : int
        Width of the first classifier layer (Eq. 8).
    ff_mult : int
        Feed-forward width of encoder layers as a multiple of the modality width.
    positions : str
        ``none`` or ``relative`` (learned attention bias by clipped relative distance).
    speakers : str
        ``none`` or ``same-other`` (learned attention bias for same / other / unknown speaker pairs).
    causal : bool
        Each utterance attends only to itself and earlier utterances.
    relative_clip : int
        Relative distances beyond this share one bias.
    head_residual : bool
        Add the text head's logits (``forward``'s ``residual``) to the classifier's output; the last
        classifier layer starts at zero. Needs text.

    The defaults of the last five are the model before they existed, so older checkpoints (whose
    config lacks them) load unchanged.
    """

    dims: dict[str, int]
    n_classes: int
    modalities: str = "tav"
    fusion: str = "attention"
    layers: dict[str, int] = dataclasses.field(default_factory=lambda: {"t": 1, "a": 1, "v": 1})
    fusion_layers: int = 5
    heads: int = 4
    dropout: float = 0.4
    hidden: int = 256
    ff_mult: int = 2
    positions: str = "none"
    speakers: str = "none"
    causal: bool = False
    relative_clip: int = 8
    head_residual: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DialogueModelConfig:
        return cls(**d)

    @property
    def attention_bias(self) -> bool:
        """Whether the encoders need a per-pair float attention mask (positions, speakers or causal)."""
        return self.positions != "none" or self.speakers != "none" or self.causal

    @property
    def query(self) -> str | None:
        """The modality that plays "text" in attention fusion (None without fusion)."""
        if self.fusion != "attention" or len(self.modalities) < 2:
            return None
        return "t" if "t" in self.modalities else self.modalities[0]

    def validate(self) -> None:
        """Raise ValueError with an actionable message on an impossible shape."""
        if self.fusion not in FUSIONS:
            raise ValueError(f"--fusion {self.fusion!r}: choose one of {FUSIONS}")
        if self.positions not in POSITIONS:
            raise ValueError(f"--positions {self.positions!r}: choose one of {POSITIONS}")
        if self.speakers not in SPEAKERS:
            raise ValueError(f"--speakers {self.speakers!r}: choose one of {SPEAKERS}")
        if self.relative_clip < 1:
            raise ValueError(f"relative_clip {self.relative_clip}: must be at least 1")
        if self.head_residual and "t" not in self.modalities:
            raise ValueError(
                f"--head-residual adds the text head's logits, and modalities {self.modalities!r} have no "
                "text; add t to --modalities or drop --head-residual"
            )
        if self.n_classes < 2:
            raise ValueError(f"need at least 2 classes, got {self.n_classes}")
        for m in self.modalities:
            d = self.dims[m]
            if self.layers.get(m, 0) > 0 and d % self.heads:
                raise ValueError(
                    f"--heads {self.heads} does not divide the width {d} of modality {m!r}; "
                    f"choose heads dividing every width in {self.dims}"
                )
        if self.query is not None and self.dims[self.query] % self.heads:
            raise ValueError(f"--heads {self.heads} does not divide the fusion width {self.dims[self.query]}")


class MissingEmbedding(nn.Module):
    """Replace the rows whose modality is missing by a learned vector."""

    def __init__(self, dim: int):
        super().__init__()
        self.missing = nn.Parameter(torch.randn(dim) * 0.02)

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return torch.where(present.unsqueeze(-1), x, self.missing.to(x.dtype))


def pair_masks(mask: torch.Tensor, speakers: torch.Tensor | None, causal: bool) -> dict[str, torch.Tensor]:
    """What the attention masks of one batch are made of (computed once per forward).

    Returns ``blocked`` (B, L, L) bool: key padding, and later keys when ``causal``; ``distance``
    (L, L) long: ``key - query``; ``speaker_pair`` (B, L, L) long: 0 other, 1 same, 2 unknown
    (only when ``speakers`` is given).
    """
    length = mask.shape[1]
    pos = torch.arange(length, device=mask.device)
    distance = pos[None, :] - pos[:, None]
    blocked = (~mask)[:, None, :].expand(-1, length, -1)
    if causal:
        blocked = blocked | (distance > 0)
    out = {"blocked": blocked, "distance": distance}
    if speakers is not None:
        known = speakers != NO_SPEAKER
        same = speakers[:, :, None] == speakers[:, None, :]
        unknown = ~(known[:, :, None] & known[:, None, :])
        out["speaker_pair"] = torch.where(unknown, 2, same.long())
    return out


class EncoderLayer(nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` (post-norm, ReLU) with :meth:`biased`: the same computation under a
    float attention mask ``(B * heads, L, L)``.

    The parameters are those of the torch layer (old checkpoints load); :meth:`biased` calls the
    attention itself because torch's inference fast path of the layer returns NaN under a 3-D float
    mask (torch 2.11, CPU).
    """

    def biased(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attended = self.self_attn(x, x, x, attn_mask=mask, need_weights=False)[0]
        x = self.norm1(x + self.dropout1(attended))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x))))))


class ModalityEncoder(nn.Module):
    """Eq. 5: N Transformer encoder layers over a dialogue, each with a skip connection around it.

    With ``positions``/``speakers``, each layer adds learned per-head biases to its attention scores
    (``position_bias`` (N, heads, 2 * clip + 1), ``speaker_bias`` (N, heads, 3)); these and the causal
    mask reach the attention as a float ``(B * heads, L, L)`` mask (:class:`EncoderLayer`), so the
    layers' parameter names are those of the plain model.
    """

    def __init__(
        self,
        dim: int,
        n_layers: int,
        heads: int,
        dropout: float,
        ff_mult: int,
        positions: str = "none",
        speakers: str = "none",
        relative_clip: int = 8,
    ):
        super().__init__()
        self.heads, self.relative_clip = heads, relative_clip
        self.layers = nn.ModuleList(
            EncoderLayer(dim, heads, ff_mult * dim, dropout, batch_first=True) for _ in range(n_layers)
        )
        if positions == "relative":
            self.position_bias = nn.Parameter(torch.zeros(n_layers, heads, 2 * relative_clip + 1))
        if speakers == "same-other":
            self.speaker_bias = nn.Parameter(torch.zeros(n_layers, heads, 3))

    def layer_masks(self, pairs: dict[str, torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
        """One float mask ``(B * heads, L, L)`` per layer: biases, and -inf where attention is blocked."""
        blocked = pairs["blocked"]
        b, length, _ = blocked.shape
        base = torch.zeros(b, 1, length, length, dtype=dtype, device=blocked.device)
        base = base.masked_fill(blocked[:, None], float("-inf"))
        masks = []
        for i in range(len(self.layers)):
            m = base
            if hasattr(self, "position_bias"):
                index = pairs["distance"].clamp(-self.relative_clip, self.relative_clip) + self.relative_clip
                m = m + self.position_bias[i][:, index].to(dtype)[None]  # (1, H, L, L)
            if hasattr(self, "speaker_bias"):
                m = m + self.speaker_bias[i][:, pairs["speaker_pair"]].permute(1, 0, 2, 3).to(dtype)
            masks.append(m.expand(b, self.heads, length, length).reshape(b * self.heads, length, length))
        return masks

    def forward(
        self, x: torch.Tensor, padding: torch.Tensor, pairs: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        if pairs is None:  # the plain model: key padding only
            for layer in self.layers:
                x = x + layer(x, src_key_padding_mask=padding)
            return x
        layers = cast(list[EncoderLayer], list(self.layers))  # ModuleList types its items as Module
        for layer, mask in zip(layers, self.layer_masks(pairs, x.dtype), strict=True):
            x = x + layer.biased(x, mask)
        return x


class AttentionFusionLayer(nn.Module):
    """Eq. 6: Q = V = the query modality, K = each other modality; concat with the input; FC back."""

    def __init__(self, query_dim: int, key_dims: list[int], heads: int, dropout: float):
        super().__init__()
        self.attentions = nn.ModuleList(
            nn.MultiheadAttention(query_dim, heads, dropout=dropout, kdim=k, vdim=query_dim, batch_first=True)
            for k in key_dims
        )
        self.project = nn.Linear(query_dim * (1 + len(key_dims)), query_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        query: torch.Tensor,
        keys: list[torch.Tensor],
        padding: torch.Tensor,
        causal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``causal``: an optional (L, L) bool mask, True where a query may not see a key."""
        parts = [query]
        for attention, key in zip(self.attentions, keys, strict=True):
            out, _ = attention(
                query, key, query, key_padding_mask=padding, attn_mask=causal, need_weights=False
            )
            parts.append(out)
        return self.dropout(self.project(torch.cat(parts, dim=-1)))


class DialogueModel(nn.Module):
    """M2FNet's dialogue-level network for any subset of modalities and either fusion.

    ``forward(features, present, mask, speakers, residual)`` takes dicts letter -> ``(B, L, D)`` /
    ``(B, L)``, the ``(B, L)`` utterance mask, the ``(B, L)`` speaker indices within each dialogue
    (:data:`NO_SPEAKER` for unknown; needed only with ``speakers="same-other"``) and the ``(B, L,
    n_classes)`` text head logits (needed only with ``head_residual``), and returns logits
    ``(B, L, n_classes)`` (padding rows are garbage; the loss ignores them).
    """

    def __init__(self, config: DialogueModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        mods = config.modalities
        self.missing = nn.ModuleDict({m: MissingEmbedding(config.dims[m]) for m in mods})
        self.encoders = nn.ModuleDict(
            {
                m: ModalityEncoder(
                    config.dims[m],
                    config.layers.get(m, 1),
                    config.heads,
                    config.dropout,
                    config.ff_mult,
                    config.positions,
                    config.speakers,
                    config.relative_clip,
                )
                for m in mods
            }
        )
        query = config.query
        self.keys = [m for m in mods if m != query] if query else []
        if query:
            self.fusion = nn.ModuleList(
                AttentionFusionLayer(
                    config.dims[query], [config.dims[k] for k in self.keys], config.heads, config.dropout
                )
                for _ in range(config.fusion_layers)
            )
        final_dim = sum(config.dims[m] for m in mods)
        self.classifier = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(final_dim, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.n_classes),
        )
        if config.head_residual:  # the untrained model is the text head itself
            last = cast(nn.Linear, self.classifier[-1])
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        present: dict[str, torch.Tensor],
        mask: torch.Tensor,
        speakers: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        config = self.config
        if config.head_residual and residual is None:
            raise ValueError("this dialogue model adds the text head's logits (head_residual); pass residual")
        padding = ~mask
        pairs = None
        if config.attention_bias:
            if config.speakers != "none" and speakers is None:
                raise ValueError("this dialogue model reads speakers (speakers='same-other'); pass speakers")
            pairs = pair_masks(mask, speakers if config.speakers != "none" else None, config.causal)
        encoded = {
            m: self.encoders[m](self.missing[m](features[m], present[m]), padding, pairs)
            for m in config.modalities
        }
        query = config.query
        if query:
            fused = encoded[query]
            keys = [encoded[k] for k in self.keys]
            causal = pairs["distance"] > 0 if pairs is not None and config.causal else None  # causal: pairs
            for layer in self.fusion:
                fused = layer(fused, keys, padding, causal)
            final = torch.cat([fused] + keys, dim=-1)  # Eq. 7
        else:
            final = torch.cat([encoded[m] for m in config.modalities], dim=-1)
        logits = self.classifier(final)  # Eq. 8
        if config.head_residual:
            assert residual is not None  # checked above
            logits = logits.float() + residual.float()
        return logits


class DialogueEnsemble(nn.Module):
    """Dialogue models of one run (its seeds) used as one: the mean of their class probabilities.

    ``forward`` takes what :class:`DialogueModel` takes and returns the log of the members' mean
    probabilities, so a softmax over its output (what prediction does with logits) gives that mean
    exactly. The members share one config (:attr:`config`, the first member's); they differ in seed.
    """

    def __init__(self, members: list[DialogueModel]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        first = members[0].config.to_dict()
        if any(m.config.to_dict() != first for m in members[1:]):
            raise ValueError("ensemble members must share one config (the seeds of one run)")
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    def forward(
        self,
        features: dict[str, torch.Tensor],
        present: dict[str, torch.Tensor],
        mask: torch.Tensor,
        speakers: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        probs = torch.stack(
            [
                torch.softmax(m(features, present, mask, speakers, residual).float(), dim=-1)
                for m in self.members
            ]
        ).mean(dim=0)
        return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
