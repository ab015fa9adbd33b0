"""Issue 17.11: a temporary file is never a planted symlink's target (pipeline/store/atomic.py)."""

from __future__ import annotations

from pipeline.store.atomic import atomic_torch_save, atomic_write_text, tmp_path


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


def test_text_model_folder_and_demo_csv_never_write_through_planted_names(tmp_path):
    from pipeline.text.finetune.state import META_FILE, _save_model_folder

    class Saves:
        def __init__(self, name):
            self.name = name

        def save_pretrained(self, folder):
            (folder / self.name).write_text(self.name)

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    resume = tmp_path / "resume"
    resume.mkdir()
    for suffix in (".tmp", ".old"):
        (resume / f"best{suffix}").symlink_to(victim)  # the old, predictable names
    for _ in range(2):  # a first save, then one that replaces it
        _save_model_folder(Saves("model.bin"), Saves("tok.json"), resume / "best", {"step": 1})
    assert sorted(p.name for p in (resume / "best").iterdir()) == [META_FILE, "model.bin", "tok.json"]
    assert sorted(p.name for p in resume.iterdir()) == ["best"]  # the planted links went, nothing else left
    assert (victim / "keep.txt").read_text() == "precious" and sorted(p.name for p in victim.iterdir()) == [
        "keep.txt"
    ]

    from trainer.demo.corpus import build_fusion_corpus

    out = tmp_path / "demo"
    out.mkdir()
    (out / "corpus.csv.tmp").symlink_to(victim / "keep.txt")
    csv_path = build_fusion_corpus(out, {"train": 1}, utterances_per_dialogue=2)
    assert (victim / "keep.txt").read_text() == "precious" and not csv_path.is_symlink()
    assert csv_path.read_text(encoding="utf-8").startswith("dialogue_id,")
