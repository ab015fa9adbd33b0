"""A trained model applied to conversations as they happen: one utterance in, its prediction out.

:class:`LiveModel` loads an exported model folder once (verified, from a private copy:
:func:`trainer.apply.export.load_model_folder`); each :class:`Conversation` keeps the features of its
utterances so far. :meth:`Conversation.add` featurizes the new utterance only (its text with the
context before it, its clip or audio through the same decoding and encoders as ``m2f extract``:
:mod:`pipeline.utterance.featurize`), runs the dialogue model over the conversation so far and returns the new
utterance's :class:`Prediction`.

A model is **causal** when its dialogue model was trained with ``m2f train-dialog --causal`` and its text
model (if it reads text) was fine-tuned with ``--text-context past``: then an utterance's prediction
depends only on what was said up to its end, and is the one ``m2f predict`` gives the finished
conversation. A bidirectional model is refused unless ``allow_revisions=True``: its predictions would
change once later utterances are known.

Examples
--------
Not run as a test: it needs a model folder exported from a causal run (``m2f export``) and a clip.

>>> with LiveModel.load("runs/meld/model") as model:  # doctest: +SKIP
...     talk = model.conversation("call-42")
...     p = talk.add(speaker="Ann", text="I can't believe you did that!", clip="ann1.mp4")
...     p.predicted, p.probabilities["anger"]
('anger', 0.71)
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.manifest import Dialogue, Utterance
from pipeline.names import LETTER, MODALITIES
from pipeline.store.features import MODALITY_FIELDS
from trainer.dialogue.model import NO_SPEAKER

CORPUS, SPLIT = "custom", "test"


class LiveError(ValueError):
    """A model that cannot serve live, or an utterance that cannot be taken (one line)."""


@dataclass
class Prediction:
    """The prediction for one utterance, made when it was added."""

    dialogue: str
    position: int
    speaker: str
    text: str
    start: float | None
    end: float | None
    predicted: str
    probabilities: dict[str, float]
    present: dict[str, bool]
    seconds: float
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """``m2f predict``'s row (``p_<class>``, ``has_<modality>``) plus ``seconds`` and ``problems``."""
        row = {
            "dialogue": self.dialogue,
            "position": self.position,
            "speaker": self.speaker,
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "predicted": self.predicted,
        }
        row.update({f"p_{c}": p for c, p in self.probabilities.items()})
        row.update({f"has_{m}": v for m, v in self.present.items()})
        row.update({"seconds": round(self.seconds, 4), "problems": self.problems})
        return row


def text_context_of(exported) -> str:
    """The context the model's text model was fine-tuned with (``full`` when it records none)."""
    from pipeline.text.embedder import finetuned_settings

    recorded = (exported.meta.get("live") or {}).get("text_context")
    if recorded:
        return recorded
    if exported.text_model is None:
        return "past"  # no text: nothing to read ahead
    return finetuned_settings(exported.text_model).get("context", "full")


def is_causal(exported) -> bool:
    """Whether every prediction of the model depends on the past only (see the module doc)."""
    return bool(getattr(exported.model.config, "causal", False)) and text_context_of(exported) == "past"


