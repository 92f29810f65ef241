"""What a recording callback holds of the last fit, kept through a fit refused before its first batch.

MetricsCB, RecorderCB, ProgressCB and ActivationStats start their records afresh at before_fit, and a later
callback's before_fit, before_epoch or first before_batch may still refuse the fit (a CSV log already there, a
checkpoint that doesn't fit), or its first batch fail in the model or the loss (data the model can't take, a NaN
loss the guard stops at after_loss): nothing trained, so the last fit's records must stay. Each notes its records
before starting them anew (new objects, so the old ones are intact) and puts them back at cleanup_fit if the fit
ended before its first loss passed after_loss (`learn.began`), unless a checkpoint was loaded (`forget_records`):
the records are then the resumed run's, with its weights. A plot of such a callback with nothing recorded raises
`nothing_recorded`'s error.
"""
from __future__ import annotations

from typing import Any

__all__ = ["keep_records", "restore_if_refused", "forget_records", "nothing_recorded"]


def keep_records(cb: Any, *names: str) -> None:
    """Note `cb`'s attributes `names` as they are, before this fit replaces them."""
    cb._records_before_fit = {name: getattr(cb, name, None) for name in names}  # (None: one pickled before it had it)


def restore_if_refused(cb: Any, learn: Any) -> None:
    """Put back what `keep_records` noted if the fit ended (an error, a cancel) before its first loss passed
    after_loss."""
    kept = vars(cb).pop("_records_before_fit", None)
    if kept is not None and not learn.began and learn.stopped_by is not None:
        vars(cb).update(kept)


def forget_records(cbs: list[Any]) -> None:
    """Drop what `keep_records` noted: a checkpoint was loaded, and the last fit's records don't go with it."""
    for cb in cbs:
        vars(cb).pop("_records_before_fit", None)


def nothing_recorded(who: str, fitted: bool, fit_call: str, why: str) -> ValueError:
    """The error for a plot of `who`'s records when there are none (an empty figure would say nothing of why):
    `fit_call` fits with it, `why` says what its fits record, and so why they recorded nothing."""
    if not fitted:
        return ValueError(f"{who}: nothing recorded yet: fit with it in the learner's callbacks ({fit_call}), "
                          "then plot")
    return ValueError(f"{who}: its fits recorded no batch: {why}")
