"""``m2f serve``: the live API over HTTP (FastAPI on uvicorn), one model shared by every request.

Routes (OpenAPI documentation at ``/docs``, the schema at ``/openapi.json``):

- ``GET /health``: the model's classes, modalities and whether it is causal.
- ``POST /v1/conversations/{id}/utterances``: the next utterance of conversation ``id`` -> its
  prediction. A JSON body (``speaker``, ``text``) or a multipart form with the same fields, an optional
  uploaded ``clip`` (video or audio, with optional ``start`` / ``end`` in seconds) or ``audio`` file.
- ``GET /v1/conversations/{id}``: the predictions made so far.
- ``DELETE /v1/conversations/{id}``: forget a conversation.

Safety: media arrive only as uploads (no request ever names a path on the server); an upload is capped
in size while it is read, written to a private temporary file, checked to be a media file with a stream
the model reads before anything decodes it, and removed after. Conversations are bounded in number (the
least recently used goes) and in idle time. Every error is a 4xx with a one-line ``detail``; the server
goes on serving.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Literal, NoReturn, overload

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from trainer.apply.live import Conversation, LiveError, LiveModel

#: defaults of ``m2f serve``
MAX_UPLOAD_MB = 50.0
MAX_CONVERSATIONS = 100
IDLE_MINUTES = 30.0
MAX_TEXT_CHARS = 10_000
MAX_ID_CHARS = 200
CHUNK = 1 << 20


_FIELDS = {
    "speaker": {"type": "string", "description": "who speaks (same name = same speaker)"},
    "text": {"type": "string", "description": "what was said"},
}
#: the request body of POST .../utterances, for the OpenAPI documentation (parsed by hand: JSON or a form)
UTTERANCE_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"type": "object", "properties": _FIELDS}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    **_FIELDS,
                    "clip": {
                        "type": "string",
                        "format": "binary",
                        "description": "video or audio of the utterance",
                    },
                    "start": {"type": "number", "description": "span start in the clip, seconds"},
                    "end": {"type": "number", "description": "span end in the clip, seconds"},
                    "audio": {
                        "type": "string",
                        "format": "binary",
                        "description": "a separate audio file, used whole",
                    },
                },
            }
        },
    },
}


class Conversations:
    """The server's conversations: at most ``limit``, none idle longer than ``idle_s`` (thread-safe)."""

    def __init__(self, model: LiveModel, limit: int, idle_s: float) -> None:
        self.model, self.limit, self.idle_s = model, limit, idle_s
        self._items: OrderedDict[str, Conversation] = OrderedDict()
        self._lock = threading.Lock()

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, c in self._items.items() if now - c.last_used > self.idle_s]:
            del self._items[key]

    @overload
    def get(self, key: str, create: Literal[True]) -> Conversation: ...
    @overload
    def get(self, key: str, create: bool = False) -> Conversation | None: ...

    def get(self, key: str, create: bool = False) -> Conversation | None:
        with self._lock:
            self._expire()
            conv = self._items.get(key)
            if conv is None and create:
                conv = self._items[key] = self.model.conversation(key)
                while len(self._items) > self.limit:
                    self._items.popitem(last=False)
            if conv is not None:
                self._items.move_to_end(key)
                conv.last_used = time.monotonic()
            return conv

    def drop(self, key: str) -> bool:
        with self._lock:
            return self._items.pop(key, None) is not None

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)