class LiveModel:
    """An exported model folder, loaded once, predicting conversations utterance by utterance.

    Parameters
    ----------
    exported : trainer.apply.export.ExportedModel
        A loaded folder (:meth:`load` loads one).
    device : str
        ``cpu`` or ``cuda``.
    allow_revisions : bool
        Serve a bidirectional model too (each prediction is then made from the past only, and would
        change once later utterances are known; :attr:`causal` says which).

    Raises
    ------
    LiveError
        A bidirectional model without ``allow_revisions``.
    """

    def __init__(self, exported, device: str = "cpu", allow_revisions: bool = False) -> None:
        self.exported = exported
        self.device = device
        self.causal = is_causal(exported)
        if not self.causal and not allow_revisions:
            name = exported.shown_name(".")
            raise LiveError(
                f"{name} is a bidirectional model (dialogue model without --causal, or a text model "
                f"fine-tuned with the next utterance): its predictions would change once later utterances "
                f"are known; export a model trained with `m2f extract --text-context past` and `m2f "
                f"train-dialog --causal`, or pass --allow-revisions to predict from the past anyway"
            )
        self.class_names = list(exported.class_names)
        self.letters = exported.modalities
        self.modalities = tuple(m for m in MODALITIES if LETTER[m] in self.letters)
        self.model = exported.model.to(device).eval()
        self.text = None
        if "text" in self.modalities:
            from pipeline.text.embedder import TextEmbedder

            self.text = TextEmbedder(str(exported.text_model), device=device)
        #: ``--head-residual``: the text head's logit column of each class (None: the model adds none)
        self.residual_order = None
        if exported.model.config.head_residual:
            from trainer.dialogue.data import FeaturesError, head_order

            classes = None if self.text is None else self.text.classes
            try:
                self.residual_order = head_order(classes, self.class_names, exported.shown_name("text_model"))
            except FeaturesError as e:
                raise LiveError(str(e)) from None
        media = tuple(m for m in self.modalities if m != "text")
        self.featurizer = None
        if media:  # the same featurizer m2f predict builds, for the media modalities (text: embed_last)
            from trainer.apply.predict import FeaturizerSpec

            self.featurizer = FeaturizerSpec.of(exported, media, device).build()
        self.lock = threading.Lock()  # one forward pass at a time: torch modules are shared

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu", allow_revisions: bool = False) -> LiveModel:
        """Verify and load an exported folder (:func:`trainer.apply.export.load_model_folder`)."""
        from trainer.apply.export import load_model_folder

        exported = load_model_folder(folder, device)
        try:
            return cls(exported, device=device, allow_revisions=allow_revisions)
        except BaseException:
            exported.close()
            raise

    def conversation(self, dialogue_id: str) -> Conversation:
        """A new, empty conversation."""
        return Conversation(self, str(dialogue_id))

    def close(self) -> None:
        """Remove the private copy of the folder (predictions need nothing from it afterwards)."""
        self.exported.close()

    def __enter__(self) -> LiveModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one utterance ---------------------------------------------------------------------------------
    def features(self, utterances: list[Utterance]) -> tuple[dict, dict, list[str]]:
        """Features of the last of ``utterances`` (the conversation so far): ``(letter -> vector,
        letter -> present, problems)``; with ``--head-residual`` the vectors also hold ``"residual"``, the
        text head's logits in the class order (zeros where the text is missing, as extraction writes)."""
        new = utterances[-1]
        vectors, present, problems = {}, {}, []
        if self.text is not None:
            has = bool(new.text.strip())
            dialogue = Dialogue(CORPUS, SPLIT, new.dialogue_id, tuple(utterances))
            logits = None
            if has:  # one forward pass: the embedding and, with a head, its logits
                vectors["t"], logits = self.text.embed_last_with_logits(
                    dialogue, self.residual_order is not None
                )
            else:
                vectors["t"] = np.zeros(self.text.dim, np.float32)
            present["t"] = has and bool(np.isfinite(vectors["t"]).all())
            if logits is not None:
                present["t"] = present["t"] and bool(np.isfinite(logits).all())
            if not present["t"]:
                vectors["t"] = np.zeros(self.text.dim, np.float32)
            if self.residual_order is not None:
                head = logits if present["t"] and logits is not None else np.zeros(len(self.class_names))
                vectors["residual"] = np.asarray(head, np.float32)[self.residual_order]
        if self.featurizer is not None:
            rows, found = self.featurizer.featurize([new])
            problems += [p["problem"] for p in found]
            for m in self.featurizer.models.modalities:
                emb_name, flag_name = MODALITY_FIELDS[m]
                vectors[LETTER[m]] = np.asarray(rows[emb_name][0], np.float32)
                present[LETTER[m]] = bool(rows[flag_name][0])
        return vectors, present, problems

    def probabilities(self, conversation: Conversation) -> np.ndarray:
        """Class probabilities of every utterance of ``conversation`` so far: ``(n, n_classes)``."""
        n = len(conversation.utterances)
        features = {
            m: torch.from_numpy(np.stack(conversation.vectors[m]))[None].to(self.device) for m in self.letters
        }
        present = {m: torch.tensor(conversation.present[m])[None].to(self.device) for m in self.letters}
        mask = torch.ones(1, n, dtype=torch.bool, device=self.device)
        speakers = torch.tensor([conversation.speaker_ids], dtype=torch.long, device=self.device)
        residual = None
        if self.residual_order is not None:
            residual = torch.from_numpy(np.stack(conversation.residual))[None].to(self.device)
        with torch.inference_mode():
            logits = self.model(features, present, mask, speakers, residual)
        return torch.softmax(logits.float(), dim=-1)[0].cpu().numpy()


