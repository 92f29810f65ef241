"""The training loop: a `Learner` that fires named events, and `Callback`s that do everything else.

Read top to bottom: `fit` → `_one_epoch` → `_all_batches` → `_one_batch`. Every stage runs `before_<stage>`, its
body, `after_<stage>`, then every `cleanup_<stage>`, even after a cancel, an error, Ctrl-C or a cleanup's error (the
user sees the first error; later ones are its notes). fit's checks, set-up and tear-down: checks.py; `TrainLearner`:
supervised.py; `lr_find`, `get_preds`, ...: conveniences.py.

Cancelling (raise from any callback; raised in a stage's cleanup, a cancel only ends that stage, which is over):

| raised in a callback   | skipped                                               | still runs                            |
|------------------------|-------------------------------------------------------|---------------------------------------|
| `CancelStepException`  | this batch's `step`, `after_step` and `zero_grad`     | `after_batch` (gradient accumulation) |
| `CancelBatchException` | the rest of this batch, `after_batch` too             | `cleanup_batch`, then the next batch  |
| `CancelEpochException` | the rest of this pass (train or valid), `after_epoch` | its cleanups, then the next pass      |
| `CancelFitException`   | everything after                                      | every begun stage's `cleanup_*`       |

A cancel raised outside its stage (`CancelBatchException` in `before_epoch`) ends the fit as an error. Any cancel
raised after a backward, even in `after_step`, skips that batch's `zero_grad`: its gradients stay for the next step
to add. To drop a batch, raise in `after_loss`.

What callbacks may read on the learner, from which event on (each keeps its value until it is set again):

| attribute                    | from           | meaning                                                                   |
|------------------------------|----------------|---------------------------------------------------------------------------|
| `model, dls, loss_func, cbs` | always         | what the learner was built with                                           |
| `n_inp`                      | always         | a batch is (*inputs, *targets): its first `n_inp` items are the inputs    |
| `opt`, `fit_lr`              | `before_fit`   | the optimizer (made anew by each fit that trains); the lr it was made with|
| `n_epochs, epochs, passes`   | `before_fit`   | the run's epochs (resumed: all); the epochs this fit runs; its passes     |
| `start_epoch, resumed_from`  | `before_fit`   | the first epoch run (0 unless resumed); the checkpoint resumed from       |
| `epoch_offset`               | `before_fit`   | epochs earlier fits trained: `fit(1); fit(1)` sees what `fit(2)` sees     |
| `last_checkpoint`            | `before_fit`   | the newest good checkpoint of this run (CheckpointCB sets it), or None    |
| `schedule_stop`              | `before_fit`   | the epoch from which scheduling callbacks stop stepping (SWACB sets it)   |
| `stop_requested`             | `before_fit`   | EarlyStoppingCB's note that it ends the fit after this epoch (no stop)    |
| `stopped_by`                 | `cleanup_*`    | what ended the stage early, or an earlier cleanup's error; None: ran out  |
| `epoch, training, dl`        | `before_epoch` | the epoch index ('swa' in SWACB's pass); True when training; the loader   |
| `pass_steps`                 | `before_epoch` | `step`s this pass so far, a step owner's skipped ones too (fp16 overflows)|
| `iter, batch, xb, yb`        | `before_batch` | the batch's index in this pass; the batch; its inputs; its targets        |
| `stepped`                    | `before_batch` | True once this batch's `step` returned (even if a cancel cut `after_step`)|
| `began`                      | `before_fit`   | False until its first loss passed after_loss: a fit ended before, refused |
| `preds`, `loss`              | `after_predict`| the model's output; `loss_func(preds, *yb)` (from `after_loss`)           |
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn, optim

from ._course import course_hooks, course_names
from . import checks
from .conveniences import Conveniences

__all__ = ["EVENTS", "STEPS", "Callback", "CancelFitException", "CancelEpochException", "CancelBatchException",
           "CancelStepException", "build_handlers", "Learner"]

EVENTS = ("before_fit", "after_fit", "cleanup_fit", "before_epoch", "after_epoch", "cleanup_epoch",
          "before_batch", "after_batch", "cleanup_batch", "after_predict", "after_loss", "after_backward", "after_step")
STEPS = ("predict", "get_loss", "backward", "step", "zero_grad")  # a callback may own these (see Callback)


class CancelFitException(Exception): """Stop training now; every stage's `cleanup_*` still runs."""
class CancelEpochException(Exception): """Skip the rest of this pass (train or valid) and its `after_epoch`."""
class CancelBatchException(Exception): """Skip the rest of this batch, `after_batch` included."""
class CancelStepException(Exception): """Skip this batch's `step`, `after_step` and `zero_grad` (gradients stay)."""
_CANCELS = (CancelFitException, CancelEpochException, CancelBatchException, CancelStepException)


