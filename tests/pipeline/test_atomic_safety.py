"""Issue 17.11: a temporary file is never a planted symlink's target (pipeline/atomic.py)."""

from __future__ import annotations

from pipeline.atomic import atomic_torch_save, atomic_write_text, tmp_path


def test_a_planted_tmp_symlink_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("out.json", "w.pt"):
        (shared / f"{name}.tmp").symlink_to(victim)  # the old, predictable temporary name
    atomic_write_text(shared / "out.json", "{}")
    atomic_torch_save({"x": 1}, shared / "w.pt")
    assert victim.read_text() == "precious"
    assert (shared / "out.json").read_text() == "{}" and not (shared / "out.json").is_symlink()
    assert not (shared / "w.pt").is_symlink()


def test_temporary_names_are_new_files_beside_the_target(tmp_path):
    a, b = tmp_path_of(tmp_path / "x.h5"), tmp_path_of(tmp_path / "x.h5")
    assert a != b and a.parent == b.parent == tmp_path and a.exists() and a.name.startswith(".x.h5.")


def tmp_path_of(path):
    return tmp_path(path)
