"""Storage under the cache root: crash-safe writes, row files, the features.h5 format, paths, locks."""