class Callback:
    """Base class for callbacks: methods named after events (`before_fit(self, learn)`, ...) run, sorted by `order`
    (lower first; built-in values: `miniai.callbacks`); a `before_`/`after_`/`cleanup_` method must be an event
    (Keras' `on_epoch_end` and the like are refused). The `STEPS` are the learner's own methods unless a callback
    declares it does one, `owns_steps = ("backward",)` with a method `backward(self, learn)`; a method named like a
    step but not declared, or a step owned twice, is an error when the callback is added (a helper called `step`
    must never silently replace the optimizer step). The base `Learner` has no steps: `TrainCB` owns all five.

    During a fit a callback may look (`get_preds`, `tta`, `summary`) but not call `fit`, `lr_find`, `add_cb` or
    `rm_cb` (give it a flag it checks). `inference = True`: it shapes what the model sees or predicts (DeviceCB,
    autocast), so `get_preds`, `tta` and `infer` run it too; False: it records or saves."""
    order: int = 0
    owns_steps: tuple[str, ...] = ()
    inference: bool = False


def build_handlers(cbs: Iterable[Callback]) -> dict[str, list[Callable[[Learner], None]]]:
    """Map each event (and each owned step) to the bound methods that handle it, in callback order."""
    table: dict[str, list] = {name: [] for name in EVENTS + STEPS}
    for cb in sorted(cbs, key=lambda cb: cb.order):
        checks.check_callback_names(cb, EVENTS, STEPS, table)  # a misspelt event, an undeclared or twice-owned step
        for name in EVENTS + cb.owns_steps:
            if callable(getattr(cb, name, None)):
                table[name].append(getattr(cb, name))
    return table


