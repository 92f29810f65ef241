"""What `Learner.fit` checks before it runs a batch, and the errors it raises when data runs dry.

Each check turns a mistake that would otherwise train on silently (a negative epoch count, an empty loader, a
parameter no optimizer steps) into an error that says what was wrong and how to fix it. Kept apart from
learner.py so the loop reads top to bottom; this module imports no other miniai module when it is imported (a few
functions import what they need when they run: check_steps TrainLearner, call_model the cancels, fit_note the
checkpoint module). `call_model` is the steps' forward:
an error the model raises says what it was given; `all_params`, the tensors whose gradients a fit handles.
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import importlib.util
import inspect
import math
import numbers
import operator
import os
import re
import sys
import types
import warnings
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn, optim
from torch.utils.data import (BatchSampler, DistributedSampler, IterableDataset, RandomSampler, SequentialSampler,
                              Subset, SubsetRandomSampler, WeightedRandomSampler)

__all__ = ["MiniaiWarning", "warn", "add_note", "check_count", "check_number", "python_number", "call_model",
           "describe", "check_new_callback", "check_known_callback", "check_not_in_fit", "check_steps",
           "check_callback_names", "check_fit_args", "check_loaders", "drops_last", "check_new_params",
           "pass_loader", "check_pass_end", "listed", "batch_inputs", "batch_targets", "metrics_kept", "batch_items",
           "preds_changed_error", "misplaced_cancel_note", "fit_note",
           "fit_optimizer", "fit_done", "batch_raised", "tag_cancel", "cleanup_error", "follows_lr", "loss_backward"]


class MiniaiWarning(UserWarning):
    """What miniai warns of; `warnings.filterwarnings("ignore", category=MiniaiWarning)` silences them all."""


_progress = importlib.util.find_spec("fastprogress")  # (found, not imported: a quarter of a second)
# frames that are not the user's: miniai's; what runs its code (torch: hooks; contextlib: a `with` of ours ending;
# fastprogress: a progress bar drawing the batches)
_OURS = tuple(os.path.dirname(path) + os.sep for path in (__file__, torch.__file__, _progress and _progress.origin)
              if path) + (contextlib.__file__,)
_CLI = os.path.join(os.path.dirname(__file__), "__main__.py")  # (the command line's calls are its user's)


def warn(message: str) -> None:
    """A MiniaiWarning shown at the user's line: the first frame outside miniai (and what runs its code), not the
    loop's `handler(self)`, which says nothing of which call it is about, and shows a repeat of it never."""
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_OURS) and frame.f_code.co_filename != _CLI:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, MiniaiWarning, stacklevel=level)


def loss_backward(learn: Any, loss: Any = None) -> None:
    """`loss.backward()` (default: `learn.loss`); a loss without an autograd graph gets a note of where it was cut."""
    try:
        (learn.loss if loss is None else loss).backward()
    except RuntimeError as e:
        if isinstance(learn.loss, torch.Tensor) and not learn.loss.requires_grad:
            add_note(e, "(learn.loss has no autograd graph at backward: it, or learn.preds it was computed from, was "
                        "cut from the model on the way, e.g. by a callback setting learn.loss = learn.loss.detach() "
                        "(or .item()) at after_loss, or a detached learn.preds at after_predict. A callback that "
                        "changes them must keep the graph: learn.loss = learn.loss + penalty)")
        raise


def add_note(error: BaseException, note: str) -> None:
    """Attach `note` to `error`, shown under its traceback (Python < 3.11 has no notes: print it)."""
    error.add_note(note) if hasattr(error, "add_note") else print(note, file=sys.stderr)


def check_count(name: str, value: Any, least: int = 1, what: str = "", error: type[Exception] = ValueError) -> int:
    """Return `value` as an int if it is a whole number >= `least` (an int or a NumPy integer, never a bool, which
    Python counts as an int: `bs=True` would be a batch of 1); else raise `error` naming `name`, the bound and
    `what` it counts (e.g. " (images per batch)"). (A Python int: checkpoints' safe loader refuses NumPy's.)"""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise error(f"{name} must be a whole number >= {least}{what}, got {value!r}")
    return int(value)


def check_number(name: str, value: Any, least: float = 0.0, strict: bool = False, what: str = "") -> float:
    """Return `value` if it is a real number >= `least` (> it when `strict`; a one-number tensor or array too; inf
    passes, NaN, which compares false with everything, and bools never do); else a ValueError naming `name`, the
    bound and `what` it sets."""
    number = python_number(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Real) or not (
            number > least if strict else number >= least):
        raise ValueError(f"{name} must be a number {'>' if strict else '>='} {least:g}{what}, got {value!r}")
    return value


def call_model(learn: Any) -> Any:
    """`learn.model(*learn.xb)`; an error the model raises gets a note of what it was given (an `id` column before
    the images reaches the model, which fails deep inside with no word of its inputs)."""
    try:
        return learn.model(*learn.xb)
    except Exception as e:
        from .learner import _CANCELS  # (here: learner.py imports this module)
        if not isinstance(e, _CANCELS):  # (a hook's CancelBatchException, say, is no error)
            items = batch_items(learn.batch, learn.n_inp)
            add_note(e, f"(the model was called on the batch's first {learn.n_inp} item{'s' * (learn.n_inp > 1)} "
                        f"(n_inp={learn.n_inp}): [{', '.join(map(describe, items[:learn.n_inp]))}]; the batch's "
                        f"items are [{', '.join(map(describe, items))}])")
            params = next(iter(learn.model.parameters()), None)
            devices = sorted({str(x.device) for x in items[:learn.n_inp] if isinstance(x, torch.Tensor)})
            if "device" in str(e) and params is not None and devices and devices != [str(params.device)]:
                add_note(e, f"(the model's parameters are on {params.device}, the inputs on {', '.join(devices)}: "
                            "add DeviceCB() to the learner's callbacks, which moves each batch to the model's device)")
            if learn.training and "Expected more than 1 value per channel" in str(e) and (  # BatchNorm's, on a
                    isinstance(items[0], torch.Tensor) and items[0].ndim and len(items[0]) == 1):  # batch of 1 item
                add_note(e, f"(batch {learn.iter} of this training pass holds 1 item, and batch normalization can't "
                            "train on one: drop it (drop_last=True on the training loader) or choose a batch size "
                            "that leaves no 1 over)")
        raise


def describe(x: Any) -> str:
    """A tensor's shape and dtype (`shape (8, 1) float32`), or another object's type, for error messages."""
    if isinstance(x, torch.Tensor):
        return f"shape {tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"
    return type(x).__name__


def check_new_callback(cb: Any, cbs: Sequence[Any], base: type) -> None:
    """A callback given as its class, or not one (`base`, the learner's Callback), or already among `cbs` (it would
    run twice), is an error."""
    if not isinstance(cb, base):
        raise TypeError(f"{cb.__name__} is a class: pass an instance, {cb.__name__}()" if isinstance(cb, type) else
                        f"callbacks subclass miniai.learner.Callback; got a {type(cb).__name__}")
    order = cb.order
    if isinstance(order, bool) or not isinstance(order, numbers.Real) or order != order:  # (NaN sorts anywhere)
        raise TypeError(f"{type(cb).__name__}.order must be a number (callbacks run sorted by it, lower first; "
                        f"the built-in values are in miniai.callbacks), got {order!r}")
    if any(c is cb for c in cbs):
        raise ValueError(f"this {type(cb).__name__} is already one of the learner's callbacks (given to the "
                         "Learner, add_cb or fit's cbs): adding it again would run it twice. Pass it once.")


def check_known_callback(cb: Any, cbs: Sequence[Any]) -> None:
    """`rm_cb` of a callback not among `cbs` (compared by identity) is an error: it would remove nothing."""
    if all(c is not cb for c in cbs):
        raise ValueError(f"rm_cb: {cb!r} is not one of this learner's callbacks (compared by identity): pass the "
                         "instance added, e.g. learn.rm_cb(learn.cbs[0])")


def own_place(learn: Any, cb: Any) -> int | None:
    """`cb`'s index in `learn.cbs` when it is the learner's own (not given to the running fit only), for advice:
    a callback passed to the next fit would run beside it, not instead."""
    if any(cb is c for c in learn._temporary):
        return None
    return next((i for i, c in enumerate(learn.cbs) if c is cb), None)


