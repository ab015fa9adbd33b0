"""A tiny random-weight RoBERTa saved in Hugging Face format, for the text tests (no download).

Its byte-level BPE tokenizer is trained here on :data:`WORDS`, a small emotional vocabulary; the same
seed gives the same weights and tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: The vocabulary the tokenizer is trained on (and the words of the text tests' dialogues).
WORDS = (
    "happy joy great love smile angry mad hate furious what why sad cry tears scared afraid "
    "oh my god really okay fine yes no hello hi hey you me we they the a is are was"
).split()


def make_tiny_roberta(folder: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A random-weight RoBERTa (tiny config) plus a byte-level BPE tokenizer, saved in HF format.

    The tokenizer is trained with the ``tokenizers`` library and loaded back with ``from_pretrained``
    (``RobertaTokenizerFast(vocab_file=...)`` builds an empty vocabulary in transformers 5).
    """
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    corpus = [" ".join(rng.choice(WORDS, size=8)) for _ in range(200)]
    corpus += [f"{name}: {w}" for name in ("Joey", "Ross", "Monica", "Phoebe") for w in WORDS]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus, vocab_size=400, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    )
    tok = RobertaTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=130,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        type_vocab_size=1,
    )
    RobertaModel(cfg).save_pretrained(folder)
    return folder
