"""Using a trained classifier on new data: `infer` on raw images, `export` to one file, `load_learner` from it.

`infer` prepares raw items as the loaders prepared theirs (`dls.normalize`) and runs them through the learner's
predict path (`miniai.callbacks.preds`); `export` writes what that path needs, and nothing of training, so
`load_learner(path).infer(x)` works in a new process.
"""
from __future__ import annotations

import hashlib
import inspect
import io
import math
import os
import pickle
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .callbacks.activations import HOOK_IDS
from .callbacks.augment import BatchTransformCB
from .callbacks.basic import DeviceCB
from .callbacks.checkpoint import unwrap, weights_call
from .callbacks.preds import get_preds, left_out, participants
from .checks import check_count, warn
from .data import DataLoaders, Normalize
from .distributed import is_main_process
from .interpret import class_probs
from .learner import Learner
from .supervised import TrainLearner
from .utils import (byte_sums, check_device, checksums_match, frames, lazy_tensors, link_target, model_dtype,
                    nonfinite_weight, tagged, tensors_in)
from .sources import wide_pixels

__all__ = ["Prediction", "to_batch", "infer", "export", "load_learner"]

_FORMAT, _VERSION = "miniai-export", 1


class Prediction(NamedTuple):
    """What `infer` gives: class index, class name and probabilities; for a batch, one of each per item."""
    index: int | torch.Tensor  # an int, or (N,) int64
    label: str | list[str]  # dls.classes[index], or str(index) without class names
    probs: torch.Tensor  # (C,), or (N, C)


# ---------------------------------------------------------------- raw items -> one batch

def _channels(normalize: Any) -> int | None:
    mean = getattr(normalize, "mean", None)
    return len(mean) if isinstance(mean, torch.Tensor) else None


_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # PIL's mode for a model's channel count


def _as_tensor(item: Any, channels: int | None) -> tuple[torch.Tensor, bool]:
    """A tensor, and whether its channels come last (ndarrays and PIL images, as images are stored)."""
    if isinstance(item, torch.Tensor):
        return item, False
    if type(item).__module__.startswith("PIL."):  # no PIL import needed to recognise one
        if wide_pixels(item.mode):  # PIL's 8-bit conversion would clip these
            # (a 16-bit image turns white): their values as they are, in their own type, whatever they are (a dark
            # 16-bit image may hold only values below 256: they are not 8-bit pixels)
            item = np.array(item)
            return torch.from_numpy(item if item.dtype.isnative else item.astype(item.dtype.newbyteorder("="))), True
        mode = _MODES.get(channels)  # a palette GIF's pixels are indices, not gray levels: convert
        if mode is None and item.mode in ("P", "PA"):
            raise TypeError("infer got a palette image (a GIF, say), whose pixels are indices into its palette, and "
                            "can't tell the model's channels (no dls.item_shape, and dls.normalize is no Normalize): "
                            "convert it first, image.convert('L') or convert('RGB') as the model was trained")
        if channels == 4 and len(item.getbands()) == 4 and item.mode not in ("P", "PA"):
            mode = None  # (CMYK: four channels of its own, as the loaders' arrays had them)
        item = np.array(item.convert(mode) if mode and item.mode != mode else item)  # a copy: PIL's is read-only
    if isinstance(item, np.ndarray):
        return torch.from_numpy(np.array(item)), True  # a writable copy, whoever owns the array
    raise TypeError(f"infer takes images as tensors, ndarrays or PIL images (or a list of them); got "
                    f"{type(item).__name__}")


def _convert(channels: int) -> str:
    """What to convert images to for a model of `channels` (1, 3 or 4): "grayscale, image.convert('L')"."""
    return f"{ {1: 'grayscale', 3: 'RGB', 4: 'RGBA'}[channels]}, image.convert('{_MODES[channels]}')"


