"""The basic callbacks: put things on the device, perform the training steps (and check the loss's inputs), stop
after one batch."""
from __future__ import annotations

from typing import Any

import torch

from ..checks import add_note, call_model, describe, loss_backward, warn
from ..data import TensorLoader
from ..learner import STEPS, Callback, CancelFitException, Learner
from ..utils import check_device, class_loss, def_device, fix_malloc, loss_setting, name_of, to_device, unpartial

__all__ = ["DeviceCB", "TrainCB", "SingleBatchCB", "LossInputError", "SupervisedLoss", "supervised_loss"]


class DeviceCB(Callback):
    """Move the model (at before_fit) and every batch (at before_batch) to `device`.

    Loaders that can hold their data on the device (`miniai.data.TensorLoader`, via `dls.to`) are moved once at
    before_fit, so batching is slicing on the device and no batch crosses the host-device link (`move_data=False`
    keeps them where they are). `channels_last=True` puts the model and 4-d inputs in channels-last memory
    format, which convolutions on recent GPUs prefer. On the CPU it fixes glibc's malloc thresholds for the
    process (`miniai.utils.fix_malloc`; `MINIAI_MALLOC=default` opts out).
    """
    order = -20  # before everyone else reads the model or the batch
    inference = True  # predictions need the model and the batches on the device too

    def __init__(self, device: str | torch.device = def_device, move_data: bool = True,
                 channels_last: bool = False) -> None:
        self.device = torch.device(device)
        self.move_data = move_data
        self.channels_last = channels_last
        self._in_place = False  # this pass's batches already sit on the device: nothing to do per batch

    def before_fit(self, learn: Learner) -> None:
        check_device(self.device, f"DeviceCB({str(self.device)!r})")  # (DeviceCB() picks one it has)
        if self.device.type == "cpu":
            fix_malloc()  # keeps activation memory from being given back and faulted in every batch (see fix_malloc)
        learn.model.to(self.device)
        if self.channels_last:
            learn.model.to(memory_format=torch.channels_last)
        if self.move_data and hasattr(learn.dls, "to"):
            learn.dls.to(self.device)

    def before_epoch(self, learn: Learner) -> None:
        # a TensorLoader on the device yields batches there: checking once per pass saves walking every batch
        dl, here = learn.dl, _resolve(self.device)
        self._in_place = (isinstance(dl, TensorLoader) and not self.channels_last
                          and dl.x.device == here and dl.y.device == here)

    def before_batch(self, learn: Learner) -> None:
        if self._in_place:
            return
        batch = to_device(learn.batch, self.device)
        if self.channels_last and isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor) \
                and batch[0].ndim == 4:
            batch = (batch[0].contiguous(memory_format=torch.channels_last), *batch[1:])
        learn.batch = batch


def _resolve(device: torch.device) -> torch.device:
    """`device` with its index filled in, as tensors report it ('cuda' -> 'cuda:<current>', 'mps' -> 'mps:0')."""
    if device.index is not None or device.type == "cpu":
        return device
    index = torch.cuda.current_device() if device.type == "cuda" else 0
    return torch.device(device.type, index)


class LossInputError(ValueError, RuntimeError):
    """The loss function can't take the model's output and the targets; the message shows both shapes and dtypes.

    A subclass of both ValueError and RuntimeError, the two errors torch's losses raise, so existing
    `except` clauses still catch it.
    """