def check_not_in_fit(learn: Any, call: str, why: str) -> None:
    """`learn.<call>` from a callback during a fit is an error: its changes would leak into the running fit."""
    if learn._in_fit or learn._predicting:  # (lr_find lifts _in_fit inside `kept`, which puts everything back)
        during = "a fit" if learn._in_fit else "a prediction pass (get_preds, tta, infer, summary)"
        raise RuntimeError(f"learn.{call} was called during {during} (from a callback): {why}. Call it before or "
                           "after; to change what a callback does mid-fit, give it a flag it checks.")


def check_steps(learn: Any, steps: Sequence[str], owners: dict[str, list]) -> None:
    """Each step is done by a callback that owns it or by the learner's own method, or fit can't run; and a step
    method a Learner subclass defines (of a TrainLearner subclass: overrides), a callback owning it, would never
    run."""
    missing = [s for s in steps if not owners[s] and not hasattr(learn, s)]
    if missing:
        raise TypeError(f"{type(learn).__name__} has no way to {', '.join(missing)}: add TrainCB() to cbs, "
                        "or use TrainLearner, which defines the steps itself.")
    _check_learner_names(learn, [e for e in owners if e not in steps])
    from .supervised import TrainLearner  # (imported here: it imports the learner, which imports this module)
    for s in steps:  # (miniai's TrainLearner's own steps are the defaults a callback may replace)
        default = getattr(TrainLearner, s) if isinstance(learn, TrainLearner) else None
        if owners[s] and getattr(type(learn), s, None) not in (None, default):
            owner, name = owners[s][0].__self__.__class__.__name__, type(learn).__name__
            raise TypeError(f"{name}.{s} would never run: {owner} owns the {s!r} step, and a step a callback owns "
                            f"replaces the learner's. Do what {name}.{s} adds in a callback event instead "
                            f"(after_backward, after_step...), or leave {owner} out"
                            + ("" if isinstance(learn, TrainLearner) else " (for the plain steps, the course's "
                               "TrainLearner's, use miniai's TrainLearner, whose steps callbacks may replace)") + ".")


# Other frameworks' training methods, which a Learner subclass ported with them would define and never have called
_FOREIGN_LEARNER = {
    "training_step": "PyTorch Lightning's: the loss is loss_func(preds, *targets), the learner's get_loss step: pass "
                     "loss_func (or override get_loss)",
    "validation_step": "PyTorch Lightning's: validation runs the same predict and get_loss steps with learn.training "
                       "False, and MetricsCB logs it",
    "configure_optimizers": "PyTorch Lightning's: each fit makes the optimizer with opt_func(params, lr): pass "
                            "opt_func",
    "train_step": "Keras': a training step is the learner's predict, get_loss, backward, step and zero_grad: "
                  "override those, or own them in a callback (owns_steps)",
    "compute_loss": "Keras': the loss is loss_func(preds, *targets): pass loss_func (or override get_loss)",
    "test_step": "Lightning's or Keras': evaluation is fit(n, train=False) or learn.get_preds(dl), through the same "
                 "predict and get_loss steps",
    "predict_step": "Lightning's or Keras': predictions come from learn.get_preds(dl), through the learner's predict "
                    "step"}


def _check_learner_names(learn: Any, events: Sequence[str]) -> None:
    """Refuse a Learner subclass's method named like an event (events are callbacks' methods) or like another
    framework's event or training method (training_step, configure_optimizers, ...): the loop never calls a method
    of that name, so a port's would be ignored without a word. One plain rule, as for callbacks: a helper of yours
    of such a name is refused too, and renaming it keeps it."""
    own = [k for k in type(learn).__mro__ if not k.__module__.startswith("miniai.") and k is not object]
    for k in own:
        for name, attr in vars(k).items():
            if not _is_method(attr):  # (a class attribute of data, a property: nothing the loop would call)
                continue
            if name in events:
                why = f"events are callbacks' methods: move it into a callback's method, def {name}(self, learn)"
            elif _foreign(name):
                meant = _FOREIGN_EVENTS.get(name)
                why = ("another framework's event; " + (f"here it is {meant}, " if meant else "") +
                       f"a callback's method: move it into a callback, def {meant or 'after_batch'}(self, learn)")
            elif name in _FOREIGN_LEARNER:
                why = _FOREIGN_LEARNER[name]
            else:
                continue
            cls = type(learn).__name__
            raise TypeError(f"{cls}.{name}: the loop never calls a method of this name: {why}. If it is a helper "
                            f"your own code calls, rename it (e.g. _{name}): names like this are kept off Learner "
                            "subclasses so that a ported one is never ignored without a word.")


def check_callback_names(cb: Any, events: Sequence[str], steps: Sequence[str], owners: dict[str, list]) -> None:
    """A misspelt event (or another framework's, fastai's by what it means here), a method named like a step the
    callback does not declare, a step that another callback (its handler already in `owners[step]`) owns, or an
    event or step method that can't take the learner is an error when the callback is added, not a silent change
    (or a TypeError from inside the loop)."""
    cls = type(cb).__name__
    for name in ("run_valid", "run_train"):  # (fastai's switches: here a callback's events run in both passes)
        if hasattr(cb, name):
            raise TypeError(f"{cls}.{name} is fastai's; miniai runs a callback's events in both passes: return early "
                            "in them from the pass that is not its own (if not learn.training: return, for training "
                            "only), or, for a batch transform, BatchTransformCB(tfm, on_train=..., on_val=...)")
    if isinstance(cb.owns_steps, str):  # ("backward") is a string: the letters would be checked as step names
        raise TypeError(f"{cls}.owns_steps is the string {cb.owns_steps!r}: make it a tuple of step names, "
                        f"owns_steps = ({cb.owns_steps!r},) (the comma makes the tuple)")
    plain = {event.replace("_", ""): event for event in events}  # (afterepoch, After_epoch, afterEpoch: misspelt)
    for name in dir(type(cb)):
        if name in _FASTAI_EVENTS:  # (close to an event of miniai's by spelling, not by what it means)
            raise TypeError(f"{cls}.{name} is fastai's name: here it is {_FASTAI_EVENTS[name]} (the events: "
                            f"{', '.join(events)}; a validation pass's are the same, with learn.training False).")
        if name.startswith(("before_", "after_", "cleanup_")) and name not in events:
            guess = difflib.get_close_matches(name, events, n=1)
            raise TypeError(f"{cls}.{name} is not an event"
                            + (f" (did you mean {guess[0]!r}?)" if guess else f"; events are {', '.join(events)}")
                            + ". Methods starting with before_/after_/cleanup_ are reserved for events.")
        meant = plain.get(name.lower().replace("_", ""))
        if meant and name != meant and not name.startswith("_") and inspect.isfunction(getattr(type(cb), name)):
            raise TypeError(f"{cls}.{name} is not an event, and would never be called: did you mean {meant!r}? "
                            f"(the events: {', '.join(events)})")  # (a helper _after_epoch, a class AfterEpoch: not)
        if _foreign(name) and _is_method(inspect.getattr_static(cb, name)):  # (a property is not run)
            guess = _FOREIGN_EVENTS.get(name)
            raise TypeError(f"{cls}.{name} is not a miniai event (another framework's name)"
                            + (f": did you mean {guess!r}?" if guess else ".") + " miniai calls only methods named "
                            f"after its events: {', '.join(events)} (a validation pass's are the same, with "
                            "learn.training False).")
        if name in steps and name not in cb.owns_steps and _defined_by_callback(type(cb), name):
            raise TypeError(f"{cls}.{name} is named like the learner's {name!r} step, which a callback may take "
                            f"over only on purpose: rename the method (e.g. '_{name}' or 'update') or, if {cls} is "
                            f"meant to do the learner's {name}, declare owns_steps = ('{name}',).")
    own = [k for k in type(cb).__mro__ if k.__module__ != "miniai.learner" and k is not object]  # (not Callback)
    for name in (*events, *cb.owns_steps):
        if any(name in vars(k) for k in own) or name in getattr(cb, "__dict__", {}):
            method = getattr(cb, name, None)  # (a property that raises: not called, as before)
            if callable(method) and not _takes_one(method):
                raise TypeError(f"{cls}.{name} can't take the learner: events call it as {name}(learn), so define it "
                                f"def {name}(self, learn)")
    for name in cb.owns_steps:
        if name not in steps or not callable(getattr(cb, name, None)):
            raise TypeError(f"{cls}.owns_steps lists {name!r}: steps are {', '.join(steps)}, and each one listed "
                            f"needs a method {name}(self, learn)")
        if owners[name]:
            raise TypeError(f"{cls} and {owners[name][0].__self__.__class__.__name__} both own the {name!r} step; "
                            "only one callback may do it (TrainCB owns all five: with a callback that owns some, "
                            "use TrainLearner, whose own steps do the rest)")


