"""Datasets decoded once into uint8 tensors, normalized once, and batched by slicing (airbench style).

Imports nothing from miniai, so a plain torch loop can use it. `get_dls()` is the default path:
  Fashion-MNIST from (1) `path=` or `$MINIAI_DATA`, (2) `SYSTEM_DATA_DIR` (Debian's dataset-fashion-mnist),
  (3) the Hugging Face hub; CIFAR-10 from `path=` (a `DatasetDict.save_to_disk` dir) or the hub.
Decoded tensors are cached in memory (per process) and on disk (`$MINIAI_CACHE`, default ~/.cache/miniai).
`DataLoaders.from_dd` is the course-compatible adapter over any HF `DatasetDict`.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import socket
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset, default_collate

__all__ = ["IDXError", "DataNotFoundError", "read_idx", "write_idx", "FASHION_CLASSES", "CIFAR10_CLASSES",
           "SYSTEM_DATA_DIR", "CACHE_STATS", "RawData", "load_tensors", "load_hub_dataset", "hf_to_tensors",
           "clear_cache", "TensorLoader", "DataLoaders", "get_dls"]

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SYSTEM_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's `dataset-fashion-mnist` puts the IDX files; module-level so tests can point it elsewhere."""

# ---------------------------------------------------------------- IDX files

# type byte of the magic number 0x0000TTNN -> big-endian numpy dtype (IDX stores data big-endian)
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_TORCH_TO_IDX = {torch.uint8: 0x08, torch.int8: 0x09, torch.int16: 0x0B, torch.int32: 0x0C,
                 torch.float32: 0x0D, torch.float64: 0x0E}


