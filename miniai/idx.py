"""The IDX file format (LeCun's MNIST layout): read and write, with errors that name the file and what is wrong.

Imports nothing from miniai but `utils` (itself standalone), so any script can read an IDX file with it.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from .utils import link_target, replaced_atomically

__all__ = ["IDXError", "read_idx", "write_idx"]

# type byte of the magic number 0x0000TTNN -> big-endian numpy dtype (IDX stores data big-endian)
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_TORCH_TO_IDX = {torch.uint8: 0x08, torch.int8: 0x09, torch.int16: 0x0B, torch.int32: 0x0C,
                 torch.float32: 0x0D, torch.float64: 0x0E}


class IDXError(ValueError):
    """An IDX file is truncated, corrupt or not IDX at all; the message names the file and what was expected."""


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file (gzipped or plain, detected from its content) into a tensor of its stored dtype."""
    raw = Path(path).read_bytes()
    gzipped = raw[:2] == b"\x1f\x8b"  # gzip's magic; an IDX file starts with two zero bytes, so no ambiguity
    if gzipped:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise IDXError(f"{path}: broken gzip stream ({e}); the file is truncated or corrupt, fetch it again") from e
    if not raw:  # (the magic's hex below would read "got 0x")
        raise IDXError(f"{path}: the file is empty (0 bytes{' once gunzipped' * gzipped}), not an IDX file: it was "
                       "cut off, fetch it again")
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise IDXError(f"{path}: not an IDX file: expected magic 0x0000TTNN with type TT in "
                       f"{{08,09,0B,0C,0D,0E}} and NN >= 1 dims, got 0x{raw[:4].hex()}")
    ndim, dtype = raw[3], np.dtype(_IDX_TYPES[raw[2]])
    if ndim > 64:  # (numpy's own limit, whose error would name no file)
        raise IDXError(f"{path}: {ndim} dims, more than the 64 an array can have: the file is corrupt or no IDX file")
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
    path = link_target(Path(path))
    if path.is_dir():  # (os.replace would fail naming its temporary file, and leave it there)
        raise IsADirectoryError(f"write_idx writes one file, and {path} is a directory: give a file name, e.g. "
                                f"write_idx({str(path / 'labels.idx')!r}, tensor)")
    with replaced_atomically(path) as f:  # (a full disk, Ctrl-C: no temporary file left beside the data)
        f.write(gzip.compress(blob, compresslevel=6) if path.name.endswith(".gz") else blob)
