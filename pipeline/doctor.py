"""``m2f doctor``: checks the environment a user actually has, one line per check.

Each check returns a :class:`Check`; a failing one says what to do. The checks import the native
libraries themselves (torch, torchvision, torchaudio, PyAV, MTCNN), so a broken install is named here
instead of surfacing as a traceback in the middle of a run. :func:`native_import_failure` gives the
one line every other command prints when such an import fails (``cli.run``).
"""

from __future__ import annotations

import importlib.metadata as metadata
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: below this much free space under the cache, extraction of a real corpus cannot finish (MELD's
#: media.h5 alone takes several GB: bench/RESULTS.md, "Media cache size")
MIN_FREE_GB = 2.0
REINSTALL = "reinstall from the lock: pip install --require-hashes -r requirements.lock"
NATIVE = ("torch", "torchvision", "torchaudio", "av", "cv2", "h5py", "soxr", "facenet_pytorch")


@dataclass(frozen=True)
class Check:
    """One line of the report: ``ok`` and what was found, or what is wrong and what to do."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def check_python() -> Check:
    v = sys.version_info
    ok = v >= (3, 11)
    return Check(
        "python",
        ok,
        f"{sys.version.split()[0]} at {sys.executable}" + ("" if ok else "; m2f needs Python >= 3.11"),
    )


def _pinned(name: str) -> str | None:
    """The version m2f's metadata pins ``name`` to (``==X``), or None."""
    from packaging.requirements import Requirement

    try:
        reqs = metadata.requires("m2f") or []
    except metadata.PackageNotFoundError:
        return None
    for r in map(Requirement, reqs):
        if r.name == name and not r.marker:
            spec = [s for s in r.specifier if s.operator == "=="]
            return spec[0].version if spec else None
    return None


def check_torch_family() -> Check:
    """torch, torchvision and torchaudio: the pinned versions, and their native libraries load together."""
    found, wrong = [], []
    for name in ("torch", "torchvision", "torchaudio"):
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            return Check("torch family", False, f"{name} is not installed; {REINSTALL}")
        found.append(f"{name} {version}")
        pin = _pinned(name)
        if pin is not None and version.split("+")[0] != pin:
            wrong.append(f"{name} {version} (m2f pins {pin})")
    try:
        import torch
        import torchaudio
        import torchvision

        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
        torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)  # a native torchvision op
        torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=400, n_mels=64)(torch.zeros(1, 1600))
    except Exception as e:  # noqa: BLE001 - any failure here is the finding
        return Check(
            "torch family", False, f"{', '.join(found)} do not load together ({_first_line(e)}); {REINSTALL}"
        )
    if wrong:
        return Check(
            "torch family", False, f"{', '.join(wrong)}: these load only as the pinned set; {REINSTALL}"
        )
    return Check("torch family", True, ", ".join(found) + "; native ops run")


def check_pyav() -> Check:
    """PyAV decodes a tiny generated H.264 + AAC clip through m2f's own decoders."""
    try:
        import av

        from pipeline.decode.frames import decode_frames
        from pipeline.decode.waveform import decode_audio
        from pipeline.testing.av_files import write_clip

        with tempfile.TemporaryDirectory(prefix="m2f-doctor-") as tmp:
            clip = write_clip(Path(tmp) / "clip.mp4", duration=0.5, size=(64, 48), face=False)
            frames = decode_frames(clip, n=3)
            audio, _ = decode_audio(clip)
        if frames.shape[0] != 3 or audio.size < 4000:
            raise RuntimeError(f"decoded {frames.shape[0]} frames and {audio.size} samples")
    except Exception as e:  # noqa: BLE001
        return Check(
            "PyAV", False, f"cannot encode and decode an H.264/AAC clip ({_first_line(e)}); {REINSTALL}"
        )
    return Check(
        "PyAV", True, f"av {av.__version__} (FFmpeg {av.ffmpeg_version_info}): H.264/AAC clip decoded"
    )


