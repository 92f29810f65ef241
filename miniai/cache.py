"""Decoded datasets kept in memory (per process) and on disk (`$MINIAI_CACHE`, default ~/.cache/miniai).

A source is decoded once (`miniai.sources`), saved as one torch file (with a hash of its tensors) keyed by the
source files' sizes, mtimes, inodes and ctimes, and kept in memory with its training set's mean and std, so a warm
`get_dls()` only normalizes a fresh float32 copy.
Imports nothing from miniai but `sources` and `utils`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import zlib
from pathlib import Path
from typing import NamedTuple

import torch

from .checks import warn
from .sources import RawData, find_source, read_source
from .utils import byte_sums

__all__ = ["CACHE_STATS", "Normalized", "clear_cache", "load_normalized", "load_tensors", "normalized_split",
           "valid_split"]

CACHE_STATS: dict[str, int] = {"memory_hits": 0, "disk_hits": 0, "decodes": 0}
"""How `load_tensors` was served, counted since import; tests read it to check the caches are used."""


class Normalized(NamedTuple):
    """float32 images (x/255 - mean)/std with the training set's per-channel mean and std [C]."""
    train_x: torch.Tensor
    valid_x: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


_MEMORY: dict[str, tuple[RawData, torch.Tensor, torch.Tensor]] = {}  # source key -> (raw, mean, std)


def clear_cache() -> None:
    """Forget the in-memory cache (the on-disk cache stays)."""
    _MEMORY.clear()


def _cache_file(name: str, key: str) -> Path:
    return Path(os.environ.get("MINIAI_CACHE") or Path.home() / ".cache" / "miniai") / f"{name}_{key}.pt"


def _digest(raw: RawData) -> list:
    """Checksums of the four tensors' bytes (`byte_sums`) and of the class names, source and split names: a damaged
    cache file is decoded again, not used, and so is one of an older miniai's checksum, which missed swapped bytes
    (cached data can be rebuilt; a checkpoint, which can't, still verifies with its older checksum)."""
    names = json.dumps([list(raw.classes), raw.source, raw.valid_split]).encode()
    return [*byte_sums(raw[:4]), zlib.crc32(names)]


def _read_cache(file: Path) -> RawData | None:
    """The cached tensors, or None when missing, unreadable, malformed or damaged (then it is simply rebuilt)."""
    try:
        d = torch.load(file, weights_only=True)
        raw = RawData(d["train_x"], d["train_y"], d["valid_x"], d["valid_y"], tuple(d["classes"]), d["source"],
                      d["valid_split"])  # (a file of an older miniai's, without it: decoded again)
        ok = all(t.dtype == torch.uint8 and t.ndim == 4 for t in (raw.train_x, raw.valid_x)) and all(
            t.dtype == torch.int64 and len(t) == len(x) for t, x in ((raw.train_y, raw.train_x),
                                                                     (raw.valid_y, raw.valid_x)))
        return raw if ok and d.get("digest") == _digest(raw) else None
    except Exception:  # noqa: BLE001 -- any failure to read the cache means "decode again"
        return None


