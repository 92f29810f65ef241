"""DDPCB: the same training script on N processes launched by torchrun, with PyTorch's DistributedDataParallel.

    torchrun --nproc_per_node=2 my_script.py     # my_script.py builds its learner with DDPCB() in cbs

At its first fit DDPCB joins the process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), unless one is initialized already; the group stays for later fits and is destroyed
when the interpreter exits. At before_fit it gives this process its own device, wraps the model in
DistributedDataParallel and shards the loaders. At cleanup_fit, after an error too, it undoes that: `learn.model`
is the plain module again (state_dicts without a `module.` prefix) and the loaders walk every item.
Outside torchrun (no WORLD_SIZE > 1, no process group) it does nothing, so a script can always add it.

The rest of miniai follows the ranks: MetricsCB sums its counts over all processes, so every rank reports the
metrics of the whole validation set (and early stopping or best-model checkpointing decide the same everywhere);
only rank 0 prints, draws and writes files (`miniai.distributed.is_main_process`).
"""
from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import (BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler,
                              SequentialSampler, Subset, TensorDataset)

from ..checks import beside_model, warn
from ..data import TensorLoader
from ..distributed import all_reduce_sum, is_dist, local_rank, rank, world_size
from ..learner import Callback, Learner
from ..utils import byte_sums, len_or_none, loss_reduction, model_device
from ..weighting import averages_over_targets, batch_parts, position_weights
from .basic import DeviceCB

