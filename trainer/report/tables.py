"""Markdown of ``m2f report``: one run's ``report.md``, the comparison of runs, Table 2 beside the paper."""

from __future__ import annotations

from collections.abc import Sequence

from trainer.dialogue.selection import RULE_WORDS
from trainer.report.paper import PAPER_RESULTS, TABLE2_ROWS, input_name


# -- rendering ---------------------------------------------------------------------------------------
def _pct(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _status_lines(summary: dict) -> list[str]:
    lines = []
    for s in summary["per_seed"]:
        if s["state"] == "failed":
            lines.append(f"- seed {s['seed']}: **FAILED**: {s['reason']}")
        elif s["state"] != "done":
            best = s["best_dev_weighted_f1_during_training"]
            lines.append(
                f"- seed {s['seed']}: **STILL TRAINING** (epoch {s['epoch']}/{s['epochs']}; so far "
                f"{s['selected']}, dev wF1 {_pct(best if best is not None and best >= 0 else None)} at epoch "
                f"{s['best_epoch']}); its test numbers are not in this report"
            )
        else:
            lines.append(
                f"- seed {s['seed']}: done after {s['epoch']} epochs ({s['stopped']}); model: {s['selected']}"
            )
    missing = summary["seeds_planned"] - len(summary["per_seed"])
    if missing > 0:
        lines.append(f"- {missing} more seed(s) planned, not started yet")
    return lines


def render_markdown(summary: dict) -> str:
    """``report.md`` of one run."""
    test, dev, paper = summary["test"], summary["dev"], summary["paper"]
    n = len(summary["seeds_done"])
    lines = [
        f"# m2f report: {summary['run_dir']}",
        "",
        f"- dataset **{summary['dataset']}** "
        f"(class map {summary['class_map']}: {', '.join(summary['classes'])})",
        f"- modalities **{summary['modalities']}**, fusion **{summary['fusion']}**",
        f"- state: **{summary['state']}**; seeds finished {n} of {summary['seeds_planned']}"
        + (" (mean ± sample std over seeds)" if n > 1 else ""),
        f"- model of each seed: {RULE_WORDS.get(summary['select'], summary['select'])} "
        f"(--select {summary['select']}, judged on dev, never test); features `{summary['features']}`",
    ]
    if summary.get("head_residual"):
        lines.append(
            "- logits: the dialogue classifier's output + the fine-tuned text head's saved logits "
            "(--head-residual; epoch 0 = the text head alone, scored on dev)"
        )
    lines += [
        "",
    ]
    lines += [f"**WARNING**: {w}" for w in summary["warnings"]] + ([""] if summary["warnings"] else [])
    lines += _status_lines(summary) + [""]
    if test is None:
        lines += ["No finished seed with test predictions yet.", ""]
    else:
        lines += ["## Headline (test)", "", "| metric | this run | paper |", "|---|---|---|"]
        lines.append(
            f"| **weighted F1** | **{_pct(test['weighted_f1'], test['weighted_f1_std'])}** | "
            f"{paper.get('weighted_f1', '-')} |"
        )
        lines.append(
            f"| accuracy | {_pct(test['accuracy'], test['accuracy_std'])} | {paper.get('accuracy', '-')} |"
        )
        lines.append(f"| macro F1 | {_pct(test['macro_f1'], test['macro_f1_std'])} | - |")
        if dev is not None:
            lines.append(f"| dev weighted F1 | {_pct(dev['weighted_f1'], dev['weighted_f1_std'])} | - |")
        ens = summary.get("ensemble") or {}
        if ens.get("test") is not None:
            k = ens["test"]["n_seeds"]
            lines.append(
                f"| weighted F1 of the {k}-seed ensemble (mean probability) | "
                f"{_pct(ens['test']['weighted_f1'])} | - |"
            )
            if ens.get("dev") is not None:
                lines.append(f"| dev weighted F1 of the ensemble | {_pct(ens['dev']['weighted_f1'])} | - |")
        lines += [""] + ([f"Note: {paper['note']}", ""] if "note" in paper else [])
        lines += [
            "## Per class (test)",
            "",
            "| class | precision | recall | F1 | paper F1 | support |",
            "|---|---|---|---|---|---|",
        ]
        paper_f1 = paper.get("per_class_f1", {})
        for c, m in test["per_class"].items():
            lines.append(
                f"| {c} | {_pct(m['precision'], m['precision_std'])} | {_pct(m['recall'], m['recall_std'])} "
                f"| {_pct(m['f1'], m['f1_std'])} | {paper_f1.get(c, '-')} | {m['support']} |"
            )
        lines += ["", "![confusion](confusion.png)", "", "![curves](curves.png)", ""]
    cfg = summary["config"]
    lines += ["## Options", "", ", ".join(f"{k} {v}" for k, v in cfg.items()), ""]
    return "\n".join(lines)


def comparison_table(summaries: Sequence[dict]) -> str:
    """One Markdown table comparing runs (ablations), mean ± std over seeds, paper alongside; ``select`` is
    the rule that chose each seed's model (``m2f train-dialog --select``), with ``+ head`` for a run whose
    logits add the text head's (``--head-residual``)."""
    lines = [
        "| run | dataset | modalities | fusion | select | seeds | test wF1 | test acc | macro F1 | dev wF1 | "
        "ensemble test wF1 | paper acc / wF1 | state |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        t, d, p = s["test"] or {}, s["dev"] or {}, s["paper"]
        e = (s.get("ensemble") or {}).get("test") or {}
        paper = f"{p['accuracy']} / {p['weighted_f1']}" if "accuracy" in p else "-"
        cells = [
            s["run_dir"],
            s["dataset"],
            s["modalities"],
            s["fusion"],
            s["select"] + (" + head" if s.get("head_residual") else ""),
            str(len(s["seeds_done"])),
            _pct(t.get("weighted_f1"), t.get("weighted_f1_std")),
            _pct(t.get("accuracy"), t.get("accuracy_std")),
            _pct(t.get("macro_f1"), t.get("macro_f1_std")),
            _pct(d.get("weighted_f1"), d.get("weighted_f1_std")),
            _pct(e.get("weighted_f1")),
            paper,
            s["state"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table2(summaries: Sequence[dict]) -> str:
    """The paper's Table 2 beside m2f's runs: one row per input of every dataset among ``summaries``.

    Rows: the paper's (audio, visual, text only, T+A+V concatenated, M2FNet T+A+V fusion), then every
    pair of modalities. Cells: m2f's test accuracy / weighted F1 (mean ± std over seeds; a run of
    several is the latest given), "not run" where no summary has that input, and the paper's numbers or
    "not reported by the paper" (the paper gives no T+A, T+V or V+A figures).
    """
    by_key: dict[tuple[str, str, str | None], dict] = {}
    for s in summaries:
        fusion = None if len(s["modalities"]) == 1 else s["fusion"]
        by_key[(s["dataset"], s["modalities"], fusion)] = s
    datasets = list(dict.fromkeys(s["dataset"] for s in summaries))
    lines = [
        "| dataset | input | m2f test acc | m2f test wF1 | seeds | paper acc / wF1 | run |",
        "|---|---|---|---|---|---|---|",
    ]
    for ds in datasets:
        for mods, fusion in TABLE2_ROWS:
            run = by_key.get((ds, mods, fusion))
            paper = PAPER_RESULTS.get((ds, mods, fusion))
            if run is None and paper is None:
                continue
            if ds not in ("meld", "iemocap"):
                paper_cell = "- (not a paper corpus)"
            elif paper is None:
                paper_cell = "not reported by the paper"
            else:
                paper_cell = f"{paper['accuracy']} / {paper['weighted_f1']}"
            if run is None:
                cells = ["not run", "not run", "0", paper_cell, "-"]
            else:
                t = run["test"] or {}
                cells = [
                    _pct(t.get("accuracy"), t.get("accuracy_std")),
                    _pct(t.get("weighted_f1"), t.get("weighted_f1_std")),
                    str(len(run["seeds_done"])),
                    paper_cell,
                    run["run_dir"],
                ]
            lines.append("| " + " | ".join([ds, input_name(mods, fusion), *cells]) + " |")
    return "\n".join(lines) + "\n"
