"""The calls a `Learner` offers beyond the loop, each handed over to the module that does it.

`Learner` inherits them, so editors show them on the learner; each imports its module when called (those modules
import learner.py, which imports this one), so importing the loop loads none of them.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .learner import Callback, Learner

__all__ = ["Conveniences"]


class Conveniences:
    """`fit_one_cycle`, `lr_find`, `get_preds`, `capture_preds`, `tta`, `infer`, `summary`, `show_results`,
    `export` and `compile`: the Learner's calls built from callbacks and other modules; and what a copy holds."""

    def __getstate__(self: Learner) -> dict:
        """What a copy (deepcopy, pickle) holds: a copy made mid-fit is in no fit, with the learner's own callbacks
        (not this fit's temporary ones, resume's among them), and no batch's graph."""
        from .learner import build_handlers
        from .utils import without_graph
        loaders = {f"dls.{k}": getattr(self.dls, k, None) for k in ("train", "valid")}
        loaders["dl"] = getattr(self, "dl", None)
        for name, dl in loaders.items():  # (torch's own error names neither loader nor a way)
            if type(getattr(dl, "_iterator", None)).__name__ == "_MultiProcessingDataLoaderIter":
                raise TypeError(f"learn.{name} keeps its worker processes between passes (persistent_workers=True), "
                                "and those can't be copied or pickled with the learner: build the loaders with "
                                "persistent_workers=False to copy it, or give the learner such loaders first")
        state = {k: v for k, v in vars(self).items() if k not in ("_in_fit", "_predicting", "_temporary")}
        if self._in_fit and "train" in self.passes:  # the fit made its optimizer: the copy's own, not one set by
            # hand (as the fit's end notes it; an evaluation keeps the one it found, maybe set by hand)
            state["_fit_opt"] = self.opt
        state.update({k: without_graph(state[k]) for k in ("loss", "preds") if k in state})
        if self._temporary:
            state["cbs"] = [cb for cb in self.cbs if all(cb is not t for t in self._temporary)]
            state["_handlers"] = build_handlers(state["cbs"])
        return state

    def fit_one_cycle(self: Learner, n_epochs: int, max_lr: float | None = None, **kwargs: Any) -> None:
        """Fit with torch's OneCycleLR stepped per optimizer step (`miniai.callbacks.scheduling.fit_one_cycle`)."""
        from .callbacks.scheduling import fit_one_cycle
        fit_one_cycle(self, n_epochs, max_lr, **kwargs)

    def lr_find(self: Learner, *args: Any, **kwargs: Any) -> Any:
        """The loss as the lr grows an optimizer step at a time, and suggested lrs; the learner is left as it was."""
        from .callbacks.lr_finder import lr_find
        return lr_find(self, *args, **kwargs)

    def get_preds(self: Learner, dl: Any = None, with_input: bool = False, with_loss: bool = False,
                  act: Callable | None = None, cbs: Iterable[Callback] = ()) -> tuple:
        """`(preds, targets)` over `dl` (default `dls.valid`), inputs first `with_input`, per-item losses last."""
        from .callbacks.preds import get_preds
        return get_preds(self, dl, with_input, with_loss, act, list(cbs))

    def capture_preds(self: Learner, cbs: Iterable[Callback] | None = None, inps: bool = False) -> tuple:
        """The course's name for `get_preds` on `dls.valid`: `(preds, targets)`, plus the inputs last `inps`."""
        from .callbacks.preds import capture_preds
        return capture_preds(self, cbs, inps)

    def tta(self: Learner, dl: Any = None, tfms: Any = None, n: int = 1, inputs: str | None = None,
            act: Callable | None = torch.softmax) -> tuple:
        """`(probs, targets)`: `act` (softmax) of the outputs averaged over the inputs and `n` augmented copies."""
        from .callbacks.preds import tta
        return tta(self, dl, tfms, n, inputs, act)

    def infer(self: Learner, items: Any, bs: int = 256) -> Any:
        """Class index, name and probabilities of one raw image or a batch, normalized as the loaders' data were."""
        from .inference import infer
        return infer(self, items, bs)

    def summary(self: Learner, xb: Any = None) -> Any:
        """Per layer: output shape, parameters and multiply-adds for one batch, with totals (`miniai.summary`)."""
        from .summary import summary
        return summary(self, xb)

    def show_results(self: Learner, n: int = 9, dl: Any = None, **kwargs: Any) -> Any:
        """A grid of `n` validation items with actual and predicted labels; returns the Figure."""
        from .interpret import show_results
        return show_results(self, n, dl, **kwargs)

    def export(self: Learner, path: str | os.PathLike = "export.pkl") -> Any:
        """Save what `load_learner` needs to predict (a pickle: load only files you trust; `miniai.inference`)."""
        from .inference import export
        return export(self, path)

    def compile(self: Learner, **kwargs: Any) -> Learner:
        """`torch.compile` the model in place, a change of hooks recompiling (`miniai.utils.compile_model`)."""
        from .utils import compile_model
        compile_model(self.model, **kwargs)
        return self