class IDXError(ValueError):
    """An IDX file is truncated, corrupt or not IDX at all; the message names the file and what was expected."""


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file (gzipped or plain, detected from its content) into a tensor of its stored dtype."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip's magic; an IDX file starts with two zero bytes, so no ambiguity
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise IDXError(f"{path}: broken gzip stream ({e}); the file is truncated or corrupt, fetch it again") from e
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise IDXError(f"{path}: not an IDX file: expected magic 0x0000TTNN with type TT in "
                       f"{{08,09,0B,0C,0D,0E}} and NN >= 1 dims, got 0x{raw[:4].hex()}")
    ndim, dtype = raw[3], np.dtype(_IDX_TYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXError(f"{path}: truncated header: {ndim} dims need {header} bytes, file has {len(raw)}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected, actual = math.prod(dims) * dtype.itemsize, len(raw) - header
    if expected != actual:
        raise IDXError(f"{path}: header says {'x'.join(map(str, dims))} {dtype.name} = {expected} data bytes, "
                       f"found {actual} ({'truncated' if actual < expected else 'trailing bytes'}); "
                       "the file is corrupt, fetch it again")
    # astype copies into native byte order, giving torch a writable array it owns
    arr = np.frombuffer(raw, dtype, offset=header).astype(dtype.newbyteorder("="))
    return torch.from_numpy(arr.reshape(dims))


def write_idx(path: str | os.PathLike, tensor: torch.Tensor) -> None:
    """Write `tensor` as an IDX file, gzipped if `path` ends in .gz; written to a temp file then renamed."""
    if tensor.dtype not in _TORCH_TO_IDX or tensor.ndim == 0:
        raise ValueError(f"write_idx needs a tensor with >= 1 dim of dtype {list(_TORCH_TO_IDX)}, "
                         f"got {tensor.dtype} with shape {tuple(tensor.shape)}")
    code = _TORCH_TO_IDX[tensor.dtype]
    data = tensor.detach().cpu().numpy().astype(_IDX_TYPES[code]).tobytes()
    blob = bytes([0, 0, code, tensor.ndim]) + b"".join(d.to_bytes(4, "big") for d in tensor.shape) + data
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(gzip.compress(blob, compresslevel=6) if path.name.endswith(".gz") else blob)
    os.replace(tmp, path)


# ---------------------------------------------------------------- where the data comes from

class DataNotFoundError(FileNotFoundError):
    """No source for the dataset was available; the message lists every option and how to enable it."""


@dataclass(frozen=True)
class _Spec:
    hub: str             # hub id for datasets.load_dataset
    x_col: str           # image column in the hub schema
    classes: tuple[str, ...]
    idx: bool            # whether IDX directories (path/MINIAI_DATA/system dir) can hold it


_SPECS = {"fashion_mnist": _Spec("zalando-datasets/fashion_mnist", "image", FASHION_CLASSES, idx=True),
          "cifar10": _Spec("uoft-cs/cifar10", "img", CIFAR10_CLASSES, idx=False)}
_IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class _Source:
    kind: str            # "idx" (four IDX files), "saved" (a DatasetDict.save_to_disk dir) or "hub"
    where: str           # directory or hub id
    files: tuple[Path, ...] = ()

    def key(self, name: str) -> str:
        """Cache key: changes when any source file's size or mtime does (a hub id is assumed immutable)."""
        stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in self.files]
        return hashlib.sha1(repr((1, name, self.kind, self.where, stats)).encode()).hexdigest()[:16]


def _idx_files(d: Path) -> tuple[tuple[Path, ...], list[str]]:
    """The four Fashion-MNIST IDX files in `d` (.gz, plain, or LeCun's '.idx' spelling) and the missing stems."""
    found, missing = [], []
    for stem in _IDX_STEMS:
        dotted = stem.replace("-idx", ".idx")
        hit = next((d / n for n in (stem + ".gz", stem, dotted + ".gz", dotted) if (d / n).is_file()), None)
        (found if hit else missing).append(hit or stem)
    return tuple(found), missing


def _dir_source(d: Path, spec: _Spec) -> tuple[_Source | None, str]:
    """A source for directory `d`, or None and the reason it holds no usable data."""
    if (d / "dataset_dict.json").is_file():
        return _Source("saved", str(d), tuple(sorted(f for f in d.rglob("*") if f.is_file()))), ""
    if not d.is_dir():
        return None, f"{d} is not a directory"
    if spec.idx:
        files, missing = _idx_files(d)
        if not missing:
            return _Source("idx", str(d), files), ""
        return None, f"{d} lacks {', '.join(m + '(.gz)' for m in missing)} and is no saved DatasetDict"
    return None, f"{d} holds no DatasetDict saved with save_to_disk (no dataset_dict.json)"


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
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
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
        return datasets.load_from_disk(str(name_or_path))
    return datasets.load_dataset(str(name_or_path), **kwargs)


def hf_to_tensors(ds: Any, x_col: str = "image", y_col: str = "label") -> tuple[torch.Tensor, torch.Tensor]:
    """A HF `Dataset` with an image column and int labels -> (uint8 [N,C,H,W], int64 [N])."""
    if x_col not in ds.column_names or y_col not in ds.column_names:
        raise KeyError(f"dataset needs columns {x_col!r} and {y_col!r}, has {ds.column_names}")
    # numpy formatting decodes every image (PIL, inside datasets) and stacks them into one array; this is the
    # slow step of the hub path, which is why get_dls caches the result on disk
    x = np.asarray(ds.with_format("numpy", columns=[x_col])[:][x_col])
    y = np.asarray(ds.with_format("numpy", columns=[y_col])[:][y_col])
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise ValueError(f"column {x_col!r} must hold same-sized 8-bit images, got array {x.dtype} {x.shape}")
    x = torch.from_numpy(x)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
    return x, torch.from_numpy(y.astype(np.int64))


# ---------------------------------------------------------------- decoding and caching

class RawData(NamedTuple):
    """Decoded dataset: uint8 images [N,C,H,W], int64 labels, class names, and where it came from."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    valid_x: torch.Tensor
    valid_y: torch.Tensor
    classes: tuple[str, ...]
    source: str


CACHE_STATS: dict[str, int] = {"memory_hits": 0, "disk_hits": 0, "decodes": 0}
"""How `load_tensors` was served, counted since import; tests read it to check the caches are used."""
_MEMORY: dict[str, tuple[RawData, tuple[torch.Tensor, ...]]] = {}  # key -> (raw, normalized train/valid x, mean, std)


def clear_cache() -> None:
    """Forget the in-memory cache (the on-disk cache stays)."""
    _MEMORY.clear()


def _cache_file(name: str, key: str) -> Path:
    return Path(os.environ.get("MINIAI_CACHE") or Path.home() / ".cache" / "miniai") / f"{name}_{key}.pt"


def _read_cache(file: Path) -> RawData | None:
    """The cached tensors, or None when missing, unreadable or malformed (then it is simply rebuilt)."""
    try:
        d = torch.load(file, weights_only=True)
        raw = RawData(d["train_x"], d["train_y"], d["valid_x"], d["valid_y"], tuple(d["classes"]), d["source"])
    except Exception:  # noqa: BLE001 -- any failure to read the cache means "decode again"
        return None
    ok = all(t.dtype == torch.uint8 and t.ndim == 4 for t in (raw.train_x, raw.valid_x)) and all(
        t.dtype == torch.int64 and len(t) == len(x) for t, x in ((raw.train_y, raw.train_x), (raw.valid_y, raw.valid_x)))
    return raw if ok else None


def _write_cache(file: Path, raw: RawData) -> None:
    """Save atomically (temp file + os.replace) so a crash never leaves a half-written cache; failures only warn."""
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save({**raw._asdict(), "classes": list(raw.classes)}, tmp)
        os.replace(tmp, file)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write the data cache {file} ({e}); set MINIAI_CACHE to a writable dir", stacklevel=4)


def _decode(name: str, source: _Source, spec: _Spec) -> RawData:
    """Read a source into RawData (the slow part the caches avoid)."""
    if source.kind == "idx":
        train_x, train_y, valid_x, valid_y = (read_idx(f) for f in source.files)
        for f, t, nd in zip(source.files, (train_x, train_y, valid_x, valid_y), (3, 1, 3, 1)):
            if t.ndim != nd or t.dtype != torch.uint8:
                raise IDXError(f"{f}: expected a {nd}-dim uint8 array, got {t.ndim}-dim {t.dtype}")
        for f, x, y in ((source.files[1], train_x, train_y), (source.files[3], valid_x, valid_y)):
            if len(x) != len(y):
                raise IDXError(f"{f}: {len(y)} labels for {len(x)} images")
        return RawData(train_x.unsqueeze(1), train_y.long(), valid_x.unsqueeze(1), valid_y.long(),
                       spec.classes, f"IDX files in {source.where}")
    dd = load_hub_dataset(source.where)
    valid_split = next((s for s in ("test", "validation", "valid") if s in dd), None)
    if "train" not in dd or valid_split is None:
        raise ValueError(f"{source.where}: expected splits 'train' and 'test' (or 'validation'), got {list(dd)}")
    label_feature = dd["train"].features.get("label")
    classes = tuple(getattr(label_feature, "names", None) or spec.classes)
    return RawData(*hf_to_tensors(dd["train"], spec.x_col), *hf_to_tensors(dd[valid_split], spec.x_col),
                   classes, f"{'hub dataset' if source.kind == 'hub' else 'saved DatasetDict'} {source.where}")


def _find_source(name: str, path: str | os.PathLike | None) -> tuple[_Source, list[str]]:
    """The first local source in the documented order, else the hub; plus why each earlier option failed."""
    spec, tried = _SPECS[name], []
    user_dir = path if path is not None else (os.environ.get("MINIAI_DATA") if spec.idx else None)
    if user_dir:
        source, why = _dir_source(Path(user_dir), spec)
        if source:
            return source, tried
        tried.append(f"path=/MINIAI_DATA: {why}")
        warnings.warn(f"{why}; trying the other sources", stacklevel=4)
    if spec.idx:
        source, why = _dir_source(SYSTEM_DATA_DIR, spec)
        if source:
            return source, tried
        tried.append(f"system dir: {why}")
    return _Source("hub", spec.hub), tried  # last resort, checked only if its disk cache is missing


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


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of x/255 over uint8 [N,C,H,W], exact via a 256-bin histogram (float64)."""
    levels = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        mean = (hist * levels).sum() / hist.sum()
        means.append(mean)
        stds.append(((hist * (levels - mean) ** 2).sum() / hist.sum()).sqrt())
    return torch.stack(means).float(), torch.stack(stds).float()


def _load(name: str, path: str | os.PathLike | None) -> tuple[RawData, tuple[torch.Tensor, ...]]:
    """Raw and normalized tensors for `name`, from memory, the disk cache, or by decoding (in that order)."""
    if name not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(_SPECS)}")
    source, tried = _find_source(name, path)
    key = source.key(name)
    if key in _MEMORY:
        CACHE_STATS["memory_hits"] += 1
        return _MEMORY[key]
    file = _cache_file(name, key)
    raw = _read_cache(file)
    if raw is not None:
        CACHE_STATS["disk_hits"] += 1
    else:
        if source.kind == "hub":
            why = _hub_unavailable()
            if why:
                raise _not_found(name, tried + [f"hub {source.where}: {why}"])
        try:
            raw = _decode(name, source, _SPECS[name])
        except OSError as e:  # datasets' ConnectionError / DatasetNotFoundError are OSErrors
            if source.kind != "hub":
                raise
            raise _not_found(name, tried + [f"hub {source.where}: {type(e).__name__}: {e}"]) from e
        CACHE_STATS["decodes"] += 1
        _write_cache(file, raw)
    mean, std = _stats(raw.train_x)

    def norm(x: torch.Tensor) -> torch.Tensor:  # (x/255 - mean)/std, done in place on one float copy
        scale, shift = (1 / (255 * std)).view(1, -1, 1, 1), (mean / std).view(1, -1, 1, 1)
        return x.to(torch.float32).mul_(scale).sub_(shift)

    # normalized tensors are cached too, so a warm get_dls() is a dict lookup plus slicing
    _MEMORY[key] = (raw, (norm(raw.train_x), norm(raw.valid_x), mean, std))
    return _MEMORY[key]


