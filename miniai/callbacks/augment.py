"""BatchTransformCB: apply a transform to the inputs of each batch, on the device, as the batch arrives.

The transforms themselves (random crop, flip, erase: whole-batch tensor code) live in `miniai.augment`; this
callback only decides when they run. It runs after DeviceCB, so a GPU batch is augmented on the GPU.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..augment import RandomCrop, RandomFlip, check_transform
from ..checks import add_note, describe, warn
from ..learner import Callback, Learner
from ..utils import tensor_versions, tensors_in

__all__ = ["BatchTransformCB", "check_transform"]


class BatchTransformCB(Callback):
    """Replace the batch inputs `batch[0]` with `tfm(batch[0])` at before_batch, in training and/or validation.

    A learner whose batches have several inputs (`n_inp` > 1) needs `inputs=`: `'first'` (only `batch[0]`),
    `'together'` (one draw for all: inputs that line up pixel for pixel, an image and its depth map, joined along
    the channels, transformed as one batch and split again) or `'each'` (a draw of its own for each input: views of
    their own, two augmented views of one image); `'all'` is `'each'`, warned of when a crop or flip moves inputs of
    one height and width apart. It is refused without, rather than half-transformed.

    `on_train=True, on_val=False` (the default) is augmentation: `BatchTransformCB(batch_tfms(RandomCrop(28, 1),
    RandomFlip()))`. With both True it is preprocessing every pass needs (normalization, reshaping). Left to its
    default, on_val is checked at a fit's first training batch: a transform that changed the inputs' dtype,
    standardized them (mean near 0 and std near 1, from inputs that were not) or scaled them 10× or more, as
    preprocessing does and augmentations don't, is warned of, since validation would see raw inputs;
    `on_val=False` given outright says the transform is meant so.

    `tfm` must return a new tensor and leave its input alone: a loader may hand out batches that are views of its
    dataset (slices of one tensor; miniai's `TensorLoader` copies), so an in-place edit could change the data
    itself. The callback checks that (with the tensor's version counter, no copy) and raises if `tfm` modified
    its input.
    """
    order = -10  # after DeviceCB (-20): transform the batch where it now lives; before everyone who reads it

    @property
    def inference(self) -> bool:
        """Whether prediction passes run it (and export keeps it): what was set on it, else on_val (they are
        validation passes)."""
        return self.__dict__.get("_inference", self.on_val)

    @inference.setter
    def inference(self, value: bool) -> None:
        self._inference = value

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "inference" in state:  # (one pickled while inference was a plain attribute, set on it)
            state["_inference"] = state.pop("inference")
        self.__dict__.update(state)

    def __init__(self, tfm: Callable[[torch.Tensor], torch.Tensor], on_train: bool = True,
                 on_val: bool | None = None, inputs: str | None = None) -> None:
        if not callable(tfm):
            raise TypeError(f"BatchTransformCB takes a callable x -> x (e.g. batch_tfms(RandomFlip())); got {tfm!r}")
        check_transform(tfm, "BatchTransformCB")
        if inputs not in (None, "first", "together", "each", "all"):
            raise ValueError(f"inputs must be 'first', 'together', 'each', 'all' or None (one input); got {inputs!r}")
        if not on_train and not on_val:
            raise ValueError(f"BatchTransformCB(on_train={on_train}, on_val={on_val}): on_train=False and "
                             f"on_val={on_val} transform no pass: on_val=True for validation and prediction "
                             "(preprocessing), on_train=True for training (augmentation), or both")
        self.tfm, self.on_train, self.on_val, self.inputs = tfm, on_train, bool(on_val), inputs
        self._n = 1  # inputs transformed: the first n items of each batch
        self._check_val = on_train and on_val is None  # the default: is tfm really an augmentation? (each fit)
        self._look = False  # at this fit's first training batch

    def before_fit(self, learn: Learner) -> None:
        if learn.n_inp != 1 and self.inputs is None:
            raise ValueError(f"this learner's batches have n_inp={learn.n_inp} inputs: say which BatchTransformCB "
                             "transforms, BatchTransformCB(tfm, inputs='first'), inputs='together' (all, with one "
                             "draw: inputs that line up) or inputs='each' (each with a draw of its own)")
        given = all(cb is not self for cb in learn.cbs) or any(cb is self for cb in learn._temporary)
        if given and not self.on_val and "train" not in learn.passes:  # (the course's manual TTA: its on_val=True)
            raise ValueError("BatchTransformCB(on_val=False), the default, transforms training batches only, and "
                             "it was given to a pass that trains nothing (get_preds, capture_preds, fit(train="
                             "False)), where it never runs: pass BatchTransformCB(tfm, on_val=True) to transform "
                             "this pass's batches, or use learn.tta(tfms=...) for test-time augmentation")
        self._n = 1 if self.inputs == "first" else learn.n_inp
        self._look = self._check_val
        self._look_targets = True  # (at the fit's first training batch: per-pixel targets a geometric tfm leaves)

    def applies(self, training: bool) -> bool:
        """Whether the transform runs in a training (`training=True`) or a validation pass."""
        return self.on_train if training else self.on_val

    def before_batch(self, learn: Learner) -> None:
        if self.applies(learn.training):
            before = learn.batch  # (transform_batch makes a new tuple: this one keeps the untransformed items)
            learn.batch = self.transform_batch(learn.batch, self._n)
            if self._look and learn.training and isinstance(before, (tuple, list)):
                self._look = False
                _warn_if_rescaled(before[0], learn.batch[0])
            if learn.training and self._look_targets:
                self._look_targets = False  # (sizes before the transform: a crop to a smaller size changes them)
                _warn_if_out_of_line(self.tfm, before, self._n, learn.n_inp, self.inputs)

    def transform_batch(self, batch: tuple | list, n: int = 1) -> tuple | list:
        """The batch with its first `n` items transformed and every other item as it was (a new tuple or list)."""
        if not isinstance(batch, (tuple, list)) or not batch:
            raise TypeError(f"BatchTransformCB expects a batch (inputs, targets, ...) as a tuple or list; got "
                            f"{type(batch).__name__}. Transform other batch shapes in a callback of your own.")
        out = _together(self._apply, batch[:n]) if self.inputs == "together" and n > 1 else \
            [self._apply(xb) for xb in batch[:n]]
        if hasattr(batch, "_fields"):  # a namedtuple's constructor takes its fields one by one
            return type(batch)(*out, *batch[n:])
        return type(batch)((*out, *batch[n:]))

    def _apply(self, xb: torch.Tensor) -> torch.Tensor:
        # (a tensor's, or those of the tensors in a list of them: images of many sizes; the list's own tensors, as a
        # transform may put new ones in it)
        held = [xb] if isinstance(xb, torch.Tensor) else list(tensors_in(xb))
        before = [tensor_versions(t) for t in held]
        out = self.tfm(xb)
        if isinstance(xb, torch.Tensor) and isinstance(out, (tuple, list)):
            raise TypeError(f"BatchTransformCB's tfm returned a {type(out).__name__} for a tensor: it passes tfm the "
                            "batch's inputs and takes back the new inputs (the course's BatchTransformCB passed the "
                            "whole batch, (x, y), and by default also to validation batches): write it as "
                            "BatchTransformCB(lambda xb: (xb - mean) / std, on_val=True) for a normalization, which "
                            "validation needs as well (the default, on_val=False, is for augmentations)")
        if any(v is not None for v in before) and [tensor_versions(t) for t in held] != before:
            raise RuntimeError(f"BatchTransformCB's transform {self.tfm!r} modified the batch in place; batches "
                               "may be views of the loader's dataset, which would then change too (if yours are, "
                               "rebuild the DataLoaders). Make the transform return a new tensor (x.mul(2), not "
                               "x.mul_(2); or clone first).")
        return out


def _together(apply: Callable[[torch.Tensor], torch.Tensor], inputs: Sequence[Any]) -> list[torch.Tensor]:
    """The inputs transformed with one draw: joined along the channels (dim 1), transformed once, split again."""
    first = inputs[0]
    if not all(isinstance(x, torch.Tensor) and x.ndim >= 2 and x.dtype == first.dtype and x.shape[:1] + x.shape[2:]
               == first.shape[:1] + first.shape[2:] for x in inputs):
        raise ValueError("BatchTransformCB(inputs='together') transforms the inputs as one batch, joined along dim 1 "
                         "(the channels), so they must be tensors of one dtype and one shape but for dim 1; got "
                         f"{', '.join(describe(x) for x in inputs)}. Convert them alike first (a mask to float, say), "
                         "or use inputs='each' for a draw of its own each")
    joined = torch.cat(list(inputs), 1)
    why = (f"BatchTransformCB(inputs='together') joins the inputs along dim 1 (the channels: "
           f"{' + '.join(str(x.shape[1]) for x in inputs)} = {joined.shape[1]}) and transforms them as one batch")
    try:
        out = apply(joined)
    except RuntimeError as e:  # (its own type kept, an out-of-memory error's too: a note says what it was given)
        if not isinstance(e, torch.cuda.OutOfMemoryError) and not str(e).startswith("BatchTransformCB"):  # (ours)
            add_note(e, f"({why}: if it reads or changes the channels, a per-channel normalization or a conversion "
                        "to gray, it is for each input on its own: give it a BatchTransformCB of its own with "
                        "inputs='each' or 'first')")
        raise
    if not isinstance(out, torch.Tensor) or out.ndim != joined.ndim or out.shape[1] != joined.shape[1]:
        raise ValueError(f"{why}, and the transform gave back {describe(out)}: it must keep the channels to split "
                         "them again. A transform that changes them is for each input on its own: give it a "
                         "BatchTransformCB of its own with inputs='each' or 'first'")
    return list(out.split([x.shape[1] for x in inputs], 1))


def geometric(tfm: Any) -> list[Any]:
    """The transforms in `tfm` that move pixels (RandomCrop, RandomFlip), in composes nested to any depth."""
    if isinstance(tfm, (RandomCrop, RandomFlip)):
        return [tfm]
    return [t for inner in getattr(tfm, "tfms", ()) for t in geometric(inner)]


def _warn_if_out_of_line(tfm: Any, batch: Any, n: int, n_inp: int, inputs: str | None) -> None:
    """Warn of a geometric transform (RandomCrop, RandomFlip) that moves the first input's pixels and leaves an item
    of its height and width out of line: a target (a mask per pixel?) or an input it leaves alone (inputs='first')
    stays where it was, and inputs='all' moves each input with a draw of its own."""
    moving = geometric(tfm)
    x = batch[0] if isinstance(batch, (tuple, list)) and batch else None
    if not moving or not isinstance(x, torch.Tensor) or x.ndim < 3:
        return
    name = type(moving[0]).__name__
    for i, y in enumerate(batch[1:], 1):
        if not (isinstance(y, torch.Tensor) and y.ndim >= 2 and y.shape[-2:] == x.shape[-2:]):
            continue
        if i >= n_inp:
            warn(f"BatchTransformCB's {name} moves the inputs' pixels, and the targets {tuple(y.shape)} have the "
                 "inputs' height and width (a mask per pixel?): it leaves them where they were, so inputs and "
                 "targets no longer line up. Transform both with one draw in a callback of your own (learn.batch "
                 "= ... at before_batch), or leave geometric transforms out")
        elif i >= n:
            warn(f"BatchTransformCB(inputs='first')'s {name} moves the first input's pixels, and input {i} "
                 f"{tuple(y.shape)} has its height and width: it leaves that one where it was, so the two no longer "
                 "line up. Pass inputs='together' to move them with one draw, or leave geometric transforms out")
        elif inputs == "all":
            warn(f"BatchTransformCB(inputs='all') draws its {name} for each input on its own, and input {i} "
                 f"{tuple(y.shape)} has the first's height and width: inputs that line up pixel for pixel (an image "
                 "and its depth map) no longer do. Pass inputs='together' for one draw for all, or inputs='each' "
                 "if each input is a view of its own (two augmented views of one image)")
        else:
            continue
        return


def _warn_if_rescaled(raw: Any, out: Any) -> None:
    """Warn when a training-only transform changed the inputs' dtype or scale, as preprocessing does (augmentations
    keep both): validation and prediction batches, which it leaves alone, would then be raw."""
    if not (isinstance(raw, torch.Tensor) and isinstance(out, torch.Tensor)) or raw.numel() < 2 or out.numel() < 2:
        return
    if not raw.is_floating_point() and out.is_floating_point():
        change = f"dtype {raw.dtype} → {out.dtype}"
    elif raw.is_floating_point() and out.is_floating_point():
        # what augmentations don't do: standardize (mean near 0, std near 1, from inputs that were not: brightness,
        # contrast, solarizing and blurs move mean and std, not to 0 and 1), or scale by 10 or more (/255)
        (s0, m0), (s1, m1) = (torch.std_mean(t.detach().float()) for t in (raw, out))  # (once a fit: a GPU sync)
        s0, m0, s1, m1 = float(s0), float(m0), float(s1), float(m1)
        if not (s0 > 0 and math.isfinite(s0 + m0 + s1 + m1)):
            return
        near_standard = [abs(m) < 0.25 and 0.75 < s < 4 / 3 for m, s in ((m0, s0), (m1, s1))]
        if not (near_standard[1] and not near_standard[0] or not 0.1 <= s1 / s0 <= 10):  # (10× itself: a contrast)
            return
        change = f"mean {m0:.3g} → {m1:.3g}, std {s0:.3g} → {s1:.3g}"
    else:
        return
    warn(f"BatchTransformCB: its transform changed the training inputs' {change}, as preprocessing does (a "
         "normalization, a conversion), and on_val is left at False: validation and prediction batches are "
         "not transformed. If it is preprocessing, pass on_val=True; if it is an augmentation, pass "
         "on_val=False to say so.")