def check_mtcnn() -> Check:
    """MTCNN's weights ship inside facenet-pytorch: load them and find the astronaut's face."""
    try:
        from skimage.data import astronaut

        from pipeline.utterance.process import MediaConfig
        from pipeline.utterance.visual import FaceDetector

        ((boxes, probs),) = FaceDetector(MediaConfig(), device="cpu").detect(astronaut()[None])
        if len(boxes) < 1 or probs.max() < 0.9:
            raise RuntimeError("no face found on the astronaut test image")
    except Exception as e:  # noqa: BLE001
        return Check("MTCNN", False, f"{_first_line(e)}; {REINSTALL}")
    return Check(
        "MTCNN",
        True,
        f"facenet-pytorch {metadata.version('facenet-pytorch')}: weights load, a face found on a test image",
    )


def check_text_model() -> Check:
    """The shipped all-MiniLM-L6-v2: present, and every file it is loaded from has its pinned sha256."""
    from pipeline.text.shipped import (
        PACKAGE,
        ShippedModelError,
        shipped_model_dir,
        verify_shipped_model,
    )

    folder = shipped_model_dir()
    if folder is None:
        return Check("default text model", False, f"{PACKAGE} is not installed; {REINSTALL}")
    try:
        verify_shipped_model(folder)
    except ShippedModelError as e:
        return Check("default text model", False, str(e))
    return Check("default text model", True, f"{folder}: sha256 of every file equals the pinned value")


def check_cuda() -> Check:
    """CUDA is optional: its absence is reported, not failed."""
    try:
        import torch

        if torch.cuda.is_available():
            return Check("CUDA", True, f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})")
        return Check("CUDA", True, "not available (CPU only; every command runs, the GPU paths are skipped)")
    except Exception as e:  # noqa: BLE001
        return Check("CUDA", False, f"{_first_line(e)}; {REINSTALL}")


def check_disk(cache: Path) -> Check:
    """Free space under the cache folder (its nearest existing parent)."""
    where = Path(cache).expanduser().absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free / 1e9
    ok = free >= MIN_FREE_GB
    return Check(
        "disk",
        ok,
        f"{free:.1f} GB free under {where}"
        + (
            ""
            if ok
            else "; extraction needs more (MELD's media cache alone is about 12.7 GB): "
            "free space or pass --cache on a larger disk"
        ),
    )


def run_checks(cache: Path) -> list[Check]:
    """Every check, in order; a check that crashes is reported as failed, never raised."""
    checks: list[Callable[[], Check]] = [
        check_python,
        check_torch_family,
        check_pyav,
        check_mtcnn,
        check_text_model,
        check_cuda,
        lambda: check_disk(cache),
    ]
    out = []
    for check in checks:
        try:
            out.append(check())
        except Exception as e:  # noqa: BLE001
            name = getattr(check, "__name__", "check").removeprefix("check_")
            out.append(Check(name, False, f"{_first_line(e)}; {REINSTALL}"))
    return out


def _imported_module(line: str | None) -> str:
    """The top-level module an ``import x`` / ``from x import y`` source line names ("" if none)."""
    words = (line or "").split()
    if len(words) >= 2 and words[0] in ("import", "from"):
        return words[1].split(".")[0].rstrip(",")
    return ""


def native_import_failure(exc: BaseException) -> str | None:
    """One line for an exception raised while importing a native library, or None if it is not one.

    An ``ImportError`` of one of :data:`NATIVE`, or any exception raised while an ``import`` statement
    of one of them ran (a shared library that does not load: ``libtorchaudio.so: undefined symbol``).
    """
    frames = traceback.extract_tb(exc.__traceback__)
    name = next((m for f in reversed(frames) if (m := _imported_module(f.line)) in NATIVE), "")
    if isinstance(exc, ImportError) and not name:
        name = (exc.name or "").partition(".")[0]
    if name not in NATIVE:
        return None
    return (
        f"error: cannot load {name} ({_first_line(exc)}): the installed packages do not work together; "
        f"run `m2f doctor` to see which, then {REINSTALL}"
    )
