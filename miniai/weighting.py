"""How a batch counts in a pass's mean: its items, the targets its loss leaves out, and its per-item losses reduced
the way the loss reduces them. MetricsCB, get_preds and the NaN guard share these, so they agree on one rule."""
from __future__ import annotations

import functools
import inspect
import numbers
from typing import Any

import torch

from .utils import base_loss, class_loss, loss_reduction, loss_setting

__all__ = ["averages_over_targets", "ignored_target", "stated_ignore", "as_integer", "target_mask", "loss_mask",
           "position_weights", "mean_loss", "counted_mean", "n_items", "input_items", "batch_parts", "batch_n_items",
           "sum_dtype"]


def averages_over_targets(loss_func: Any) -> bool:
    """Whether `loss_func` is torch's cross-entropy or NLL loss (a function, a partial of one, an nn loss) averaging
    over its targets (reduction 'mean', or get_preds' per-item copy of such a loss): it divides by their class
    weights' sum, leaving out its ignore_index. Other losses' `weight` or -100 targets mean something else."""
    if getattr(loss_func, "reduced_by_sum", False) or loss_reduction(loss_func) == "sum":
        return False
    return class_loss(loss_func)


def ignored_target(loss_func: Any) -> int | None:
    """The target value the loss leaves out: its own `ignore_index` (nn.CrossEntropyLoss(ignore_index=0), or one
    given to a partial of F.cross_entropy), else torch's default, -100 (also for an ignore_index of None); None for
    a torch loss that leaves out none (F.mse_loss, nn.L1Loss: whole-number targets of -100 are values)."""
    if _torch_loss_without_ignore(base_loss(loss_func)):
        return None
    value = as_integer(loss_setting(loss_func, "ignore_index", -100))
    return value if value is not None else -100


def _torch_loss_without_ignore(fn: Any) -> bool:
    """Whether `fn` is one of torch's losses (a function of torch.nn.functional, an nn loss of torch's) that takes
    no ignore_index."""
    if isinstance(fn, torch.nn.Module):
        return type(fn).__module__.startswith("torch.nn") and not hasattr(fn, "ignore_index")
    return getattr(fn, "__module__", None) == "torch.nn.functional" and not _takes_ignore_index(fn)


@functools.lru_cache(maxsize=None)  # (read per batch, under DDP and in get_preds: a signature costs ~15 µs; torch's
def _takes_ignore_index(fn: Any) -> bool:  # functions are few)
    """Whether a function of torch.nn.functional takes an ignore_index (one without a signature to read: taken so)."""
    try:
        return "ignore_index" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True


def stated_ignore(loss_func: Any) -> int | None:
    """The target value the loss says it leaves out: its `ignore_index`, or -100 for torch's cross-entropy and NLL
    left at theirs; None when it can't be told (a function of one's own that sets none)."""
    value = as_integer(loss_setting(loss_func, "ignore_index", None))
    return value if value is not None else -100 if class_loss(loss_func) else None


def as_integer(value: Any) -> int | None:
    """`value` as an int if it is an integer (a NumPy one too, not a bool), else None."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else None


def target_mask(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor | None:
    """Where `target` is not `ignore_index`; None when no target can be: no ignore_index, or one the targets' dtype
    can't hold (compared with uint8 targets, -100 would wrap to 156 and leave out class 156)."""
    if ignore_index is None or target.dtype == torch.bool:
        return None
    if not target.is_floating_point() and not torch.iinfo(target.dtype).min <= ignore_index <= torch.iinfo(
            target.dtype).max:
        return None
    return target != ignore_index


def loss_mask(loss: torch.Tensor, target: Any, ignore_index: int | None) -> torch.Tensor | None:
    """Where unreduced losses count: positions whose integer target (one per loss) is not `ignore_index`; None
    when all do (float targets, targets of another shape, an ignore_index the dtype can't hold)."""
    if isinstance(target, torch.Tensor) and not target.is_floating_point() and target.shape == loss.shape:
        return target_mask(target, ignore_index)
    return None


