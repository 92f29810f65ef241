"""Predictions after the fit: the learner's predict path run over one loader, gathered on the CPU.

A *prediction pass* (`prediction_pass`) runs the learner's `predict` step, and `get_loss` for per-item losses, on
every batch of one loader, in eval mode under `torch.no_grad()`. Only the callbacks that shape how the model sees
the data take part (`Callback.inference = True`: DeviceCB, BatchTransformCB's validation transforms,
MixedPrecisionCB's autocast) plus those owning predict/get_loss; they get the events of a validation-only fit of
one epoch (`learn.training` is False, no optimizer is made or stepped). Nothing is recorded, logged or saved, and
`kept` puts the learner back as it was: model, callbacks, loaders, RNGs.

`get_preds` (also `Learner.get_preds`) gathers the outputs, `capture_preds` is the course's name for it, `tta`
averages probabilities over augmented copies.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import (BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler,
                              SequentialSampler, SubsetRandomSampler, WeightedRandomSampler)

from ..augment import Compose, RandomFlip
from .augment import check_transform
from ..checks import add_note, check_count, describe, drops_last, preds_changed_error, unbatched_error, warn
from ..data import TensorLoader
from ..distributed import world_size
from ..learner import (Callback, CancelBatchException, CancelEpochException, CancelFitException, Learner,
                       build_handlers)
from ..utils import (class_loss, loss_setting, map_tensors, mark_per_item, model_dtype, name_of, original_loss,
                     tensor_versions, to_cpu)
from .augment import BatchTransformCB, geometric
from .ddp import DDPCB
from .mixed_precision import MixedPrecisionCB
from ..weighting import batch_parts, counted_mean, input_items, mean_loss
from .state import kept

__all__ = ["participants", "prediction_pass", "unreduced", "get_preds", "capture_preds", "tta"]


def participants(learn: Learner) -> list[Callback]:
    """The learner's callbacks that take part in a prediction pass: `inference` ones and predict/get_loss owners."""
    return [cb for cb in learn.cbs if cb.inference or {"predict", "get_loss"} & set(cb.owns_steps)]


def left_out(learn: Learner, taking_part: list[Callback], who: str = "get_preds") -> str | None:
    """What to say of the user's callbacks left out of a prediction pass (or an export) that may prepare batches or
    change the predictions and have not said they don't; None if there are none."""
    said = lambda cb: isinstance(vars(cb).get("inference"), bool) or any(  # noqa: E731 -- (True or False on the
        "inference" in vars(k) for k in type(cb).__mro__ if k is not Callback)  # instance: the course's on_val)
    names = [type(cb).__name__ for cb in learn.cbs if all(cb is not p for p in taking_part) and not said(cb)
             and any(_users(cb, event) for event in ("before_batch", "after_predict"))]
    if not names:
        return None
    return (f"{who} leaves out {', '.join(names)}: callbacks take part in prediction passes only with "
            f"inference = True (DeviceCB, validation transforms and autocast do). If {names[0]} prepares "
            "the batches the model needs (normalizing, reshaping) or changes the predictions (after_predict), set "
            "inference = True on it; if it only records, set inference = False on its class to say so.")


def _warn_left_out(learn: Learner, taking_part: list[Callback], who: str = "get_preds") -> None:
    """Warn of callbacks of the user's left out of the pass (see `left_out`)."""
    said = left_out(learn, taking_part, who)
    if said:
        warn(said)


def _users(cb: Callback, event: str) -> bool:
    """Whether `cb`'s handler of `event` is the user's own: a subclass of MetricsCB (the course's WandBCB) has
    MetricsCB's after_predict, which records."""
    owner = next((k for k in type(cb).__mro__ if callable(vars(k).get(event))), None)
    return owner is not None and not owner.__module__.startswith("miniai.")


def prediction_pass(learn: Learner, dl: Iterable[Any], cbs: Sequence[Callback] = (), with_loss: bool = False,
                    who: str = "get_preds", warn_draws: bool = True) -> None:
    """Run the learner's predict path over `dl` once, with `cbs` added for the pass; call it inside `kept`.

    The events are those of `fit(1, train=False)` for `participants(learn) + cbs`; `get_loss` and after_loss
    only `with_loss` (without it `learn.loss` is None for the pass). The cancel table of `Learner` holds for batches
    (a cancelled batch is left out, with its targets); a cancel of the pass itself (CancelEpochException,
    CancelFitException) is an error, as its results would miss the rest. Cleanups always run. `who` names the
    caller in the warnings about callbacks left out and (unless not `warn_draws`) a model that draws random numbers.
    """
    # The learner's own stage machinery (so the cancel table and cleanup guarantees are the loop's), with a
    # dispatch table for this pass only; kept() puts back the learner's table and every attribute set here.
    taking_part = participants(learn)
    own = next((cb for cb in cbs if any(cb is c for c in learn.cbs)), None)
    if own is not None and any(own is cb for cb in taking_part):  # it would run twice per batch (a transform twice)
        raise ValueError(f"this {type(own).__name__} takes part in prediction passes already (inference = True): "
                         "leave it out of cbs")
    if own is not None:  # kept() puts its records back after the pass: its .last would be the fit's again
        raise ValueError(f"this {type(own).__name__} is one of the learner's callbacks, and {who} puts their state "
                         "back after its pass (a MetricsCB's rows would be the fit's again, not this pass's): pass a "
                         f"new one, e.g. cbs=[{type(own).__name__}(...)], and read it afterwards")
    _warn_left_out(learn, taking_part, who)
    learn._handlers = build_handlers([*taking_part, *cbs])
    learn._predicting = True  # (kept() puts it back) the fit's own hooks leave this pass's forwards alone
    learn.training, learn.dl, learn.n_epochs, learn.epochs, learn.epoch, learn.iter = False, dl, 1, range(1), 0, None
    learn.stepped, learn.pass_steps, learn.passes = False, 0, ("valid",)  # (no batch of a prediction pass steps)
    if not with_loss:  # no loss step runs: callbacks (MetricsCB) must not read an earlier fit's loss as this pass's
        learn.loss = None
    if isinstance(learn.model, DistributedDataParallel):  # during a DDP fit: its forward broadcasts the buffers, a
        learn.model = learn.model.module  # collective the other ranks never join when one rank predicts alone
    learn.model.eval()
    drew = False  # whether the model drew random numbers (dropout a callback left in train mode, F.dropout)
    lazy = any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in learn.model.parameters())

    def one_batch() -> None:
        nonlocal drew
        # (until the first draw: two copies of a few KB a batch; a lazy layer's first forward draws its init)
        watch = warn_draws and not drew and not (lazy and learn.iter == 0)
        before = _rng_states() if watch else []
        try:
            learn._do("predict")
        except RuntimeError as e:  # (torch's dtype error, for raw pixels given where the model takes normalized ones)
            _note_raw_pixels(learn, e)
            raise
        drew = drew or watch and any(not torch.equal(a, b) for a, b in zip(before, _rng_states()))
        learn._emit("after_predict")
        if with_loss:
            learn._do("get_loss")
            learn._emit("after_loss")

    def stage(name: str, body: Callable[[], None], cancel: type[Exception]) -> None:
        learn._stage(name, body, cancel)
        if learn.stopped_by is not None:  # the pass cut short: what it gathers would miss the rest (a batch a
            # callback cancels is left out, with its targets, as the cancel table says)
            e = learn.stopped_by
            raise ValueError(f"{type(e).__name__} raised by {type(getattr(e, 'raised_by', None)).__name__} in "
                             f"{getattr(e, 'event', '?')} cut the pass of {who} short: its results would miss items. A "
                             "callback taking part in prediction passes (inference = True) must let them run") from e

    def all_batches() -> None:
        for learn.iter, learn.batch in enumerate(dl):
            learn._stage("batch", one_batch, CancelBatchException)
        if learn.iter is None:
            raise ValueError("the loader given for predictions yielded no batches (an empty dataset, or drop_last "
                             "with fewer items than bs?)")

    with torch.no_grad():
        stage("fit", lambda: stage("epoch", all_batches, CancelEpochException), CancelFitException)
    if drew:  # Monte Carlo dropout by repeated calls: each would draw the same masks, a spread of 0
        warn(f"the model drew random numbers in {who}'s pass (dropout in train mode?), and the RNGs are put "
             "back as it leaves everything as it was: another call repeats them, the same preds. For Monte "
             "Carlo dropout, seed each call differently (torch.manual_seed(i) before call i)")


