"""The in-memory featurizer gives the features `m2f extract` writes (one embedding path for both)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.encoders.checkpoint import load_encoder_set
from pipeline.extract import ExtractOptions, run_extract
from pipeline.manifest import read_jsonl
from pipeline.store.features import read_split
from pipeline.testing.meld_tree import make_meld_tree
from pipeline.text.embedder import TextEmbedder
from pipeline.utterance.featurize import FeatureModels, Featurizer
from pipeline.utterance.process import MediaConfig

SIZE = (160, 120)
N_FRAMES = 4


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, tiny_roberta):
    """A 2-dialogue MELD dev split with clips (a face in each), extracted by the dask engine."""
    base = tmp_path_factory.mktemp("featurize")
    root = make_meld_tree(
        base / "corpus", n_dialogues=2, utterances_per_dialogue=3, splits=("dev",), traps=False, size=SIZE
    )
    opts = ExtractOptions(
        "meld",
        root,
        cache=base / "cache",
        splits=("dev",),
        workers=1,
        encoders="random",
        text_model=str(tiny_roberta),
        partition_size=3,
        media_config={"n_frames": N_FRAMES},
    )
    res = run_extract(opts)
    manifest = [u for u in read_jsonl(res.manifest) if u.split == "dev"]
    return res, manifest


def test_featurizer_equals_extract(extracted, tiny_roberta):
    res, manifest = extracted
    cfg = MediaConfig(n_frames=N_FRAMES)
    models = FeatureModels(
        ("text", "audio", "visual"),
        text=TextEmbedder(str(tiny_roberta)),
        encoders=load_encoder_set("random"),
        n_frames=N_FRAMES,
    )
    rows, problems = Featurizer(models, cfg).featurize(manifest)
    assert problems == []
    ref = read_split(res.features, "dev")
    assert rows["utt_id"] == list(ref.utt_id)
    for flag in ("has_text", "has_audio", "has_visual", "has_face"):
        np.testing.assert_array_equal(rows[flag], getattr(ref, flag), err_msg=flag)
    assert ref.has_audio.all() and ref.has_face.any()
    # other batch compositions than the engine's partitions: equal within float32 rounding
    for name in ("text_emb", "audio_emb", "visual_emb"):
        np.testing.assert_allclose(rows[name], getattr(ref, name), rtol=1e-5, atol=1e-5, err_msg=name)


def test_a_bad_clip_is_a_problem_and_missing_flags_not_an_exception(extracted, tiny_roberta, tmp_path):
    import dataclasses

    _, manifest = extracted
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    utts = [dataclasses.replace(manifest[0], clip=str(broken))]
    models = FeatureModels(
        ("text", "audio"), text=TextEmbedder(str(tiny_roberta)), encoders=load_encoder_set("random")
    )
    rows, problems = Featurizer(models, MediaConfig()).featurize(utts)
    assert rows["has_text"].tolist() == [True] and rows["has_audio"].tolist() == [False]
    assert not rows["audio_emb"].any()
    assert problems and problems[0]["file"] == str(broken) and problems[0]["stage"] == "media"
