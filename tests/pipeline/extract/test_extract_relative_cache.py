"""``m2f extract`` given relative paths, its workers in another folder: every path they get is absolute."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from pipeline.extract import ExtractOptions, make_local_cluster
from pipeline.extract.stage_embed import make_embed_spec
from pipeline.extract.stage_encoders import stage_encoders
from pipeline.extract.stage_text import given_text_model, stage_text_model
from pipeline.store.features import read_attrs, validate_features
from pipeline.testing.encoder_sets import save_encoder_set
from pipeline.testing.tls import security_file
from pipeline.text.embedder import DEFAULT_TEXT_MODEL


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


@pytest.mark.slow  # a whole extract run from another folder
def test_relative_cache_text_model_and_encoders_from_another_folder(tmp_path, monkeypatch):
    """Workers run in folder A; the command runs in folder B with relative paths that exist only there."""
    from distributed import Client

    (tmp_path / "a").mkdir()
    work = tmp_path / "b"
    work.mkdir()
    monkeypatch.chdir(tmp_path / "a")
    cluster = make_local_cluster(1)
    try:
        with Client(cluster) as client:
            assert client.run(os.getcwd) and set(client.run(os.getcwd).values()) == {str(tmp_path / "a")}
            monkeypatch.chdir(work)
            (work / "minilm").symlink_to(DEFAULT_TEXT_MODEL)
            save_encoder_set(work / "enc")
            security_file(client.security, work / "tls")  # the cluster's TLS certificate, for the command
            res = CliRunner().invoke(
                main,
                [
                    "extract",
                    "--dataset",
                    "sample",
                    "--cache",
                    "relcache",
                    "--encoders",
                    "enc",
                    "--text-model",
                    "minilm",
                    "--modalities",
                    "ta",
                    "--splits",
                    "dev",
                    "--limit",
                    "2",
                    "--scheduler",
                    client.scheduler.address,
                    "--security",
                    "tls/security.yaml",
                ],
            )
    finally:
        cluster.close()
    assert res.exit_code == 0, res.output
    features = Path(res.stdout.strip().splitlines()[-1])
    assert features.is_absolute() and features.is_relative_to(work.resolve() / "relcache" / "sample")
    assert validate_features(features) == []
    config = read_attrs(features)["config"]
    assert config["modalities"] == ["audio", "text"] and config["limit"] == 2
    assert not (tmp_path / "a" / "relcache").exists()