def _note_raw_pixels(learn: Learner, error: Exception) -> None:
    """Say, on torch's error, that the batch's inputs are raw uint8 pixels where the loaders gave normalized ones."""
    x = learn.batch[0] if isinstance(learn.batch, (tuple, list)) and learn.batch else None
    if isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and getattr(learn.dls, "normalize", None) is not None:
        weight = model_dtype(learn.model)
        cast = "" if weight in (None, torch.float32) else f".to({weight})"  # (a model halved to ship)
        add_note(error, "(the batch's inputs are raw uint8 pixels, and this learner's loaders normalized theirs: "
                        f"give prepared inputs, e.g. dl=[(learn.dls.normalize(x){cast}, y)], or learn.infer(x), "
                        "which takes raw images)")


def _rng_states() -> list[torch.Tensor]:
    """torch's CPU RNG state, and each CUDA device's once CUDA is in use: what a model's forward draws from."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return [torch.get_rng_state(), *cuda]


def unreduced(loss_func: Callable, who: str = "get_preds(with_loss=True)") -> Callable:
    """`loss_func` returning one loss per item: `reduction='none'` on a copy of an nn loss, or as an argument;
    `who` names the call that needs it in the errors."""
    if loss_func is None:
        raise TypeError(f"{who} needs learn.loss_func, and this learner has none (an exported learner whose loss "
                        "could not be pickled?): set learn.loss_func = F.cross_entropy, say")
    # an item's losses at its positions (per class, per pixel) are added up, as the fit's loss adds them, under
    # reduction='sum' and KLDivLoss's 'batchmean' (each item's sum), else averaged (_per_item, MetricsCB)
    summed = loss_setting(loss_func, "reduction", "mean") in ("sum", "batchmean")
    layers = _func_chain(loss_func)
    was = [getattr(layer, "reduction", None) for layer in layers]
    per_item = copy.copy(loss_func) if isinstance(was[0], str) else loss_func
    if per_item is not loss_func:  # nn.CrossEntropyLoss() and friends: a shallow copy, the learner's stays as it is
        per_item.reduction = "none"  # (a function copies as itself: it takes the argument below, if it takes one)
        # a setter that set it on a loss the copy shares (fastai's BaseLoss's .func): put it back, innermost first,
        # and copy all of it
        if [getattr(layer, "reduction", None) for layer in layers] != was:
            for layer, reduction in reversed(list(zip(layers, was))):
                if getattr(layer, "reduction", None) != reduction:
                    layer.reduction = reduction
            try:
                per_item = copy.deepcopy(loss_func)
            except Exception as e:  # noqa: BLE001 -- a lock, a file: said with what to do instead
                raise TypeError(f"{who} needs one loss per item: it sets reduction='none' on a copy of loss_func, and "
                                f"{name_of(loss_func)} passes its reduction on to the loss it holds (.func), so only a "
                                f"deep copy leaves the learner's as it is, and that failed ({e}). Compute the losses "
                                "yourself from the preds and targets of learn.get_preds().") from e
            per_item.reduction = "none"
        return mark_per_item(per_item, loss_func, summed)
    try:
        takes_reduction = "reduction" in inspect.signature(loss_func).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins)
        takes_reduction = False
    if takes_reduction:  # F.cross_entropy, F.mse_loss, partials of them
        # (updated=(): reading a partial's __dict__ would give it one, and a partial of it then nests, unmerged)
        per_item = functools.update_wrapper(functools.partial(loss_func, reduction="none"), loss_func, updated=())
        return mark_per_item(per_item, loss_func, summed)
    name = getattr(loss_func, "__name__", type(loss_func).__name__)
    raise TypeError(f"{who} needs one loss per item, asked of loss_func with reduction='none'; "
                    f"{name} takes no reduction argument. Use a loss that does (F.cross_entropy, "
                    "nn.CrossEntropyLoss(), F.mse_loss, ...), give yours a `reduction` parameter, or compute the "
                    "losses yourself from the preds and targets of learn.get_preds().")


def _func_chain(loss_func: Any) -> list:
    """`loss_func` and the losses it holds as `.func`, outermost first (at most 8: a `.func` may lead back)."""
    layers = [loss_func]
    while len(layers) < 8 and getattr(layers[-1], "func", None) is not None:
        layers.append(layers[-1].func)
    return layers


_CLASS_DIM_ACTS = (torch.softmax, F.softmax, torch.log_softmax, F.log_softmax)


def _activate(act: Callable, preds: Any, who: str = "get_preds") -> Any:
    if not isinstance(preds, torch.Tensor):  # (logits, aux), a dict: an act of the user's may pick the logits out
        try:
            return act(preds)
        except (TypeError, AttributeError) as e:
            raise TypeError(f"act is applied to the model's output, and this model returns a {type(preds).__name__}, "
                            f"not a tensor: pick the logits out in act, e.g. act=lambda preds: torch.softmax(preds[0], "
                            "dim=1), or leave act out and apply it to the part you need") from e
    if preds.dtype in (torch.float16, torch.bfloat16):
        preds = preds.float()  # probabilities from autocast's half-precision logits would keep 2-3 digits
    if any(act is f for f in _CLASS_DIM_ACTS):  # torch's own need a dim: the class dim 1, as F.cross_entropy has it
        if preds.ndim < 2 or preds.shape[1] < 2:
            shape = tuple(preds.shape)
            raise ValueError(f"softmax over the class dim 1 needs 2 or more outputs per item; the model gives {shape}"
                             " (1 is always 1.0; across the items of a batch is meaningless). For one score per item "
                             f"(a binary model) use learn.{who}(act=torch.sigmoid)")
        return act(preds, dim=1)
    return act(preds)


def _check_act(act: Callable, preds: Any) -> None:
    """Refuse a softmax or log-softmax over dim 1 given some other way (partial, nn.Softmax, a lambda) for one output
    per item, (N, 1, ...), where it is 1.0 (or 0.0) for every item; torch's own functions are checked by `_activate`."""
    if any(act is f for f in _CLASS_DIM_ACTS) or not (isinstance(preds, torch.Tensor) and preds.is_floating_point()
                                                      and preds.ndim >= 2 and preds.shape[1] == 1):
        return
    rest, space = [1] * (preds.ndim - 2), preds.shape[2:]  # (per pixel: a softmax over an item's pixels is fine)
    logits = torch.tensor([-1.0, 1.0], device=preds.device)
    try:  # the logits as one output of two items, and as two classes of one item (in float: any dtype act gives;
        # bfloat16's sums are within 1e-2 of 1)
        apart = act(logits.view(2, 1, *rest).expand(2, 1, *space).contiguous()).float()
        together = act(logits.view(1, 2, *rest).expand(1, 2, *space).contiguous()).float()
        softmax = bool((apart == 1).all() and ((together.sum(1) - 1).abs() < 1e-2).all())
        log_softmax = bool((apart == 0).all() and ((together.exp().sum(1) - 1).abs() < 1e-2).all())
    except Exception:  # an act for other inputs than these (or returning no tensor, or another shape): no softmax
        return
    if softmax or log_softmax:
        raise ValueError(f"act is a {'log-' * log_softmax}softmax over dim 1, which holds one output per item here "
                         f"{tuple(preds.shape)}: it gives {'0.0' if log_softmax else '1.0'} for every item. For one "
                         "score per item (a binary model) use act=torch.sigmoid")