def position_weights(loss: torch.Tensor, target: Any, loss_func: Any
                     ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(where, what) of unreduced losses in the loss's mean: `where` the positions count, not where their integer
    target is the loss's ignore_index (None: everywhere); `what` each position counts for in the divisor: its
    target's class weight (torch's cross-entropy and NLL with `weight`; a weight of 0 still adds label smoothing's
    term to the sum), 1 without, 0 where ignored (None: every position counts 1)."""
    mask = loss_mask(loss, target, ignored_target(loss_func))
    # (class weights divide the mean of torch's cross-entropy and NLL only: MultiMarginLoss(weight=w) divides by N)
    weight = loss_setting(loss_func, "weight", None) if averages_over_targets(loss_func) else None
    if isinstance(weight, torch.Tensor) and isinstance(target, torch.Tensor) and not target.is_floating_point() \
            and target.shape == loss.shape:  # (soft targets: torch divides by the item count)
        # (.long(): uint8 targets, which torch's losses take, would index as a mask)
        counted = weight.to(loss.device, torch.float32)[(target if mask is None else target.where(mask, 0)).long()]
        return mask, counted if mask is None else counted * mask
    return mask, None if mask is None else mask.float()


def mean_loss(loss: torch.Tensor, target: Any, loss_func: Any) -> torch.Tensor:
    """A batch's per-item (or per-position) losses as the batch's loss, as reduction='mean' takes it: their sum over
    the positions that count, divided by what they count for (`position_weights`); NaN where none counts, as torch's."""
    loss = loss.float()
    if getattr(loss_func, "reduced_by_sum", False) and loss.ndim:  # get_preds' copy of a 'sum' or 'batchmean'
        return loss.sum() / len(loss)  # loss: as the fit logs it, per item (weights and ignored positions included)
    return counted_mean(loss, target, loss_func)


def counted_mean(loss: torch.Tensor, target: Any, loss_func: Any, dim: int | None = None) -> torch.Tensor:
    """Unreduced losses' sum over the positions that count, divided by what they count for (`position_weights`),
    over `dim` (all of them if None); NaN where none counts, as torch's, also where label smoothing adds to the sum."""
    mask, weights = position_weights(loss, target, loss_func)
    if weights is None:
        return loss.mean(dim) if dim is not None else loss.mean()
    kept = loss if mask is None else loss.where(mask, 0)
    total, summed = (weights.sum(dim), kept.sum(dim)) if dim is not None else (weights.sum(), kept.sum())
    return (summed / total).where(total > 0, torch.nan)


def n_items(target: Any, inputs: int | None = None) -> int:
    """How many items a batch's targets are for: a tensor's first dimension; of a dict (one entry per key), its
    first value's; of a tuple or list of tensors that share their first dimension, that (one target per head),
    unless `inputs` (the batch's count by its inputs: `input_items`) is the tuple's length instead (one tensor per
    item, as a `tuple(zip(*batch))` collate gives them); of any other tuple or list (one dict, string, number or
    tensor of its own length per item), its length."""
    if isinstance(target, torch.Tensor):
        return target.shape[0] if target.ndim else 1
    if isinstance(target, dict):
        return n_items(next(iter(target.values()))) if target else 0
    if isinstance(target, (tuple, list)) and target and all(isinstance(t, torch.Tensor) and t.ndim for t in target):
        sizes = {t.shape[0] for t in target}
        if inputs in sizes:  # heads over the batch, as long as its inputs
            return inputs
        if len(sizes) == 1 and inputs != len(target):  # heads over one batch (a per-item list of equal lengths
            return sizes.pop()  # would be stacked: a tensor)
    return len(target)


def input_items(x: Any) -> int | None:
    """How many items an input holds: a tensor's first dimension, a tuple or list's length (one image per item, as
    torchvision's detection models take them), a dict's first value's; None when it can't say."""
    if isinstance(x, torch.Tensor):
        return x.shape[0] if x.ndim else None
    if isinstance(x, dict):
        return input_items(next(iter(x.values()))) if x else None
    return len(x) if isinstance(x, (tuple, list)) else None


def batch_parts(learn: Any) -> tuple[tuple, tuple | None]:
    """The learner's batch as (inputs, targets); a dict batch (read by a predict and get_loss of one's own) is its
    one input, and has no targets: there are none by position (None, not a guess)."""
    return (learn.xb, learn.yb) if isinstance(learn.batch, (tuple, list)) else ((learn.batch,), None)


def batch_n_items(learn: Any) -> int:
    """How many items the learner's batch holds: its first target's count (told from its first input's where the
    targets read two ways); a dict batch's, its first value's."""
    xb, yb = batch_parts(learn)
    return n_items(learn.batch) if yb is None else n_items(yb[0], input_items(xb[0]) if xb else None)


def sum_dtype(device: torch.device) -> torch.dtype:
    """The dtype of a pass's running sums on `device`: float64, except on MPS, which has none (float32 there)."""
    return torch.float32 if device.type == "mps" else torch.float64
