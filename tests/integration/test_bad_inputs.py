"""The bad-input suite (issue 11): each odd or broken input through the real CLI (``python -m cli``).

Per-utterance faults (missing, corrupt or silent clips, no face, a NaN sample, a resolution change, a
span too short to embed) share one custom corpus and one extract run: the run must end with exit 0,
keep every utterance, mark the bad modality missing and name the fault in a ``problems.jsonl``.
Faults of the whole input (the CSV, --root, the weights, the features file) must stop the command
with exit 1 and one line, never a traceback, and before any work that would be lost.

The table of outcomes is printed at the end of the module (``pytest -s``), and written to the file
named by ``M2F_BAD_INPUTS_TABLE`` when it is set.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.testing.av_files import write_clip, write_truncated
from pipeline.testing.encodings import write_av, write_float_wav, write_resolution_change
from pipeline.testing.features_h5 import write_features, xor_rows
from pipeline.testing.signals import tone
from pipeline.testing.text_model import make_tiny_roberta

REPO = Path(__file__).resolve().parents[2]
HEADER = "dialogue_id,utterance_index,speaker,text,label,clip,start,end,split"
TABLE: list[tuple[str, str, str, str]] = []  # input, exit code, message (stderr's last line), problem line


def m2f(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or REPO,
        timeout=600,
    )


def last_line(res: subprocess.CompletedProcess) -> str:
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    return lines[-1] if lines else ""


def assert_one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 1, no traceback, and an ``Error:`` line holding every needle; returns that line."""
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.returncode == 1, (res.returncode, res.stderr[-3000:])
    line = last_line(res)
    assert line.startswith("Error: "), res.stderr[-3000:]
    for n in needles:
        assert n in line, (n, line)
    return line


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    rows = ["| input | exit | message (last stderr line) | problem line |", "|---|---|---|---|"]
    for name, rc, msg, prob in TABLE:
        cell = (msg.replace("|", "/")[:220], prob.replace("|", "/")[:220])
        rows.append(f"| {name} | {rc} | {cell[0]} | {cell[1]} |")
    text = "\n".join(rows) + "\n"
    print("\n" + text)
    if os.environ.get("M2F_BAD_INPUTS_TABLE"):
        Path(os.environ["M2F_BAD_INPUTS_TABLE"]).write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory) -> Path:
    return make_tiny_roberta(tmp_path_factory.mktemp("text") / "tiny")


# ------------------------------------------------------------------------------ per-utterance faults
#: utterance index -> (input name, clip, start, end)
CLIPS = {
    0: ("good clip", "clips/good.mp4", "", ""),
    1: ("missing clip", "clips/missing.mp4", "", ""),
    2: ("corrupt clip (truncated mp4)", "clips/truncated.mp4", "", ""),
    3: ("clip with no audio track", "clips/silent.mp4", "", ""),
    4: ("clip without faces", "clips/noface.mp4", "", ""),
    5: ("float WAV with a NaN sample", "clips/nan.wav", "", ""),
    6: ("MPEG-TS with a mid-stream resolution change", "clips/call.ts", "", ""),
    7: ("span of 0.1 ms (shorter than one log-mel frame)", "clips/good.mp4", "0.0", "0.0001"),
    8: ("good clip after the bad ones", "clips/good.mp4", "", ""),
}


def write_bad_clips(folder: Path) -> None:
    clips = folder / "clips"
    clips.mkdir(parents=True)
    good = write_clip(clips / "good.mp4", duration=1.0, size=(320, 240), face_scale=0.6)
    write_truncated(good, clips / "truncated.mp4", keep_fraction=0.5)
    write_av(clips / "silent.mp4", acodec=None, seconds=1.0, size=(160, 120))
    write_clip(clips / "noface.mp4", duration=1.0, size=(320, 240), face=False)
    wave = tone(1.0, 16000, 220.0, amplitude=0.3, noise=0.0)
    wave[8000] = np.nan
    write_float_wav(clips / "nan.wav", wave)
    write_resolution_change(clips / "call.ts")