# fastai's events that a miniai event's spelling is close to, but means otherwise here
_FASTAI_EVENTS = {
    "before_train": "before_epoch, when learn.training", "after_train": "after_epoch, when learn.training",
    "before_validate": "before_epoch, when not learn.training",
    "after_validate": "after_epoch, when not learn.training", "after_pred": "after_predict",
    "before_backward": "after_loss", "before_step": "after_backward", "before_zero_grad": "after_step",
    **{f"after_cancel_{stage}": f"cleanup_{where}, where learn.stopped_by says what stopped it" for stage, where in
       (("batch", "batch"), ("pred", "batch"), ("loss", "batch"), ("backward", "batch"), ("step", "batch"),
        ("train", "epoch"), ("validate", "epoch"), ("epoch", "epoch"), ("fit", "fit"))},
}


def _takes_one(method: Any) -> bool:
    """Whether `method` (bound) can be called with one positional argument, the learner (or can't be read)."""
    try:
        inspect.signature(method, follow_wrapped=False).bind(None)  # (the wrapper is what the event calls)
    except TypeError:
        return False
    except ValueError:  # (a builtin without a signature: it gets its call)
        return True
    return True


def _foreign(name: str) -> bool:
    """Whether `name` is another framework's callback method (Keras, Lightning, fastai v1, Hugging Face, Catalyst):
    one of `_FOREIGN_EVENTS`, or `on_<stage>_begin/_start/_end` (a helper `on_end` or `on_before_save` is not)."""
    return name in _FOREIGN_EVENTS or re.fullmatch(r"on_[a-z]\w*_(begin|start|end)", name) is not None


def _is_method(attr: Any) -> bool:
    """Whether a callback's class attribute (read without running a property) is a method: a function, a
    staticmethod or classmethod, or another callable."""
    return callable(attr) or isinstance(attr, (staticmethod, classmethod))


# Other frameworks' callback method names, and the miniai event each means (None: no event of miniai's is it): a
# callback ported with them would be added and never called. (Validation and test passes are miniai's validation
# pass: the same events, with learn.training False.)
_FOREIGN_EVENTS: dict[str, str | None] = {
    # Keras
    "on_train_begin": "before_fit", "on_train_end": "after_fit", "on_epoch_begin": "before_epoch",
    "on_epoch_end": "after_epoch", "on_batch_begin": "before_batch", "on_batch_end": "after_batch",
    "on_train_batch_begin": "before_batch", "on_train_batch_end": "after_batch", "on_test_begin": "before_epoch",
    "on_test_end": "after_epoch", "on_test_batch_begin": "before_batch", "on_test_batch_end": "after_batch",
    "on_predict_begin": None, "on_predict_end": None, "on_predict_batch_begin": None, "on_predict_batch_end": None,
    # PyTorch Lightning
    "on_fit_start": "before_fit", "on_fit_end": "after_fit", "on_train_start": "before_fit",
    "on_train_epoch_start": "before_epoch", "on_train_epoch_end": "after_epoch", "on_train_batch_start": "before_batch",
    "on_validation_start": "before_epoch", "on_validation_end": "after_epoch",
    "on_validation_epoch_start": "before_epoch", "on_validation_epoch_end": "after_epoch",
    "on_validation_batch_start": "before_batch", "on_validation_batch_end": "after_batch",
    "on_test_start": "before_epoch", "on_test_epoch_start": "before_epoch", "on_test_epoch_end": "after_epoch",
    "on_test_batch_start": "before_batch", "on_predict_start": None, "on_predict_epoch_start": None,
    "on_predict_epoch_end": None, "on_predict_batch_start": None, "on_sanity_check_start": None,
    "on_sanity_check_end": None, "on_before_backward": "after_loss", "on_after_backward": "after_backward",
    "on_before_optimizer_step": "after_backward", "on_before_zero_grad": "after_step", "on_exception": "cleanup_fit",
    # fastai v1, and fastai's first names of its events
    "on_loss_begin": "after_predict", "on_backward_begin": "after_loss", "on_backward_end": "after_backward",
    "on_step_end": "after_step", "begin_fit": "before_fit", "begin_epoch": "before_epoch",
    "begin_batch": "before_batch",
    # older Lightning, Hugging Face's Trainer, Catalyst
    "on_epoch_start": "before_epoch", "on_batch_start": "before_batch", "on_train_epoch_begin": "before_epoch",
    "on_validation_batch_begin": "before_batch", "on_step_begin": "before_batch", "on_save_checkpoint": "state_dict",
    "on_load_checkpoint": "load_state_dict", "on_evaluate": "after_epoch", "on_log": "after_epoch",
    "on_save": None, "on_optimizer_step": "after_backward", "on_pre_optimizer_step": "after_backward",
    "on_prediction_step": None,
}


def _defined_by_callback(cls: type, name: str) -> bool:
    """Whether `name` is a method of the callback's own, not inherited from nn.Module (`zero_grad`, which a callback
    that is also a module, an EMA of the weights say, has without meaning the learner's step)."""
    owner = next(k for k in cls.__mro__ if name in vars(k))
    return callable(vars(owner)[name]) and owner is not nn.Module


def _skip_pass(name: str) -> str:
    """How to fit without the empty `dls.<name>` pass, for the errors that refuse one."""
    return "fit(train=False) to only validate." if name == "train" else "fit(valid=False) to train without validation."


def check_learner_args(loss_func: Any, opt_func: Any, n_inp: Any, model: Any = None) -> None:
    """A model or loss class where an instance belongs, or an optimizer where its factory belongs, fails later, deep
    in torch; an `n_inp` that is not a count of inputs splits batches wrongly (-1: (x, y) as inputs of a 3-item
    batch)."""
    check_count("n_inp", n_inp, what=" (how many of a batch's items are the model's inputs)", error=TypeError)
    if isinstance(model, type):
        raise TypeError(f"model is the class {model.__name__}: pass an instance, {model.__name__}(...)")
    # the optimizer takes its parameters, the loop sets its mode (None: a model assigned before the fit)
    if model is not None and not isinstance(model, nn.Module):
        if isinstance(model, (types.FunctionType, types.MethodType, functools.partial)):
            raise TypeError(f"model is a function ({getattr(model, '__name__', 'a partial')}), not a module: call it "
                            "to build the model, e.g. get_model(), and pass that")
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(loss_func, type):
        raise TypeError(f"loss_func is the class {loss_func.__name__}: pass an instance, {loss_func.__name__}(), or a "
                        "function such as F.cross_entropy")
    if loss_func is not None and not callable(loss_func):  # (None: an inference learner's, load_learner's)
        raise TypeError(f"loss_func must be a function or an nn loss (F.cross_entropy, nn.CrossEntropyLoss()); got "
                        f"{loss_func!r}")
    if isinstance(getattr(loss_func, "func", None), type):  # partial(nn.CrossEntropyLoss, label_smoothing=0.1)
        cls, kw = loss_func.func.__name__, ", ".join(f"{k}={v!r}" for k, v in loss_func.keywords.items())
        raise TypeError(f"loss_func is a partial of the class {cls}: pass an instance, {cls}({kw})")
    if "lr" in (getattr(opt_func, "keywords", None) or {}):  # fit passes the learner's lr too: two lrs
        lr = opt_func.keywords["lr"]
        raise TypeError(f"opt_func sets lr={lr} itself, and fit passes it the learner's lr: leave lr out of the "
                        f"partial and give lr={lr} to the learner (or to fit)")
    if isinstance(opt_func, optim.Optimizer):
        raise TypeError(f"opt_func is an optimizer already built ({type(opt_func).__name__}): fit builds a new one on "
                        "the model's parameters each time, so pass the class, e.g. optim.AdamW, or a partial of it, "
                        "functools.partial(optim.SGD, momentum=0.9)")