__all__ = ["DDPCB"]

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DDPCB(Callback):
    """Train with DistributedDataParallel on every process of a torchrun launch (NCCL on GPUs, gloo on CPUs).

    The device: DDPCB keeps the device *type* that DeviceCB was given (or the model's, without a DeviceCB) and
    makes it this process's own: `cuda:$LOCAL_RANK` on GPUs. It sets that device on every DeviceCB in the
    learner, which then moves batches there as usual. `backend=None` picks NCCL for CUDA and gloo for the CPU.
    `sync_bn=True` converts BatchNorm layers to SyncBatchNorm for the fit (batch statistics over all ranks;
    CUDA only) and back afterwards. Other keyword arguments go to DistributedDataParallel
    (e.g. `find_unused_parameters=True`).

    Sharding: every rank walks its part of each global batch of `bs × world_size` items of the same seeded order
    (TensorLoader.shard), so the training pass has as many batches on every rank, and N ranks with batch size bs
    train like one process with batch size N × bs, but for the last len % N items of each epoch's order, dropped. So
    does a loss of reduction='sum' (DDPCB then scales each batch's gradient by N, which DDP's average makes the
    ranks' sum) and a cross-entropy over class-weighted targets, or with some ignored (it scales each rank's by its
    share of the global batch's weights: one all_reduce a batch). The seed is rank 0's: a shuffled TensorLoader
    without one gets one drawn from rank 0's global RNG for the fit (so `set_seed` still reproduces the run) and
    None back at cleanup_fit. The validation loader is split without dropping an item. Every rank must hold the same
    data: at before_fit the ranks compare their loaders' sizes and checksums (~30 ms for Fashion-MNIST) and refuse
    to differ. Torch DataLoaders get a DistributedSampler for training and a contiguous split for validation. A
    loader DDPCB can't shard (over an IterableDataset, or with a batch sampler of its own) you shard yourself, by
    `rank()` and `world_size()`, and name in `presharded=("valid",)`: DDPCB then leaves it as it is. A presharded
    validation loader must give each item to one rank (the metrics are summed over ranks: one with a
    DistributedSampler that pads is refused); a training one, as many batches to every rank (DDP's backward waits
    for all of them); its sampler's `set_epoch`, if it has one (DistributedSampler), is called before each training
    pass, as for DDPCB's own samplers.

    Cancels: DDP's collectives need every rank to run the same batches and steps, so a cancel must be raised on
    every rank at the same batch, as the built-in callbacks' are (EarlyStoppingCB decides on metrics merged over
    the ranks). A CancelFit/Epoch/BatchException raised on one rank alone leaves the others waiting in their next
    collective: a hang, or, once that rank's process exits, a gloo error that names no cause (nothing can tell it
    from a cancel raised on every rank without a collective of its own per batch). A CancelStepException raised
    on one rank alone leaves the replicas apart: at after_fit DDPCB checks that every rank ended with the same
    weights (one all_reduce of per-parameter sums) and raises if not.
    """
    order = -30  # before DeviceCB (-20), which moves model and batches to the device DDPCB picked

    def __init__(self, sync_bn: bool = False, backend: str | None = None, presharded: tuple[str, ...] = (),
                 **ddp_kwargs: Any) -> None:
        if backend not in (None, "nccl", "gloo"):
            raise ValueError(f"backend must be 'nccl' (CUDA), 'gloo' (CPU) or None (pick by device), got {backend!r}")
        if isinstance(presharded, str) or not set(presharded) <= {"train", "valid"}:
            raise ValueError(f"presharded names the loaders you sharded yourself, a tuple of 'train' and/or 'valid'; "
                             f"got {presharded!r}")
        self.sync_bn, self.backend, self.ddp_kwargs, self.presharded = sync_bn, backend, ddp_kwargs, tuple(presharded)
        self.device: torch.device | None = None  # this process's device, set at before_fit
        self.active = False  # whether this fit runs distributed
        self._plain: nn.Module | None = None
        self._ddp: DistributedDataParallel | None = None
        self._batchnorms: dict[str, nn.Module] = {}
        self._undo: list[Callable[[], Any]] = []  # what puts each loader back, in the order the changes were made
        self._samplers: list[Any] = []  # (what before_epoch calls set_epoch on)
        self._sum_loss = False  # whether the loss is a sum (after_loss scales its gradient by the world size)
        self._weighted_mean = False  # whether it divides by its kept targets' weights (after_loss rescales it)

    def before_fit(self, learn: Learner) -> None:
        self.active = is_dist() or world_size() > 1
        if not self.active:
            return
        beside = beside_model(learn.model, learn.opt) if "train" in learn.passes else []
        if beside:  # DDP averages the model's gradients only: each rank would train its own copy of these
            raise ValueError(f"the optimizer trains {len(beside)} tensor{'s' * (len(beside) > 1)} of shape "
                             f"{', '.join(str(tuple(p.shape)) for p in beside[:3])} beside the model (a temperature?), "
                             "whose gradients DDP does not average: each rank's copy would drift apart. Make it a "
                             "parameter of the model (model.register_parameter('temperature', nn.Parameter(t))), "
                             "so DDP averages it and checkpoints save it by name")
        device_cbs = [cb for cb in learn.cbs if isinstance(cb, DeviceCB)]
        self.device = self._pick_device(device_cbs, learn.model)
        backend = self.backend or ("nccl" if self.device.type == "cuda" else "gloo")
        if backend == "nccl" and self.device.type != "cuda":
            raise ValueError("backend='nccl' needs CUDA devices; this fit runs on the CPU: use backend='gloo' or None")
        if self.sync_bn and self.device.type != "cuda":
            raise ValueError("sync_bn=True needs CUDA devices (torch's SyncBatchNorm runs on GPUs only); on the CPU "
                             "use DDPCB(sync_bn=False): each rank then normalizes with its own batch statistics")
        if not is_dist():
            _join_group(backend, self.device)
        _check_same_data(learn.dls, self.presharded, "train" in learn.passes)
        for cb in device_cbs:
            cb.device = self.device
        model = learn.model.to(self.device)
        if any(getattr(cb, "channels_last", False) for cb in device_cbs):
            model.to(memory_format=torch.channels_last)  # before wrapping: DDP lays out its gradient buckets now
        if self.sync_bn:
            self._batchnorms = {name: m for name, m in model.named_modules()
                                if isinstance(m, nn.modules.batchnorm._BatchNorm)}
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # keeps the Parameters, so learn.opt still fits
        self._plain = model
        # DDP broadcasts rank 0's parameters and buffers here, so all ranks start from the same model
        self._ddp = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                            else None, **self.ddp_kwargs)
        self._sum_loss = loss_reduction(learn.loss_func) == "sum"
        self._weighted_mean = averages_over_targets(learn.loss_func)  # (torch's cross-entropy and NLL, 'mean')
        self._said_share = False
        learn.model = self._ddp
        self._shard(learn)

    def after_loss(self, learn: Learner) -> None:
        # DDP averages the ranks' gradients: right for a mean loss only; a sum over the global batch is their sum.
        # This batch's gradient is scaled by the world size before DDP averages it (a comm hook that sums would also
        # multiply what .grad carries from earlier batches: gradient accumulation, MomentumLearner's momentum)
        if not (self.active and learn.training and learn.loss.requires_grad):
            return
        if self._sum_loss:
            learn.loss.register_hook(partial(torch.mul, other=world_size()))
        elif self._weighted_mean:  # each rank divided by its own part's weights: see _share
            share = _share(learn)
            if share is None:  # (a dict batch: no targets by position)
                self._warn_dict_share(learn)
            elif not isinstance(share, float):
                learn.loss.register_hook(partial(torch.mul, other=share))

    def _warn_dict_share(self, learn: Learner) -> None:
        """Warn (once a fit) that a cross-entropy of dict batches is each rank's own (weighted) mean, averaged."""
        if not self._said_share:
            self._said_share = True
            warn("DDPCB: the loss is a cross-entropy, which divides each rank's loss by its own part's class weights "
                 "or kept targets (those not ignored, -100 by default), and the batches are dicts, whose targets "
                 "DDPCB can't read to weigh the ranks as one process with the global batch would: DDP averages each "
                 "rank's own mean, which differs from that where the ranks' parts weigh differently (class weights, "
                 "padding; probability targets divide by their items, alike on every rank, and are not concerned). "
                 "To train as one process would, give tuple batches (x, y)")

    def before_epoch(self, learn: Learner) -> None:
        if learn.training:
            for sampler in self._samplers:
                sampler.set_epoch(learn.epoch_offset + learn.epoch)  # a new order each epoch, alike on every rank

    def after_fit(self, learn: Learner) -> None:
        # the fit ended normally on every rank, so all of them get here: one all_reduce can't leave one waiting
        if self.active and self._plain is not None:
            _check_replicas_agree(self._plain)

    def cleanup_fit(self, learn: Learner) -> None:
        if not self.active:
            return
        try:
            if self._plain is not None:  # (wrapping may have failed after the SyncBatchNorm conversion)
                plain = self._undo_sync_bn(self._plain) if self._batchnorms else self._plain
                if self._ddp is None or learn.model is self._ddp:
                    learn.model = plain
            shards = [getattr(learn.dls, name, None) for name in ("train", "valid")]
            for undo in reversed(self._undo):
                undo()
            if any(learn.dl is shard for shard in shards if shard is not None):  # (a copy of the user's: its
                learn.dl = getattr(learn.dls, "train" if learn.training else "valid", None)  # workers would live on)
        finally:
            self._ddp = self._plain = None
            self._undo, self._samplers, self._batchnorms = [], [], {}

    # --- before_fit's parts ------------------------------------------------------------------------------------
    def _pick_device(self, device_cbs: list[DeviceCB], model: nn.Module) -> torch.device:
        kind = torch.device(device_cbs[0].device).type if device_cbs else model_device(model).type
        if kind == "cpu":
            return torch.device("cpu")
        if kind != "cuda":
            raise ValueError(f"DDPCB trains on CUDA GPUs (NCCL) or CPUs (gloo), not on {kind!r}: "
                             f"use DeviceCB('cpu') for a distributed run without CUDA")
        index, n_gpus = local_rank(), torch.cuda.device_count()
        if index >= n_gpus:
            raise RuntimeError(f"LOCAL_RANK={index} but this machine has {n_gpus} GPU(s): start at most one process "
                               f"per GPU (torchrun --nproc_per_node={n_gpus})")
        torch.cuda.set_device(index)  # so NCCL and every tensor made with device='cuda' use this process's GPU
        return torch.device("cuda", index)

    def _shard(self, learn: Learner) -> None:
        r, w = rank(), world_size()
        if getattr(learn.dls, "train", None) is getattr(learn.dls, "valid", None):
            raise ValueError("dls.train and dls.valid are the same loader object, which DDPCB would shard twice "
                             "(once to drop nothing, once evenly): give each pass its own loader")
        for name in ("train", "valid"):
            dl = getattr(learn.dls, name, None)
            if name == "valid" and name in self.presharded:
                _check_each_item_once(dl)
            if name == "train" and name in self.presharded and hasattr(getattr(dl, "sampler", None), "set_epoch"):
                self._samplers.append(dl.sampler)  # the script's DistributedSampler: a new order each epoch too
            if dl is None or name in self.presharded:
                continue
            # DDP's backward is a collective: every rank must train as many batches. Validation has none,
            # so it keeps every item and the summed metrics cover the whole validation set.
            even = name == "train"
            if isinstance(dl, TensorLoader):
                if len(dl.x) < w:  # (every rank alike: refused before any collective)
                    raise ValueError(f"dls.{name} has {len(dl.x)} items for {w} processes: every process needs at "
                                     "least one")
                self._undo.append(partial(dl.shard, dl.rank, dl.world_size, dl.even))
                if dl.shuffle:
                    # rank 0's seed for all: the ranks' parts must come from one order. Without a seed, a loader
                    # would draw each order from its own process's RNG, which the processes may not have seeded alike
                    if dl.seed is None:
                        self._undo.append(partial(setattr, dl, "seed", None))
                    seed = [int(torch.randint(0, 2**31, ())) if dl.seed is None else dl.seed]
                    dist.broadcast_object_list(seed, src=0)
                    dl.seed = seed[0]
                dl.shard(r, w, even=even)
            elif isinstance(dl, DataLoader):
                self._undo.append(partial(setattr, learn.dls, name, dl))
                setattr(learn.dls, name, self._shard_torch_loader(dl, name, r, w, even))
            else:
                raise TypeError(f"DDPCB can't shard dls.{name}, a {type(dl).__name__}: use miniai.data.TensorLoader "
                                f"or a torch DataLoader (built on a map-style dataset), or shard it yourself by rank() "
                                f"and world_size() and say so, DDPCB(presharded=('{name}',))")
            if even and r == 0:  # (after the loader was found shardable: no warning ahead of a refusal)
                warn_same_left_out(dl, name, w)

    def _shard_torch_loader(self, dl: DataLoader, name: str, r: int, w: int, even: bool) -> DataLoader:
        if isinstance(dl.dataset, IterableDataset) or type(dl.batch_sampler) is not BatchSampler:
            raise TypeError(f"DDPCB can't shard dls.{name}: a DataLoader over an IterableDataset or with a batch "
                            f"sampler of its own (or none: batch_size=None) decides its own items; shard it yourself "
                            f"by rank() and world_size() and say so, DDPCB(presharded=('{name}',))")
        if isinstance(dl.sampler, DistributedSampler):
            raise TypeError(f"DDPCB can't shard dls.{name}: it has a DistributedSampler already, and DDPCB shards "
                            "loaders itself: give it the loader without one (shuffle=True for training, False for "
                            "validation). DDPCB splits a validation loader over the ranks without padding (a "
                            "DistributedSampler repeats items to even out the ranks, and the metrics summed over "
                            "the ranks would count them twice)")
        if type(dl.sampler) not in (SequentialSampler, RandomSampler) or isinstance(dl.sampler, RandomSampler) and (
                dl.sampler.replacement or dl.sampler.num_samples != len(dl.dataset)):
            raise TypeError(f"DDPCB can't shard dls.{name}: its {type(dl.sampler).__name__} picks its own items, and "
                            "a DistributedSampler over the whole dataset would replace it (walking items it leaves "
                            "out, and each item once). Build the loader on a torch.utils.data.Subset of the items "
                            "with shuffle=True (or False), or shard it yourself by rank() and world_size() and say "
                            f"so, DDPCB(presharded=('{name}',))")
        n = len(dl.dataset)
        if n < w:
            raise ValueError(f"dls.{name} has {n} items for {w} processes: every process needs at least one")
        if even:
            seed = [int(torch.randint(0, 2**31, ()))]
            dist.broadcast_object_list(seed, src=0)  # rank 0's seed: the ranks' slices must be of one order
            sampler: Any = DistributedSampler(dl.dataset, w, r, shuffle=isinstance(dl.sampler, RandomSampler),
                                              seed=seed[0], drop_last=True)
            self._samplers.append(sampler)
        else:
            sampler = range(r * n // w, (r + 1) * n // w)  # a contiguous part; order doesn't change metrics
        return DataLoader(dl.dataset, batch_size=dl.batch_size, sampler=sampler, num_workers=dl.num_workers,
                          collate_fn=dl.collate_fn, pin_memory=dl.pin_memory, drop_last=dl.drop_last,
                          timeout=dl.timeout, worker_init_fn=dl.worker_init_fn,
                          multiprocessing_context=dl.multiprocessing_context, generator=dl.generator,
                          prefetch_factor=dl.prefetch_factor, persistent_workers=dl.persistent_workers)

    def _undo_sync_bn(self, model: nn.Module) -> nn.Module:
        """Put the user's BatchNorm modules back in place of the SyncBatchNorm copies, with what they learned."""
        for name, bn in self._batchnorms.items():
            bn.load_state_dict(model.get_submodule(name).state_dict())
            if not name:
                return bn  # the model was a BatchNorm itself
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, bn)
        return model


