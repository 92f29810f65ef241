"""Which way a watched metric improves, and whether MetricsCB logs it: the one rule EarlyStoppingCB, CheckpointCB
and ReduceLROnPlateau (EpochSchedCB) follow."""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from ..checks import warn

if TYPE_CHECKING:
    from ..learner import Learner

__all__ = ["improves", "monitor_mode", "check_monitor", "same_watch"]


# words of a metric's name that say which way it improves; 'score' alone says nothing (a Brier or FID score falls)
# words a part of the name starts with (acc: accuracy), and acronyms a part must be: 'fid' in 'fidelity' or 'wer' in
# 'answer' says nothing
_LOWER_IS_BETTER = (("loss", "error", "perplexity", "brier"), ("mse", "rmse", "mae", "fid", "nll", "wer", "cer"))
_HIGHER_IS_BETTER = (("acc", "precision", "recall", "dice", "bleu"), ("f1", "auc", "auroc", "auprc", "iou", "r2"))


def _says(parts: list[str], words: tuple[tuple[str, ...], tuple[str, ...]]) -> bool:
    starts, acronyms = words
    return any(part.startswith(starts) or part in acronyms for part in parts)


def improves(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether a watched `value` beats `best` by more than `min_delta` the way `mode` says ('min': lower); any
    value but NaN beats no best (None). EarlyStoppingCB's and CheckpointCB's one rule."""
    if math.isnan(value):
        return False
    return best is None or (value < best - min_delta if mode == "min" else value > best + min_delta)


def monitor_mode(monitor: str | None, mode: str | None, who: str) -> str | None:
    """`mode` ('min' or 'max') if given, else the way `monitor` improves, read from its name (as fastai and Keras
    do: a loss or error falls, an accuracy rises); a name that says neither needs `mode`. No monitor: `mode`."""
    if mode is not None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max' (or None: read from the monitor's name), got {mode!r}")
        return mode
    if monitor is None:
        return None
    # the name's parts: valid_top5_accuracy -> valid, top5, accuracy; validMeanAbsError -> valid, mean, abs, error
    parts = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", monitor).lower().replace("-", "_").split("_")
    lower, higher = _says(parts, _LOWER_IS_BETTER), _says(parts, _HIGHER_IS_BETTER)
    if lower != higher:
        negated = "neg" in parts  # scikit-learn's neg_mean_squared_error: the error, negated, rises
        return "min" if lower != negated else "max"
    raise ValueError(f"{who}(monitor={monitor!r}) can't tell from the name whether a higher value is better: "
                     "pass mode='min' or mode='max'")


def check_monitor(learn: Learner, monitor: str, who: str) -> None:
    """Raise if `monitor` is not a name the learner's MetricsCB logs; `who` names the callback asking."""
    metrics = getattr(learn, "metrics", None)
    if metrics is None or all(cb is not metrics for cb in learn.cbs):
        raise ValueError(f"{who}(monitor={monitor!r}) reads the metric MetricsCB logs, and this learner has no "
                         "MetricsCB: add MetricsCB() (it logs train_loss and valid_loss) to cbs")
    if monitor not in metrics.names:
        raise ValueError(f"{who}(monitor={monitor!r}): MetricsCB does not log that name; it logs "
                         f"{', '.join(metrics.names)}")
    split = monitor.split("_")[0]
    if split not in getattr(learn, "passes", (split,)):  # it would never get a value, and never act
        raise ValueError(f"{who}(monitor={monitor!r}) watches the {split} pass, and this fit runs none (fit(..., "
                         f"{split}=False)): watch a metric of a pass it runs, or run the {split} pass")


def same_watch(cb: Any, state: dict[str, Any], who: str) -> bool:
    """Whether `state` was saved watching what `cb` watches (checkpoints from before that was saved: assumed so);
    if not, a warning that its best is not carried over."""
    saved = (state.get("monitor", cb.monitor), state.get("mode", cb.mode))
    if saved == (cb.monitor, cb.mode) or saved[0] is None:  # (nothing watched, no best to carry over)
        return True
    warn(f"{who} watched {saved[0]!r} ({saved[1]}) in the run resumed from and watches {cb.monitor!r} "
         f"({cb.mode}) now: its best value so far is not carried over, the best is looked for afresh")
    return False