def python_number(value: Any, tensors: bool = True) -> Any:
    """A NumPy number, Fraction, Decimal or (with `tensors`) one-number tensor as a Python int or float; anything
    else as it is. Checkpoints' safe loader refuses NumPy scalars, and torch's steps the others; `tensors=False`
    keeps a tensor, which torch's optimizers take as an lr."""
    if getattr(value, "shape", None) == () and hasattr(value, "item") and (
            tensors or not isinstance(value, torch.Tensor)):
        return (value.detach() if isinstance(value, torch.Tensor) else value).item()  # (torch warns of a graph's)
    numeric = isinstance(value, numbers.Real) or type(value).__name__ == "Decimal"
    return float(value) if numeric and not isinstance(value, (int, float)) else value


def check_fit_args(learn: Any, n_epochs: Any, train: bool, valid: bool, fit_lr: Any,
                   resume: Any) -> tuple[int, Any, Any]:
    """Refuse what fit can't do well: a bad epoch count, no or a non-finite lr, training under inference_mode, and
    the learner's arguments once more (a loss class assigned since). Returns (the epoch count, fit's lr, the lr the
    optimizer is made with: fit's, else the learner's), NumPy numbers as Python ones."""
    for name, value in (("train", train), ("valid", valid)):  # (fastai's fit(n, lr) gives the lr as train)
        if not isinstance(value, bool):  # (a NumPy bool too: the loop repeats ("train",) train times)
            raise TypeError(f"fit's second argument is train (True or False: whether to train); got {value!r}: "
                            "give an lr by name, fit(n_epochs, lr=...)" if name == "train" else
                            f"fit's valid is True or False (whether to validate); got {value!r}")
    fit_lr = python_number(fit_lr, tensors=False)
    lr = python_number(learn.lr, tensors=False) if fit_lr is None else fit_lr
    if learn.model is None:
        raise TypeError("the learner has no model (None): set learn.model to an nn.Module first")
    check_learner_args(learn.loss_func, learn.opt_func, learn.n_inp, learn.model)
    if not (train or valid):  # only before_fit and after_fit would run: an evaluation that evaluates nothing
        raise ValueError("fit(train=False, valid=False) runs no pass, so nothing would be trained or evaluated: "
                         "leave one of them True")
    if train and torch.is_inference_mode_enabled():  # its tensors can never take part in a backward pass
        raise RuntimeError("fit can't train under torch.inference_mode(): call it outside that block")
    if not isinstance(n_epochs, numbers.Integral) or isinstance(n_epochs, bool) or n_epochs < 0:
        raise ValueError(f"n_epochs must be an int >= 0, got {n_epochs!r}")
    if fit_lr is not None and not train:  # (the optimizer an evaluation keeps, or makes, steps nothing)
        warn(f"fit(train=False, lr={fit_lr}): an evaluation trains nothing, so the lr is not used")
    if lr is None and train and resume is None:  # (an evaluation needs none; a checkpoint's optimizer brings its own)
        raise ValueError("No learning rate: pass lr= to the Learner or to fit(), e.g. learn.fit(3, lr=1e-2) (beside "
                         "a schedule that sets the lr itself, OneCycleLR say, its peak); learn.lr_find() suggests one.")
    if isinstance(lr, (str, bytes, bool)) or hasattr(lr, "suggestions"):  # (a string read from a config file,
        # lr_find's result; other types: opt_func's call)
        take = " (lr_find's result: take one of its suggestions, res.valley or res.steepest)" * hasattr(lr, "valley")
        raise TypeError(f"lr must be a number, got {lr!r} ({type(lr).__name__}){take}")
    if isinstance(lr, (list, tuple, slice)):  # (fastai's lr=slice(low, high), or one per group)
        raise TypeError(f"lr must be one number, got {lr!r}: for lrs per group, give opt_func param groups of their "
                        "own 'lr', opt_func=lambda ps, lr: AdamW([{'params': model[0].parameters(), 'lr': lr / 10}, "
                        "{'params': model[1].parameters()}], lr=lr): fit and the schedules keep each group's ratio to "
                        "the one lr")
    several = isinstance(lr, torch.Tensor) and lr.numel() != 1  # (a one-element tensor: torch's Adam takes it)
    if several or type(lr).__module__ == "numpy" and getattr(lr, "shape", ()) != ():  # (np.array([0.05]): torch's
        raise TypeError(f"lr must be one number, got an array of shape {tuple(lr.shape)}: pass float(lr[0])")  # step)
    value = float(lr) if isinstance(lr, torch.Tensor) else lr  # (a tensor lr is checked as the number it holds)
    if isinstance(value, float) and not math.isfinite(value):  # nan or inf would train to NaN weights
        raise ValueError(f"lr must be a finite number, got {value}")
    if value == 0 and train:  # (an evaluation changes no weights whatever its lr)
        warn("lr=0: the optimizer will not change the weights (schedulers scale it too)")
    elif train and isinstance(value, (int, float)) and abs(value) < torch.finfo(torch.float32).tiny:  # (1e-50: 0)
        warn(f"lr={value:g} is below float32's smallest normal number ({torch.finfo(torch.float32).tiny:.1e}): "
             f"the optimizer will not change float32 weights; did you mean another exponent?")
    # a tensor becomes the param groups' own lr, which torch's schedulers fill in place: never the caller's
    fit_lr, lr = (x.detach().clone() if isinstance(x, torch.Tensor) else x for x in (fit_lr, lr))
    return int(n_epochs), fit_lr, lr


def unbatched_error() -> ValueError:
    """The error for a batch whose target is a 0-dim tensor: a loader of single items (MetricsCB, get_preds)."""
    return ValueError("the target of this batch is a 0-dim tensor: the loader yields single items, not batches "
                      "(DataLoader(..., batch_size=None)?). Give it a batch_size")


def preds_changed_error(who: str, loss_func: Any) -> RuntimeError:
    """The error for a model output changed in place after the predict step, by the loss (`loss_func`) or a
    callback: `who` reads it after them (MetricsCB, get_preds), so it would see the changed values, not the model's."""
    name = getattr(loss_func, "__name__", type(loss_func).__name__)
    return RuntimeError(f"{who} reads the model's output (learn.preds) at the batch's end, and it was changed in "
                        f"place after the predict step, by the loss ({name}), a callback, or the optimizer's step (an "
                        f"output that is a view of a parameter: p.expand(n, -1)): {who} would report the changed "
                        "values, not the model's. Make the loss leave its input as it is: use the out-of-place op "
                        "(p.clamp(-1, 1), not p.clamp_(-1, 1); or p = p.clone() first), and let the model return a "
                        "tensor of its own (p.expand(n, -1).clone())")


def drops_last(dl: Any) -> bool:
    """Whether a loader drops its last items: its own drop_last, or, for a DataLoader given batch_sampler=
    BatchSampler(..., drop_last=True) (whose dl.drop_last is False), its batch sampler's."""
    return bool(getattr(dl, "drop_last", False) or getattr(getattr(dl, "batch_sampler", None), "drop_last", False))