def _join_group(backend: str, device: torch.device) -> None:
    """Join the process group torchrun describes (env://) for this and later fits; leave it at interpreter exit."""
    missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
    if missing:
        raise RuntimeError(f"DDPCB found WORLD_SIZE={os.environ.get('WORLD_SIZE')} but not {', '.join(missing)}: "
                           f"launch with torchrun (`torchrun --nproc_per_node=N script.py`), which sets "
                           f"{', '.join(_TORCHRUN_VARS)} and LOCAL_RANK, or set them yourself")
    dist.init_process_group(backend, **({"device_id": device} if backend == "nccl" else {}))
    atexit.register(_leave_group)


def _check_each_item_once(dl: Any) -> None:
    """Refuse a presharded validation loader whose DistributedSampler pads (or drops) items, or a TensorLoader
    sharded to drop some (even=True): the metrics summed over the ranks would count some items twice (or leave them
    out)."""
    if isinstance(dl, TensorLoader) and dl.world_size > 1 and dl.even and len(dl.x) % dl.world_size:
        raise ValueError(f"dls.valid is named in DDPCB(presharded=...) but was sharded with shard(rank, "
                         f"{dl.world_size}) and its default even=True, which leaves out {len(dl.x) % dl.world_size} "
                         f"of its {len(dl.x)} items, so the metrics summed over the ranks would not be those of the "
                         "validation set: shard it with even=False, or give DDPCB the whole loader and leave 'valid' "
                         "out of presharded")
    sampler = getattr(dl, "sampler", None)
    if isinstance(sampler, DistributedSampler) and sampler.total_size != len(sampler.dataset):
        n = len(sampler.dataset)
        how = f"pads its {n} items to {sampler.total_size}, repeating some" if sampler.total_size > n else \
            f"drops {n - sampler.total_size} of its {n} items (drop_last=True)"
        raise ValueError(f"dls.valid is named in DDPCB(presharded=...) but its DistributedSampler over "
                         f"{sampler.num_replicas} ranks {how}, so the metrics summed over the ranks would not be "
                         "those of the validation set: give DDPCB the plain loader (without the DistributedSampler) "
                         "and leave 'valid' out of presharded: DDPCB splits it over the ranks without padding")