def _check_class_dim(act: Callable, preds: Any, yb: tuple, loss_func: Any, who: str) -> None:
    """Refuse torch's softmax (taken over dim 1, the class dim of torch's cross-entropy) of outputs whose classes
    are last by their targets' shape: a sequence model's (N, T, C) against (N, T) targets, its loss a function of
    one's own (torch's cross-entropy itself takes them on dim 1)."""
    target = yb[0] if yb else None
    if not (any(act is f for f in _CLASS_DIM_ACTS) and isinstance(preds, torch.Tensor) and preds.ndim >= 3
            and isinstance(target, torch.Tensor)) or class_loss(loss_func):
        return
    if target.shape == preds.shape[:-1] and target.shape != preds.shape[:1] + preds.shape[2:]:
        raise ValueError(f"{who} takes torch's softmax over dim 1, the class dim of torch's cross-entropy, and these "
                         f"preds {tuple(preds.shape)} with targets {tuple(target.shape)} hold the classes last (a "
                         f"sequence model's (N, T, C)): pass act=partial(torch.softmax, dim=-1)")


def _cat(parts: list[Any], sizes: list[int] | None = None, by_item: bool = False, of_batch: bool = False,
         path: tuple[str, ...] = ()) -> Any:
    """Concatenate per-batch results along the batch dimension, keeping tuples, lists and dicts of tensors; a
    tuple or list of one entry per item of its batch (`sizes`: strings, dicts, tensors of their own lengths) is
    joined as a sequence, and so, `by_item` (a collate of entries per item), is any of as many entries. `of_batch`:
    the batch's own targets or inputs, not a model's outputs (whose tuples of alike heads are its own)."""
    first = parts[0]
    numpy = type(first).__module__ == "numpy" and hasattr(first, "ndim")  # a collate's NumPy targets: joined too
    if isinstance(first, torch.Tensor) or numpy:
        if not of_batch and sizes is not None and any(p.ndim >= 2 and len(p) != n for p, n in zip(parts, sizes)):
            joined = _cat_items_elsewhere(parts, sizes, path)  # (an RNN's h_n, CTC's (T, N, C), a time-first (T, N))
            if joined is not None:
                return joined
        if any(p.ndim != first.ndim for p in parts):  # 0-dim and not: torch.cat's error names neither
            raise ValueError("get_preds: the batches' outputs (or targets) are 0-dim for some batches and not for "
                             "others (a .squeeze() in forward or the collate squeezes a one-item batch's dim too): "
                             "squeeze the dim you mean, e.g. .squeeze(-1)")
        if first.ndim and any(p.shape[1:] != first.shape[1:] for p in parts):  # batches padded each to its own length
            shapes = sorted({tuple(p.shape[1:]) for p in parts})
            raise ValueError(f"get_preds concatenates the batches' results, and these differ past the batch "
                             f"dimension ({shapes[0]} ... {shapes[-1]}): batches padded each to its own longest item, "
                             "say. Pad every batch to one length in the collate_fn, or predict batch by batch "
                             "(learn.get_preds(dl=[batch]) for each)")
        if numpy:
            import numpy as np
            return np.concatenate(parts) if first.ndim else np.stack(parts)
        return torch.cat(parts) if first.ndim else torch.stack(parts)
    if isinstance(first, dict):
        return {k: _cat([p[k] for p in parts], sizes, of_batch=of_batch, path=(*path, repr(k))) for k in first}
    if isinstance(first, (tuple, list)):
        if _sequence(first) and (by_item and all(len(p) == n for p, n in zip(parts, sizes))
                                 or _per_item_sequence(parts, sizes, of_batch)):
            return type(first)(item for p in parts for item in p)
        return _cat_slots(parts, sizes, of_batch=of_batch, path=path)
    if dataclasses.is_dataclass(first) and not isinstance(first, type):  # (a model's output, field by field)
        return dataclasses.replace(first, **{f.name: _cat([getattr(p, f.name) for p in parts], sizes,
                                                          of_batch=of_batch, path=(*path, f.name))
                                             for f in dataclasses.fields(first) if f.init})
    return parts


