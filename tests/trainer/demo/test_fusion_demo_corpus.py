"""The demo's generated corpus (trainer/demo/corpus.py): one modality leaves two emotions, two decide it."""

from __future__ import annotations

import itertools
from collections import Counter

import av
import pytest

from pipeline.corpora.custom import prepare_custom
from pipeline.corpora.sample import md5_tree
from trainer.demo.corpus import (
    _SENTENCES,
    FUSION_CUES,
    PITCH_HZ,
    build_fusion_corpus,
    fusion_script,
    join_clips,
)


def _cues(u):
    """What each modality shows of an utterance: valence sentence, pitch band, face side."""
    valence = next(v for v, pool in _SENTENCES.items() if any(u.text.endswith(" " + x) for x in pool))
    arousal = next(a for a, (lo, hi) in PITCH_HZ.items() if lo <= u.tone_hz <= hi)
    side = "left" if u.face_pos[0] < 0.5 else "right"
    return valence, arousal, side


def test_each_cue_alone_leaves_two_emotions_and_any_two_decide():
    script = fusion_script({"train": 12, "dev": 2, "test": 2})
    for u in script:
        assert _cues(u) == FUSION_CUES[u.label]
    for m in range(3):
        for value in {c[m] for c in FUSION_CUES.values()}:
            assert len({label for label, c in FUSION_CUES.items() if c[m] == value}) == 2
    for a, b in itertools.combinations(range(3), 2):
        assert len({(c[a], c[b]) for c in FUSION_CUES.values()}) == len(FUSION_CUES)
    counts = Counter(u.label for u in script if u.split == "train")
    assert max(counts.values()) - min(counts.values()) <= 6  # balanced within a dialogue's surplus
    assert fusion_script({"train": 12, "dev": 2, "test": 2}) == script  # seeded


def test_corpus_reads_as_a_custom_csv_and_joined_clips_have_their_spans(tmp_path):
    sizes = {"train": 1, "dev": 1, "test": 1}
    csv_path = build_fusion_corpus(tmp_path / "c", sizes, utterances_per_dialogue=2)
    utts = prepare_custom(csv_path)
    assert [u.split for u in utts] == ["train", "train", "dev", "dev", "test", "test"]
    assert all(u.clip and u.label in FUSION_CUES for u in utts)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "c" / "clips").iterdir()}
    build_fusion_corpus(tmp_path / "c", sizes, utterances_per_dialogue=2)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "c" / "clips").iterdir()} == before  # kept
    build_fusion_corpus(tmp_path / "p", sizes, utterances_per_dialogue=2, processes=2)
    assert md5_tree(tmp_path / "p") == md5_tree(tmp_path / "c")  # same bytes from 2 processes

    spans = join_clips([u.clip for u in utts[:3]], tmp_path / "joined.mp4")
    assert [round(s, 3) for s, _ in spans] == [0.0, 1.0, 2.0] and round(spans[-1][1], 3) == 3.0
    with av.open(str(tmp_path / "joined.mp4")) as c:
        assert c.streams.audio and c.streams.video
        assert abs(float(c.duration) / 1e6 - 3.0) < 0.15


@pytest.mark.slow  # writes and joins 8 clips in a fresh process; the quick test above checks the spans
def test_join_clips_streams_frames_instead_of_holding_them(tmp_path):
    """Memory does not grow with the joined length: 192 frames of 640x480 (177 MB as RGB arrays) are
    joined with a peak RSS growth of a few frames (a 10-minute 720p replay once needed 24 GB and was
    killed). Measured in a fresh process (Linux: /proc/self/status)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        from pathlib import Path
        from pipeline.testing.av_files import write_clip
        from trainer.demo.corpus import join_clips
        d = Path({str(tmp_path)!r})
        clips = [write_clip(d / f"c{{i}}.mp4", duration=1.0, fps=24.0, size=(640, 480)) for i in range(8)]
        def peak_kb():  # VmHWM: this process's own peak (ru_maxrss would carry the forking parent's)
            with open("/proc/self/status") as f:
                return next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))
        join_clips(clips[:1], d / "warm.mp4")  # the encoder's own memory, once
        before = peak_kb()
        spans = join_clips(clips, d / "joined.mp4")
        print(len(spans), spans[-1][1], (peak_kb() - before) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    n, end, growth_mb = out.stdout.split()
    assert int(n) == 8 and float(end) == pytest.approx(8.0)
    assert float(growth_mb) < 60, f"peak RSS grew {growth_mb} MB while joining: frames are held, not streamed"


def test_join_clips_refuses_what_it_cannot_join_in_one_line(tmp_path):
    from pipeline.testing.av_files import write_clip

    with pytest.raises(ValueError, match="no clips to join"):
        join_clips([], tmp_path / "none.mp4")
    small = write_clip(tmp_path / "small.mp4", duration=0.3, size=(64, 48))
    large = write_clip(tmp_path / "large.mp4", duration=0.3, size=(96, 64))
    with pytest.raises(ValueError, match="the first clip is"):
        join_clips([small, large], tmp_path / "mixed.mp4")
