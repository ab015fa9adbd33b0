"""m2f dialog-level trainer: reads features.h5, trains M2FNet's dialog model, reports."""
