"""Which way a watched metric improves, and whether MetricsCB logs it: the one rule EarlyStoppingCB, CheckpointCB
and ReduceLROnPlateau (EpochSchedCB) follow."""
from __future__ import annotations

import math
import re
from typing import Any

from ..checks import warn
from ..learner import CancelEpochException, CancelFitException, Learner
from .metrics import MetricsCB

__all__ = ["improves", "name_mode", "monitor_mode", "check_monitor", "same_watch", "note_cut_pass", "note_unread"]


# the last word of a metric's name (what it measures: DiceBCELoss is a loss) says which way it improves, read as a
# whole word ('acc' in 'false_accept_rate' says nothing), after the words that qualify it (f1_macro, auc_roc,
# accuracy_top5, loss_2) and before "at", which says when it was taken (recall_at_5, loss_at_best_acc); 'score'
# alone says nothing (a Brier or FID score falls)
_LOWER_IS_BETTER = {"loss", "error", "error_rate", "perplexity", "brier", "mse", "rmse", "mae", "fid", "nll", "wer",
                    "cer"}
_HIGHER_IS_BETTER = {"acc", "accuracy", "precision", "recall", "dice", "jaccard", "bleu", "f1", "auc", "auroc",
                     "auprc", "iou", "r2"}
_QUALIFIERS = {"score", "metric", "coef", "macro", "micro", "weighted", "multi", "binary", "roc", "pr", "top", "k",
               "avg", "mean"}
# words that may turn the direction round: scikit-learn's neg_mean_squared_error rises, a neg_recall (of the
# negative class) rises too, as does a one_minus_error or a 1-acc: the name can't say
_NEGATIONS = {"neg", "negative", "minus", "inv", "inverse"}


def name_mode(monitor: str) -> str | None:
    """'min' or 'max' as `monitor`'s last word says, after the words that qualify it (valid_f1_macro: max;
    validMeanAbsError: min); None when it says neither, or a word in the name may turn it round (neg, minus)."""
    # the name's words: valid_DiceBCELoss -> valid, dice, bce, loss; valid_acc5 -> valid, acc
    name = re.sub(r"([a-z0-9])([A-Z])|([A-Z])([A-Z][a-z])", r"\1\3_\2\4", monitor).lower()
    name = name.replace("negative_log_likelihood", "nll")
    words = _LOWER_IS_BETTER | _HIGHER_IS_BETTER

    def word(part: str) -> str:  # (acc5 -> acc; f1, r2 are words)
        return part if part in words else re.sub(r"(?<=[a-z])\d+$", "", part)
    parts = [word(part) for part in re.split(r"[\W_]+", name)]
    parts = [part for part in parts if part and not part.isdigit()]  # (acc@1, loss_2: the number says nothing)
    if "at" in parts:
        parts = parts[:parts.index("at")]
    while len(parts) > 1 and parts[-1] in _QUALIFIERS:
        parts.pop()
    # 1-acc, 1 - f1, 1-acc5 (not top-1-acc, top1-acc, 1-shot): a 1 that starts a part, a metric's word after it
    one_minus = re.search(r"(?<![a-z0-9-])1\s*-\s*([a-z0-9]+)", name)
    negated = one_minus is not None and word(one_minus.group(1)) in words
    if not parts or _NEGATIONS.intersection(parts) or negated:
        return None
    last = "_".join(parts[-2:]) if parts[-2:] == ["error", "rate"] else parts[-1]
    return "min" if last in _LOWER_IS_BETTER else "max" if last in _HIGHER_IS_BETTER else None


