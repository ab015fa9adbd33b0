"""The ``--security`` file (dask's TLS settings) is checked before any work, with a one-line error."""

from __future__ import annotations

import pytest

from pipeline.extract import ExtractError
from pipeline.extract.cluster import load_security


def test_bad_security_file_is_one_line(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("tls_ca_file: missing.pem\n")
    with pytest.raises(ExtractError, match="tls_ca_file .*missing.pem does not exist"):
        load_security(bad)
    bad.write_text("not_a_keyword: 1\n")
    with pytest.raises(ExtractError, match="Unknown parameters"):
        load_security(bad)