def _channels_error(t: torch.Tensor, channels_last: bool, channels: int) -> ValueError:
    """For one image (3-d) or a batch (4-d) whose channel count, read where its kind keeps it, is not the model's:
    every way out the shape allows (the other layout; a colour conversion, through PIL)."""
    batch = t.ndim == 4
    at, other_end = (-1, 1 if batch else 0) if channels_last else (1 if batch else 0, -1)
    n, other = t.shape[at], t.shape[other_end]
    dims = "N," * batch
    read, looks, fix = ((f"ndarrays are read as ({dims}H,W,C)", "channels-first",
                         f"x.transpose({'0, 2, 3, 1' if batch else '1, 2, 0'})") if channels_last else
                        (f"tensors are read as ({dims}C,H,W)", "channels-last",
                         f"x.permute({'0, 3, 1, 2' if batch else '2, 0, 1'})"))
    it, are, has, them = ("they", "are", "have", "each") if batch else ("it", "is", "has", "it")
    mode = _convert(channels) if channels in _MODES and t.dtype == torch.uint8 else None  # (PIL clips wider pixels)
    def pil(k: int, reordered: bool) -> str:  # what Image.fromarray takes: (H,W) for one channel, else (H,W,C)
        return (f"PIL, from {'each image' if batch else 'it'} as {'(H,W)' if k == 1 else '(H,W,C)'}"
                + (f" ({fix} first)" if reordered and channels_last else "")  # (a channels-first ndarray)
                + ("; a list of PIL images is a batch)" if batch else ")"))
    ways = [f"if {it} {are} {looks}, pass {fix}"] if other == channels else [
        f"if {it} {are} {looks} with {_count(other)}, convert {them} to {mode} ({pil(other, True)}"] if (
        mode and other in (1, 3, 4) and n not in (1, 3, 4)) else []
    if mode and n in (1, 3, 4):  # gray, RGB, RGBA
        ways.append(f"if {it} {has} {_count(n)}, convert {them} to {mode} ({pil(n, not channels_last)}")
    what = f"a batch of shape {tuple(t.shape)} holds images of" if batch else f"an image of shape {tuple(t.shape)} has"
    return ValueError(f"infer: {read}, so {what} {_count(n)}, and this is a {channels}-channel model: "
                      + ("; ".join(ways) or f"give {channels}-channel images"))


def _count(n: int) -> str:
    return f"{n} channel{'s' * (n != 1)}"


def _to_pixels(x: torch.Tensor) -> str:
    """How to make uint8 pixels of `x`: of floats, the one conversion their range fits (0-255 values taken for 0-1
    ones were changed in a third of the pixels, without an error); of integers, each way (a dark 16-bit image's
    values all lie below 256 too)."""
    if x.is_floating_point() and x.numel():
        if bool(x.isnan().any()):
            return "These hold NaN: give images of pixel values"
        low, high = float(x.min()), float(x.max())
        # a resized 0-1 image overshoots (bicubic, antialiasing) in a few pixels, or a little in many (the ringing
        # around an object on black); centred ones, x - 0.5, lie far below 0 in many and never above 0.5
        outside = float(((x < 0) | (x > 1)).float().mean())
        far = float(((x < -0.25) | (x > 1.25)).float().mean())
        if -0.5 <= low and high <= 1.5 and (outside <= 0.05 or high > 0.75 and far <= 0.05):
            return (f"These run {low:g} to {high:g}, about 0 to 1: convert them with (x.clamp(0, 1) * 255).round().to("
                    "torch.uint8)")
        if low < 0:
            return (f"These run {low:g} to {high:g}, below 0: already normalized? Those go to "
                    "learn.get_preds(dl=[(x,)]); pixels are 0-255 (uint8)")
        if 0 <= low and high <= 255:
            return (f"These run {low:g} to {high:g}: convert 0-255 values stored as floats with x.round().to("
                    "torch.uint8), 16-bit pixels with (x.int() // 257).to(torch.uint8) (a dark 16-bit image's lie "
                    "below 256 too)")
        if 0 <= low and high <= 65535:
            return f"These run {low:g} to {high:g}: convert 16-bit pixels with (x.int() // 257).to(torch.uint8)"
        return f"These run {low:g} to {high:g}, beyond 16-bit pixels: scale them to 0-255 first"
    return ("Convert 16-bit pixels with (x.int() // 257).to(torch.uint8), 8-bit values stored wider (a PIL 'I' image "
            "of 0-255) with x.to(torch.uint8)")


