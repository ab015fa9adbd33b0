"""Generated test data in the real formats (as ``lhotse.testing``): deterministic, small, real files.

- ``features_h5``: finished features.h5 files (made-up embeddings) through ``pipeline.cache.FeatureWriter``.
"""
