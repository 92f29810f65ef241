"""Where a classifier goes wrong: confusion matrix, most-confused pairs, highest-loss items, results grids.

`Interpretation.from_learner(learn)` computes the predictions once (`get_preds`: inputs, probabilities, targets,
per-item losses), as fastai's ClassificationInterpretation does, and every table and plot reads those tensors.
The drawing lives in `miniai.plotting`, imported only when a plot is asked for; every plot returns its Figure.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .callbacks.checkpoint import unwrap
from .callbacks.preds import get_preds, unreduced
from .callbacks.state import kept
from .checks import check_count
from .learner import Learner

__all__ = ["Interpretation", "show_results", "class_probs"]


def _names(classes: Sequence[str] | None, indices: torch.Tensor) -> list[str]:
    return [classes[i] if classes is not None and len(classes) else str(i) for i in indices.tolist()]


def _images(inputs: Any, what: str) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor) or inputs.ndim not in (3, 4):
        if isinstance(inputs, torch.Tensor):
            shape = tuple(inputs.shape)
        elif isinstance(inputs, (tuple, list)):  # a learner's n_inp inputs
            shape = f"a {type(inputs).__name__} of {len(inputs)} inputs"
        else:
            shape = type(inputs).__name__
        # the tables are Interpretation's methods, not the learner's: name the calls that reach them
        raise ValueError(f"{what} draws the inputs as images, (N,C,H,W) or (N,H,W); these are {shape}. The tables "
                         "and the confusion matrix plot work for any classifier: "
                         "interp = Interpretation.from_learner(learn), then interp.confusion_matrix(), "
                         "interp.most_confused(), interp.top_losses() or interp.plot_confusion_matrix()")
    return inputs


def class_probs(outputs: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
    """Softmax probabilities (float32) of a classifier's (N, C) outputs, or the outputs as they are when they already
    are probabilities (a second softmax would flatten them): the `model` ends in a softmax (`ends_in_softmax`), or
    two rows or more all lie in [0, 1] and sum to 1 within their rounding (get_preds gives float32: a bfloat16
    softmax's values, on bfloat16's grid, sum to 1 within 2.4e-3 only; an average of them within 2e-3). One row
    alone (infer of one image) must sum to 1 within its own rounding, a float32 softmax's 1e-5 (3e-3 on bfloat16's
    grid, 1e-3 on float16's): a row of small logits may fall in [0, 1] and sum to about 1."""
    probs = outputs.float()
    if ends_in_softmax(model):
        return probs
    bf16 = torch.equal(probs.bfloat16().float(), probs)
    if len(probs) >= 2:
        tol = 1e-2 if bf16 else 3e-3
    else:  # (one row: float16's grid is looked at here only, a whole set's outputs would cost a copy for nothing)
        tol = 3e-3 if bf16 else 1e-3 if torch.equal(probs.half().float(), probs) else 1e-5
    off = float((probs.sum(1) - 1).abs().max()) if probs.numel() else 1.0
    if off < tol and bool(((probs >= 0) & (probs <= 1)).all()):
        return probs
    return torch.softmax(probs, dim=1)


_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)  # (in eval mode)


def ends_in_softmax(model: nn.Module | None) -> bool:
    """Whether `model` (unwrapped; a Sequential's last layer, nested, past layers that pass their input on in eval
    mode: Identity, Dropout) is an `nn.Softmax` or `nn.Softmax2d`: its outputs are probabilities."""
    layers = [unwrap(model)] if isinstance(model, nn.Module) else []
    while layers:
        layer = layers.pop()
        if isinstance(layer, nn.Sequential):
            layers.extend(layer)  # (its last layer is looked at first; an empty one passes its input on)
        elif not isinstance(layer, _PASS_THROUGH):
            return isinstance(layer, (nn.Softmax, nn.Softmax2d))
    return False


def _class_probs(preds: Any, model: nn.Module | None, what: str = "Interpretation") -> torch.Tensor:
    """`class_probs` of a classifier's (N, C) outputs; otherwise an error naming `what` (the call made) and what it
    takes (get_preds' own would advise an `act=` that from_learner and show_results do not take)."""
    if not isinstance(preds, torch.Tensor) or preds.ndim != 2 or preds.shape[1] < 2:
        got = f"outputs of shape {tuple(preds.shape[1:])} per item" if isinstance(preds, torch.Tensor) \
            else f"a {type(preds).__name__}"
        raise ValueError(f"{what} is for classifiers with one output per class, (N, C) logits with C >= 2; "
                         f"this model gives {got}. For one score per item (a binary model) or other "
                         "outputs, use learn.get_preds(with_input=True, with_loss=True) and read them yourself")
    return class_probs(preds, model)


