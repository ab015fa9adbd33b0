"""The text model: the context input, embedding with it, the shipped MiniLM, and fine-tuning."""
