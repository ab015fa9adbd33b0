"""Text fine-tuning, the forward pass: the model split at a frozen layer (:func:`bottom_states` /
:func:`top_logits`), the cache of the frozen layers' outputs (:class:`FrozenBottomCache`) and batched
prediction. The classification head itself (:func:`head_logits`) lives in :mod:`pipeline.text.embedder`,
which also reads it at extraction (the head's logits saved beside each embedding).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.text.context import length_sorted_batches, pad_batch, target_mask_batch

# the head is read where the text is embedded too (logits saved at extraction); re-exported here
from pipeline.text.embedder import base_of, head_logits  # noqa: F401
from pipeline.text.finetune.examples import Examples


def _attention_mask_4d(model, hidden, mask):
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask)


def bottom_states(model, ids, mask, n_layers: int):
    """Hidden states after the embeddings and the lowest ``n_layers`` layers ``(B, T, H)`` (no grad)."""
    import torch

    base = base_of(model)
    with torch.no_grad():
        hidden = base.embeddings(input_ids=ids)
        mask4 = _attention_mask_4d(model, hidden, mask)
        for layer in base.encoder.layer[:n_layers]:
            hidden = layer(hidden, mask4)
    return hidden


def full_logits(model, ids, mask, pooling: str = "cls", pool_mask=None):
    """Logits of the whole model for padded ``ids`` / ``mask`` with the head of :func:`head_logits`."""
    hidden = base_of(model)(input_ids=ids, attention_mask=mask).last_hidden_state
    return head_logits(model, hidden, mask, pooling, pool_mask)


def top_logits(model, hidden, mask, n_layers: int, pooling: str = "cls", pool_mask=None):
    """Logits from hidden states after layer ``n_layers``: the remaining layers, then the head.

    Equals :func:`full_logits` (and ``model(ids).logits`` for ``cls``) when ``hidden`` comes from
    :func:`bottom_states` (tested).
    """
    base = base_of(model)
    mask4 = _attention_mask_4d(model, hidden, mask)
    for layer in base.encoder.layer[n_layers:]:
        hidden = layer(hidden, mask4)
    return head_logits(model, hidden, mask, pooling, pool_mask)


class FrozenBottomCache:
    """The frozen lowest layers' outputs of every example, computed once (unpadded, ``dtype``).

    With the embeddings and ``n_layers`` layers frozen, their output never changes during training, so
    running them once instead of every step saves their forward pass in every epoch and every dev
    evaluation.
    """

    def __init__(
        self, model, examples: Examples, n_layers: int, pad_id: int, device, batch_size: int = 64, dtype=None
    ) -> None:
        import torch

        self.n_layers = n_layers
        self.states: list = [None] * len(examples)
        dtype = dtype or torch.float16
        was_training = model.training
        model.eval()
        for batch in length_sorted_batches([len(x) for x in examples.ids], batch_size):
            ids, mask = pad_batch([examples.ids[i] for i in batch], pad_id)
            hidden = bottom_states(
                model, torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device), n_layers
            )
            for row, i in enumerate(batch):
                self.states[i] = hidden[row, : len(examples.ids[i])].to(dtype).cpu()
        model.train(was_training)

    def batch(self, index: Sequence[int], device):
        """Padded ``(hidden (B, T, H) float32, mask (B, T) int64)`` for the examples ``index``."""
        import torch

        seqs = [self.states[i] for i in index]
        width = max(len(x) for x in seqs)
        hidden = torch.zeros((len(seqs), width, seqs[0].shape[1]), dtype=torch.float32)
        mask = torch.zeros((len(seqs), width), dtype=torch.int64)
        for row, x in enumerate(seqs):
            hidden[row, : len(x)] = x.float()
            mask[row, : len(x)] = 1
        return hidden.to(device), mask.to(device)

    @property
    def nbytes(self) -> int:
        """Memory held by the cached states."""
        return sum(x.numel() * x.element_size() for x in self.states)


def predict(
    model,
    examples: Examples,
    batch_size: int,
    pad_id: int,
    device,
    cache: FrozenBottomCache | None = None,
    pooling: str = "cls",
    layout=None,
) -> np.ndarray:
    """Class logits ``(N, C)`` float32 for ``examples`` (length-sorted batches, inference mode).

    With ``cache`` (the examples' frozen-bottom states) only the upper layers and the head run.
    ``pooling`` is the head's (:func:`head_logits`); ``target`` needs the tokenizer's ``layout``.
    """
    import torch

    model.eval()
    out = None
    with torch.inference_mode():
        for batch in length_sorted_batches([len(x) for x in examples.ids], batch_size):
            seqs = [examples.ids[i] for i in batch]
            pmask = _pool_mask(seqs, pooling, layout, device)
            if cache is not None:
                hidden, mask_t = cache.batch(batch, device)
                logits = top_logits(model, hidden, mask_t, cache.n_layers, pooling, pmask)
            else:
                ids, mask = pad_batch(seqs, pad_id)
                ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
                logits = full_logits(model, ids_t, mask_t, pooling, pmask)
            logits = logits.float().cpu().numpy()
            if out is None:
                out = np.zeros((len(examples), logits.shape[1]), dtype=np.float32)
            out[batch] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def _pool_mask(seqs, pooling: str, layout, device):
    """The target mask of a batch for ``pooling="target"`` (None otherwise)."""
    if pooling != "target":
        return None
    import torch

    if layout is None:
        raise ValueError("pooling='target' needs the tokenizer's layout (special_layout(tokenizer))")
    return torch.from_numpy(target_mask_batch(seqs, layout, max(len(x) for x in seqs))).to(device)
