"""m2f extraction pipeline: corpora -> manifest -> decoded media -> embeddings in HDF5."""

__version__ = "0.1.0"
