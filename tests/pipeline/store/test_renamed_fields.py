"""A media.h5 written before ``has_video`` became ``has_visual`` stays readable under the new name."""

import h5py
import numpy as np

from pipeline.encoders.samples import MediaSamples
from pipeline.store.cache import ShardedWriter
from pipeline.store.h5rows import RENAMED_FIELDS, RowReader, read_group, write_rows


def old_rows(ids, visual):
    """Media rows as m2f wrote them before the rename (``has_video``), scenes ragged."""
    return {
        "utt_id": np.array(ids, dtype=object),
        "label": np.array(["joy"] * len(ids), dtype=object),
        "has_video": np.array(visual, dtype=bool),
        "scenes": [np.full((int(k), 3, 2, 2), i, np.uint8) for i, k in enumerate(visual)],
    }


def write_old_media(path, ids=("a", "b", "c"), visual=(True, False, True)):
    with h5py.File(path, "w") as f:
        f.attrs["kind"] = "m2f-media"
        write_rows(f.create_group("train"), old_rows(list(ids), list(visual)))
    return path


def test_the_rename_is_the_visual_flag():
    assert RENAMED_FIELDS == {"has_video": "has_visual"}


def test_row_reader_reads_the_old_flag_under_the_new_name(tmp_path):
    path = write_old_media(tmp_path / "media.h5")
    with h5py.File(path, "r") as f:
        assert "has_video" in f["train"] and "has_visual" not in f["train"]
    with RowReader(path, "train") as r:
        assert r.column("has_visual").tolist() == [True, False, True]
        row = r.row(2, ["utt_id", "has_visual", "scenes"])
        assert row["utt_id"] == "c" and bool(row["has_visual"]) and row["scenes"].shape == (1, 3, 2, 2)
        assert "has_visual" in r.row(1) and "has_video" not in r.row(1)


def test_read_group_returns_the_new_name(tmp_path):
    path = write_old_media(tmp_path / "media.h5")
    with h5py.File(path, "r") as f:
        rows = read_group(f["train"])
    assert "has_video" not in rows and rows["has_visual"].tolist() == [True, False, True]
    assert [len(s) for s in rows["scenes"]] == [1, 0, 1]


def test_scene_samples_of_an_old_media_file_use_its_flag(tmp_path):
    path = write_old_media(tmp_path / "media.h5")
    samples = MediaSamples(path, "train", "scene")
    try:
        assert samples.rows.tolist() == [0, 2]
    finally:
        samples.reader.close()


def test_a_resumed_old_run_merges_old_and_new_shards_into_one_column(tmp_path):
    path = tmp_path / "media.h5"
    writer = ShardedWriter(path, {"kind": "m2f-media"})
    old_shard = writer.shard_dir / "train-000000.h5"  # a shard left by a run before the rename
    with h5py.File(old_shard, "w") as f:
        write_rows(f, old_rows(["a", "b"], [True, False]))
    new = old_rows(["c"], [True])
    new["has_visual"] = new.pop("has_video")
    writer.append("train", new)
    assert writer.done_ids("train") == {"a", "b", "c"}
    writer.finalize()
    writer.close()
    with h5py.File(path, "r") as f:
        assert "has_video" not in f["train"]
        assert f["train"]["has_visual"][()].tolist() == [True, False, True]
