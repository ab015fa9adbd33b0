"""Where everything lives under the cache root: the one module that builds paths below ``cache/``.

::

    <root>/<dataset>/
        manifest-<hash of the resolved corpus root>.jsonl    the prepared corpus
        media-<media key>/media.h5, problems.jsonl            decoded waveforms, frames, face crops
        encoders/<media key>/recipe<N>-<labels key>/{audio,face,scene}.pt
                                                              encoders trained on that media and those
                                                              train+dev labels by recipe version N
        text-model/<base key>/<hash of the train+dev manifest>/   the text model fine-tuned from a base
            m2f-finetuned.json                                written last: the fine-tuning finished
        <features key>/features.h5, config.json               embeddings and the options that made them
            manifest.jsonl, problems.jsonl                    the utterances it was made from; embed problems

A writer's shards and its lock live beside the file it writes (``<file>.shards/``, ``.lock``; see
:class:`pipeline.store.cache.ShardedWriter`), so they follow from the paths above.

Every path is absolute (the root is resolved when the layout is made), so a path handed to a dask
worker started in another folder names the same file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

#: The cache root of every command when none is given (relative to where it runs).
DEFAULT_CACHE = Path("cache")
MEDIA_PREFIX = "media-"
RECIPE_PREFIX = "recipe"
TEXT_MODEL_MARKER = "m2f-finetuned.json"


@dataclass(frozen=True)
class CacheLayout:
    """The paths of one dataset's cache.

    Parameters
    ----------
    root : path
        The cache root (``--cache``); resolved to an absolute path.
    dataset : str
        Corpus name (``meld``, ``iemocap``, ``sample``, ``custom``): the folder under ``root``.

    Examples
    --------
    >>> layout = CacheLayout("/tmp/cache", "meld")
    >>> layout.features_file("0123abcd4567").as_posix()
    '/tmp/cache/meld/0123abcd4567/features.h5'
    """

    root: Path
    dataset: str

    def __post_init__(self) -> None:
        if not self.dataset or "/" in self.dataset or self.dataset in (".", ".."):
            raise ValueError(f"dataset {self.dataset!r} is not a folder name")
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    @property
    def dataset_dir(self) -> Path:
        """``<root>/<dataset>``."""
        return self.root / self.dataset

    @classmethod
    def of_features(cls, features_file: str | Path) -> CacheLayout:
        """The layout of a ``<root>/<dataset>/<key>/features.h5`` (inverse of :meth:`features_file`)."""
        folder = Path(features_file).expanduser().resolve().parent
        return cls(folder.parent.parent, folder.parent.name)

    # -- prepare ----------------------------------------------------------------------------------
    def manifest(self, corpus_root: str | Path | None) -> Path:
        """The cached manifest of the corpus at ``corpus_root`` (keyed by its resolved path)."""
        where = str(Path(corpus_root).resolve()) if corpus_root else "-"
        key = hashlib.sha256(where.encode()).hexdigest()[:12]
        return self.dataset_dir / f"manifest-{key}.jsonl"

    # -- media ------------------------------------------------------------------------------------
    def media_dir(self, media_key: str) -> Path:
        """Folder of one media cache (``media.h5`` and ``problems.jsonl``)."""
        return self.dataset_dir / f"{MEDIA_PREFIX}{media_key}"

    def media_file(self, media_key: str) -> Path:
        return self.media_dir(media_key) / "media.h5"

    def problems_file(self, media_key: str) -> Path:
        return self.media_dir(media_key) / "problems.jsonl"

    def media_files(self) -> list[Path]:
        """Every ``media.h5`` of this dataset, sorted."""
        return sorted(self.dataset_dir.glob(f"{MEDIA_PREFIX}*/media.h5"))

    @staticmethod
    def media_key(media_file: str | Path) -> str:
        """The key of a media cache from its ``media.h5`` path (the folder name without its prefix)."""
        return Path(media_file).parent.name.removeprefix(MEDIA_PREFIX)

    # -- encoders and text model ------------------------------------------------------------------
    def encoders_dir(self, media_key: str, labels_key: str, recipe: int | None = None) -> Path:
        """Default folder of the encoders (``audio.pt``, ``face.pt``, ``scene.pt``) trained on a media.

        Keyed by everything that changes what training produces: the media cache (``media_key``), the
        train+dev labels they learn (``labels_key``, :func:`pipeline.extract.stage_encoders.labels_key`; the
        media key leaves labels out) and the recipe version (default
        :data:`pipeline.encoders.recipe_version.ENCODER_RECIPE_VERSION`).
        """
        if recipe is None:
            from pipeline.encoders.recipe_version import ENCODER_RECIPE_VERSION

            recipe = ENCODER_RECIPE_VERSION
        return self.dataset_dir / "encoders" / media_key / f"{RECIPE_PREFIX}{int(recipe)}-{labels_key}"

    def text_model_dir(self, manifest_key: str, base_key: str) -> Path:
        """Default folder of the text model fine-tuned from a base on a train+dev manifest.

        ``base_key`` names the base model (a hash of its identity: the hub id, or a local folder's
        content), so fine-tunes of different bases (MiniLM, RoBERTa) never share a folder.
        """
        return self.dataset_dir / "text-model" / base_key / manifest_key

    def text_model_marker(self, manifest_key: str, base_key: str) -> Path:
        """Written when the fine-tuning into :meth:`text_model_dir` has finished."""
        return self.text_model_dir(manifest_key, base_key) / TEXT_MODEL_MARKER

    def all_encoders_dirs(self) -> list[Path]:
        """Every encoders folder of this dataset, sorted: those of :meth:`encoders_dir`, and the
        ``encoders/<media key>/`` folders holding checkpoints that caches made before the recipe and
        labels keys (``m2f export`` still finds the encoders of runs made with them)."""
        base = self.dataset_dir / "encoders"
        keyed = {p for p in base.glob(f"*/{RECIPE_PREFIX}*") if p.is_dir()}
        legacy = {p.parent for p in base.glob("*/*.pt")}
        return sorted(keyed | legacy)

    def all_text_model_dirs(self) -> list[Path]:
        """Every finished fine-tuned text model folder of this dataset (its marker written), sorted."""
        return sorted(p.parent for p in (self.dataset_dir / "text-model").glob(f"*/*/{TEXT_MODEL_MARKER}"))

    # -- features ---------------------------------------------------------------------------------
    def features_dir(self, config_key: str) -> Path:
        """Folder of one features cache (``config_key``: hash of every option that changes its numbers)."""
        return self.dataset_dir / config_key

    def features_file(self, config_key: str) -> Path:
        return self.features_dir(config_key) / "features.h5"

    def features_config(self, config_key: str) -> Path:
        """The options that made ``features.h5``, readable (``config.json``)."""
        return self.features_dir(config_key) / "config.json"

    def features_manifest(self, config_key: str) -> Path:
        """The manifest (selected utterances) ``features.h5`` was made from (``manifest.jsonl``)."""
        return self.features_dir(config_key) / "manifest.jsonl"

    def features_problems(self, config_key: str) -> Path:
        """Problems of the embed stage, one JSON line per utterance and modality (``problems.jsonl``)."""
        return self.features_dir(config_key) / "problems.jsonl"
