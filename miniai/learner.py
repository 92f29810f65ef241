"""The training loop: a `Learner` that fires named events, and `Callback`s that do everything else.

Read this file top to bottom: `fit` → `_one_epoch` → `_all_batches` → `_one_batch`. Every stage runs
`before_<stage>`, its body, `after_<stage>`, and always `cleanup_<stage>` (even after a cancel or an error).

Cancelling (raise from any callback):

| raised in a callback    | skipped                                                   | still runs                                      |
|-------------------------|-----------------------------------------------------------|-------------------------------------------------|
| `CancelStepException`   | this batch's `step`, `after_step` and `zero_grad`         | `after_batch` (gradient accumulation, fp16 skip)|
| `CancelBatchException`  | the rest of this batch, incl. `after_batch`               | `cleanup_batch`, then the next batch            |
| `CancelEpochException`  | the rest of this pass (train *or* valid), `after_epoch`   | `cleanup_batch`, `cleanup_epoch`, the next pass |
| `CancelFitException`    | everything after                                          | `cleanup_batch`, `cleanup_epoch`, `cleanup_fit` |

Learner state that callbacks may read (and from which event on it is valid):

| attribute                       | valid from     | meaning                                                            |
|---------------------------------|----------------|--------------------------------------------------------------------|
| `model, dls, loss_func, cbs`    | always         | what the learner was built with                                    |
| `opt`                           | `before_fit`   | the optimizer made by `opt_func(model.parameters(), lr)`           |
| `n_epochs, epochs`              | `before_fit`   | how many epochs this fit runs, and the range the loop walks        |
| `epoch, training, dl`           | `before_epoch` | epoch index; True for the training pass; the loader being walked   |
| `iter, batch`                   | `before_batch` | batch index inside this pass; the batch (a tuple: inputs, targets) |
| `preds`                         | `after_predict`| model output                                                       |
| `loss`                          | `after_loss`   | loss tensor (still on the device)                                  |
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from torch import nn, optim

__all__ = ["EVENTS", "STEPS", "Callback", "CancelFitException", "CancelEpochException", "CancelBatchException",
           "CancelStepException", "LossInputError", "raise_loss_error",
           "build_handlers", "Learner", "TrainLearner", "MomentumLearner"]

EVENTS = ("before_fit", "after_fit", "cleanup_fit",
          "before_epoch", "after_epoch", "cleanup_epoch",
          "before_batch", "after_batch", "cleanup_batch",
          "after_predict", "after_loss", "after_backward", "after_step")
STEPS = ("predict", "get_loss", "backward", "step", "zero_grad")  # a callback may supply these (TrainCB)
_EVENT_PREFIXES = ("before_", "after_", "cleanup_")


class CancelFitException(Exception):
    """Stop training now; `cleanup_batch`, `cleanup_epoch` and `cleanup_fit` still run."""


class CancelEpochException(Exception):
    """Skip the rest of this pass (train or valid) and its `after_epoch`; `cleanup_epoch` still runs."""


class CancelBatchException(Exception):
    """Skip the rest of this batch, `after_batch` included; `cleanup_batch` still runs."""


class CancelStepException(Exception):
    """Skip this batch's optimizer `step`, `after_step` and `zero_grad` (the gradients stay); `after_batch` runs.

    Raised from `after_backward` by gradient accumulation between optimizer steps, and from `step` by a mixed
    precision scaler that found inf/NaN gradients: per-batch schedulers step at `after_step`, so they count
    only the optimizer steps actually taken.
    """


class Callback:
    """Base class for callbacks: define methods named after events (`before_fit(self, learn)`, ...).

    The prefixes `before_`, `after_` and `cleanup_` are reserved for events: a method so named that is not an
    event is an error when the callback is added. The names in `STEPS` are reserved too: a callback that
    defines `predict`, `get_loss`, `backward`, `step` or `zero_grad` performs that step for the base `Learner`.
    Callbacks run sorted by `order` (lower first); see `miniai.callbacks.ORDER` for the built-in values.
    """
    order: int = 0


Handler = Callable[["Learner"], None]


def build_handlers(cbs: Iterable[Callback]) -> dict[str, list[Handler]]:
    """Map each event and step name to the bound methods that handle it, in callback order."""
    table: dict[str, list[Handler]] = {name: [] for name in EVENTS + STEPS}
    for cb in sorted(cbs, key=lambda cb: cb.order):
        for name in dir(type(cb)):
            if name.startswith(_EVENT_PREFIXES) and name not in table:
                guess = difflib.get_close_matches(name, EVENTS, n=1)
                raise TypeError(f"{type(cb).__name__}.{name} is not an event"
                                + (f"; did you mean {guess[0]!r}?" if guess else f"; events are {', '.join(EVENTS)}")
                                + ". Methods starting with before_/after_/cleanup_ are reserved for events.")
            if name in table and callable(getattr(cb, name)):
                table[name].append(getattr(cb, name))
    return table


class Learner:
    """Runs the training loop and fires events; the step methods are asked of the callbacks (see `TrainCB`).

    `fit` makes a new optimizer each call with `opt_func(model.parameters(), lr)`.
    """

    def __init__(self, model: nn.Module, dls: Any = (0,), loss_func: Callable = F.mse_loss, lr: float | None = 0.1,
                 cbs: Iterable[Callback] | None = None, opt_func: Callable[..., optim.Optimizer] = optim.SGD) -> None:
        self.model, self.dls, self.loss_func, self.lr, self.opt_func = model, dls, loss_func, lr, opt_func
        self.opt: optim.Optimizer | None = None
        self.training = False
        self.cbs: list[Callback] = []
        self._handlers = build_handlers([])
        for cb in cbs or []:
            self.add_cb(cb)

    # --- callbacks -------------------------------------------------------------------------------------------
    def add_cb(self, cb: Callback) -> Learner:
        """Add a callback; dispatch tables are rebuilt (and checked for misspelled events) now, not per batch."""
        self._handlers = build_handlers(self.cbs + [cb])
        self.cbs.append(cb)
        return self

    def rm_cb(self, cb: Callback) -> Learner:
        """Remove a callback (compared by identity)."""
        self.cbs = [c for c in self.cbs if c is not cb]
        self._handlers = build_handlers(self.cbs)
        return self

    def _emit(self, event: str) -> None:
        for handler in self._handlers[event]:
            handler(self)

    # --- the loop --------------------------------------------------------------------------------------------
    def fit(self, n_epochs: int = 1, train: bool = True, valid: bool = True,
            cbs: Iterable[Callback] | None = None, lr: float | None = None,
            resume: str | os.PathLike | None = None) -> None:
        """Train for `n_epochs`; `cbs` are added for this call only (removed afterwards, even if fit raises).

        `resume`: a checkpoint file, or a `CheckpointCB` directory (its newest file): the run continues from the
        checkpoint's epoch up to `n_epochs` in total, with model, optimizer, schedulers, data order and RNG
        restored, so it ends as the run never stopped would. Ctrl-C (KeyboardInterrupt) runs every cleanup_*
        and is re-raised with a note saying where it stopped and how to resume.
        """
        temporary = list(cbs or [])
        for cb in temporary:
            self.add_cb(cb)
        try:
            lr = self.lr if lr is None else lr
            if lr is None:
                raise ValueError("No learning rate: pass lr= to the Learner or to fit(), e.g. learn.fit(3, lr=1e-2);"
                                 " learn.lr_find() suggests one.")
            self._check_steps()
            if train:
                self._check_train_data()
            self.n_epochs, self.epochs = n_epochs, range(n_epochs)
            self.epoch = self.iter = None  # set by the loop; None until the first epoch starts
            if resume is not None:
                # imported here: the callbacks import this module. Reads and checks the checkpoint now, before
                # anything changes, and sets self.epochs; the callback loads it after every other before_fit.
                from .callbacks.resume import start_resume
                temporary.append(start_resume(self, resume))
                self.add_cb(temporary[-1])
            self.opt = self.opt_func(self.model.parameters(), lr)
            self._stage("fit", lambda: self._all_epochs(train, valid), CancelFitException)
        except KeyboardInterrupt as e:
            from .callbacks.resume import report_interrupt  # imported here: the callbacks import this module
            report_interrupt(self, e)  # notes where it stopped and how to resume, then re-raise: a user stop
            raise
        finally:
            for cb in temporary:
                self.rm_cb(cb)

    def _stage(self, name: str, body: Callable[[], None], cancel: type[Exception]) -> None:
        try:
            self._emit(f"before_{name}")
            body()
            self._emit(f"after_{name}")
        except cancel:
            pass
        finally:
            self._emit(f"cleanup_{name}")

    def _all_epochs(self, train: bool, valid: bool) -> None:
        # read self.epochs here, after before_fit, so a callback (resume, progress bar) may replace it
        for self.epoch in self.epochs:
            if train:
                self._one_epoch(True)
            if valid:
                with torch.no_grad():
                    self._one_epoch(False)

    def _one_epoch(self, training: bool) -> None:
        self.training = training
        self.model.train(training)
        self.dl = self.dls.train if training else self.dls.valid
        self.iter = None  # until the first batch: an interrupt in before_epoch is reported as such
        self._stage("epoch", self._all_batches, CancelEpochException)

    def _all_batches(self) -> None:
        for self.iter, self.batch in enumerate(self.dl):
            self._stage("batch", self._one_batch, CancelBatchException)

    def _one_batch(self) -> None:
        self.predict()
        self._emit("after_predict")
        self.get_loss()
        self._emit("after_loss")
        if not self.training:
            return
        try:
            self.backward()
            self._emit("after_backward")
            self.step()
            self._emit("after_step")
            self.zero_grad()
        except CancelStepException:
            pass

    # --- the steps: on the base Learner they are asked of the callbacks; TrainLearner overrides them ----------
    def predict(self) -> None:
        """Set `self.preds` from `self.batch`."""
        self._emit("predict")

    def get_loss(self) -> None:
        """Set `self.loss` from `self.preds` and `self.batch`."""
        self._emit("get_loss")

    def backward(self) -> None:
        """Compute gradients of `self.loss`."""
        self._emit("backward")

    def step(self) -> None:
        """Update the parameters (optimizer step)."""
        self._emit("step")

    def zero_grad(self) -> None:
        """Reset the gradients."""
        self._emit("zero_grad")

    def _check_steps(self) -> None:
        # a base Learner with no TrainCB would "train" without ever predicting: say so before anything runs
        missing = [s for s in STEPS if getattr(type(self), s) is getattr(Learner, s) and not self._handlers[s]]
        if missing:
            raise TypeError(f"{type(self).__name__} has no way to {', '.join(missing)}: add TrainCB() to cbs, "
                            "or use TrainLearner, which defines the steps itself.")

    def _check_train_data(self) -> None:
        # an empty loader would "train" zero batches and report nothing: say so before anything runs
        dl = getattr(self.dls, "train", None)
        try:
            n_batches = len(dl)
        except TypeError:  # no length (a generator, an IterableDataset): can't tell in advance
            return
        if n_batches:
            return
        dataset = getattr(dl, "dataset", None)
        n_items = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
        bs = getattr(dl, "batch_size", getattr(dl, "bs", None))
        why = ("its dataset is empty" if n_items == 0 else
               f"{n_items} items with bs={bs} and drop_last=True make no full batch: use a smaller bs or "
               "drop_last=False" if n_items is not None else "it yields nothing")
        raise ValueError(f"dls.train has no batches: {why}. Check how the training set was built (a filter, "
                         "n_train, a wrong path), or call fit(train=False) to only validate.")

    # --- conveniences built from callbacks (imported inside each method: the callbacks import this module) ---
    def fit_one_cycle(self, n_epochs: int, max_lr: float | None = None, *, pct_start: float = 0.3,
                      div_factor: float = 25.0, final_div_factor: float = 1e4, base_momentum: float = 0.85,
                      max_momentum: float = 0.95, cycle_momentum: bool | None = None,
                      cbs: Iterable[Callback] | None = None, **fit_kwargs: Any) -> None:
        """Fit with torch's OneCycleLR stepped per optimizer step: lr up to `max_lr` and down, momentum/beta1 inverse.

        The total steps are computed at before_fit (`n_epochs` × optimizer steps per epoch, fewer than batches
        under gradient accumulation), so the cycle ends exactly on the fit's last step. `cycle_momentum=None`
        cycles momentum (SGD) or beta1 (Adam family) when the optimizer has one. Other keyword arguments go to `fit`.
        """
        # imported here: the callbacks import this module
        from torch.optim.lr_scheduler import OneCycleLR

        from .callbacks.scheduling import BatchSchedCB, steps_per_epoch
        max_lr = self.lr if max_lr is None else max_lr

        def one_cycle(opt: optim.Optimizer) -> OneCycleLR:
            per_epoch = steps_per_epoch(self)
            if per_epoch is None:
                raise TypeError("fit_one_cycle needs len(dls.train) to count the steps of the cycle; this train "
                                "loader has no length: use BatchSchedCB(partial(OneCycleLR, total_steps=...))")
            cycle = cycle_momentum if cycle_momentum is not None else bool({"momentum", "betas"} & set(opt.defaults))
            return OneCycleLR(opt, max_lr=max_lr, total_steps=max(1, self.n_epochs * per_epoch), pct_start=pct_start,
                              div_factor=div_factor, final_div_factor=final_div_factor, cycle_momentum=cycle,
                              base_momentum=base_momentum, max_momentum=max_momentum)
        self.fit(n_epochs, cbs=[*(cbs or []), BatchSchedCB(one_cycle)], lr=max_lr, **fit_kwargs)

    def lr_find(self, start_lr: float = 1e-5, gamma: float = 1.3, max_mult: float = 3.0, max_epochs: int = 10,
                plot: bool = True) -> Any:
        """Grow the lr ×`gamma` a batch from `start_lr` until the loss blows up; plot loss against lr and return an
        `LRFinderResult` (lrs, losses, valley, steepest). Model, optimizer and learner are left exactly as before.
        """
        from .callbacks.lr_finder import lr_find  # function-local: the callbacks import this module
        return lr_find(self, start_lr, gamma, max_mult, max_epochs, plot)

    def compile(self, **kwargs: Any) -> Learner:
        """Compile the model in place with `torch.compile(**kwargs)` (`nn.Module.compile`); returns the learner.

        In place, so `learn.model` stays the user's module and its `state_dict` keys stay clean (no `_orig_mod.`).
        The first epoch pays the compilation (tens of seconds on a CPU; see bench/overhead.py), and each new input
        shape (a smaller last batch, the validation pass) compiles once more; later epochs run the compiled code.
        """
        if not hasattr(self.model, "compile"):  # nn.Module.compile arrived in torch 2.2
            raise RuntimeError(f"learn.compile() needs torch >= 2.2 (nn.Module.compile); this is {torch.__version__}")
        self.model.compile(**kwargs)
        return self


class LossInputError(ValueError, RuntimeError):
    """The loss function rejected the model's output and the targets; the message shows both shapes and dtypes.

    A subclass of both ValueError and RuntimeError, the two errors torch's losses raise, so existing
    `except` clauses still catch it.
    """


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"shape {tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"
    return type(x).__name__


def raise_loss_error(loss_func: Callable, preds: Any, targets: tuple, error: Exception) -> NoReturn:
    """Re-raise `error` from `loss_func(preds, *targets)` as a LossInputError showing what each side looked like."""
    if isinstance(error, torch.cuda.OutOfMemoryError):  # not the inputs' fault: keep it as it is
        raise error
    name = getattr(loss_func, "__name__", type(loss_func).__name__)
    raise LossInputError(
        f"loss_func {name} failed on the model output (preds, {_describe(preds)}) and the targets "
        f"({', '.join(_describe(t) for t in targets)}): {error}\nMake the model's output match what the loss "
        "expects: e.g. F.cross_entropy takes logits (N, C) and int64 class indices (N,), F.mse_loss and "
        "F.binary_cross_entropy_with_logits take preds and targets of the same shape and float dtype.") from error


class TrainLearner(Learner):
    """A Learner with the usual supervised steps: `model(x)`, `loss_func(preds, y)`, backward, step, zero_grad.

    A `TerminateOnNaNCB` is added unless `nan_guard=False` (or one is already in `cbs`): a NaN or infinite loss
    stops the fit with a message; remove it later with `learn.rm_cb(...)`. A callback that defines `backward` or
    `step` does that step instead of the built-in one (`MixedPrecisionCB`: a scaled backward, `scaler.step`).
    """

    def __init__(self, model: nn.Module, dls: Any = (0,), loss_func: Callable = F.mse_loss, lr: float | None = 0.1,
                 cbs: Iterable[Callback] | None = None, opt_func: Callable[..., optim.Optimizer] = optim.SGD,
                 nan_guard: bool = True) -> None:
        super().__init__(model, dls, loss_func, lr, cbs, opt_func)
        if nan_guard:
            from .callbacks.guards import TerminateOnNaNCB  # imported here: the callbacks import this module
            if not any(isinstance(cb, TerminateOnNaNCB) for cb in self.cbs):
                self.add_cb(TerminateOnNaNCB())

    def predict(self) -> None:
        self.preds = self.model(self.batch[0])

    def get_loss(self) -> None:
        try:
            self.loss = self.loss_func(self.preds, self.batch[1])
        except (RuntimeError, ValueError) as e:  # a try costs nothing when nothing is raised
            raise_loss_error(self.loss_func, self.preds, self.batch[1:], e)

    def backward(self) -> None:
        if self._handlers["backward"]:  # a callback owns it (a grad scaler's scaled backward)
            self._emit("backward")
        else:
            self.loss.backward()

    def step(self) -> None:
        if self._handlers["step"]:  # a callback owns it (a grad scaler's step, which may skip)
            self._emit("step")
        else:
            self.opt.step()

    def zero_grad(self) -> None:
        self.opt.zero_grad()


class MomentumLearner(TrainLearner):
    """TrainLearner that keeps `mom` × the old gradients instead of zeroing them (momentum, the course's way)."""

    def __init__(self, model: nn.Module, dls: Any, loss_func: Callable, lr: float | None = None,
                 cbs: Iterable[Callback] | None = None, opt_func: Callable[..., optim.Optimizer] = optim.SGD,
                 mom: float = 0.85, nan_guard: bool = True) -> None:
        self.mom = mom
        super().__init__(model, dls, loss_func, lr, cbs, opt_func, nan_guard)

    def zero_grad(self) -> None:
        with torch.no_grad():
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad *= self.mom