def _cat_items_elsewhere(parts: list[torch.Tensor], sizes: list[int], path: tuple[str, ...]) -> torch.Tensor | None:
    """A model's output whose items are not on its first dim (an RNN's h_n (layers, N, H), CTC's (T, N, C)) joined
    along the one dim that holds each batch's item count, where dim 0 can't hold them: joined along dim 0, the
    batches' layers or time steps would be stacked as more of them. Where dim 0 might, or no one dim does: None,
    joined along dim 0, with a warning (not for a 2-dim output holding a whole number per item: flattened tokens)."""
    dims = set.intersection(*({d for d in range(1, p.ndim) if p.shape[d] == n} for p, n in zip(parts, sizes)))
    rest = {p.shape[:d] + p.shape[d + 1:] for d in dims for p in parts} if len(dims) == 1 else set()
    # dim 0 can't hold the items where, over batches of other sizes, it holds another number per item (a flattened
    # (N × T, C) holds T each); over batches of one size, where it holds no whole number of them in an output of 3
    # dims or more (a packed (tokens, C) may hold any number: 2-dim outputs are left to dim 0, with the warning)
    ratios = {len(p) / n for p, n in zip(parts, sizes)}
    whole = not any(len(p) % n for p, n in zip(parts, sizes))  # (dim 0 holds a whole number per item in each batch)
    if len(rest) == 1 and (len(ratios) > 1 if len(set(sizes)) > 1 else parts[0].ndim >= 3 and not whole):
        return torch.cat(parts, dim=dims.pop())
    if dims and not (parts[0].ndim == 2 and whole):  # (flattened tokens, (N × T, C): as ever, unsaid)
        p, n = next((p, n) for p, n in zip(parts, sizes) if len(p) != n)
        warn(f"get_preds joined {_where(path)}of shape {tuple(p.shape)} (in a batch of {n} items) along dim 0, and "
             f"its dim {min(dims)} holds the batch's item count too: if the items are there (an RNN's h_n, a "
             "time-first (T, N), CTC's (T, N, C)), the batches' pieces are stacked as more of dim 0; if dim 0 holds "
             "them (packed or flattened tokens), the join is right. Return such outputs batch-first "
             "(h_n.transpose(0, 1)), or leave them out of forward's return")
    return None


def _where(path: tuple[str, ...]) -> str:
    """Which part of a model's output `path` leads to, for a message: 'output 1 ', 'output 'h' ', or ''."""
    return f"output {'.'.join(path)} " if path else "the output "


def _cat_slots(parts: list[Any], sizes: list[int] | None = None, by_item: bool = False,
               of_batch: bool = False, path: tuple[str, ...] = ()) -> Any:
    """Concatenate per-batch tuples or lists slot by slot: (logits, aux), a batch's (target_a, target_b)."""
    first = parts[0]
    items = [_cat([p[i] for p in parts], sizes, by_item, of_batch, (*path, str(i))) for i in range(len(first))]
    return type(first)(*items) if hasattr(first, "_fields") else type(first)(items)


def _sequence(x: Any) -> bool:
    """Whether `x` is a tuple or list of entries (not a namedtuple, whose fields are its own)."""
    return isinstance(x, (tuple, list)) and not hasattr(x, "_fields")


def _per_item_sequence(parts: list[Sequence], sizes: list[int | None] | None, of_batch: bool = False) -> bool:
    """Whether per-batch tuples or lists hold one entry per item (strings default_collate gives, one dict or one
    box tensor per item) rather than one per head ((logits, aux), an RNN's (output, h_n)): decided over all batches,
    from their lengths, whether they hold tensors, and, for tensors, the batches' item counts (`sizes`); `of_batch`
    (the batch's targets or inputs): a tuple that reads both ways is warned of, as a list is."""
    if any(len(p) != len(parts[0]) for p in parts) or not any(isinstance(t, torch.Tensor) for t in parts[0]):
        return True  # a length that changes with the batch, or no tensor in it (strings, dicts)
    if sizes is None or any(n is None or len(p) != n for p, n in zip(parts, sizes)):
        return False  # not one entry per item: heads
    scalars = [isinstance(t, torch.Tensor) and t.ndim == 0 for p in parts for t in p]
    if any(scalars):  # all 0-dim: one label per item (a collate's tuple(y for _, y in batch)); some: a per-batch
        return all(scalars)  # scalar beside the logits, a head (whose logits are not 0-dim)
    # as many entries as items in every batch: heads that happen to number the items ((logits, aux) at bs 2; an
    # RNN's (logits, h_n), or (embeddings, prototypes), one of them not batch-first), or one entry per item (boxes)
    if all(isinstance(t, torch.Tensor) and len(t) == n for p, n in zip(parts, sizes) for t in p):
        shapes = {_signature(t) for p in parts for t in p}
        # n alike tensors of n rows: heads, or one per item of length n; a model's tuple is heads ((h_n, c_n) at bs 2),
        # a batch's own (a collate's) is warned of
        if len(parts) > 1 and len(shapes) == 1 and (of_batch or isinstance(parts[0], list)):
            n, shape, kind = sizes[0], next(iter(shapes))[0], type(parts[0]).__name__
            warn(f"get_preds: every batch holds a {kind} of {n} tensors of {n} rows {shape} beside its {n} "
                 f"items, which reads two ways: joined as {n} heads (logits, aux, ...), each over all the "
                 "batches, or kept as one per item (a collate's per-item targets). They were "
                 f"joined as {n} heads; if they are one per item, use a batch size other than {n}.")
        return False  # every entry numbers the batch's items: heads
    batch_first = [any(isinstance(t, torch.Tensor) and len(t) == n for t in p) for p, n in zip(parts, sizes)]
    if len(parts) > 1 and all(batch_first):
        # heads keep their shapes batch after batch and differ from each other, one of them batch-first; an item's
        # shape doesn't repeat at its position in every batch (with one batch, either reading gives the same)
        slots = {tuple(_signature(t) for t in p) for p in parts}
        if len(slots) == 1 and len(set(next(iter(slots)))) > 1:
            return False
    return True  # entries of their own lengths: one per item


def _signature(x: Any) -> Any:
    """The structure of a batch's result: shapes and dtypes of its tensors, nested as they are."""
    if isinstance(x, torch.Tensor):
        return tuple(x.shape), x.dtype
    if isinstance(x, (tuple, list)):
        return type(x), tuple(_signature(t) for t in x)
    if isinstance(x, dict):
        return tuple((k, _signature(v)) for k, v in x.items())
    return type(x)


def _unpack(items: tuple) -> Any:
    """A batch's inputs or targets as returned: None for none, the tensor for one, else the tuple."""
    return None if not items else items[0] if len(items) == 1 else items


def _copy_to_cpu(x: Any) -> Any:
    """`to_cpu`, always a copy: a CPU tensor of the loader's may be refilled with its next batch (a prefetcher's)."""
    return map_tensors(x, lambda t: t.detach().to("cpu", copy=True))


