"""Where a dataset comes from: a directory of IDX files, a saved `DatasetDict`, or the Hugging Face hub.

`find_source` picks the source and `read_source` decodes it into uint8 tensors (`RawData`); `miniai.cache` keeps
the result so this runs once per source. A directory the user names (`path=`, or `$MINIAI_DATA` for
Fashion-MNIST) is the only source tried: without the data it is an error, not a fallback. With none named,
Fashion-MNIST comes from `SYSTEM_DATA_DIR` (Debian's dataset-fashion-mnist), else the hub; CIFAR-10 from the hub.
`datasets` is imported only inside the functions that read the hub or a saved `DatasetDict`.
Imports nothing from miniai but `idx`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import numpy as np
import torch

from .checks import warn
from .idx import IDXError, read_idx

__all__ = ["DataNotFoundError", "FASHION_CLASSES", "CIFAR10_CLASSES", "SYSTEM_DATA_DIR", "RawData", "Source",
           "VALID_SPLITS", "HF_NO_LABEL", "check_data_dir", "check_labels", "check_split_classes", "find_source",
           "read_source", "load_hub_dataset", "hf_to_tensors"]

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SYSTEM_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's `dataset-fashion-mnist` puts the IDX files; module-level so tests can point it elsewhere."""
VALID_SPLITS = ("validation", "valid", "val", "dev", "test")
"""A DatasetDict's validation split is the first of these it has (by name, never by position; a dev split before a
test split, which is kept for the end)."""
LABEL_COLUMNS = ("label", "labels", "target", "targets", "y")
"""A dataset's label column is the first of these it has (from_dd puts it last; get_dls' rename hint names them)."""


class DataNotFoundError(FileNotFoundError):
    """No source for the dataset was available; the message lists every option and how to enable it."""


