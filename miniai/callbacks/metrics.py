"""MetricsCB: torcheval metrics and the mean loss, one row per training and per validation pass."""
from __future__ import annotations

import math
import numbers
import re
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ..checks import unbatched_error
from ..distributed import all_reduce_sum, is_main_process
from ..learner import Callback, Learner
from ..utils import class_loss, loss_reduction, loss_setting, map_tensors, model_device, tensors_in
from .records import keep_records, restore_if_refused

__all__ = ["MetricsCB", "Accuracy", "format_row", "format_value", "check_monitor", "improves", "monitor_mode",
           "same_watch", "sum_dtype", "n_items"]


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


class MetricsCB(Callback):
    """Computes torcheval metrics and the loss of each pass, over its whole set, and logs one row.

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
    leaving out targets of the loss's `ignore_index`, as 'mean' does. A pass that computes no loss
    (`get_preds(cbs=[MetricsCB(...)])` without `with_loss=True`) logs none. Dict batches (with a predict and
    get_loss of your own) are logged with their loss alone: metrics need (*inputs, target) tuples.
    After each pass: `last` holds `train_<name>`/`valid_<name>` floats (the names schedulers and early stopping
    `monitor`), `history` one dict per pass, and `log_fn(row)` is called with the formatted row (the default prints
    aligned lines; ProgressCB draws its table instead of them, and a `log_fn` of yours gets the rows still; None:
    no rows).
    Under DDP the metric states and the loss sum are summed over all processes at the end of each pass, so every
    rank reports the same values, those of the whole validation (or training) set; only rank 0 prints them.
    """
    order = 10  # after callbacks that change preds or loss, before those that read the results

    def __init__(self, *metrics: Any, **named_metrics: Any) -> None:
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
        own = next((name for name in names if name in ("loss", "epoch", "train", "time")), None)
        if own:
            raise ValueError(f"{own!r} is a column MetricsCB logs itself; give your metric another name")
        self.metrics = {**dict(positional), **named_metrics}
        self._printer = _PrintRows()
        self.log_fn: Callable[[dict[str, Any]], None] = self._printer
        self.history: list[dict[str, Any]] = []
        self.last: dict[str, float] = {}
        self._sum_loss = False  # (set each pass: the loss's reduction is 'sum')
        self._sync = False  # (set each fit: merge the ranks' sums, in a DDP fit)
        self._in_pass = False  # between a pass's before_epoch and after_epoch

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
        learn.metrics = self
        keep_records(self, "history", "last")  # (a fit refused before its first batch puts them back)
        self.history, self.last = [], {}
        self._printer.header_done = False  # each fit's table starts with its header
        self._warned_items = False  # (once per fit: a loss whose batches are weighted by items, see after_epoch)

    def cleanup_fit(self, learn: Learner) -> None:
        restore_if_refused(self, learn)
        for metric in self.metrics.values():  # used alone after the fit, an Accuracy leaves out -100, as it says
            if isinstance(metric, Accuracy):
                metric.loss_ignore_index = -100

    def before_epoch(self, learn: Learner) -> None:
        self._device = model_device(learn.model)
        self._sum_loss = loss_reduction(learn.loss_func) == "sum"  # a batch's loss is its items' sum, not mean
        # metrics that say their state is the same after one update over concatenated batches as after one per
        # batch (`additive = True`: Accuracy) get the batches concatenated, one call's fixed cost instead of up
        # to 256; any other (a windowed metric, a per-batch statistic) gets one update per batch
        self._bulk = {name: m for name, m in self.metrics.items() if getattr(m, "additive", False) is True}
        self._each = {name: m for name, m in self.metrics.items() if name not in self._bulk}
        for metric in self.metrics.values():
            if callable(getattr(metric, "to", None)):  # torcheval's and ours keep their state on the device
                metric.to(self._device)
            metric.reset()
        self._loss_sum = torch.zeros((), dtype=sum_dtype(self._device), device=self._device)
        self._loss_weight = torch.zeros_like(self._loss_sum)  # what the loss sum is divided by: see _flush
        self._uncounted = torch.zeros_like(self._loss_sum)  # targets of ignore_index in batches weighted by items
        # (torch's cross-entropy and NLL losses average over their targets' class weights, leaving out ignore_index:
        # a batch's mean is weighted by those; any other loss's, a 'sum' one's too, by its items)
        self._by_targets = _averages_over_targets(learn.loss_func)
        self._sums = self._sum_loss or getattr(learn.loss_func, "reduced_by_sum", False)  # (get_preds' copy too)
        self._ignore = _ignored_target(learn.loss_func)
        for metric in self.metrics.values():  # an Accuracy left at its default leaves out what the loss does
            if isinstance(metric, Accuracy) and metric.ignore_index == "loss":
                metric.loss_ignore_index = self._ignore
        self._class_weight = loss_setting(learn.loss_func, "weight", None)
        self._lossless = False  # set by a pass that computes no loss (get_preds without with_loss): none is logged
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = []  # (preds, target, loss, n)
        self._pending_numel = 0
        self._start = time.perf_counter()
        self._in_pass = True  # (until after_epoch: its metrics hold this pass's counts, see _check_unshared)

    def after_batch(self, learn: Learner) -> None:
        # only keep the batch here: a metric update costs ~50 µs of Python and dispatch whatever the batch size
        # (the loop's largest per-batch cost at bs 64), so _flush updates once for up to _FLUSH_BATCHES batches.
        # The target is kept as a copy (< 1 µs): a loader may refill the same tensors for its next batch
        # (a prefetcher's buffers), and so are preds in the input's memory
        batch, n_inp = learn.batch, learn.n_inp
        if isinstance(batch, (tuple, list)) and len(batch) == n_inp + 1:  # (*inputs, target)
            target = batch[n_inp]
        else:
            target = self._odd_target(batch, n_inp)
        preds = learn.preds
        if type(preds) is torch.Tensor and type(target) is torch.Tensor:  # the usual batch, without the walks below
            if not target.ndim:  # one item, unbatched: nothing to count items by (and metrics would misread it)
                raise unbatched_error()
            # preds that share the loader's input's memory (x[:, -1], nn.Identity, an in-place ReLU) are refilled
            # with it: copied; a model's own output is not
            preds = preds.detach().clone() if _shares_memory(preds, batch) else preds.detach()
            target, n, numel = target.clone(), target.shape[0], preds.numel()
        else:  # preds of a model returning (logits, aux), a dict or a namedtuple are kept as they are (detached),
            # for a metric of the user's that takes them
            preds = map_tensors(preds, lambda t: t.detach().clone() if _shares_memory(t, batch) else t.detach())
            target = map_tensors(target, torch.Tensor.clone)
            n = n_items(target)
            numel = sum(t.numel() for t in tensors_in(preds))
        loss = learn.loss
        if loss is None:  # a prediction pass without a loss step (get_preds without with_loss): no loss to log
            self._lossless, loss = True, 0.0
        else:
            if loss.ndim:  # per-item losses (reduction='none', in an evaluation fit): their mean, as 'mean' takes it
                loss = _mean_loss(loss.detach(), target, learn.loss_func)
            # a CPU scalar is read now (cheaper than stacking it later); on a GPU reading it would wait for the GPU
            loss = loss.item() if loss.is_cpu else loss.detach()
            if self._sum_loss and n:  # logged per item, as a mean loss is (weighted by n again below), as
                loss = loss / n  # ProgressCB's curve and lr_find's show it
        self._pending.append((preds, target, loss, n))
        self._pending_numel += numel
        if len(self._pending) >= _FLUSH_BATCHES or self._pending_numel >= _FLUSH_NUMEL:
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
                         "n_inp to their number.")

    def _flush(self) -> None:
        """Update the metrics and the loss sum with the kept batches: concatenated for additive metrics (the same
        result), one batch at a time for the others."""
        if not self._pending:
            return
        preds, targets, losses, sizes = zip(*self._pending)
        self._pending, self._pending_numel = [], 0
        if self._bulk:
            try:
                batches = [(torch.cat(preds), torch.cat(targets))]
            except (RuntimeError, TypeError):  # shapes differ past the batch dimension, or tuples: batch by batch
                batches = list(zip(preds, targets))
            _update(self._bulk, batches)
        if self._each:
            _update(self._each, list(zip(preds, targets)))
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

    def _batch_weights(self, targets: tuple[Any, ...], sizes: tuple[int, ...]) -> Any:
        """What each kept batch's mean loss divides by: for torch's cross-entropy or NLL loss (reduction 'mean') of
        class-index targets the sum of their class weights (1 each without) leaving out its ignore_index, counted
        once for all the batches; else each batch's items, but 0 for a batch of class-index targets all -100
        (cross-entropy inside a function of one's own: its mean over no target is NaN, which would make the pass's)."""
        if not all(isinstance(t, torch.Tensor) and not t.is_floating_point() and t.dtype != torch.bool
                   for t in targets):
            return sizes
        flat = torch.cat([t.reshape(-1) for t in targets])
        counted = _counted(flat, self._ignore)
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
        self._in_pass = False  # (also after a cancelled pass, whose after_epoch did not run)

    def after_epoch(self, learn: Learner) -> None:
        self._in_pass = False
        self._flush()
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
        record = {**values, "epoch": learn.epoch, "train": split, "time": time.perf_counter() - self._start}
        self.history.append(record)
        self._log({**values, "epoch": learn.epoch, "train": split, "time": _format_time(record["time"])})

    def _warn_weighted_by_items(self, learn: Learner, split: str, uncounted: int) -> None:
        """Warn that a loss MetricsCB can't see into, on targets some of which are its ignore_index, is logged with
        each batch's mean weighted by its items: not the set's, if the loss leaves those targets out."""
        name = getattr(learn.loss_func, "__name__", type(learn.loss_func).__name__)
        what = "torch's default ignore_index" if self._ignore == -100 else f"{name}'s ignore_index"
        warnings.warn(f"{uncounted} targets of {self._ignore} ({what}) in this {split} pass, and MetricsCB can't "
                      f"tell how the loss {name} averages, so each batch's mean loss is weighted by its items: if "
                      f"{name} leaves those targets out, the logged {split}_loss is not the whole set's and changes "
                      "with the batch size. Pass torch's loss itself, loss_func=F.cross_entropy, "
                      "nn.CrossEntropyLoss(...) or functools.partial(F.cross_entropy, ...), whose mean MetricsCB "
                      "weights by its counted targets (a loss that averages over all items, these too, is logged "
                      "right as it is)", stacklevel=2)

    @property
    def all_metrics(self) -> Any:
        """The course's dict of torcheval metrics with the loss: not kept here, unless a subclass sets its own."""
        if "all_metrics" in vars(self):
            return vars(self)["all_metrics"]
        raise AttributeError("MetricsCB has no all_metrics (the course's metrics plus the loss as a Mean): read "
                             "learn.metrics.last['valid_loss'] (this pass's values by name), learn.metrics.history "
                             "(every pass's rows) or the metric objects in learn.metrics.metrics")

    @all_metrics.setter
    def all_metrics(self, value: Any) -> None:
        vars(self)["all_metrics"] = value

    def _log(self, row: dict[str, Any]) -> None:
        """Send a formatted row to `log_fn`. The course's MetricsCB called this: a subclass may override it (its
        WandBCB did), and code may replace it on the instance (its ProgressCB did); `log_fn = None` logs nothing."""
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
            except (TypeError, AttributeError) as e:
                if isinstance(p, torch.Tensor):
                    raise
                raise TypeError(f"MetricsCB's metric {name!r} takes a tensor of predictions, but the model "
                                f"returned a {type(p).__name__}: keep MetricsCB() for the loss alone, or give "
                                "it a metric of your own whose update(preds, targets) picks the logits out "
                                "(e.g. calls the metric on preds[0])") from e