class Learner(Conveniences):
    """Runs the training loop and fires events; the steps are done by callbacks that own them (see `TrainCB`), or by
    a subclass's own methods (`TrainLearner`). `lr_find`, `get_preds`, `tta`, ... come from `Conveniences`."""
    _in_fit = _predicting = False  # in a fit; in a get_preds, tta or summary pass (the fit's hooks leave it alone)
    _temporary: list = []  # the running fit's callbacks for this call only (fit(cbs=...), resume's)
    keeps_grads = False  # True: a training fit starts from the gradients the last left (MomentumLearner's momentum)
    _epochs_trained = 0  # by this learner's fits so far: the next fit's epoch_offset
    stopped_by, began, _set_up = None, False, False  # (the table's; _set_up: past before_fit, else its opt is put back)

    def __init__(self, model: nn.Module, dls: Any = (0,), loss_func: Callable = nn.functional.mse_loss,
                 lr: float | None = 0.1, cbs: Iterable[Callback] | None = None,
                 opt_func: Callable[..., optim.Optimizer] = optim.SGD, n_inp: int = 1) -> None:
        checks.check_learner_args(loss_func, opt_func, n_inp, model)
        self.model, self.dls, self.loss_func, self.lr, self.opt_func = model, dls, loss_func, lr, opt_func
        self.n_inp, self.opt, self.training, self.cbs, self._handlers = n_inp, None, False, [], build_handlers([])
        for cb in checks.listed(cbs, Callback):  # (one callback alone, the course's `cbs=DeviceCB()`: a list of one)
            self.add_cb(cb)

    def add_cb(self, cb: Callback) -> Learner:
        """Add a callback; dispatch tables are rebuilt (and names checked) now, not per batch."""
        checks.check_not_in_fit(self, "add_cb", "it would miss this fit's before_fit")
        checks.check_new_callback(cb, self.cbs, Callback)  # an instance of Callback, not one of the learner's already
        self._handlers = build_handlers(self.cbs + [cb])
        self.cbs.append(cb)
        return self

    def rm_cb(self, cb: Callback) -> Learner:
        """Remove a callback (compared by identity)."""
        checks.check_not_in_fit(self, "rm_cb", "the loop would still call its handlers of the event running")
        checks.check_known_callback(cb, self.cbs)
        self.cbs = [c for c in self.cbs if c is not cb]
        self._handlers = build_handlers(self.cbs)
        return self

    xb = property(checks.batch_inputs, doc="The batch's inputs: its first `n_inp` items (a tuple).")
    yb = property(checks.batch_targets, doc="The batch's targets: every item after the inputs (a tuple).")

    # --- the loop --------------------------------------------------------------------------------------------
    def fit(self, n_epochs: int = 1, train: bool = True, valid: bool = True, cbs: Iterable[Callback] | None = None,
            lr: float | None = None, resume: str | os.PathLike | None = None) -> None:
        """Train for `n_epochs` (0: nothing runs); `cbs` are added for this call only (removed afterwards, even if
        fit raises); `lr`, if given, replaces the learner's (and a resumed checkpoint's). `resume`: a checkpoint file,
        or a `CheckpointCB` directory (its newest file): the run goes on from its epoch to `n_epochs` in total, with
        model, optimizer, schedulers, data order and RNG restored, ending as the run never stopped would
        (`train=False`: validates its weights). Ctrl-C runs every cleanup, then re-raises with how to resume."""
        checks.check_not_in_fit(self, "fit", "the outer fit would go on with this one's optimizer, lr and records")
        n_epochs, lr, opt_lr = checks.check_fit_args(self, n_epochs, train, valid, lr, resume)  # opt_lr: lr or self.lr
        if n_epochs == 0 and resume is None:
            return  # nothing to run: no callback resets what it recorded of the last fit
        self._temporary = temporary = []
        self._kept = self.opt, getattr(self, "fit_lr", None), getattr(self, "_fit_opt", None)  # (if refused: fit_done)
        try:
            self._handlers = build_handlers(self.cbs)  # again: an order set since add_cb is the order the fit runs in
            for cb in checks.listed(cbs, Callback):
                self.add_cb(cb)
                temporary.append(cb)
            self.n_epochs, self.epochs, self.epoch, self.iter = n_epochs, range(n_epochs), None, None
            self.passes, self.stepped = ("train",) * train + ("valid",) * valid, False
            self.began, self._set_up, self.stopped_by = False, False, None  # (refused at its start, below)
            self.start_epoch, self.resumed_from, self.epoch_offset = 0, None, self._epochs_trained  # (resume's, if any)
            self.last_checkpoint, self.schedule_stop, self.stop_requested = None, None, False  # (set by callbacks)
            self.metrics = checks.metrics_kept(self)  # (an earlier fit's MetricsCB, gone: None, none of its values)
            checks.check_steps(self, STEPS, self._handlers)  # each done by the learner or by a callback
            checks.check_loaders(self.dls, self.passes)
            if resume is not None:  # a callback that loads the checkpoint at before_fit, for this call only
                from .callbacks.resume import add_resume  # imported here: the callbacks import this module
                opt_lr = add_resume(self, resume, lr, temporary) or opt_lr  # no lr given: the saved run's
            if train or self.opt is None or resume is not None:  # an evaluation keeps the optimizer, and its state
                checks.fit_optimizer(self, opt_lr, lr is not None, resume is not None)  # opt, fit_lr; grads cleared
            self._in_fit = True
            self._stage("fit", self._all_epochs, CancelFitException)
        except (KeyboardInterrupt, *_CANCELS) as e:  # Ctrl-C: say how to resume; a cancel its stage did not catch:
            checks.add_note(e, checks.fit_note(self, e, temporary))  # it was raised outside that stage
            raise
        finally:
            self._in_fit, self._temporary = False, []
            checks.fit_done(self, temporary)  # this call's callbacks removed; refused at its start: the old optimizer

    def _stage(self, name: str, body: Callable[[], None], cancel: type[Exception]) -> None:
        try:
            self._emit(f"before_{name}")
            body()
            self._emit(f"after_{name}")
            self.stopped_by = None  # for the cleanups: the stage ran to its end, or (below) what stopped it
        except BaseException as e:  # also Ctrl-C: the cleanups below run, then it goes on up, unless it is this
            self.stopped_by = e  # stage's own cancel, which ends here
        error = None if isinstance(self.stopped_by, cancel) else self.stopped_by
        for handler in self._handlers[f"cleanup_{name}"]:  # every cleanup runs, even if one raises
            try:
                handler(self)
            except cancel:  # a cleanup cancelled this stage, which is over anyway
                pass
            except BaseException as e:  # the first error is the one raised, later ones its notes (but see there)
                error = checks.cleanup_error(self, error, e, name, handler)
        if error is not None:
            raise error

    def _emit(self, event: str) -> None:
        try:  # (a try costs nothing until something is raised)
            for handler in self._handlers[event]:
                handler(self)
        except _CANCELS as e:  # noted on it: its first event, the callback that raised it (fit's note, CheckpointCB)
            checks.tag_cancel(e, event, getattr(handler, "__self__", None))  # (the handler the loop stopped at)
            raise

    def _all_epochs(self) -> None:
        checks.check_new_params(self)  # (a training fit's; and the one-step rule on an opt a before_fit brought)
        self._set_up, self._kept = True, None  # every before_fit ran (resume's loaded its checkpoint), and the fit
        for self.epoch in self.epochs:  # can train; the last fit's optimizer need not live through it. (epochs: read
            for name in self.passes:  # here, after before_fit: a callback's may replace it, the course's ProgressCB)
                self._one_epoch(name == "train")

    def _one_epoch(self, training: bool) -> None:
        self.training = training
        self.model.train(training)
        self.dl = self.dls.train if training else self.dls.valid
        if training and hasattr(self.dl, "set_epoch"):  # a loader with its own seed: its order of this epoch of the
            self.dl.set_epoch(self.epoch_offset + self.epoch)  # learner's (a fresh learner's run replays the same)
        self.iter, self.pass_steps = None, 0
        try:
            with torch.enable_grad() if training else torch.no_grad():  # whatever block fit was called in
                self._stage("epoch", self._all_batches, CancelEpochException)
        finally:  # an epoch counts once it stepped (EarlyStoppingCB cancels the next one at its first batch)
            if training and self.pass_steps:
                self._epochs_trained = self.epoch_offset + self.epoch + 1

    def _all_batches(self) -> None:
        for self.iter, self.batch in enumerate(checks.pass_loader(self)):  # learn.dl, as before_epoch left it
            self.stepped = False
            self._stage("batch", self._one_batch, CancelBatchException)
        checks.check_pass_end(self)  # an empty pass would log NaN metrics, feed them to schedulers, early stopping

    def _one_batch(self) -> None:
        self._do("predict")
        self._emit("after_predict")
        self._do("get_loss")
        self._emit("after_loss")
        self.began = True
        if not self.training:
            return
        try:
            self._do("backward")
            self._emit("after_backward")
            self._do("step")
            self.stepped, self.pass_steps = True, self.pass_steps + 1  # (schedulers count these: a cancel may cut
            self._emit("after_step")  # after_step's handlers short)
            self._do("zero_grad")
        except CancelStepException:
            pass
        except BaseException as e:  # its gradients stay to look at (the next fit starts without them)
            checks.batch_raised(self, e)  # but a learner that keeps_grads (momentum in .grad) must not carry them
            raise

    def _do(self, step: str) -> None:  # the callback that owns the step, else the learner's own method
        owner = self._handlers[step]
        owner[0](self) if owner else getattr(self, step)()


# The course's learner module also had TrainLearner, MetricsCB, ...: imported on first use (table: miniai/_course.py)
__all__ += list(course_names("learner"))
__getattr__, __dir__ = course_hooks(__name__)
