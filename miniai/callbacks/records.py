"""What a recording callback holds of the last fit, kept through a fit refused before its first batch.

MetricsCB, RecorderCB, ProgressCB and ActivationStats start their records afresh at before_fit, and a later
callback's before_fit or first before_epoch may still refuse the fit (a CSV log already there, a checkpoint that
doesn't fit): nothing ran, so the last fit's records must stay. Each notes its records before starting them anew
(new objects, so the old ones are intact) and puts them back at cleanup_fit if the fit ended before any batch
(`learn.began`).
"""
from __future__ import annotations

from typing import Any

__all__ = ["keep_records", "restore_if_refused"]


def keep_records(cb: Any, *names: str) -> None:
    """Note `cb`'s attributes `names` as they are, before this fit replaces them."""
    cb._records_before_fit = {name: getattr(cb, name) for name in names}


def restore_if_refused(cb: Any, learn: Any) -> None:
    """Put back what `keep_records` noted if the fit ended (an error, a cancel) before its first batch."""
    kept = vars(cb).pop("_records_before_fit", None)
    if kept is not None and not learn.began and learn.stopped_by is not None:
        vars(cb).update(kept)
