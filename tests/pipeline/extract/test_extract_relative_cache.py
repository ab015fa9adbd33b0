"""``m2f extract`` given relative paths: every path its workers get is absolute. (A whole run from a third
folder with relative ``--cache``, ``--encoders``, ``--text-model`` and ``--security``, its workers in
another folder: tests/integration/test_dask_cli_cluster.py.)"""

from __future__ import annotations

from pathlib import Path

from pipeline.extract import ExtractOptions
from pipeline.extract.stage_embed import make_embed_spec
from pipeline.extract.stage_encoders import stage_encoders
from pipeline.extract.stage_text import given_text_model, stage_text_model


def test_what_workers_get_is_absolute_when_everything_was_given_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("audio", "face", "scene"):
        (tmp_path / "enc").mkdir(exist_ok=True)
        (tmp_path / "enc" / f"{name}.pt").touch()  # the stage checks that they are there, not their weights
    (tmp_path / "textmodel").mkdir()
    opts = ExtractOptions("sample", None, cache=Path("relcache"), encoders="enc", text_model="textmodel")
    media = opts.layout.media_file("k")
    spec = make_embed_spec(
        opts, media, stage_encoders(opts, media, "k", {}), stage_text_model(opts, []), {"n_frames": 4}
    )
    here = tmp_path.resolve()
    assert spec.media == str(here / "relcache" / "sample" / "media-k" / "media.h5")
    assert spec.encoders == str(here / "enc") and spec.text_model == str(here / "textmodel")
    assert spec.n_frames == 4
    # the relative media path a caller might hand in is made absolute too
    assert make_embed_spec(opts, Path("m.h5"), None, None, None).media == str(here / "m.h5")
    hub = ExtractOptions("sample", None, cache=Path("relcache"), text_model="org/not-a-local-folder")
    assert given_text_model(hub) == "org/not-a-local-folder"  # a hub id stays a hub id
