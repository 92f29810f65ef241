"""Where this process stands in a torchrun launch: rank, world size, the main process, and a sum over processes.

Every helper works without torch.distributed too: outside a process group the answers come from the variables
torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE), and a plain `python script.py` is rank 0 of a world of 1. Reading
the environment as a fallback matters before the first fit: DDPCB joins the process group only then (and keeps
it until the interpreter exits), and code that runs earlier (sharding a loader, printing) must already know its
rank.
Imports nothing from miniai when imported (a warning imports miniai's `warn`), so a plain torch loop can use it.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["is_dist", "rank", "local_rank", "world_size", "is_main_process", "all_reduce_sum", "all_gather"]


def is_dist() -> bool:
    """True when a torch.distributed process group is initialized in this process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank: the process group's, else $RANK (set by torchrun), else 0."""
    if is_dist():
        return dist.get_rank()
    env_rank = _env_int("RANK", 0)
    if not 0 <= env_rank < world_size():  # a stray $RANK: as a rank > 0 this process would silently write nothing
        raise ValueError(f"$RANK is {env_rank} but $WORLD_SIZE is {os.environ.get('WORLD_SIZE', '(unset: 1)')}: "
                         "torchrun sets both, with RANK < WORLD_SIZE; outside torchrun unset RANK")
    if env_rank and "MASTER_ADDR" not in os.environ and not _said_stray:  # (a launch sets it: torchrun, SLURM
        _warn_stray(env_rank)  # scripts; one that joins by tcp:// or file:// may not, before it joins: so a warning)
    return env_rank


_said_stray = False  # whether _warn_stray said it already (once a process)


def _warn_stray(env_rank: int) -> None:
    """Say, once a process, that a RANK above 0 outside any launch makes this process a rank that prints nothing."""
    global _said_stray
    _said_stray = True
    from .checks import warn  # (here: a MiniaiWarning at the user's line, and this module imports no miniai at import)
    warn(f"$RANK is {env_rank}, with no process group and no $MASTER_ADDR: if no distributed launch started this "
         f"process (RANK left in the shell), it is rank {env_rank} alone, and prints and writes nothing (only rank 0 "
         "does). Outside a launch unset RANK and WORLD_SIZE")


def local_rank() -> int:
    """This process's rank on its machine ($LOCAL_RANK, set by torchrun), else 0: the GPU index it should use."""
    return _env_int("LOCAL_RANK", 0)


def world_size() -> int:
    """How many processes train together: the process group's size, else $WORLD_SIZE (set by torchrun), else 1."""
    return dist.get_world_size() if is_dist() else _env_int("WORLD_SIZE", 1)


def _env_int(name: str, default: int) -> int:
    """The whole number in $name (torchrun's), else `default`; anything else is an error that names the variable."""
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise ValueError(f"${name} is {value!r}, not a whole number: torchrun sets it; outside torchrun unset "
                         f"{name}") from None


def is_main_process() -> bool:
    """True on rank 0, the one process that prints, draws and writes files (True when not distributed).

    This is miniai's one test for "should this process write?": callbacks and scripts use it, and under torchrun
    it is right before a process group exists too ($RANK), so files written before or after a fit are not
    written once per process.
    """
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes, in place, and return it; without a process group it is returned as is.

    Every process must call it, in the same order, or they all wait forever. Under NCCL a CPU tensor makes the
    trip through this process's current GPU (NCCL reduces only GPU tensors).
    """
    if not is_dist() or dist.get_world_size() == 1:
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        return tensor.copy_(on_gpu)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather(obj: object) -> list[object]:
    """Every process's `obj` (picklable), in rank order; `[obj]` without a process group. A collective, like
    all_reduce_sum: every process must call it."""
    if not is_dist():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait until every process reaches this point (nothing to wait for outside torch.distributed)."""
    if is_dist():
        dist.barrier()
