"""EmoBERTa-style fine-tuning of the text model on the context input (public entry: ``finetune_text``)."""