def write_csv(path: Path, label0: str = "joy") -> Path:
    lines = [HEADER]
    for i, (_, clip, start, end) in CLIPS.items():
        lines.append(
            f"call,{i},Ann,line number {i},{label0 if i == 0 else 'neutral'},{clip},{start},{end},train"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def problems_of(path: Path) -> dict[str, list[str]]:
    """utt_id -> problem texts, from a media or an embed problems.jsonl."""
    out: dict[str, list[str]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            d = json.loads(line)
            out.setdefault(d["utt_id"], []).extend(d["problems"] if "problems" in d else [d["problem"]])
    return out


def test_per_utterance_faults_are_isolated_and_a_corrected_csv_is_used(tmp_path, tiny_text, dask_cli_cluster):
    corpus = tmp_path / "corpus"
    write_bad_clips(corpus)
    csv = write_csv(corpus / "corpus.csv")
    args = [
        "extract",
        "--dataset",
        "custom",
        "--root",
        str(csv),
        "--modalities",
        "text,audio,visual",
        "--encoders",
        "random",
        "--text-model",
        str(tiny_text),
        *dask_cli_cluster.cli_args(),  # the faults must not break a long-lived cluster's workers
        "--cache",
        str(tmp_path / "cache"),
    ]
    res = m2f(*args)
    assert "Traceback" not in res.stderr, res.stderr[-4000:]
    assert res.returncode == 0, res.stderr[-4000:]
    features = Path(res.stdout.strip().splitlines()[-1])
    media_problems = next((tmp_path / "cache" / "custom").glob("media-*/problems.jsonl"))
    probs = problems_of(media_problems)
    probs_embed = problems_of(features.parent / "problems.jsonl")
    with h5py.File(features, "r") as f:
        g = f["train"]
        ids = [x.decode() for x in g["utt_id"][()]]
        flags = {
            k: dict(zip(ids, g[k][()].tolist(), strict=True))
            for k in ("has_text", "has_audio", "has_visual", "has_face")
        }
        labels = dict(zip(ids, [x.decode() for x in g["label"][()]], strict=True))
        for k in ("text_emb", "audio_emb", "visual_emb"):
            assert np.isfinite(g[k][()]).all()
    uid = {i: f"custom/train/diacall_utt{i}" for i in CLIPS}
    assert len(ids) == len(CLIPS)  # every utterance kept, the bad ones too

    def outcome(i: int) -> dict:
        return {k: flags[k][uid[i]] for k in flags}

    good = {"has_text": True, "has_audio": True, "has_visual": True, "has_face": True}
    assert outcome(0) == good and outcome(8) == good
    assert not outcome(1)["has_audio"] and not outcome(1)["has_visual"]
    assert not outcome(2)["has_audio"] and not outcome(2)["has_visual"]
    assert outcome(3)["has_visual"] and not outcome(3)["has_audio"]
    assert outcome(4)["has_visual"] and not outcome(4)["has_face"] and outcome(4)["has_audio"]
    assert not outcome(5)["has_audio"] and not outcome(5)["has_visual"]
    assert outcome(6)["has_visual"] and outcome(6)["has_audio"]
    assert not outcome(7)["has_audio"] and outcome(7)["has_text"]
    for i in (1, 2, 3, 5):
        assert probs.get(uid[i]), (i, probs)
    assert any("no clip" in p for p in probs[uid[1]]) and any("non-finite" in p for p in probs[uid[5]])
    assert any("cannot open" in p for p in probs[uid[2]]) and any("no face" in p for p in probs[uid[4]])
    assert any("shorter than one" in p for p in probs[uid[7]]), probs
    for i, (name, *_) in CLIPS.items():
        lines = probs.get(uid[i], []) + probs_embed.get(uid[i], [])
        shown = "; ".join(lines) if lines else "-"
        TABLE.append(
            (
                name,
                "0",
                f"{', '.join(k for k, v in outcome(i).items() if not v) or 'all'}"
                f"{' missing' if not all(outcome(i).values()) else ' present'}",
                shown,
            )
        )

    # the run used a manifest saved beside its features
    saved = [json.loads(x) for x in (features.parent / "manifest.jsonl").read_text().splitlines()]
    assert [s["label"] for s in saved][:1] == ["joy"]

    # a corrected label is seen by the next run (prepare is re-run; the old manifest is not reused)
    write_csv(csv, label0="anger")
    res2 = m2f(*args)
    assert res2.returncode == 0 and "Traceback" not in res2.stderr, res2.stderr[-4000:]
    features2 = Path(res2.stdout.strip().splitlines()[-1])
    with h5py.File(features2, "r") as f:
        labels2 = dict(
            zip(
                [x.decode() for x in f["train"]["utt_id"][()]],
                [x.decode() for x in f["train"]["label"][()]],
                strict=True,
            )
        )
    assert labels[uid[0]] == "joy" and labels2[uid[0]] == "anger"
    assert json.loads((features2.parent / "manifest.jsonl").read_text().splitlines()[0])["label"] == "anger"
    TABLE.append(
        (
            "label corrected in the CSV after a run",
            "0",
            "next run uses the new label (features, saved manifest.jsonl)",
            "-",
        )
    )


# --------------------------------------------------------------------------------- whole-input faults
def _csv_with(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    (tmp_path / "c").mkdir()
    path = tmp_path / "c" / "corpus.csv"
    path.write_text(header + "\n" + body, encoding="utf-8")
    return path


BAD_CSVS = {
    "NUL in the CSV": (HEADER, "call,0,Ann,hi\x00there,joy,a.mp4,,,train\n", "NUL"),
    "field > 128 KiB": (HEADER, 'call,0,Ann,"' + "x" * (140 * 1024) + ",joy,a.mp4,,,train\n", "131072"),
    "end=inf": (HEADER, "call,0,Ann,hi,joy,a.mp4,0,inf,train\n", "end"),
    "duplicated header": (HEADER + ",text", "call,0,Ann,hi,joy,a.mp4,,,train,again\n", "text"),
}


@pytest.mark.parametrize("name", list(BAD_CSVS))
def test_a_bad_csv_stops_extract_with_one_line_before_any_work(tmp_path, name):
    header, body, needle = BAD_CSVS[name]
    csv = _csv_with(tmp_path, body, header)
    res = m2f(
        "extract",
        "--dataset",
        "custom",
        "--root",
        str(csv),
        "--modalities",
        "audio,visual",
        "--encoders",
        "random",
        "--workers",
        "1",
        "--cache",
        str(tmp_path / "cache"),
    )
    line = assert_one_line_error(res, str(csv))
    assert needle.lower() in line.lower()
    assert not list((tmp_path / "cache").glob("custom/media-*"))
    TABLE.append((name, str(res.returncode), line, "-"))


def test_wrong_root_is_one_line(tmp_path):
    res = m2f(
        "extract",
        "--dataset",
        "meld",
        "--root",
        str(tmp_path / "nowhere"),
        "--modalities",
        "text",
        "--workers",
        "1",
        "--cache",
        str(tmp_path / "cache"),
    )
    line = assert_one_line_error(res, "nowhere")
    TABLE.append(("wrong --root", str(res.returncode), line, "-"))


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    write_clip(root / "a.mp4", duration=0.5, size=(160, 120))
    path = root / "corpus.csv"
    path.write_text(HEADER + "\ncall,0,Ann,hi,joy,a.mp4,,,train\ncall,1,Bob,yes,joy,a.mp4,,,train\n")
    return path


def test_missing_text_model_is_one_line(tmp_path, small_corpus):
    res = m2f(
        "extract",
        "--dataset",
        "custom",
        "--root",
        str(small_corpus),
        "--modalities",
        "text",
        "--text-model",
        "./missing",
        "--workers",
        "1",
        "--cache",
        str(tmp_path / "cache"),
        cwd=tmp_path,
    )
    line = assert_one_line_error(res, "--text-model ./missing", "no such folder")
    TABLE.append(("--text-model ./missing", str(res.returncode), line, "-"))


def _encoder_folder(folder: Path) -> Path:
    from pipeline.encoders.checkpoint import save_encoder
    from pipeline.encoders.network import build_encoder

    folder.mkdir(parents=True)
    for i, kind in enumerate(("audio", "face", "scene")):
        save_encoder(build_encoder(kind, seed=i), folder / f"{kind}.pt")
    return folder


@pytest.mark.parametrize(
    "name", ["random bytes in face.pt", "a pickle disguised as face.pt", "NaN weights in face.pt"]
)
def test_bad_encoder_checkpoint_is_found_before_the_media_stage(tmp_path, small_corpus, name):
    import torch

    folder = _encoder_folder(tmp_path / "enc")
    face = folder / "face.pt"
    if name.startswith("random"):
        face.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif name.startswith("a pickle"):
        face.write_bytes(pickle.dumps(Namespace(format="m2f-encoder-1")))
    else:
        ckpt = torch.load(face, weights_only=True)
        next(v for v in ckpt["state_dict"].values() if v.is_floating_point()).view(-1)[0] = float("nan")
        torch.save(ckpt, face)
    res = m2f(
        "extract",
        "--dataset",
        "custom",
        "--root",
        str(small_corpus),
        "--modalities",
        "audio,visual",
        "--encoders",
        str(folder),
        "--workers",
        "1",
        "--cache",
        str(tmp_path / "cache"),
    )
    line = assert_one_line_error(res, str(face))
    assert not list((tmp_path / "cache").glob("custom/media-*")), "the media stage ran first"
    TABLE.append((name + " (--encoders)", str(res.returncode), line, "-"))


# ------------------------------------------------------------------------------- train-dialog inputs
def _features(tmp_path: Path) -> Path:
    lengths = {"train": [4] * 6, "dev": [4] * 2, "test": [4] * 2}
    return write_features(tmp_path / "features.h5", "custom", lengths, xor_rows({"t": 8, "a": 4, "v": 6}))


def _nan_in_text(path: Path) -> str:
    with h5py.File(path, "r+") as f:
        f["train"]["text_emb"][3, 2] = np.nan
    return "not finite"


def _drop_audio(path: Path) -> str:
    with h5py.File(path, "r+") as f:
        del f["dev"]["audio_emb"]
    return "audio_emb"


def _not_hdf5(path: Path) -> str:
    path.write_text("utt_id,text\n1,hello\n")
    return "HDF5"


FEATURE_FAULTS = {
    "features.h5 with NaN in text_emb": _nan_in_text,
    "features.h5 missing audio_emb": _drop_audio,
    "non-HDF5 features file": _not_hdf5,
}


@pytest.mark.parametrize("name", list(FEATURE_FAULTS))
def test_bad_features_stop_train_dialogue_with_one_line(tmp_path, name):
    path = _features(tmp_path)
    needle = FEATURE_FAULTS[name](path)
    res = m2f(
        "train-dialog",
        "--features",
        str(path),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--threads",
        "1",
        "--no-progress",
    )
    line = assert_one_line_error(res, str(path.name))
    assert needle.lower() in line.lower(), line
    TABLE.append((name + " (train-dialog)", str(res.returncode), line, "-"))