class Interpretation:
    """Inputs, probabilities, targets and per-item losses of a classifier over one loader; tables and plots of them.

    `probs` are softmax probabilities (N, C) (a model's own, when it ends in softmax); `targets` class indices
    (N,); `predicted` the model's classes, the argmax of its outputs as Accuracy takes it (default
    `probs.argmax(1)`, which float32's softmax can round to the other class of a near tie); `classes` are the
    names (`dls.classes`), or None for numbers.
    """

    def __init__(self, inputs: Any, probs: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor,
                 classes: Sequence[str] | None = None, normalize: Any = None,
                 predicted: torch.Tensor | None = None, what: str = "Interpretation") -> None:
        if not isinstance(targets, torch.Tensor) or targets.ndim != 1 or targets.is_floating_point() \
                or probs.ndim != 2 or len(targets) != len(probs):
            per_class = isinstance(targets, torch.Tensor) and targets.shape == probs.shape and probs.ndim == 2 \
                and targets.is_floating_point()
            # (rows summing to 1: one-hot or soft labels of a softmax classifier, which cross_entropy takes)
            spread = per_class and bool(torch.allclose(targets.sum(1).float(), torch.ones(
                len(targets), device=targets.device), atol=1e-3))
            raise ValueError(f"{what} is for classifiers: one target of class indices (N,) per item and "
                             f"(N, C) outputs; got targets {getattr(targets, 'shape', type(targets).__name__)}, "
                             f"outputs {tuple(probs.shape)}"
                             + (": class probabilities (one-hot or soft labels); give the loader class indices, "
                                "targets.argmax(1), for this look" if spread else
                                ": a multilabel model's, whose classes are not one per item; read its "
                                "probabilities with learn.get_preds(act=torch.sigmoid)" if per_class else ""))
        bad = ~torch.isfinite(probs).all(1)
        if bool(bad.any()):  # (argmax would count each as class 0: a wrong matrix, most_confused, and titles)
            raise ValueError(f"{what}: the model's outputs are not finite (NaN or inf) for {int(bad.sum())} of "
                             f"{len(probs)} items (the first: item {int(bad.nonzero()[0, 0])}), which have no class. "
                             "NaN inputs (learn.get_preds(with_input=True) shows them), or weights the fit left "
                             "non-finite? Leave those items out, or mend the model")
        n_out, n = probs.shape[1], len(targets)
        if len(losses) != n or isinstance(inputs, torch.Tensor) and len(inputs) != n:
            got = f"{len(losses)} losses" if len(losses) != n else f"{len(inputs)} inputs"
            raise ValueError(f"Interpretation: {got} for {n} items: one loss per item, reduced over any positions "
                             "within it (e.g. losses.view(n, -1).mean(1)), and one input each")
        # each read once; with no targets there is nothing to check
        low, high = (int(targets.min()), int(targets.max())) if len(targets) else (0, -1)
        if low < 0:  # -100, the loss's default ignore_index: items a loss leaves out, which have no class to show
            raise ValueError(f"Interpretation: {int((targets < 0).sum())} negative target(s), e.g. {low}, are no "
                             "class: the loss's ignore_index (-100 by default), for items it leaves out. "
                             "Interpretation needs a class for every item: leave those items out of the loader")
        if high >= n_out:
            raise ValueError(f"Interpretation: the targets hold class {high}, but the model gives {n_out} outputs "
                             f"(classes 0..{n_out - 1}); check that the model's head and the data match")
        if classes is not None and len(classes) != n_out:
            raise ValueError(f"Interpretation: {len(classes)} class names for {n_out} outputs: pass the names of "
                             "the model's classes, in its output order (or classes=None for numbers)")
        self.inputs, self.probs, self.targets, self.losses, self.classes = inputs, probs, targets, losses, classes
        self.normalize = normalize  # the loaders' (dls.normalize): images are drawn as pixels, not normalized values
        self.predicted = probs.argmax(1) if predicted is None else predicted

    @classmethod
    def from_learner(cls, learn: Learner, dl: Iterable[Any] | None = None) -> Interpretation:
        """Predict once over `dl` (default `learn.dls.valid`) with inputs and per-item losses (`learn.get_preds`)."""
        # checked here, so the error names the call the user made (get_preds would name itself)
        unreduced(learn.loss_func, "Interpretation.from_learner (for top_losses)")
        inputs, logits, targets, losses = get_preds(learn, dl, with_input=True, with_loss=True)
        probs = _class_probs(logits, learn.model)
        if targets is None:  # (get_preds' for dict batches: they have none by position)
            raise _dict_batches_error("Interpretation")
        dls = getattr(learn, "dls", None)
        return cls(inputs, probs, targets, losses, getattr(dls, "classes", None), getattr(dls, "normalize", None),
                   logits.argmax(1))

    def confusion_matrix(self) -> torch.Tensor:
        """(C, C) counts: row = actual class, column = predicted class."""
        c = self.probs.shape[1]
        # in int64: targets * c overflows a uint8 or int8 target dtype
        return torch.bincount(self.targets.long() * c + self.predicted, minlength=c * c).view(c, c)

    def most_confused(self, min_val: int = 1) -> list[tuple[str, str, int]]:
        """(actual, predicted, count) for every wrong pair seen at least `min_val` times, most frequent first."""
        cm = self.confusion_matrix().fill_diagonal_(0)
        pairs = [(int(cm[a, p]), a, p) for a, p in zip(*torch.nonzero(cm >= max(min_val, 1), as_tuple=True))]
        return [(_names(self.classes, torch.tensor([a]))[0], _names(self.classes, torch.tensor([p]))[0], n)
                for n, a, p in sorted(pairs, key=lambda t: (-t[0], t[1], t[2]))]

    def top_losses(self, k: int | None = None, largest: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The `k` highest per-item losses (all by default; lowest with largest=False) and the items' indices; an
        item without a loss (NaN: its class weighted 0) last either way. The indices are positions in `inputs`,
        `targets` and `probs`: the loader's dataset's indices, unless the loader walks its items in an order of its
        own (a sampler or batch sampler of its own, a loader class of one's own), which `get_preds` keeps."""
        if k is not None:
            check_count("top_losses: k", k, what=" (items)")
        ranked = self.losses.nan_to_num(nan=-torch.inf if largest else torch.inf)  # (topk takes NaN for the largest)
        idx = ranked.topk(len(self.losses) if k is None else min(k, len(self.losses)), largest=largest).indices
        return self.losses[idx], idx

    def plot_confusion_matrix(self, normalize: bool = False, ax: Any = None, **kwargs: Any) -> Any:
        """The confusion matrix with its counts (row shares with `normalize`); returns the Figure."""
        from .plotting import plot_confusion_matrix  # matplotlib is imported only when a plot is asked for
        return plot_confusion_matrix(self.confusion_matrix(), self.classes, normalize=normalize, ax=ax, **kwargs)

    def plot_top_losses(self, k: int = 9, largest: bool = True, **kwargs: Any) -> Any:
        """The `k` highest-loss items: the most confidently wrong ones, titled actual/predicted, loss and the
        probability given to the prediction; returns the Figure."""
        losses, idx = self.top_losses(k, largest)
        notes = [f"loss {loss:.2f}, p {self.probs[i, self.predicted[i]]:.2f}" for loss, i in zip(losses.tolist(), idx)]
        return self._grid(idx, notes, "plot_top_losses", **kwargs)

    def show_results(self, n: int = 9, **kwargs: Any) -> Any:
        """The first `n` items titled actual/predicted (green when right, red when wrong); returns the Figure."""
        check_count("show_results: n", n, what=" (items)")
        return self._grid(torch.arange(min(n, len(self.targets))), None, "show_results", **kwargs)

    def _grid(self, idx: torch.Tensor, notes: list[str] | None, what: str, **kwargs: Any) -> Any:
        from .plotting import show_predictions
        if not len(idx):
            raise ValueError(f"{what}: no items to show (k or n is 0, or the loader was empty)")
        images = _images(self.inputs, what)[idx]
        norm = self.normalize
        if norm is not None and images.is_floating_point() and images.ndim == 4 and images.shape[1] == len(norm.mean):
            images = norm.decode(images)  # pixels in [0, 1], drawn on one scale (no per-image stretch)
            kwargs.setdefault("vmin", 0.0), kwargs.setdefault("vmax", 1.0)
        return show_predictions(images, _names(self.classes, self.targets[idx]),
                                _names(self.classes, self.predicted[idx]), notes, **kwargs)


def _dict_batches_error(who: str) -> TypeError:
    """The error for batches with no targets by position: dicts, read by steps of one's own."""
    return TypeError(f"{who} compares predictions with targets, and these batches are dicts (read by a predict and "
                     "get_loss of your own), which have none by position: give the loader (inputs, target) batches "
                     "(DataLoaders.from_dd, collate_dict), or build Interpretation(inputs, probs, targets, losses, "
                     "classes) from predictions of your own")


def _head(dl: Iterable[Any], n: int) -> Iterator[Any]:
    """The first batches of `dl` that hold `n` items."""
    seen = 0
    for batch in dl:
        if isinstance(batch, Mapping):  # (a dict, a UserDict: Hugging Face's BatchEncoding)
            raise _dict_batches_error("show_results")
        yield batch
        seen += len(batch[0])
        if seen >= n:
            return


def show_results(learn: Learner, n: int = 9, dl: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """The first `n` items of `dl` (default `learn.dls.valid`), titled actual/predicted; predicts only those batches.
    Returns the Figure."""
    check_count("show_results: n", n, what=" (items)")
    dl = dl if dl is not None else getattr(getattr(learn, "dls", None), "valid", None)
    if dl is None:
        raise ValueError("show_results needs a loader: learn.dls has no valid loader, so pass dl=...")
    with kept(learn, [dl]):  # reading the first batches moves the loader on: put it back too
        inputs, logits, targets = get_preds(learn, _head(dl, n), with_input=True)
    # the probabilities from_learner makes, and its error for a model that gives none (one score: binary)
    probs = _class_probs(logits, learn.model, what="show_results")
    dls = getattr(learn, "dls", None)
    interp = Interpretation(inputs, probs, targets, torch.zeros(len(targets)), getattr(dls, "classes", None),
                            getattr(dls, "normalize", None), logits.argmax(1), what="show_results")
    return interp.show_results(n, **kwargs)