class _GatherPreds(Callback):
    """Gathers each batch's preds (through `act`), targets and optionally inputs and per-item losses, on the CPU."""
    order = 100  # after every other callback's after_batch: what it gathers is final
    inference = True

    def __init__(self, with_input: bool = False, with_loss: bool = False, act: Callable | None = None,
                 loss_func: Callable | None = None, who: str = "get_preds") -> None:
        self.with_input, self.with_loss, self.act, self.who = with_input, with_loss, act, who  # (who: for act's advice)
        self.loss_func = loss_func  # the learner's own (reduced), checked on its per-position losses until it warns
        self._checks_left = 8  # batches to check it on
        self._act_checked = False
        self.inputs: list[Any] = []
        self.preds: list[Any] = []
        self.targets: list[Any] = []
        self.losses: list[torch.Tensor] = []
        self.sizes: list[int | None] = []  # each batch's item count: what a per-item sequence's length is
        self.by_item = True  # every batch's first input is a tuple or list, one entry per item (what sizes count):
        # a collate of entries per item (tuple(zip(*batch))), whose other tuples of as many entries are per item too
        self._predicted: tuple[Any, Any] | None = None  # (this batch's preds, their in-place counters)
        self._inputs: Any = None  # (this batch's inputs, copied before the predict step)

    def before_batch(self, learn: Learner) -> None:
        if self.with_input:  # the inputs the model is given, after every transform (order 100): taken before its
            self._inputs = _copy_to_cpu(batch_parts(learn)[0])  # forward, which may change them in place

    def after_predict(self, learn: Learner) -> None:
        # (a loss that changes the preds in place, p.clamp_, would have them gathered as it left them: refused in
        # after_batch; their counters cost nothing, a copy of each batch's preds would)
        self._predicted = (learn.preds, tensor_versions(learn.preds))
        # the loss function itself, on the model's output (not whatever a get_loss of one's own makes of it), under
        # the pass's autocast: does the mean of its reduction='none' losses (the pass's learn.loss_func) give back its
        # own mean? Not where that mean is not of its positions (CTC's (N,) losses, divided by length)
        if self.loss_func is None or getattr(learn.loss_func, "reduced_by_sum", False) or self._checks_left <= 0:
            return
        self._checks_left -= 1  # (a few batches tell: each check is two more calls of the loss)
        preds = map_tensors(learn.preds, lambda t: t.detach().clone())  # (a loss may change its input in place)
        try:
            each = learn.loss_func(preds, *learn.yb)
            if not (isinstance(each, torch.Tensor) and each.ndim > 1):
                self.loss_func = None  # one loss per item, or none: nothing to check, now or later
                return
            own = self.loss_func(map_tensors(learn.preds, lambda t: t.detach().clone()), *learn.yb)
        except Exception:  # (a loss that needs more than (preds, *yb): nothing to check)
            self.loss_func = None
            return
        self._check_mean(learn, each, own)

    def after_batch(self, learn: Learner) -> None:
        (xb, yb), preds = batch_parts(learn), learn.preds
        predicted, self._predicted = self._predicted, None
        if predicted is not None and predicted[0] is preds and tensor_versions(preds) != predicted[1]:
            raise preds_changed_error(self.who + "(with_loss=True)" * self.with_loss, learn.loss_func)
        if yb and isinstance(yb[0], torch.Tensor) and not yb[0].ndim:  # preds of n items, n targets of one each
            raise unbatched_error()
        if self.act is not None:
            if not self._act_checked:  # (once: the act, not the batch, is what is checked)
                _check_act(self.act, preds)
                _check_class_dim(self.act, preds, yb, learn.loss_func, self.who)
                self._act_checked = True
            device = preds.device.type if isinstance(preds, torch.Tensor) else "cpu"
            with _no_autocast(device):  # act sees the model's output, not a recast of it
                preds = _activate(self.act, preds, self.who)
        if isinstance(preds, torch.Tensor) and preds.dtype in (torch.float16, torch.bfloat16):
            preds = preds.float()  # autocast's half-precision outputs, exactly, in float32 (as the course's to_cpu)
        n = input_items(xb[0]) if xb else None
        self.by_item = self.by_item and bool(xb) and _sequence(xb[0])
        if isinstance(preds, torch.Tensor) and not preds.ndim and n not in (1, None):  # (one item: squeezed, stacked)
            if self.act is not None and getattr(learn.preds, "ndim", None) != 0:  # act reduced the model's output
                out = describe(learn.preds) if isinstance(learn.preds, torch.Tensor) else type(learn.preds).__name__
                raise ValueError(f"{self.who}'s act {name_of(self.act)!r} turned the model's output ({out}) for "
                                 f"batch {learn.iter} of {n} items into one 0-dim value: act must keep one result per "
                                 "item, e.g. act=lambda p: p.argmax(dim=1)")
            raise ValueError(f"get_preds: the model gave one 0-dim output for batch {learn.iter} of {n} items, not "
                             "one per item: return an output with the batch dimension first")
        self.preds.append(_copy_to_cpu(preds))  # (a model's output may be a view of the loader's input: x[:, -1])
        self.sizes.append(n)
        self.targets.append(_copy_to_cpu(yb))
        if self.with_input:
            self.inputs.append(self._inputs)
            self._inputs = None
        if self.with_loss:
            loss = learn.loss
            if not isinstance(loss, torch.Tensor) or loss.ndim == 0:
                held = _func_chain(original_loss(learn.loss_func))
                why = (f" {name_of(held[0])} has a reduction of its own that does not reach the loss it holds (.func), "
                       "which still reduces: pass it on (as fastai's BaseLoss does, a reduction property setting "
                       "self.func.reduction), or compute the losses from get_preds' preds and targets."
                       if len(held) > 1 and hasattr(held[0], "reduction") else "")
                raise ValueError("get_preds(with_loss=True): the get_loss step returned one loss for the batch, not "
                                 "one per item. It must compute learn.loss_func(preds, *yb), which get_preds sets to "
                                 "reduction='none' for the pass." + why)
            self.losses.append(to_cpu(_per_item(loss, yb or (), learn.loss_func)))

    def _check_mean(self, learn: Learner, loss: torch.Tensor, own: Any) -> None:
        """Warn (once) when a batch's per-position losses don't give back the loss's own mean: it leaves out or
        weighs positions in a way get_preds can't see (an ignore_index inside a def), so the per-item losses are
        averaged over the wrong positions, and MetricsCB's loss of the pass is wrong."""
        ours = mean_loss(loss, learn.yb[0] if len(learn.yb) == 1 else None, learn.loss_func)
        if not (isinstance(own, torch.Tensor) and own.ndim == 0 and torch.isfinite(own) and torch.isfinite(ours)):
            return
        rtol = 1e-2 if own.dtype in (torch.float16, torch.bfloat16) else 1e-3  # (a half-precision mean: its rounding)
        if not torch.isclose(ours.float(), own.float(), rtol=rtol, atol=1e-6):
            name = getattr(self.loss_func, "__name__", type(self.loss_func).__name__)
            self.loss_func = None
            warn(f"get_preds(with_loss=True): the per-position losses ({name} with reduction='none') "
                 f"average to {ours.item():.4g} on batch {learn.iter}, where {name} itself gives "
                 f"{own.item():.4g}: it leaves out or weighs positions in a way get_preds can't see (an "
                 "ignore_index or class weights inside the function), so each item's loss, the mean over "
                 "its positions, and a MetricsCB's loss of this pass are not its own. Say it: give torch's "
                 "loss the setting as a keyword, partial(F.cross_entropy, ignore_index=255, weight=w), or "
                 f"set an ignore_index on yours, {name}.ignore_index = 255 (the value it ignores).")

    def result(self) -> tuple:
        """(inputs?, preds, targets, losses?), each concatenated over the batches."""
        # a batch's targets and inputs are its slots after and before n_inp: joined slot by slot, whatever they hold
        sizes = None if None in self.sizes else self.sizes
        by_item = self.by_item and sizes is not None  # (not the model's outputs: their heads are its own)
        preds = _cat(self.preds, sizes)  # (first: where both fail to join, the preds' error is the one to see)
        out = (preds, None if None in self.targets else _unpack(_cat_slots(self.targets, sizes, by_item, True)))
        if self.with_input:
            out = (_unpack(_cat_slots(self.inputs, sizes, by_item, True)), *out)
        return (*out, _cat(self.losses)) if self.with_loss else out