def check_loaders(dls: Any, passes: tuple[str, ...]) -> None:
    """A missing or empty loader (of known length) is an error before any batch, not NaN metrics after."""
    train, valid = getattr(dls, "train", None), getattr(dls, "valid", None)
    if passes == ("train", "valid") and _same_data(train, valid):
        warn("dls.valid gives the same data as dls.train (the same loader, dataset or tensors): validation "
             "measures the training data, so its loss and metrics say nothing of how the model does on "
             "unseen data. Give DataLoaders a loader of held-out data as valid (get_dls(holdout=n) holds "
             "out training images)")
    elif passes == ("train", "valid") and (shared := _shared_items(train, valid)):
        warn(f"dls.valid reads {shared[0]} of its {shared[1]} items from those dls.train trains on (one "
             "dataset, or one tensor, split in parts that overlap): its loss and metrics measure training "
             "data in part. Give the two loaders parts that don't overlap (get_dls(holdout=n) holds out "
             "training images)")
    for name in passes:
        dl = getattr(dls, name, None)
        if dl is None:
            raise ValueError(f"dls has no {name} loader: give the learner DataLoaders(train_dl, valid_dl) "
                             "(miniai.data), or pass " + _skip_pass(name))
        if isinstance(dl, torch.utils.data.Dataset) and not isinstance(dl, torch.utils.data.IterableDataset):
            # (iterated, it gives its items one by one: a model and a loss that take one item train on them)
            raise TypeError(f"dls.{name} is a {type(dl).__name__}, which gives one item at a time, not batches: "
                            "wrap it in a loader, DataLoader(dataset, batch_size=64, shuffle=True) for training "
                            "(miniai.data's TensorLoader for tensors); one whose items are whole batches already, "
                            "DataLoader(dataset, batch_size=None)")
        if name == "valid" and drops_last(dl):  # metrics over part of the set, without a word
            raise ValueError("dls.valid drops its last items (drop_last=True): the validation metrics would leave "
                             "them out. Build the validation loader without drop_last (it only matters for training)")
        try:
            if len(dl):
                continue
        except TypeError:  # no length (an IterableDataset): an empty pass is caught when it happens
            continue
        n = len(dl.dataset) if hasattr(getattr(dl, "dataset", None), "__len__") else None
        bs = getattr(dl, "batch_size", getattr(dl, "bs", "?"))
        why = ("its dataset is empty" if n == 0 else "it yields nothing" if n is None else
               f"{n} items with bs={bs} and drop_last=True make no full batch")
        raise ValueError(f"dls.{name} has no batches: {why}. Check how it was built (a filter, n_train, a wrong "
                         "path), or pass " + _skip_pass(name))


def _same_data(train: Any, valid: Any) -> bool:
    """Whether two loaders read the same data: one loader; one dataset neither reads a part of (a split by
    samplers: SubsetRandomSampler, indices of one's own); or the same tensors, targets too (a TensorDataset's, a
    TensorLoader's)."""
    if train is None or valid is None or train is valid:
        return train is not None and train is valid
    (dataset, items), (other, other_items) = _reads(train), _reads(valid)
    if dataset is not None and dataset is other:
        return items is not None and items == other_items
    a, b = _tensors(train), _tensors(valid)
    # the same tensors, or copies (a test split that is a copy of the training files), read alike (all of them, or
    # the same indices: not a k-fold's parts of each); compared only where every pair has one shape and dtype,
    # which held-out data seldom has
    parts = ["all" if isinstance(getattr(dl, "x", None), torch.Tensor) else _items(dl) for dl in (train, valid)]
    return bool(a) and len(a) == len(b) and parts[0] is not None and parts[0] == parts[1] and all(
        isinstance(t, torch.Tensor) and isinstance(u, torch.Tensor) and t.numel() > 0
        and t.layout == u.layout == torch.strided  # (a sparse tensor has no data pointer)
        and (t.shape, t.dtype, t.device) == (u.shape, u.dtype, u.device) for t, u in zip(a, b)) and all(
        (t.data_ptr(), t.stride()) == (u.data_ptr(), u.stride()) or torch.equal(t, u) for t, u in zip(a, b))


def _items(dl: Any) -> str | set[int] | None:
    """The items of its dataset a torch DataLoader reads each pass: "all", a set of indices (a SubsetRandomSampler's,
    or a range, list, array or tensor given as sampler), or None: unknown (a sampler of one's own, which is never
    iterated here: that would draw from the RNGs the training order comes from)."""
    if _reads_whole(dl):
        return "all"
    batches = getattr(dl, "batch_sampler", None)
    if batches is not None and not isinstance(batches, BatchSampler):
        return None
    sampler = batches.sampler if isinstance(batches, BatchSampler) else getattr(dl, "sampler", None)
    indices = _index_list(sampler.indices if isinstance(sampler, SubsetRandomSampler) else sampler)
    return None if indices is None else set(indices)


def _index_list(indices: Any) -> list[int] | None:
    """Indices as a list of ints (a range, list, tuple, array or tensor of integers, one per item); None for keys
    of another kind (names, tuples), anything else, or more than a million (a second a fit)."""
    if not hasattr(indices, "__len__") or len(indices) > _MAX_INDICES:
        return None
    if isinstance(indices, torch.Tensor):
        return indices.tolist() if indices.ndim == 1 and not indices.is_floating_point() else None
    if type(indices).__name__ == "ndarray":
        return indices.tolist() if indices.ndim == 1 and indices.dtype.kind in "iu" else None
    if isinstance(indices, (range, list, tuple)):
        try:  # ints, NumPy's, one-number integer tensors (list(randperm(n)))
            return list(map(operator.index, indices))
        except TypeError:
            return None
    return None


def _reads(dl: Any) -> tuple[Any, str | set[int] | None]:
    """(the dataset a loader's items come from, past any `Subset` (random_split's), and which of its items it
    reads: as `_items`)."""
    dataset, items = getattr(dl, "dataset", None), _items(dl)
    while isinstance(dataset, Subset) and items is not None:
        parent = _index_list(dataset.indices)
        if parent is None:
            break
        size = len(dataset.dataset) if hasattr(dataset.dataset, "__len__") else None
        parent = [i % size for i in parent] if size else parent  # (negative indices count from the end)
        items = set(parent) if items == "all" else {parent[i] for i in items if -len(parent) <= i < len(parent)}
        dataset = dataset.dataset
    return dataset, items


_MAX_INDICES = 1_000_000  # index lists longer than this go unchecked


def _tensors(dl: Any) -> list:
    """The tensors a TensorLoader or a DataLoader of a TensorDataset reads its items from; [] for other loaders."""
    if isinstance(getattr(dl, "x", None), torch.Tensor):  # a TensorLoader
        return [dl.x, dl.y]
    return list(getattr(getattr(dl, "dataset", None), "tensors", ()))


def _first_rows(dl: Any) -> tuple[tuple, int, int] | None:
    """For a loader reading whole tensors, its inputs' ((memory, row size, dtype), first row, rows) in that memory:
    slices `x[a:b]` of one tensor say which rows two loaders share. None for anything else (other loaders, a
    sampler's part, a strided view)."""
    if not isinstance(getattr(dl, "x", None), torch.Tensor) and not _reads_whole(dl):
        return None
    t = next(iter(_tensors(dl)), None)
    if not isinstance(t, torch.Tensor) or t.layout != torch.strided or not t.ndim or not len(t):
        return None
    row = t[0].numel()  # (rows one after another, each dense: contiguous, also channels-last images)
    dense = t.is_contiguous() or t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last)
    if not row or not dense or t.stride(0) != row or t.storage_offset() % row:
        return None
    return (t.untyped_storage().data_ptr(), row, t.dtype), t.storage_offset() // row, len(t)


def _same_rows(t: Any, u: Any) -> bool:
    """Whether two tensors hold the same values (NaN equal to NaN, whatever their dtypes), as targets of rows."""
    if not (isinstance(t, torch.Tensor) and isinstance(u, torch.Tensor)) or t.shape != u.shape or t.device != u.device:
        return False
    if t.dtype != u.dtype:
        t, u = t.double(), u.double()
    return torch.allclose(t, u, rtol=0, atol=0, equal_nan=True) if t.is_floating_point() else torch.equal(t, u)


def _shared_items(train: Any, valid: Any) -> tuple[int, int] | None:
    """(how many of valid's items train reads too, valid's items) for two loaders over one dataset, or over slices
    of the same tensors, that share some but not all; None when they share none, read different data, or one's
    items are unknown."""
    a, b = _first_rows(train), _first_rows(valid)
    if a and b and a[0] == b[0]:  # inputs that are rows of one tensor: those both read, with the same targets
        first, end = max(a[1], b[1]), min(a[1] + a[2], b[1] + b[2])
        ours, theirs = _tensors(train)[1:], _tensors(valid)[1:]
        same = end > first and len(ours) == len(theirs) and all(
            _same_rows(t[first - a[1]:end - a[1]], u[first - b[1]:end - b[1]]) for t, u in zip(ours, theirs))
        return (end - first, b[2]) if same else None
    (dataset, a), (other, b) = _reads(train), _reads(valid)
    if dataset is None or dataset is not other or a is None or b is None or a == b:
        return None
    try:
        if b == "all" and len(dataset) > _MAX_INDICES:
            return None
        b = set(range(len(dataset))) if b == "all" else b
    except TypeError:  # (an IterableDataset read whole by one loader, and by indices by the other: can't be)
        return None
    shared = len(b) if a == "all" else len(a & b)
    return (shared, len(b)) if shared else None


