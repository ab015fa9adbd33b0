"""Encoder training's loader: persistent forkserver workers give each epoch's batches unchanged;
the probe runs every ``probe_every`` epochs and after the last."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.encoders.checkpoint import load_checkpoint
from pipeline.encoders.loader import TrainLoader
from pipeline.encoders.network import build_encoder
from pipeline.encoders.samples import MediaSamples, TrainBatches, balanced_batches
from pipeline.encoders.train import train_encoders
from pipeline.encoders.train_config import EncoderTrainConfig, TrainEncodersConfig
from pipeline.testing.media_h5 import write_media


@pytest.fixture(scope="module")
def small_media(tmp_path_factory):
    return write_media(
        tmp_path_factory.mktemp("small") / "media.h5", {"train": 6, "dev": 3}, seconds=0.2, image_size=16
    )


def _one_epoch_batches(samples, encoder, cfg, epoch, steps):
    rng = np.random.default_rng([cfg.seed, epoch])
    batches = balanced_batches(samples.labels, cfg.batch_size, steps, rng)
    source = TrainBatches(samples, batches, encoder.contract, cfg.seed, epoch, cfg.audio_augment)
    return [source[b] for b in range(steps)]


@pytest.mark.slow  # forkserver workers import torch afresh: about a minute on 2 busy cores
def test_persistent_workers_repeat_each_epochs_batches(small_media):
    modality = "audio"
    samples = MediaSamples(small_media, "train", modality)
    encoder = build_encoder(modality, seed=0)
    cfg = EncoderTrainConfig(modality=modality, epochs=2, batch_size=8, clip_seconds=0.2, num_workers=2)
    loader = TrainLoader(samples, encoder, cfg, "cpu", steps=3)
    assert loader.loader.multiprocessing_context.get_start_method() == "forkserver"
    pids = []
    try:
        for epoch in (1, 2):
            got = list(loader.epoch(epoch))
            pids.append(sorted(w.pid for w in loader.loader._iterator._workers))
            want = _one_epoch_batches(samples, encoder, cfg, epoch, 3)
            assert len(got) == len(want) == 3
            for (gx, gn, gy), (wx, wn, wy) in zip(got, want, strict=True):
                torch.testing.assert_close(gx, wx, rtol=0, atol=0)
                torch.testing.assert_close(gn, wn, rtol=0, atol=0)  # the audio clips' real lengths
                torch.testing.assert_close(gy, wy, rtol=0, atol=0)
        assert pids[0] == pids[1]  # the same worker processes served both epochs
    finally:
        loader.close()
        samples.close()


def test_probe_every_k_epochs_and_after_the_last(small_media, tmp_path):
    config = TrainEncodersConfig(
        small_media,
        tmp_path,
        modalities=("scene",),
        epochs=3,
        batch_size=8,
        steps_per_epoch=1,
        overrides={"probe_every": 2},
    )
    meta = load_checkpoint(train_encoders(config) / "scene.pt")["meta"]
    probed = [h["dev_probe_wf1"] is not None for h in meta["history"]]
    assert probed == [False, True, True]
    assert meta["best_epoch"] in (0, 2, 3)
    with pytest.raises(ValueError, match="probe_every"):
        EncoderTrainConfig(modality="scene", epochs=1, batch_size=8, probe_every=0)
