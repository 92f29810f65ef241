"""Image grids for notebooks and scripts: every function returns the Figure (but `plot_lrs`, a preview of a schedule,
which returns its lrs) and none calls plt.show().

Imports nothing from miniai but `schedulers` (itself standalone, for plot_lrs). Under a headless backend (Agg)
the returned Figure can be `savefig`-ed.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .checks import check_count
from .schedulers import lr_trajectory

__all__ = ["show_image", "show_images", "get_grid", "subplots",
           "plot_lr_find", "plot_color_dim", "plot_dead_chart", "plot_act_stats",
           "plot_recorder", "plot_lrs", "plot_losses", "plot_confusion_matrix", "show_predictions"]


def _to_hwc(im: Any) -> np.ndarray:
    """A tensor/array image as something imshow draws: [H,W] for one channel, [H,W,C] in [0,1] for colour.

    A 3-D tensor is [C,H,W] (torch's layout) when its first size is 1, 3 or 4, whatever the others are (a 3×4×4 RGB
    patch); an array is [H,W,C] (matplotlib's) unless only its first size can be channels (`tensor.numpy()`)."""
    chw = isinstance(im, torch.Tensor) and im.ndim == 3 and im.shape[0] in (1, 3, 4)
    if isinstance(im, torch.Tensor):  # its dtype kept: uint8 pixels are drawn as such, as an ndarray's are
        im = im.detach().cpu()
        im = (im.float() if im.is_floating_point() or im.dtype == torch.bool else im).numpy()
    im = np.asarray(im)
    if chw or im.ndim == 3 and im.shape[0] in (1, 3, 4) and im.shape[-1] not in (1, 3, 4):
        im = im.transpose(1, 2, 0)  # CHW (torch) -> HWC (matplotlib)
    if im.ndim == 3 and im.shape[-1] == 1:
        im = im[..., 0]
    if im.ndim == 3 and im.dtype.kind == "f" and (im.min() < 0 or im.max() > 1):
        # normalized colour images fall outside [0,1], where imshow would clip them; rescale for display
        im = (im - im.min()) / max(float(im.max() - im.min()), 1e-12)
    return im


_GREYS = ("gray", "gray_r", "Greys", "Greys_r", "binary", "binary_r", "gist_gray", "gist_yarg")  # grey maps:
# a uint8 image in one is pixels (0-255); in another (a label mask's tab10) its values are what the map spreads


def show_image(im: Any, ax: Axes | None = None, figsize: tuple[float, float] | None = None, title: str | None = None,
               noframe: bool = True, **kwargs: Any) -> Figure:
    """Draw one image ([C,H,W] or [H,W] tensor/array; one channel in grey unless `rcParams['image.cmap']` or
    `cmap` says otherwise) on `ax` or a new figure (the course's argument order: `show_image(im, ax, figsize)`)."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    im = _to_hwc(im)
    if im.ndim == 2 and plt.rcParams["image.cmap"] == matplotlib.rcParamsDefault["image.cmap"]:
        kwargs.setdefault("cmap", "gray")  # one channel in grey, unless you chose a colour map (rcParams or cmap=)
    cmap = kwargs.get("cmap", plt.rcParams["image.cmap"])
    cmap = getattr(cmap, "name", cmap)  # (a Colormap, or its name)
    if im.ndim == 2 and im.dtype == np.uint8 and cmap in _GREYS and "norm" not in kwargs:  # grey pixels on their
        kwargs = {"vmin": 0, "vmax": 255, **kwargs}  # scale (imshow stretches one channel: all white drawn black)
    ax.imshow(im, **kwargs)
    if title is not None:
        ax.set_title(title)
    if noframe:
        ax.axis("off")
    return ax.figure


def get_grid(n: int, nrows: int | None = None, ncols: int | None = None, title: str | None = None,
             weight: str = "bold", size: float = 14, figsize: tuple[float, float] | None = None, imsize: float = 2.0,
             suptitle: str | None = None, **kwargs: Any) -> tuple[Figure, np.ndarray]:
    """A figure with a grid of at least `n` axes (near-square by default) and the flat array of the first n.

    The course's parameters in the course's order: `title` is a figure title drawn with font `weight` and `size`,
    `suptitle` a plain one; the figure is `figsize`, else `imsize` inches per cell. Other keyword arguments go to
    `plt.subplots`.
    """
    if n < 1:
        raise ValueError(f"get_grid needs n >= 1 images to lay out; got {n}")
    for name, value in (("nrows", nrows), ("ncols", ncols)):
        if value is not None:
            check_count(f"get_grid {name}", value, what=" (or None: computed)")
    if nrows is None and ncols is None:
        nrows = int(math.sqrt(n))
    if ncols is None:
        ncols = math.ceil(n / nrows)
    elif nrows is None:
        nrows = math.ceil(n / ncols)
    figsize = figsize or (ncols * imsize, nrows * imsize)
    if nrows * ncols < n:  # zip would draw the first nrows * ncols and drop the rest without a word
        raise ValueError(f"a grid of {nrows}x{ncols} has no room for {n} images: give more rows or columns, or "
                         "leave one of them out (it is computed)")
    fig, axs = plt.subplots(nrows, ncols, squeeze=False, figsize=figsize, **kwargs)
    for ax in axs.flat[n:]:
        ax.set_axis_off()  # unused cells stay blank
    if title is not None:  # (the course draws suptitle, then title over it)
        fig.suptitle(title, weight=weight, size=size)
    elif suptitle is not None:
        fig.suptitle(suptitle)
    return fig, axs.flatten()[:n]


def show_images(ims: Sequence[Any] | torch.Tensor, nrows: int | None = None, ncols: int | None = None,
                titles: Sequence[str] | None = None, imsize: float = 2.0, suptitle: str | None = None,
                **kwargs: Any) -> Figure:
    """Show a batch of images in a grid, with optional per-image titles; returns the Figure. `figsize` sizes the
    figure (as in the course); other keyword arguments go to each `show_image` (e.g. `cmap`)."""
    fig, axs = get_grid(len(ims), nrows, ncols, figsize=kwargs.pop("figsize", None), imsize=imsize,
                        suptitle=suptitle)
    titles = list(titles) if titles is not None else []
    if len(titles) > len(ims):
        raise ValueError(f"{len(titles)} titles for {len(ims)} images")
    titles += [None] * (len(ims) - len(titles))  # the images without one are drawn untitled (the course's way)
    for im, title, ax in zip(ims, titles, axs):
        show_image(im, ax=ax, title=title, **kwargs)
    return fig


# ---------------------------------------------------------------- training diagnostics (lr finder, activations)

def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], suggestions: dict[str, float] | None = None,
                 ax: Axes | None = None) -> Figure:
    """Loss against learning rate on a log axis, with each suggested lr marked on the curve; returns the Figure."""
    if ax is None:  # constrained: room for the axis labels
        _, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    ax.plot(lrs, losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    finite = losses[np.isfinite(losses)]
    if len(finite) > 1:
        # the last points above 3x the minimum (the finder's rule, on a median of 5) are the blow-up that stopped
        # it: let them leave the chart rather than squash the rest (the first losses, high too, stay in)
        low = finite.min()
        within = np.flatnonzero(finite <= (3 * low if low > 0 else low))  # (a loss of 0 or below: from its minimum)
        high = finite[:within[-1] + 1].max()
        pad = 0.05 * max(high - low, 1e-12)
        ax.set_ylim(low - pad, high + pad)
    for (name, lr), marker in zip((suggestions or {}).items(), "os^v<>"):
        if np.isfinite(lr) and len(lrs):
            i = int(np.argmin(np.abs(np.log(lrs) - np.log(lr))))
            ax.plot(lrs[i], losses[i], marker, label=f"{name}: {lr:.2g}")
    if suggestions:
        ax.legend()
    return ax.figure


def plot_color_dim(hists: Sequence[Any], value_range: tuple[float, float] = (0.0, 10.0),
                   labels: Sequence[str] | None = None, figsize: tuple[float, float] | None = None,
                   xlabel: str = "recorded batch") -> Figure:
    """One image per layer of log(1 + histogram counts): |activation| bins upwards, batches to the right.

    `hists[i]` is a [n_batches, bins] tensor or array: the course's "colorful dimension" plot. The x axis counts
    the recorded batches (ActivationStats's `every` skips some; it draws one pass's: `split`).
    """
    n = max(len(hists), 1)  # (matplotlib's default size, as before get_grid took the course's imsize)
    fig, axs = get_grid(n, figsize=figsize or ((6.4, 4.8) if n > 1 else (4.0, 3.0)))
    for i, (hist, ax) in enumerate(zip(hists, axs)):
        image = np.log1p(np.asarray(torch.as_tensor(hist, dtype=torch.float32)).T)
        extent = (-0.5, image.shape[1] - 0.5, *value_range) if image.size else None
        ax.imshow(image, origin="lower", aspect="auto", extent=extent)
        ax.set_title(labels[i] if labels else f"layer {i}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("|activation|")
    fig.tight_layout()
    return fig


def plot_dead_chart(fractions: Sequence[Any], labels: Sequence[str] | None = None, ax: Axes | None = None,
                    figsize: tuple[float, float] = (6, 4), xlabel: str = "recorded batch") -> Figure:
    """Per layer, the share of activations in the lowest histogram bin over the recorded batches (1.0: all near
    zero)."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    for i, frac in enumerate(fractions):
        ax.plot(np.asarray(torch.as_tensor(frac, dtype=torch.float32)), label=labels[i] if labels else f"layer {i}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share in lowest bin")
    if len(fractions):
        ax.legend()
    return ax.figure


def plot_act_stats(means: Sequence[Any], stds: Sequence[Any], labels: Sequence[str] | None = None,
                   figsize: tuple[float, float] = (10, 4), xlabel: str = "recorded batch") -> Figure:
    """Activation means (left) and standard deviations (right) per layer over the recorded batches; returns the
    Figure."""
    fig, axs = plt.subplots(1, 2, figsize=figsize)
    for i, (mean, std) in enumerate(zip(means, stds)):
        label = labels[i] if labels else f"layer {i}"
        axs[0].plot(np.asarray(torch.as_tensor(mean, dtype=torch.float32)), label=label)
        axs[1].plot(np.asarray(torch.as_tensor(std, dtype=torch.float32)), label=label)
    for ax, name in zip(axs, ("mean", "std")):
        ax.set_title(f"activation {name}")
        ax.set_xlabel(xlabel)
    if len(means):
        axs[0].legend()
    return fig


# --- schedules ---------------------------------------------------------------------------------------------------
def plot_recorder(recs: Mapping[str, Sequence[float]], ax: Axes | Sequence[Axes] | None = None,
                  figsize: tuple[float, float] | None = None) -> Figure:
    """Each recorded quantity (RecorderCB.recs: name -> one value per training batch) against the batch index.

    With `ax=None` one panel per quantity; with one Axes all on it (with a legend); or one Axes per quantity.
    """
    names = list(recs)
    if ax is None:
        fig, axs = plt.subplots(1, max(len(names), 1), squeeze=False, layout="constrained",
                                figsize=figsize or (4.0 * max(len(names), 1), 3.0))
        axs = list(axs.flat)
    elif isinstance(ax, Axes):
        axs = [ax] * len(names)
    else:
        axs = list(ax)
        if len(axs) != len(names):
            raise ValueError(f"got {len(axs)} axes for {len(names)} quantities ({', '.join(names)}): pass one each")
    for name, a in zip(names, axs):
        values = _rows(name, recs[name])
        a.plot(values, label=name if values.shape[1] == 1 else [f"{name}[{i}]" for i in range(values.shape[1])])
        a.set_xlabel("batch")
        a.set_title(name)
    if isinstance(ax, Axes) and names:
        ax.set_title(", ".join(names))  # one panel holds them all (each name's title replaced the one before)
        ax.legend()
    return axs[0].figure


def _rows(name: str, values: Sequence[Any]) -> np.ndarray:
    """A quantity's values as a (batches, k) array: one number a batch, or k of them (one per param group: a list,
    a tensor), each drawn as a line; a NaN (a batch it was not recorded at) stands for k of them."""
    rows = [np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=float).reshape(-1)
            for v in values]
    gaps = [len(r) == 1 and bool(np.isnan(r[0])) for r in rows]
    widths = sorted({len(r) for r, gap in zip(rows, gaps) if not gap} or {1})
    if len(widths) > 1:
        raise ValueError(f"{name!r} recorded values of {' and '.join(map(str, widths))} numbers: record one number "
                         "per batch, or as many every batch (one per param group), to plot it")
    return np.array([np.full(widths[0], np.nan) if gap else r for r, gap in zip(rows, gaps)]).reshape(len(rows),
                                                                                                   widths[0])


