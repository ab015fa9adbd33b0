"""The encoders' input contract (sample rate, clip length, image sizes) against the media they embed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.encoders.inputs import InputContract
from pipeline.extract import ExtractError, ExtractOptions, run_extract
from pipeline.extract.stage_encoders import contract_mismatches, labels_key, training_labels
from pipeline.extract.stage_media import media_config_dict, media_key
from pipeline.extract.stage_prepare import load_manifest, select
from pipeline.store.cache import ShardedWriter
from pipeline.testing.encoder_sets import save_encoder_set


def _contracts(**audio) -> dict:
    return {
        "audio": InputContract("audio", **audio),
        "face": InputContract("face", image_size=80),
        "scene": InputContract("scene", image_size=64),
    }


def test_each_mismatch_names_both_values():
    media = media_config_dict(None)
    assert contract_mismatches("/enc", _contracts(), media, ("text", "audio", "visual"), "m.h5") == []
    (msg,) = contract_mismatches("/enc", _contracts(sample_rate=8000), media, ("audio",), "m.h5")
    assert "/enc/audio.pt expects 8000 Hz" in msg and "m.h5 holds 16000 Hz" in msg
    (msg,) = contract_mismatches("/enc", _contracts(max_seconds=4.0), media, ("audio",), "m.h5")
    assert "at most 4 s" in msg and "up to 10 s" in msg
    small = {**media, "face_size": 48}
    (msg,) = contract_mismatches("/enc", _contracts(), small, ("visual",), "m.h5")
    assert "/enc/face.pt expects 80 px face images" in msg and "holds 48 px" in msg
    # only what is embedded is compared; random encoders have no trained image size (crops are resized)
    assert contract_mismatches("/enc", _contracts(sample_rate=8000), media, ("visual",), "m.h5") == []
    assert contract_mismatches("random", _contracts(), small, ("visual",), "m.h5") == []
    (msg,) = contract_mismatches("random", _contracts(), {**media, "sample_rate": 8000}, ("audio",), "m.h5")
    assert "random audio encoder expects 16000 Hz" in msg


def test_cached_encoders_at_8_khz_stop_the_run_before_embedding_16_khz_media(tmp_path):
    """The stored media.h5 (16 kHz) is checked against encoders found in the cache (8 kHz)."""
    opts = ExtractOptions("sample", None, cache=tmp_path, modalities=("audio",), splits=("dev",), limit=2)
    layout = opts.layout
    _, manifest = load_manifest(layout, None)
    selected = select(manifest, opts.splits, opts.limit)
    media_cfg = media_config_dict(None)
    key = media_key(media_cfg, selected)
    # a finished media cache (only what the skip check and problems.jsonl read): no decoding, no cluster
    with ShardedWriter(
        layout.media_file(key),
        {"kind": "m2f-media", "dataset": "sample", "media_config": json.dumps(media_cfg, sort_keys=True)},
    ) as w:
        w.append(
            "dev",
            {
                "utt_id": np.array([u.id for u in selected], dtype=object),
                "problems": np.array(["[]"] * len(selected), dtype=object),
            },
        )
        w.finalize()
    encoders = layout.encoders_dir(key, labels_key(training_labels(selected)))
    save_encoder_set(encoders, sample_rate=8000)
    with pytest.raises(ExtractError) as err:
        run_extract(opts)
    msg = str(err.value)
    assert "\n" not in msg and "8000 Hz" in msg and "16000 Hz" in msg
    assert str(encoders / "audio.pt") in msg and str(layout.media_file(key)) in msg
    assert not list(layout.dataset_dir.glob("*/features.h5*"))  # stopped before the embed stage


def test_given_encoders_that_do_not_fit_stop_before_decoding(tmp_path):
    save_encoder_set(tmp_path / "enc", sample_rate=8000)
    opts = ExtractOptions(
        "sample",
        None,
        cache=tmp_path / "cache",
        modalities=("audio",),
        splits=("dev",),
        encoders=str(tmp_path / "enc"),
    )
    with pytest.raises(
        ExtractError, match="expects 8000 Hz audio but the media config of this run holds 16000 Hz"
    ):
        run_extract(opts)
    assert opts.layout.media_files() == []
