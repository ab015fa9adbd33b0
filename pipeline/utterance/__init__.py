"""The utterance level in memory: decode once, faces, audio window, embeddings of one utterance."""
