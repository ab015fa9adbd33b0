"""Corpus readers (MELD, IEMOCAP, custom CSV, bundled sample) and synthetic corpora."""
