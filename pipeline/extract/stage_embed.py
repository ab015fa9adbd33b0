"""Stage 4, embed: media.h5 + encoders + text model -> features.h5, on the dask workers (resumable)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.extract.engine import Engine
from pipeline.extract.options import EmbedSpec, ExtractOptions, ExtractResult, SplitSummary
from pipeline.extract.resumable import run_resumable_stage
from pipeline.extract.stage_prepare import order_by_split
from pipeline.extract.tasks import embed_partition
from pipeline.manifest import Utterance, write_jsonl
from pipeline.store.atomic import atomic_write_json, atomic_write_text
from pipeline.store.cache import FeatureWriter


def feature_config(
    opts: ExtractOptions,
    manifest_key: str,
    media_cfg: dict | None,
    encoders_id: str | None,
    text_id: str | None,
    text_classes: Sequence[str] | None = None,
) -> dict:
    """Every option that changes the numbers of ``features.h5``; its hash names the folder.

    ``text_classes`` (the text model's head classes) adds ``text_logits``: a file with the head's logits
    never shares a folder with one made before they were saved (whose config lacks the key), while the
    key of a text model without a head is unchanged.
    """
    config = {
        "dataset": opts.dataset,
        "manifest": manifest_key,
        "splits": list(opts.splits),
        "limit": opts.limit,
        "modalities": sorted(opts.modalities),
        "media": media_cfg,
        "encoders": encoders_id,
        "text_model": text_id,
    }
    if text_classes is not None:
        config["text_logits"] = list(text_classes)
    return config


def make_embed_spec(
    opts: ExtractOptions,
    media_file: Path | None,
    encoders: str | None,
    text_model: str | None,
    media_cfg: dict | None,
    encoders_id: str | None = None,
    text_id: str | None = None,
) -> EmbedSpec:
    """What each embed task gets; the media file is made absolute (a worker may run in another folder).

    ``encoders_id`` and ``text_id`` are the content identities of the weights (workers cache loaded
    models under them); None lets each worker hash the files itself.
    """
    n_frames = int(media_cfg["n_frames"]) if media_cfg else 15
    media = str(Path(media_file).resolve()) if media_file is not None else None
    return EmbedSpec(
        tuple(opts.modalities),
        opts.device,
        opts.batch,
        media,
        encoders,
        text_model,
        n_frames,
        encoders_id,
        text_id,
    )


def embed_inputs(spec: EmbedSpec) -> list[str]:
    """The files and folders an embed task reads (a hub id or ``random`` reads none)."""
    paths = [spec.media, None if spec.encoders == "random" else spec.encoders, spec.text_model]
    return [p for p in paths if p is not None and Path(p).is_absolute()]


def stage_embed(
    engine: Engine,
    opts: ExtractOptions,
    selected: list[Utterance],
    spec: EmbedSpec,
    config: dict,
    config_key: str,
    result: ExtractResult,
    on_written: Callable[[object, int], None] | None = None,
) -> Path:
    """Encoders and text model over the selection -> ``features.h5`` (skip what is written)."""
    path = opts.layout.features_file(config_key)
    problems_log = opts.layout.features_problems(config_key)
    with FeatureWriter(
        path, opts.dataset, config, config.get("text_logits")
    ) as writer:  # holds the cache lock until the stage ends
        write_jsonl(selected, opts.layout.features_manifest(config_key))  # what these features are made of

        def write(res: dict) -> None:
            writer.append(res["split"], res["rows"])
            result.summary[res["split"]].done += len(res["rows"]["utt_id"])
            if res.get("problems"):
                with open(problems_log, "a", encoding="utf-8") as f:
                    for line in res["problems"]:
                        f.write(json.dumps(line, ensure_ascii=False) + "\n")

        for u in selected:  # every split in the summary before the first result arrives
            result.summary.setdefault(u.split, SplitSummary())
        done = run_resumable_stage(
            engine,
            writer,
            selected,
            result,
            stage="embed",
            label="features",
            task=embed_partition,
            task_args=(spec,),
            write=write,
            order=order_by_split(selected),
            on_written=on_written,
        )
        for u in selected:
            s = result.summary[u.split]
            s.total += 1
            s.skipped += u.id in done
        if problems_log.exists():
            dedupe_problems(problems_log)
    result.embed_problems = problems_log if problems_log.exists() else None
    atomic_write_json(opts.layout.features_config(config_key), config)
    return path


def dedupe_problems(path: Path) -> None:
    """Rewrite an embed ``problems.jsonl`` without repeated lines (a resumed run may append one twice)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    atomic_write_text(path, "".join(line + "\n" for line in dict.fromkeys(x for x in lines if x.strip())))


def problem_ids(path: Path | None) -> dict[str, set[str]]:
    """Ids of the utterances named in a ``problems.jsonl`` (media or embed), per split (empty: no file)."""
    out: dict[str, set[str]] = {}
    if path is not None and path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                d = json.loads(line)
                out.setdefault(d.get("split", "?"), set()).add(d["utt_id"])
    return out