def plot_lrs(scheduler: Callable[..., Any], opt: torch.optim.Optimizer, n_steps: int, ax: Axes | None = None,
             **kwargs: Any) -> list[float]:
    """Preview a schedule without training: plot and return the lr of each of `n_steps` steps.

    `scheduler` is a scheduler class or any callable(opt, **kwargs), e.g.
    `plot_lrs(lr_scheduler.CosineAnnealingLR, opt, n_steps=120, T_max=100)`; each step records the lr, then steps
    the optimizer and the scheduler, as training does. Pass a fresh optimizer: the scheduler changes its lrs.
    Returns the lrs (the figure is `ax.figure`, or `plt.gcf()` when no ax is given).
    """
    lrs = lr_trajectory(scheduler, opt, n_steps, **kwargs)
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 3.0))
    ax.plot(lrs)
    ax.set_xlabel("step")
    ax.set_ylabel("lr")
    ax.set_title(getattr(getattr(scheduler, "func", scheduler), "__name__", type(scheduler).__name__))
    return lrs


# --- training curves ---------------------------------------------------------------------------------------------
def plot_losses(train_losses: Sequence[float], valid_losses: Sequence[float], valid_at: int | Sequence[int],
                ax: Axes | None = None, start: int = 0) -> Figure:
    """Train loss per batch and valid loss at the end of each epoch, against the batch index; `valid_at` is the
    number of training batches seen before each valid loss, its x (just past the last of them: after 7 batches,
    0..6, at 7; an int: batches per epoch, the same for every epoch), and
    `start` the index of the first train loss (a resumed run's losses begin after the epochs it did not train)."""
    if ax is None:  # constrained: room for the axis labels (the CLI's loss.png lost the bottom of 'batch')
        _, ax = plt.subplots(figsize=(6.0, 3.5), layout="constrained")
    if isinstance(valid_at, numbers.Integral):
        valid_at = [start + (i + 1) * valid_at for i in range(len(valid_losses))]
    ax.plot(range(start, start + len(train_losses)), list(train_losses), label="train")
    ax.plot(list(valid_at), list(valid_losses), "o-", label="valid")
    ax.set_xlabel("batch")
    ax.set_ylabel("loss")
    ax.legend()
    return ax.figure


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] | None = None, imsize: float = 3.0,
             suptitle: str | None = None, **kwargs: Any) -> tuple[Figure, np.ndarray]:
    """`plt.subplots` sized `imsize` inches per image (unless `figsize`), with an optional title; the axes always
    come as an array (one Axes too), as in the course."""
    if figsize is None:
        figsize = (ncols * imsize, nrows * imsize)
    fig, axs = plt.subplots(nrows, ncols, figsize=figsize, **kwargs)
    if suptitle is not None:
        fig.suptitle(suptitle)
    return fig, axs if isinstance(axs, np.ndarray) else np.array([axs])