def load_tensors(name: str = "fashion_mnist", path: str | os.PathLike | None = None) -> RawData:
    """The dataset as raw uint8 images [N,C,H,W] and int64 labels (cached), from the first available source."""
    return _load(name, path)[0]


# ---------------------------------------------------------------- loaders

class TensorLoader:
    """Batches `(xb, yb)` by slicing in-memory tensors; shuffled epochs are reproducible and resumable.

    With `shuffle`, epoch e uses `torch.randperm(n, generator=torch.Generator().manual_seed(seed + e))`,
    a pure function of (seed, e). `epoch` counts the epochs started, so `state_dict()` = {seed, epoch}
    resumes at the next epoch's order. Unshuffled batches are views of `x`/`y`: don't modify them in place.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, bs: int = 1024, shuffle: bool = False,
                 seed: int | None = None, drop_last: bool = False) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y need the same length, got {len(x)} and {len(y)}")
        if bs < 1:
            raise ValueError(f"bs must be >= 1, got {bs}")
        self.x, self.y, self.bs, self.shuffle, self.drop_last = x, y, bs, shuffle, drop_last
        # no seed: draw one from torch's global RNG, so torch.manual_seed() still makes runs repeatable
        self.seed: int = int(torch.randint(0, 2**31, ())) if seed is None else int(seed)
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
        """The (CPU) order of all items in `epoch`; identical on every rank."""
        return torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed + epoch))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1  # counted on iter(), so a mid-epoch checkpoint resumes next
        idx = None
        if self.shuffle:
            # one small host->device copy per epoch, then batches are gathered on the data's device; from pinned
            # memory the copy is asynchronous, so not even this one stalls the CPU (a pageable copy would sync)
            idx = self.permutation(epoch)
            if self.x.device.type == "cuda":
                idx = idx.pin_memory().to(self.x.device, non_blocking=True)
            else:
                idx = idx.to(self.x.device)
        return self._batches(idx, list(self._spans()))

    def _batches(self, idx: torch.Tensor | None, spans: list[tuple[int, int]]
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start, stop in spans:
            if idx is None:
                yield self.x[start:stop], self.y[start:stop]
            else:
                b = idx[start:stop]
                yield self.x[b], self.y[b]

    def state_dict(self) -> dict[str, int]:
        """{'seed', 'epoch'}: enough to replay the same order from the next epoch on."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore `seed` and `epoch` from `state_dict()`."""
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])

    def set_epoch(self, epoch: int) -> None:
        """Make the next `iter()` run epoch `epoch` (as DistributedSampler.set_epoch)."""
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


