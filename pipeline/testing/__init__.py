"""Generated test data in the real formats (as ``lhotse.testing``): small, deterministic, real files.

Used by the tests, the benchmarks and the bundled sample corpus (:mod:`pipeline.corpora.sample`).
Each module is named after what it makes:

- :mod:`~pipeline.testing.signals`: in-memory pictures and sounds: the public-domain astronaut face,
  face frames, split-screen frames, tones, and the pitch and face position per label.
- :mod:`~pipeline.testing.av_files`: real media files made with PyAV: mp4 clips (H.264 + AAC), avi
  (MPEG-4 + PCM), split-screen dialogue videos, wav files, truncated copies.
- :mod:`~pipeline.testing.meld_tree`: a miniature MELD tree in the real format (CSVs old and new, clip
  folders, the traps of real copies).
- :mod:`~pipeline.testing.iemocap_tree`: a miniature ``IEMOCAP_full_release`` tree (EmoEvaluation,
  transcriptions, wavs, avi videos, the traps of real copies).
- :mod:`~pipeline.testing.media_h5`: media.h5 files whose label is in the signal (encoder tests), or
  random (encoder benchmark).
- :mod:`~pipeline.testing.features_h5`: features.h5 files whose label needs audio and visual together
  (XOR), or random (dialogue-model tests and benchmark).
- :mod:`~pipeline.testing.text_model`: a tiny random RoBERTa with its tokenizer, saved in Hugging Face
  format.
- :mod:`~pipeline.testing.utterances`: manifest rows (``Utterance``) with every field defaulted.
- :mod:`~pipeline.testing.encoder_sets`: encoder folders (audio, face, scene) with seeded random weights.
- :mod:`~pipeline.testing.faces`: one MTCNN face detector per process, shared by the tests.

``tests/conftest.py`` exposes the shared ones as fixtures (``face_detector``, ``make_utterance``,
``save_encoder_set``).
"""
