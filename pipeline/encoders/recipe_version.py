"""The version of the audio/face/scene encoders' training recipe (no torch import: the cache layout reads it).

The default encoders ``m2f extract`` trains are cached per media cache, per train+dev labels and per
:data:`ENCODER_RECIPE_VERSION` (:meth:`pipeline.store.layout.CacheLayout.encoders_dir`), so encoders trained
by
an older recipe are never picked up as if the current code had trained them.
"""

#: Bump this whenever a change alters what the default encoder training produces from the same media
#: and labels: the loss (Eq. 9-13 and its options' defaults), the mining, the sampling of batches, the
#: augmentation, the epochs or batch defaults, the model selection, the architecture. Every cached
#: default encoder folder then stops matching and ``m2f extract`` trains a fresh one (the old folders
#: stay on disk; `m2f export` still finds them for runs made with them).
#: History: 1 = the unversioned ``encoders/<media key>/`` folders before this key existed (some trained
#: before the VICReg loss change, 78f7030); 2 = the recipe as of issue 17.
ENCODER_RECIPE_VERSION = 2