def _reads_whole(dl: Any) -> bool:
    """Whether a torch DataLoader reads all of its dataset each pass: torch's samplers of a whole dataset (in order,
    shuffled, weighted, distributed), also inside a BatchSampler. Indices of one's own (a SubsetRandomSampler, a
    list, an array, a Sampler class of one's own) are taken for a part of it."""
    if isinstance(getattr(dl, "dataset", None), IterableDataset):  # (no sampler: the loader reads what it yields)
        return True
    batches = getattr(dl, "batch_sampler", None)
    sampler = batches.sampler if isinstance(batches, BatchSampler) else getattr(dl, "sampler", None)
    if batches is not None and not isinstance(batches, BatchSampler):
        return False
    return isinstance(sampler, (SequentialSampler, RandomSampler, WeightedRandomSampler, DistributedSampler))


def fit_optimizer(learn: Any, lr: Any, given: bool, resuming: bool) -> Any:
    """Make `learn.opt`, the optimizer a fit trains with (`learn.fit_lr`: its lr), and clear the gradients as a hand
    loop's first zero_grad would. It is `learn.opt_func`'s for `lr`, a new one each fit. Refused: one an earlier fit
    trained, handed back again (`opt_func=lambda ps, lr: opt`), which would start from its state and from where that
    fit's schedule left its lr (a cosine: 0), unless this fit resumes (the checkpoint brings all of it); and an lr
    `given` to fit, or to the Learner for a fit that trains, that opt_func does not use (the same lrs for 2 × lr,
    none of them lr), unless a callback of this fit sets the lrs from it (fit_one_cycle, lr_find)."""
    lr = 0.0 if lr is None else lr  # (a tensor: check_fit_args' copy, the groups' own)
    learn.fit_lr = float(lr) if isinstance(lr, torch.Tensor) else lr
    # (what the last fit left; a learner pickled before this record that trained: its optimizer is a fit's)
    last = getattr(learn, "_fit_opt", learn.opt if learn._epochs_trained else None)
    if learn.opt is not None and learn.opt is not last:
        warn(f"learn.opt was set by hand ({type(learn.opt).__name__}), and each fit makes its optimizer with opt_func "
             "(its own state, its lr from the fit), so this fit trains with a new one, not yours. Give the learner "
             "the optimizer's kind instead: opt_func=partial(optim.Adam, weight_decay=...) (learn.opt_func = ...)")
    params = list(learn.model.parameters())
    takes_lr = any(getattr(cb, "peaks_at_fit_lr", False) for cb in learn.cbs)
    # (0.1 is the Learner's default, which can't be told from one given: only another lr is the user's)
    by_learner = not given and not resuming and "train" in learn.passes and learn.lr is not None and learn.lr != 0.1
    given = given or by_learner
    probe = given and lr and not takes_lr
    first = other = None  # (first: the optimizer fit keeps is opt_func's last, for one that keeps a handle on it)
    for other in (2 * float(lr), float(lr) / 2) if probe else (lr,):  # (another lr: does opt_func use lr?)
        try:
            first = learn.opt_func(params, other)
            break
        except Exception:  # noqa: BLE001 -- it refused our probe's lr (a bound): the other; its own error comes
            if not probe:  # next, with lr's number
                raise
    probe = probe and first is not None
    opt = learn.opt_func(params, lr)
    groups = [getattr(o, "param_groups", ()) for o in (first, opt)]
    if first is not None and first is not opt and any(g is h for g in groups[0] for h in groups[1]):
        raise ValueError("opt_func builds its optimizers from param groups made once, outside it (groups = [...]; "
                         "opt_func=lambda ps, lr: optim.AdamW(groups, lr=lr)): torch keeps those dicts and writes into "
                         "them (the lr, a schedule's initial_lr), so every optimizer after the first (lr_find's, the "
                         "next fit's) would start at the lr the last one left, not at the lr it is given. Build the "
                         "groups inside opt_func, e.g. def opt_func(ps, lr): return optim.AdamW([{'params': [p for p "
                         "in ps if p.ndim > 1]}, {'params': [p for p in ps if p.ndim <= 1], 'weight_decay': 0.0}], "
                         "lr=lr)")
    doubled = _lrs(first) if probe else None
    if getattr(opt, "_miniai_trained", False) and not resuming:
        raise ValueError("opt_func handed back an optimizer an earlier fit trained (opt_func=lambda ps, lr: opt): "
                         "each fit (lr_find's too) makes a new one, so that it starts at the lr it is given, with no "
                         "state of another run; that one would start where the last fit's schedule left its lr (0 "
                         "after a cosine) and its momentum. Let opt_func build one from what it is given, e.g. "
                         "opt_func=lambda ps, lr: optim.SGD(ps, lr=lr, momentum=0.9); to go on from where a run "
                         "stopped, save it with CheckpointCB and fit(n, resume=...)")
    made = _lrs(opt)
    if doubled is not None and doubled == made and all(x is None or not math.isclose(x, float(lr)) for x in made):
        raise ValueError(f"{type(learn).__name__ if by_learner else 'fit'}(lr={float(lr):g}): opt_func does not use "
                         f"the lr it is given (it makes lr {', '.join(f'{x:g}' for x in made)} for {float(lr):g} and "
                         f"for {other:g}), so this lr would not be used: let opt_func pass it on, e.g. "
                         "opt_func=lambda ps, lr: optim.SGD(ps, lr=lr), or leave lr= out to train at opt_func's lr")
    _one_step_a_batch(learn, opt)  # (and again at set-up, on whatever learn.opt is then: check_new_params)
    learn.opt = learn._fit_opt = opt  # (_fit_opt now, not at the fit's end: the last fit's must not live through this)
    learn._params_at_opt = {id(p) for p in learn.model.parameters()}  # (opt_func may leave some out on purpose)
    for p in all_params(learn.model, opt) if "train" in learn.passes else ():  # none of a batch that raised or was
        if not (learn.keeps_grads and learn._epochs_trained and p.requires_grad):  # cancelled, of left-out or frozen
            p.grad = None  # parameters (MomentumLearner keeps its momentum in .grad)
    return opt


def _one_step_a_batch(learn: Any, opt: Any) -> None:
    """In a training batch, learn.opt is stepped by the batch's step alone (its owner's method, or the learner's,
    as often as it means to): a step from a callback's event (Lightning's manual optimization beside the learner's
    step: two steps a batch) is refused before it is applied, unless the batch's step did not run (after a
    CancelStepException: gradient accumulation in after_batch); and so is a fit's first step with no gradient at
    all (cleared at after_backward: it trained nothing). Steps between batches are the user's (experience replay)."""
    if not hasattr(opt, "register_step_pre_hook"):
        return  # (an optimizer of one's own, not torch's: no hooks)
    hooks = getattr(opt, "_miniai_one_step", {})  # one per learner (a learner fitting inside another's fit)
    for key, (ref, handle) in list(hooks.items()):
        if ref() is None or ref() is learn:  # (this learner's last fit, resumed with its optimizer: replaced)
            handle.remove()
            del hooks[key]
    # (a weak one: the optimizer must not keep its learner alive; stepped: the batch whose own step stepped last)
    learner, first, stepped = weakref.ref(learn), [True], [None]

    def check(opt: Any, args: Any, kwargs: Any) -> None:
        learn = learner()
        if learn is None or not (learn._in_fit and learn.training):
            return  # outside a fit's training pass: by hand, not the loop's business
        where = _loop_position(learn)
        if isinstance(where, tuple):  # (after_batch, cleanup_batch: allowed where the batch's step stepped nothing)
            where = None if stepped[0] != (learn.epoch, learn.iter) and not learn.stepped else where[0]
        if where not in (None, "step"):
            owner = learn._handlers["step"]
            owner = type(owner[0].__self__).__name__ if owner else type(learn).__name__
            raise RuntimeError(
                f"learn.opt.step() was called from {where} in training batch {learn.iter} of epoch {learn.epoch}, "
                f"and refused before it changed the weights: in a batch the optimizer is stepped by the batch's step "
                f"alone ({owner}'s), and a step besides it would make every batch take two (twice the lr in SGD, "
                "Adam's moments updated twice). To do the step in a callback of yours, declare it: owns_steps = "
                "('step',) with a method step(self, learn), which replaces the learner's and may step as often as "
                "it means to; steps between batches (after_epoch), and in after_batch when a CancelStepException "
                "skipped the batch's step (gradient accumulation), are allowed")
        # (torch's args: the optimizer, then step's own; LBFGS's closure makes the gradients inside its step)
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        if where == "step" and first[0] and closure is None and all(
                p.grad is None for g in opt.param_groups for p in g["params"]):
            raise RuntimeError(  # (at the fit's first step only: a loop over the parameters)
                f"learn.opt.step() found no gradient in any parameter it trains at the fit's first step (training "
                f"batch {learn.iter} of epoch {learn.epoch}), so it would change nothing, and every step after it "
                "the same: gradients cleared between the backward and the step (learn.opt.zero_grad() or "
                "model.zero_grad() in a callback's after_backward?). Clear gradients after the step (after_step), "
                "as the learner's own zero_grad does")
        first[0] = first[0] and where != "step"
        stepped[0] = (learn.epoch, learn.iter) if where == "step" else stepped[0]

    with contextlib.suppress(AttributeError):  # (an optimizer with __slots__: not watched)
        hooks[id(learn)] = learner, opt.register_step_pre_hook(check)
        opt._miniai_one_step = hooks


