"""trainer.report.tables.table2: the paper's Table 2 rows beside m2f's runs, every modality subset
included."""

from __future__ import annotations

from trainer.report.paper import PAPER_RESULTS
from trainer.report.tables import table2


def summary(dataset: str, modalities: str, fusion: str, wf1: float, seeds: int = 2) -> dict:
    test = {"accuracy": wf1 + 0.01, "accuracy_std": 0.002, "weighted_f1": wf1, "weighted_f1_std": 0.003}
    return {
        "dataset": dataset,
        "modalities": modalities,
        "fusion": fusion,
        "test": test,
        "seeds_done": list(range(seeds)),
        "run_dir": f"runs/{dataset}-{modalities}-{fusion}",
    }


def rows_of(table: str) -> dict[tuple[str, str], list[str]]:
    out = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[(cells[0], cells[1])] = cells[2:]
    return out


def test_every_subset_run_gets_a_row_and_unreported_pairs_say_so():
    runs = [summary("meld", m, "attention", 0.6 + 0.01 * i) for i, m in enumerate(("t", "ta", "tv", "av"))]
    runs.append(summary("meld", "tav", "concat", 0.65))
    rows = rows_of(table2(runs))
    for name in ("T+A attention fusion", "T+V attention fusion", "A+V attention fusion"):
        acc, wf1, seeds, paper, run = rows[("meld", name)]
        assert paper == "not reported by the paper" and seeds == "2" and run.startswith("runs/meld-")
    assert rows[("meld", "T+A attention fusion")][1] == "61.00 ± 0.30"  # m2f's own number, in percent
    assert rows[("meld", "text only")][:2] == ["61.00 ± 0.20", "60.00 ± 0.30"]
    assert rows[("meld", "text only")][3] == "67.24 / 66.23"
    # the paper's rows are listed even where m2f has no run, and say so
    assert rows[("meld", "audio only")] == ["not run", "not run", "0", "49.04 / 39.63", "-"]
    m2f = rows[("meld", "T+A+V attention fusion")]
    assert m2f[0] == "not run" and m2f[3] == "67.85 / 66.71"
    assert rows[("meld", "T+A+V concatenated")][3] == "67.28 / 66.81"
    # pairs that were neither run nor reported are left out rather than padded
    assert ("meld", "T+A concatenated") not in rows
    # the paper rows themselves: exactly the five inputs of each corpus
    paper_rows = {k for k in PAPER_RESULTS if k[0] == "meld"}
    assert {(m, f) for _, m, f in paper_rows} == {
        ("a", None),
        ("v", None),
        ("t", None),
        ("tav", "concat"),
        ("tav", "attention"),
    }


def test_several_corpora_and_non_paper_corpora():
    runs = [summary("iemocap", "av", "attention", 0.3), summary("custom", "ta", "concat", 0.5)]
    rows = rows_of(table2(runs))
    assert rows[("iemocap", "audio only")][3] == "26.56 / 21.79"
    assert rows[("iemocap", "A+V attention fusion")][3] == "not reported by the paper"
    assert rows[("custom", "T+A concatenated")][3] == "- (not a paper corpus)"
    assert ("custom", "audio only") not in rows
