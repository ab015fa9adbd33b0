"""One audio view for training, model selection and extraction (the encoder contract's window).

Training batches pad clips of different lengths to the longest; the encoder computes each clip's
log-mel from its own samples, standardises it over its own frames, keeps every feature map zero past
the clip's real time steps (BatchNorm counting real positions only) and pools over them, so the
padding reaches neither the standardisation nor the features. Model selection embeds through the
function extraction uses.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.encoders.inputs import InputContract, audio_view, pad_waveforms
from pipeline.encoders.network import build_encoder
from pipeline.encoders.probe import embed_samples
from pipeline.encoders.samples import MediaSamples, load_batch
from pipeline.testing.media_h5 import write_media
from pipeline.utterance.embed import encode_waveforms

torch.set_num_threads(1)


def clips(seed: int = 0, lengths=(4000, 9000, 2500)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(max(lengths)) / 16000
    return [
        (0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t[:n]) + 0.05 * rng.standard_normal(n)).astype(
            np.float32
        )
        for n in lengths
    ]


def test_padding_never_reaches_the_log_mel_of_a_clip():
    enc = build_encoder("audio", seed=0)
    waves = clips()
    x, lengths = pad_waveforms(waves)
    padded = enc.front(x, lengths)
    frames = enc.front.frames(lengths)
    for i, w in enumerate(waves):
        alone = enc.front(torch.from_numpy(w)[None])[0]  # the extraction view: no padding
        n = int(frames[i])
        assert alone.shape[-1] == n
        torch.testing.assert_close(padded[i, :, :, :n], alone, atol=1e-5, rtol=1e-5)
        assert padded[i, :, :, n:].abs().max() == 0 if n < padded.shape[-1] else True
    # the old view for contrast: standardised with the zero padding, the short clip's frames change
    naive = enc.front(x)[2, :, :, : int(frames[2])]
    alone = enc.front(torch.from_numpy(waves[2])[None])[0]
    assert (naive - alone).abs().max() > 0.5


def test_a_padded_clip_embeds_as_it_does_alone():
    enc = build_encoder("audio", seed=0)
    waves = clips(1)
    x, lengths = pad_waveforms(waves)
    with torch.no_grad():
        batch = enc(x, lengths)  # eval mode, padded batch
        alone = torch.cat([enc(torch.from_numpy(w)[None]) for w in waves])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-4)
    # in training mode BatchNorm's batch statistics count real frames only: a clip padded to twice its
    # length, alone in its batch, gets the same projector output (and gradient path) as unpadded
    enc.train()
    w = torch.from_numpy(waves[0])[None]
    padded = torch.cat([w, torch.zeros_like(w)], dim=1)
    torch.testing.assert_close(
        enc.project(padded, torch.tensor([w.shape[1]])), enc.project(w), atol=1e-4, rtol=1e-4
    )


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return write_media(
        tmp_path_factory.mktemp("view") / "media.h5", {"train": 2, "dev": 2}, seconds=0.6, image_size=16
    )


def test_training_view_is_the_extraction_view_augmented(media):
    contract = InputContract("audio", max_seconds=0.5)
    samples = MediaSamples(media, "train", "audio")
    rng = np.random.default_rng(0)
    # without augmentation a training crop is a window-long piece of the real clip, never padded ...
    x, lengths = load_batch(samples, [0, 1, 2], contract, train=True, rng=rng, audio_augment=None)
    assert lengths.tolist() == [8000, 8000, 8000]
    raw = samples.raw(0, True, rng)
    starts = [i for i in range(len(raw) - 8000 + 1) if np.array_equal(raw[i : i + 8000], x[0].numpy())]
    assert starts  # ... cut from the stored waveform
    # ... and in a clip shorter than the window it is the clip itself, as extraction sees it
    whole = InputContract("audio", max_seconds=10.0)
    x, lengths = load_batch(samples, [0, 1], whole, train=True, rng=rng, audio_augment=None)
    enc = build_encoder("audio", seed=0, max_seconds=10.0)
    for i in range(2):
        stored = samples.raw(i, False, rng)
        assert lengths[i] == len(stored) and np.array_equal(x[i, : len(stored)].numpy(), stored)
        torch.testing.assert_close(enc.front(x, lengths)[i], enc.front(torch.from_numpy(stored)[None])[0])
    # with augmentation: at most the window, stretched and noised, still unpadded
    x, lengths = load_batch(samples, [0, 1, 2], contract, train=True, rng=rng)
    assert int(lengths.max()) <= 8000 and all(x[i, : int(n)].abs().min() > 0 for i, n in enumerate(lengths))
    samples.close()


def test_model_selection_embeds_exactly_what_extraction_writes(media):
    enc = build_encoder("audio", seed=3, max_seconds=0.5)  # 0.6 s clips: the centre 0.5 s
    dev = MediaSamples(media, "dev", "audio")
    idx = np.arange(len(dev))
    selected = embed_samples(enc, dev, idx, batch_size=4)
    rng = np.random.default_rng(0)
    stored = [dev.raw(int(i), False, rng) for i in idx]
    # Same view, same encoder, same batches: the same bits.
    np.testing.assert_array_equal(selected, encode_waveforms(enc, stored, batch_size=4))
    # Another batch size is another convolution reduction order on some CPUs (AMD EPYC: up to 8e-8 on
    # these unit-norm rows), not another view: equal within float32 rounding.
    extracted = encode_waveforms(enc, stored, batch_size=3)
    np.testing.assert_allclose(selected, extracted, rtol=1e-5, atol=1e-6)
    centre = audio_view(stored[0], enc.contract)
    assert len(centre) == 8000 and np.array_equal(centre, stored[0][800:8800])
    dev.close()
