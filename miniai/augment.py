"""Batch augmentations: random crop, flip and erase on a whole (N,C,H,W) tensor, on whatever device it lives.

Each transform is a callable `x -> x` that keeps dtype and device (and the shape, but for a RandomCrop to another
size than the images': then validation sees other sizes than training), and draws one random choice per image
with tensor ops, never a Python loop over items. Randomness comes from torch's global generator for the
batch's device (so `set_seed` makes runs repeatable), or from the `generator` given at construction. A
generator on another device than the batch works too; its draws are made there and copied over, so give one
on the batch's device to avoid the copy.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .checks import check_count, check_number

# the course's miniai.augment had these two: they live elsewhere here, and __getattr__ (at the end) imports them
_COURSE_NAMES = ("summary", "capture_preds")
__all__ = ["RandomCrop", "RandomFlip", "RandomErase", "Compose", "batch_tfms", *_COURSE_NAMES]

BatchTransform = Callable[[torch.Tensor], torch.Tensor]


def _check_batch(x: torch.Tensor, who: str) -> None:
    """Raise a helpful error unless x is an (N,C,H,W) tensor."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        hint = (" Add a channel dim with x[:, None] for (N,H,W) images." if isinstance(x, torch.Tensor) and x.ndim == 3
                else " It transforms image batches: for other inputs write a transform of your own.")
        raise ValueError(f"{who} expects a batch tensor of shape (N,C,H,W); got {shape}.{hint}")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] > 4 and x.shape[2] > 4:  # (an image 1, 3 or 4 pixels wide with 5+
        # channels, 5+ high: hardly; a small feature map (N,16,4,4) is square)
        raise ValueError(f"{who} expects (N,C,H,W) batches; {tuple(x.shape)} looks like channels last (N,H,W,C), "
                         "whose last dim it would take for the width: pass x.permute(0, 3, 1, 2). If it is (N,C,H,W) "
                         f"{x.shape[-1]} pixel{'s' * (x.shape[-1] > 1)} wide on purpose (a signal (N,C,L,1)), give it "
                         "the long side last, x.transpose(2, 3)")


def _rand(shape: Sequence[int], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0,1) float32 numbers of `shape` on x's device, drawn from `generator` or the global RNG."""
    device = generator.device if generator is not None else x.device
    return torch.rand(tuple(shape), generator=generator, device=device).to(x.device)


def _randn(shape: Sequence[int], x: torch.Tensor, dtype: torch.dtype,
           generator: torch.Generator | None) -> torch.Tensor:
    """Standard-normal numbers of `shape` and `dtype` on x's device, drawn from `generator` or the global RNG."""
    device = generator.device if generator is not None else x.device
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype).to(x.device)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    pair = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    if len(pair) != 2:
        raise ValueError(f"RandomCrop size is an int >= 1 or a pair (h, w) of them; got {size!r}")
    return tuple(check_count(f"RandomCrop size {size!r}: each side", v, what=" (pixels)") for v in pair)


