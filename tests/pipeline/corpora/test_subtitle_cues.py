"""Subtitle cues as utterances (pipeline/corpora/subtitles.py): speakers from voice tags or NAME:, markup,
order."""

from __future__ import annotations

import pytest

from pipeline.corpora.subtitles import (
    UNKNOWN_SPEAKER,
    Cue,
    SubtitleError,
    read_subtitles,
    split_speaker,
    write_srt,
)

VTT = """WEBVTT

00:00:03.100 --> 00:00:04.000
Carl: What's up?
second line

00:00:00.000 --> 00:00:01.500
<v Ann>Hello there, <i>how</i> are you?</v>

00:00:01.600 --> 00:00:03.000
<v.loud Bob Smith>I'm fine!

00:00:04.100 --> 00:00:05.000
<i>At 10: we leave.</i>

00:00:05.000 --> 00:00:05.500
<b></b>
"""

SRT = """1
00:00:00,000 --> 00:00:01,200
ROSS: We were on a break!

2
00:00:01,300 --> 00:00:02,000
{\\an8}No, we weren't.

3
00:00:02,500 --> 00:00:02,500
Dr. Who: Zero-length cue.
"""


def test_vtt_voice_tags_name_prefix_unknown_markup_and_time_order(tmp_path):
    path = tmp_path / "talk.vtt"
    path.write_text(VTT, encoding="utf-8")
    cues = read_subtitles(path)
    assert [c.speaker for c in cues] == ["Ann", "Bob Smith", "Carl", UNKNOWN_SPEAKER]  # empty cue skipped
    assert [c.text for c in cues] == [
        "Hello there, how are you?",
        "I'm fine!",
        "What's up? second line",
        "At 10: we leave.",
    ]
    assert [(c.start, c.end) for c in cues] == [(0.0, 1.5), (1.6, 3.0), (3.1, 4.0), (4.1, 5.0)]


def test_srt_prefix_override_tags_and_zero_length_cue(tmp_path):
    path = tmp_path / "talk.srt"
    path.write_text(SRT, encoding="utf-8")
    cues = read_subtitles(path)
    assert cues[0] == Cue(0.0, 1.2, "ROSS", "We were on a break!")
    assert cues[1] == Cue(1.3, 2.0, UNKNOWN_SPEAKER, "No, we weren't.")
    assert cues[2].speaker == "Dr. Who" and cues[2].end > cues[2].start == 2.5


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Here's the thing: no", (None, "Here's the thing: no")),
        ("Mary-Jane: ok", ("Mary-Jane", "ok")),
        ("O'Neil: hey", ("O'Neil", "hey")),
        ("ratio 3:2 is fine", (None, "ratio 3:2 is fine")),
    ],
)
def test_name_prefix_only_for_capitalised_names(text, expected):
    assert split_speaker(text) == expected


def test_write_srt_reads_back(tmp_path):
    cues = [Cue(0.0, 1.0, "Ann", "Hi."), Cue(1.0, 2.25, UNKNOWN_SPEAKER, "Who's there?")]
    assert read_subtitles(write_srt(tmp_path / "x.srt", cues)) == cues


def test_bad_files_give_one_line_errors(tmp_path):
    with pytest.raises(SubtitleError, match="no such subtitle file"):
        read_subtitles(tmp_path / "missing.srt")
    empty = tmp_path / "empty.vtt"
    empty.write_text("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n<i></i>\n", encoding="utf-8")
    with pytest.raises(SubtitleError, match="no cue with text"):
        read_subtitles(empty)
    binary = tmp_path / "clip.srt"
    binary.write_bytes(b"\x00\xff\xfe garbage \x89PNG")
    with pytest.raises(SubtitleError) as err:
        read_subtitles(binary)
    assert "\n" not in str(err.value)