def _check_same_data(dls: Any, presharded: tuple[str, ...], training: bool) -> None:
    """Refuse loaders that hold other data on some ranks (one all_gather of sizes and checksums): DDPCB gives each
    rank its part of one dataset, so ranks that read theirs apart would train twice on some items, never on others,
    and score a mix of validation sets."""
    mine = {name: _data_sums(getattr(dls, name, None)) for name in ("train", "valid") if name not in presharded}
    # a training shard of one's own: as many batches on every rank (DDP averages the gradients at each one), where
    # every rank knows its count (an IterableDataset's shard has none)
    steps = len_or_none(getattr(dls, "train", None)) if "train" in presharded and training else None
    shards = {name: _shard_of(getattr(dls, name, None)) for name in presharded if name != "train" or training}
    ranks: list[Any] = [None] * world_size()
    dist.all_gather_object(ranks, (mine, steps, shards))
    _check_shards([theirs for *_, theirs in ranks])
    ranks = [(mine, steps) for mine, steps, _ in ranks]
    known = [n for _, n in ranks if n is not None]
    for r, (_, theirs) in enumerate(ranks):
        if len(known) == len(ranks) and theirs != ranks[0][1]:
            raise ValueError(f"DDPCB: the presharded dls.train gives {theirs} batches on rank {r} and {ranks[0][1]} "
                             "on rank 0, and DDP averages the ranks' gradients at every batch, so a rank with more "
                             "would wait for the others at its extra ones: give every rank's shard the same number "
                             "of batches (as many items, and drop_last=True)")
    for r, (theirs, _) in enumerate(ranks):
        for name, sums in theirs.items():
            first = ranks[0][0][name]
            if sums != first:
                how = f"{sums['items']} items, rank 0's {first['items']}" if sums["items"] != first["items"] else \
                    f"the checksums of its {sums['items']} items differ"
                raise ValueError(f"DDPCB: dls.{name} holds other data on rank {r} than on rank 0 ({how}), and "
                                 "DDPCB gives each rank its part of one dataset: build the loaders alike on every "
                                 "rank (the same files, a split with a fixed seed such as get_dls(holdout_seed=...)), "
                                 f"or shard them yourself and say so, DDPCB(presharded=('{name}',))")