class RandomCrop:
    """Pad each side by `padding`, then cut a `size` crop at a random offset per image: (N,C,H,W) → (N,C,*size).

    `mode` is 'constant' (pads with `fill`, default 0: on `get_dls`' normalized images 0 is the mean pixel, a gray,
    not the black background, as in the course) or 'reflect'. With padding 0 and size (H,W) it is the identity.
    """

    def __init__(self, size: int | tuple[int, int], padding: int = 0, mode: str = "constant", fill: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        if mode not in ("constant", "reflect"):
            raise ValueError(f"RandomCrop mode must be 'constant' or 'reflect'; got {mode!r}")
        check_count("RandomCrop padding", padding, least=0, what=" (pixels added on each side)")
        check_number("RandomCrop fill", fill, least=-math.inf, what=" (the one value every channel is padded with; a "
                     "per-channel fill, torchvision's fill=(r, g, b), is not taken: pad with mode='reflect')")
        if mode == "reflect" and fill != 0:  # (it would be dropped without a word)
            raise ValueError(f"RandomCrop fill={fill!r} is the value mode='constant' pads with; mode='reflect' pads "
                             "with the image's own pixels: leave fill out, or use mode='constant'")
        self.size, self.padding, self.mode, self.fill, self.generator = _pair(size), padding, mode, fill, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, "RandomCrop")
        n, c = x.shape[:2]
        p = self.padding
        if p and self.mode == "constant":
            low, high = (0, 1) if x.dtype == torch.bool else (torch.iinfo(x.dtype).min, torch.iinfo(x.dtype).max) \
                if not x.is_floating_point() else (None, None)  # (a mask of bools: torch.iinfo has none)
            if low is not None and not (float(self.fill).is_integer() and low <= self.fill <= high):
                raise ValueError(f"RandomCrop fill={self.fill} can't be a {x.dtype} pixel (it would be cut to an "
                                 f"integer, or overflow): pass a whole number in the dtype's range")
            x = F.pad(x, (p, p, p, p), value=self.fill)
        elif p:
            if p >= min(x.shape[-2:]):  # (torch reflects inside the image only)
                raise ValueError(f"RandomCrop padding={p} with mode='reflect' needs images larger than it "
                                 f"{tuple(x.shape[-2:])}: lower padding or use mode='constant'")
            # (torch reflects no bools: a mask is padded as bytes)
            x = F.pad(x.byte(), (p, p, p, p), mode="reflect").bool() if x.dtype == torch.bool else \
                F.pad(x, (p, p, p, p), mode="reflect")
        ph, pw = x.shape[-2:]
        sh, sw = self.size
        if sh > ph or sw > pw:
            raise ValueError(f"RandomCrop size {self.size} is larger than the padded image ({ph}, {pw}); "
                             "lower size or raise padding")
        # One (row, col) offset per image, uniform over the valid positions.
        offsets = _rand((2, n), x, self.generator)
        oy = (offsets[0] * (ph - sh + 1)).long().clamp_max(ph - sh)
        ox = (offsets[1] * (pw - sw + 1)).long().clamp_max(pw - sw)
        rows = oy[:, None] + torch.arange(sh, device=x.device)  # (N, sh)
        cols = ox[:, None] + torch.arange(sw, device=x.device)  # (N, sw)
        # Flat index of every kept pixel, shared across channels: one gather cuts all N crops at once.
        idx = (rows[:, :, None] * pw + cols[:, None, :]).view(n, 1, sh * sw).expand(n, c, sh * sw)
        return _layout_of(x, x.flatten(2).gather(2, idx).view(n, c, sh, sw))

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding}, mode={self.mode!r})"


