"""EmoBERTa-style fine-tuning of the text model on the context input.

Public entry: ``loop.finetune_text(utterances, recipe.FinetuneConfig(out=...))`` -> the model folder.
"""
