"""`m2f live` (JSON lines through a real process) and `m2f serve` (a real uvicorn server on loopback,
a real HTTP client): conversations end to end, bad inputs answered in one line while serving goes on,
concurrent conversations kept apart, a bidirectional model refused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from pipeline.corpora.sample import prepare_sample
from pipeline.corpora.subtitles import Cue, write_srt
from pipeline.testing.av_files import write_truncated
from trainer.apply.live import LiveModel
from trainer.demo.corpus import join_clips

ROOT = Path(__file__).resolve().parents[2]
M2F = [sys.executable, "-m", "cli"]


def _test_utterances():
    return [u for u in prepare_sample() if u.split == "test"]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


# --- m2f live -------------------------------------------------------------------------------------------


def test_live_jsonl_predicts_each_line_and_survives_a_bad_one(live_models, tmp_path):
    _, models = live_models
    utts = _test_utterances()[:3]
    lines = [
        json.dumps({"dialogue": "a", "speaker": u.speaker, "text": u.text, "clip": u.clip}) for u in utts
    ]
    lines.insert(1, "{not json")
    lines.insert(2, json.dumps({"dialogue": "b", "speaker": "Ann", "text": "hello there"}))
    res = subprocess.run(
        [*M2F, "live", "--model", str(models["causal"])],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    out = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(out) == len(lines)
    assert out[1] == {"line": 2, "error": out[1]["error"]} and "not JSON" in out[1]["error"]
    a = [o for o in out if o.get("dialogue") == "a"]
    assert [o["position"] for o in a] == [0, 1, 2] and out[2]["dialogue"] == "b" and out[2]["position"] == 0
    # the same predictions as the Python API gives
    with LiveModel.load(models["causal"]) as live:
        talk = live.conversation("a")
        for u, o in zip(utts, a, strict=True):
            p = talk.add(speaker=u.speaker, text=u.text, clip=u.clip)
            assert o["predicted"] == p.predicted and o["has_audio"] is True
            np.testing.assert_allclose(
                [o[f"p_{c}"] for c in live.class_names],
                [p.probabilities[c] for c in live.class_names],
                atol=1e-5,
            )


def test_live_refuses_a_bidirectional_model_in_one_line(live_models, tmp_path):
    _, models = live_models
    res = subprocess.run(
        [*M2F, "live", "--model", str(models["bidirectional"])],
        input="",
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "--allow-revisions" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_live_replay_keeps_pace(live_models, tmp_path):
    _, models = live_models
    utts = _test_utterances()
    spans = join_clips([u.clip for u in utts], tmp_path / "talk.mp4")
    cues = [Cue(s, e, u.speaker, u.text) for u, (s, e) in zip(utts, spans, strict=True)]
    srt = write_srt(tmp_path / "talk.srt", cues)
    cmd = [
        *M2F,
        "live",
        "--model",
        str(models["causal"]),
        "--replay",
        str(tmp_path / "talk.mp4"),
        "--subtitles",
        str(srt),
        "--speed",
        "4",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert res.returncode == 0, res.stderr
    out = [json.loads(x) for x in res.stdout.splitlines()]
    assert [o["text"] for o in out] == [u.text for u in utts]
    assert all(o["has_audio"] and o["lag_s"] >= 0 for o in out)
    assert "lag p50" in res.stderr


# --- m2f serve ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(live_models, tmp_path_factory):
    _, models = live_models
    port = _free_port()
    log = open(tmp_path_factory.mktemp("serve") / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [*M2F, "serve", "--model", str(models["causal"]), "--port", str(port), "--max-upload-mb", "0.2"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _post_clip(url: str, dialogue: str, u, **extra) -> requests.Response:
    with open(u.clip, "rb") as f:
        return requests.post(
            f"{url}/v1/conversations/{dialogue}/utterances",
            timeout=120,
            data={"speaker": u.speaker, "text": u.text, **extra},
            files={"clip": ("clip.mp4", f, "video/mp4")},
        )


def test_a_conversation_end_to_end(server):
    health = requests.get(f"{server}/health", timeout=10).json()
    assert health["causal"] is True and health["modalities"] == ["text", "audio", "visual"]
    assert requests.get(f"{server}/docs", timeout=10).status_code == 200
    paths = requests.get(f"{server}/openapi.json", timeout=10).json()["paths"]
    assert "/v1/conversations/{dialogue}/utterances" in paths
    u0, u1 = _test_utterances()[:2]
    r = requests.post(
        f"{server}/v1/conversations/c1/utterances", json={"speaker": u0.speaker, "text": u0.text}, timeout=60
    )
    assert r.status_code == 200, r.text
    assert r.json()["position"] == 0 and r.json()["has_text"] and not r.json()["has_audio"]
    r = _post_clip(server, "c1", u1)
    assert r.status_code == 200, r.text
    assert r.json()["position"] == 1 and r.json()["has_audio"] and r.json()["has_visual"]
    got = requests.get(f"{server}/v1/conversations/c1", timeout=10).json()
    assert [p["text"] for p in got["predictions"]] == [u0.text, u1.text]
    assert requests.delete(f"{server}/v1/conversations/c1", timeout=10).status_code == 204
    assert requests.get(f"{server}/v1/conversations/c1", timeout=10).status_code == 404


def test_bad_requests_get_a_4xx_line_and_serving_goes_on(server, tmp_path):
    u = _test_utterances()[0]
    url = f"{server}/v1/conversations/bad/utterances"
    truncated = write_truncated(u.clip, tmp_path / "cut.mp4", keep_fraction=0.3)
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(300_000))
    cases = {
        "not media": ({"files": {"clip": ("x.mp4", b"just some text, not a video" * 10, "video/mp4")}}, 415),
        "truncated": ({"files": {"clip": ("cut.mp4", truncated.read_bytes(), "video/mp4")}}, None),
        "over the cap": ({"files": {"clip": ("big.mp4", big.read_bytes(), "video/mp4")}}, 413),
        "wrong type": ({"data": "speaker=Ann", "headers": {"content-type": "text/plain"}}, 415),
        "a server path": ({"json": {"speaker": "Ann", "text": "hi", "clip": "/etc/passwd"}}, 422),
        "no content": ({"json": {"speaker": "Ann"}}, 422),
        "bad json": ({"data": "{nope", "headers": {"content-type": "application/json"}}, 400),
    }
    for name, (kw, status) in cases.items():
        if "files" in kw:
            kw = {**kw, "data": {"speaker": "Ann", "text": "hi"}}
        r = requests.post(url, timeout=60, **kw)
        if status is None:  # truncated: refused as media, or decoded as far as it goes
            assert r.status_code in (200, 415, 422), (name, r.text)
        else:
            assert r.status_code == status, (name, r.status_code, r.text)
        if r.status_code >= 400:
            detail = r.json()["detail"]
            assert isinstance(detail, str) and "\n" not in detail and detail, name
        ok = requests.post(
            f"{server}/v1/conversations/after-{len(name)}/utterances",
            json={"speaker": "Bob", "text": "still there?"},
            timeout=60,
        )
        assert ok.status_code == 200, (name, ok.text)


def test_concurrent_conversations_do_not_mix(server):
    utts = _test_utterances()
    texts = {f"k{i}": [f"{u.text} ({i})" for u in utts[:3]] for i in range(4)}
    errors = []

    def talk(key: str) -> None:
        try:
            for t in texts[key]:
                r = requests.post(
                    f"{server}/v1/conversations/{key}/utterances",
                    json={"speaker": "Ann" if len(t) % 2 else "Bob", "text": t},
                    timeout=120,
                )
                assert r.status_code == 200, r.text
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=talk, args=(k,)) for k in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for key, want in texts.items():
        got = requests.get(f"{server}/v1/conversations/{key}", timeout=10).json()["predictions"]
        assert [p["text"] for p in got] == want and [p["position"] for p in got] == [0, 1, 2]