def _loop_position(learn: Any) -> str | tuple[str] | None:
    """Which part of a training batch of `learn`'s runs the code calling this: 'step' (the batch's step, or a
    Learner subclass's own _one_batch), a callback event's or another step's name ((name,) for after_batch and
    cleanup_batch), or None: no batch (between batches, before or after the fit). Read off this thread's stack,
    else off the thread running the loop (a callback may step on a thread of its own)."""
    here = _position(sys._getframe(2), learn)
    if here != "":
        return here
    found = [_position(frame, learn) for frame in sys._current_frames().values()]
    return next((where for where in found if where not in ("", None, "step")), None)


@functools.cache
def _loop_codes() -> dict[Any, str]:
    """The code of the loop's own methods (not a subclass's override) that say where in a batch it is."""
    from .learner import Learner  # (imported here: it imports this module)
    return {Learner._do.__code__: "_do", Learner._emit.__code__: "_emit", Learner._stage.__code__: "_stage"}


def _position(frame: Any, learn: Any) -> str | tuple[str] | None:
    """`_loop_position` for one stack: '' when none of the loop's own frames is on it; (name,) for a step from
    after_batch or cleanup_batch, which the batch's step may have left undone."""
    start, codes = frame, _loop_codes()
    while frame is not None:
        method = codes.get(frame.f_code)
        if method is not None and frame.f_locals.get("self") is learn:
            local = frame.f_locals
            if method == "_do":
                return "step" if local["step"] == "step" else f"the learner's {local['step']!r} step"
            event = local["event"] if method == "_emit" else "cleanup_batch" if "handler" in local else None
            if method == "_stage" and local["name"] != "batch" or event is not None and event not in _BATCH_EVENTS:
                return None
            if event is not None:
                name = _handler_name(local["handler"], event)
                return (name,) if event in ("after_batch", "cleanup_batch") else name
            # the batch's body: a Learner subclass's own _one_batch stepping, unless a callback of its called it
            caller = _callback_on(start, frame, learn)
            return "step" if caller is None else f"{type(caller).__name__} (called by {type(learn).__name__}'s batch)"
        frame = frame.f_back
    return ""


def _callback_on(frame: Any, stop: Any, learn: Any) -> Any:
    """The first of `learn`'s callbacks that a frame between `frame` and `stop` runs an event method of, or None
    (a helper of a callback's that the subclass's own batch calls is its business)."""
    cbs = {id(cb) for cb in learn.cbs}
    while frame is not None and frame is not stop:
        if frame.f_code.co_name in _BATCH_EVENTS and id(frame.f_locals.get("self")) in cbs:
            return frame.f_locals["self"]
        frame = frame.f_back
    return None


def _handler_name(handler: Any, event: str) -> str:
    """'StepsToo.after_step': the callback class of an event's handler (a bound method), and the event."""
    return f"{type(getattr(handler, '__self__', handler)).__name__}.{event}"


_BATCH_EVENTS = ("before_batch", "after_predict", "after_loss", "after_backward", "after_step", "after_batch",
                 "cleanup_batch")


def fit_done(learn: Any, temporary: list) -> None:
    """Hand the learner back as the next fit wants it: without the `temporary` callbacks of this call or the last
    batch's graph (nothing needs it, and a copy of the learner fails on it); refused at its start (an error or a
    cancel at before_fit, nothing to train), with its optimizer of before; after one that trained, with a note that
    its optimizer was, which fit_optimizer refuses if opt_func hands it back again; and with no traceback on a
    cancel it caught (`stopped_by`), which would keep its frames, and its callers' with all their locals, alive."""
    if not learn._set_up:
        learn.opt, learn.fit_lr, learn._fit_opt = learn._kept
    learn._kept = None
    if learn._set_up and "train" in learn.passes and learn.opt is not None:
        learn._fit_opt = learn.opt  # (the one it ended with: a callback may have wrapped it at before_fit, SAM's)
        with contextlib.suppress(AttributeError):  # (an optimizer of one's own with __slots__: not noted)
            learn.opt._miniai_trained = True
    stopped = learn.stopped_by
    if stopped is not None and stopped is not sys.exc_info()[1]:  # (the error on its way up: the user's to see)
        stopped.__traceback__ = None
    for cb in temporary:
        learn.rm_cb(cb)
    from .utils import drop_graph  # (imported here: the loop imports its checks and conveniences alone)
    drop_graph(learn)


def batch_raised(learn: Any, error: BaseException) -> None:
    """A training batch raised after its loss: unless it only skips to the next batch or pass, a learner that
    `keeps_grads` (momentum in .grad, MomentumLearner) drops them, or the next fit would start from this batch's."""
    from .learner import CancelBatchException, CancelEpochException  # (here: learner.py imports this module)
    if learn.keeps_grads and not isinstance(error, (CancelBatchException, CancelEpochException)):
        for p in all_params(learn.model, learn.opt):
            p.grad = None


def tag_cancel(error: BaseException, event: str, raised_by: Any = None) -> None:
    """Note on a cancel the first event it was raised in and the callback that raised it (fit's note, CheckpointCB);
    a cancel raised again keeps its first."""
    if not hasattr(error, "event"):
        error.event, error.raised_by = event, raised_by


def cleanup_error(learn: Any, error: BaseException | None, new: BaseException, stage: str, handler: Any) -> Any:
    """Which of the stage's `error` (None: it ran out, or a cancel it caught) and a cleanup's `new` one goes on up:
    the first, with the later one in a note; but a cancel on its way up to an outer stage yields to a cleanup's error
    or CancelFitException, and Ctrl-C stops the fit even after an error (printed above it, as Python does)."""
    from .learner import _CANCELS, CancelEpochException, CancelFitException  # (here: learner.py imports this module)
    outer = {"batch": (CancelEpochException, CancelFitException), "epoch": (CancelFitException,), "fit": ()}[stage]
    if isinstance(new, _CANCELS):
        tag_cancel(new, f"cleanup_{stage}")  # (fit's note says where it was raised)
    ctrl_c = isinstance(new, KeyboardInterrupt) and isinstance(error, Exception)
    if error is None or ctrl_c or isinstance(error, outer) and (
            not isinstance(new, _CANCELS) or isinstance(new, CancelFitException)):
        if ctrl_c:
            new.__context__ = error
        if not isinstance(new, _CANCELS):  # later cleanups see it: CheckpointCB saves no epoch a cleanup found broken
            learn.stopped_by = new
        return new
    name = getattr(handler, "__qualname__", None) or repr(handler)  # (a handler may be any callable: a partial)
    add_note(error, f"(while cleaning up, {name} also raised {type(new).__name__}: {new})")
    return error