def improves(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether a watched `value` beats `best` by more than `min_delta` the way `mode` says ('min': lower); any
    value but NaN beats no best (None). EarlyStoppingCB's and CheckpointCB's one rule."""
    if math.isnan(value):
        return False
    return best is None or (value < best - min_delta if mode == "min" else value > best + min_delta)


def monitor_mode(monitor: str | None, mode: str | None, who: str) -> str | None:
    """`mode` ('min' or 'max') if given, else the way `monitor` improves, read from its name (as fastai and Keras
    do: a loss or error falls, an accuracy rises; `name_mode`); a name that says neither needs `mode`, and a mode
    the name contradicts is refused. No monitor: `mode`."""
    if mode is not None and mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max' (or None: read from the monitor's name), got {mode!r}")
    way = None if monitor is None else name_mode(monitor)
    if mode is not None and way is not None and mode != way:
        raise ValueError(f"{who}(monitor={monitor!r}, mode={mode!r}): {monitor!r} improves as it "
                         f"{'falls' if way == 'min' else 'rises'}, so mode={mode!r} would take its worst values for "
                         f"its best. Pass mode={way!r}, or leave mode out")
    if mode is not None or monitor is None:
        return mode
    if way is None:
        raise ValueError(f"{who}(monitor={monitor!r}) can't tell from the name whether a higher value is better: "
                         "pass mode='min' or mode='max'")
    return way


def check_monitor(learn: Learner, monitor: str, who: str, order: float = math.inf) -> MetricsCB:
    """The MetricsCB of this fit that logs `monitor`, for `who` to read it from (a fit may have two: the learner's
    and one given to fit); raise if none does, or those that do run after `who` (of `order`), which would read the
    previous epoch's value."""
    metrics = getattr(learn, "metrics", None)  # (one of the learner's: a stand-in of one's own counts too)
    running = [cb for cb in learn.cbs if isinstance(cb, MetricsCB) or cb is metrics]
    if not running:
        raise ValueError(f"{who}(monitor={monitor!r}) reads the metric MetricsCB logs, and this learner has no "
                         "MetricsCB: add MetricsCB() (it logs train_loss and valid_loss) to cbs")
    logs = [cb for cb in running if monitor in cb.names]
    if not logs:
        raise ValueError(f"{who}(monitor={monitor!r}): " + ("MetricsCB does not log that name; it logs " if len(
            running) == 1 else "none of this fit's MetricsCBs logs that name; they log ") + ", ".join(
            dict.fromkeys(name for cb in running for name in cb.names)))
    split = monitor.split("_")[0]
    if split not in getattr(learn, "passes", (split,)):  # it would never get a value, and never act
        raise ValueError(f"{who}(monitor={monitor!r}) watches the {split} pass, and this fit runs none (fit(..., "
                         f"{split}=False)): watch a metric of a pass it runs, or run the {split} pass")
    early = [cb for cb in logs if cb.order < order]
    if not early:
        late = logs[0]
        raise ValueError(f"{who}(monitor={monitor!r}) reads what MetricsCB logs at each pass's end, and "
                         f"{type(late).__name__} (order {late.order}) runs after {who} (order {order}): {who} would "
                         f"read the previous epoch's value. Give {type(late).__name__} an order below {order} "
                         "(MetricsCB's own is 10)")
    return next((cb for cb in early if cb is metrics), early[0])  # (two logging it, the loss: learn.metrics)


def same_watch(cb: Any, state: dict[str, Any], who: str) -> bool:
    """Whether `state` was saved watching what `cb` watches (checkpoints from before that was saved: assumed so);
    if not, a warning that its best is not carried over."""
    saved = (state.get("monitor", cb.monitor), state.get("mode", cb.mode))
    if saved == (cb.monitor, cb.mode) or saved[0] is None:  # (nothing watched, no best to carry over)
        return True
    warn(f"{who} watched {saved[0]!r} ({saved[1]}) in the run resumed from and watches {cb.monitor!r} "
         f"({cb.mode}) now: its best value so far is not carried over, the best is looked for afresh")
    return False


def note_cut_pass(cb: Any, learn: Learner) -> None:
    """At a pass's cleanup: note whether `cb` read the value of the pass `cb.monitor` comes from (`cb._read`, set
    where it reads), or a cancel cut the pass before (`cb._cut`: the epochs), for `note_unread` at the fit's end."""
    if learn.training != cb.monitor.startswith("train_") or not isinstance(learn.epoch, int):
        return  # (not the watched pass, or SWACB's of the average)
    if getattr(cb, "_read", False):
        cb._read_any = True
    elif isinstance(learn.stopped_by, CancelEpochException):
        cb._cut = [*getattr(cb, "_cut", []), learn.epoch]
    cb._read = False


def note_unread(cb: Any, learn: Learner, who: str) -> None:
    """At cleanup_fit: warn when cancels cut every watched pass of the fit before `cb` read one, which left it
    nothing to act on (a callback cutting every validation pass, while the loss exploded); validating every k
    epochs, cutting the others, gives it values."""
    cut = getattr(cb, "_cut", [])
    if cut and not getattr(cb, "_read_any", False) and isinstance(learn.stopped_by, (type(None), CancelFitException)):
        split = "training" if cb.monitor.startswith("train_") else "validation"
        warn(f"{who} watches {cb.monitor!r}, and all {len(cut)} {split} passes of this fit were cut short "
             f"(CancelEpochException, the first at epoch {cut[0]}) before MetricsCB logged them: it read no value and "
             f"acted on none. A callback that cuts every {split} pass leaves {who} nothing to act on")
