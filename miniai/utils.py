"""Small helpers every other piece needs: the default device, moving nested batches, seeding, the CPU allocator."""
from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import functools
import numbers
import os
import random
import sys
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checks import warn

__all__ = ["def_device", "model_device", "model_dtype", "drop_graph", "map_tensors", "tensors_in", "to_device",
           "to_cpu", "set_seed", "fix_malloc", "compile_model", "byte_sums", "checksums_match", "len_or_none",
           "claim_dir", "DirInUseError",
           "loss_setting", "loss_reduction", "without_graph", "trained_parameters", "nonfinite_weight", "rngs_kept",
           "check_device", "class_loss", "counted", "tensor_versions", "check_seed", "unpartial",
           "base_loss", "name_of", "tagged", "lazy_tensors", "frames"]


def _pick_device() -> str:
    """'cuda' if available, else 'mps' if available, else 'cpu'."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def_device: str = _pick_device()
"""The device miniai uses when none is given: 'cuda', else 'mps', else 'cpu' (a string, as in the course)."""


def without_graph(x: Any, copy: bool = False) -> Any:
    """`x` with its tensors detached (a model's (logits, aux) too); an output of a type that can't be rebuilt (a
    dataclass with an InitVar) as it is: only a copy of it would fail. `copy`: copies, for a value kept while its
    tensors change in place (a tensor lr the scheduler fills, a view of a weight the step moves)."""
    try:
        return map_tensors(x, (lambda t: t.detach().clone()) if copy else torch.Tensor.detach)
    except Exception:  # noqa: BLE001
        return x


def drop_graph(learn: Any) -> None:
    """Detach `learn.loss` and `learn.preds`: the last training batch's graph, which nothing needs and a copy of the
    learner fails on."""
    for name in ("loss", "preds"):
        if hasattr(learn, name):
            setattr(learn, name, without_graph(getattr(learn, name)))


def map_tensors(x: Any, fn: Any) -> Any:
    """Apply `fn` to every tensor inside nested tuples/lists/dicts, keeping each container's type."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, dict):
        # A shallow copy keeps the exact type (OrderedDict, an attribute-dict, a model output) without calling its
        # constructor (dict.copy would give a plain dict)
        try:
            out = copy.copy(x)
        except TypeError:  # a class whose copy needs constructor arguments: its items in a plain dict
            out = dict(x)
        for k, v in x.items():
            out[k] = map_tensors(v, fn)
        return out
    if dataclasses.is_dataclass(x) and not isinstance(x, type):  # a model output as a dataclass
        out = copy.copy(x)  # (not dataclasses.replace: it resets init=False fields, drops other attributes)
        for f in dataclasses.fields(x):
            object.__setattr__(out, f.name, map_tensors(getattr(x, f.name), fn))  # (frozen ones too)
        return out
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # namedtuple: its constructor takes fields positionally
        return type(x)(*(map_tensors(o, fn) for o in x))
    if isinstance(x, (list, tuple)):
        items = [map_tensors(o, fn) for o in x]
        try:
            return type(x)(items)
        except TypeError:  # a subclass whose constructor takes other arguments: a list's copy takes the items
            if isinstance(x, tuple):
                raise
            out = copy.copy(x)
            out[:] = items
            return out
    return x


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter; the CPU for a model without parameters."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def model_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating parameter (float32, or a model halved to ship); None without one."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def to_device(x: Any, device: str | torch.device = def_device) -> Any:
    """Move every tensor in `x` (a tensor or nested tuples/lists/dicts) to `device`; other values pass through."""
    # non_blocking only towards CUDA: a non-blocking copy *to the CPU* may be read before it lands, and one to MPS
    # may read its source after the source is freed (pytorch#139550): batches would be silently corrupted
    non_blocking = torch.device(device).type == "cuda"
    return map_tensors(x, lambda t: t.to(device, non_blocking=non_blocking))


def to_cpu(x: Any) -> Any:
    """Detach every tensor in `x` (nested tuples/lists/dicts) and move it to the CPU, keeping its dtype."""
    # A blocking copy: the caller reads the values next (metrics, plots), so they must have arrived.
    return map_tensors(x, lambda t: t.detach().cpu())


def check_seed(seed: Any, name: str = "seed", type_error: type[Exception] = TypeError) -> int:
    """`seed` as an int in 0..2**32-1, or an error naming `name` (`type_error` for one that is no int): torch's CPU
    generator and NumPy's read 32 bits of a seed, so seeds 2**32 apart (or -1 and 2**32-1) would draw the same
    numbers."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise type_error(f"{name} must be an int in 0..2**32-1, got {seed!r}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"{name} must be an integer in 0..2**32-1, got {seed!r}: torch's CPU generator and NumPy's "
                         "read 32 bits of a seed, so seeds 2**32 apart (or -1 and 2**32-1) would draw the same numbers")
    return int(seed)  # (a NumPy integer: Python's random.seed takes no other kind)


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python's `random`, NumPy and torch (CPU and every CUDA device); optionally force deterministic kernels.

    With `deterministic=True`, torch raises on ops that have no deterministic implementation, and cuDNN
    autotuning is turned off. With `deterministic=False` the deterministic-algorithms switch is turned off
    again (as in the course), so each call states the mode you run in.
    """
    seed = check_seed(seed, "set_seed's seed", type_error=ValueError)  # (a ValueError, as set_seed always raised)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds the CPU generator and every CUDA/MPS device generator
    if deterministic:
        # cuBLAS needs a fixed workspace to be reproducible; it must be set before the first cuBLAS call.
        if "CUBLAS_WORKSPACE_CONFIG" not in os.environ and torch.cuda.is_available() and torch.cuda.is_initialized():
            warn("set_seed(deterministic=True) after CUDA was started: cuBLAS may already have read its "
                 "workspace setting, so matrix products may not be reproducible. Call set_seed first, or "
                 "set CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment before starting Python.")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = deterministic
    if deterministic or torch.are_deterministic_algorithms_enabled():
        # only when the mode changes: the call imports sympy, triton and torch.distributed (1.7 s here, torch 2.14)
        torch.use_deterministic_algorithms(deterministic)


_MALLOC_FIXED = False


def tensors_in(x: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside nested dicts, lists, tuples and dataclasses (or `x` itself), in order."""
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (dict, list, tuple)):
        for v in x.values() if isinstance(x, dict) else x:
            yield from tensors_in(v)
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):  # (as map_tensors maps them)
        for f in dataclasses.fields(x):
            yield from tensors_in(getattr(x, f.name))


def tensor_versions(x: Any) -> Any:
    """The in-place modification counter of tensor `x` (shared with its views; None for one made under
    torch.inference_mode, which keeps none), or a tuple of those of the tensors inside `x` (see `tensors_in`)."""
    if not isinstance(x, torch.Tensor):
        return tuple(tensor_versions(t) for t in tensors_in(x))
    try:
        return x._version
    except RuntimeError:
        return None


_CHECKSUM = "crc32"  # byte_sums' first item: names the checksum (the older lists hold ints only)


def _plain_bytes(t: torch.Tensor) -> torch.Tensor | None:
    """A tensor's bytes as a flat uint8 tensor on its device; None when it has no plain bytes to check."""
    if t.numel() == 0 or t.layout != torch.strided or t.is_nested or t.is_meta:
        return None
    t = t.detach()
    t = (t.int_repr() if t.is_quantized else t).resolve_conj().resolve_neg().contiguous()
    return t.reshape(-1).view(torch.uint8)


def byte_sums(tensors: Any) -> list:
    """Checksums of the tensors' bytes, `["crc32", crc, ...]` with one CRC-32 per tensor: torch's zip reader checks
    none, so a damaged file loads. Compare a list read back with `checksums_match`, which knows the older ones.

    A CRC sees any changed byte and bytes moved (swapped words or blocks), which the position-blind sums of earlier
    versions missed, at ~12 ms per 50 MB on one core (those sums: 5-16 ms)."""
    sums: list = [_CHECKSUM]
    for t in tensors:
        data = _plain_bytes(t)
        sums.append(0 if data is None else zlib.crc32(data.cpu().numpy()))
    return sums


def checksums_match(saved: Any, tensors: Any) -> bool:
    """Whether `saved`, a `byte_sums` list read back from a file, is that of `tensors`; a list of the older checksum
    (ints only, miniai before CRC-32) is checked with that one, so files saved then still verify."""
    tensors = list(tensors)
    if isinstance(saved, list) and saved[:1] != [_CHECKSUM]:
        return saved == _legacy_byte_sums(tensors)
    return saved == byte_sums(tensors)


def _legacy_byte_sums(tensors: Any) -> list[int]:
    """The older checksum, three per tensor: the bytes read as int64 words and summed (wrapping), all of them and
    every second one, plus the leftover bytes. Blind to bytes swapped within a parity: kept to verify old files."""
    sums = []
    for t in tensors:
        data = _plain_bytes(t)
        if data is None:
            sums += [0, 0, 0]
            continue
        if data.storage_offset() % 8:  # a slice at an odd offset (buf[-5:]): int64 words need an aligned copy
            data = data.clone()
        whole = len(data) // 8 * 8
        words = data[:whole].view(torch.int64)
        sums += [int(words.sum()), int(words[1::2].sum()), int(data[whole:].sum(dtype=torch.int64))]
    return sums


def link_target(path: Path) -> Path:
    """`path`, or the file it points to if it is a symbolic link: a write through a temporary file renamed over
    `path` would replace the link itself, and the file it points to would never get the new contents."""
    return path.resolve() if path.is_symlink() else path


@contextlib.contextmanager
def replaced_atomically(path: Path, mode: str = "wb", **open_kwargs: Any) -> Iterator[Any]:
    """Open a temporary file beside `path` (the file it points to, if a link) to write, then fsync it and rename it
    over that file, so a crash leaves the old file or the new one; on any failure (Ctrl-C too) it is removed."""
    path = link_target(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def compile_model(model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
    """`model.compile(**kwargs)` in place (its `state_dict` keys stay clean), with dynamo watching module hooks.

    Dynamo skips checking module hooks by default: hooks added later (ActivationStats, summary) would never run,
    and removed ones would go on running. With the check (`skip_nnmodule_hook_guards = False`, set for the process
    and so for every compiled model) a change of hooks recompiles instead of going unseen."""
    import torch._dynamo as dynamo  # here: a second to import
    dynamo.config.skip_nnmodule_hook_guards = False
    model.compile(**kwargs)
    return model


def fix_malloc(force: bool = False) -> bool:
    """Fix glibc malloc's mmap and trim thresholds (32 MiB, 1 GiB) for this process; True if they are fixed.

    Why: by default glibc adapts both thresholds as a program runs, and depending on the heap's layout it may give
    the activations' memory back to the OS after every batch, to be faulted in again by the next one: thousands of
    page faults a batch and CPU epochs 20-40% slower, at random, in a hand-written loop as in miniai. With fixed
    thresholds freed memory stays in the process for the next batch. The cost: the process keeps up to 1 GiB of
    freed memory instead of returning it, and blocks up to 32 MiB come from the heap rather than their own mapping.
    DeviceCB calls this when it trains on the CPU, and so does `python -m miniai train`; set the environment variable
    MINIAI_MALLOC=default to keep glibc's behaviour (`force=True` ignores it). Does nothing off Linux/glibc.
    """
    global _MALLOC_FIXED
    if _MALLOC_FIXED or not sys.platform.startswith("linux"):
        return _MALLOC_FIXED
    setting = "" if force else os.environ.get("MINIAI_MALLOC", "").strip().lower()
    if setting == "default":
        return False
    if setting:  # a misspelt opt-out must not fix the thresholds unseen (said once: they are fixed from now on)
        warn(f"MINIAI_MALLOC={setting!r} is not a value miniai reads: 'default' keeps glibc's malloc "
             "thresholds; anything else fixes them, as now")
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        _MALLOC_FIXED = libc.mallopt(m_mmap_threshold, 32 << 20) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    except (OSError, AttributeError):  # not glibc (musl, say): nothing to fix
        _MALLOC_FIXED = False
    return _MALLOC_FIXED


def trained_parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters training changes: floating, requiring grad, made (not a lazy layer's placeholder). Not frozen
    ones, which may hold -inf on purpose (an attention mask)."""
    return [p for p in model.parameters() if p.requires_grad and p.is_floating_point()
            and not isinstance(p, torch.nn.parameter.UninitializedParameter)]


def nonfinite_weight(model: torch.nn.Module) -> str | None:
    """The name of the first tensor training changes that is not finite (NaN or inf), else None: the trained
    parameters, then the normalization layers' running statistics (a diverged step makes them NaN too). Not other
    buffers or frozen parameters, which may hold -inf on purpose (an attention mask), nor a lazy layer's parameters
    not yet made. One sync per tensor."""
    trained = {id(p) for p in trained_parameters(model)}
    tensors = [(name, p) for name, p in model.named_parameters() if id(p) in trained]
    tensors += [(f"{prefix}.{name}" if prefix else name, getattr(m, name)) for prefix, m in model.named_modules()
                if isinstance(m, torch.nn.modules.batchnorm._NormBase) for name in ("running_mean", "running_var")
                if getattr(m, name) is not None]
    return next((name for name, t in tensors if not bool(t.isfinite().all())), None)


def opt_lr(opt: Any) -> float:
    """The optimizer's lr: its first param group's, or for an optimizer of one's own without param groups (the
    course's SGD class) its `lr` attribute; NaN when it has neither (or there is no optimizer yet)."""
    groups = getattr(opt, "param_groups", None)
    lr = groups[0]["lr"] if groups else getattr(opt, "lr", float("nan"))
    return float(lr) if isinstance(lr, torch.Tensor) and lr.numel() == 1 else lr  # (a tensor lr: its number)


def keeps_workers(dl: Any) -> bool:
    """Whether `dl` keeps its worker processes between epochs (persistent_workers): their RNGs, which draw the random
    transforms run in them, can't be saved or put back from the main process."""
    return bool(getattr(dl, "persistent_workers", False)) and getattr(dl, "num_workers", 0) > 0


def unpartial(fn: Any) -> Any:
    """The function under a `functools.partial`, a partial of a partial too (`fn` itself if none): the one that gets
    the arguments as they were given."""
    return _partials(fn)[-1]


def _partials(fn: Any) -> list:
    """`fn`, and while it is a partial, the function under it (python merges a partial of a partial into one, unless
    the inner one has attributes of its own)."""
    layers = [fn]
    while isinstance(layers[-1], functools.partial):  # (partials can't lead back: their func is fixed)
        layers.append(layers[-1].func)
    return layers


def name_of(fn: Any) -> str:
    """A callable's name for messages: a partial's function's (`partial(F.gaussian_nll_loss, eps=...)` is that
    loss's); a wrapper's own (it may reshape what it is given)."""
    fn = unpartial(fn)
    return getattr(fn, "__name__", type(fn).__name__)


def _loss_layers(loss_func: Any) -> list:
    """`loss_func`, then each loss under it, outermost first: a partial's function, and a loss wrapper's `.func`
    (fastai's BaseLoss, which may reshape the inputs but reduces as that loss does) if that `.func` averages: one
    that reduces nothing (a focal loss's `self.func = nn.CrossEntropyLoss(reduction='none')`) or sums (a VAE's,
    divided by the items) leaves the averaging to the wrapper, which is its own loss. get_preds' per-item copy of a
    loss (`per_item_of`) reads as that loss: its reduction='none' may have reached its .func."""
    layers = _partials(original_loss(loss_func))
    for _ in range(8):  # (bounded: a .func that leads back, or makes a new object each time, a mock's)
        inner = getattr(layers[-1], "func", None)
        if not callable(inner) or _setting(_partials(inner), "reduction", "mean") != "mean":
            break
        layers += _partials(inner)
    return layers


def original_loss(loss_func: Any) -> Any:
    """The loss that `loss_func` is get_preds' per-item copy of (`mark_per_item`), else `loss_func` itself."""
    return getattr(loss_func, "__dict__", {}).get("per_item_of", loss_func)


def mark_per_item(per_item: Any, loss_func: Any, summed: bool) -> Any:
    """Mark `per_item` as get_preds' per-item copy of `loss_func` (`summed`: its reduction was 'sum' or
    'batchmean'), so it reads as that loss (`loss_setting`), but for its reduction, 'none'; returns it."""
    per_item.reduced_by_sum = summed
    object.__setattr__(per_item, "per_item_of", loss_func)  # (an nn loss: not as a submodule)
    return per_item


def _setting(layers: list, name: str, default: Any) -> Any:
    """The first of `layers` to set `name`: a partial's keyword, or an attribute; else `default`."""
    for layer in layers:
        keywords = getattr(layer, "keywords", None)
        if name == "reduction" and isinstance(keywords, dict) and any(
                keywords.get(k) is not None for k in ("size_average", "reduce")):
            # torch's deprecated pair, which its losses turn into a reduction (legacy_get_string) over any reduction=
            # when one of them is not None
            size_average, reduce = (keywords.get(k) is None or bool(keywords[k]) for k in ("size_average", "reduce"))
            return "none" if not reduce else "mean" if size_average else "sum"
        if isinstance(keywords, dict) and name in keywords:
            return keywords[name]
        if hasattr(layer, name):
            return getattr(layer, name)
    return default


def unsaid_sum(loss_func: Any) -> bool:
    """Whether `loss_func` is a wrapper holding a loss that sums as `.func` and says nothing of its own reduction: it
    may return that sum, or divide it by the items (a VAE's); `_loss_layers` takes it for a loss of its own."""
    layers = _partials(loss_func)
    inner = getattr(layers[-1], "func", None)
    return callable(inner) and _setting(layers, "reduction", None) is None and _setting(
        _partials(inner), "reduction", "mean") == "sum"


def base_loss(loss_func: Any) -> Any:
    """The loss under partials and loss wrappers holding it as `.func`: what decides how the loss averages."""
    return _loss_layers(loss_func)[-1]


def loss_setting(loss_func: Any, name: str, default: Any) -> Any:
    """A setting of `loss_func` (`reduction`, `weight`, `ignore_index`): a partial's keyword (`partial(F.cross_entropy,
    weight=w)`), an nn loss's attribute, the outermost first, through wrappers to `base_loss`; else `default`. (Of
    get_preds' per-item copy, the loss's, but for its reduction: 'none'.)"""
    if name == "reduction" and original_loss(loss_func) is not loss_func:
        return "none"
    return _setting(_loss_layers(loss_func), name, default)


def loss_reduction(loss_func: Any) -> str:
    """How `loss_func` reduces its per-item losses: its `reduction` ('mean', 'sum', 'none'), else 'mean' (torch's
    default, and what a loss of one's own is taken to do unless it says otherwise: `my_loss.reduction = 'sum'`)."""
    value = loss_setting(loss_func, "reduction", "mean")
    return value if value in ("mean", "sum", "none") else "mean"


@contextlib.contextmanager
def rngs_kept(cuda: bool = False) -> Iterator[None]:
    """On exit, also after an error, put back the global RNGs: torch's, Python's, NumPy's, MPS's, and CUDA's once in
    use (or, with `cuda`, about to be)."""
    python_rng, numpy_rng = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and (
        torch.cuda.is_initialized() or cuda) else []
    mps_rng = torch.mps.get_rng_state() if torch.backends.mps.is_available() else None
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)
        if mps_rng is not None:
            torch.mps.set_rng_state(mps_rng)


def check_device(device: str | torch.device, who: str) -> None:
    """Raise, naming `who`, when this machine lacks `device` (torch says "Found no NVIDIA driver" from deep inside)."""
    device = torch.device(device)
    here = {"cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "mps": int(torch.backends.mps.is_available())}.get(device.type)
    if here is not None and (device.index or 0) >= here:
        kind = device.type.upper()
        raise RuntimeError(f"{who}: this machine has " + (f"{here} {kind} device{'s' * (here != 1)}" if here else
                           f"no {kind} device") + ": use one it has, 'cpu', or miniai.utils.def_device (CUDA, MPS "
                           "or the CPU, whichever it has)")


def class_loss(loss_func: Any) -> bool:
    """Whether `loss_func` is torch's cross-entropy or NLL loss (a function, a partial of one, an nn loss): class
    scores (N, C, ...) against class indices."""
    fn = base_loss(loss_func)
    # (a subclass with a forward of its own, a focal loss say, reduces as it likes: not torch's weighted mean)
    return fn in (torch.nn.functional.cross_entropy, torch.nn.functional.nll_loss) or getattr(
        type(fn), "forward", None) in (torch.nn.CrossEntropyLoss.forward, torch.nn.NLLLoss.forward)


def counted(n: int, one: str, many: str | None = None) -> str:
    """`n` with its noun, singular or plural ('1 epoch', '3 epochs', '2 batches' with many='batches')."""
    return f"{n} {one if n == 1 else many or one + 's'}"


def len_or_none(obj: Any) -> int | None:
    """len(obj), or None for what has none: a DataLoader over an IterableDataset has `__len__`, but it raises."""
    try:
        return len(obj)
    except TypeError:
        return None


def frames(error: BaseException) -> Iterator[Any]:
    """The frames of `error`'s traceback, outermost first (where it was caught, down to where it was raised)."""
    tb = error.__traceback__
    while tb is not None:
        yield tb.tb_frame
        tb = tb.tb_next


def lazy_tensors(model: torch.nn.Module) -> list[str]:
    """The names of the model's parameters and buffers a lazy layer has not made yet (it makes them at its first
    forward)."""
    return [name for name, t in [*model.named_parameters(), *model.named_buffers()]
            if isinstance(t, torch.nn.parameter.UninitializedTensorMixin)]


def tagged(path: Path, tag: str) -> bool:
    """Whether `path` is a torch file whose pickle holds `tag` (miniai's checkpoints and exports name their format):
    read as bytes, since unpickling runs code."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") and tag.encode() in archive.read(name) for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


class DirInUseError(RuntimeError):
    """A directory a run writes into is held by another running process, or another thread (`claim_dir`)."""


def claim_dir(path: Path, what: str, lock: str = ".miniai-run", kind: str | None = None) -> Callable[[], None]:
    """Hold the directory `path` for this process until the function returned is called: an exclusive lock on
    `path/.miniai-run` (holding the pid, for the message), which the system drops when the process ends, however it
    ends. Raise DirInUseError, naming `what`, while another process holds it: two runs started together would both
    find the directory free of earlier files and write into it. This thread may claim it again (the CLI's --out
    and a CheckpointCB there): it lets go at the last release; another thread is refused. (No claim on Windows, which has no flock, nor on a
    filesystem without locks.) `lock` names the lock file: a file of the directory's held alone (a log) has one of
    its own. `kind` names what claims it (CheckpointCB, CSVLoggerCB): this thread's second claim of one kind is
    refused too (two writers of one directory or file, a fit run from a fit's callbacks)."""
    try:
        import fcntl
    except ImportError:
        return lambda: None
    claim, noun = path / lock, "directory" if lock == ".miniai-run" else "file"
    key = os.path.realpath(claim)
    if key in _CLAIMS:  # (a second lock of our own would be refused: flock locks are per open file)
        if _CLAIMS[key][1] != threading.get_ident():  # another thread's run: as another process's
            raise DirInUseError(f"{what} is in use by another run of this process (another thread): wait for it "
                                f"to end, or choose another {noun}")
        if kind is not None and kind in _CLAIMS[key][2]:
            raise DirInUseError(f"{what} is in use by another fit of this process (a fit run from the callbacks of "
                                f"one writing there, or one still running): choose another {noun}")
        _CLAIMS[key][2].append(kind)
        return _releaser(key, claim, kind)
    while True:
        fd = os.open(claim, os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise DirInUseError(f"{what} is in use by another run" + (f" (process {holder})" if holder else "")
                                + f": wait for it to end, or choose another {noun}") from None
        except OSError:  # a filesystem without locks (some network ones): no claim, as on Windows
            os.close(fd)
            claim.unlink(missing_ok=True)
            return lambda: None
        try:
            if os.stat(claim).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder let go (and removed the file) between our open and lock: claim the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
    except OSError:  # a full disk, say: let go rather than hold it for the rest of the process
        claim.unlink(missing_ok=True)
        os.close(fd)
        raise
    _CLAIMS[key] = [fd, threading.get_ident(), [kind]]
    return _releaser(key, claim, kind)


# this process's claims: claim file -> [its locked fd, the claiming thread, the kind of each claim not released
# (None: no kind)]; a forked child holds none of them (its own claim of the parent's directory is refused by the
# parent's lock)
_CLAIMS: dict[str, list[Any]] = {}
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_CLAIMS.clear)


def _releaser(key: str, claim: Path, kind: str | None) -> Callable[[], None]:
    released = []

    def release() -> None:  # (once: a second call does nothing)
        if released or key not in _CLAIMS:
            return
        released.append(True)
        _CLAIMS[key][2].remove(kind)
        if not _CLAIMS[key][2]:
            fd = _CLAIMS.pop(key)[0]
            claim.unlink(missing_ok=True)  # while still locked: a run opening it meanwhile claims a new file
            os.close(fd)
    return release
