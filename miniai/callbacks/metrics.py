"""MetricsCB: torcheval metrics and the mean loss, one row per training and per validation pass."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..accuracy import Accuracy
from ..checks import add_note, preds_changed_error, unbatched_error, warn
from ..distributed import all_reduce_sum, is_main_process
from ..learner import Callback, Learner
from ..utils import (base_loss, loss_reduction, loss_setting, map_tensors, model_device, name_of, tensor_versions,
                     tensors_in, unsaid_sum)
from ..weighting import (averages_over_targets, batch_n_items, ignored_target, mean_loss, stated_ignore, sum_dtype,
                         target_mask)
from .records import keep_records, restore_if_refused

__all__ = ["MetricsCB", "Accuracy", "format_row", "format_value", "no_row"]  # (Accuracy: where it was, for old imports)


def format_row(row: dict[str, Any], header: bool = False) -> str:
    """One aligned line of a metrics table (the header line when `header`), for terminals and logs."""
    cells = row.keys() if header else (format_value(v) for v in row.values())
    return "  ".join(f"{cell:<{max(8, len(name))}}" for cell, name in zip(cells, row.keys())).rstrip()


def format_value(value: Any) -> str:
    """One cell of a metrics table: floats with 3 decimals, or, tiny or huge, 3 digits in 8 characters."""
    if isinstance(value, float):
        if 0 < abs(value) < 5e-4 or abs(value) >= 1e4:  # 3 decimals would print 0.000, or overflow the column
            return f"{value:.2e}" if value > 0 else f"{value:.1e}"
        return f"{value:.3f}"
    return str(value)


class _PrintRows:
    """MetricsCB's default logger: prints a header before the first row (of each fit), then one aligned line per row."""

    def __init__(self) -> None:
        self.header_done = False

    def __call__(self, row: dict[str, Any]) -> None:
        if not is_main_process():  # under DDP every rank has the same rows; rank 0 prints them
            return
        if not self.header_done:
            print(format_row(row, header=True), flush=True)
            self.header_done = True
        print(format_row(row), flush=True)


def no_row(row: dict[str, Any]) -> None:
    """Logs nothing: MetricsCB's row logger while a ProgressCB's table or lr_find stands in for it."""


def _course_attribute(name: str, where: str) -> property:
    """A course attribute MetricsCB does not keep: read, an AttributeError saying `where` its values are, unless a
    subclass set its own."""
    def get(self: Any) -> Any:
        if name in vars(self):
            return vars(self)[name]
        raise AttributeError(f"MetricsCB has no {name} ({where}")

    def set_(self: Any, value: Any) -> None:
        vars(self)[name] = value
    return property(get, set_, doc=f"The course's {name}: not kept here, unless a subclass sets its own.")