class Conversation:
    """The utterances of one conversation so far, and their features; :meth:`add` takes the next one."""

    def __init__(self, model: LiveModel, dialogue_id: str) -> None:
        self.model = model
        self.dialogue_id = dialogue_id
        self.utterances: list[Utterance] = []
        self.predictions: list[Prediction] = []
        self.vectors: dict[str, list[np.ndarray]] = {m: [] for m in model.letters}
        self.present: dict[str, list[bool]] = {m: [] for m in model.letters}
        self.speaker_ids: list[int] = []
        self.residual: list[np.ndarray] = []  # --head-residual: the text head's logits per utterance
        self._speakers: dict[str, int] = {}
        self.last_used = time.monotonic()

    def add(
        self,
        speaker: str = "",
        text: str = "",
        clip: str | Path | None = None,
        start: float | None = None,
        end: float | None = None,
        audio: str | Path | None = None,
        strict_media: bool = False,
    ) -> Prediction:
        """Take the next utterance and return its prediction (made from it and the utterances before).

        ``clip`` is a video (or audio) file of the utterance, ``start``/``end`` its span in seconds
        (default: the whole file); ``audio`` a separate audio file (used whole). A file that cannot be
        decoded leaves that modality missing (``present`` False, the reason in ``problems``); with
        ``strict_media`` it raises :class:`LiveError` instead and the conversation is left unchanged.
        """
        t0 = time.perf_counter()
        if start is not None and end is not None and end < start:
            raise LiveError(
                f"utterance {len(self.utterances)} of {self.dialogue_id}: end {end} is before start {start}"
            )
        with self.model.lock:  # one utterance at a time: positions and features stay in order
            position = len(self.utterances)
            utt = Utterance(
                CORPUS,
                SPLIT,
                self.dialogue_id,
                position,
                str(position),
                str(speaker or ""),
                str(text or ""),
                None,
                clip=None if clip is None else str(clip),
                start=start,
                end=end,
                audio=None if audio is None else str(audio),
            )
            vectors, present, problems = self.model.features([*self.utterances, utt])
            media = [LETTER[m] for m in self.model.modalities if m != "text"]
            if strict_media and (clip or audio) and media and problems and not any(present[m] for m in media):
                raise LiveError(f"the uploaded media cannot be decoded: {problems[0]}")
            self.utterances.append(utt)
            for m in self.model.letters:
                self.vectors[m].append(vectors[m])
                self.present[m].append(present[m])
            if "residual" in vectors:
                self.residual.append(vectors["residual"])
            name = utt.speaker.strip()
            self.speaker_ids.append(
                self._speakers.setdefault(name, len(self._speakers)) if name else NO_SPEAKER
            )
            probs = self.model.probabilities(self)[-1]
        names = self.model.class_names
        pred = Prediction(
            self.dialogue_id,
            position,
            utt.speaker,
            utt.text,
            start,
            end,
            names[int(probs.argmax())],
            {c: float(p) for c, p in zip(names, probs, strict=True)},
            {m: present[LETTER[m]] for m in self.model.modalities},
            time.perf_counter() - t0,
            problems,
        )
        self.predictions.append(pred)
        self.last_used = time.monotonic()
        return pred

    def revised(self) -> list[Prediction]:
        """Every utterance's prediction given the whole conversation so far (for a bidirectional model
        these may differ from the ones made live; for a causal one they are the same)."""
        with self.model.lock:
            probs = self.model.probabilities(self)
        names = self.model.class_names
        return [
            dataclasses.replace(
                p,
                predicted=names[int(row.argmax())],
                probabilities={c: float(x) for c, x in zip(names, row, strict=True)},
            )
            for p, row in zip(self.predictions, probs, strict=True)
        ]


# --- m2f live: JSON lines in, JSON lines out --------------------------------------------------------

#: fields an input line may have
LINE_FIELDS = {"dialogue", "speaker", "text", "clip", "start", "end", "audio"}


