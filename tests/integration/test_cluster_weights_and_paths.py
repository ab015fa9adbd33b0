"""A long-lived cluster: models cached by content, shared paths checked, loopback and TLS only, user TLS."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.extract import ExtractError, ExtractOptions, run_extract
from pipeline.extract.cluster import check_workers_see, load_security
from pipeline.extract.stage_prepare import load_manifest
from pipeline.store.features import read_split
from pipeline.testing.encoder_sets import save_encoder_set
from pipeline.testing.meld_tree import make_meld_tree


def _audio(features: Path) -> np.ndarray:
    return read_split(features, "dev").audio_emb


@pytest.fixture(scope="module")
def client(one_worker_client):
    return one_worker_client  # one worker: the one whose model cache would be stale


def test_local_cluster_listens_on_loopback_only(client):
    assert client.scheduler.address.startswith("tls://127.0.0.1:")
    assert client.dashboard_link.startswith("http://127.0.0.1:")
    assert all(a.startswith("tls://127.0.0.1:") for a in client.scheduler_info()["workers"])


def test_local_cluster_refuses_clients_without_its_certificate(client):
    """Another local user cannot reach the scheduler m2f started: not in plain TCP, not with TLS
    credentials of their own (dask would run any function such a client sent, as the m2f user)."""
    from distributed import Client
    from distributed.security import Security

    address = client.scheduler.address
    for other, security in ((address.replace("tls://", "tcp://", 1), None), (address, Security.temporary())):
        with pytest.raises(OSError):  # distributed's CommClosedError and connect timeouts are OSErrors
            Client(other, security=security, timeout=5, set_as_default=False)
    assert client.security.require_encryption and client.security.tls_client_cert
    assert client.submit(os.getpid).result(timeout=30) != os.getpid()  # m2f's own client still works


def test_encoders_rewritten_in_place_are_reloaded_by_a_long_lived_worker(client, tmp_path):
    enc = tmp_path / "enc"
    save_encoder_set(enc, seed=0)

    def run(folder: Path):
        opts = ExtractOptions(
            "sample",
            None,
            modalities=("audio",),
            splits=("dev",),
            limit=2,
            encoders=str(folder),
            cache=tmp_path / "cache",
        )
        return run_extract(opts, client=client).features

    first = _audio(run(enc))
    save_encoder_set(enc, seed=10)  # e.g. `train-encoders --overwrite` into the same folder
    second = _audio(run(enc))
    shutil.copytree(enc, tmp_path / "fresh")
    fresh = _audio(run(tmp_path / "fresh"))  # a path the worker never saw: loaded from the new files
    assert not np.allclose(first, second)
    assert np.array_equal(second, fresh)


def test_workers_that_cannot_read_a_path_stop_the_run_with_one_line(client, tmp_path):
    ok = tmp_path / "seen"
    ok.mkdir()
    check_workers_see(client, [str(ok)])
    with pytest.raises(ExtractError) as err:
        check_workers_see(client, [str(ok), str(tmp_path / "not-mounted")])
    msg = str(err.value)
    addr = next(iter(client.scheduler_info()["workers"]))
    assert addr in msg and str(tmp_path / "not-mounted") in msg and "shared file system" in msg
    assert "\n" not in msg


def test_clip_folder_hidden_from_workers_stops_before_decoding(client, tmp_path, monkeypatch):
    root = make_meld_tree(
        tmp_path / "meld",
        n_dialogues=1,
        utterances_per_dialogue=2,
        splits=("dev",),
        size=(64, 48),
        duration=0.5,
    )
    opts = ExtractOptions(
        "meld", root, modalities=("audio",), splits=("dev",), encoders="random", cache=tmp_path / "cache"
    )
    manifest, utterances = load_manifest(opts.layout, root)
    # clips under /proc/self/cwd: the driver (run in the corpus folder) sees them, the worker (started
    # in another folder) does not, as with a corpus on a disk only the driver's machine mounts
    monkeypatch.chdir(root)
    hidden = [replace(u, clip=f"/proc/self/cwd/{Path(u.clip).relative_to(root)}") for u in utterances]
    # the corpus is re-read on every run, so the run is handed the hidden manifest directly
    import pipeline.extract.driver as driver

    monkeypatch.setattr(driver, "load_manifest", lambda layout, corpus_root: (manifest, hidden))
    folder = str(Path(hidden[0].clip).parent)
    assert Path(hidden[0].clip).is_file() and set(client.run(os.path.isdir, folder).values()) == {False}
    with pytest.raises(ExtractError, match=f"cannot read {folder}.*shared file system"):
        run_extract(opts, client=client)
    assert opts.layout.media_files() == []


def _self_signed(folder: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 and a security file that names it."""
    folder.mkdir()
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    sec = folder / "security.yaml"
    sec.write_text("tls_ca_file: cert.pem\ntls_cert: cert.pem\ntls_key: key.pem\n")
    return sec


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_local_cluster_end_to_end(client, tmp_path, caplog):
    import logging

    sec = _self_signed(tmp_path / "tls")
    security = load_security(sec)
    assert security.require_encryption and security.tls_worker_cert == str(tmp_path / "tls" / "cert.pem")
    opts = ExtractOptions(
        "sample",
        None,
        modalities=("audio",),
        splits=("dev",),
        limit=2,
        encoders="random",
        workers=1,
        cache=tmp_path / "cache",
        security=sec,
    )
    addresses: list[str] = []
    with caplog.at_level(logging.INFO, logger="pipeline"):
        res = run_extract(
            opts, on_written=lambda c, i: addresses.append((c.scheduler.address, c.security.tls_client_cert))
        )
    assert "started a LocalCluster" in caplog.text
    # the user's certificate, not the temporary one m2f would make without --security
    cert = str(tmp_path / "tls" / "cert.pem")
    assert addresses and all(a.startswith("tls://127.0.0.1:") and c == cert for a, c in addresses)
    assert read_split(res.features, "dev").has_audio.all()
    plain = run_extract(
        ExtractOptions(
            "sample",
            None,
            modalities=("audio",),
            splits=("dev",),
            limit=2,
            encoders="random",
            cache=tmp_path / "plain",
        ),
        client=client,
    )
    assert np.array_equal(_audio(res.features), _audio(plain.features))