def _layout_of(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`out` in `x`'s memory format: a channels-last batch (DeviceCB(channels_last=True)) stays one."""
    last = x.ndim == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous()
    return out.contiguous(memory_format=torch.channels_last) if last else out


class RandomFlip:
    """Flip each image left-right with probability `p`: (N,C,H,W) → (N,C,H,W)."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= check_number("RandomFlip p", p, what=" (a probability in [0, 1])") <= 1.0:
            raise ValueError(f"RandomFlip p must be a probability in [0, 1]; got {p}")
        self.p, self.generator = p, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, "RandomFlip")
        flip = _rand((x.shape[0],), x, self.generator) < self.p
        return torch.where(flip[:, None, None, None], x.flip(-1), x)

    def __repr__(self) -> str:
        return f"RandomFlip(p={self.p})"


class RandomErase:
    """With probability `p` per image, overwrite one random rectangle: (N,C,H,W) → (N,C,H,W).

    Each rectangle side is 1 to `max_frac` of the image side, placed uniformly inside the image.
    `fill='noise'` (the course's choice) fills with normal noise matching the batch's mean and std,
    clamped to the batch's range, each channel's own (an RGB image's, or an image's and its depth map's joined by
    `BatchTransformCB(inputs='together')`), so the erased patch does not stand out in the statistics;
    `fill='zero'` fills with zeros. All channels of a pixel are erased together.
    """

    def __init__(self, p: float = 0.5, max_frac: float = 0.3, fill: str = "noise",
                 generator: torch.Generator | None = None) -> None:
        if not 0.0 <= check_number("RandomErase p", p, what=" (a probability in [0, 1])") <= 1.0:
            raise ValueError(f"RandomErase p must be a probability in [0, 1]; got {p}")
        frac = check_number("RandomErase max_frac", max_frac, what=" (a fraction of each image side, in (0, 1])")
        if not 0.0 < frac <= 1.0:
            raise ValueError(f"RandomErase max_frac is a fraction of each image side, in (0, 1]; got {max_frac}")
        if fill not in ("noise", "zero"):
            raise ValueError(f"RandomErase fill must be 'noise' or 'zero'; got {fill!r}")
        self.p, self.max_frac, self.fill, self.generator = p, max_frac, fill, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, "RandomErase")
        n, c, h, w = x.shape
        if not x.numel():  # (the batch's min and max below need values)
            return x
        u = _rand((5, n), x, self.generator)  # apply?, height, width, top, left: one draw per image each
        apply = u[0] < self.p
        # (rounded first: 0.29 * 100 is 28.999999999999996 in floats, and its side may be 29)
        hmax, wmax = (max(1, int(round(self.max_frac * side, 9))) for side in (h, w))
        eh = (u[1] * hmax).long().clamp_max(hmax - 1) + 1  # in [1, hmax]
        ew = (u[2] * wmax).long().clamp_max(wmax - 1) + 1
        top = (u[3] * (h - eh + 1)).long().clamp_max(h - eh)
        left = (u[4] * (w - ew + 1)).long().clamp_max(w - ew)
        ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        in_rows = (ys >= top[:, None]) & (ys < (top + eh)[:, None])  # (N, H)
        in_cols = (xs >= left[:, None]) & (xs < (left + ew)[:, None])  # (N, W)
        mask = (in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None])[:, None]  # (N, 1, H, W)
        if self.fill == "zero":
            return _layout_of(x, x.masked_fill(mask, 0))
        # Stats stay tensors (no .item()), so no host-device sync; integer images get float noise, rounded back.
        work = x.dtype if x.is_floating_point() else torch.float32
        xf = x.to(work)
        # (one channel: the batch's, as the course's RandErase; one value has no std)
        dims = {"dim": (0, 2, 3), "keepdim": True} if c > 1 else {}
        noise = _randn(x.shape, x, work, self.generator) * xf.std(**dims).nan_to_num(0.0) + xf.mean(**dims)
        noise = torch.minimum(torch.maximum(noise, xf.amin(**dims)), xf.amax(**dims))
        if not x.is_floating_point():
            noise = noise.round()
        return _layout_of(x, torch.where(mask, noise.to(x.dtype), x))

    def __repr__(self) -> str:
        return f"RandomErase(p={self.p}, max_frac={self.max_frac}, fill={self.fill!r})"


def check_transform(tfm: Any, who: str) -> None:
    """Refuse a transform's class given for an instance (BatchTransformCB(RandomFlip)): the batch would be its first
    argument, p or size, and fail at the first batch with a bare torch error."""
    cls = tfm.func if isinstance(tfm, functools.partial) else tfm  # (partial(RandomCrop, 8): a class still)
    if isinstance(cls, type):
        raise TypeError(f"{who} was given the class {cls.__name__}: pass an instance, {cls.__name__}(...) (e.g. "
                        "RandomFlip(), RandomCrop(28, 1)), which it calls on each batch's inputs")


class Compose:
    """Apply batch transforms in order: Compose(RandomCrop(28, 1), RandomFlip())(x)."""

    def __init__(self, *tfms: BatchTransform) -> None:
        for tfm in tfms:
            check_transform(tfm, "batch_tfms")
            if not callable(tfm):
                raise TypeError(f"batch_tfms takes callables x -> x (e.g. RandomFlip()); got {tfm!r}")
        self.tfms: list[BatchTransform] = list(tfms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for tfm in self.tfms:
            x = tfm(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({', '.join(map(repr, self.tfms))})"


def batch_tfms(*tfms: BatchTransform) -> Compose:
    """One callable that applies `tfms` in order to a batch tensor (a Compose)."""
    return Compose(*tfms)


def __getattr__(name: str) -> Any:
    """The fast.ai course's names for this module that live elsewhere in miniai (`summary`, `capture_preds`), and
    advice for those it has no counterpart of (`RandErase`...): the table is in miniai/_course.py."""
    from ._course import course_attr  # here: only names this module lacks need the table
    return course_attr(__name__, name)
