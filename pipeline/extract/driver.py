""":func:`run_extract`: the stages of ``m2f extract`` in order, each skipped when its output is complete."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from pipeline.extract.cluster import clip_folders
from pipeline.extract.engine import Engine
from pipeline.extract.options import ExtractError, ExtractOptions, ExtractResult, SplitSummary
from pipeline.extract.stage_embed import (
    embed_inputs,
    feature_config,
    make_embed_spec,
    problem_ids,
    stage_embed,
)
from pipeline.extract.stage_encoders import (
    cached_encoders,
    check_given_encoders,
    check_input_contract,
    check_trainable,
    encoder_identity,
    stage_encoders,
    stored_media_config,
    training_labels,
)
from pipeline.extract.stage_media import media_config_dict, media_key, stage_media
from pipeline.extract.stage_prepare import load_manifest, manifest_hash, select
from pipeline.extract.stage_text import (
    check_text_model,
    given_text_model,
    resolve_text_base,
    stage_text_model,
    text_head_classes,
    text_identity,
)
from pipeline.extract.tasks import warm_modules
from pipeline.store.cache import config_hash


def run_extract(
    opts: ExtractOptions, client=None, on_written: Callable[[object, int], None] | None = None
) -> ExtractResult:
    """Run every stage of ``m2f extract``; returns the features path and what was measured.

    Parameters
    ----------
    opts : ExtractOptions
    client : distributed.Client, optional
        An executor to use instead of starting one (it is not closed).
    on_written : callable, optional
        ``on_written(client, i)`` after the i-th partition of a stage is written (a test seam, e.g. to
        kill a worker mid-run).

    Raises
    ------
    ExtractError
        When the run cannot go on (no encoders, encoders that do not fit the media, empty selection,
        ...); the message says what to do.
    """
    t_start = time.perf_counter()
    layout = opts.layout
    manifest_file, manifest = load_manifest(layout, opts.root)
    selected = select(manifest, opts.splits, opts.limit)
    if not selected:
        have = sorted({u.split for u in manifest})
        raise ExtractError(f"{manifest_file} has no utterances in splits {list(opts.splits)} (it has {have})")
    key = manifest_hash(selected)  # the features key: labels and text are in features.h5
    labels = training_labels(selected)  # what default encoders learn (the media key leaves labels out)
    media_cfg = media_config_dict(opts.media_config) if opts.needs_media else None
    mkey = key if media_cfg is None else media_key(media_cfg, selected)
    result = ExtractResult(features=Path(), manifest=manifest_file, media=None, summary={})
    engine = Engine(opts, client)
    try:
        if media_cfg is not None:  # opts.needs_media
            if not layout.media_file(mkey).exists():
                # media to decode: the cluster starts while the checks below load models (seconds)
                engine.start_soon(warm_modules(opts.modalities, "media"))
            check_given_encoders(opts, media_cfg)  # before hours of decoding, not after
        if opts.text_base is not None and "text" in opts.modalities:
            resolve_text_base(opts.text_base)  # a mistyped folder fails now, not after decoding the media
        text_given = given_text_model(opts) if "text" in opts.modalities else None
        # a given text model is loaded before the first task: a bad one costs seconds, not the media stage
        given_text_id = check_text_model(text_given) if text_given is not None else None
        media_file = None
        if media_cfg is not None:  # opts.needs_media
            if opts.encoders is None and cached_encoders(opts, mkey, labels)[1]:
                check_trainable(opts, cached_encoders(opts, mkey, labels)[0])  # fail before decoding
            engine.require_shared([*clip_folders(selected), layout.dataset_dir])
            engine.warm_after(warm_modules(opts.modalities, "embed"))
            media_file = stage_media(engine, opts, selected, media_cfg, mkey, result, on_written)
            result.media, result.problems = media_file, layout.problems_file(mkey)
        enc_spec = stage_encoders(opts, media_file, mkey, labels)
        if media_file is not None:
            check_input_contract(enc_spec, stored_media_config(media_file), opts.modalities, str(media_file))
        text_model = stage_text_model(opts, manifest)
        txt_id: str | None
        if given_text_id is not None:
            txt_id = given_text_id
        else:
            txt_id = text_identity(text_model) if "text" in opts.modalities else None
        result.encoders, result.text_model = enc_spec, text_model
        enc_id = encoder_identity(enc_spec)
        txt_classes = text_head_classes(text_model) if "text" in opts.modalities else None
        config = feature_config(opts, key, media_cfg, enc_id, txt_id, txt_classes)
        spec = make_embed_spec(opts, media_file, enc_spec, text_model, media_cfg, enc_id, txt_id)
        result.embed_spec = spec
        engine.require_shared([layout.dataset_dir, *embed_inputs(spec)])
        result.features = stage_embed(
            engine, opts, selected, spec, config, config_hash(config), result, on_written
        )
    finally:
        engine.close()
    ids = problem_ids(result.problems)
    for split, uids in problem_ids(result.embed_problems).items():
        ids.setdefault(split, set()).update(uids)
    for split, uids in ids.items():
        result.summary.setdefault(split, SplitSummary()).problems = len(uids)
    result.seconds["total"] = time.perf_counter() - t_start
    return result