class MetricsCB(Callback):
    """Computes torcheval metrics and the loss of each pass, over its whole set, and logs one row. A training pass's
    (`train_*`) are of each batch's predictions as it trained (before its step, in train mode: dropout on), a
    running account of a model that changes, as in a hand loop; the validation pass's are of one model.

    `MetricsCB(MulticlassAccuracy())` names the metric after its class; `MetricsCB(accuracy=MulticlassAccuracy())`
    names it yourself. Metrics and the loss sum stay on the training device; they are read (one host sync)
    only at the end of each pass. Each metric's `update` gets each batch; a metric whose class says `additive =
    True` (Accuracy: an update over concatenated batches counts what one per batch does) gets them up to 256 at a
    time (or 1M predictions), concatenated (one call's fixed cost instead of 256). The loss is each batch's
    weighted by what its mean divides by: for torch's cross-entropy and NLL losses its targets' class weights,
    leaving out `ignore_index` (the whole set's loss at any batch size; a batch whose targets are all ignored
    counts for nothing, where fastai and Keras, weighting by items, log NaN), else its items (a function of one's
    own on targets of -100 is warned of once a fit: it may leave them out, as F.cross_entropy inside it does); a
    loss of `reduction='sum'` is logged per item. Per-item losses (`reduction='none'`) are averaged over the batch
    leaving out targets of the loss's `ignore_index`, as 'mean' does; so are the metrics (Accuracy by itself, a
    torcheval metric of (N, C) scores or (N,) labels against (N,) targets given the counted items alone; of other
    shapes, refused; a metric of your own gets the targets as they are), and a torcheval metric at threshold 0.5
    beside a loss of logits is warned of (0 is the logits' 0.5). A pass that computes no loss
    (`get_preds(cbs=[MetricsCB(...)])` without `with_loss=True`) logs none. Dict batches (with a predict and
    get_loss of your own) are logged with their loss alone: metrics need (*inputs, target) tuples.
    After each pass: `last` holds `train_<name>`/`valid_<name>` floats (the names schedulers and early stopping
    `monitor`), `history` one dict per pass, and `log_fn(row)` (an argument, or set later) is called with the
    row: each metric and the loss as a number, `epoch`, `train` ('train' or 'valid') and `time` as mm:ss (the
    default, "print", prints them as aligned lines; ProgressCB draws its table instead of them, and a
    `log_fn` of yours gets the rows still; None: no rows).
    Under DDP the metric states and the loss sum are summed over all processes at the end of each pass, so every
    rank reports the same values, those of the whole validation (or training) set; only rank 0 prints them.
    """
    order = 10  # after callbacks that change preds or loss, before those that read the results
    _logits_loss = False  # whether the loss is torch's BCE with logits (set at before_fit)
    _float_unsure = False  # float targets of the ignore_index alone so far in this pass (_refuse_float_ignored)

    def __init__(self, *metrics: Any, log_fn: Callable[[dict[str, Any]], None] | str | None = "print",
                 **named_metrics: Any) -> None:
        # a class passed by mistake is named after itself, not its metaclass ('type', 'ABCMeta')
        positional = [(metric.__name__ if isinstance(metric, type) else type(metric).__name__, metric)
                      for metric in metrics]
        for (name, metric), named in [*((pair, False) for pair in positional),
                                      *((pair, True) for pair in named_metrics.items())]:
            if isinstance(metric, type) or not all(callable(getattr(metric, m, None)) for m in _METRIC_METHODS):
                if isinstance(metric, type):
                    what, hint = f"the class {metric.__name__}", f"an instance, {metric.__name__}(), not the class"
                elif callable(metric):  # a function of (preds, targets), as fastai and Keras take
                    what = f"a function ({getattr(metric, '__name__', type(metric).__name__)})"
                    hint = ("a function of one batch can't be averaged right over a pass of uneven batches: wrap it "
                            "in a class with update(preds, targets), compute() and reset()")
                else:
                    what, hint = f"a {type(metric).__name__}", "one with update(preds, targets), compute() and reset()"
                raise TypeError(f"MetricsCB metric {name!r} is {what}: pass a metric object with update, compute and "
                                f"reset, e.g. {f'{name}=' * named}Accuracy() or torcheval's MulticlassAccuracy(); "
                                f"{hint}")
        names = [name for name, _ in positional] + list(named_metrics)
        twice = next((name for name in names if names.count(name) > 1), None)
        if twice:  # one would replace the other without a word
            raise ValueError(f"MetricsCB got two metrics named {twice!r} (a positional metric is named after its "
                             "class): name them yourself, MetricsCB(name=metric, other_name=metric2)")
        own = next((name for name in names if name in ("loss", "epoch", "train", "time", "lr")), None)
        if own:  # (a CSV reader would keep one of two columns of one name)
            raise ValueError(f"{own!r} is a column " + ("CSVLoggerCB writes beside the row" if own == "lr" else
                                                        "MetricsCB logs itself") + "; give your metric another name")
        self.metrics = {**dict(positional), **named_metrics}
        self._printer = _PrintRows()
        self.log_fn: Callable[[dict[str, Any]], None] | None = self._printer if log_fn == "print" else log_fn
        self.history: list[dict[str, Any]] = []
        self.last: dict[str, float] = {}
        self._sum_loss = False  # (set each pass: the loss's reduction is 'sum')
        self._sync = False  # (set each fit: merge the ranks' sums, in a DDP fit)
        self._in_pass = False  # between a pass's before_epoch and after_epoch
        self._logged = False  # whether this pass logged its row (after_epoch ran)
        self._predicted: tuple[Any, Any] | None = None  # (this batch's preds, their in-place counters)

    @property
    def names(self) -> list[str]:
        """Every name this callback logs in `last`: train_/valid_ × (metrics + loss)."""
        return [f"{split}_{name}" for split in ("train", "valid") for name in [*self.metrics, "loss"]]

    def before_fit(self, learn: Learner) -> None:
        # a DDP fit's ranks each see a shard of the pass: their sums are merged; any other fit reports its own data
        # (an evaluation on rank 0 alone after a DDP fit would wait forever for the others)
        self._sync = isinstance(learn.model, DistributedDataParallel)  # (DDPCB, order -30, has wrapped it)
        if self._sync:
            _check_syncable(self.metrics)
        if self.log_fn is not None and not callable(self.log_fn):  # (found at the first pass's end otherwise)
            raise TypeError(f"MetricsCB.log_fn is called with each row, or None for no rows; got a "
                            f"{type(self.log_fn).__name__}" + (": its .append?" if hasattr(self.log_fn, "append")
                                                               else ""))
        _check_unshared(self, learn)
        _warn_other_ignore(self.metrics, learn.loss_func)
        if unsaid_sum(learn.loss_func):  # (averaged by items, as a loss dividing its sum by them)
            name = name_of(learn.loss_func)
            warn(f"loss_func {name} holds a loss that sums (its .func has reduction='sum') and has no reduction of "
                 "its own: it is taken to divide that sum by the items, as a VAE's loss does, and its batches are "
                 "averaged by items. If it returns the sum, say so: learn.loss_func.reduction = 'sum' (logged per "
                 "item then); if it divides it, learn.loss_func.reduction = 'mean'")
        self._logits_loss = _warn_threshold_on_logits(self.metrics, learn.loss_func)
        learn.metrics = self
        keep_records(self, "history", "last")  # (a fit refused before its first batch puts them back)
        self.history, self.last = [], {}
        self._printer.header_done = False  # each fit's table starts with its header
        self._warned_items = False  # (once per fit: a loss whose batches are weighted by items, see after_epoch)
        self._logged = False  # (a MetricsCB pickled before it had none)
        self._scores_checked = False  # (once per fit: a binary model's scores given to a multiclass metric)

    def cleanup_fit(self, learn: Learner) -> None:
        restore_if_refused(self, learn)
        for metric in self.metrics.values():  # used alone after the fit, an Accuracy leaves out -100, as it says
            if isinstance(metric, Accuracy):
                metric.loss_ignore_index = -100

    def before_epoch(self, learn: Learner) -> None:
        self._drop_pass(learn)  # until after_epoch logs this pass: a callback before this one reads None, not the last
        self._device = model_device(learn.model)
        self._sum_loss = loss_reduction(learn.loss_func) == "sum"  # a batch's loss is its items' sum, not mean
        # metrics that say their state is the same after one update over concatenated batches as after one per
        # batch (`additive = True`: Accuracy) get the batches concatenated, one call's fixed cost instead of up
        # to 256; any other (a windowed metric, a per-batch statistic) gets one update per batch, torcheval's of the
        # items the loss counts (_counted), one's own of the targets as they are
        self._bulk = {name: m for name, m in self.metrics.items() if getattr(m, "additive", False) is True}
        self._torcheval_metrics = {name: m for name, m in self.metrics.items()
                                   if name not in self._bulk and _torcheval(m)}
        self._each = {name: m for name, m in self.metrics.items()
                      if name not in self._bulk and name not in self._torcheval_metrics}
        for metric in self.metrics.values():
            if callable(getattr(metric, "to", None)):  # torcheval's and ours keep their state on the device
                metric.to(self._device)
            metric.reset()
        self._loss_sum = torch.zeros((), dtype=sum_dtype(self._device), device=self._device)
        self._loss_weight = torch.zeros_like(self._loss_sum)  # what the loss sum is divided by: see _flush
        self._uncounted = torch.zeros_like(self._loss_sum)  # targets of ignore_index in batches weighted by items
        # (torch's cross-entropy and NLL losses average over their targets' class weights, leaving out ignore_index:
        # a batch's mean is weighted by those; any other loss's, a 'sum' one's too, by its items)
        self._by_targets = averages_over_targets(learn.loss_func)
        self._sums = self._sum_loss or getattr(learn.loss_func, "reduced_by_sum", False)  # (get_preds' copy too)
        self._ignore = ignored_target(learn.loss_func)
        for metric in self.metrics.values():  # an Accuracy left at its default leaves out what the loss does
            if isinstance(metric, Accuracy) and metric.ignore_index == "loss":
                metric.loss_ignore_index = self._ignore
        self._class_weight = loss_setting(learn.loss_func, "weight", None)
        self._lossless = False  # set by a pass that computes no loss (get_preds without with_loss): none is logged
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = []  # (preds, target, loss, n)
        self._pending_numel = 0
        self._start = time.perf_counter()
        self._in_pass = True  # (until after_epoch: its metrics hold this pass's counts, see _check_unshared)

    def after_predict(self, learn: Learner) -> None:
        # the preds' in-place counters (no copy, no sync): a loss that changes them in place (p.clamp_) would have
        # the metrics read its values, not the model's (checked at after_batch)
        self._predicted = (learn.preds, tensor_versions(learn.preds))

    def after_batch(self, learn: Learner) -> None:
        # only keep the batch here: a metric update costs ~50 µs of Python and dispatch whatever the batch size
        # (the loop's largest per-batch cost at bs 64), so _flush updates once for up to _FLUSH_BATCHES batches.
        # Target and preds are kept as copies (a few µs): a loader may refill the same tensors for its next batch
        # (a prefetcher's buffers), a model its output buffer (a CUDA graph's), and a later callback may change
        # learn.preds in place: the metrics are of the batch as it is now
        batch, n_inp = learn.batch, learn.n_inp
        if isinstance(batch, (tuple, list)) and len(batch) == n_inp + 1:  # (*inputs, target)
            target = batch[n_inp]
        else:
            target = self._odd_target(batch, n_inp)
        preds = learn.preds
        predicted, self._predicted = self._predicted, None  # (no reference kept past the batch)
        if predicted is not None and predicted[0] is preds and tensor_versions(preds) != predicted[1]:
            raise preds_changed_error("MetricsCB", learn.loss_func)
        if type(preds) is torch.Tensor and type(target) is torch.Tensor:  # the usual batch, without the walks below
            if not target.ndim:  # one item, unbatched: nothing to count items by (and metrics would misread it)
                raise unbatched_error()
            # (a MetricsCB of no metrics, for the loss alone, keeps no preds: a segmentation model's are large)
            preds = preds.detach().clone() if self.metrics else None
            target, n, numel = target.clone(), target.shape[0], 0 if preds is None else preds.numel()
        else:  # preds of a model returning (logits, aux), a dict or a namedtuple are kept as they are (copies),
            # for a metric of the user's that takes them
            preds = map_tensors(preds, lambda t: t.detach().clone())
            target = map_tensors(target, torch.Tensor.clone)
            n = batch_n_items(learn)  # (the target, counted as the loggers count it)
            numel = sum(t.numel() for t in tensors_in(preds))
        loss = learn.loss
        if loss is None:  # a prediction pass without a loss step (get_preds without with_loss): no loss to log
            self._lossless, loss = True, 0.0
        else:
            if loss.ndim:  # per-item losses (reduction='none', in an evaluation fit): their mean, as 'mean' takes it
                loss = mean_loss(loss.detach(), target, learn.loss_func)
            # a CPU scalar is read now (cheaper than stacking it later); on a GPU reading it would wait for the GPU
            loss = loss.item() if loss.is_cpu else loss.detach()
            if self._sum_loss and n:  # logged per item, as a mean loss is (weighted by n again below), as
                loss = loss / n  # ProgressCB's curve and lr_find's show it
        self._pending.append((preds, target, loss, n))
        self._pending_numel += numel
        # (and at a pass's first batch: a metric that refuses these preds says so now, not a whole epoch later)
        if len(self._pending) >= _FLUSH_BATCHES or self._pending_numel >= _FLUSH_NUMEL or learn.iter == 0:
            self._flush()

    def _odd_target(self, batch: Any, n_inp: int) -> Any:
        """The target of a batch that is not (*inputs, target): for the loss alone, whatever counts its items (a
        dict batch's first value, read by a predict and get_loss of the user's); for metrics, an error."""
        if not isinstance(batch, (tuple, list)):
            if self.metrics:  # a dict has no position to read the target from
                raise TypeError(f"MetricsCB gives its metrics the batch's target, the item after the inputs of a "
                                f"tuple (*inputs, target), and this batch is a {type(batch).__name__}: give the "
                                "loader tuple batches (collate_fn=collate_dict(dataset), DataLoaders.from_dd), or keep "
                                "MetricsCB() for the loss alone and compute the metrics in a callback of your own")
            return batch
        if not self.metrics and len(batch) > n_inp:  # the loss alone (of a loss taking the extra items): the first
            return batch[n_inp]  # target counts the batch's items
        raise ValueError(f"MetricsCB compares the predictions with one target, but this batch has "
                         f"{len(batch) - n_inp} items after its n_inp={n_inp} inputs. Batches are (*inputs, "
                         "*targets): give the loader (inputs, target) batches (leave other items, ids say, out "
                         "in its collate_fn), or, if the extra items are inputs of the model, set the learner's "
                         "n_inp to their number. If they are the loss's (loss_func(preds, target, weights): sample "
                         "weights), MetricsCB can't tell which one its metrics should take: keep MetricsCB() for the "
                         "loss alone and compute the metrics in a callback of your own (after_batch: learn.preds, "
                         "learn.yb[0])")

    def _flush(self) -> None:
        """Update the metrics and the loss sum with the kept batches: concatenated for additive metrics (the same
        result), one batch at a time for the others."""
        if not self._pending:
            return
        preds, targets, losses, sizes = zip(*self._pending)
        self._pending, self._pending_numel = [], 0
        self._refuse_float_ignored(preds, targets)
        if self._bulk:
            try:
                batches = [(torch.cat(preds), torch.cat(targets))]
            except (RuntimeError, TypeError):  # shapes differ past the batch dimension, or tuples: batch by batch
                batches = list(zip(preds, targets))
            _update(self._bulk, batches)
        one_by_one = list(zip(preds, targets))
        if self._torcheval_metrics:  # they get the items the loss counts; one's own, the targets as they are
            if not self._scores_checked:  # (once a fit: one host read)
                self._scores_checked = True
                _refuse_binary_scores(self._torcheval_metrics, preds[0])
                if not self._logits_loss:  # (torch's own was warned of at before_fit)
                    _warn_threshold_on_scores(self._torcheval_metrics, preds[0])
            _update(self._torcheval_metrics, self._counted(one_by_one, self._torcheval_metrics))
        if self._each:
            _update(self._each, one_by_one)
        # The pass's loss is sum(batch mean × batch weight) / sum(batch weights): a batch's weight is what its mean
        # divides by, so that for torch's cross-entropy the pass's loss is the whole set's (weighted by items, a
        # batch of ignored targets alone made it NaN, and it moved with the batch size)
        weights = self._batch_weights(targets, sizes)
        if not isinstance(losses[0], torch.Tensor):  # read on the CPU: a Python sum, in float64 as on a device
            weights = weights.tolist() if isinstance(weights, torch.Tensor) else weights
            self._loss_sum += sum(loss * w if w else 0.0 for loss, w in zip(losses, weights))
            self._loss_weight += sum(weights)
            return
        # accumulate on the device: a .item() here would stall the GPU
        stacked = torch.stack(losses).to(self._loss_sum.dtype)
        weights = torch.as_tensor(weights, dtype=stacked.dtype, device=stacked.device)
        totals = torch.where(weights > 0, stacked * weights, 0.0)  # (a batch of no counted target: its NaN × 0)
        self._loss_sum += totals.sum()
        self._loss_weight += weights.sum()

    def _refuse_float_ignored(self, preds: tuple[Any, ...], targets: tuple[Any, ...]) -> None:
        """Refuse float targets holding the loss's ignore_index beside class scores (preds of one more dim) when the
        others are class indices (whole numbers 0..C-1): class indices read as floats, cast by a loss of one's own.
        Accuracy would leave those items out, torcheval's metrics count them as a class, and a batch of them alone
        would make the pass's loss NaN (MetricsCB weighs float targets by items). A flush of them alone leaves it to
        the pass's next (the first batch is flushed alone), or to its end. Host reads per flush, of such targets."""
        pairs = [(p, t) for p, t in zip(preds, targets) if self._ignore is not None and isinstance(t, torch.Tensor)
                 and t.is_floating_point() and isinstance(p, torch.Tensor) and p.ndim == t.ndim + 1]
        if not pairs:
            return
        p, t = pairs[0]
        self._float_shapes = tuple(p.shape), tuple(t.shape)  # (for the message: no tensors kept)
        classes = p.shape[1] if p.shape[2:] == t.shape[1:] else p.shape[-1]  # (N, C, ...) or (N, T, C)
        flat = torch.cat([t.reshape(-1) for _, t in pairs])
        ignored = flat == self._ignore
        if classes < 2 or not (self._float_unsure or bool(ignored.any())):
            return
        kept = flat[~ignored]  # class indices: whole numbers 0..C-1 (a regression's values, -100 dB say, are not)
        self._float_unsure = not len(kept)
        if len(kept) and bool(((kept == kept.round()) & (kept >= 0) & (kept < classes)).all()):
            self._float_refusal()

    def _float_refusal(self) -> None:
        preds, targets = self._float_shapes
        raise ValueError(f"MetricsCB: the targets are floats holding {self._ignore} (the loss's ignore_index: items "
                         f"it leaves out) beside class scores (preds {preds}, targets {targets}): "
                         "class indices read as floats? The metrics and the loss can't agree on which items count "
                         "(torcheval's count them as a class, Accuracy leaves them out, a batch of them alone has a "
                         "NaN loss). Give class indices as int64 in the data: y.long() (TensorDataset(x, y.long()))")

    def _counted(self, batches: list[tuple[Any, Any]], metrics: dict[str, Any]) -> list[tuple[Any, Any]]:
        """The batches without the items whose target the loss leaves out (its ignore_index, -100 by default), as
        Accuracy leaves them out: torcheval's `metrics` would count them (as wrong), or fail on them. One host read
        per flush, to see whether there are any."""
        masks = [target_mask(t, self._ignore) if isinstance(t, torch.Tensor) and not t.is_floating_point() else None
                 for _, t in batches]
        if any(m is None for m in masks) or bool(torch.cat([m.reshape(-1) for m in masks]).all()):
            return batches
        for p, t in batches:
            if not (isinstance(p, torch.Tensor) and t.ndim == 1 and p.ndim in (1, 2) and len(p) == len(t)):
                names = ", ".join(repr(name) for name in metrics)
                shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
                raise ValueError(f"MetricsCB: targets hold {self._ignore}, the loss's ignore_index (items it leaves "
                                 f"out), and the torcheval metrics {names} would count them; with preds {shape} and "
                                 f"targets {tuple(t.shape)} MetricsCB can't take those items out for them: use a "
                                 f"metric of your own that leaves out targets of {self._ignore} (MetricsCB gives it "
                                 "the targets as they are), or Accuracy() for class indices")
        return [(p[m], t[m]) for (p, t), m in zip(batches, masks)]

    def _batch_weights(self, targets: tuple[Any, ...], sizes: tuple[int, ...]) -> Any:
        """What each kept batch's mean loss divides by: for torch's cross-entropy or NLL loss (reduction 'mean') of
        class-index targets the sum of their class weights (1 each without) leaving out its ignore_index, counted
        once for all the batches; else each batch's items, but 0 for a batch of class-index targets all -100
        (cross-entropy inside a function of one's own: its mean over no target is NaN, which would make the pass's)."""
        if not all(isinstance(t, torch.Tensor) and not t.is_floating_point() and t.dtype != torch.bool
                   for t in targets):
            return sizes
        flat = torch.cat([t.reshape(-1) for t in targets])
        counted = target_mask(flat, self._ignore)
        dtype = self._loss_sum.dtype
        if not self._by_targets:
            if counted is None or self._sums:  # (a sum over no target is 0: per item, as documented)
                return sizes
            # counted on the device, no sync: read at the pass's end with its loss (after_epoch), one read as before
            self._uncounted += counted.numel() - counted.sum()
            any_counted = _per_batch_sums(counted.to(dtype), targets) > 0
            return torch.tensor(sizes, dtype=dtype, device=flat.device) * any_counted
        if isinstance(self._class_weight, torch.Tensor):
            index = (flat if counted is None else flat.where(counted, 0)).long()  # (uint8 would index as a mask)
            each = self._class_weight.to(flat.device, dtype)[index]
            each = each if counted is None else each * counted
        else:
            each = torch.ones_like(flat, dtype=dtype) if counted is None else counted.to(dtype)
        return _per_batch_sums(each, targets)

    def cleanup_epoch(self, learn: Learner) -> None:
        if not self._logged:  # a cut pass (its after_epoch did not run; maybe not its before_epoch either, a cancel
            self._drop_pass(learn)  # of a callback before this one): no earlier pass's values read as its own
        self._in_pass = self._logged = self._float_unsure = False
        self._predicted = None  # (a cancelled batch's preds, whose after_batch did not run)

    def _drop_pass(self, learn: Learner) -> None:
        """Drop this pass's split's entries (train_ or valid_) from `last`, in place (a reader may hold the dict)."""
        split = "train_" if learn.training else "valid_"
        for name in [name for name in self.last if name.startswith(split)]:
            del self.last[name]

    def after_epoch(self, learn: Learner) -> None:
        self._in_pass = False
        self._flush()
        if self._float_unsure:  # a pass of float targets of the ignore_index alone, beside class scores
            self._float_refusal()
        split = "train" if learn.training else "valid"
        values = {name: _number(name, value) for name, value in _compute(self.metrics, self._sync).items()}
        totals = torch.stack([self._loss_sum, self._loss_weight, self._uncounted])  # (one collective, one read)
        loss_sum, weight, uncounted = (all_reduce_sum(totals) if self._sync else totals).tolist()
        if not self._lossless:  # (a stale learn.loss from an earlier fit is no loss of this pass)
            values["loss"] = loss_sum / weight if weight else float("nan")
            if uncounted and not self._warned_items:
                self._warned_items = True
                self._warn_weighted_by_items(learn, split, int(uncounted))
        for name, value in values.items():
            self.last[f"{split}_{name}"] = value
        self._logged = True  # (this pass's values are in last: see cleanup_epoch)
        record = {**values, "epoch": learn.epoch, "train": split, "time": time.perf_counter() - self._start}
        self.history.append(record)
        self._log({**values, "epoch": learn.epoch, "train": split, "time": _format_time(record["time"])})

    def _warn_weighted_by_items(self, learn: Learner, split: str, uncounted: int) -> None:
        """Warn that a loss MetricsCB can't see into, on targets some of which are its ignore_index, is logged with
        each batch's mean weighted by its items: not the set's, if the loss leaves those targets out."""
        name = getattr(learn.loss_func, "__name__", type(learn.loss_func).__name__)
        what = "torch's default ignore_index" if self._ignore == -100 else f"{name}'s ignore_index"
        warn(f"{uncounted} targets of {self._ignore} ({what}) in this {split} pass, and MetricsCB can't "
             f"tell how the loss {name} averages, so each batch's mean loss is weighted by its items: if "
             f"{name} leaves those targets out, the logged {split}_loss is not the whole set's and changes "
             "with the batch size. Pass torch's loss itself, loss_func=F.cross_entropy, "
             "nn.CrossEntropyLoss(...) or functools.partial(F.cross_entropy, ...), whose mean MetricsCB "
             "weights by its counted targets (a loss that averages over all items, these too, is logged "
             "right as it is)")

    # the course's attributes MetricsCB does not keep: read, each says where its values are (a subclass may set its own)
    all_metrics = _course_attribute("all_metrics", "the course's metrics plus the loss as a Mean): read "
                                    "learn.metrics.last['valid_loss'] (this pass's values by name), learn.metrics."
                                    "history (every pass's rows) or the metric objects in learn.metrics.metrics")
    loss = _course_attribute("loss", "the course's Mean of the loss): read learn.metrics.last['train_loss'] or "
                             "['valid_loss'] (this pass's), or learn.metrics.history (every pass's rows)")

    def _log(self, row: dict[str, Any]) -> None:
        """Send the pass's row (numbers; see the class docstring) to `log_fn`. The course's MetricsCB called this: a
        subclass may override it (its WandBCB did), and code may replace it on the instance (its ProgressCB did);
        `log_fn = None` logs nothing."""
        if self.log_fn is not None:
            self.log_fn(row)