def _lrs(opt: Any) -> list[float | None] | None:
    """Each param group's lr as a number (None where a group has none: Adafactor's relative steps)."""
    if not hasattr(opt, "param_groups"):
        return None
    return [None if group.get("lr") is None else float(group["lr"]) for group in opt.param_groups]


def follows_lr(opt_func: Any, params: list, lr: float, made: list[float]) -> bool:
    """Whether opt_func takes its lrs from the lr: it makes other ones for 2 × `lr` than `made` (for `lr`)."""
    return made != _lrs(opt_func(params, 2 * float(lr)))


def check_new_params(learn: Any) -> None:
    """Refuse a training fit that would leave parameters a callback's before_fit added after the optimizer was made
    without a step, or that would change nothing: an optimizer of nothing trainable (an all-frozen model), or of
    other parameters than the model's (an earlier model's; `raw`: the one SWACB swapped out). Tensors outside the
    model (an input perturbation) are the optimizer's to train. Whatever learn.opt holds now (a callback's
    before_fit may have put its own there) gets the one-step rule. An evaluation: nothing to check."""
    if "train" not in learn.passes:
        return
    model, opt, params_at_opt, raw = learn.model, learn.opt, learn._params_at_opt, getattr(learn, "raw_model", None)
    _one_step_a_batch(learn, opt)  # (the fit's own, again: its hook replaced by a fresh one)
    if not hasattr(opt, "param_groups"):  # an optimizer of one's own (the course's SGD class): no groups to read
        return
    held = [p for group in opt.param_groups for p in group["params"]]
    in_opt = {id(p) for p in held}
    if raw is not None and raw is not model:  # SWACB put its averaged copy in learn.model, the trained one in raw
        own = {id(p) for p in model.parameters()}
        if any(id(p) not in own for p in raw.parameters() if id(p) in in_opt):
            raise RuntimeError("the optimizer holds parameters of learn.raw_model, the model SWACB trained before it "
                               "put the averaged copy in learn.model, so this fit would train that one, not "
                               "learn.model: build opt_func's param groups from the parameters fit passes it, "
                               "opt_func(params, lr), or from learn.model's layers, not from lists made before (to "
                               "train the raw model on: learn.model = learn.raw_model)")
    new = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in in_opt
           and id(p) not in params_at_opt]  # (opt_func may leave some out on purpose: those were there before)
    if new:
        raise RuntimeError(f"a callback's before_fit gave the model parameters not in the optimizer, which was "
                           f"made before it ({', '.join(new[:5])}): change the model before fit, so fit's "
                           "optimizer includes them")
    if not any(p.requires_grad for p in held):  # (torch's own error comes at the first backward, naming nothing)
        raise RuntimeError("nothing the optimizer holds requires grad (the model's parameters are all frozen?), so "
                           "there is nothing to train: unfreeze some (model.requires_grad_(True), or a layer's), or "
                           "evaluate with fit(n, train=False)")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if trainable and not any(id(p) in in_opt for p in trainable) and all(isinstance(p, nn.Parameter) for p in held):
        raise RuntimeError(f"the optimizer holds none of the model's {len(trainable)} trainable parameters, but "
                           "other parameters, so the model would not train: opt_func built it on another model's "
                           "(an earlier one, after a notebook cell was run again?). Build it on the parameters fit "
                           "passes it: opt_func(params, lr). To train parameters of your own alone (a temperature), "
                           "freeze the model first: model.requires_grad_(False)")


def pass_loader(learn: Any) -> Any:
    """The loader the pass walks: `learn.dl` as before_epoch left it (noted, for `check_pass_end`)."""
    learn._pass_dl = learn.dl
    return learn.dl


def check_pass_end(learn: Any) -> None:
    """Refuse a pass whose `learn.dl` was replaced during it (the loop walked the loader before_epoch left, while
    later readers saw the other), and one that yielded no batches (it would log NaN metrics and feed them to
    schedulers)."""
    if learn.dl is not learn._pass_dl:
        raise ValueError("learn.dl was replaced during the pass (at before_batch?), but the loop walks the loader "
                         "learn.dl was when the pass began: set it at before_epoch")
    if learn.iter is not None:
        return
    name = "train" if learn.training else "valid"
    once = (" It is an iterator (a generator?), which can be walked only once: give a list of batches or a "
            "DataLoader." if isinstance(learn.dl, Iterator) else "")
    raise ValueError(f"dls.{name} yielded no batches in epoch {learn.epoch}.{once} Check how it was built, or pass "
                     + _skip_pass(name))


def misplaced_cancel_note(error: Exception, step: bool) -> str:
    """The note for a cancel that no stage caught: it was raised outside the stage it cancels (`step`: it is a
    CancelStepException, which may be raised only after the backward)."""
    where = (" CancelStepException may be raised in after_backward or after_step; before the backward, "
             "CancelBatchException skips the batch." if step else "")
    return (f"{type(error).__name__} was raised in {getattr(error, 'event', 'a step')}, outside the stage it "
            f"cancels: see the cancel table in miniai/learner.py for where each one may be raised.{where}")


def all_params(model: torch.nn.Module, opt: Any = None) -> list[torch.Tensor]:
    """The model's parameters, then the other tensors the optimizer trains (a temperature beside the model), each
    once: whatever sums, scales or drops gradients in `.grad` must treat those as the model's."""
    params = list(model.parameters())
    seen = {id(p) for p in params}
    for group in getattr(opt, "param_groups", ()):  # (an optimizer of one's own may have none)
        for p in group["params"]:
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def beside_model(model: nn.Module, opt: Any) -> list[torch.Tensor]:
    """The tensors `opt` trains that are not `model`'s parameters (a temperature), in the optimizer's order."""
    return all_params(model, opt)[len(list(model.parameters())):]


def listed(cbs: Any, base: type) -> list:
    """`cbs` as a list: one callback alone (an instance of `base`; the course's `cbs=DeviceCB()`) is a list of one."""
    return [cbs] if isinstance(cbs, base) else list(cbs or [])


def batch_inputs(learn: Any) -> tuple:
    """The batch's inputs: its first `n_inp` items (`learn.xb`)."""
    return tuple(batch_items(learn.batch, learn.n_inp)[:learn.n_inp])


def batch_targets(learn: Any) -> tuple:
    """The batch's targets: every item after the inputs (`learn.yb`)."""
    return tuple(batch_items(learn.batch, learn.n_inp)[learn.n_inp:])


def metrics_kept(learn: Any) -> Any:
    """`learn.metrics` if the MetricsCB that set it is still one of the learner's callbacks (this fit's), else None
    (an earlier fit's, gone: none of its values are this fit's)."""
    metrics = getattr(learn, "metrics", None)
    return metrics if any(cb is metrics for cb in learn.cbs) else None


def batch_items(batch: Any, n_inp: int) -> tuple | list:
    """The batch's items, (*inputs, *targets); a batch that is not a tuple is an error (slicing a tensor would give
    its rows as inputs and targets), and so is one of fewer items than `n_inp`, the inputs."""
    if not isinstance(batch, (tuple, list)):
        raise TypeError(f"a batch is a tuple (*inputs, *targets); the loader gave a {type(batch).__name__}: build it "
                        "on a TensorDataset(x, y) (dict batches: DataLoaders.from_dd or collate_dict), or own "
                        "predict and get_loss in a callback that reads learn.batch itself")
    if n_inp > len(batch):
        raise ValueError(f"the learner's n_inp={n_inp} (inputs per batch), but the batch has {len(batch)} items: "
                         "build the learner with the n_inp of its loaders' batches")
    return batch


def fit_note(learn: Any, error: BaseException, temporary: list) -> str:
    """The note fit adds to what ends it: Ctrl-C gets how to resume; a cancel that no stage caught, where it was
    raised (outside the stage it cancels)."""
    if isinstance(error, KeyboardInterrupt):
        from .callbacks.checkpoint import interrupt_note  # (here: the callbacks import learner.py, which imports this)
        return interrupt_note(learn, temporary, error)
    from .learner import CancelStepException  # (here: learner.py imports this module)
    return misplaced_cancel_note(error, step=isinstance(error, CancelStepException))
