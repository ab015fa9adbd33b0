"""Overfit one batch: the fine-tuning's classifier (the project's heads on the shipped MiniLM) memorises
8 labelled lines in a few steps.

The quick part's check that fine-tuning learns at all; that it learns a keyword task well enough to
generalise to dev and test is ``test_finetune_learns_keywords_and_writes_a_loadable_folder`` (slow).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.text.embedder import load_text_model
from pipeline.text.finetune.heads import full_logits

torch.set_num_threads(1)
LINES = ["so happy", "really mad", "so sad", "hello there", "what joy", "go away", "I cry", "the door"]
LABELS = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])


def test_the_text_classifier_memorises_one_batch():
    torch.manual_seed(0)
    tokenizer, model = load_text_model(None, for_classification=4)  # None: the shipped MiniLM
    batch = tokenizer(LINES, padding=True, return_tensors="pt")
    model.eval()  # dropout off: memorising, not regularising; gradients flow all the same
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        logits = full_logits(model, batch["input_ids"], batch["attention_mask"], "cls")
        loss = F.cross_entropy(logits, LABELS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 < losses[0], losses
    with torch.no_grad():
        logits = full_logits(model, batch["input_ids"], batch["attention_mask"], "cls")
    assert logits.argmax(1).tolist() == LABELS.tolist()
