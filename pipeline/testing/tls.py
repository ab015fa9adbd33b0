"""A ``--security`` file for a cluster whose credentials are dask's temporary ones (tests, benchmarks)."""

from __future__ import annotations

from pathlib import Path


def security_file(security, folder: str | Path) -> Path:
    """Write ``security``'s in-memory certificate and key (``Security.temporary()``: one self-signed
    certificate for every role) into ``folder``, and a security YAML naming them; return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cert.pem").write_text(security.tls_ca_file, encoding="utf-8")
    (folder / "key.pem").write_text(security.tls_client_key, encoding="utf-8")
    path = folder / "security.yaml"
    path.write_text("tls_ca_file: cert.pem\ntls_cert: cert.pem\ntls_key: key.pem\n", encoding="utf-8")
    return path
