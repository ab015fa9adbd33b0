"""Old vs new media settings: CPU cost of the media stage and what changes in what the model sees (JSON).

Run from the repository root (a few minutes on 2 cores)::

    .venv/bin/python bench/media_settings.py [--probe-clips 8] [--corpus DIR]

Issue 20 item 6 made the media stage cheaper with settings that alter which frames are decoded and
which faces are found (:class:`pipeline.utterance.process.MediaConfig`: ``mtcnn_factor``,
``decode_skip_nonref``, ``scene_halving``). This compares :data:`OLD` (the settings before) with the
defaults, on the same clips, with the same random encoders (seed 0, the extraction's ``random``):

* ``clips_720p``: 3 s 1280x720 H.264 clips with the astronaut face at four sizes and positions (the
  two of tests/pipeline/utterance/test_media_speed_same_faces.py and two smaller faces);
* ``matrix``: 0.5 s clips in several codecs and containers of the decode matrix
  (tests/pipeline/decode/test_decode_matrix.py), 160x120 and one 1920x1080 60 fps;
* ``corpus`` (with ``--corpus``): every clip under that folder (e.g. bench/extract_throughput.py's);
* ``face_size_sweep``: MTCNN alone on frames with the face at 24 sizes (10-70 % of 720 px): the sizes
  whose face is lost with each setting, and the largest shift of the best box (fraction of its height);
* ``probe``: a dev-split linear probe (:func:`pipeline.encoders.probe.probe_weighted_f1`) on the
  visual embeddings of generated clips of 4 face classes (the face as is, mirrored, colour channels
  swapped, darkened), with random backgrounds, face sizes and positions; weighted F1 with each setting.

Per set: per clip, the cosine between the old and the new weighted face embedding (the face half of
the visual vector) and between the scene halves; the number of faces kept; CPU seconds of the media
stage per clip (``time.thread_time``, one torch thread). The check of the issue: face cosine >= 0.99
on the 720p clips and the matrix, probe F1 not lower.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.utterance.process import MEDIA_FIELDS_BEFORE

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: The media settings before issue 20 item 6 (the other fields keep their defaults).
OLD = MEDIA_FIELDS_BEFORE

X264 = {"preset": "ultrafast", "threads": "1"}
#: A part of the decode matrix: name -> write_av arguments.
MATRIX = {
    "h264_aac.mp4": {"vcodec": "libx264", "vopts": X264},
    "h264_aac.ts": {"vcodec": "libx264", "fmt": "mpegts", "vopts": X264},
    "h264_1080p60_aac.mp4": {"vcodec": "libx264", "vopts": X264, "size": (1920, 1080), "fps": 60},
    "hevc_aac.mp4": {
        "vcodec": "libx265",
        "vopts": {"preset": "ultrafast", "x265-params": "log-level=error:pools=1:frame-threads=1"},
    },
    "vp9_opus.webm": {
        "vcodec": "libvpx-vp9",
        "acodec": "libopus",
        "vopts": {"deadline": "realtime", "cpu-used": "8", "threads": "1"},
    },
    "mpeg4_mp3.avi": {"vcodec": "mpeg4", "acodec": "libmp3lame"},
    "mpeg2_mp2.ts": {"vcodec": "mpeg2video", "acodec": "mp2", "fmt": "mpegts"},
    "mjpeg_pcm.avi": {"vcodec": "mjpeg", "acodec": "pcm_s16le", "pix_fmt": "yuvj420p"},
    "h264_aac_phone_-90.mp4": {"vcodec": "libx264", "vopts": X264, "rotation": -90},
}
#: (face_scale, face_pos) of the 720p clips.
FACES_720P = [(0.5, (0.5, 0.5)), (0.3, (0.3, 0.4)), (0.2, (0.7, 0.45)), (0.15, (0.4, 0.35))]


def _utterance(clip: Path, label: str | None = None):
    from pipeline.testing.utterances import make_utterance

    return make_utterance(split="dev", utterance_id=clip.stem, label=label, clip=str(clip))


def make_720p(folder: Path) -> list:
    from pipeline.testing.av_files import write_clip

    return [
        _utterance(
            write_clip(folder / f"face{i}.mp4", duration=3.0, size=(1280, 720), face_scale=s, face_pos=p)
        )
        for i, (s, p) in enumerate(FACES_720P)
    ]


def make_matrix(folder: Path) -> list:
    from pipeline.testing.encodings import face_frame, write_av

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, spec in MATRIX.items():
        kw = dict(spec)
        size, fps = kw.pop("size", (160, 120)), kw.pop("fps", 24)
        kw.setdefault("acodec", "aac")
        sideways = kw.get("rotation") == -90

        def frame(i: int, size=size, sideways=sideways) -> np.ndarray:
            if not sideways:
                return face_frame(i, size, face_scale=0.7)
            f = face_frame(i, (size[1], size[0]), face_scale=0.6)
            return np.ascontiguousarray(np.rot90(f, k=1))

        path = folder / name
        if not path.exists():
            write_av(path, seconds=0.5, fps=fps, size=size, frame=frame, **kw)
        out.append(_utterance(path))
    return out


#: Probe classes: the face patch as is, or one colour channel raised by :data:`PROBE_TINT`.
PROBE_CLASSES = ("plain", "red", "green", "blue")
#: Gain of the tinted channel; each clip's face also gets a random brightness in [0.75, 1.25] and is
#: mirrored at random, so the classes are not trivially apart (with random encoders).
PROBE_TINT = 1.04


def make_probe(folder: Path, per_class: int, seed: int = 0) -> list:
    """``per_class`` 1 s 640x360 clips of each face class, random background, size, position, brightness."""
    import cv2

    from pipeline.testing.av_files import encode_media
    from pipeline.testing.signals import astronaut_face

    rng = np.random.default_rng(seed)
    face = astronaut_face()
    out = []
    for k in range(per_class):
        for c, name in enumerate(PROBE_CLASSES):
            bg = rng.integers(0, 256, 3).astype(np.uint8)
            h = int(rng.uniform(0.3, 0.6) * 360)
            patch = cv2.resize(
                face, (round(face.shape[1] * h / face.shape[0]), h), interpolation=cv2.INTER_AREA
            )
            gain = np.full(3, rng.uniform(0.75, 1.25))
            if c > 0:
                gain[c - 1] *= PROBE_TINT
            patch = np.clip(patch * gain, 0, 255).astype(np.uint8)
            if rng.random() < 0.5:
                patch = np.ascontiguousarray(patch[:, ::-1])
            cx, cy = rng.uniform(0.3, 0.7) * 640, rng.uniform(0.4, 0.6) * 360

            def frame(i: int, bg=bg, patch=patch, cx=cx, cy=cy) -> np.ndarray:
                f = np.empty((360, 640, 3), np.uint8)
                f[:] = bg
                ph, pw = patch.shape[:2]
                x0 = int(round(cx + 8 * np.cos(i / 4) - pw / 2))
                y0 = int(round(cy + 8 * np.sin(i / 4) - ph / 2))
                xs, ys = max(0, x0), max(0, y0)
                xe, ye = min(640, x0 + pw), min(360, y0 + ph)
                f[ys:ye, xs:xe] = patch[ys - y0 : ye - y0, xs - x0 : xe - x0]
                return f

            path = folder / f"probe_{name}_{k}.mp4"
            clip = (
                path
                if path.exists()
                else encode_media(
                    path,
                    frames=frame,
                    n_frames=24,
                    fps=24,
                    size=(640, 360),
                    audio=None,
                    sample_rate=16000,
                )
            )
            out.append(_utterance(clip, name))
    return out


def face_size_sweep(old, new, n: int = 24) -> dict:
    """MTCNN alone on ``n`` 1280x720 frames with the face at sizes from 10 % to 70 % of the height.

    Which sizes lose their face (probability >= ``min_face_prob``) with each setting, and how far the
    new best box moves from the old one, as a fraction of the face height.
    """
    from pipeline.testing.faces import shared_face_detector
    from pipeline.testing.signals import render_face_frame
    from pipeline.utterance.visual import select_faces

    sizes = np.round(np.geomspace(0.1, 0.7, n), 4)
    frames = np.stack(
        [
            render_face_frame(
                i,
                size=(1280, 720),
                face=True,
                face_scale=float(s),
                face_pos=(0.3 + 0.2 * (i % 3), 0.5),
                background=(40 + 5 * i, 60, 90),
            )
            for i, s in enumerate(sizes)
        ]
    )
    best, missed = {}, {}
    for name, cfg in (("old", old), ("new", new)):
        found = shared_face_detector(cfg).detect(frames)
        keep = [select_faces(b, p, cfg.min_face_prob, cfg.max_faces) for b, p in found]
        missed[name] = [float(s) for s, k in zip(sizes, keep, strict=True) if len(k) == 0]
        best[name] = [b[k[:1]] for (b, _), k in zip(found, keep, strict=True)]
    shift = [
        float(np.abs(a - b).max() / (a[0, 3] - a[0, 1]))
        for a, b in zip(best["old"], best["new"], strict=True)
        if len(a) and len(b)
    ]
    return {
        "face_heights": [float(sizes[0]), float(sizes[-1])],
        "missed": missed,
        "max_box_shift": round(max(shift), 4),
    }


def run_media(utts: list, cfg) -> tuple[list[dict], float]:
    """Media rows of ``utts`` with ``cfg`` and the CPU seconds per clip."""
    from pipeline.testing.faces import shared_face_detector
    from pipeline.utterance.process import process_utterance

    det = shared_face_detector(cfg)
    det.detect(np.zeros((1, 64, 64, 3), np.uint8))  # first-call set-up out of the timing
    t = time.thread_time()
    rows = [process_utterance(u, cfg, det)[0] for u in utts]
    return rows, (time.thread_time() - t) / max(1, len(utts))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return float(na == nb)
    return float(a @ b / (na * nb))


def compare(utts: list, old, new, encs) -> dict:
    """Per clip: face and scene cosines old vs new, faces kept; CPU s per clip of each setting."""
    from pipeline.utterance.embed import visual_embeddings

    rows_old, cpu_old = run_media(utts, old)
    rows_new, cpu_new = run_media(utts, new)
    d = encs.face.config.embed_dim
    emb_old = visual_embeddings(encs.face, encs.scene, rows_old, old.n_frames, 32)[0]
    emb_new = visual_embeddings(encs.face, encs.scene, rows_new, new.n_frames, 32)[0]
    clips = {}
    for u, a, b, ra, rb in zip(utts, emb_old, emb_new, rows_old, rows_new, strict=True):
        clips[Path(u.clip).name] = {
            "face_cos": round(_cos(a[:d], b[:d]), 5),
            "scene_cos": round(_cos(a[d:], b[d:]), 5),
            "faces_old_new": [len(ra["faces"]), len(rb["faces"])],
            "scene_max_abs_diff": int(np.abs(ra["scenes"].astype(int) - rb["scenes"].astype(int)).max())
            if ra["scenes"].shape == rb["scenes"].shape
            else None,
        }
    faces = [c["face_cos"] for c in clips.values()]
    scenes = [c["scene_cos"] for c in clips.values()]
    return {
        "clips": clips,
        "min_face_cos": min(faces),
        "min_scene_cos": min(scenes),
        "media_cpu_s_per_clip": {"old": round(cpu_old, 4), "new": round(cpu_new, 4)},
        "embeddings": (emb_old, emb_new),
    }


def probe(utts: list, emb_old: np.ndarray, emb_new: np.ndarray, d: int) -> dict:
    """Dev weighted F1 of a logistic probe (first half of each class trains, the rest is dev)."""
    from pipeline.encoders.probe import probe_weighted_f1

    y = np.array([PROBE_CLASSES.index(u.label) for u in utts])
    k = len(utts) // len(PROBE_CLASSES)
    train = np.arange(len(utts)) < (k // 2) * len(PROBE_CLASSES)  # make_probe interleaves the classes
    out = {}
    for name, emb in (("old", emb_old), ("new", emb_new)):
        for part, cols in (("face", slice(0, d)), ("visual", slice(None))):
            x = emb[:, cols]
            out[f"{part}_{name}"] = round(probe_weighted_f1(x[train], y[train], x[~train], y[~train]), 4)
    return out


def _field(cls, kv: str) -> tuple[str, object]:
    """``"name=value"`` -> (name, value of the field's type); an unknown name gets one clear line."""
    name, _, value = kv.partition("=")
    types = {f.name: type(f.default) for f in dataclasses.fields(cls)}
    if name not in types:
        raise SystemExit(f"--new {kv}: MediaConfig has no field {name!r}")
    if types[name] is bool:
        return name, value.lower() in ("1", "true", "yes")
    return name, types[name](value)


def main() -> None:
    import torch

    from pipeline.encoders.checkpoint import load_encoder_set
    from pipeline.utterance.process import MediaConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probe-clips", type=int, default=8, help="probe clips per class (half train, half dev)")
    p.add_argument("--corpus", type=Path, default=None, help="also compare on every .mp4 under this folder")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    p.add_argument(
        "--new",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a MediaConfig field of 'new' (repeatable)",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    new = dataclasses.replace(MediaConfig(), **dict(_field(MediaConfig, kv) for kv in args.new))
    old = dataclasses.replace(MediaConfig(), **OLD)
    encs = load_encoder_set("random")
    work = args.out or Path(tempfile.mkdtemp(prefix="m2f-media-settings-"))
    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "old": OLD,
        "new": {k: getattr(new, k) for k in {**OLD, **dict(kv.split("=", 1) for kv in args.new)}},
    }
    sets = {"clips_720p": make_720p(work / "720p"), "matrix": make_matrix(work / "matrix")}
    if args.corpus is not None:
        sets["corpus"] = [_utterance(c) for c in sorted(args.corpus.rglob("*.mp4"))]
    for name, utts in sets.items():
        res = compare(utts, old, new, encs)
        res.pop("embeddings")
        result[name] = res
    result["face_size_sweep"] = face_size_sweep(old, new)
    if args.probe_clips > 0:
        utts = make_probe(work / "probe", args.probe_clips)
        res = compare(utts, old, new, encs)
        emb_old, emb_new = res.pop("embeddings")
        res.pop("clips")
        res["probe_weighted_f1"] = probe(utts, emb_old, emb_new, encs.face.config.embed_dim)
        result["probe"] = res
    result["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