def _shard_of(dl: Any) -> tuple | None:
    """A TensorLoader's shard (rank, world size, seed if shuffled, its whole data's size and checksums), or None."""
    if not isinstance(dl, TensorLoader) or dl.world_size == 1:
        return None
    return dl.rank, dl.world_size, dl.seed if dl.shuffle else None, len(dl.x), byte_sums([dl.x, dl.y])


def _check_shards(ranks: list[dict[str, tuple | None]]) -> None:
    """Refuse TensorLoaders sharded with shard(rank, world_size) whose parts are not of one order of one dataset:
    shards of other seeds (each rank's part of another order: some items twice, others never), of the same rank,
    of another world size, or of other data."""
    for name in ranks[0]:
        shards = [theirs[name] for theirs in ranks]
        if any(shard is None for shard in shards):
            continue
        for r, (part, size, seed, n, sums) in enumerate(shards):
            first = shards[0]
            if (part, size) != (r, len(ranks)):
                why = f"shard({part}, {size}) on rank {r}"
            elif seed != first[2]:
                why = (f"seed {seed} on rank {r} and {first[2]} on rank 0: each rank walks its part of another order, "
                       "so some items train twice an epoch and others never. Give every rank one seed (a number, not "
                       "one drawn after set_seed(seed + rank))")
            elif (n, sums) != first[3:]:
                why = f"other data on rank {r} than on rank 0"
            else:
                continue
            raise ValueError(f"DDPCB: the presharded dls.{name}, a TensorLoader sharded with shard(rank, world_size), "
                             f"has {why}; each rank takes its part of one order of one dataset: "
                             f"TensorLoader(x, y, bs, shuffle=True, seed=s).shard(rank(), world_size()), with the same "
                             "x, y and s on every rank")