def _per_item(loss: torch.Tensor, yb: tuple, loss_func: Any) -> torch.Tensor:
    """One loss per item, the loss of that item alone: its losses (per token, per pixel: more dims) reduced as the
    loss reduces a batch, averaged over the positions that count (`position_weights`: not padding, which
    cross-entropy gives 0 and would rank items by length; by class weights too), NaN for an item with none; added up
    when the loss's reduction was 'sum' or 'batchmean' (get_preds' copy says `reduced_by_sum`)."""
    flat = loss.reshape(len(loss), -1)
    if getattr(loss_func, "reduced_by_sum", False):
        return flat.sum(1)
    target = yb[0] if len(yb) == 1 else None
    if isinstance(target, torch.Tensor) and target.shape == loss.shape:  # (one target per position: flattened alike)
        target = target.reshape(len(loss), -1)
    return counted_mean(flat, target, loss_func, dim=1)


def _loader(learn: Learner, dl: Any) -> Any:
    dls = getattr(learn, "dls", None)
    sharded = [getattr(dls, "train", None), getattr(dls, "valid", None)]
    if learn._in_fit and isinstance(learn.model, DistributedDataParallel) and (dl is None or any(
            dl is d for d in sharded)):  # DDPCB has sharded the fit's loaders: this process would see its part only
        raise RuntimeError("under DDP, during a fit, each process's loaders hold only its shard, so predictions "
                           "made now would cover part of the data: call get_preds or tta after the fit")
    # a loader sharded by the script (DDPCB(presharded=...)) holds this process's part after the fit too
    name = "valid" if dl is None else next((n for n, d in zip(("train", "valid"), sharded) if dl is d), None)
    presharded = {n for cb in learn.cbs if isinstance(cb, DDPCB) for n in cb.presharded}
    if name in presharded and world_size() > 1:
        raise RuntimeError(f"dls.{name} is named in DDPCB(presharded=...): it holds this process's part of the data "
                           f"(1 of {world_size()}), so predictions on it would cover that part alone. Pass a loader "
                           "over the whole data as dl= (learn.get_preds(dl=loader), learn.tta(dl=loader), "
                           "Interpretation.from_learner(learn, dl=loader))")
    if dl is None:
        dl = sharded[1]
        if dl is None:
            raise ValueError("no loader to predict on: learn.dls has no valid loader (a learner from load_learner "
                             "keeps none). Pass one as this call's dl= (learn.get_preds(dl=loader), learn.tta(dl=loader), "
                             "Interpretation.from_learner(learn, dl=loader)), or dl=[(xb,)] for one batch.")
    return _in_order(dl)


def _in_order(dl: Any) -> Any:
    """`dl`, or, when it shuffles, drops its last items or gives its workers' batches as they finish (in_order=False),
    a copy that walks every item once in the dataset's order
    (predictions line up with `dl.dataset`, as fastai's get_preds does): of a TensorLoader, or of a torch
    DataLoader with torch's plain random sampler. A loader of a class of its own (whose `__iter__` may do work a
    copy would skip) is walked as it is, in its own order, unless it drops items; a sampler that draws over part
    of the data, or weighted, is refused."""
    if isinstance(dl, TensorLoader) and dl.world_size > 1:  # sharded (TensorLoader.shard): one process's part
        raise ValueError(f"this TensorLoader walks one process's part of its items (rank {dl.rank} of "
                         f"{dl.world_size}), so predictions would miss the others: pass the whole loader, e.g. "
                         "TensorLoader(x, y, bs) over the items to predict")
    if type(dl) is TensorLoader and (dl.shuffle or dl.drop_last):
        return TensorLoader(dl.x, dl.y, bs=dl.bs)
    drops = drops_last(dl)
    sampler = getattr(getattr(dl, "batch_sampler", None), "sampler", getattr(dl, "sampler", None))
    if isinstance(sampler, DistributedSampler) and sampler.num_replicas > 1:  # one process's part, padded
        return _refuse_order(dl)
    # (workers that give their batches as they finish them: another order each pass)
    unordered = isinstance(dl, DataLoader) and dl.num_workers > 1 and getattr(dl, "in_order", True) is False
    if type(dl) is not DataLoader or isinstance(dl.dataset, IterableDataset) or _own_batches(dl) or not (
            _shuffled(dl) or drops or unordered):  # (a batch sampler of its own: walked as it is too)
        if drops:  # the last items would be missing from the predictions, without a word
            raise ValueError(f"this {type(dl).__name__} drops its last items (drop_last=True), so predictions would "
                             "miss them: pass a loader without drop_last over the items to predict, e.g. dls.valid")
        if unordered:
            raise ValueError("this DataLoader gives its batches in the order its workers finish them (in_order="
                             "False), so predictions would not line up with its dataset: pass one with in_order=True "
                             "(torch's default) over the items to predict")
        return dl
    # the items' sampler and batch size: the loader's own, or those of torch's BatchSampler it was given
    sampler = getattr(dl.batch_sampler, "sampler", dl.sampler)
    bs = dl.batch_size if dl.batch_size is not None else getattr(dl.batch_sampler, "batch_size", None)
    if isinstance(sampler, SequentialSampler) or (type(sampler) is RandomSampler and not sampler.replacement
                                                   and sampler.num_samples == len(dl.dataset)):
        workers = {"num_workers": dl.num_workers, "worker_init_fn": dl.worker_init_fn, "timeout": dl.timeout,
                   "multiprocessing_context": dl.multiprocessing_context,
                   "persistent_workers": dl.persistent_workers} if dl.num_workers else {}
        if dl.num_workers:
            workers["prefetch_factor"] = dl.prefetch_factor
        return DataLoader(dl.dataset, bs, collate_fn=dl.collate_fn, pin_memory=dl.pin_memory, **workers)
    return _refuse_order(dl)


def _refuse_order(dl: DataLoader) -> Any:
    what = type(getattr(dl.batch_sampler, "sampler", None) or dl.batch_sampler).__name__
    raise ValueError(f"this DataLoader gives its items in another order each pass, or only some of them ({what}), "
                     "so predictions would not line up with its dataset: pass an unshuffled loader over the items "
                     "to predict, e.g. DataLoader(Subset(dataset, indices), batch_size) or dls.valid")


