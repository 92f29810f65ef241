"""In-memory loaders: `TensorLoader` batches by slicing tensors (airbench style), `DataLoaders` pairs two loaders.

`get_dls()` is the default path: a dataset decoded once (`miniai.sources`, `miniai.cache`), normalized once,
and walked by `randperm` + slicing. `DataLoaders.from_dd` is the course-compatible adapter over any HF `DatasetDict`.
Imports nothing from miniai's callbacks or learner, so a plain torch loop can use it.
"""
from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import (DataLoader, IterableDataset, TensorDataset, default_collate, default_convert,
                              get_worker_info)

from .cache import load_normalized, load_tensors, normalized_split
from .checks import check_count, warn
from .sources import HF_NO_LABEL, LABEL_COLUMNS, VALID_SPLITS, check_labels, check_split_classes
from .utils import check_seed, rngs_kept

__all__ = ["TensorLoader", "Normalize", "DataLoaders", "get_dls", "collate_dict"]


_ORDERS = 2  # the seeded orders' rule: 1 seeded epoch e with seed + e, 2 with _epoch_seed(seed, e)


def _epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of epoch `epoch` of a loader seeded `seed`: mixed (a multiply by an odd 64-bit constant),
    not `seed + epoch`, with which seed s + 1 walks seed s's orders one epoch later; in torch's seed range."""
    return (seed * 0x9E3779B97F4A7C15 + epoch) % 2**64


class TensorLoader:
    """Batches `(xb, yb)` by slicing in-memory tensors; shuffled epochs are reproducible and resumable.

    The order of a shuffled loader:
    - `seed=None` (default): each `iter()` draws its permutation from torch's global RNG (one int64 draw seeds a
      `torch.Generator` for `randperm`, as torch's `RandomSampler` does). So `set_seed(s)` before a fit reproduces
      it, in this process or a new one, and a checkpoint, which saves the global RNG state, resumes it exactly.
    - `seed=<int>`: epoch e's order is `torch.randperm(n, generator=...)` seeded by mixing seed and e
      (`_epoch_seed`): a pure function of (seed, e) whatever the global RNG does; neighbouring seeds share no
      order. `epoch` counts `iter()` calls and `set_epoch(e)` sets it; the Learner calls `set_epoch` before each
      training pass with the epochs it has trained in all (`fit(1)` twice walks the orders `fit(2)` does), so a
      fresh learner's run replays the same orders.
    `state_dict()` is {seed, epoch, orders, shuffle, drop_last} (seed may be None; `orders` dates the rule for
    seeded orders). Every batch is a copy, so a transform may modify it in place. A sharded shuffled loader
    (`shard`) needs a seed, the same on every rank; DDPCB gives it one.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, bs: int = 1024, shuffle: bool = False,
                 seed: int | None = None, drop_last: bool = False) -> None:
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            raise TypeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}: convert them "
                            "first (torch.as_tensor(x), torch.as_tensor(y))")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        if seed is not None:
            check_seed(seed)  # (2**32 would walk seed 0's orders)
        if len(x) != len(y):
            raise ValueError(f"x and y need the same length, got {len(x)} and {len(y)}")
        bs = int(check_count("bs", bs, what=" (items per batch)"))
        self.x, self.y, self.bs, self.shuffle, self.drop_last = x, y, bs, shuffle, drop_last
        self.seed: int | None = None if seed is None else int(seed)
        self.epoch = 0
        self.rank, self.world_size, self.even = 0, 1, True

    @property
    def dataset(self) -> TensorDataset:
        """The held tensors as a `TensorDataset` (for code that reads `dl.dataset`)."""
        return TensorDataset(self.x, self.y)

    def _spans(self) -> Iterator[tuple[int, int]]:
        """(start, stop) positions in the epoch's order of each of this rank's batches.

        Global batch g is positions [g*bs*W, (g+1)*bs*W) of the order (W = world_size); rank r takes the r-th of
        W near-equal contiguous parts of it. So the W ranks together walk exactly the batches one process with
        bs*W walks, and DDP's mean of the ranks' gradients is that process's gradient.
        """
        w = self.world_size
        n = len(self.x) // w * w if self.even else len(self.x)  # even: drop the remainder, all ranks get as many
        for g in range(0, n, self.bs * w):
            m = min(self.bs * w, n - g)
            start, stop = g + self.rank * m // w, g + (self.rank + 1) * m // w
            if stop - start == self.bs or (stop > start and not self.drop_last):
                yield start, stop

    def __len__(self) -> int:
        """Number of batches per epoch (on this rank)."""
        return sum(1 for _ in self._spans())

    def permutation(self, epoch: int) -> torch.Tensor:
        """The (CPU) order of all items in `epoch` of a loader with a seed; identical on every rank."""
        if self.seed is None:
            raise ValueError("a TensorLoader with seed=None draws each order from torch's global RNG when iterated, "
                             "so no epoch has a fixed order: give the loader a seed (TensorLoader(..., seed=0))")
        return torch.randperm(len(self.x), generator=torch.Generator().manual_seed(_epoch_seed(self.seed, epoch)))

    def _order(self, epoch: int) -> torch.Tensor:
        if self.seed is not None:
            return self.permutation(epoch)
        if self.world_size > 1:
            raise ValueError(f"this loader is sharded over {self.world_size} processes but has seed=None, so each "
                             "would draw its own order and they would walk overlapping items: set dl.seed to one "
                             "value on every rank (DDPCB does this for a fit)")
        # one int64 draw from the global RNG, whatever len(x): the global stream then advances by as much each epoch
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        return torch.randperm(len(self.x), generator=torch.Generator().manual_seed(seed))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1  # counted on iter(), so a mid-epoch checkpoint resumes next
        idx = None
        if self.shuffle:
            # one small host->device copy per epoch, then batches are gathered on the data's device; from pinned
            # memory the copy is asynchronous, so not even this one stalls the CPU (a pageable copy would sync)
            idx = self._order(epoch)
            if self.x.device.type == "cuda":
                idx = idx.pin_memory().to(self.x.device, non_blocking=True)
            else:
                idx = idx.to(self.x.device)
        return self._batches(idx, list(self._spans()))

    def _batches(self, idx: torch.Tensor | None, spans: list[tuple[int, int]]
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start, stop in spans:
            if idx is None:  # copies, not views: an in-place transform must not change the data (or get_dls' cache)
                yield self.x[start:stop].clone(), self.y[start:stop].clone()
            else:
                b = idx[start:stop]
                yield self.x[b], self.y[b]

    def state_dict(self) -> dict[str, Any]:
        """{'seed', 'epoch', 'orders'}: with a seed, enough to replay the same order from the next epoch on; and
        'shuffle', 'drop_last', which a resume checks (`load_state_dict` leaves them as the loader was built)."""
        return {"seed": self.seed, "epoch": self.epoch, "orders": _ORDERS, "shuffle": self.shuffle,
                "drop_last": self.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `seed` (an int or None) and `epoch` from `state_dict()`."""
        self.seed = None if state["seed"] is None else int(state["seed"])
        self.epoch = int(state["epoch"])
        if self.seed is not None and state.get("orders") != _ORDERS:
            warn("this loader state was saved by an older miniai, whose seeded loaders ordered epoch e by "
                 "seed + e: the orders from here on are this version's, so a resumed run does not walk the "
                 "data exactly as the saved run would have")

    def set_epoch(self, epoch: int) -> None:
        """Make the next `iter()` run epoch `epoch` (as DistributedSampler.set_epoch); with a seed, its order."""
        self.epoch = epoch

    def shard(self, rank: int, world_size: int, even: bool = True) -> TensorLoader:
        """Walk only part `rank` of each global batch of bs*world_size items of each epoch's order; returns self.

        The ranks' parts are disjoint and cover the order. `even=True` (training) drops the last
        len % world_size items of each epoch's order, so every rank has as many items and batches (DDP needs
        that); `even=False` (validation) drops nothing, so ranks may differ by an item (or a batch).
        """
        if not 0 <= rank < world_size or len(self.x) < world_size:
            raise ValueError(f"need 0 <= rank < world_size <= {len(self.x)} items, got rank={rank}, "
                             f"world_size={world_size}")
        self.rank, self.world_size, self.even = rank, world_size, even
        return self

    def to(self, device: str | torch.device) -> TensorLoader:
        """Move the held tensors to `device` (in place) and return self, so batching slices on the device."""
        self.x, self.y = self.x.to(device), self.y.to(device)
        return self


class Normalize:
    """uint8 pixels (..., C, H, W) → float32 (x/255 - mean)/std per channel: what `get_dls` did to its images (one
    mean and std serve every channel, as torchvision's Normalize broadcasts them).

    The arithmetic is the one the loaders' data went through (`miniai.cache`), so new images normalized here are
    bitwise what they would be in a loader. `infer` applies it to raw items; it pickles with `learn.export`.
    """

    def __init__(self, mean: Any, std: Any) -> None:
        # copies: as_tensor would share the caller's tensors, whose later edits would change this normalization
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1).clone()
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1).clone()
        self._check()

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._check()  # an export made before the checks: its statistics are checked as it loads

    def _check(self) -> None:
        if self.mean.shape != self.std.shape or not bool((self.std > 0).all()):
            raise ValueError(f"Normalize needs one mean and one std > 0 per channel; got mean {self.mean.tolist()}, "
                             f"std {self.std.tolist()}")
        # pixels / 255 lie in [0, 1]: so does their mean, and their std is at most 0.5 (0.71 as the sample std of
        # two); statistics of 0-255 pixels would turn every new image into nearly the same input, silently
        if not bool(((self.mean >= 0) & (self.mean <= 1) & (self.std <= 1)).all()):
            raise ValueError(f"Normalize computes (pixels / 255 - mean) / std, so mean and std are of pixels on the "
                             f"0-1 scale (mean in [0, 1], std at most about 0.5); got mean {self.mean.tolist()}, std "
                             f"{self.std.tolist()}. Statistics of 0-255 pixels? Divide them by 255: Normalize(mean / "
                             "255, std / 255)")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = len(self.mean)
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim < 3 or x.shape[-3] != c != 1:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"Normalize takes uint8 pixels (..., {c}, H, W); got {got}")
        scale = (1 / (255 * self.std)).view(c, 1, 1).to(x.device)
        shift = (self.mean / self.std).view(c, 1, 1).to(x.device)
        return x.to(torch.float32).mul_(scale).sub_(shift)  # as miniai.cache computes it, so bitwise the same

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized float images (..., C, H, W) back to pixels in [0, 1], for display."""
        c = len(self.mean)
        return (x.float() * self.std.view(c, 1, 1).to(x.device) + self.mean.view(c, 1, 1).to(x.device)).clamp_(0, 1)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"




def _check_normalized(x: Any, normalize: Normalize) -> None:
    """Refuse float items (a TensorLoader's, its first 10,000) that can't be pixels `normalize` made: values far
    outside what it makes of 0-1 pixels (items on the 0-255 scale), or items within [0, 1] whose mean and std are
    near those `normalize` gives (0-1 pixels left unnormalized; normalized ones have values below 0). The model
    would train on them as they are, and `infer` would feed it normalized pixels."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2 or not len(x):
        return
    c = len(normalize.mean)
    per_channel = x.ndim == 4 and x.shape[1] == c
    if not per_channel and c != 1:
        return
    items = x[:10_000].float()
    values = items.transpose(0, 1).flatten(1) if per_channel else items.reshape(1, -1)
    m, s = normalize.mean, normalize.std
    shown = lambda t: ", ".join(f"{v:.3g}" for v in t.tolist())  # noqa: E731
    low, high = values.amin(1).cpu(), values.amax(1).cpu()
    lowest, highest = -m / s, (1 - m) / s
    # (noised or resized items reach a little past it; 0-255 values 100 times further, items normalized twice a width)
    slack = 0.5 * (highest - lowest)
    if bool(((low < lowest - slack) | (high > highest + slack)).any()):
        raise ValueError(f"the training items range from {shown(low)} to {shown(high)}: normalize={normalize} makes "
                         f"pixels (0-1) into values from {shown(lowest)} to {shown(highest)}, so these are no pixels "
                         "it normalized (0-255 values? another normalization?). normalize says how raw pixels became "
                         "the loaders' items: give the mean and std they were normalized with, or leave normalize "
                         "out (infer then takes items prepared as these are)")
    mean, std = values.mean(1).cpu(), values.std(1).cpu()
    def like(mu: torch.Tensor, sigma: torch.Tensor) -> bool:  # within a quarter of the std, a quarter of it
        return bool(((mean - mu).abs() <= 0.25 * sigma).all() and ((std / sigma - 1).abs() <= 0.25).all())
    if bool((low >= 0).all() and (high <= 1).all()) and like(m, s) and not like(torch.zeros_like(m),
                                                                                torch.ones_like(s)):
        raise ValueError(f"the training items' mean is {shown(mean)} and std {shown(std)}: those of pixels on the "
                         f"0-1 scale that normalize={normalize} describes, not of normalized ones (mean 0, std 1). "
                         "normalize says how raw pixels became the loaders' items: normalize them first, "
                         "(x - mean) / std, or leave normalize out (infer then takes items prepared as these are)")


class DataLoaders:
    """A train and a valid loader, plus the class names and the inputs' normalization when known.

    `normalize` turns raw items (uint8 pixels) into what the loaders yield, so `learn.infer` can take new raw
    images: a callable, or `(mean, std)` per channel for a `Normalize`. Without it, `infer` takes inputs
    already prepared as the loaders' are. `item_shape`, one input's shape ((C, H, W) for images), lets `infer`
    refuse items of another size; in-memory training loaders (TensorLoader) give it when it is not passed.
    """

    def __init__(self, train: Any, valid: Any, classes: list[str] | None = None,
                 normalize: Callable[[torch.Tensor], torch.Tensor] | tuple[Any, Any] | None = None,
                 item_shape: tuple[int, ...] | None = None, item_dtype: torch.dtype | None = None) -> None:
        self.train, self.valid, self.classes = train, valid, classes
        pair = isinstance(normalize, (tuple, list))
        if pair and len(normalize) != 2 or not pair and normalize is not None and not callable(normalize):
            raise TypeError(f"normalize must be a callable, (mean, std) or None; got {normalize!r}"
                            + (f", {len(normalize)} items (per-channel means? give (means, stds))" if pair else ""))
        self.normalize = Normalize(*normalize) if pair else normalize
        if isinstance(self.normalize, Normalize):
            _check_normalized(getattr(train, "x", None), self.normalize)
        self._item_shape = None if item_shape is None else tuple(item_shape)
        self._item_dtype = item_dtype

    @property
    def item_shape(self) -> tuple[int, ...] | None:
        """One input item's shape, as given or read from the training loader's tensor, or its dataset's first item
        when torch's default collate (alone or in from_dd's) stacks the items as they are; None when unknown."""
        if self._item_shape is not None:
            return self._item_shape
        x = getattr(self.train, "x", None)
        if isinstance(x, torch.Tensor):
            return tuple(x.shape[1:])
        if self._stacked_as_they_are() and getattr(self.train, "batch_size", None):  # (pre-batched items: unknown)
            x = self._first_input()
            return tuple(x.shape) if isinstance(x, torch.Tensor) else None
        return None

    @property
    def item_dtype(self) -> torch.dtype | None:
        """The dtype of the loaders' inputs (uint8 pixels, or floats a transform takes as they are), as given or read
        from the training loader's tensor or, under torch's default collate, its dataset's first item; None when
        unknown."""
        if self._item_dtype is not None:
            return self._item_dtype
        x = getattr(self.train, "x", None)
        if x is None and self._stacked_as_they_are():
            x = self._first_input()
        return x.dtype if isinstance(x, torch.Tensor) else None

    def _stacked_as_they_are(self) -> bool:
        """Whether the training loader's batches are its dataset's items as they are, stacked: torch's default
        collate (alone or in from_dd's; default_convert for batch_size=None). A collate of one's own may change
        their shape and dtype (uint8 items into 0-1 floats): what they are then is unknown."""
        collate = getattr(self.train, "collate_fn", None)
        if isinstance(collate, _DictToTuple):  # from_dd's: the columns of the collate's batch, as a tuple
            collate = collate.collate_fn
        return collate is default_collate or collate is default_convert

    def _first_input(self) -> Any:
        """The first input of a torch DataLoader's dataset's first item, or None: one item is cheap, and the
        collate_fn is not run (it may draw random numbers)."""
        try:
            with rngs_kept():  # (a transform may draw: reading a property must not move the RNGs)
                item = self.train.dataset[0]
            if isinstance(item, dict) and isinstance(self.train.collate_fn, _DictToTuple):  # from_dd's
                item = [item[k] for k in self.train.collate_fn.columns(item)]
            return item[0]
        except Exception:  # noqa: BLE001 -- no dataset (an iterable one), or items of another form: unknown
            return None

    def to(self, device: str | torch.device) -> DataLoaders:
        """Move loaders that hold their data (TensorLoader) to `device`; others pass through. Returns self."""
        for dl in (self.train, self.valid):
            if hasattr(dl, "to"):
                dl.to(device)
        return self

    @classmethod
    def from_dd(cls, dd: Any, batch_size: int, collate_fn: Callable = default_collate, as_tuple: bool = True,
                **kwargs: Any) -> DataLoaders:
        """Course adapter: torch DataLoaders over a HF DatasetDict (train shuffled; valid with 2x batch_size).

        Splits are picked by name, never by position: `train`, and for validation the first of `validation`,
        `valid`, `val`, `test`, `dev`. Other `kwargs` go to both DataLoaders, except `drop_last` and `sampler`: training
        only (`shuffle`, default True, too). With `as_tuple`, dict batches become tuples of the dataset's feature
        columns in `features` order (columns a transform added are left out), as `collate_dict` and the course's
        `from_dd` do; when a transform renamed them (no longer all there), or a split has no `features`, the
        batch's own columns in its order; either way a label column (`label`, `labels`, `target`...) last (with
        none, a ClassLabel column the first batch feeds to the model is warned of). Splits whose first items would
        become tuples of other columns (an extra column in train, a test split without labels) are refused, and so
        are splits whose ClassLabels name the classes differently, as by `get_dls`; the label column's ClassLabel
        names the classes (`dls.classes`, which `infer` and `export` use).
        """
        valid_name = next((name for name in VALID_SPLITS if name in dd), None)
        if "train" not in dd or valid_name is None:
            missing = "no 'train' split" if "train" not in dd else "no validation split"
            other = next((name for name in dd if name != "train"), None)
            rename = (f"Rename a split (dd['{'train' if 'train' not in dd else 'validation'}'] = dd.pop({other!r}))"
                      if other is not None else "Rename a split")
            raise ValueError(f"DataLoaders.from_dd: {missing}: found {list(dd)}, looked for 'train' and, for "
                             f"validation, the first of {', '.join(map(repr, VALID_SPLITS))}. {rename} or split one "
                             "off the training set (dd.update(dd['train'].train_test_split(test_size=0.1)))")
        check_split_classes(dd, valid_name, "DataLoaders.from_dd")  # as get_dls: label i means one class in both
        train, valid = dd["train"], dd[valid_name]
        # the dataset's feature columns in their order, as collate_dict (and the course's from_dd)
        features = getattr(train, "features", None) or {}
        collate = _DictToTuple(list(features), collate_fn, where="DataLoaders.from_dd",
                               classlabels=_classlabels(train)) if as_tuple else collate_fn
        if as_tuple:
            _check_split_columns(collate, collate_fn, train, valid, valid_name)
        if as_tuple and kwargs.get("num_workers") and collate_fn is default_collate:
            item = _first_item(train)  # (workers collate: asked here, of the first item, whose columns it keeps; of
            collate.check_columns(collate.columns(item if isinstance(item, dict) else dict.fromkeys(features)))
            # the features' order for a dataset that has no item 0, a streaming one)
        # shuffled unless said otherwise (a streaming dataset can't be, nor can a loader given its own sampler)
        shuffle = kwargs.pop("shuffle", not isinstance(train, IterableDataset) and "sampler" not in kwargs)
        valid_kwargs = {k: v for k, v in kwargs.items() if k not in ("drop_last", "sampler")}  # every item scored
        # the target's ClassLabel names the classes: a label-named column's, else, as tuples, the last column's
        target = next((c for c in _LABELS if c in features), list(features)[-1] if features and as_tuple else None)
        names = getattr(features[target], "names", None) if target is not None else None
        for name, split in (("train", train), (valid_name, valid)):  # labels of no class (-1: datasets' 'no
            if names is not None and not isinstance(split, IterableDataset) and target in (  # label') would end the
                    getattr(split, "features", None) or {}):  # fit late; a stream can't be read ahead
                _check_labels_read(split, target, names, f"DataLoaders.from_dd: split {name!r}")
        return cls(DataLoader(train, batch_size, shuffle=shuffle, collate_fn=collate, **kwargs),
                   DataLoader(valid, batch_size * 2, shuffle=False, collate_fn=collate, **valid_kwargs),
                   classes=None if names is None else list(names))


def get_dls(name: str = "fashion_mnist", bs: int = 1024, path: str | os.PathLike | None = None,
            valid_bs: int | None = None, seed: int | None = None, device: str | torch.device | None = None,
            n_train: int | None = None, n_valid: int | None = None, holdout: int = 0,
            holdout_seed: int = 0) -> DataLoaders:
    """In-memory DataLoaders for `name`: float32 [N,C,H,W] normalized by the training set's mean/std (with
    `holdout`, by the images left to train on; never by held-out or test images).

    The loaders carry the class names (`dls.classes`) and that normalization (`dls.normalize`, a `Normalize`).

    `n_train`/`n_valid` keep the first n items (quick runs, normalized as the full run is, by the statistics of
    all the training images, so their inputs are on the same scale); `device` moves all the data there once. `seed` is
    the training TensorLoader's: None (default) draws each epoch's order from torch's global RNG.
    `holdout=10_000` validates on that many training images instead of the test set, drawn at random with
    `holdout_seed` (the same split every time) and left out of training: for choosing a recipe without ever
    looking at the test set. `n_train`/`n_valid` then cut the remaining training images and the held-out ones.
    """
    for given in (name, path):  # (a DatasetDict: the course's data, which get_dls's cache can't key)
        if not (given is None or isinstance(given, (str, os.PathLike))):
            saves = callable(getattr(given, "save_to_disk", None))  # (`datasets`' DatasetDict, a dict; or a Dataset)
            advice = (": dd.save_to_disk(DIR) then get_dls(path=DIR) reads a DatasetDict of gray images as get_dls "
                      "does (get_dls('cifar10', path=DIR) RGB ones), and DataLoaders.from_dd(dd, bs) takes one whose "
                      "columns are float tensors (dd.with_transform(...) converting them, as the course did)"
                      if saves and isinstance(given, dict) else ": a Dataset is one split; DatasetDict(train=..., "
                      "test=...) holds the splits get_dls and DataLoaders.from_dd read" if saves else "")
            raise TypeError(f"get_dls takes a dataset's name and a directory (str or Path); got "
                            f"{type(given).__name__}{advice}")
    for what, n in (("holdout", holdout), ("n_train", n_train), ("n_valid", n_valid), ("valid_bs", valid_bs)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, numbers.Integral)):
            raise ValueError(f"{what} must be an int (a number of images{', a batch size' * (what == 'valid_bs')}) "
                             f"or None; got {n!r}")
    if valid_bs is not None:
        check_count("valid_bs", valid_bs, what=" (or None: the training bs)")
    check_seed(holdout_seed, "holdout_seed")  # (before anything is read: 2**32 would hold out seed 0's images)
    if holdout:
        raw = load_tensors(name, path)
        if not 0 < holdout < len(raw.train_x):
            raise ValueError(f"holdout must be in 1..{len(raw.train_x) - 1} training images, got {holdout}")
        order = torch.randperm(len(raw.train_x), generator=torch.Generator().manual_seed(holdout_seed))
        keep, held = order[holdout:].sort().values, order[:holdout].sort().values  # sorted: the dataset's order
        # normalized by the images trained on: the held-out ones stay unseen, as the test set is
        train_x, valid_x, mean, std = normalized_split(raw.train_x[keep], raw.train_x[held], raw.source)
        train_y, valid_y = raw.train_y[keep], raw.train_y[held]
    else:
        raw, (train_x, valid_x, mean, std) = load_normalized(name, path)
        train_y, valid_y = raw.train_y, raw.valid_y
    why = {"n_train": f": holdout={holdout} took the other {holdout} of the {len(raw.train_x)} training images",
           "n_valid": f": with holdout={holdout} the validation images are the {holdout} held out"} if holdout else {}
    for what, n, have in (("n_train", n_train, len(train_x)), ("n_valid", n_valid, len(valid_x))):
        if n is not None and not 0 < n <= have:
            raise ValueError(f"{what} must be in 1..{have}, got {n}{why.get(what, '') if n > have else ''}")
    train = TensorLoader(train_x[:n_train], train_y[:n_train], bs, shuffle=True, seed=seed)
    valid = TensorLoader(valid_x[:n_valid], valid_y[:n_valid], bs if valid_bs is None else valid_bs)
    dls = DataLoaders(train, valid, classes=list(raw.classes), normalize=Normalize(mean, std))
    return dls.to(device) if device is not None else dls


_LABELS = LABEL_COLUMNS  # what a batch of (*inputs, *targets) ends with


class _DictToTuple:
    """`collate_fn`, then a dict batch as the tuple of its `names` columns, the learner's (*inputs, *targets).

    The label column (the first of `_LABELS` there is) goes last, wherever it was declared (features {'label',
    'image'}, a CSV's order, would feed the labels to the model); the others keep their order, inputs named `y` or
    `target` beside a `label` too. When a transform renamed columns (the Hugging Face docs' image ->
    pixel_values), or there are no `names` (a split with no `features`: a torch Subset), the batch's own columns
    are used, in their order. A class, not a closure: loader workers started by spawn (macOS, Windows) pickle it."""

    def __init__(self, names: list[str], collate_fn: Callable = default_collate,
                 classlabels: list[str] | None = None, where: str = "") -> None:
        self.names, self.collate_fn, self.where = names, collate_fn, where
        self.classlabels = classlabels or []  # the dataset's ClassLabel columns
        self.unchecked = True  # until the first batch's columns are checked (check_columns)

    def __call__(self, items: list) -> Any:
        batch = self.collate_fn(items)
        if not isinstance(batch, dict):  # (a collate of one's own made the tuple itself)
            return batch
        columns = self.columns(batch)
        # the first dict batch: does a ClassLabel column go to the model? (asked in the main process only: a loader
        # worker's warning can't be caught there, and each worker would give its own each pass; see from_dd)
        if self.unchecked and get_worker_info() is None:
            self.check_columns(columns)
        return tuple(batch[k] for k in columns)

    def check_columns(self, columns: list[str]) -> None:
        """Warn, once, if `columns` (a batch's, in order) would feed labels to the model: none is named as a label
        and a ClassLabel is not last, or a `labels` or `targets` column is kept in place beside the label taken."""
        kept = [c for c in columns[:-1] if c in self.classlabels]
        if kept and not any(c in _LABELS for c in columns):
            warn(f"{self.where}: no column is named as a label ({', '.join(_LABELS)}), so the batches are "
                 f"({', '.join(columns)}): the last, {columns[-1]!r}, is the target, and the ClassLabel "
                 f"{kept[0]!r} goes to the model. If {kept[0]!r} holds the labels, rename it: "
                 f"ds = ds.rename_column({kept[0]!r}, 'label')")
        plural = [c for c in columns[:-1] if c in ("labels", "targets")]  # (a y or a target may be an input)
        if plural:
            warn(f"{self.where}: the batches are ({', '.join(columns)}): the target is {columns[-1]!r} (the first of "
                 f"{', '.join(_LABELS)} there is), and {plural[0]!r}, named like labels too, keeps its place before "
                 f"it. If it holds labels, remove or rename it first: ds = ds.remove_columns([{plural[0]!r}])")
        self.unchecked = False

    def columns(self, batch: dict) -> list[str]:
        """The keys of a dict batch (or item) in the order of the tuple it becomes."""
        names = self.names if self.names and all(k in batch for k in self.names) else list(batch)
        label = next((k for k in _LABELS if k in names), None)  # one: inputs named y or target keep their place
        return [k for k in names if k != label] + [label] * (label is not None)


def collate_dict(ds: Any) -> Callable[[list], tuple]:
    """The course's collate for a HF dataset of dict items: `default_collate`, then a tuple of the columns in
    `ds.features` order (the batch's own, when a transform renamed them), a label column last (`(images, labels)`),
    what a Learner's batch is (as `from_dd`'s)."""
    return _DictToTuple(list(ds.features), classlabels=_classlabels(ds), where="collate_dict")


def _check_split_columns(collate: _DictToTuple, collate_fn: Callable, train: Any, valid: Any,
                         valid_name: str) -> None:
    """Refuse splits whose batches would become tuples of other columns (each pass its own inputs or target), read
    from each split's item 0 through the collate, transforms applied; a split without one (a stream), or a collate
    of one's own that makes its own tuples, can't be checked here. A target 'label' here and 'labels' there is one."""
    cols, items = [], []
    for ds in (train, valid):
        item = _first_item(ds)
        if item is not None and collate_fn is not default_collate:  # (a padding collator's dict: its own columns)
            try:
                with rngs_kept():
                    item = collate_fn([item])
            except Exception:  # noqa: BLE001 -- the batches will say
                return
        if not isinstance(item, dict):
            return
        cols.append(collate.columns(item))
        items.append(item)
    train_cols, valid_cols = cols

    def alike(a: str, b: str) -> bool:
        return a == b or a in _LABELS and b in _LABELS

    if len(train_cols) == len(valid_cols) and all(alike(a, b) for a, b in zip(train_cols, valid_cols)):
        target, other = train_cols[-1], valid_cols[-1]
        names = [getattr((getattr(ds, "features", None) or {}).get(col), "names", None)
                 for ds, col in ((train, target), (valid, other))]
        if target != other and names[0] != names[1]:  # (check_split_classes compares same-named columns alone)
            raise ValueError(f"DataLoaders.from_dd: split 'train''s target {target!r} names its classes "
                             f"{names[0] or 'nowhere (plain ints)'}, split {valid_name!r}'s {other!r} "
                             f"{names[1] or 'nowhere (plain ints)'}: a label would mean different classes in each. "
                             f"Give the target one name, dd[{valid_name!r}] = dd[{valid_name!r}].rename_column("
                             f"{other!r}, {target!r}), and from_dd says how to give both the same classes")
        for a, b in zip(train_cols, valid_cols):  # (a transform given to one split alone: PIL images in the other)
            kinds = [_kind(item[col]) for item, col in zip(items, (a, b))]
            if kinds[0] != kinds[1]:
                raise ValueError(f"DataLoaders.from_dd: split 'train''s column {a!r} holds {kinds[0]}, split "
                                 f"{valid_name!r}'s {kinds[1]}: the model would be fed other inputs in each pass (or "
                                 "the collate fail there). A transform given to one split alone? dd = "
                                 "dd.with_transform(f) gives it to every split")
        return
    target, other = train_cols[-1], valid_cols[-1]
    if not alike(target, other) and target not in valid_cols:  # no targets, or an extra column
        known = target in _LABELS or target in _classlabels(train)  # (else it may be metadata, last by chance)
        fix = (f"split {valid_name!r} has no {target!r}, the column train's batches end with, their target"
               + (", so the split" if known else f": if it is not the target, remove it from train, dd['train'] = "
                                                  f"dd['train'].remove_columns([{target!r}]); if it is, the split")
               + " can't be validated on (a test split without labels?): split a validation set off the training "
               "set, parts = dd['train'].train_test_split(test_size=0.1); dd['train'], dd['validation'] = "
               "parts['train'], parts['test']")
    else:  # columns of its own one split alone has (the other none of its own) can be removed from it
        extra = [[c for c in mine if not any(alike(c, t) for t in theirs)]
                 for mine, theirs in ((train_cols, valid_cols), (valid_cols, train_cols))]
        ways = [f"dd[{name!r}] = dd[{name!r}].remove_columns({own})" for name, ds, own, others in
                (("train", train, *extra), (valid_name, valid, *extra[::-1]))
                if own and not others and set(own) <= set(getattr(ds, "column_names", None) or ())]
        fix = "give both splits the same columns (and the same transforms)" + (": " + "; ".join(ways) if ways else "")
    raise ValueError(f"DataLoaders.from_dd: split 'train' gives batches of {tuple(train_cols)} and split "
                     f"{valid_name!r} of {tuple(valid_cols)}: other inputs or another target in each pass; {fix}")


def _check_labels_read(split: Any, target: str, names: list[str], what: str) -> None:
    """Refuse labels of no class (`check_labels`) in a split's ClassLabel column, read at once from its Arrow table
    (no image decoded), unless the split's transform makes something else of them (-1 into -100, the loss's
    ignore_index): the first such item is read as the loader will read it."""
    if not callable(getattr(getattr(split, "data", None), "column", None)):  # (no Arrow table: no datasets Dataset)
        return
    labels = torch.as_tensor(split.with_format("numpy", columns=[target])[:][target])
    bad = ((labels < 0) | (labels >= len(names))).nonzero()
    if len(bad):
        item = split[int(bad[0])]  # (through its transform, if any)
        if isinstance(item, dict) and torch.as_tensor(item.get(target, labels[bad[0]])).reshape(-1)[:1].tolist() \
                == labels[bad[0]].tolist():
            check_labels(labels, names, what, HF_NO_LABEL)


def _kind(value: Any) -> str:
    """What a column's value is, as far as collating tells them apart: 'a number' (a 0-dim tensor's too), 'float32
    values' (a tensor's or an array's: both collate to tensors), 'a PngImageFile'."""
    if isinstance(value, numbers.Number) or getattr(value, "ndim", None) == 0:  # (NumPy's scalars, 0-dim tensors)
        return "a number"
    dtype = getattr(value, "dtype", None)
    return f"{str(dtype).removeprefix('torch.')} values" if dtype is not None else f"a {type(value).__name__}"


def _first_item(ds: Any) -> Any:
    """`ds[0]` with the RNGs left as they were (a transform may draw), or None (an IterableDataset, an error)."""
    try:
        with rngs_kept():
            return ds[0]
    except Exception:  # noqa: BLE001 -- then the batches' own check is all there is
        return None


def _classlabels(ds: Any) -> list[str]:
    """The names of a dataset's ClassLabel columns (none without `features`)."""
    features = getattr(ds, "features", None) or {}
    return [c for c in features if type(features[c]).__name__ == "ClassLabel"]