def make_app(
    model: LiveModel,
    max_upload_mb: float = MAX_UPLOAD_MB,
    max_conversations: int = MAX_CONVERSATIONS,
    idle_minutes: float = IDLE_MINUTES,
):
    """The FastAPI application serving ``model``."""
    app = FastAPI(
        title="m2f",
        summary="Emotion recognition in conversation, one utterance at a time",
        version=_version(),
    )
    talks = Conversations(model, max_conversations, idle_minutes * 60)
    cap = int(max_upload_mb * 1e6)
    uploads = Path(tempfile.mkdtemp(prefix="m2f-serve-"))  # mode 0700; each upload a fresh name in it

    def fail(status: int, detail: str) -> NoReturn:
        raise HTTPException(status_code=status, detail=" ".join(str(detail).split())[:500])

    @app.exception_handler(HTTPException)
    async def one_line(_request, exc: HTTPException):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.get("/health")
    def health() -> dict:
        """The model this server runs."""
        return {
            "status": "ok",
            "classes": model.class_names,
            "modalities": list(model.modalities),
            "causal": model.causal,
            "conversations": len(talks),
        }

    def check_id(dialogue: str) -> str:
        if not dialogue or len(dialogue) > MAX_ID_CHARS or not dialogue.isprintable():
            fail(422, f"conversation id must be 1-{MAX_ID_CHARS} printable characters")
        return dialogue

    def number(form, name: str) -> float | None:
        value = form.get(name)
        if value in (None, ""):
            return None
        try:
            out = float(value)
        except (TypeError, ValueError):
            fail(422, f"{name} must be a number of seconds, got {str(value)[:40]!r}")
        if not 0 <= out < 1e7:
            fail(422, f"{name} must be between 0 and 1e7 seconds")
        return out

    def capped(request: Request) -> Request:
        """``request`` whose body may not exceed the upload cap (plus room for the form fields): refused
        from its Content-Length, or while it is received, before the form parser spools it."""
        limit = cap + (1 << 20)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            fail(413, f"the request is over the {max_upload_mb:g} MB upload limit")
        received = 0

        async def receive():
            nonlocal received
            message = await request.receive()
            received += len(message.get("body", b""))
            if received > limit:
                fail(413, f"the request is over the {max_upload_mb:g} MB upload limit")
            return message

        return Request(request.scope, receive)

    async def save_upload(upload) -> Path:
        """Stream an upload to a private file, refusing it past the cap; then check it is media."""
        fd, name = tempfile.mkstemp(dir=uploads, suffix=".upload")
        path = Path(name)
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                while chunk := await upload.read(CHUNK):
                    size += len(chunk)
                    if size > cap:
                        fail(413, f"upload {upload.filename!r} is over the {max_upload_mb:g} MB limit")
                    f.write(chunk)
            if size == 0:
                fail(422, f"upload {upload.filename!r} is empty")
            check_media(path, upload.filename)
            return path
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def check_media(path: Path, shown: str | None) -> None:
        from pipeline.decode.container import MediaError, probe

        try:
            info = probe(path)
        except (MediaError, OSError, ValueError) as e:
            fail(
                415,
                f"upload {shown!r} is not a media file FFmpeg can open ({type(e).__name__}); send a "
                "video or audio file (mp4, mkv, avi, wav, ...)",
            )
        if not info.has_audio and not info.has_video:
            fail(415, f"upload {shown!r} has no audio or video stream")

    @app.post("/v1/conversations/{dialogue}/utterances", openapi_extra={"requestBody": UTTERANCE_BODY})
    async def add(dialogue: str, request: Request) -> dict:
        """Add the next utterance of a conversation; returns its prediction (``m2f predict``'s row)."""
        check_id(dialogue)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        files: list[Path] = []
        media: dict[str, Path]
        try:
            if kind == "application/json":
                try:
                    body = await request.json()
                except ValueError:
                    fail(400, "the body is not valid JSON")
                if not isinstance(body, dict):
                    fail(422, "the JSON body must be an object with speaker and text")
                form, media = body, {}
                if {"clip", "audio"} & set(body):
                    fail(422, "media cannot be named by path; upload them as multipart fields clip or audio")
            elif kind == "multipart/form-data":
                from starlette.datastructures import UploadFile

                try:
                    parsed = await capped(request).form(max_files=2, max_fields=20)
                except HTTPException:
                    raise
                except Exception as e:  # noqa: BLE001 - a malformed body or too many parts
                    fail(400, f"the multipart body cannot be read ({type(e).__name__})")
                form = {k: v for k, v in parsed.items() if not isinstance(v, UploadFile)}
                media = {}
                for field in ("clip", "audio"):
                    upload = parsed.get(field)
                    if isinstance(upload, UploadFile):
                        media[field] = await save_upload(upload)
                        files.append(media[field])
                    elif upload not in (None, ""):
                        fail(422, f"{field} must be an uploaded file, not a value")
            else:
                fail(415, "send application/json (speaker, text) or multipart/form-data (with clip/audio)")
            speaker, text = str(form.get("speaker") or ""), str(form.get("text") or "")
            if len(text) > MAX_TEXT_CHARS or len(speaker) > MAX_ID_CHARS:
                fail(422, f"text is limited to {MAX_TEXT_CHARS} characters and speaker to {MAX_ID_CHARS}")
            if not text.strip() and not media:
                fail(422, "an utterance needs text, a clip or audio")
            start, end = number(form, "start"), number(form, "end")
            conv = talks.get(dialogue, create=True)
            try:  # CPU work: off the event loop, so /health and other requests are answered meanwhile
                pred = await run_in_threadpool(
                    conv.add,
                    speaker=speaker,
                    text=text,
                    clip=media.get("clip"),
                    start=start,
                    end=end,
                    audio=media.get("audio"),
                    strict_media=True,
                )
            except LiveError as e:
                fail(422, str(e))
            return pred.to_dict()
        finally:
            for f in files:
                f.unlink(missing_ok=True)

    @app.get("/v1/conversations/{dialogue}")
    def show(dialogue: str) -> dict:
        """The predictions made so far in a conversation."""
        conv = talks.get(check_id(dialogue))
        if conv is None:
            fail(
                404,
                f"no conversation {dialogue!r} (never started, deleted, or idle for over "
                f"{idle_minutes:g} minutes)",
            )
        return {
            "dialogue": dialogue,
            "causal": model.causal,
            "predictions": [p.to_dict() for p in conv.predictions],
        }

    @app.delete("/v1/conversations/{dialogue}", status_code=204)
    def forget(dialogue: str):
        """Forget a conversation."""
        if not talks.drop(check_id(dialogue)):
            fail(404, f"no conversation {dialogue!r}")
        return Response(status_code=204)

    app.state.conversations = talks
    app.state.uploads = uploads
    return app


def _version() -> str:
    from pipeline import __version__

    return __version__


def serve(
    model_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    allow_revisions: bool = False,
    max_upload_mb: float = MAX_UPLOAD_MB,
    max_conversations: int = MAX_CONVERSATIONS,
    idle_minutes: float = IDLE_MINUTES,
) -> None:
    """Load ``model_dir`` once and serve it until interrupted."""
    import shutil

    import uvicorn

    with LiveModel.load(model_dir, device=device, allow_revisions=allow_revisions) as model:
        app = make_app(model, max_upload_mb, max_conversations, idle_minutes)
        try:
            uvicorn.run(app, host=host, port=port, log_level="warning")
        finally:
            shutil.rmtree(app.state.uploads, ignore_errors=True)