def _data_sums(dl: Any) -> dict[str, Any]:
    """A loader's item count, and checksums of what it holds where they can be taken (a TensorLoader, a
    TensorDataset, a Subset's indices and what they index)."""
    if isinstance(dl, TensorLoader):
        return {"items": len(dl.x), "sums": byte_sums([dl.x, dl.y])}
    dataset = getattr(dl, "dataset", None)
    return {"items": len_or_none(dataset), "sums": _dataset_sums(dataset)}


def _dataset_sums(dataset: Any) -> list | None:
    """Checksums of a TensorDataset's tensors; of a Subset's indices (random_split's, drawn from each rank's own
    RNG, differ) and of its dataset's where known; else None."""
    if isinstance(dataset, TensorDataset):
        return byte_sums(dataset.tensors)
    if isinstance(dataset, Subset):
        return [byte_sums([torch.as_tensor(dataset.indices, dtype=torch.int64)]), _dataset_sums(dataset.dataset)]
    return None


def _share(learn: Learner) -> torch.Tensor | float | None:
    """World size × this rank's share of what the global batch's loss divides by: a cross-entropy over class-weighted
    targets, or with some ignored, divides each rank's loss by its own part's weights (or kept targets), so DDP's
    average of the ranks' gradients is the global batch's weighted mean only once each is scaled by this. None:
    a dict batch, no targets by position."""
    targets = batch_parts(learn)[1]
    if targets is None:
        return None
    target = targets[0] if targets else None
    if not isinstance(target, torch.Tensor):
        return 1.0
    # (the targets stand in for the unreduced losses, whose shape position_weights reads: one loss per target)
    mask, weights = position_weights(target, target, learn.loss_func)
    if mask is None and weights is None:  # (soft targets: divided by the item count, alike on every rank)
        return 1.0
    own = (weights if weights is not None else mask).sum(dtype=torch.float64).reshape(1)
    total = all_reduce_sum(own.clone())
    return (own * world_size() / total).where(total > 0, 1.0).to(learn.loss.dtype)[0]


