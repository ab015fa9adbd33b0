"""``m2f train-encoders --modality text`` writes the text model where ``m2f extract`` looks; it is used."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cli import main
from pipeline.extract.stage_prepare import load_manifest, manifest_hash
from pipeline.extract.stage_text import finetune_inputs, text_base_key
from pipeline.store.features import read_attrs
from pipeline.store.layout import CacheLayout


def test_train_encoders_text_then_extract_uses_that_model(tmp_path, dask_cli_cluster):
    cache = tmp_path / "cache"
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "train-encoders",
            "--dataset",
            "sample",
            "--modality",
            "text",
            "--cache",
            str(cache),
            "--epochs",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    trained = Path(res.stdout.strip().splitlines()[-1])
    layout = CacheLayout(cache, "sample")
    _, manifest = load_manifest(layout, None)
    key, base_key = manifest_hash(finetune_inputs(manifest)), text_base_key(None)
    assert trained == layout.text_model_dir(key, base_key)
    assert layout.text_model_marker(key, base_key).exists()
    assert json.loads((trained / "m2f_text.json").read_text())["config"]["epochs"] == 1
    stamp = (trained / "m2f_text.json").stat().st_mtime_ns

    res = runner.invoke(
        main,
        [
            "extract",
            "--dataset",
            "sample",
            "--cache",
            str(cache),
            "--modalities",
            "text",
            "--splits",
            "dev",
            "--limit",
            "2",
            *dask_cli_cluster.cli_args(),
        ],
    )
    assert res.exit_code == 0, res.output
    assert f"text: using cached fine-tuned model {trained}" in res.stderr
    assert "fine-tuning the shipped MiniLM" not in res.stderr
    assert (trained / "m2f_text.json").stat().st_mtime_ns == stamp  # not fine-tuned again
    features = Path(res.stdout.strip().splitlines()[-1])
    assert read_attrs(features)["config"]["text_model"].startswith(f"{trained.name}:")