def _line_error(number: int, message: str) -> dict:
    return {"line": number, "error": " ".join(message.split())[:500]}


def _parse_line(raw: str, base: Path) -> dict:
    """One input line -> keyword arguments of :meth:`Conversation.add` plus ``dialogue``.

    Raises LiveError (one line) for anything malformed. Relative ``clip``/``audio`` paths are taken
    relative to ``base`` (the working folder).
    """
    import json

    try:
        item = json.loads(raw)
    except json.JSONDecodeError as e:
        raise LiveError(f"not JSON ({e.msg})") from None
    if not isinstance(item, dict):
        raise LiveError("each line must be a JSON object")
    unknown = set(item) - LINE_FIELDS
    if unknown:
        raise LiveError(f"unknown field(s) {sorted(unknown)}; expected some of {sorted(LINE_FIELDS)}")
    out: dict[str, Any] = {
        "dialogue": str(item.get("dialogue", "0")),
        "speaker": str(item.get("speaker") or ""),
        "text": str(item.get("text") or ""),
    }
    for key in ("start", "end"):
        if item.get(key) is not None:
            if not isinstance(item[key], int | float) or isinstance(item[key], bool) or item[key] < 0:
                raise LiveError(f"{key} must be a number of seconds >= 0")
            out[key] = float(item[key])
    for key in ("clip", "audio"):
        if item.get(key):
            path = Path(str(item[key])).expanduser()
            path = path if path.is_absolute() else base / path
            if not path.is_file():
                raise LiveError(f"{key} {path} is not a file")
            out[key] = path
    if not out["text"].strip() and "clip" not in out and "audio" not in out:
        raise LiveError("an utterance needs text, a clip or audio")
    return out


def run_jsonl(model: LiveModel, lines, write, base: Path | None = None) -> int:
    """``m2f live``: one prediction per input line, written (and flushed) as soon as it is made.

    ``lines`` yields JSON objects as text (``dialogue``, ``speaker``, ``text``, optional ``clip`` with
    ``start``/``end``, or ``audio``); ``write`` takes one output line. A bad line gets an output line
    ``{"line": n, "error": "..."}`` and the stream goes on. Returns the number of bad lines.
    """
    import json

    base = base or Path.cwd()
    talks: dict[str, Conversation] = {}
    bad = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            item = _parse_line(raw, base)
            dialogue = item.pop("dialogue")
            if dialogue not in talks:
                talks[dialogue] = model.conversation(dialogue)
            out = talks[dialogue].add(**item).to_dict()
        except LiveError as e:
            bad += 1
            out = _line_error(number, str(e))
        write(json.dumps(out, ensure_ascii=False))
    return bad


def replay(
    model: LiveModel,
    video: Path,
    subtitles: Path,
    write,
    speed: float = 1.0,
    sleep=time.sleep,
    clock=time.monotonic,
) -> dict:
    """Feed a recorded conversation at its real pace: each cue is added when its end is reached.

    Each output line is the prediction plus ``lag_s``, the time from the cue's end (in replayed time)
    to its prediction; the returned summary has the lags' p50 / p95 / max and whether a backlog grew.
    """
    import json

    from trainer.apply.predict import subtitle_utterances

    utterances = subtitle_utterances(Path(video), Path(subtitles))
    talk = model.conversation(utterances[0].dialogue_id if utterances else "0")
    t0 = clock()
    lags = []
    for u in utterances:
        due = t0 + (u.end or 0.0) / speed
        wait = due - clock()
        if wait > 0:
            sleep(wait)
        p = talk.add(speaker=u.speaker, text=u.text, clip=u.clip, start=u.start, end=u.end)
        lag = clock() - due
        lags.append(lag)
        write(json.dumps({**p.to_dict(), "lag_s": round(lag, 4)}, ensure_ascii=False))
    arr = np.asarray(lags) if lags else np.zeros(1)
    half = len(lags) // 2
    growing = bool(len(lags) >= 4 and np.median(arr[half:]) > np.median(arr[:half]) + 0.5)
    return {
        "utterances": len(lags),
        "lag_p50_s": float(np.percentile(arr, 50)),
        "lag_p95_s": float(np.percentile(arr, 95)),
        "lag_max_s": float(arr.max()),
        "backlog_grew": growing,
    }
