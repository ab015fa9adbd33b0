"""Model selection of ``m2f train-dialog --select``: which model of a seed becomes ``best.pt``.

Every rule is judged on dev, never on test (:data:`trainer.dialogue.config.SELECT_RULES`):

``wf1``
    the epoch of the best dev weighted F1 (the first of equals); patience counts epochs without a better one.
``loss``
    the epoch of the lowest dev cross-entropy (the first of equals); patience counts epochs without a
    lower one.
``average``
    the element-wise mean of the weights of the last K epochs trained (``--average-last``; fewer when
    the run stops before K epochs), whatever their dev scores; the run stops as ``loss`` does. Each
    epoch's weights go to ``average/epoch<NNNN>.pt`` (a ``best.pt``-like file, written atomically), and
    the folder keeps the last K of them, so a resume after ``kill -9`` finds the ones it needs: a resumed
    run replays the epochs after ``last.pt``, rewriting theirs, and the files kept from before it cover
    the rest.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from trainer.dialogue.model import DialogueModel
from trainer.dialogue.run_files import LoopState, save_model

#: What each rule keeps, in words (``m2f report``).
RULE_WORDS = {
    "wf1": "the epoch of the best dev weighted F1",
    "loss": "the epoch of the lowest dev loss",
    "average": "the mean of the weights of the last K epochs trained",
}
#: The folder of a seed that keeps the last K epochs' weights of ``--select average``.
WINDOW_DIR = "average"
_WINDOW_FILE = re.compile(r"epoch(\d{4,})\.pt")


def improves(select: str, dev: dict[str, float], state: LoopState) -> bool:
    """Whether this epoch's dev scores beat the best so far by the score ``select`` stops on."""
    if select == "wf1":
        return dev["weighted_f1"] > state.best_f1
    return dev["loss"] < state.best_loss


def window_path(run_dir: Path, epoch: int) -> Path:
    """The file of epoch ``epoch``'s weights under ``run_dir/average/``."""
    return run_dir / WINDOW_DIR / f"epoch{epoch:04d}.pt"


def window_epochs(run_dir: Path) -> list[int]:
    """The epochs whose weights ``run_dir/average/`` holds, in order."""
    folder = run_dir / WINDOW_DIR
    if not folder.is_dir():
        return []
    found = (_WINDOW_FILE.fullmatch(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def keep_in_window(
    run_dir: Path, model: DialogueModel, class_names: tuple[str, ...], epoch: int, k: int
) -> None:
    """Save epoch ``epoch``'s weights and keep the last ``k`` epochs' files (never more than ``k``).

    The oldest is deleted before the new one is written, so a kill in between leaves ``k - 1`` files, all
    of which a resume still needs or rewrites.
    """
    (run_dir / WINDOW_DIR).mkdir(exist_ok=True)
    for old in window_epochs(run_dir):
        if old <= epoch - k:
            window_path(run_dir, old).unlink()
    save_model(window_path(run_dir, epoch), model, class_names, epoch)


def drop_window_after(run_dir: Path, epoch: int) -> None:
    """On resume from ``last.pt`` at ``epoch``: remove later epochs' files (replayed and rewritten) and
    temporary files a killed writer left."""
    folder = run_dir / WINDOW_DIR
    if not folder.is_dir():
        return
    for later in window_epochs(run_dir):
        if later > epoch:
            window_path(run_dir, later).unlink()
    for stale in folder.glob(".*.tmp"):
        stale.unlink()


def average_window(run_dir: Path, last_epoch: int, k: int) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The element-wise mean of the weights of epochs ``last_epoch - k + 1 .. last_epoch`` (from 1).

    Floating-point tensors are averaged in float64 and stored in their own dtype; other tensors (none
    in today's model) are taken from the last epoch. Returns the state dict and the epochs averaged.

    Raises
    ------
    ValueError
        If one of those epochs' files is missing (the folder was changed by hand).
    """
    epochs = list(range(max(1, last_epoch - k + 1), last_epoch + 1))
    missing = [e for e in epochs if not window_path(run_dir, e).is_file()]
    if missing:
        raise ValueError(
            f"{run_dir / WINDOW_DIR}: the weights of epoch(s) {missing} to average are missing; "
            "delete the run folder and train again"
        )
    states = [
        torch.load(window_path(run_dir, e), map_location="cpu", weights_only=True)["model"] for e in epochs
    ]
    mean: dict[str, torch.Tensor] = {}
    for name, last in states[-1].items():
        if last.is_floating_point():
            total = torch.stack([s[name].double() for s in states]).mean(dim=0)
            mean[name] = total.to(last.dtype)
        else:
            mean[name] = last
    return mean, epochs


def selection_text(status: dict) -> str:
    """What chose a seed's model, in words, from its ``status.json`` (older runs: ``wf1``)."""
    select = status.get("select", "wf1")
    if select == "average":
        if status.get("averaged_epochs"):
            first, last = status["averaged_epochs"]
            return f"the mean of the weights of epochs {first}-{last} (--select average)"
        return (
            f"the mean of the last {status.get('average_last')} epochs' weights when it stops "
            f"(--select average; lowest dev loss so far at epoch {status.get('best_epoch')})"
        )
    score = "lowest dev loss" if select == "loss" else "best dev weighted F1"
    head = (
        " (untrained: the text head itself, --head-residual)"
        if status.get("head_residual") and status.get("best_epoch") == 0
        else ""
    )
    return f"epoch {status.get('best_epoch')}{head}, the {score} (--select {select})"