# --- after the fit: interpretation (miniai.interpret) --------------------------------------------------------------
def plot_confusion_matrix(cm: Any, classes: Sequence[str] | None = None, normalize: bool = False,
                          ax: Axes | None = None, cmap: str = "Blues") -> Figure:
    """Counts of (actual row, predicted column) as an image with each number written in; `normalize`: row shares."""
    cm = np.asarray(torch.as_tensor(cm), dtype=float)
    if normalize:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)  # a class never seen keeps a row of zeros
    n = len(cm)
    if ax is None:
        side = max(4.0, 0.55 * n + 2)
        _, ax = plt.subplots(figsize=(side, side))
    ax.imshow(cm, cmap=cmap, interpolation="nearest")
    names = list(classes) if classes is not None else [str(i) for i in range(n)]
    ax.set_xticks(range(n), names, rotation=90)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    high = cm.max() / 2 if cm.size else 0
    for (i, j), value in np.ndenumerate(cm):
        ax.text(j, i, f"{value:.2f}" if normalize else f"{int(value)}", ha="center", va="center",
                color="white" if value > high else "black", fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def show_predictions(ims: Sequence[Any] | torch.Tensor, actual: Sequence[str], predicted: Sequence[str],
                     notes: Sequence[str] | None = None, nrows: int | None = None, ncols: int | None = None,
                     imsize: float = 2.0, suptitle: str | None = None, **kwargs: Any) -> Figure:
    """A grid of images titled 'actual / predicted' (and a line of `notes` each): green when right, red when wrong;
    `kwargs` go to `imshow` (vmin=0, vmax=1: every image on one scale)."""
    if not len(ims) == len(actual) == len(predicted) or notes is not None and len(notes) != len(ims):
        raise ValueError(f"show_predictions needs one label of each per image: {len(ims)} images, {len(actual)} "
                         f"actual, {len(predicted)} predicted" + (f", {len(notes)} notes" if notes is not None else ""))
    fig, axs = get_grid(len(ims), nrows, ncols, imsize=imsize, suptitle=suptitle)
    for i, (im, true, pred, ax) in enumerate(zip(ims, actual, predicted, axs)):
        show_image(im, ax=ax, **kwargs)
        title = f"{true} / {pred}" + (f"\n{notes[i]}" if notes is not None else "")
        ax.set_title(title, color="green" if true == pred else "red", fontsize=9)
    fig.tight_layout()
    return fig