def _canonical(t: torch.Tensor, channels_last: bool, channels: int | None) -> tuple[torch.Tensor, bool]:
    """(N, C, H, W), and whether `t` was a batch. (H,W) and (C,H,W) are one item; (N,H,W) is a batch when C is 1
    (and N is not 3 or 4, which may be an RGB image's channels: refused)."""
    if t.ndim == 2:
        if channels in (3, 4):  # (PIL's conversion would clip wider pixels: a 16-bit image's)
            raise ValueError(f"infer: an image of shape {tuple(t.shape)} is one gray image, and this is a {channels}-"
                             "channel model: " + (f"convert it to {_convert(channels)} (PIL) first" if t.dtype ==
                                                  torch.uint8 else f"give {channels}-channel images"))
        return t[None, None], False
    if t.ndim == 3:
        if channels is None or t.shape[-1 if channels_last else 0] == channels:
            return (t.permute(2, 0, 1) if channels_last else t)[None], False
        if channels == 1 and channels_last and t.shape[-1] in (3, 4):  # not a batch of images 3 pixels wide
            raise ValueError(f"infer: an array of shape {tuple(t.shape)} looks like one RGB image, and this is a "
                             "1-channel model: convert it to grayscale first" + (" (PIL: image.convert('L'))" if
                                                                                t.dtype == torch.uint8 else ""))
        if channels == 1 and not channels_last and t.shape[-1] == 1 and t.shape[0] > 1:  # not N images 1 pixel wide
            raise ValueError(f"infer: a tensor of shape {tuple(t.shape)} looks like one image with its channel last "
                             "(H,W,C), and tensors are read as (C,H,W): pass x.permute(2, 0, 1)")
        if channels == 1 and channels_last and t.shape[0] in (3, 4):  # (the same, as a NumPy array)
            raise ValueError(f"infer: an array of shape {tuple(t.shape)} is one RGB image (C,H,W) or {t.shape[0]} "
                             "grayscale images (N,H,W), and this is a 1-channel model: pass images as a list, "
                             "list(x); convert an RGB image to grayscale first")
        if channels == 1 and not channels_last and t.shape[0] in (3, 4):  # torchvision's read_image of an RGB PNG
            raise ValueError(f"infer: a tensor of shape {tuple(t.shape)} is one RGB image (C,H,W) or {t.shape[0]} "
                             "grayscale images (N,H,W), and this is a 1-channel model: pass images as x[:, None] "
                             "(N,1,H,W); convert an RGB image to grayscale first")
        if channels == 1:
            return t[:, None], True
        raise _channels_error(t, channels_last, channels)
    if t.ndim == 4:
        if channels is not None and t.shape[-1 if channels_last else 1] != channels:
            raise _channels_error(t, channels_last, channels)  # (Normalize's error would name the shape permuted)
        return t.permute(0, 3, 1, 2) if channels_last else t, True
    gray = "(H,W), " if channels in (None, 1) else ""  # (a colour model takes no 2-d image)
    layout = f"{gray}(H,W,C) or (N,H,W,C) for ndarrays and PIL" if channels_last else f"{gray}(C,H,W) or (N,C,H,W)"
    raise ValueError(f"infer: can't read an image of shape {tuple(t.shape)}" + (f" for a {channels}-channel model"
                     if channels else "") + f"; give {layout}" + (", or (N,H,W)" if channels == 1 else ""))