class RawData(NamedTuple):
    """Decoded dataset: uint8 images [N,C,H,W], int64 labels, class names, where it came from, and the split the
    validation images are ('test': the IDX files' t10k; a DatasetDict's first of `VALID_SPLITS` it has)."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    valid_x: torch.Tensor
    valid_y: torch.Tensor
    classes: tuple[str, ...]
    source: str
    valid_split: str = "test"


@dataclass(frozen=True)
class _Spec:
    hub: str             # hub id for datasets.load_dataset
    x_col: str           # image column in the hub schema
    classes: tuple[str, ...]
    idx: bool            # whether IDX directories (path/MINIAI_DATA/system dir) can hold it
    mode: str            # the PIL mode its images are decoded in ("L": 1 channel, "RGB": 3)


_SPECS = {"fashion_mnist": _Spec("zalando-datasets/fashion_mnist", "image", FASHION_CLASSES, idx=True, mode="L"),
          "cifar10": _Spec("uoft-cs/cifar10", "img", CIFAR10_CLASSES, idx=False, mode="RGB")}
_IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class Source:
    """One place to read dataset `name` from, found by `find_source`; `tried` says why earlier options failed."""
    name: str
    kind: str            # "idx" (four IDX files), "saved" (a DatasetDict.save_to_disk dir) or "hub"
    where: str           # directory or hub id
    files: tuple[Path, ...] = ()
    tried: tuple[str, ...] = ()

    def key(self) -> str:
        """Cache key, '<place>-<version>': the place names the source (kind and where); the version changes when any
        source file's size, mtime, inode or ctime does (a file replaced by one of the same size and mtime, as `cp -p`
        or `rsync -a` make, is a new inode; a hub id is assumed immutable)."""
        stats = [(str(f), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
                 for f, st in ((f, f.stat()) for f in self.files)]
        place = hashlib.sha1(repr((2, self.name, self.kind, self.where)).encode()).hexdigest()[:8]
        return f"{place}-{hashlib.sha1(repr((DECODING, stats)).encode()).hexdigest()[:12]}"


# the version of what decoding makes of the same files (a cache holds it): bump it with any change to that, a new
# refusal included, so a cache an older miniai wrote is decoded again rather than served
DECODING = 4


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(_SPECS)}")
    return _SPECS[name]


def _idx_files(d: Path) -> tuple[tuple[Path, ...], list[str]]:
    """The four Fashion-MNIST IDX files in `d` (.gz, plain, or LeCun's '.idx' spelling) and the missing stems."""
    found, missing = [], []
    for stem in _IDX_STEMS:
        dotted = stem.replace("-idx", ".idx")
        hits = [d / n for n in (stem + ".gz", stem, dotted + ".gz", dotted) if (d / n).is_file()]
        if len(hits) > 1:  # which one is the data? (gunzip -k and an edit leave two that may differ)
            raise DataNotFoundError(f"{d} holds both {' and '.join(h.name for h in hits)}: remove all but the one "
                                    "to read")
        (found if hits else missing).append(hits[0] if hits else stem)
    return tuple(found), missing


def _files_under(d: Path) -> tuple[Path, ...]:
    """Every file under `d`, sorted, through symlinked folders too: re-pointing a split's symlink must change the
    cache key (Path.rglob does not follow them). Without symlinks, the files rglob finds."""
    files, seen = [], set()
    for root, dirs, names in os.walk(d, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:  # a symlink back up the tree: walked already, and would loop forever
            dirs.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        files += [f for f in (Path(root) / n for n in names) if f.is_file()]
    return tuple(sorted(files))


def _dir_source(name: str, d: Path) -> tuple[Source | None, str]:
    """A source for directory `d`, or None and why it holds no usable data ("it lacks ...")."""
    if (d / "dataset_dict.json").is_file():
        idx = _idx_files(d)[0] if _SPECS[name].idx else ()
        if idx:  # which one is the data? (as for a .gz beside its plain copy)
            raise DataNotFoundError(f"{d} holds both a saved DatasetDict (dataset_dict.json) and the IDX files "
                                    f"{', '.join(f.name for f in idx)}: remove one of them (or move it to a folder "
                                    "of its own), so the folder names one dataset")
        return Source(name, "saved", str(d), _files_under(d)), ""
    if not d.exists():
        return None, "it does not exist"
    if not d.is_dir():
        return None, "it is not a directory"
    if not _SPECS[name].idx:
        return None, "it has no dataset_dict.json"
    files, missing = _idx_files(d)
    if missing:
        return None, f"it lacks {', '.join(m + '(.gz)' for m in missing)} and has no dataset_dict.json"
    return Source(name, "idx", str(d), files), ""


def check_data_dir(path: str | os.PathLike, name: str = "fashion_mnist", given_as: str = "path=") -> Source:
    """The source in directory `path`, which the user named; DataNotFoundError saying what was looked for if none.

    `given_as` is how the user named it ('path=', '$MINIAI_DATA', '--data'), so the message speaks their language.
    """
    if str(path) == "":  # what "$DIR" gives with DIR unset; Path('') would be the current directory
        raise DataNotFoundError(f"{given_as.rstrip('=')}='' names no directory: give the directory that holds the "
                                "data ('.' for the current one)")
    d, spec = Path(path).expanduser(), _spec(name)
    source, why = _dir_source(name, d)
    if source is not None:
        return source
    looked = "a DatasetDict saved with save_to_disk (dataset_dict.json)"
    if spec.idx:
        looked = (f"the four IDX files {', '.join(_IDX_STEMS)}, each .gz or plain (also spelled "
                  f"train-images.idx3-ubyte and so on), or {looked}")
    others = f"{SYSTEM_DATA_DIR} or the hub" if spec.idx else "the hub"
    raise DataNotFoundError(f"{d.absolute()} (given as {given_as}) holds no usable {name} data: {why}. Looked "
                            f"there for {looked}. Point {given_as} at the directory that holds them, or name no "
                            f"directory (and unset MINIAI_DATA) to read {others}.")


def find_source(name: str = "fashion_mnist", path: str | os.PathLike | None = None) -> Source:
    """Where `name` will be read from; reads no data and probes no network.

    A directory the user names (`path`, else `$MINIAI_DATA` for Fashion-MNIST) must hold the data, or this raises
    DataNotFoundError saying what was looked for there: it never falls back to another source. With none named:
    `SYSTEM_DATA_DIR` (Fashion-MNIST), else the hub, which is checked only when it must be read.
    """
    spec, env = _spec(name), os.environ.get("MINIAI_DATA")
    if path is not None:
        return check_data_dir(path, name, "path=")
    if spec.idx and env == "":  # what `MINIAI_DATA=$DIR` gives when DIR is unset: never the system's data instead
        raise DataNotFoundError("$MINIAI_DATA is set but empty: set it to the directory that holds the data, or "
                                f"unset MINIAI_DATA to read {SYSTEM_DATA_DIR} or the hub")
    if spec.idx and env:
        return check_data_dir(env, name, "$MINIAI_DATA")
    tried = []
    if spec.idx:
        source, why = _dir_source(name, SYSTEM_DATA_DIR)
        if source:
            return source
        tried.append(f"system dir {SYSTEM_DATA_DIR}: {why}")
    return Source(name, "hub", spec.hub, tried=tuple(tried))


def _not_found(name: str, tried: list[str]) -> DataNotFoundError:
    """The one error for "no source worked": what was tried, and every way to fix it."""
    spec = _SPECS[name]
    fixes = [f"pass get_dls({name!r}, path=DIR) with DIR a DatasetDict saved by save_to_disk"]
    if spec.idx:
        fixes = [f"pass get_dls(path=DIR) or set MINIAI_DATA=DIR, where DIR holds {', '.join(_IDX_STEMS)} "
                 "(.gz or plain), or a DatasetDict saved by save_to_disk",
                 f"install Debian's package (`sudo apt-get install dataset-fashion-mnist`), which fills {SYSTEM_DATA_DIR}"]
    fixes.append(f"go online (or pre-fill the HF cache and set HF_HUB_OFFLINE=1) so "
                 f"datasets.load_dataset({spec.hub!r}) works")
    return DataNotFoundError(f"No {name} data found. Tried:\n  " + "\n  ".join(tried) +
                             "\nTo fix, do one of:\n  " + "\n  ".join(f"{i}. {f}" for i, f in enumerate(fixes, 1)))


# ---------------------------------------------------------------- the hub and saved DatasetDicts

def _hub_unavailable(timeout: float = 3.0) -> str:
    """Why the hub can't be used right now ('' if it may be): offline mode, or the endpoint unreachable."""
    env_offline = any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
                      for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if env_offline:
        # both libraries read offline mode once, at import; if it was set later, their retries would take ~25 s
        import datasets.config
        import huggingface_hub.constants
        if datasets.config.HF_HUB_OFFLINE and huggingface_hub.constants.HF_HUB_OFFLINE:
            return ""  # let datasets look in its local cache
        return "offline (HF_HUB_OFFLINE was set after `datasets` was imported, so its cache was not consulted)"
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return ""  # a direct probe says nothing about a proxied route; let `datasets` try
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    if not url.scheme or not url.hostname:  # e.g. 'hf-mirror.com': neither we nor huggingface_hub can use it
        return f"HF_ENDPOINT={endpoint!r} is not a URL: set it with its scheme, e.g. HF_ENDPOINT=https://{endpoint}"
    # datasets retries for ~25 s before giving up on an unreachable hub, so probe first and fail fast
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as e:
        return f"cannot reach {url.hostname} ({e})"
    return ""


def load_hub_dataset(name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
    """A `DatasetDict` from a `save_to_disk` directory (`load_from_disk`), else `datasets.load_dataset(..., **kwargs)`.

    `load_dataset` takes a hub id or a local directory in hub layout (e.g. train.parquet, test.parquet).
    """
    import datasets  # imported lazily: it is slow to import and only the hub/saved-dir paths need it
    if (Path(name_or_path) / "dataset_dict.json").is_file():
        try:
            return datasets.load_from_disk(str(name_or_path))
        except IndexError as e:  # datasets fails so on a saved split with no rows: name it
            splits = json.loads((Path(name_or_path) / "dataset_dict.json").read_text()).get("splits", [])
            empty = [s for s in splits if _saved_rows(Path(name_or_path) / s) == 0]
            if not empty:
                raise
            raise ValueError(f"{name_or_path}: split {empty[0]!r} holds no images (and `datasets` can't load a saved "
                             "empty split back): give it some, or leave it out when saving") from e
    return datasets.load_dataset(str(name_or_path), **kwargs)


def _saved_rows(split_dir: Path) -> int | None:
    """The number of rows of a split saved with save_to_disk, from its arrow files' metadata (None if unreadable)."""
    try:
        import pyarrow as pa  # (datasets' own dependency)
        return sum(pa.ipc.open_stream(str(f)).read_all().num_rows for f in sorted(split_dir.glob("*.arrow")))
    except (ImportError, OSError, ValueError):  # (pyarrow's ArrowInvalid is a ValueError)
        return None


def wide_pixels(mode: str) -> bool:
    """Whether a PIL image mode holds pixels wider than 8 bits (16- or 32-bit ints, floats): PIL's conversion to
    "L" or "RGB" clips those rather than rescales them (a 16-bit image turns white)."""
    return mode in ("I", "F") or mode.startswith(("I;", "BGR;"))


def hf_to_tensors(ds: Any, x_col: str = "image", y_col: str = "label", mode: str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A HF `Dataset` with an image column and int labels -> (uint8 [N,C,H,W], int64 [N]); an `Image()` column is
    decoded in PIL `mode` ("L", "RGB") when given, as `infer` converts images."""
    if x_col not in ds.column_names or y_col not in ds.column_names:
        missing = x_col if x_col not in ds.column_names else y_col
        kinds = ("Image", "Array2D", "Array3D", "Sequence", "List") if missing == x_col else ("ClassLabel",)
        like = [c for c in ds.column_names if c not in (x_col, y_col) and (type(ds.features[c]).__name__ in kinds
                or missing == y_col and c in LABEL_COLUMNS)]
        # (a hint only where one column is of the missing one's kind: an 'id' of ints is no image, nor a label)
        if missing == y_col and ds.column_names == [x_col]:  # (nothing to rename: images alone)
            raise KeyError(f"dataset has no {y_col!r} column (it has {ds.column_names}): images without labels can't "
                           "be trained or validated on; give them labels, or split a validation set off the labelled "
                           "training set: parts = dd['train'].train_test_split(test_size=0.1); dd['train'], "
                           "dd['validation'] = parts['train'], parts['test']")
        raise KeyError(f"dataset needs columns {x_col!r} and {y_col!r}, has {ds.column_names}: rename yours as "
                       + (f"those, e.g. ds = ds.rename_column({like[0]!r}, {missing!r})" if len(like) == 1 else
                          "those, ds = ds.rename_column(old, new)"))
    feature = ds.features[x_col]
    if mode is not None and type(feature).__name__ == "Image":
        from datasets import Image  # (datasets is imported by whoever built `ds`)
        modes = _image_modes(ds, x_col)
        wide = sorted(m for m in modes if wide_pixels(m))
        if wide:
            pixels = [np.asarray(im) for im in ds[x_col]]  # (every image, for the advice: this is the refusal's path)
            small = all(a.min() >= 0 and a.max() <= 255 and np.array_equal(a, a.round()) for a in pixels) \
                and max(a.max() for a in pixels) > 1  # (0-1 floats: scaled, not cast)
            fix = ("their pixels all lie in 0..255 (8-bit values kept as int64, which datasets stores as 32-bit "
                   "images): store them as uint8, np.asarray(a, dtype=np.uint8)" if small else
                   "16-bit pixels // 257 (as int32: torch has no uint16 //), 0-1 floats * 255 rounded, as uint8")
            raise ValueError(f"column {x_col!r} holds images of mode {', '.join(wide)}, whose pixels are not 8-bit: "
                             f"converting them to {mode} would clip them (a 16-bit image turns white). Store them as "
                             f"8-bit images first: {fix}")
        if mode == "L" and modes - {"1", "L", "LA", "I", "F"}:  # (stored in colour modes: gray in them is fine)
            _check_no_colour(ds, x_col)
        # decoded as stored, a palette image gives its palette indices and an RGB one three channels
        ds = ds.cast_column(x_col, Image(mode=mode))
    # numpy formatting decodes every image (PIL, inside datasets) and stacks them into one array; this is the
    # slow step of the hub path, which is why get_dls caches the result on disk
    x = np.asarray(ds.with_format("numpy", columns=[x_col])[:][x_col])
    y = np.asarray(ds.with_format("numpy", columns=[y_col])[:][y_col])
    if x.dtype.kind in "iu" and _declared_dtype(feature) == "uint8":
        x = x.astype(np.uint8)  # numpy formatting widens uint8 arrays (Array2D, lists) to int64: their values fit
    if x.dtype == object:  # numpy could not stack the images into one array: say why
        missing = [row for row, item in enumerate(x) if item is None]
        if missing:
            raise _no_image(x_col, missing[0])
        if isinstance(feature, dict) and "bytes" in feature:  # (a parquet file written without datasets' metadata)
            raise ValueError(f"column {x_col!r} holds {{bytes, path}} records, encoded image files that datasets "
                             f"was not told are images: ds = ds.cast_column({x_col!r}, datasets.Image())")
        raise ValueError(f"column {x_col!r} holds images that differ in size" + (
            f" (each decoded in mode {mode!r}): give them one size" if mode is not None else " or number of channels "
            "(gray and RGB, say): pass mode='L' or mode='RGB' to convert them all to one, and give them one size"))
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        cast = ""
        if x.dtype.kind in "iu" and x.ndim in (3, 4) and x.size and 0 <= x.min() and x.max() <= 255:
            # (Dataset.from_dict of Python lists stores int64: declared uint8, they are read as 8-bit pixels)
            cast = (f": if they are 8-bit pixels, say so: ds = ds.cast_column({x_col!r}, datasets.Array{x.ndim - 1}D("
                    f"{tuple(x.shape[1:])}, 'uint8'))")
        declared = _declared_dtype(feature)  # (numpy formatting widens int16 to int64: say the column's own)
        dtype = declared if x.dtype.kind in "iu" and isinstance(declared, str) and declared[:1] in "iu" else x.dtype
        raise ValueError(f"column {x_col!r} must hold same-sized 8-bit images, got array {dtype} {x.shape}{cast}")
    x = torch.from_numpy(x)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif type(feature).__name__ == "Image" or not _channels_first(x.shape[1:], x_col):  # (decoded images are HWC)
        x = x.permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
    return x, torch.from_numpy(_class_indices(y, y_col))


_CHANNELS = (1, 2, 3, 4)  # gray, gray + alpha, RGB, RGBA


def _channels_first(shape: tuple[int, ...], x_col: str) -> bool:
    """Whether arrays of one image's 3-dim `shape` are (C, H, W), not (H, W, C): the end that holds 1 to 4 channels
    says; an error when neither could, or both could (a 4x4 RGB image): a guess would scramble the pixels."""
    first, last = shape[0] in _CHANNELS, shape[-1] in _CHANNELS
    if first == last:
        why = ("neither end holds 1 to 4 channels, as (C, H, W) or (H, W, C) would" if not first else
               "both ends could hold the channels, so (C, H, W) and (H, W, C) can't be told apart")
        raise ValueError(f"column {x_col!r} holds arrays of shape {tuple(shape)} per image: {why}. Store gray images "
                         "as (H, W) arrays, color ones as (H, W, C), or as Image() (PIL images, whose layout is known)")
    return first


def _no_image(x_col: str, row: int) -> ValueError:
    """The error for a missing image (None), naming its row: datasets' own is a TypeError about subscripting None."""
    return ValueError(f"column {x_col!r} has no image in row {row} (None): drop such rows "
                      f"(ds.filter(lambda item: item[{x_col!r}] is not None)) or give them their image")


MOST_CLASSES = 100_000  # a label this large is no class index (ImageNet-21k has 21,841): a stray one, or no labels


def _class_indices(y: np.ndarray, y_col: str) -> np.ndarray:
    """Labels as int64 class indices: ints (and bools) as they are, floats only when whole numbers, never strings,
    one per item, each below MOST_CLASSES (classes named by their numbers up to the largest would not fit)."""
    if y.ndim != 1:  # (a list per item: (N, k) labels, which the loss would refuse at the first batch, as the model's)
        raise ValueError(f"column {y_col!r} holds a list per item (labels of shape {tuple(y.shape)}), where one "
                         f"class index per image belongs: for one value per item, flatten it, e.g. "
                         f"dd = dd.map(lambda item: {{{y_col!r}: item[{y_col!r}][0]}})")
    wide = y.astype(np.float64) if y.dtype.kind == "f" else y  # (float16 can't hold the bound)
    far = (wide >= MOST_CLASSES) | (wide <= -MOST_CLASSES) if y.dtype.kind in "iuf" and len(y) else None
    if far is not None and far.any():  # (before the cast: 1e20 would overflow)
        row = int(np.argmax(far))
        value = y[row].item() if y.dtype.kind != "f" else f"{y[row]:g}"
        raise ValueError(f"column {y_col!r} holds a label that is no class index, {value} in row {row} (the classes "
                         f"of plain number labels are named by their numbers, 0 up to the largest, below "
                         f"{MOST_CLASSES:,}): fix or drop that label" + (
                             "; for classes numbered so high, give the column a ClassLabel naming them: dd = "
                             f"dd.cast_column({y_col!r}, datasets.ClassLabel(names=[...]))"
                             if 0 < wide[row] < np.inf else ""))
    if y.dtype.kind == "f":
        bad = y[~(np.isfinite(y) & (y == np.round(y)))]  # truncating 0.9 or 2.99 would pick a class at random
        if len(bad):
            raise ValueError(f"column {y_col!r} holds labels [{', '.join(str(v) for v in bad[:5])}] that are not "
                             "whole numbers, where class indices 0, 1, ... belong: fix the labels")
    elif y.dtype.kind not in "biu":
        what = "strings" if all(isinstance(v, str) for v in y[:100]) else f"{y.dtype} values"
        raise ValueError(f"column {y_col!r} holds {what} ({', '.join(repr(v) for v in y[:3].tolist())}, ...), not "
                         "class indices 0, 1, ...: if they are class names, give every split one ClassLabel, which "
                         "turns each name into its index (Dataset.class_encode_column would give each split its "
                         f"own order): dd = dd.cast_column({y_col!r}, datasets.ClassLabel(names=sorted(set("
                         f"dd['train'][{y_col!r}]))))")
    return y.astype(np.int64)


def _check_no_colour(ds: Any, x_col: str) -> None:
    """Refuse images whose colour channels differ, which a gray data set's decoding (mode "L") would turn gray;
    gray images stored as RGB or palette images (R = G = B) pass."""
    from datasets import Image
    images = (image for batch in ds.select_columns([x_col]).cast_column(x_col, Image(mode="RGB")).iter(1024)
              for image in batch[x_col])  # (a batch at a time: the whole column decoded at once may not fit)
    for row, image in enumerate(images):
        pixels = np.asarray(image)
        if (pixels[..., 1:] != pixels[..., :1]).any():
            raise ValueError(f"column {x_col!r} holds colour images (row {row}: its red, green and blue differ), and "
                             "this data set is read as gray (Fashion-MNIST's one channel), which would drop their "
                             "colour without a word. If gray is what you want, convert them first: dd = dd.map("
                             f"lambda b: {{{x_col!r}: [im.convert('L') for im in b[{x_col!r}]]}}, batched=True)")


def _image_modes(ds: Any, x_col: str) -> set[str]:
    """The PIL modes of the images in an `Image()` column, read from their headers (no pixels decoded: of images
    stored as bytes, the usual case)."""
    import PIL.Image
    from datasets import Image
    modes = set()
    for row, item in enumerate(ds.cast_column(x_col, Image(decode=False))[x_col]):
        if item is None:
            raise _no_image(x_col, row)
        if item["bytes"] is None:  # stored by path (maybe a URL or inside an archive): datasets opens those
            modes.add(Image().decode_example(item).mode)
            continue
        with PIL.Image.open(io.BytesIO(item["bytes"])) as image:
            modes.add(image.mode)
    return modes


def _declared_dtype(feature: Any) -> str | None:
    """The element type a datasets feature declares: an Array2D's or a Value's, or, for lists, their items'."""
    while hasattr(feature, "feature"):  # (datasets < 4's Sequence has a dtype of its own: "list")
        feature = feature.feature
    return getattr(feature, "dtype", None)


# ---------------------------------------------------------------- decoding

HF_NO_LABEL = ("-1 is the datasets library's 'no label'. Keep only items with a class label (e.g. "
               "ds.filter(lambda item: 0 <= item['label'] < {n})), or fix the labels")
_IDX_BAD_LABELS = "The file is damaged or holds another dataset's labels: fetch it again, or fix the labels"


def check_labels(y: torch.Tensor, classes: tuple[str, ...], what: str, fix: str) -> None:
    """Refuse labels that name no class: the loss would fail at the first batch holding one (on a GPU, a device-side
    assert), far from the file, or a metric would count it as a class. `fix` says what to do, for this kind of
    source."""
    bad = y[(y < 0) | (y >= len(classes))] if len(y) else y
    if len(bad):
        raise ValueError(f"{what} holds labels {sorted(set(bad.tolist()))[:5]} outside 0..{len(classes) - 1}, the "
                         f"{len(classes)} classes ({', '.join(classes[:3])}, ...). {fix.format(n=len(classes))}")


def _check_same_shape(train_x: torch.Tensor, valid_x: torch.Tensor, train_what: str, valid_what: str) -> None:
    """Refuse validation images of another size or channel count than the training ones: a model that pools them
    to one size validates on them without a word, and infer() refuses such images."""
    if train_x.shape[1:] != valid_x.shape[1:]:
        raise ValueError(f"{valid_what} holds images of shape (C, H, W) {tuple(valid_x.shape[1:])}, {train_what} "
                         f"{tuple(train_x.shape[1:])}: a model trained on the one can't be validated on the other. "
                         "Give both splits images of one size and number of channels")


def check_split_classes(dd: Any, valid_split: str, where: str) -> None:
    """Refuse a DatasetDict whose split `valid_split` names the classes of a label column (a ClassLabel) otherwise
    than split 'train' does, or not at all: a label would mean one class in training, another in validation."""
    features = {split: getattr(dd[split], "features", None) or {} for split in ("train", valid_split)}
    for col in [c for c in features["train"] if c in features[valid_split]]:
        train, valid = (getattr(features[s][col], "names", None) for s in ("train", valid_split))
        if train == valid:
            continue
        if train is None or valid is None:  # plain ints: taken as indices into the other split's names
            to, of = (valid_split, "train") if valid is None else ("train", valid_split)
            fix = f"dd[{to!r}] = dd[{to!r}].cast_column({col!r}, dd[{of!r}].features[{col!r}])"
        else:  # names in another order (or others): map each label by its name
            fix = (f"dd[{valid_split!r}] = dd[{valid_split!r}].align_labels_with_mapping({{name: i for i, name in "
                   f"enumerate(dd['train'].features[{col!r}].names)}}, {col!r})")
        raise ValueError(f"{where}: split {valid_split!r} names the classes of column {col!r} "
                         f"{'nowhere (plain ints)' if valid is None else valid}, split 'train' "
                         f"{'nowhere (plain ints)' if train is None else train}: a label would mean different "
                         f"classes in each. Give both splits the same ClassLabel: {fix}")


def _decode_idx(source: Source) -> RawData:
    train_x, train_y, valid_x, valid_y = (read_idx(f) for f in source.files)
    for f, t, nd in zip(source.files, (train_x, train_y, valid_x, valid_y), (3, 1, 3, 1)):
        if t.ndim != nd or t.dtype != torch.uint8:
            raise IDXError(f"{f}: expected a {nd}-dim uint8 array, got {t.ndim}-dim {t.dtype}")
    for f, x, y in ((source.files[1], train_x, train_y), (source.files[3], valid_x, valid_y)):
        if len(x) != len(y):
            raise IDXError(f"{f}: {len(y)} labels for {len(x)} images")
    for f, x, split in ((source.files[0], train_x, "training"), (source.files[2], valid_x, "validation")):
        if 0 in x.shape[1:]:
            raise IDXError(f"{f}: images of {x.shape[1]}x{x.shape[2]} pixels; an image has at least one row and "
                           "one column. The file is damaged or was written wrong: fetch it again")
        if len(x) == 0:
            raise ValueError(f"{f} holds no images: the {split} split is empty. Put the "
                             f"{'training' if split == 'training' else 'test'} images in it (miniai.idx.write_idx)")
    classes = _SPECS[source.name].classes
    for f, y in ((source.files[1], train_y), (source.files[3], valid_y)):
        check_labels(y, classes, str(f), _IDX_BAD_LABELS)
    _check_same_shape(train_x.unsqueeze(1), valid_x.unsqueeze(1), str(source.files[0]), str(source.files[2]))
    return RawData(train_x.unsqueeze(1), train_y.long(), valid_x.unsqueeze(1), valid_y.long(), classes,
                   f"IDX files in {source.where}")


def _decode_dd(source: Source) -> RawData:
    spec, dd = _SPECS[source.name], load_hub_dataset(source.where)
    valid_split = next((s for s in VALID_SPLITS if s in dd), None)
    if "train" not in dd or valid_split is None:
        raise ValueError(f"{source.where}: expected a split 'train' and, for validation, one of "
                         f"{', '.join(map(repr, VALID_SPLITS))}; got {list(dd)}")
    for split in ("train", valid_split):
        if len(dd[split]) == 0:
            raise ValueError(f"{source.where}: split {split!r} holds no images: give it some (or, for validation, "
                             "split some off the training set: parts = dd['train'].train_test_split(test_size=0.1); "
                             "dd['train'], dd['validation'] = parts['train'], parts['test'])")
    check_split_classes(dd, valid_split, source.where)
    tensors = {}
    for split in ("train", valid_split):
        try:
            tensors[split] = hf_to_tensors(dd[split], spec.x_col, mode=spec.mode)
        except (ValueError, KeyError) as e:  # hf_to_tensors knows the column, not the split
            raise type(e)(f"{source.where}: split {split!r}: {e.args[0] if e.args else e}") from e
    # the label column's class names; a saved DatasetDict of plain integer labels (from a CSV, parquet) is no
    # Fashion-MNIST: its classes are named by their numbers, up to the largest label
    classes = tuple(getattr(dd["train"].features.get("label"), "names", None) or ())
    if not classes and source.kind == "hub":
        classes = spec.classes
    elif not classes:
        classes = _numbered_classes([t[1] for t in tensors.values()], source.where)
    for split in ("train", valid_split):
        check_labels(tensors[split][1], classes, f"{source.where}: split {split!r}", HF_NO_LABEL)
    _check_same_shape(tensors["train"][0], tensors[valid_split][0], "split 'train'",
                      f"{source.where}: split {valid_split!r}")
    return RawData(*tensors["train"], *tensors[valid_split], classes,
                   f"{'hub dataset' if source.kind == 'hub' else 'saved DatasetDict'} {source.where}", valid_split)


def _numbered_classes(labels: list[torch.Tensor], where: str) -> tuple[str, ...]:
    """The classes of plain number labels, named by their numbers up to the largest; warned of when most numbers
    below it occur nowhere (a stray label, 30000 in a set of two classes: 30,001 classes)."""
    top = max(int(y.max()) for y in labels)
    used = len(set().union(*(y.unique().tolist() for y in labels)))
    if top >= 10 and 2 * used < top + 1:
        warn(f"{where}: labels are numbers (no ClassLabel), so the classes are named by them, 0 to {top}: {top + 1} "
             f"classes, and only {used} of them occur in the data. Is there a stray label? Fix it, or give the "
             "label column a ClassLabel naming the classes (dd = dd.cast_column('label', datasets.ClassLabel(names="
             "[...]))) to say they are meant")
    return tuple(str(i) for i in range(top + 1))


def read_source(source: Source) -> RawData:
    """Decode `source` (the slow step the caches avoid); DataNotFoundError if it is the hub and that is out of reach."""
    if source.kind == "idx":
        return _decode_idx(source)
    if source.kind == "saved":
        return _decode_dd(source)
    why = _hub_unavailable()
    if why:
        raise _not_found(source.name, [*source.tried, f"hub {source.where}: {why}"])
    try:
        return _decode_dd(source)
    except OSError as e:  # datasets' ConnectionError / DatasetNotFoundError are OSErrors
        raise _not_found(source.name, [*source.tried, f"hub {source.where}: {type(e).__name__}: {e}"]) from e
