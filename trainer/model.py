"""The dialog-level M2FNet (docs/DESIGN.md section 3): modality transformers, attention fusion, classifier.

Per modality, N Transformer encoder layers over the utterances of a dialog, each wrapped in a skip
connection (Eq. 5). Then m Multi-Head Attention Fusion layers (Eq. 6): in each, one attention with
Q = V = text and K = audio, one with Q = V = text and K = visual; their outputs and the text input
are concatenated and a fully connected layer maps them back to D_T; the next layer's "text" is this
output while F_A and F_V stay fixed. Eq. 7 concatenates the fused text with F_A and F_V; Eq. 8 is two
fully connected layers to the class logits.

Decisions where the paper is silent (all options of :class:`DialogModelConfig`):

* A missing modality (``has_* = False``) is replaced by a learned per-modality "missing" embedding
  before its encoder, so the zeros of the cache are never read as a signal.
* Padding positions are excluded from every attention by key-padding masks.
* Feed-forward width of the encoder layers = ``ff_mult * D``; classifier hidden width ``hidden``.
* ``fusion="concat"`` concatenates the encoded modalities (Table 2's "T+A+V concatenated"); one
  modality skips fusion. Attention fusion needs text as its query unless no text is selected, in
  which case the first selected of audio, visual is the query (an extension; the paper has no A+V row).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

FUSIONS = ("attention", "concat")


@dataclass(frozen=True)
class DialogModelConfig:
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DialogModelConfig:
        return cls(**d)

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


class ModalityEncoder(nn.Module):
    """Eq. 5: N Transformer encoder layers over a dialog, each with a skip connection around it."""

    def __init__(self, dim: int, n_layers: int, heads: int, dropout: float, ff_mult: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, ff_mult * dim, dropout, batch_first=True)
            for _ in range(n_layers)
        )

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x, src_key_padding_mask=padding)
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

    def forward(self, query: torch.Tensor, keys: list[torch.Tensor], padding: torch.Tensor) -> torch.Tensor:
        parts = [query]
        for attention, key in zip(self.attentions, keys, strict=True):
            out, _ = attention(query, key, query, key_padding_mask=padding, need_weights=False)
            parts.append(out)
        return self.dropout(self.project(torch.cat(parts, dim=-1)))


class DialogModel(nn.Module):
    """M2FNet's dialog-level network for any subset of modalities and either fusion.

    ``forward(features, present, mask)`` takes dicts letter -> ``(B, L, D)`` / ``(B, L)`` and the
    ``(B, L)`` utterance mask, and returns logits ``(B, L, n_classes)`` (padding rows are garbage;
    the loss ignores them).
    """

    def __init__(self, config: DialogModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        mods = config.modalities
        self.missing = nn.ModuleDict({m: MissingEmbedding(config.dims[m]) for m in mods})
        self.encoders = nn.ModuleDict(
            {
                m: ModalityEncoder(
                    config.dims[m], config.layers.get(m, 1), config.heads, config.dropout, config.ff_mult
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

    def forward(
        self, features: dict[str, torch.Tensor], present: dict[str, torch.Tensor], mask: torch.Tensor
    ) -> torch.Tensor:
        padding = ~mask
        encoded = {
            m: self.encoders[m](self.missing[m](features[m], present[m]), padding)
            for m in self.config.modalities
        }
        query = self.config.query
        if query:
            fused = encoded[query]
            keys = [encoded[k] for k in self.keys]
            for layer in self.fusion:
                fused = layer(fused, keys, padding)
            final = torch.cat([fused] + keys, dim=-1)  # Eq. 7
        else:
            final = torch.cat([encoded[m] for m in self.config.modalities], dim=-1)
        return self.classifier(final)  # Eq. 8