def _per_batch_sums(each: torch.Tensor, targets: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Sums of `each` (one value per target position, the batches' targets flattened and joined) per batch: one
    cumulative sum for all the batches (in float64: it loses no count)."""
    ends = torch.tensor([t.numel() for t in targets]).cumsum(0).to(each.device)
    sums = torch.cat([each.new_zeros(1), each.cumsum(0)])
    return sums[ends] - sums[torch.cat([ends.new_zeros(1), ends[:-1]])]


def _shares_memory(t: torch.Tensor, batch: Any) -> bool:
    """Whether `t` lies in the memory of one of the batch's tensors (the same storage; a sparse one has none)."""
    if t.layout != torch.strided:
        return False
    ptr = t.untyped_storage().data_ptr()
    return any(b.layout == torch.strided and ptr == b.untyped_storage().data_ptr() for b in tensors_in(batch))


def _averages_over_targets(loss_func: Any) -> bool:
    """Whether `loss_func` is torch's cross-entropy or NLL loss (a function, a partial of one, an nn loss) averaging
    over its targets (reduction 'mean', or get_preds' per-item copy of such a loss): it divides by their class
    weights' sum, leaving out its ignore_index. Other losses' `weight` or -100 targets mean something else."""
    if getattr(loss_func, "reduced_by_sum", False) or loss_reduction(loss_func) == "sum":
        return False
    return class_loss(loss_func)


def _ignored_target(loss_func: Any) -> int:
    """The target value the loss leaves out: its own `ignore_index` (nn.CrossEntropyLoss(ignore_index=0), or one
    given to a partial of F.cross_entropy), else torch's default, -100 (also for an ignore_index of None)."""
    value = _integer(loss_setting(loss_func, "ignore_index", -100))
    return value if value is not None else -100


def _stated_ignore(loss_func: Any) -> int | None:
    """The target value the loss says it leaves out: its `ignore_index`, or -100 for torch's cross-entropy and NLL
    left at theirs; None when it can't be told (a function of one's own that sets none)."""
    value = _integer(loss_setting(loss_func, "ignore_index", None))
    return value if value is not None else -100 if class_loss(loss_func) else None


def _integer(value: Any) -> int | None:
    """`value` as an int if it is an integer (a NumPy one too, not a bool), else None."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else None


def _warn_other_ignore(metrics: dict[str, Any], loss_func: Any) -> None:
    """Warn of an Accuracy given an ignore_index other than the loss's: the two are over different targets."""
    stated = _stated_ignore(loss_func)
    if stated is None:  # a loss of one's own that can't say
        return
    for name, metric in metrics.items():  # (None, every target counted, beside torch's default: nothing chosen)
        if isinstance(metric, Accuracy) and metric.ignore_index not in ("loss", stated) and not (
                metric.ignore_index is None and stated == -100):
            warnings.warn(f"MetricsCB metric {name!r} is an Accuracy(ignore_index={metric.ignore_index!r}), and the "
                          f"loss leaves out targets of {stated}: the accuracy and the loss are over different "
                          "targets (padding counted in one and not the other?). Leave ignore_index out "
                          "(Accuracy() follows the loss's; on an older Accuracy set acc.ignore_index = 'loss'), or "
                          "give both the same one", stacklevel=4)


def _counted(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor | None:
    """Where `target` is not `ignore_index`; None when no target can be: no ignore_index, or one the targets' dtype
    can't hold (compared with uint8 targets, -100 would wrap to 156 and leave out class 156)."""
    if ignore_index is None or target.dtype == torch.bool:
        return None
    if not target.is_floating_point() and not torch.iinfo(target.dtype).min <= ignore_index <= torch.iinfo(
            target.dtype).max:
        return None
    return target != ignore_index


def _loss_mask(loss: torch.Tensor, target: Any, ignore_index: int | None) -> torch.Tensor | None:
    """Where unreduced losses count: positions whose integer target (one per loss) is not `ignore_index`; None
    when all do (float targets, targets of another shape, an ignore_index the dtype can't hold)."""
    if isinstance(target, torch.Tensor) and not target.is_floating_point() and target.shape == loss.shape:
        return _counted(target, ignore_index)
    return None


def _mean_loss(loss: torch.Tensor, target: Any, loss_func: Any) -> torch.Tensor:
    """A batch's per-item (or per-position) losses as the batch's loss, as reduction='mean' takes it: their mean
    over the positions whose integer target is not the loss's ignore_index, and for a loss with class weights
    (`weight`) their sum over the counted targets' weights."""
    loss = loss.float()
    if getattr(loss_func, "reduced_by_sum", False) and loss.ndim:  # get_preds' copy of a 'sum' or 'batchmean'
        return loss.sum() / len(loss)  # loss: as the fit logs it, per item (weights and ignored positions included)
    mask = _loss_mask(loss, target, _ignored_target(loss_func))
    # (class weights divide the mean of torch's cross-entropy and NLL only: MultiMarginLoss(weight=w) divides by N)
    weight = loss_setting(loss_func, "weight", None) if _averages_over_targets(loss_func) else None
    if isinstance(weight, torch.Tensor) and isinstance(target, torch.Tensor) and not target.is_floating_point() \
            and target.shape == loss.shape:  # (soft targets: torch divides by the item count)
        counted = weight.to(loss.device, torch.float32)[target if mask is None else target.where(mask, 0)]
        return loss.sum() / (counted if mask is None else counted * mask).sum()
    if mask is not None:  # (no position counted: NaN, as torch's mean loss is)
        return (loss * mask).sum() / mask.sum()
    return loss.mean()


_FLUSH_BATCHES = 256  # batches kept before a metric update: amortizes its fixed cost (~0.3 ms on a CPU) ...
_FLUSH_NUMEL = 1 << 20  # ... unless their preds reach 1M elements (4 MB in float32) first: bounded memory


def n_items(target: Any) -> int:
    """How many items a batch's targets are for: a tensor's first dimension; of a dict (one entry per key), its
    first value's; of a tuple or list of tensors that share their first dimension, that (one target per head);
    of any other tuple or list (one dict, string, number or tensor of its own length per item), its length."""
    if isinstance(target, torch.Tensor):
        return target.shape[0] if target.ndim else 1
    if isinstance(target, dict):
        return n_items(next(iter(target.values()))) if target else 0
    if isinstance(target, (tuple, list)) and target and all(isinstance(t, torch.Tensor) and t.ndim for t in target):
        sizes = {t.shape[0] for t in target}
        if len(sizes) == 1:  # heads over one batch (a per-item list of equal lengths would be stacked: a tensor)
            return sizes.pop()
    return len(target)


def sum_dtype(device: torch.device) -> torch.dtype:
    """The dtype of a pass's running sums on `device`: float64, except on MPS, which has none (float32 there)."""
    return torch.float32 if device.type == "mps" else torch.float64


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
    warnings.warn(f"{who} watched {saved[0]!r} ({saved[1]}) in the run resumed from and watches {cb.monitor!r} "
                  f"({cb.mode}) now: its best value so far is not carried over, the best is looked for afresh",
                  stacklevel=3)
    return False


class Accuracy:
    """The share of items whose predicted class (argmax over dim 1, or the preds themselves when they are labels)
    is the target: `MetricsCB(accuracy=Accuracy())`.

    It works like torcheval's `MulticlassAccuracy` (update/compute/reset/to) and gives the same value, without its
    costs: importing torcheval takes over a second, and its first `compute` compiles TorchScript. The two counts
    stay on the device until `compute`, so updating never waits for the GPU; under DDP they are summed over ranks.
    Preds and targets it would compare wrongly (targets as a column, one-hot targets, a binary model's scores,
    anything that broadcasts) are refused, with what to pass instead. Targets of `ignore_index` are left out of both
    counts, as the loss leaves them out: at its default, 'loss', in a MetricsCB the loss's own (set each pass:
    `nn.CrossEntropyLoss(ignore_index=0)`'s, a partial's, a function's `.ignore_index`), else -100 (torch's
    cross-entropy default: padding, unlabelled items); one given that differs from the loss's is warned of at the
    fit's start (`ignore_index=None`: none is left out; nor is one the targets' dtype can't hold, -100 in uint8).
    """
    additive = True  # an update over concatenated batches counts what one per batch would: MetricsCB batches them

    def __init__(self, ignore_index: int | None | str = "loss") -> None:
        if not (ignore_index is None or ignore_index == "loss" or _integer(ignore_index) is not None):
            raise TypeError(f"Accuracy(ignore_index=...) is the target value to leave out (an int), None for none, "
                            f"or 'loss' (the default: the loss's); got {ignore_index!r}")
        self.ignore_index = ignore_index if ignore_index in (None, "loss") else _integer(ignore_index)
        self.loss_ignore_index = -100  # what 'loss' leaves out: torch's default until MetricsCB reads the loss's
        self.counts = torch.zeros(2, dtype=torch.int64)  # correct, total

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> Accuracy:
        """Count the batch's correct predictions and its items."""
        labels = preds.argmax(1) if preds.ndim == target.ndim + 1 else preds
        if labels.shape != target.shape or labels.is_floating_point() or labels is not preds and preds.shape[1] < 2:
            # comparing them would broadcast, or compare scores with class ids: a wrong accuracy without a word
            raise ValueError(_accuracy_mismatch(preds, target))
        mask = _counted(target, self.loss_ignore_index if self.ignore_index == "loss" else self.ignore_index)
        if mask is None:  # every target counts
            self.counts[0] += (labels == target).sum()
            self.counts[1] += target.numel()
        else:
            self.counts += torch.stack([((labels == target) & mask).sum(), mask.sum()])
        return self

    def compute(self) -> torch.Tensor:
        """Correct / total, as a float tensor (NaN before any update)."""
        return self.counts[0] / self.counts[1]

    def reset(self) -> Accuracy:
        """Start counting afresh."""
        self.counts.zero_()
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{'counts': [correct, total]} (as torcheval's metrics give theirs; lr_find puts it back after its look)."""
        return {"counts": self.counts}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `state_dict()` (on the device the counts are on now)."""
        self.counts = state["counts"].to(self.counts.device)

    def to(self, device: str | torch.device) -> Accuracy:
        """Keep the counts on `device` (the model's)."""
        self.counts = self.counts.to(device)
        return self

    def all_reduce(self) -> None:
        """Sum the counts over all processes (MetricsCB calls it under DDP before `compute`)."""
        all_reduce_sum(self.counts)


def _accuracy_mismatch(preds: torch.Tensor, target: torch.Tensor) -> str:
    """Why Accuracy can't compare these preds and targets, and what to pass instead."""
    shapes = f"got preds {tuple(preds.shape)} ({preds.dtype}) and targets {tuple(target.shape)} ({target.dtype})"
    classes = preds.shape[1] if preds.ndim > 1 else 0
    if classes == 1 and preds.ndim == target.ndim + 1:
        fix = ("one score per item is a binary model, whose argmax is always class 0: use torcheval's "
               "BinaryAccuracy(threshold=0) for logits (0.5, its default, for probabilities) on a model whose output "
               "is (N,) (end it with nn.Flatten(0))")
    elif target.ndim == preds.ndim and target.shape[1:2] == (1,) and classes > 1:
        fix = "targets kept as a column: pass target.squeeze(1)"
    elif target.shape == preds.shape and classes > 1:
        fix = ("targets one-hot or probabilities: pass target.argmax(1), the class ids (for a multi-label model, "
               "use torcheval's MultilabelAccuracy(threshold=0) in MetricsCB for logits, its default 0.5 for "
               "probabilities)")
    elif target.shape == preds.shape:
        fix = ("preds are scores, not labels: for a binary or multi-label model pass (preds > 0.5).long() "
               "(probabilities) or (preds > 0).long() (logits), or use torcheval's BinaryAccuracy(threshold=0) "
               "(logits; 0.5 for probabilities) in MetricsCB")
    else:
        fix = "their shapes don't match"
    return (f"Accuracy needs class scores (N, C, ...) with class ids (N, ...), or integer labels of the targets' "
            f"shape; {shapes}: {fix}.")


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