class DataLoaders:
    """A train and a valid loader, plus the class names when known."""

    def __init__(self, train: Any, valid: Any, classes: list[str] | None = None) -> None:
        self.train, self.valid, self.classes = train, valid, classes

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

        With `as_tuple`, dict batches become tuples in column order, as the course's `collate_dict` does.
        """
        splits = list(dd.values())
        train = dd["train"] if "train" in dd else splits[0]
        valid = next((dd[s] for s in ("validation", "valid", "test") if s in dd), splits[-1])
        collate = collate_fn
        if as_tuple:
            def collate(items: list) -> Any:
                batch = collate_fn(items)
                return tuple(batch.values()) if isinstance(batch, dict) else batch
        return cls(DataLoader(train, batch_size, shuffle=True, collate_fn=collate, **kwargs),
                   DataLoader(valid, batch_size * 2, shuffle=False, collate_fn=collate, **kwargs))


def get_dls(name: str = "fashion_mnist", bs: int = 1024, path: str | os.PathLike | None = None,
            valid_bs: int | None = None, seed: int | None = None, device: str | torch.device | None = None,
            n_train: int | None = None, n_valid: int | None = None) -> DataLoaders:
    """In-memory DataLoaders for `name`: float32 [N,C,H,W] normalized by the full training set's mean/std.

    `n_train`/`n_valid` keep the first n items (quick runs); `device` moves all the data there once.
    """
    raw, (train_x, valid_x, _, _) = _load(name, path)
    for what, n, have in (("n_train", n_train, len(train_x)), ("n_valid", n_valid, len(valid_x))):
        if n is not None and not 0 < n <= have:
            raise ValueError(f"{what} must be in 1..{have}, got {n}")
    train = TensorLoader(train_x[:n_train], raw.train_y[:n_train], bs, shuffle=True, seed=seed)
    valid = TensorLoader(valid_x[:n_valid], raw.valid_y[:n_valid], valid_bs or bs)
    dls = DataLoaders(train, valid, classes=list(raw.classes))
    return dls.to(device) if device is not None else dls
