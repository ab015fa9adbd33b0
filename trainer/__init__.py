"""m2f dialogue-level trainer: reads features.h5, trains M2FNet's dialogue model, reports."""
