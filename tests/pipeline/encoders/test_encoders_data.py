"""Augmentation, samples over media.h5, class-balanced batches and the probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.encoders.augment import AudioAugment, add_white_noise, augment_waveform, time_stretch
from pipeline.encoders.inputs import InputContract, audio_view
from pipeline.encoders.probe import probe_weighted_f1, subset
from pipeline.encoders.samples import MediaSamples, balanced_batches, load_batch
from pipeline.testing.media_h5 import LABELS, write_media

torch.set_num_threads(1)
SR = 16000


def dominant_hz(wave: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / SR)[np.argmax(spec)])


def tone(hz: float, seconds: float) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return torch.sin(2 * torch.pi * hz * t)


@pytest.mark.parametrize("rate", [0.8, 1.25])
def test_time_stretch_changes_length_not_pitch(rate):
    wave = tone(500.0, 1.0)
    out = time_stretch(wave, rate)
    assert out.shape == (round(SR / rate),)
    assert dominant_hz(out.numpy()) == pytest.approx(500.0, abs=5)
    # resampling (the naive way) would move the pitch to 500 * rate


@pytest.mark.parametrize("snr", [5.0, 40.0])
def test_white_noise_has_the_requested_snr(snr):
    wave = tone(300.0, 1.0)
    noisy = add_white_noise(wave, snr, torch.Generator().manual_seed(0))
    noise = noisy - wave
    measured = 10 * torch.log10(wave.pow(2).sum() / noise.pow(2).sum())
    assert measured.item() == pytest.approx(snr, abs=0.01)


def test_augment_waveform_is_seeded_fits_the_window_and_keeps_pitch():
    wave = tone(700.0, 2.0).numpy()
    a = augment_waveform(wave, 8000, np.random.default_rng(3))
    b = augment_waveform(wave, 8000, np.random.default_rng(3))
    c = augment_waveform(wave, 8000, np.random.default_rng(4))
    assert len(a) <= 8000 and len(a) >= 8000 * 0.8 - 1 and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    clean = augment_waveform(wave, 8000, np.random.default_rng(3), AudioAugment(snr_db=(80.0, 80.0)))
    assert dominant_hz(clean) == pytest.approx(700.0, abs=10)
    short = augment_waveform(wave[:1000], 8000, np.random.default_rng(0))
    assert 800 <= len(short) <= 1250 and np.all(short != 0)  # the stretched clip, not zero padded


def test_audio_view_cuts_to_the_window_and_never_pads():
    contract = InputContract("audio", sample_rate=10, max_seconds=0.4)  # a 4-sample window
    w = np.arange(10, dtype=np.float32)
    assert audio_view(w, contract).tolist() == [3, 4, 5, 6]  # evaluation: the centre
    starts = {int(audio_view(w, contract, np.random.default_rng(s))[0]) for s in range(40)}
    assert starts == set(range(7))  # training: anywhere
    assert audio_view(w[:3], contract).tolist() == [0, 1, 2]  # shorter: as it is


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return write_media(
        tmp_path_factory.mktemp("m") / "media.h5", {"train": 4, "dev": 2}, seconds=0.3, image_size=24
    )


@pytest.mark.parametrize("modality", ["audio", "face", "scene"])
def test_samples_skip_unlabelled_and_missing_rows(media, modality):
    s = MediaSamples(media, "train", modality)
    assert s.classes == LABELS
    assert s.label_counts() == dict.fromkeys(LABELS, 4)  # the "" row and the no-media row are left out
    dev = MediaSamples(media, "dev", modality, classes=("joy", "anger"))
    assert dev.classes == ("joy", "anger") and dev.label_counts() == {"joy": 2, "anger": 2}
    s.close()
    dev.close()


def test_given_labels_replace_the_stored_column(media):
    """A label fixed in the manifest reaches training although media.h5 keeps the decode-time label."""
    from pipeline.store.h5rows import RowReader

    with RowReader(media, "train") as r:
        ids, stored = list(r.utt_ids), list(r.column("label"))
    fixed = dict(zip(ids, stored, strict=True))
    first = next(i for i, lab in fixed.items() if lab == LABELS[0])
    fixed[first] = LABELS[1]
    s = MediaSamples(media, "train", "audio", labels=fixed)
    assert s.label_counts()[LABELS[0]] == 3 and s.label_counts()[LABELS[1]] == 5
    s.close()
    del fixed[first]
    with pytest.raises(ValueError, match="no label given for 1 row"):
        MediaSamples(media, "train", "audio", labels=fixed)


def test_load_batch_shapes_and_views(media):
    rng = np.random.default_rng(0)
    audio = MediaSamples(media, "train", "audio")
    window = InputContract("audio", max_seconds=0.25)
    x, lengths = load_batch(audio, [0, 1, 2], window, train=True, rng=rng)
    assert x.shape[0] == 3 and x.dtype == torch.float32 and x.shape[1] == int(lengths.max()) <= 4000
    assert all(x[i, n:].abs().sum() == 0 for i, n in enumerate(lengths.tolist()))  # zeros past the clip
    ev1, n1 = load_batch(audio, [0], window, train=False, rng=rng)
    ev2, _ = load_batch(audio, [0], window, train=False, rng=np.random.default_rng(9))
    assert torch.equal(ev1, ev2) and n1.tolist() == [4000]  # evaluation view is fixed: the centre 0.25 s
    whole, n = load_batch(audio, [0], InputContract("audio"), train=False, rng=rng)
    assert n.tolist() == [4800]  # a 0.3 s clip fits the 10 s window: as is
    face = MediaSamples(media, "train", "face")
    contract = InputContract("face", image_size=16)
    for train in (True, False):
        img, none = load_batch(face, [0, 5], contract, train=train, rng=rng)
        assert img.shape == (2, 3, 16, 16) and img.dtype == torch.uint8 and none is None
    same = InputContract("scene", image_size=24)
    scene = MediaSamples(media, "train", "scene")
    raw = scene.raw(0, False, rng)
    assert torch.equal(load_batch(scene, [0], same, train=False, rng=rng)[0][0], torch.from_numpy(raw))


def test_balanced_batches_take_k_distinct_per_class():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 1 + [3] * 6)
    batches = balanced_batches(labels, 12, 5, np.random.default_rng(0))
    assert len(batches) == 5
    for b in batches:
        assert len(set(b.tolist())) == len(b)
        counts = np.bincount(labels[b], minlength=4)
        assert counts[2] == 0  # a single-sample class cannot give a pair
        assert counts[0] == 4 and counts[1] == 3 and counts[3] == 4  # K = 12 // 3 = 4, class 1 has only 3
    with pytest.raises(ValueError, match="at least 2 labels"):
        balanced_batches(np.array([0, 0, 1]), 8, 1, np.random.default_rng(0))


def test_probe_scores_separable_high_and_noise_low():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    centres = rng.normal(size=(3, 8)) * 5
    x = centres[y] + rng.normal(size=(90, 8))
    noise = rng.normal(size=(90, 8))
    for kind in ("logreg", "knn"):
        assert probe_weighted_f1(x[::2], y[::2], x[1::2], y[1::2], kind) > 0.95
        assert probe_weighted_f1(noise[::2], y[::2], noise[1::2], y[1::2], kind) < 0.6
    assert probe_weighted_f1(x, np.zeros(90, int), x, y) == 0.0
    with pytest.raises(ValueError, match="unknown probe"):
        probe_weighted_f1(x, y, x, y, "svm")


def test_subset_is_stratified_and_capped():
    labels = np.array([0] * 80 + [1] * 20)
    idx = subset(labels, 10, seed=0)
    assert np.bincount(labels[idx]).tolist() == [8, 2]
    assert len(subset(labels, None, 0)) == 100


@pytest.mark.parametrize("modality", ["audio", "face"])
def test_train_batches_are_identical_with_worker_processes(media, modality):
    from pipeline.encoders.samples import TrainBatches

    s = MediaSamples(media, "train", modality)
    batches = balanced_batches(s.labels, 6, 3, np.random.default_rng(0))
    contract = InputContract(modality, image_size=20, max_seconds=0.25)
    source = TrainBatches(s, batches, contract, seed=1, epoch=2, audio_augment=AudioAugment())
    serial = list(torch.utils.data.DataLoader(source, batch_size=None, num_workers=0))
    parallel = list(torch.utils.data.DataLoader(source, batch_size=None, num_workers=2))
    assert len(serial) == len(parallel) == 3
    for (xa, na, ya), (xb, nb, yb), idx in zip(serial, parallel, batches, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert (na is None and nb is None) if modality == "face" else torch.equal(na, nb)
        assert ya.tolist() == s.labels[idx].tolist()
    other_epoch = TrainBatches(s, batches, contract, seed=1, epoch=3, audio_augment=AudioAugment())
    assert not torch.equal(other_epoch[0][0], serial[0][0])  # each epoch draws anew
