"""The shared helpers every module uses: atomic writes, content identities, weighted F1, vocabulary."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from sklearn.metrics import f1_score

from pipeline.encoders.checkpoint import encoder_identity
from pipeline.metrics import weighted_f1
from pipeline.names import ENCODER_KINDS
from pipeline.store.atomic import atomic_torch_save, atomic_write_json, content_identity


def test_content_identity_of_a_file_is_the_former_file_identity(tmp_path):
    """Cache keys made before the move must not change: sha256 of the bytes, first 16 hex."""
    small = tmp_path / "abc.pt"
    small.write_bytes(b"abc")
    assert content_identity(small) == "ba7816bf8f01cfea"  # FIPS 180-2 test vector of sha256("abc")
    big = tmp_path / "big.pt"  # several read blocks
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)
    big.write_bytes(data)
    assert content_identity(big) == hashlib.sha256(data).hexdigest()[:16]


def test_content_identity_follows_in_place_rewrites_and_added_files(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"abc")
    first = content_identity(f)
    st = f.stat()
    f.write_bytes(b"xyz")  # same size, in place (same inode), times put back as they were
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
    assert content_identity(f) == hashlib.sha256(b"xyz").hexdigest()[:16] != first
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"1")
    before = content_identity(folder)
    (folder / "b.bin").write_bytes(b"2")  # a file added to a folder
    assert content_identity(folder) != before


def test_encoder_folder_identity_keeps_its_formula_and_follows_the_bytes(tmp_path):
    for i, kind in enumerate(ENCODER_KINDS):
        (tmp_path / f"{kind}.pt").write_bytes(bytes([i]) * 1000)
    per_file = "".join(hashlib.sha256(bytes([i]) * 1000).hexdigest()[:16] for i in range(3))
    ident = encoder_identity(tmp_path)
    assert ident == hashlib.sha256(per_file.encode()).hexdigest()[:16]
    (tmp_path / "face.pt").write_bytes(b"retrained")
    assert encoder_identity(tmp_path) != ident


def test_weighted_f1_matches_sklearn_and_scores_absent_classes_zero():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0, 0])
    expected = f1_score(y, p, average="weighted")
    assert weighted_f1(y, p) == pytest.approx(expected)
    assert weighted_f1(y, p, 4) == pytest.approx(expected)  # class 3 has no support: weight 0
    assert weighted_f1(np.array([0, 1]), np.array([0, 0]), [0, 1]) == pytest.approx(1 / 3)
    assert weighted_f1(["a", "b"], ["a", "b"], ["a", "b"]) == 1.0


def test_atomic_writes_leave_only_the_finished_file(tmp_path):
    import torch

    atomic_write_json(tmp_path / "sub" / "x.json", {"b": 1, "a": "é"})
    assert json.loads((tmp_path / "sub" / "x.json").read_text(encoding="utf-8")) == {"a": "é", "b": 1}
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "sub" / "w.pt")
    assert torch.load(tmp_path / "sub" / "w.pt", weights_only=True)["w"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["w.pt", "x.json"]