def _check_replicas_agree(model: nn.Module) -> None:
    """Raise unless every rank's `model` has the same parameters (one all_reduce of per-parameter sums and norms):
    DDP keeps the replicas alike only while every rank takes every optimizer step."""
    params = [p.detach() for p in model.parameters()]
    sums = torch.stack([s for p in params for s in (p.sum(dtype=torch.float64),
                                                    torch.linalg.vector_norm(p, dtype=torch.float64))]).cpu()
    rows = torch.zeros(world_size(), len(sums), dtype=torch.float64)
    rows[rank()] = sums
    all_reduce_sum(rows)
    # (a tolerance, not equality: other GPU models may sum the same weights in another order)
    differ = [r for r in range(1, len(rows)) if not torch.allclose(rows[r], rows[0], rtol=1e-9, atol=0,
                                                                   equal_nan=True)]
    if differ:
        raise RuntimeError(
            f"DDPCB: the ranks' models differ at the end of the fit (rank {differ[0]}'s weights are not rank 0's): "
            "a step was skipped on some ranks only, e.g. a CancelStepException (or CancelBatchException after the "
            "backward) raised on some ranks alone. DDP keeps the replicas alike only if every rank steps alike: "
            "raise cancels on every rank at the same batch (the built-in callbacks do). Each rank keeps its own "
            "weights, CheckpointCB saved rank 0's, and this fit's metrics, merged over the ranks, mixed their models.")


def _leave_group() -> None:
    if is_dist():  # the script may have destroyed it itself
        dist.destroy_process_group()


def warn_same_left_out(dl: Any, name: str, world: int) -> None:
    """Warn when an unshuffled training loader's items don't fill the last round of `world` processes: the same
    ones are then left out of every epoch (a shuffled one leaves out others each time)."""
    if isinstance(dl, TensorLoader):
        n, shuffled = len(dl.x), dl.shuffle
    elif isinstance(dl, DataLoader) and not isinstance(dl.dataset, IterableDataset) and hasattr(dl.dataset, "__len__"):
        n, shuffled = len(dl.dataset), isinstance(dl.sampler, RandomSampler)
    else:
        return  # (a loader DDPCB refuses to shard)
    if not shuffled and n % world:
        warn(f"DDPCB: dls.{name} is not shuffled and its items don't fill the last round of {world} "
             f"processes, so the same {n % world} of its {n} items (its last) are left out of every epoch, "
             f"never trained on. Build it with shuffle=True, or give it a multiple of {world} items.")