_METRIC_METHODS = ("update", "compute", "reset")


def _check_unshared(cb: MetricsCB, learn: Learner) -> None:
    """Refuse one metric object held twice by the run's MetricsCBs (or by one, under two names): each would update
    it with every batch, counting the pass twice (an accuracy's ratio hides it, a count doubles)."""
    # the MetricsCBs this run calls (a fit's, its fit(cbs=...) ones, or a get_preds pass's, where the learner's own
    # take no part)
    handlers = learn._handlers.get("after_batch", []) if isinstance(getattr(learn, "_handlers", None), dict) else []
    running = [h.__self__ for h in handlers if isinstance(getattr(h, "__self__", None), MetricsCB)]
    # a look in the middle of a fit's pass (get_preds from a callback): that pass's metrics hold its counts
    running += [c for c in learn.cbs if isinstance(c, MetricsCB) and getattr(c, "_in_pass", False)]
    running = list({id(c): c for c in [*running, cb]}.values())  # (cb: also one whose events another forwards)
    held: dict[int, tuple[str, MetricsCB]] = {}
    for each in running:
        for name, metric in each.metrics.items():
            if id(metric) in held:
                first, owner = held[id(metric)]
                names = repr(name) if first == name else f"{first!r} and {name!r}"
                raise ValueError(f"{'one MetricsCB holds' if owner is each else 'two MetricsCBs of this run hold'} "
                                 f"one {type(metric).__name__} object as metric {names}: it would be updated twice "
                                 "with every batch (a count doubles). Give each its own object, e.g. "
                                 f"MetricsCB({name}=copy.deepcopy(metric))")
            held[id(metric)] = name, each


