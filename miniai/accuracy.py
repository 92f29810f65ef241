"""Accuracy: the share of items predicted right, as torcheval's MulticlassAccuracy gives it, without its costs."""
from __future__ import annotations

import torch

from .distributed import all_reduce_sum
from .weighting import as_integer, target_mask

__all__ = ["Accuracy"]


class Accuracy:
    """The share of items whose predicted class (argmax over the class dim, or the preds themselves when they are
    labels) is the target: `MetricsCB(accuracy=Accuracy())`.

    It works like torcheval's `MulticlassAccuracy` (update/compute/reset/to) and gives the same value, without its
    costs: importing torcheval takes over a second, and its first `compute` compiles TorchScript. The two counts
    stay on the device until `compute`, so updating never waits for the GPU; under DDP they are summed over ranks.
    Preds and targets it would compare wrongly (targets as a column, one-hot targets, a binary model's scores,
    anything that broadcasts) are refused, with what to pass instead. Targets of `ignore_index` are left out of both
    counts, as the loss leaves them out: at its default, 'loss', in a MetricsCB the loss's own (set each pass:
    `nn.CrossEntropyLoss(ignore_index=0)`'s, a partial's, a function's `.ignore_index`), else -100 (torch's
    cross-entropy default: padding, unlabelled items); one given that differs from the loss's is warned of at the
    fit's start (`ignore_index=None`: none is left out; nor is one the targets' dtype can't hold, -100 in uint8).
    `dim`: the class dim of the scores, 1 by default (as F.cross_entropy takes them); -1 for a sequence model's
    (N, T, C). Scores that read both ways, (N, 6, 6) against (N, 6) targets, are refused unless `dim` is given.
    """
    additive = True  # an update over concatenated batches counts what one per batch would: MetricsCB batches them
    dim: int | None = None
    _on_dim_1 = False  # a batch that reads one way only has shown the classes on dim 1 (dim left None)

    def __init__(self, ignore_index: int | None | str = "loss", dim: int | None = None) -> None:
        if not (ignore_index is None or ignore_index == "loss" or as_integer(ignore_index) is not None):
            raise TypeError(f"Accuracy(ignore_index=...) is the target value to leave out (an int), None for none, "
                            f"or 'loss' (the default: the loss's); got {ignore_index!r}")
        if dim is not None and as_integer(dim) is None:
            raise TypeError(f"Accuracy's dim is the class dim of the scores (an int: 1, or -1 for (N, T, C)); "
                            f"got {dim!r}")
        if dim == 0:
            raise ValueError("Accuracy(dim=0): dim 0 is the items; the class dim of the scores is 1 (N, C, ...) or "
                             "-1 for a sequence model's (N, T, C)")
        self.dim = dim
        self.ignore_index = ignore_index if ignore_index in (None, "loss") else as_integer(ignore_index)
        self.loss_ignore_index = -100  # what 'loss' leaves out: torch's default until MetricsCB reads the loss's
        self.counts = torch.zeros(2, dtype=torch.int64)  # correct, total

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> Accuracy:
        """Count the batch's correct predictions and its items."""
        scores = preds.ndim == target.ndim + 1
        if scores and self.dim is None and preds.ndim >= 3:  # (N, C, L) or (N, T, C)?
            first, last = preds.shape[:1] + preds.shape[2:] == target.shape, preds.shape[:-1] == target.shape
            self._on_dim_1 = self._on_dim_1 or first and not last
            if first and last and not self._on_dim_1:
                raise ValueError(f"Accuracy: preds {tuple(preds.shape)} read two ways against targets "
                                 f"{tuple(target.shape)}: class scores on dim 1 (N, C, ..., as F.cross_entropy takes "
                                 "them) or last (a sequence model's (N, T, C)). Say which: Accuracy(dim=1) or "
                                 "Accuracy(dim=-1)")
        dim = 1 if self.dim is None else self.dim
        labels = preds.argmax(dim) if scores else preds
        if labels.shape != target.shape or labels.is_floating_point() or scores and preds.shape[dim] < 2:
            # comparing them would broadcast, or compare scores with class ids: a wrong accuracy without a word
            raise ValueError(_accuracy_mismatch(preds, target))
        mask = target_mask(target, self.loss_ignore_index if self.ignore_index == "loss" else self.ignore_index)
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
        """Start counting afresh (the class dim a batch showed stays known: it is the model's; give another model,
        whose scores may lie otherwise, an Accuracy of its own)."""
        self.counts.zero_()
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{'counts': [correct, total], 'on_dim_1': whether a batch showed the classes on dim 1} (as torcheval's
        metrics give theirs; lr_find puts it back after its look, a resumed run reads scores as the run did)."""
        return {"counts": self.counts, "on_dim_1": torch.tensor(self._on_dim_1)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `state_dict()` (on the device the counts are on now)."""
        self.counts = state["counts"].to(self.counts.device)
        self._on_dim_1 = bool(state.get("on_dim_1", self._on_dim_1))  # (a state saved before it: as it is)

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
    elif target.shape == preds.shape and preds.ndim == 2 and classes == 1:  # (BCE's usual shapes)
        fix = ("a binary model's column of scores: in MetricsCB use torcheval's BinaryAccuracy(threshold=0) for "
               "logits (0.5, its default, for probabilities), which takes (N,) scores and targets: end the model "
               "with nn.Flatten(0) and give the targets as (N,) too (y.squeeze(1))")
    elif target.shape == preds.shape:
        fix = ("preds are scores, not labels: for a binary model (N,) use torcheval's BinaryAccuracy(threshold=0) "
               "(logits; 0.5 for probabilities) in MetricsCB, for a multi-label one MultilabelAccuracy(threshold=0)")
    elif preds.ndim >= 3 and preds.shape[:-1] == target.shape:
        fix = "the class scores last (a sequence model's (N, T, C)): Accuracy(dim=-1)"
    else:
        fix = "their shapes don't match"
    return (f"Accuracy needs class scores (N, C, ...) with class ids (N, ...), or integer labels of the targets' "
            f"shape; {shapes}: {fix}.")