def _write_cache(file: Path, raw: RawData) -> bool:
    """Save atomically (temp file + os.replace) so a crash never leaves a half-written cache; failures only warn."""
    tmp = file.with_name(f".{file.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
    _remove_stale_temporaries(file)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save({**raw._asdict(), "classes": list(raw.classes), "digest": _digest(raw)}, tmp)
        os.replace(tmp, file)
        return True
    except BaseException as e:  # a full disk (torch's writer says "enforce fail at inline_container"), Ctrl-C
        with contextlib.suppress(OSError):  # (the cache "dir" is a file, say: no temporary file to remove)
            tmp.unlink(missing_ok=True)
        if not isinstance(e, Exception):
            raise
        warn(f"could not write the data cache {file} ({type(e).__name__}: {str(e)[:200]}); the data are read "
             "without it. If the disk is full, free some space; else set MINIAI_CACHE to a writable dir")
        return False


def _remove_stale_temporaries(file: Path, age_s: float = 3600.0) -> None:
    """Remove the temporary files of writers of `file` killed while writing (55 MB each for Fashion-MNIST): those
    over an hour old. (A writer of now, another process or a machine sharing the dir, has a fresh one.)"""
    ours = re.compile(rf"\.{re.escape(file.name)}\.\d+(\.\d+)?\.tmp")  # (.<name>.<pid>[.<thread>].tmp)
    now = time.time()
    for stale in (f for f in file.parent.glob(f".{file.name}.*.tmp") if ours.fullmatch(f.name)):
        with contextlib.suppress(OSError):
            if now - stale.stat().st_mtime > age_s:
                stale.unlink()


def _remove_older_versions(name: str, file: Path) -> None:
    """Remove the cache files of the same source's earlier contents (55 MB each for Fashion-MNIST), but the newest
    one besides `file` (machines sharing a cache dir, each with its own copy of the data at the same path, take
    turns), and those of an older miniai's naming, which no key names any more; other sources' files stay."""
    place = file.name.rsplit("-", 1)[0]  # '<name>_<place>'
    version = re.compile(rf"{re.escape(place)}-[0-9a-f]{{12}}\.pt")  # (Source.key's version: 12 hex digits)
    same = sorted((f for f in file.parent.glob(f"{place}-*.pt") if f != file and version.fullmatch(f.name)),
                  key=_mtime, reverse=True)
    old_naming = re.compile(rf"{re.escape(name)}_[0-9a-f]{{16}}\.pt")
    legacy = [f for f in file.parent.glob(f"{name}_*.pt") if old_naming.fullmatch(f.name)]
    for old in same[1:] + legacy:
        if not _is_cache_file(old):  # a user's file of the same name pattern (MINIAI_CACHE a shared folder)
            continue
        try:
            old.unlink()
        except OSError:  # another process removed it, or may not: a stale file only costs disk
            pass


def _is_cache_file(file: Path) -> bool:
    """Whether `file` holds what `_write_cache` writes (read lazily: mmap, no pixels loaded); only those are removed."""
    try:
        d = torch.load(file, weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 -- not a torch file we can read: not ours to delete
        return False
    return isinstance(d, dict) and set(RawData._fields) - {"valid_split"} <= d.keys()  # (an older miniai's too)


def _mtime(file: Path) -> float:
    try:
        return file.stat().st_mtime
    except OSError:  # (removed meanwhile)
        return 0.0


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


def _normalize(train_x: torch.Tensor, valid_x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> Normalized:
    scale, shift = (1 / (255 * std)).view(1, -1, 1, 1), (mean / std).view(1, -1, 1, 1)
    # (x/255 - mean)/std, done in place on one float copy
    # mean and std copied too: they may be the cache's own, and a caller may edit what it is handed
    return Normalized(*(x.to(torch.float32).mul_(scale).sub_(shift) for x in (train_x, valid_x)), mean.clone(),
                      std.clone())


def _check_spread(mean: torch.Tensor, std: torch.Tensor, what: str) -> None:
    """Refuse training images of one gray level in a channel: nothing to learn, and normalizing divides by std 0."""
    for c in range(len(std)):
        if std[c] == 0:
            raise ValueError(f"{what}: the training images are all one gray level ({round(float(mean[c]) * 255)} of "
                             f"255, channel {c}), nothing to learn from, and normalizing them would divide by 0. If "
                             "the files hold zeros where pixels belong (a broken download or copy), fetch them again")


def normalized_split(train_x: torch.Tensor, valid_x: torch.Tensor, what: str = "train_x") -> Normalized:
    """uint8 images [N,C,H,W] of a split of one's own, normalized with the per-channel mean and std of `train_x`
    alone (a held-out part of the training set must not shape the normalization, as the test set does not);
    `what` names the data in the error for training images of one gray level."""
    mean, std = _stats(train_x)
    _check_spread(mean, std, what)
    return _normalize(train_x, valid_x, mean, std)


def _cached(name: str, path: str | os.PathLike | None) -> tuple[RawData, torch.Tensor, torch.Tensor]:
    """`name`'s raw tensors and their training images' mean and std, from memory, the disk cache, or by decoding
    (in that order); the cached objects themselves, which callers copy before handing out."""
    source = find_source(name, path)
    key = source.key()
    if key in _MEMORY:
        CACHE_STATS["memory_hits"] += 1
    else:
        file = _cache_file(name, key)
        if source.kind == "saved" and file.parent.resolve().is_relative_to(Path(source.where).resolve()):
            # its files would be part of the folder's key: never a hit, and a new 55 MB file in the data each call
            raise ValueError(f"MINIAI_CACHE={file.parent} is inside the data folder {source.where}: point it "
                             "elsewhere (or unset it for ~/.cache/miniai)")
        raw = _read_cache(file)
        if raw is not None:
            CACHE_STATS["disk_hits"] += 1
        else:
            raw = read_source(source)
            CACHE_STATS["decodes"] += 1
            if _write_cache(file, raw):
                _remove_older_versions(name, file)
        _MEMORY[key] = (raw, *_stats(raw.train_x))
    return _MEMORY[key]


def _copy(raw: RawData) -> RawData:
    # new tensors for every call: one run's in-place edits (an occlusion test, label noise) must not reach the
    # cache that every later call of the process reads
    return raw._replace(**{k: getattr(raw, k).clone() for k in ("train_x", "train_y", "valid_x", "valid_y")})


def load_normalized(name: str = "fashion_mnist", path: str | os.PathLike | None = None
                    ) -> tuple[RawData, Normalized]:
    """`name`'s raw tensors and their normalized copy (`_cached`); every call gets its own copy, so editing one
    run's data changes no later call's."""
    raw, mean, std = _cached(name, path)
    _check_spread(mean, std, raw.source)
    return _copy(raw), _normalize(raw.train_x, raw.valid_x, mean, std)


def valid_split(name: str = "fashion_mnist", path: str | os.PathLike | None = None) -> str:
    """The split the dataset's validation images are ('test', or a DatasetDict's 'validation', ...), read from the
    cache without copying its tensors."""
    return _cached(name, path)[0].valid_split


def load_tensors(name: str = "fashion_mnist", path: str | os.PathLike | None = None) -> RawData:
    """The dataset as raw uint8 images [N,C,H,W] and int64 labels (cached, a copy of its own), from the first
    available source."""
    return _copy(_cached(name, path)[0])
