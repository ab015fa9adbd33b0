"""The training commands' options come from the config dataclasses: cli.py restates no default or choice."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli import main
from pipeline.encoders.train_config import TrainEncodersConfig
from pipeline.names import ENCODER_KINDS
from pipeline.text.embedder import POOLINGS
from pipeline.text.finetune.recipe import FinetuneConfig
from trainer.dialogue.config import DialogueTrainConfig

#: command -> the config dataclasses its options stand for, with their option-name prefix
CONFIGS = {
    "train-dialog": [(DialogueTrainConfig, "")],
    "train-encoders": [(FinetuneConfig, "text-"), (TrainEncodersConfig, "")],
    "extract": [(FinetuneConfig, "text-")],
}


def _choices(param: click.Parameter) -> tuple | None:
    return tuple(param.type.choices) if isinstance(param.type, click.Choice) else None


@pytest.mark.parametrize("command", CONFIGS)
def test_an_option_of_a_field_is_made_from_the_field(command):
    """A hand-written option for a field with a default or choices would restate them: only made ones."""
    params = {p.name: p for p in main.commands[command].params}
    field_choices = set()
    for config, prefix in CONFIGS[command]:
        for f in dataclasses.fields(config):
            if "choices" in f.metadata:
                field_choices.add(tuple(f.metadata["choices"]))
            param = params.get(prefix.replace("-", "_") + f.name)
            if param is None:
                continue
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            made = getattr(param, "config_field", None) == (config, f.name)
            if not made:  # a command's own option (e.g. --media, found in the cache) for a required field
                assert not has_default and "choices" not in f.metadata, (
                    f"{command} {param.opts[0]}: restates {config.__name__}.{f.name}; use config_options"
                )
                continue
            assert param.required == (not has_default)
            if has_default:
                assert param.default == f.default, (command, param.name)
            assert _choices(param) == (tuple(f.metadata["choices"]) if "choices" in f.metadata else None)
            assert f.metadata["help"] in (param.help or "") or command == "extract"
    for param in params.values():  # nor a copy of a field's choices under another name
        if getattr(param, "config_field", None) is None and _choices(param) is not None:
            assert _choices(param) not in field_choices, (command, param.name)


def test_every_field_with_a_help_is_an_option():
    made = {getattr(p, "config_field", None) for command in CONFIGS for p in main.commands[command].params}
    for config in (DialogueTrainConfig, TrainEncodersConfig, FinetuneConfig):
        for f in dataclasses.fields(config):
            if "help" in f.metadata:
                assert (config, f.name) in made, f"{config.__name__}.{f.name} has a help but no option"


def test_choices_come_from_the_constants():
    params = {p.name: p for p in main.commands["train-encoders"].params}
    assert _choices(params["text_pooling"]) == POOLINGS
    assert _choices(params["modality"]) == (*ENCODER_KINDS, "text", "all")


def test_the_main_help_does_not_import_the_configs():
    """`m2f --help` stays fast: the training configs (and torch) are imported only for their commands."""
    code = (
        "import sys; from click.testing import CliRunner; from cli import main; "
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0; "
        "print(sorted(m for m in ('torch', 'trainer.dialogue.config', 'pipeline.encoders.train_config') "
        "if m in sys.modules))"
    )
    root = Path(__file__).parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_command_functions_are_named_one_way():
    for name, command in main.commands.items():
        assert command.callback.__name__ == name.replace("-", "_") + "_command", name


def test_train_dialog_passes_the_dataclass_defaults(monkeypatch, tmp_path):
    import trainer.dialogue.fit

    seen = []
    monkeypatch.setattr(trainer.dialogue.fit, "train_dialogue", lambda c: seen.append(c) or Path(c.out))
    features, out = tmp_path / "f.h5", tmp_path / "run"
    res = CliRunner().invoke(main, ["train-dialog", "--features", str(features), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert seen == [DialogueTrainConfig(features=str(features), out=str(out))]
    assert f"done: 1 seed(s) in {out}" in res.output
    res = CliRunner().invoke(
        main,
        ["train-dialog", "--features", str(features), "--out", str(out), "--modalities", "visual,text"]
        + ["--no-progress", "--compile", "--positions", "none", "--layers", "2"],
    )
    assert res.exit_code == 0, res.output
    assert seen[-1] == DialogueTrainConfig(
        features=str(features),
        out=str(out),
        modalities="tv",
        progress=False,
        compile=True,
        positions="none",
        layers=2,
    )


def test_train_encoders_passes_the_dataclass_defaults(monkeypatch, tmp_path):
    import pipeline.encoders.train

    seen = []
    monkeypatch.setattr(pipeline.encoders.train, "train_encoders", lambda c: seen.append(c) or Path(c.out))
    media, out = tmp_path / "media.h5", tmp_path / "enc"
    args = ["train-encoders", "--dataset", "custom", "--media", str(media), "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert seen == [TrainEncodersConfig(media=media, out=out, modalities=ENCODER_KINDS)]
    assert res.output.split() == [str(out / f"{m}.pt") for m in ENCODER_KINDS]
    res = CliRunner().invoke(main, [*args, "--modality", "face", "--classes", "joy, anger", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    assert seen[-1] == TrainEncodersConfig(
        media=media, out=out, modalities=("face",), classes=("joy", "anger"), epochs=2
    )


def test_train_encoders_text_passes_the_finetune_config(monkeypatch, tmp_path):
    import pipeline.corpora
    import pipeline.text.finetune.loop

    seen = []
    monkeypatch.setattr(pipeline.corpora, "prepare_corpus", lambda dataset, root: ["corpus"])
    monkeypatch.setattr(
        pipeline.text.finetune.loop, "finetune_text", lambda u, c: seen.append((u, c)) or Path(c.out)
    )
    out = tmp_path / "text"
    args = ["train-encoders", "--dataset", "sample", "--modality", "text", "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert seen == [(["corpus"], FinetuneConfig(out=out))]
    more = ["--text-pooling", "mean", "--text-context", "past", "--epochs", "1"]
    res = CliRunner().invoke(main, [*args, *more])
    assert res.exit_code == 0, res.output
    assert seen[-1][1] == FinetuneConfig(out=out, pooling="mean", context="past", epochs=1)