def _update(metrics: dict[str, Any], batches: list[tuple[Any, Any]]) -> None:
    """Update each metric with each (preds, target); a metric that can't take the model's tuple says so."""
    for p, t in batches:
        for name, metric in metrics.items():
            try:
                metric.update(p, t)
            except ValueError as e:  # (torcheval's shape errors name neither the metric nor a way)
                if _torcheval(metric) and isinstance(p, torch.Tensor) and isinstance(t, torch.Tensor):
                    add_note(e, f"(MetricsCB's metric {name!r} ({type(metric).__name__}) was given preds "
                                f"{tuple(p.shape)} and targets {tuple(t.shape)}: {_takes(metric)})")
                raise
            except (TypeError, AttributeError) as e:
                if isinstance(p, torch.Tensor):
                    if isinstance(e, TypeError) and _torcheval(metric):
                        add_note(e, f"(MetricsCB calls each metric's update(preds, targets); {type(metric).__name__} "
                                    "takes other arguments (torcheval's Mean, Sum, Max take one tensor): give "
                                    "MetricsCB a metric of your own whose update(preds, targets) calls it as it "
                                    "takes them)")
                    raise
                key = next((k for k, v in p.items() if isinstance(v, torch.Tensor)), next(iter(p), 0)) if isinstance(
                    p, dict) else 0  # (a dict's first tensor, else its first key: preds[0] raises KeyError there)
                raise TypeError(f"MetricsCB's metric {name!r} takes a tensor of predictions, but the model "
                                f"returned a {type(p).__name__}: keep MetricsCB() for the loss alone, or give "
                                "it a metric of your own whose update(preds, targets) picks the logits out "
                                f"(e.g. calls the metric on preds[{key!r}])") from e