def _no_autocast(device: str) -> Any:
    """Autocast turned off on `device`; nothing to turn off where torch has no autocast (MPS before torch 2.5)."""
    try:
        return torch.autocast(device, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


def get_preds(learn: Learner, dl: Iterable[Any] | None = None, with_input: bool = False, with_loss: bool = False,
              act: Callable | None = None, cbs: Sequence[Callback] = ()) -> tuple:
    """`(preds, targets)` over every batch of `dl` (default `learn.dls.valid`), through the learner's predict path.

    Returns `(inputs, preds, targets)` `with_input` (the inputs the model was given: after the transforms, copied
    before its forward, which may change them in place), and per-item losses last `with_loss` (`loss_func` called with
    `reduction='none'`; losses with more dims are averaged over them, leaving out the positions whose target is the
    loss's `ignore_index`, -100 unless it says otherwise, or added up where its reduction, 'sum' or 'batchmean',
    adds them up; each item's is its own mean, in which a class weight cancels: weighted losses differ from torch's
    reduction='none' values there, which are weighted).
    Everything is concatenated on the CPU. `preds` are the raw model outputs (in float32 when autocast made them
    half precision: the same values) unless `act` is given, applied per batch to float32 outputs (torch's softmax
    and log_softmax go over the class dim 1). Targets are `learn.yb`: the batch's items after its `n_inp` inputs
    (one tensor for one item, a tuple for more, None for none; a dict batch, read by a predict and get_loss of one's
    own, has none by position: None, and its inputs are the batch). `cbs` join the pass. Eval mode, `no_grad`, and the
    learner is left exactly as it was: no optimizer step, metric, log, checkpoint or RNG draw (see
    `prediction_pass`). A TensorLoader or DataLoader that shuffles or drops its last items (`dls.train`) is walked
    in its dataset's order, every item once; a loader of a class of its own is walked as it is, in its own order
    (preds and targets together), and refused if it drops items.
    """
    dl = _loader(learn, dl)
    if act is not None and not callable(act):
        raise TypeError(f"act must be a callable applied to each batch's preds (e.g. torch.softmax); got {act!r}")
    loss_func = unreduced(learn.loss_func) if with_loss else None  # checked before anything runs
    gather = _GatherPreds(with_input, with_loss, act, learn.loss_func if with_loss else None)
    with kept(learn, [dl]):
        if with_loss:
            learn.loss_func = loss_func  # for this pass only: kept() puts the learner's back
        prediction_pass(learn, dl, [*cbs, gather], with_loss)
    return gather.result()


def capture_preds(learn: Learner, cbs: Sequence[Callback] | None = None, inps: bool = False) -> tuple:
    """The course's name: `(preds, targets)` on `learn.dls.valid`, and the inputs last `inps` (see `get_preds`)."""
    if inps:
        inputs, preds, targets = get_preds(learn, with_input=True, cbs=list(cbs or []))
        return preds, targets, inputs
    return get_preds(learn, cbs=list(cbs or []))


def _own_batches(dl: DataLoader) -> bool:
    """Whether a DataLoader was given a batch sampler of its own (not torch's BatchSampler)."""
    return dl.batch_sampler is not None and type(dl.batch_sampler) is not BatchSampler


def _shuffled(dl: Any) -> bool:
    """Whether `dl` may give its items in another order each pass: shuffled (`dl.shuffle`), or a torch DataLoader
    whose sampler draws (torch's random samplers, a shuffling DistributedSampler, any sampler with a generator);
    a fixed list of indices or a sequential sampler keeps its order."""
    if getattr(dl, "shuffle", False):
        return True
    if not isinstance(dl, DataLoader) or isinstance(dl.dataset, IterableDataset):
        return False
    if _own_batches(dl):  # a batch sampler of its own (buckets by length, say): its `shuffle` if it says, else maybe
        return bool(getattr(dl.batch_sampler, "shuffle", True))
    sampler = getattr(dl.batch_sampler, "sampler", dl.sampler)
    return isinstance(sampler, (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)) or bool(
        getattr(sampler, "shuffle", False)) or hasattr(sampler, "generator")


def tta(learn: Learner, dl: Iterable[Any] | None = None,
        tfms: Callable[[torch.Tensor], torch.Tensor] | Sequence[Callable] | None = None, n: int = 1,
        inputs: str | None = None, act: Callable | None = torch.softmax) -> tuple:
    """Test-time augmentation: `(probs, targets)`, probabilities (`act` of the outputs) averaged over the inputs and
    `n` copies.

    `tfms` is a batch transform (x -> x, see `miniai.augment`) or a sequence of them, applied to the inputs after
    the learner's own validation transforms and every other callback that prepares batches for prediction (as a
    `BatchTransformCB(on_val=True)` added for each copy, ordered after them: what such a callback adds that must not
    be flipped, position channels say, belongs in the model). The default is a horizontal flip of (N,C,H,W) images,
    `RandomFlip(p=1.0)`: deterministic, so n > 1 only weighs it more; for varied copies pass random ones, e.g.
    `batch_tfms(RandomCrop(28, 2), RandomFlip())`. Outputs of the inputs' height and width are maps over the pixels
    (a segmentation model's (N,K,H,W), or (N,H,W), which may be one): the default flip's copies of (N,K,H,W) maps
    are flipped back before they are averaged, and any other RandomCrop or RandomFlip of such outputs is refused
    (tta can't put them back); maps at another resolution, and a transform of your own that moves pixels, are yours
    to undo. Their draws come from torch's global RNG inside a fork: tta repeats exactly and leaves the RNG as it
    was. `act` is applied to each batch's outputs as by `get_preds`: softmax over the class dim 1 by default (none
    for a model that ends in `nn.Softmax`, whose outputs are probabilities already; act=None for a model whose
    forward applies its own softmax otherwise),
    `torch.sigmoid` for a binary or multi-label model's scores, None to average the raw outputs. `n=0` is
    `get_preds(act=act)`. Each copy is a prediction pass, so `dl` must give its items in the same order every pass
    (a shuffled one is walked in order, as by `get_preds`). A learner whose batches have several inputs needs
    `inputs=` ('first', 'together', 'each'): the inputs the transforms take (as `BatchTransformCB`'s); dict batches
    have none by position, and take `n=0` only.
    """
    if learn.n_inp != 1 and inputs is None:
        raise ValueError(f"this learner's batches have n_inp={learn.n_inp} inputs: say which the augmented copies "
                         "transform, tta(..., inputs='first'), inputs='together' (all, with one draw) or "
                         "inputs='each' (each with a draw of its own)")
    check_count("tta: n", n, least=0, what=" (augmented copies)")
    if act is not None and not callable(act):
        raise TypeError(f"tta's act must be a callable applied to each batch's preds (e.g. torch.sigmoid); got {act!r}")
    from ..interpret import ends_in_softmax  # (here: interpret.py imports this module)
    if act in (torch.softmax, F.softmax) and ends_in_softmax(learn.model):  # its outputs are probabilities: a second
        act = None  # softmax would flatten them (infer and Interpretation keep them too)
    dl = _loader(learn, dl)
    if n and isinstance(dl, Iterator):  # (a generator, iter(dl), map(...)): the plain pass would use it up
        raise ValueError(f"tta walks the loader {n + 1} times (the plain pass and {n} augmented), and a one-shot "
                         f"iterator ({type(dl).__name__}) gives its batches once: pass the loader itself")
    if n and _shuffled(dl):
        raise ValueError("tta averages each item's probabilities over several passes, so the loader must give the "
                         "items in the same order each time: pass an unshuffled one (shuffle=False), e.g. dls.valid")
    if not (tfms is None or callable(tfms) or isinstance(tfms, Callback)):
        tfms = list(tfms)  # (once: a generator checked below would be used up before Compose took it)
    for t in [tfms] if tfms is None or callable(tfms) or isinstance(tfms, Callback) else tfms:
        if isinstance(t, Callback):  # (its before_batch would be called on the inputs)
            raise TypeError(f"tta takes transforms of the inputs (x -> x), and was given a {type(t).__name__}: "
                            "pass its transform, cb.tfm")
        check_transform(t, "tta")
    tfm = RandomFlip(p=1.0) if tfms is None else tfms if callable(tfms) else Compose(*tfms)
    with kept(learn, [dl], tfms=[tfm]):  # (a transform's own generator too: tta repeats)
        plain, plain_items = _GatherPreds(act=act, who="tta"), _ItemSums()
        prediction_pass(learn, dl, [plain_items, plain], who="tta")
        probs, targets = plain.result()
        if n == 0:
            return probs, targets
        if batch_parts(learn)[1] is None:  # (the plain pass's last batch, a dict) BatchTransformCB's advice, a
            # callback of one's own, is no way into tta
            raise TypeError(f"tta transforms the inputs of (inputs, targets, ...) batches for its augmented copies, "
                            f"and this loader's batches are {type(learn.batch).__name__}s (read by a predict and "
                            "get_loss of your own), with no inputs by position: tta(n=0) gives the plain "
                            "probabilities; for copies, transform learn.batch at before_batch in a callback of your "
                            "own and average learn.get_preds(act=torch.softmax, cbs=[YourTfmCB()])[0] with them, or "
                            "give the loader tuple batches (collate_dict, DataLoaders.from_dd)")
        if not (isinstance(probs, torch.Tensor) and probs.is_floating_point()):  # an average of labels is no label
            raise TypeError(f"tta averages act's outputs over the copies, and act gave "
                            f"{getattr(probs, 'dtype', type(probs).__name__)}: give it an act of float scores "
                            "(softmax, sigmoid) and take the argmax of tta's result")
        moving = geometric(tfm)  # a copy's pixels move: outputs that are maps over them move too
        xb = batch_parts(learn)[0]  # (the plain pass's last batch)
        x = xb[0] if xb else None
        full_size = isinstance(x, torch.Tensor) and x.ndim == 4 and probs.ndim in (3, 4) and \
            probs.shape[-2:] == x.shape[-2:]  # (N,K,H,W) maps of the inputs' size, or (N,H,W): a mask's or not
        undo = full_size and probs.ndim == 4 and len(moving) == 1 and type(moving[0]) is RandomFlip and \
            moving[0].p == 1.0  # (the one move tta puts back: a flip of every image, the default)
        if moving and full_size and not undo:
            raise ValueError(f"tta averages each item's outputs over its copies, and this model's outputs "
                             f"{tuple(probs.shape[1:])} have the inputs' height and width: maps over the pixels (or, "
                             f"3-dim, may be), which {type(moving[0]).__name__} moves, so a copy would be averaged "
                             "with pixels from elsewhere. tta flips back the default flip's copies of (N,K,H,W) "
                             "maps; for a flip of (N,H,W) ones, average learn.get_preds(act=...)[0] with the "
                             "get_preds of flipped inputs, flipped back; random crops and flips can't be undone")
        total = probs.clone()
        copy_tfm = BatchTransformCB(tfm, on_train=False, on_val=True, inputs=inputs)
        # after every callback that prepares the batches (a BatchTransformCB, -10, or one of yours, 0 by default);
        # autocast's entry is none: with BatchTransformCBs alone, the copy's transform runs before it, in float32
        copy_tfm.order = max([copy_tfm.order, *(cb.order for cb in participants(learn) if callable(
            getattr(cb, "before_batch", None)) and not isinstance(cb, MixedPrecisionCB))]) + 1
        for _ in range(n):
            aug, items = _GatherPreds(act=act, who="tta"), _ItemSums()
            try:
                prediction_pass(learn, dl, [items, copy_tfm, aug], who="tta")
            except ValueError as e:
                if tfms is None and "RandomFlip" in str(e):
                    raise ValueError(f"tta's default tfms, a horizontal flip, needs (N,C,H,W) image batches: {e} "
                                     "For other inputs pass tfms=... (a callable x -> x).") from e
                raise
            p, t = aug.result()
            p = p.flip(-1) if undo else p  # (the flip's copy, put back in place)
            if not (_same(t, targets) and _same(items.result(), plain_items.result())):
                raise ValueError("the loader gave its items in another order for an augmented copy than for the "
                                 "plain pass, or other items: tta needs the same items in the same order every pass "
                                 "(an unshuffled loader, and no random transforms in the dataset's __getitem__: pass "
                                 "them to tta as tfms)")
            total += p
    return total / (n + 1), targets


class _ItemSums(Callback):
    """Per-item sums, plain and weighted by position, of each batch's first input as the loader gave it (before
    DeviceCB and any transform): tta compares them between its passes, to know they walked the same items in one
    order (targets alone may be missing, or all equal)."""
    order = -100

    def __init__(self) -> None:
        self.sums: list[torch.Tensor] = []

    def before_batch(self, learn: Learner) -> None:
        x = learn.batch[0] if isinstance(learn.batch, (tuple, list)) and learn.batch else None
        if isinstance(x, torch.Tensor) and x.ndim:
            flat = x.detach().reshape(len(x), -1).float()
            at = torch.arange(1, flat.shape[1] + 1, dtype=flat.dtype, device=flat.device)  # (a flipped or shifted
            self.sums.append(torch.stack([flat.sum(1), flat @ at], 1))  # item keeps its sum, not its weighted one)

    def result(self) -> torch.Tensor | None:
        return torch.cat(self.sums) if self.sums else None


def _same(a: Any, b: Any) -> bool:
    """Whether two passes gave the same items: equal tensors (NaN equal to NaN), item by item in tuples and lists;
    anything else is not compared (True)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if a is None and b is None:
        return True
    kinds = (torch.Tensor, tuple, list)  # one of these against something else: not the same items
    return not (isinstance(a, kinds) or isinstance(b, kinds) or a is None or b is None)
