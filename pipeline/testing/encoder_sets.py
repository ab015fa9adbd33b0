"""Encoder folders for tests: ``audio.pt``, ``face.pt`` and ``scene.pt`` with reproducible random weights."""

from __future__ import annotations

from pathlib import Path

from pipeline.encoders.checkpoint import save_encoder
from pipeline.encoders.network import build_encoder
from pipeline.utterance.process import MediaConfig


def save_encoder_set(folder: str | Path, seed: int = 0, **audio_contract) -> Path:
    """Write a random encoder set into ``folder`` (made if missing) and return it.

    The image encoders take :class:`MediaConfig`'s default crop sizes (what extracted media hold); the
    encoders get the seeds ``seed``, ``seed + 1``, ``seed + 2`` (audio, face, scene), so two sets of
    other ``seed`` differ. ``audio_contract`` overrides the audio encoder's input contract (e.g.
    ``sample_rate=8000``), to make a set that does not fit the media.

    Examples
    --------
    >>> import tempfile
    >>> folder = save_encoder_set(Path(tempfile.mkdtemp()) / "enc", seed=3)
    >>> sorted(p.name for p in folder.iterdir())
    ['audio.pt', 'face.pt', 'scene.pt']
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = MediaConfig()
    save_encoder(build_encoder("audio", seed=seed, **audio_contract), folder / "audio.pt")
    for i, (kind, size) in enumerate((("face", cfg.face_size), ("scene", cfg.scene_size)), start=1):
        save_encoder(build_encoder(kind, seed=seed + i, image_size=size), folder / f"{kind}.pt")
    return folder