def _takes(metric: Any) -> str:
    """What shapes a torcheval metric takes, and the way there, by its kind (for a note on torcheval's error)."""
    kind = _torcheval_class(metric).__name__
    if kind.startswith("Binary"):
        return ("torcheval's Binary metrics take one score per item, (N,), against (N,) targets: flatten both "
                "(preds.flatten(), targets.flatten(), a segmentation's masks too) in a metric of your own, or end the "
                "model with nn.Flatten(0)")
    if kind.startswith(("Multiclass", "Multilabel", "TopK")):
        return ("torcheval's classification metrics take (N, C) scores or (N,) labels against (N,) targets. For "
                "scores of more dims (a segmentation's (N, C, H, W)) use miniai's Accuracy(), or a metric of your "
                "own that flattens them: preds.movedim(1, -1).flatten(0, -2), targets.flatten()")
    if kind == "Perplexity":
        return ("Perplexity takes (N, T, V) logits against (N, T) targets: move the vocabulary dim last, "
                "preds.movedim(1, -1), in a metric of your own")
    return (f"{kind} takes preds and targets of the same shape (a regression's (N,) against (N,), or (N, K) against "
            "(N, K)): a model's (N, 1) beside (N,) targets, flatten them, or end the model with nn.Flatten(0)")


def _refuse_binary_scores(metrics: dict[str, Any], preds: Any) -> None:
    """Refuse a binary model's one score per item given to torcheval's multiclass metrics, which score it silently
    wrong: a column (N, 1)'s argmax is class 0 for every item; (N,) scores are compared with the labels as labels."""
    if not (isinstance(preds, torch.Tensor) and preds.is_floating_point() and preds.ndim):
        return
    column = preds.ndim == 2 and preds.shape[1] == 1  # ((N, 1, H, W): a segmentation's, for torcheval's note)
    if not column and (preds.ndim > 1 or bool((preds == preds.round()).all())):  # (N,) whole numbers: labels
        return
    for name, metric in metrics.items():
        own = _torcheval_class(metric)
        if column and own.__name__.startswith("Binary"):  # (torcheval's binned AUPRC scores a column -0.0)
            raise ValueError(f"MetricsCB metric {name!r} ({type(metric).__name__}) takes one score per item, (N,), "
                             f"and these preds {tuple(preds.shape)} are one score column (N, 1): end the model with "
                             "nn.Flatten(0) (and give BCE targets of shape (N,)), or give MetricsCB a metric of your "
                             "own that flattens both")
        if own.__name__.startswith("Multiclass"):
            what = "one score column, whose argmax is class 0 for every item" if column else \
                "scores, not class labels, which it would compare with the labels as labels"
            raise ValueError(f"MetricsCB metric {name!r} ({type(metric).__name__}) takes class scores (N, C) of C >= "
                             f"2 classes, or class labels (N,), and these preds {tuple(preds.shape)} are a binary "
                             f"model's {what}: use torcheval's BinaryAccuracy(threshold=0) for logits (0.5, its "
                             "default, for probabilities), or the Binary metric of the same name, on (N,) scores "
                             "(end the model with nn.Flatten(0))")