def _flat(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(N, H, W), and whether `t` was a batch, for loaders whose items are (H,W) images: no channel dim to add."""
    if t.ndim in (2, 3):
        return (t[None], False) if t.ndim == 2 else (t, True)
    raise ValueError(f"infer: the loaders' items are (H,W) images without a channel dim (dls.item_shape has 2 dims), "
                     f"so infer takes one (H,W) image or an (N,H,W) batch; got shape {tuple(t.shape)}"
                     + (": drop the channel dim, x[:, 0]" if t.ndim == 4 and t.shape[1] == 1 else ""))


def to_batch(items: Any, normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
             channels: int | None = None, transformed: bool = False,
             flat: bool = False) -> tuple[torch.Tensor, bool]:
    """One item or a batch of raw images as one model-input batch (N, C, H, W), and whether `items` was a batch.

    Tensors are (H,W), (C,H,W) or (N,C,H,W); ndarrays and PIL images (H,W), (H,W,C) or (N,H,W,C); with one
    channel, (N,H,W) is a batch (a tensor of N 3 or 4, maybe an RGB image, is refused); a list or tuple of items
    of one dtype is a batch. With `normalize` (`dls.normalize`) the
    items must be uint8 pixels, normalized as the loaders' were; without it, already-prepared float inputs, or,
    `transformed` (validation transforms of the learner prepare the loaders' batches), items as the loaders give
    them. `channels` (the model's, when `normalize` has no per-channel mean) is what PIL images are converted to.
    `flat`: the loaders' items are (H,W) images without a channel dim (`dls.item_shape` of 2 dims), and so is the
    batch, (N, H, W): (H,W) is one item, (N,H,W) a batch, a PIL image is read as grayscale.
    """
    channels = channels or _channels(normalize)  # (the items' own: one mean may serve every channel, broadcast)

    def read(item: Any) -> tuple[torch.Tensor, bool]:
        return _flat(_as_tensor(item, 1)[0]) if flat else _canonical(*_as_tensor(item, channels), channels)
    if isinstance(items, (list, tuple)):
        if not items:
            raise ValueError("infer got an empty list: pass one item or a batch of items")
        parts = [read(item) for item in items]
        if any(batched for _, batched in parts):
            raise ValueError("infer takes a list of single items; a list item here is itself a batch")
        shapes = {tuple(x.shape[1:]) for x, _ in parts}
        if len(shapes) > 1:
            raise ValueError(f"infer: the items of a batch need one shape; got {sorted(shapes)}")
        dtypes = sorted({str(x.dtype) for x, _ in parts})
        if len(dtypes) > 1:  # torch.cat would promote them: uint8 pixels among floats would go in as 0-255 floats
            raise TypeError(f"infer: the items of a batch need one dtype; got {', '.join(dtypes)}: give them all "
                            "as the loaders' items are (raw uint8 pixels, or floats prepared as the loaders' are)")
        x, batched = torch.cat([x for x, _ in parts]), True
    else:
        x, batched = read(items)
    if not len(x):
        raise ValueError(f"infer got a batch of no items (shape {tuple(x.shape)}): pass one item or a batch of some")
    # the layout the loaders' batches have, so the numbers are the same (contiguous() keeps the strides of a
    # permuted channel of 1, which counts as contiguous)
    standard = tuple(math.prod(x.shape[i + 1:]) for i in range(x.ndim))
    x = x if x.stride() == standard else x.clone(memory_format=torch.contiguous_format)
    if normalize is not None:
        if x.dtype != torch.uint8:
            raise TypeError(f"infer takes raw uint8 pixels (0-255), which it normalizes as the loaders did "
                            f"(dls.normalize); got {x.dtype}. {_to_pixels(x)}; pass already-normalized inputs to "
                            "learn.get_preds(dl=[(x,)]) instead.")
        # (flat items, (N, H, W): normalized as one channel each, not as N channels)
        return (normalize(x[:, None])[:, 0] if flat else normalize(x)), batched
    if not x.is_floating_point() and not transformed:
        raise TypeError(f"this learner's data carries no normalization (dls.normalize is None), and nothing that "
                        f"prepares its batches takes raw pixels (no validation transform, BatchTransformCB(on_val="
                        f"True)), nor are the loaders' items integer pixels (their dtype is float, or unknown), so "
                        f"infer passes inputs to the model as they are and can't scale {x.dtype} pixels: give float "
                        "inputs prepared as the loaders' items are. If the loaders' items are raw pixels like these "
                        "(their dtype unknown: a collate of one's own), say so: learn.dls = DataLoaders(train, valid, "
                        "item_dtype=torch.uint8). DataLoaders(..., normalize=(mean, std)) (get_dls does this) lets "
                        "infer take raw pixels, but only if the loaders' items were normalized with that mean and std "
                        "(otherwise the model would see them normalized in a way it never was)")
    return x, batched


def _integer(dtype: Any) -> bool:
    """Whether `dtype` (the loaders' item dtype, maybe None) is an integer one: raw pixels."""
    return isinstance(dtype, torch.dtype) and not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def infer(learn: Learner, items: Any, bs: int = 256) -> Prediction:
    """Class index, class name and probabilities (softmax) for one raw image, or per item of a batch of them.

    Items are read by `to_batch` (uint8 pixels, normalized with `learn.dls.normalize` when the loaders carry
    it; otherwise items as the loaders give them: integer pixels, cast to the loaders' integer dtype, where those
    are (a validation transform, `BatchTransformCB(on_val=True)`, a callback of yours with `inference = True`, or
    the model prepares them; a model given wider ones than uint8 takes only their dtype, whose scale infer can't
    tell), else already-normalized float tensors), then run through the learner's
    predict path in batches of `bs` (`get_preds`), which leaves the learner as it was. For a single-input
    classifier; for anything else use `learn.get_preds(dl=[(xb,)])`.
    """
    if learn.n_inp != 1:
        raise ValueError(f"infer takes one input per item, but this learner's batches have n_inp={learn.n_inp}; "
                         "use learn.get_preds(dl=[(x1, x2, ...)]) instead")
    check_count("infer: bs", bs, what=" (items per batch)")
    dls = getattr(learn, "dls", None)
    expected = getattr(dls, "item_shape", None)
    if expected is not None and len(expected) not in (2, 3):
        raise ValueError(f"infer is for images, (C,H,W) or (H,W) items, and the loaders' items are of shape "
                         f"{expected}: for other inputs use learn.get_preds(dl=[(x,)]) with x prepared as the loaders' "
                         "items are (its act= turns the outputs into probabilities)")
    # the items go through the learner's inference callbacks (get_preds): a validation transform, or a callback of
    # the user's, prepares raw pixels as it prepares the loaders' batches, if those are raw pixels too (the loaders'
    # item dtype, which export keeps); one written for float items would get pixels it never saw
    dtype = getattr(dls, "item_dtype", None)  # (None: an older export, an iterable dataset: unknown)
    # (the course's BatchTransformCB, from miniai._course_defs, takes part only with on_val: as a user's callback)
    prepared = any(cb.on_val if isinstance(cb, BatchTransformCB) else type(cb).__module__ == "miniai._course_defs"
                   or not type(cb).__module__.startswith("miniai.") for cb in participants(learn))
    # any integer dtype is raw pixels: uint8, or int64 as a HF uint8 column read with_format('torch') gives them
    pixels = _integer(dtype)
    name = str(dtype).removeprefix("torch.")
    normalize = getattr(dls, "normalize", None)
    if normalize is not None and pixels:  # infer would normalize, then what prepares the batches too
        raise ValueError(f"dls.normalize says how raw pixels become the loaders' items, but the loaders give {name} "
                         "items (raw pixels) themselves: infer would normalize new items and the learner's callbacks "
                         "would prepare them again, twice. If a callback (BatchTransformCB(on_val=True)) prepares the "
                         "batches, build the DataLoaders with normalize=None; if the model takes raw pixels, too")
    x, batched = to_batch(items, normalize, channels=expected[0] if expected is not None and len(expected) == 3
                          else None, transformed=pixels or prepared and dtype is None,
                          flat=expected is not None and len(expected) == 2)
    if prepared and dtype is None and normalize is None and not x.is_floating_point():
        raise TypeError(f"infer got {x.dtype} pixels for a learner whose callbacks prepare the batches, and can't "
                        "tell whether the loaders' items are raw pixels like these or already floats (their dtype "
                        "is unknown): a transform written for 0-1 floats would get 0-255 values. If the loaders' "
                        "items are raw pixels, say so, learn.dls = DataLoaders(train, valid, item_dtype=torch.uint8);"
                        " otherwise pass float items prepared as the loaders' are")
    if pixels:  # the loaders' items are raw pixels (normalize is None: refused above), and the learner takes them
        # so: its validation transforms, or the model
        if x.is_floating_point():
            raise TypeError(f"the loaders give {name} items (0-255 pixels) to this learner, and infer got {x.dtype}: "
                            "what takes the loaders' pixels (a validation transform, or the model) would misread "
                            "them. Convert 0-1 floats with (x * 255).round().to(torch.uint8), 0-255 values stored as "
                            "floats with x.round().to(torch.uint8)")
        if x.dtype != dtype:  # (uint8 for int64 items, say): the transform or model gets the loaders' dtype
            if not prepared and x.dtype == torch.uint8:  # the model takes the loaders' items as they are: wider
                # ones may be on another scale (16-bit, 0-65535)
                raise TypeError(f"the loaders give {name} items, which the model takes as they are, and infer got "
                                "uint8: it can't tell whether the loaders' values are 0-255 pixels too (or 16-bit "
                                f"ones, 0-65535): give items as the loaders' are, on their scale, e.g. "
                                f"x.to(torch.{name}) for 0-255 ones")
            info = torch.iinfo(dtype)  # (a value the dtype can't hold would wrap around)
            if x.numel() and (x.min() < info.min or x.max() > info.max):
                raise ValueError(f"infer: the loaders give {name} items to this learner, and these {x.dtype} values "
                                 f"({x.min().item()} to {x.max().item()}) don't fit in {name}: give pixels as the "
                                 "loaders' items are")
            x = x.to(dtype)
    if expected is not None and tuple(x.shape[1:]) != expected:  # a model that pools would predict anyway
        raise ValueError(f"infer: the model was trained on items of shape {expected}; got {tuple(x.shape[1:])}: "
                         "resize them as the training images were (e.g. torchvision.transforms.functional.resize)")
    weight = model_dtype(learn.model)
    if x.is_floating_point() and weight is not None and x.dtype != weight:  # a model halved (or doubled) to ship:
        x = x.to(weight)  # its own dtype, as the loaders' floats would have been cast for it
    preds, _ = get_preds(learn, dl=[(x[i:i + bs],) for i in range(0, len(x), bs)])
    if isinstance(preds, torch.Tensor) and (preds.ndim == 1 or preds.ndim == 2 and preds.shape[1] == 1):
        raise ValueError(f"infer gives class probabilities, a softmax over one output per class, and this model gives "
                         f"one output per item {tuple(preds.shape)} (a softmax of it is 1.0): a binary model? Its "
                         "probability of the positive class for prepared inputs x is "
                         "torch.sigmoid(learn.get_preds(dl=[(x,)])[0])")
    if not isinstance(preds, torch.Tensor):  # ((logits, aux), a dict: which part are the class scores?)
        raise ValueError(f"infer is for classifiers with one output per class, and this model returns a "
                         f"{type(preds).__name__}: use learn.get_preds(dl=[(x,)], act=...) picking the logits out")
    # (a softmax model's own probabilities: as they are)
    probs = class_probs(preds, learn.model) if preds.ndim == 2 else torch.softmax(preds.float(), dim=1)
    bad = int((~probs.isfinite()).any(1).sum()) if probs.ndim == 2 else 0
    if bad:  # argmax puts NaN on top: a label would read as an answer
        weight = nonfinite_weight(unwrap(learn.model))
        raise ValueError(f"infer: the model's outputs are not finite (NaN or inf) for {bad} of {len(probs)} items: "
                         + (f"its weights are not ({weight} first): load good ones (a checkpoint's)" if weight else
                            "its weights are finite, so the inputs are not (NaN or inf), or too large"))
    classes = getattr(dls, "classes", None)
    classes = None if classes is None or not len(classes) else list(classes)  # (an array's truth is ambiguous)
    if probs.ndim != 2 or (classes and probs.shape[1] != len(classes)):
        raise ValueError(f"infer is for classifiers with one output per class: the model gives outputs of shape "
                         f"{tuple(probs.shape[1:])} per item" + (f", {probs.shape[1]} outputs per item for "
                         f"{len(classes)} classes ({len(classes)} names in dls.classes)" if classes else "")
                         + "; use learn.get_preds(dl=[(x,)]) for other models")
    index = preds.argmax(1)  # the model's class, as Accuracy counts it (float32's softmax can round a near tie)
    labels = [classes[i] if classes else str(i) for i in index.tolist()]
    return Prediction(index, labels, probs) if batched else Prediction(int(index[0]), labels[0], probs[0])


# ---------------------------------------------------------------- export / load_learner

def export(learn: Learner, path: str | os.PathLike = "export.pkl") -> Path:
    """Write what inference needs to one file with `torch.save`, for `load_learner`; returns the path.

    The file pickles: the model module itself (class and weights, unwrapped from DDP/compile), `dls.classes`,
    `dls.normalize`, `n_inp`, `loss_func` (if it pickles; else None, with a warning) and the callbacks of the
    predict path (`Callback.inference`, predict/get_loss owners) except DeviceCB; no optimizer, data, training
    callbacks or history (one of those callbacks holding the learner, its optimizer, data or a loader is refused).
    Pickle stores classes and functions by name, so the model's class (and any custom normalize, loss or callback)
    must be importable under the same module path where the file is loaded (defined in a module, not a notebook
    cell or lambda); and loading unpickles code: load only files you trust.
    Under DDP every rank holds the same model and rank 0 alone writes; the others return at once, before the file
    is written (no collective, so rank 0 may export alone): `barrier()` on every rank before loading it on them.
    """
    for step in ("predict", "get_loss"):
        own = getattr(type(learn), step, None)  # the base Learner has none; TrainLearner's is what load_learner has
        if own not in (None, getattr(TrainLearner, step)) and not any(step in cb.owns_steps for cb in learn.cbs):
            raise TypeError(f"{type(learn).__name__} defines its own {step}, which load_learner (it builds a "
                            f"TrainLearner) would not have: move it into a callback with owns_steps=('{step}',), "
                            "which export saves")
    unsaid = left_out(learn, participants(learn), "export")
    if unsaid:  # (the loaded learner, in another process, could not say so: its predictions would differ unsaid)
        raise ValueError(unsaid)
    loss_func = learn.loss_func
    try:
        pickle.dumps(loss_func)
    except Exception as e:  # noqa: BLE001 -- a lambda, a local function, ...: the learner still exports
        warn(f"export: loss_func can't be pickled ({e}); the loaded learner has none, so get_preds("
             "with_loss=True) won't work there. Use a module-level function or an nn loss.")
        loss_func = None
    dls = getattr(learn, "dls", None)
    bundle = {"format": _FORMAT, "version": _VERSION, "torch": torch.__version__,
              "model": unwrap(learn.model), "classes": getattr(dls, "classes", None),
              "normalize": getattr(dls, "normalize", None), "item_shape": getattr(dls, "item_shape", None),
              "item_dtype": getattr(dls, "item_dtype", None),
              "n_inp": learn.n_inp, "loss_func": loss_func,
              "cbs": [cb for cb in participants(learn) if not isinstance(cb, DeviceCB)]}
    bundle["code"] = _class_code(bundle["model"], [*bundle["cbs"], bundle["normalize"], loss_func])
    lazy = lazy_tensors(bundle["model"])
    if lazy:  # (exported so, each load would make new random weights)
        raise ValueError(f"export: the model's {', '.join(lazy[:4])}{', ...' * (len(lazy) > 4)} "
                         f"{'is' if len(lazy) == 1 else 'are'} not made yet: a lazy layer makes its weights at its "
                         "first forward. Train it first, or run one batch through it: learn.summary(xb=...)")
    _check_kept_out(learn, bundle["cbs"])
    mains = _in_main(bundle)
    if mains:  # pickled by name: only a process whose __main__ defines them too can load them
        warn(f"export: {', '.join(mains)} {'is' if len(mains) == 1 else 'are'} defined in the running script "
             "or notebook (__main__): load_learner finds it only where __main__ defines it too (the same "
             "script or notebook). To load it anywhere, move it into a module you import.")
    if str(path).endswith(("/", os.sep)):  # (Path would drop the separator and write a file of the directory's name)
        raise IsADirectoryError(f"export writes one file, and {str(path)!r} ends in a separator, a directory: give a "
                                f"file name, e.g. learn.export({str(Path(path) / 'export.pkl')!r})")
    bad = nonfinite_weight(unwrap(learn.model))
    if bad is not None:
        raise ValueError(f"export: the model's weights are not finite (NaN or inf: {bad} first), so every "
                         "prediction of the loaded learner would be NaN: export a model trained to finite weights "
                         f"(load a good checkpoint's: {weights_call(learn, 'path', quoted=False)})")
    path = Path(path).expanduser()  # ('~/m.pkl': the home directory, as a shell reads it)
    path = link_target(path)
    if path.is_dir():  # (os.replace would fail naming its temporary file)
        raise IsADirectoryError(f"export writes one file, and {path} is a directory: give a file name, e.g. "
                                f"learn.export({str(path / 'export.pkl')!r})")
    if path.exists() and not tagged(path, _FORMAT):  # (an earlier export is replaced: a run's checkpoint never)
        raise FileExistsError(f"{path} already exists and is no miniai export: export to another path, or remove "
                              "it first")
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)  # as save_checkpoint does
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # torch's zip reader checks no CRC: a weight a bad copy changed would load without a word
    bundle["checksum"], bundle["normalize_checksum"] = (byte_sums(part) for part in _guarded(bundle))
    # hooks a fit registered (ActivationStats) are the fit's, not the model's: not exported (a pruning mask's or
    # spectral norm's own hooks are, as part of the model)
    hooks = [(m, {i: m._forward_hooks.pop(i) for i in list(m._forward_hooks) if i in HOOK_IDS})
             for m in bundle["model"].modules()]
    try:
        torch.save(bundle, tmp)
        os.replace(tmp, path)  # never a half-written export under the real name
    except RuntimeError as e:
        if "parametrized modules" not in str(e):
            raise
        raise TypeError(f"learn.export: {e}. The model has parametrized layers (torch.nn.utils.parametrizations' "
                        "weight_norm, spectral_norm, orthogonal), which torch saves through state_dict() only: "
                        "export a copy with them folded into plain weights, m = copy.deepcopy(learn.model), then "
                        "torch.nn.utils.parametrize.remove_parametrizations(layer, 'weight') for each such layer of "
                        "m, and learn.model = m; or save learn.model.state_dict() and rebuild the model to load it"
                        ) from e
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise TypeError(f"learn.export could not pickle {_culprit(bundle)}: {e}. Everything exported must be "
                        "importable by name where it is loaded: use module-level functions and classes instead of "
                        "lambdas or local ones, or remove the callback first (learn.rm_cb(cb))") from e
    finally:
        tmp.unlink(missing_ok=True)
        for m, ours in hooks:
            m._forward_hooks.update(ours)
    return path


def _in_reading(error: BaseException) -> bool:
    """Whether `error` came from reading the file (torch, the unpickler), not from code it unpickles (a frame of
    none of those: a model's __setstate__)."""
    if isinstance(error, (pickle.UnpicklingError, EOFError)):
        return True
    readers = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(__file__) + os.sep, pickle.__file__)
    return all(frame.f_code.co_filename.startswith(readers) for frame in frames(error))


def _guarded(bundle: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The tensors an export's checksums cover: the model's state (weights, buffers, extra state's tensors), and
    miniai's Normalize's mean and std (what another normalization pickles of itself is its own: not covered)."""
    normalize = bundle.get("normalize")
    return (list(tensors_in(bundle["model"].state_dict())),
            [normalize.mean, normalize.std] if type(normalize) is Normalize else [])


def _class_code(model: torch.nn.Module, others: list[Any] = ()) -> dict[str, str]:
    """A digest of the source of each class of the model's modules and of `others` (the callbacks, normalization
    and loss exported beside it), and of their base classes, that is not torch's or Python's, by its importable
    name: pickle stores the classes by name, so one changed since the export would compute something else (a
    function of one's own that forward calls is not seen)."""
    code = {}
    objects = [*model.modules(), *(o for o in others if o is not None)]
    for cls in {c for o in objects for c in type(o).__mro__}:
        top = cls.__module__.split(".")[0]
        if top not in ("torch", "builtins") and top not in sys.stdlib_module_names:
            try:
                source = inspect.getsource(cls)
                code[f"{cls.__module__}.{cls.__qualname__}"] = hashlib.sha256(source.encode()).hexdigest()
            except (OSError, TypeError):  # no source to read (a class made at run time, a notebook's): no check
                pass
    return code


class _MainFinder(pickle.Pickler):
    """Pickles to nowhere, noting the classes and functions it would store by a name in `__main__`, and whether it
    meets one of the objects `kept_out` (the learner, its optimizer and data); tensors are skipped (their data is no
    name, and copying it would cost the export's size again)."""

    def __init__(self, kept_out: tuple[Any, ...] = ()) -> None:
        super().__init__(io.BytesIO())
        self.found: set[str] = set()
        self.kept_out, self.met = {id(o) for o in kept_out if o is not None}, False

    def persistent_id(self, obj: Any) -> Any:
        return id(obj) if isinstance(obj, (torch.Tensor, torch.UntypedStorage)) else None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType)) and getattr(obj, "__module__", None) == "__main__":
            self.found.add(obj.__qualname__)
        self.met = self.met or id(obj) in self.kept_out
        return NotImplemented  # pickled as usual


def _in_main(bundle: dict[str, Any]) -> list[str]:
    """The names in `__main__` the export would need where it is loaded (none if it does not pickle: said later)."""
    finder = _MainFinder()
    try:
        finder.dump(bundle)
    except Exception:  # noqa: BLE001 -- torch.save then names what fails to pickle
        pass
    return sorted(finder.found)


def _check_kept_out(learn: Learner, cbs: list[Any]) -> None:
    """Raise if an exported callback holds the learner, its optimizer, data or a loader: they would be exported."""
    dls = getattr(learn, "dls", None)
    kept_out = (learn, learn.opt, dls, getattr(dls, "train", None), getattr(dls, "valid", None))
    for cb in cbs:
        finder = _MainFinder(kept_out)
        try:
            finder.dump(cb)
        except Exception:  # noqa: BLE001 -- torch.save then names what fails to pickle
            continue
        if finder.met:
            raise TypeError(f"export: the callback {type(cb).__name__} holds the learner (or its optimizer, data or a "
                            "loader), so its optimizer, data and history would be exported with it: callbacks get "
                            "the learner as an argument; drop what it keeps (del cb.learn), or remove the callback")


def _culprit(bundle: dict[str, Any]) -> str:
    """Which part of the bundle fails to pickle (only asked after torch.save failed)."""
    for key in ("model", "normalize", "cbs"):
        parts = bundle[key] if key == "cbs" else [bundle[key]]
        for part in parts:
            try:
                pickle.dumps(part)
            except Exception:  # noqa: BLE001
                return f"the callback {type(part).__name__}" if key == "cbs" else f"the {key}"
    return "the learner's parts"


def load_learner(path: str | os.PathLike, device: str | torch.device = "cpu") -> TrainLearner:
    """A learner for inference from `export`'s file: the model in eval mode on `device`, classes, normalization.

    It is a `TrainLearner` with a `DeviceCB(device)` and the exported predict-path callbacks; its `dls` hold no
    loaders, only `classes` and `normalize`, so `infer(x)` works and `get_preds` takes `dl=`. The export keeps the
    model, not how it was trained: to train on, give it loaders, an lr and the optimizer you want (`learn.opt_func
    = optim.AdamW; learn.fit(1, lr=...)`; the default is plain SGD); the NaN guard is on. This unpickles code
    (`torch.load(weights_only=False)`):
    only load files you trust, with the model's class importable as it was at export.
    """
    check_device(device, f"load_learner(device={str(torch.device(device))!r})")
    # on the CPU first: torch.load can't map storages to an indexed CPU device ('cpu:0'); .to() below can
    try:
        bundle = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=False)
    except (AttributeError, ImportError) as e:  # (pickle's "Can't get attribute 'Net' on <module ...>")
        raise type(e)(f"{path} holds the model's class by name, and it can't be found here ({e}): load it where "
                      "that class (and any custom loss or callback exported) is importable under the module path it "
                      "had at the export, with the code it had then") from e
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError) as e:  # (cut short, or no pickle)
        if not _in_reading(e):  # raised by code the file unpickles (a model's __setstate__): its own error
            raise
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} can't be read as a miniai export ({cause}): it is damaged (cut short, changed) "
                         "or no export; learn.export(path) writes one") from e
    if not isinstance(bundle, dict) or bundle.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a miniai export (learn.export(path) writes one); a checkpoint loads with "
                         "miniai.load_checkpoint, a state_dict with model.load_state_dict")
    if bundle["version"] > _VERSION:
        raise ValueError(f"{path} is an export of version {bundle['version']}, newer than this miniai reads "
                         f"({_VERSION}): upgrade miniai")
    missing = [k for k in ("model", "classes", "normalize", "n_inp", "loss_func", "cbs") if k not in bundle]
    if missing:
        raise ValueError(f"{path} is an incomplete miniai export: it has no {', '.join(missing)}. Export the learner "
                         "again (learn.export(path))")
    saved, parts = (bundle.get("checksum"), bundle.get("normalize_checksum")), _guarded(bundle)  # (older: none)
    if saved[1] is None and saved[0] is not None and checksums_match(saved[0], parts[0] + parts[1]):
        saved = (None, None)  # (an export of a miniai whose one checksum covered both)
    if any(sums is not None and not checksums_match(sums, part) for sums, part in zip(saved, parts)):
        raise ValueError(f"{path} is damaged: its weights' checksums differ from those its export wrote (a bad "
                         "copy, disk or download): copy it again, or export it again")
    now = _class_code(bundle["model"], [*bundle["cbs"], bundle["normalize"], bundle["loss_func"]])
    changed = sorted(name for name, digest in bundle.get("code", {}).items() if now.get(name, digest) != digest)
    if changed:  # (exports before the digests have none)
        warn(f"{', '.join(changed)} {'has' if len(changed) == 1 else 'have'} changed since {path} was exported (its "
             "code differs from the code it had then): the exported weights are loaded into the new code, which may "
             "compute something else. Load it with the code of the export, or export the learner again")
    model = bundle["model"].to(device).eval()
    dls = DataLoaders(None, None, classes=bundle["classes"], normalize=bundle["normalize"],
                      item_shape=bundle.get("item_shape"),  # exports before item_shape have none
                      item_dtype=bundle.get("item_dtype"))
    return TrainLearner(model, dls, bundle["loss_func"], lr=None, cbs=[DeviceCB(device), *bundle["cbs"]],
                        n_inp=bundle["n_inp"])
