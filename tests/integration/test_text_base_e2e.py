"""``m2f extract --text-base DIR``: a local RoBERTa is fine-tuned (full, first token) and embeds at its width.

The base is the tiny random RoBERTa of :mod:`pipeline.testing.text_model` (hidden size 32), so the
fine-tuning on the bundled sample corpus takes seconds; a second run reuses the cached fine-tune.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cli import main
from pipeline.extract.stage_prepare import load_manifest, manifest_hash
from pipeline.extract.stage_text import finetune_inputs, text_base_key
from pipeline.store.features import read_attrs, read_split
from pipeline.store.layout import CacheLayout

TINY_HIDDEN = 32  # make_tiny_roberta's default width (all-MiniLM-L6-v2's would be 384)


def _extract(cache: Path, cluster, *extra: str):
    return CliRunner().invoke(
        main,
        [
            "extract",
            "--dataset",
            "sample",
            "--cache",
            str(cache),
            "--modalities",
            "text",
            "--encoders",
            "random",
            *cluster.cli_args(),
            *extra,
        ],
    )


def test_extract_fine_tunes_a_local_base_and_writes_its_width_then_reuses_it(
    tiny_roberta, tmp_path, dask_cli_cluster
):
    cache = tmp_path / "cache"
    res = _extract(cache, dask_cli_cluster, "--text-base", str(tiny_roberta))
    assert res.exit_code == 0, res.output
    layout = CacheLayout(cache, "sample")
    _, manifest = load_manifest(layout, None)
    base_key = text_base_key(str(tiny_roberta))
    assert base_key.startswith("dir-")
    folder = layout.text_model_dir(manifest_hash(finetune_inputs(manifest)), base_key)
    assert f"fine-tuning {tiny_roberta} on" in res.stderr
    meta = json.loads((folder / "m2f_text.json").read_text())
    # the paper's recipe for a non-MiniLM base: every layer trained, first-token head and embedding
    assert meta["config"]["base_model"] == str(tiny_roberta.resolve())
    assert (meta["config"]["freeze_layers"], meta["config"]["pooling"]) == (0, "cls")
    assert len(meta["history"]) >= 1
    features = Path(res.stdout.strip().splitlines()[-1])
    assert read_attrs(features)["config"]["text_model"].startswith(f"{folder.name}:")
    for split in ("train", "dev", "test"):
        arrays = read_split(features, split)
        assert arrays.text_emb.shape[1] == TINY_HIDDEN, split
        assert arrays.has_text.all() and abs(arrays.text_emb).sum() > 0
    stamp = (folder / "m2f_text.json").stat().st_mtime_ns

    again = _extract(cache, dask_cli_cluster, "--text-base", str(tiny_roberta))
    assert again.exit_code == 0, again.output
    assert f"text: using cached fine-tuned model {folder}" in again.stderr
    assert (folder / "m2f_text.json").stat().st_mtime_ns == stamp  # not fine-tuned again
    assert Path(again.stdout.strip().splitlines()[-1]) == features