def _per_batch_sums(each: torch.Tensor, targets: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Sums of `each` (one value per target position, the batches' targets flattened and joined) per batch: one
    cumulative sum for all the batches (in float64: it loses no count)."""
    ends = torch.tensor([t.numel() for t in targets]).cumsum(0).to(each.device)
    sums = torch.cat([each.new_zeros(1), each.cumsum(0)])
    return sums[ends] - sums[torch.cat([ends.new_zeros(1), ends[:-1]])]


def _warn_threshold_on_logits(metrics: dict[str, Any], loss_func: Any) -> bool:
    """Warn of a metric thresholding at 0.5 (torcheval's binary and multilabel ones) beside a loss of logits
    (torch's own); return whether the loss is that."""
    fn = base_loss(loss_func)
    if fn is not F.binary_cross_entropy_with_logits and not isinstance(loss_func, nn.BCEWithLogitsLoss):
        return False
    for name, metric in _at_half(metrics):
        warn(f"MetricsCB metric {name!r} ({type(metric).__name__}) counts a prediction as 1 from 0.5, "
             "and the loss takes logits (binary_cross_entropy_with_logits), whose 0.5 probability is "
             f"logit 0: give it threshold=0, {type(metric).__name__}(threshold=0.0), or apply a sigmoid "
             "in a metric of your own")
    return True


def _warn_threshold_on_scores(metrics: dict[str, Any], preds: Any) -> None:
    """Warn of a metric thresholding at 0.5 beside preds (the first batch's) outside [0, 1], which are no
    probabilities (logits, from a loss of one's own)."""
    if not (isinstance(preds, torch.Tensor) and preds.is_floating_point() and preds.numel()):
        return
    halves = _at_half(metrics)
    low, high = preds.detach().aminmax() if halves else (0, 1)  # (one host read, once a fit, where one thresholds)
    for name, metric in halves if low < 0 or high > 1 else ():
        warn(f"MetricsCB metric {name!r} ({type(metric).__name__}) counts a prediction as 1 from 0.5, and the first "
             f"batch's preds range from {float(low):.3g} to {float(high):.3g}: not probabilities (logits, whose 0.5 "
             f"probability is logit 0?). For logits give it threshold=0, {type(metric).__name__}(threshold=0.0), or "
             "end the model with a sigmoid for probabilities")


def _at_half(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    """The torcheval metrics that count a prediction as 1 from 0.5, their default (a threshold of one's own may be a
    sigmoid's; a binned metric's is a tensor of bin edges), by name."""
    return [(name, metric) for name, metric in metrics.items() if _torcheval(metric)
            and isinstance(getattr(metric, "threshold", None), float) and metric.threshold == 0.5]


def _torcheval_class(metric: Any) -> type:
    """The metric's own torcheval class, which says its kind (torcheval's BinaryAccuracy subclasses
    MulticlassAccuracy; a user's subclass only fixes settings), else its class."""
    return next((c for c in type(metric).__mro__ if c.__module__.startswith("torcheval")), type(metric))


def _torcheval(metric: Any) -> bool:
    """Whether `metric` is one of torcheval's (MetricsCB adapts its input to what the loss counts): its `update` is
    torcheval's, so a subclass that only fixes settings is one too, and one with an update of its own is not."""
    return getattr(getattr(type(metric), "update", None), "__module__", "").split(".")[0] == "torcheval"


def _warn_other_ignore(metrics: dict[str, Any], loss_func: Any) -> None:
    """Warn of an Accuracy given an ignore_index other than the loss's: the two are over different targets."""
    stated = stated_ignore(loss_func)
    if stated is None:  # a loss of one's own that can't say
        return
    for name, metric in metrics.items():  # (None, every target counted, beside torch's default: nothing chosen)
        if isinstance(metric, Accuracy) and metric.ignore_index not in ("loss", stated) and not (
                metric.ignore_index is None and stated == -100):
            warn(f"MetricsCB metric {name!r} is an Accuracy(ignore_index={metric.ignore_index!r}), and the "
                 f"loss leaves out targets of {stated}: the accuracy and the loss are over different "
                 "targets (padding counted in one and not the other?). Leave ignore_index out "
                 "(Accuracy() follows the loss's; on an older Accuracy set acc.ignore_index = 'loss'), or "
                 "give both the same one")



_FLUSH_BATCHES = 256  # batches kept before a metric update: amortizes its fixed cost (~0.3 ms on a CPU) ...
_FLUSH_NUMEL = 1 << 20  # ... unless their preds reach 1M elements (4 MB in float32) first: bounded memory



def _number(name: str, value: Any) -> float:
    """A metric's computed value as the one number MetricsCB logs, or an error naming the metric."""
    shape = tuple(getattr(value, "shape", ()))  # (a tensor's, a NumPy array's)
    if math.prod(shape) == 1 and shape:  # (NumPy deprecates float() of a one-element array)
        value = value.item()
    if isinstance(value, (str, bytes)):  # float('0.5') would read it, and a metric's text is no value
        raise TypeError(f"MetricsCB logs one number per metric, and {name!r} computed a {type(value).__name__} "
                        f"({value!r}): make its compute() return the number")
    if math.prod(shape) != 1:
        raise ValueError(f"MetricsCB logs one number per metric, and {name!r} computed a tensor of shape "
                         f"{shape} (one value per class?): average it in the metric (torcheval: "
                         "average='macro' or 'micro'), or record it in a callback of your own")
    try:
        return float(value)
    except (TypeError, ValueError) as e:  # a curve's (precision, recall, thresholds), None, a list
        raise TypeError(f"MetricsCB logs one number per metric, and {name!r} computed a {type(value).__name__}: "
                        "make its compute() return one number (for a curve, a summary of it: torcheval's "
                        "BinaryAUPRC for BinaryPrecisionRecallCurve), or record it in a callback of your own") from e




def _compute(metrics: dict[str, Any], sync: bool) -> dict[str, Any]:
    """Each metric's value; `sync`: from the states of all ranks (every rank must call this at the same time)."""
    if not sync:
        return {name: metric.compute() for name, metric in metrics.items()}
    ours = {name: m for name, m in metrics.items() if callable(getattr(m, "all_reduce", None))}
    for metric in ours.values():
        metric.all_reduce()
    values = {name: metric.compute() for name, metric in ours.items()}
    others = {name: m for name, m in metrics.items() if name not in ours}
    if others:
        from torcheval.metrics.toolkit import sync_and_compute_collection  # here: only distributed runs need it
        values.update(sync_and_compute_collection(others))
    return {name: values[name] for name in metrics}


def _check_syncable(metrics: dict[str, Any]) -> None:
    others = [name for name, m in metrics.items() if not callable(getattr(m, "all_reduce", None))]
    if not others:
        return
    from torcheval.metrics import Metric  # imported here: only distributed runs need it
    others = [name for name in others if not isinstance(metrics[name], Metric)]
    if others:
        raise TypeError(f"under DDP MetricsCB merges metric states across processes, which it can do for torcheval "
                        f"metrics and miniai's Accuracy; {', '.join(others)} is neither: use a torcheval Metric")


def _format_time(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes:02d}:{secs:02d}"