def _broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape tensors of shapes `a` and `b` broadcast to, or None when they don't.

    As `torch.broadcast_shapes`, without its cost: it raises for shapes that don't broadcast, as a classifier's
    preds (N, C) and targets (N,) don't, and building that error took 40 µs a batch, more than all callbacks did.
    """
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x != y and x != 1 and y != 1:
            return None
        out.append(y if x == 1 else x)
    return tuple(out)


# torch's losses whose targets are more than one tensor, and how many: loss(preds, *targets)
_N_TARGETS = {"gaussian_nll_loss": 2, "GaussianNLLLoss": 2, "ctc_loss": 3, "CTCLoss": 3, "margin_ranking_loss": 2,
              "MarginRankingLoss": 2, "cosine_embedding_loss": 2, "CosineEmbeddingLoss": 2, "triplet_margin_loss": 2,
              "TripletMarginLoss": 2, "triplet_margin_with_distance_loss": 2, "TripletMarginWithDistanceLoss": 2}


class SupervisedLoss:
    """`learn.loss_func(learn.preds, *learn.yb)`, refusing inputs that would silently compute the wrong loss.

    The checks run again only when the loss or the shapes change, and at each epoch's start, each fit's too (the
    values drift: a log_sigmoid's look like log-probabilities at first): checking every batch cost 8 µs, half the
    loss's own time at bs 64. One per learner (TrainLearner) or TrainCB.
    """

    def __init__(self) -> None:
        self._passed: tuple | None = None  # the loss and shapes that last passed the checks

    def __getstate__(self) -> dict[str, Any]:
        return {"_passed": None}  # the cache holds the loss, which may not pickle (a lambda): export leaves it out

    def __call__(self, learn: Learner) -> torch.Tensor:
        loss_func, preds, yb = learn.loss_func, learn.preds, learn.yb
        if loss_func is None:
            raise TypeError("the learner has no loss_func (None; load_learner gives None when the exported loss could "
                            "not be pickled), so no loss can be computed: set one first, learn.loss_func = "
                            "F.cross_entropy")
        first = yb[0] if yb else None
        key = (loss_func, len(yb), type(preds), getattr(preds, "shape", None), type(first),
               getattr(first, "shape", None), getattr(learn, "epoch_offset", 0), getattr(learn, "epoch", None))
        fix = None if key == self._passed else _wrong_inputs(loss_func, preds, yb, learn.n_inp)
        error = None
        if fix is None:
            try:
                loss = loss_func(preds, *yb)
            except (RuntimeError, ValueError, TypeError, IndexError) as e:  # (a try costs nothing when nothing is
                # raised) out of memory is not the inputs' fault; an IndexError of a loss of one's own is its own
                if isinstance(e, torch.cuda.OutOfMemoryError):
                    raise
                hint = _too_few_scores(preds, yb) if isinstance(e, IndexError) else ""
                if isinstance(e, IndexError) and not class_loss(loss_func):  # (a cross-entropy inside it: a note)
                    if "out of bounds" in str(e) and hint:
                        add_note(e, hint.strip()[1:-1])
                    raise
                error, fix = e, str(e) + hint
            else:
                if not (learn.training and getattr(loss, "ndim", 0)):  # (backward needs one number)
                    self._passed = key
                    return loss
                fix = (f"it gives a loss of shape {tuple(loss.shape)}, not one number, and training steps on one "
                       "(backward): use reduction='mean' (or 'sum'); per-item losses are for evaluation")
        raise LossInputError(
            f"loss_func {name_of(loss_func)} failed on the model output (preds, {describe(preds)}) and the targets "
            f"({', '.join(describe(t) for t in yb)}): {fix}\nMake the model's output match what the loss expects: "
            "e.g. F.cross_entropy takes logits (N, C) and int64 class indices (N,), F.mse_loss and "
            "F.binary_cross_entropy_with_logits take preds and targets of the same shape and float dtype.") from error


def _too_few_scores(preds: Any, yb: tuple) -> str:
    """What to change when class-index targets (N, ...) reach past the C class scores of (N, C, ...) preds (torch:
    'Target 6 is out of bounds'), else nothing (read after a failure only: the max waits for a GPU)."""
    target = yb[0] if len(yb) == 1 else None
    if not (isinstance(preds, torch.Tensor) and preds.ndim >= 2 and isinstance(target, torch.Tensor)
            and target.ndim == preds.ndim - 1 and not target.is_floating_point() and target.numel()):
        return ""
    top, scores = int(target.max()), preds.shape[1]
    return (f" (this batch's targets go up to {top} but the model gives {scores} class scores in dim 1, where the "
            f"loss reads them: give it one output per class, {top + 1} at least, or number the classes from 0)"
            ) if top >= scores else ""


def supervised_loss(learn: Learner) -> torch.Tensor:
    """`SupervisedLoss()(learn)`: the loss, its inputs checked every call (a learner keeps a SupervisedLoss, which
    checks them only when they change)."""
    return SupervisedLoss()(learn)


def _wrong_inputs(loss_func: Any, preds: Any, yb: tuple, n_inp: int) -> str | None:
    """Why `loss_func(preds, *yb)` would compute a wrong loss without an error (what to do), or None."""
    # (a wrapper holding a loss as .func, fastai's BaseLoss, may reshape what it is given: its inputs are its own)
    named, name = unpartial(loss_func), name_of(loss_func)
    torchs = (getattr(named, "__module__", None) or type(loss_func).__module__).startswith("torch.nn")
    classes = torchs and name in _CLASS_LOSSES and isinstance(preds, torch.Tensor)  # preds (N, C, ...): shapes differ
    if classes and (fix := _class_scores_wrong(name, preds, yb, loss_setting(loss_func, "ignore_index", -100))):
        return fix
    if torchs and name in _LOGIT_LOSSES and isinstance(preds, torch.Tensor) and preds.is_floating_point() \
            and preds.numel() >= 16 and 0 <= float(preds.detach().min()) < float(preds.detach().max()) <= 1 \
            and float((preds == 0).float().mean()) < 0.5:  # (read once a shape; detached: torch warns otherwise)
        warn(f"{name} takes logits, and these preds all lie in [0, 1], as probabilities do: sigmoid would be "
             "applied twice, which trains slowly and logs a wrong loss. Remove the model's final sigmoid (for "
             "probabilities: get_preds(act=torch.sigmoid)), or use F.binary_cross_entropy on probabilities")
    if not classes and len(yb) == 1 and isinstance(preds, torch.Tensor) and isinstance(yb[0], torch.Tensor) \
            and preds.shape != yb[0].shape:
        broadcast = _broadcast_shape(preds.shape, yb[0].shape)  # None: the loss raises, and we show the shapes
        if broadcast is not None and broadcast != preds.shape:  # (N,1) against (N,): an (N,N) loss that trains
            fix = (f"they broadcast to {tuple(broadcast)}, so the loss would compare every prediction with every "
                   "target. Make the shapes equal: give the model's output the targets' shape (e.g. end the model "
                   "with nn.Flatten(0) for (N,) targets), or build the targets in the output's shape.")
            if torchs:
                return fix
            # a loss of your own may reshape them itself (p[:, 0]): say it, once, and go on
            warn(f"loss_func {name} gets preds {tuple(preds.shape)} and targets {tuple(yb[0].shape)}: "
                 f"{fix} (If it reshapes them itself, as p[:, 0] does, all is well.)")
    elif len(yb) != (n := _N_TARGETS.get(name, 1)) and torchs:
        return (f"{name} takes {n} target{'s' * (n > 1)}, but the batch has {len(yb)} items after its "
                f"n_inp={n_inp} inputs (the loss would take the others as other arguments: weights, say). "
                "Batches are (*inputs, *targets); if an item is no target (ids, weights), wrap the loss, "
                "e.g. loss_func=lambda preds, y, ids: F.cross_entropy(preds, y).")
    return None


_CLASS_LOSSES = ("cross_entropy", "CrossEntropyLoss", "nll_loss", "NLLLoss")  # preds (N, C, ...): scores per class
_LOGIT_LOSSES = ("binary_cross_entropy_with_logits", "BCEWithLogitsLoss")  # (16 logits or more, all in [0, 1],
# not all equal, most not 0: probabilities, almost surely, a saturated sigmoid's 1.0s too; a head of zeros, or a
# ReLU's, gives many exactly 0)
_BINARY = ("For two classes, output 2 logits (nn.Linear(..., 2)) with int64 class indices (N,) as targets, or one "
           "logit per item with F.binary_cross_entropy_with_logits and float 0/1 targets of its shape.")


@torch.no_grad()
def _class_scores_wrong(name: str, preds: torch.Tensor, yb: tuple, ignore_index: int = -100) -> str | None:
    """Why class scores `preds` would give cross-entropy or NLL a wrong loss without an error, or None; a warning for
    probabilities given to cross-entropy. (Read once per shape: on a GPU the values cost a sync.)"""
    one_item = len(yb) == 1 and isinstance(yb[0], torch.Tensor) and not yb[0].ndim  # (a loader of single items)
    if preds.ndim == 1 and not one_item:  # torch takes the whole batch for one item's class scores
        return f"{name} reads preds (N,) as ONE item with N class scores, not N items. {_BINARY}"
    if preds.ndim < 2:  # (one item's scores: MetricsCB says the loader yields single items)
        return None
    if preds.shape[1] == 1:
        return f"{name} over one class (preds {tuple(preds.shape)}) is always 0: softmax of one score is 1. {_BINARY}"
    if not preds.numel() or not preds.is_floating_point():
        return None
    if name in ("nll_loss", "NLLLoss"):  # log-probabilities: <= 0 and each item's exps sum to 1 (log(p + eps):
        mass, top = preds.float().exp().sum(1), preds.amax(1)  # 1 + C × eps, so a little above both; two zero
        target = yb[0] if len(yb) == 1 and isinstance(yb[0], torch.Tensor) else None  # logits sum to 2)
        if target is not None and target.shape == mass.shape and not target.is_floating_point():
            read = target != ignore_index  # (positions the loss leaves out, padding say, may hold anything)
            mass, top = mass[read], top[read]
        if not mass.numel():
            return None
        top, low, high = (float(v) for v in (top.max(), mass.min(), mass.max()))  # (each read once: a sync each)
        if top > 0.1 or not 0.9 <= low <= high <= 1.5:
            return (f"{name} takes log-probabilities (log_softmax's output: <= 0, each item's exps summing to 1), "
                    f"and these preds reach {top:.3g}, their exps summing to {low:.3g}..{high:.3g} (raw logits? "
                    "log_sigmoid?): end the model with nn.LogSoftmax(1), or use F.cross_entropy, which takes the "
                    "logits themselves (log(p + eps) passes while C × eps <= 0.5)")
    if name in ("cross_entropy", "CrossEntropyLoss") and float(preds.min()) >= 0 and torch.allclose(
            preds.float().sum(1), torch.ones((), device=preds.device), atol=1e-2):  # (bfloat16's sums: 1 ± 4e-3)
        warn(f"{name} takes logits, and these preds look like probabilities (each item's sum to 1): "
             "softmax would be applied twice, which trains slowly and reads confidences wrongly. Remove the "
             "model's final nn.Softmax (for probabilities: get_preds(act=torch.softmax))")
    return None


class TrainCB(Callback):
    """The supervised training steps for a base `Learner` (the course's TrainCB): it owns all five steps.

    `n_inp`, if given, sets `learn.n_inp` at before_fit, before any other callback's before_fit reads it, and it
    stays (infer and export read it after the fit; the course passed it here); None keeps the learner's, which
    `self.n_inp` then reads from the fit's start on (a course subclass's own `learn.batch[:self.n_inp]`). A base
    `Learner` has no NaN guard of its own (TrainLearner adds one): add `TerminateOnNaNCB()` to stop at a NaN or
    infinite loss.
    """
    owns_steps = STEPS
    order = -40  # (before_fit, its one event: before DDPCB, DeviceCB, BatchTransformCB... read n_inp)
    _learners_n_inp: int | None = None  # the learner's, read at before_fit
    _n_inp: int | None = None  # the one given (a subclass that shadows n_inp with a class attribute sets none)
    _loss: SupervisedLoss | None = None  # made at the first loss (a course subclass may skip __init__)

    def __init__(self, n_inp: int | None = None) -> None:
        self.n_inp = n_inp

    @property
    def n_inp(self) -> int | None:
        """The inputs per batch: the one given, else the learner's (None before a fit)."""
        return self._n_inp if self._n_inp is not None else self._learners_n_inp

    @n_inp.setter
    def n_inp(self, n_inp: int | None) -> None:
        self._n_inp = n_inp

    def __setstate__(self, state: dict[str, Any]) -> None:
        # one pickled before n_inp was a property held it as n_inp
        if "n_inp" in state:
            state["_n_inp"] = state.pop("n_inp")
        self.__dict__.update(state)

    def before_fit(self, learn: Learner) -> None:
        if self._n_inp is not None:
            learn.n_inp = self._n_inp
        self._learners_n_inp = learn.n_inp

    def before_epoch(self, learn: Learner) -> None:
        if self._learners_n_inp is None:  # (the course's MixedPrecision(TrainCB) has its own before_fit)
            raise TypeError(f"{type(self).__name__}.before_fit replaces TrainCB's without calling "
                            "super().before_fit(learn), which gives the learner the n_inp this callback was given "
                            "and reads the learner's into self.n_inp: without it the model may get the wrong "
                            "inputs. Call super().before_fit(learn) first in yours")

    def predict(self, learn: Learner) -> None:
        learn.preds = call_model(learn)  # (an error gets a note of the inputs it was given)

    def get_loss(self, learn: Learner) -> None:
        if self._loss is None:
            self._loss = SupervisedLoss()
        learn.loss = self._loss(learn)

    def backward(self, learn: Learner) -> None:
        loss_backward(learn)

    def step(self, learn: Learner) -> None:
        learn.opt.step()

    def zero_grad(self, learn: Learner) -> None:
        learn.opt.zero_grad()


class SingleBatchCB(Callback):
    """Stop the fit after the first batch: a quick check that model, data and callbacks fit together. That batch
    trains (one step, of a fresh optimizer): run the check before training, or `fit(1, train=False, cbs=[...])`."""
    order = 100  # after every after_batch reader (metrics, recorders, loggers): each sees the one batch

    def after_batch(self, learn: Learner) -> None:
        raise CancelFitException()
