"""Tiny synthetic problems shared by the tests: they train in milliseconds and download nothing."""
from __future__ import annotations

import contextlib
import subprocess
import struct
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from miniai.learner import Callback, Learner, TrainLearner


class SumOfInputs(nn.Module):
    """A model of two inputs, `inner(a + b)`: for learners whose batches are (a, b, *targets), n_inp=2."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.inner(a + b)


def linear_dls(n_train: int = 48, n_valid: int = 32, bs: int = 16, seed: int = 0) -> SimpleNamespace:
    """y = 2x + 3 plus a little noise, as plain torch DataLoaders (train shuffled with a seeded generator)."""
    g = torch.Generator().manual_seed(seed)

    def ds(n: int) -> TensorDataset:
        x = torch.randn(n, 1, generator=g)
        return TensorDataset(x, 2 * x + 3 + 0.01 * torch.randn(n, 1, generator=g))
    return SimpleNamespace(train=DataLoader(ds(n_train), bs, shuffle=True, generator=torch.Generator().manual_seed(seed)),
                           valid=DataLoader(ds(n_valid), bs))


def tiny_learner(cbs=(), lr: float = 0.1, learner_cls: type[Learner] = TrainLearner, **kwargs) -> Learner:
    """A Linear(1, 1) fitting y = 2x + 3 (fastai's synth_learner idea): 3 train and 2 valid batches by default."""
    torch.manual_seed(0)
    return learner_cls(nn.Linear(1, 1), linear_dls(**kwargs), F.mse_loss, lr=lr, cbs=list(cbs))


class DictLearner(TrainLearner):
    """Dict batches {'x', 'y'}, read by the learner's own predict and get_loss (no targets by position)."""
    def predict(self) -> None:
        self.preds = self.model(self.batch["x"])

    def get_loss(self) -> None:
        self.loss = self.loss_func(self.preds, self.batch["y"])


def dict_dls(nan_at: int | None = None) -> SimpleNamespace:
    """64 training items in dict batches of 16 (y = the sum of x's 4 features), 16 to validate; item `nan_at` NaN."""
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    y = x.sum(1, keepdim=True)
    if nan_at is not None:
        x[nan_at] = float("nan")
    return SimpleNamespace(train=[{"x": x[i:i + 16], "y": y[i:i + 16]} for i in range(0, 64, 16)],
                           valid=[{"x": x[:16], "y": y[:16]}])


def rows_metrics() -> Any:
    """A MetricsCB subclass that keeps its rows in `rows` by overriding `_log`, as the course's WandBCB did."""
    from miniai.callbacks import MetricsCB

    class Rows(MetricsCB):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[dict] = []

        def _log(self, row: dict) -> None:
            self.rows.append(row)
    return Rows()


class LossLog(Callback):
    """Records every training batch's loss, read with `.item()` as it comes."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def after_batch(self, learn: Learner) -> None:
        if learn.training:
            self.losses.append(learn.loss.item())


class EventLog(Callback):
    """Records every event it sees, with the pass and batch index where they exist."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def _add(self, name: str, learn: Learner) -> None:
        self.seen.append((name,))


for _name in ("before_fit", "after_fit", "cleanup_fit", "before_epoch", "after_epoch", "cleanup_epoch",
              "before_batch", "after_batch", "cleanup_batch", "after_predict", "after_loss", "after_backward",
              "after_step"):
    setattr(EventLog, _name, (lambda name: lambda self, learn: self._add(name, learn))(_name))


@contextlib.contextmanager
def held_by_another_process(directory: Path) -> Iterator[int]:
    """`directory` claimed (miniai.utils.claim_dir) by another running process, for the block; yields its pid."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                               "from miniai.utils import claim_dir; claim_dir(Path(sys.argv[1]), 'x'); "
                               "print('held', flush=True); sys.stdin.read()", str(directory)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.stdin.close()  # it ends, and the system drops its lock
        holder.wait()


def zip_record_start(file: Path, which: Callable[[zipfile.ZipInfo], bool]) -> int:
    """Where, in a torch zip file, the data of the first record `which` picks begins: past its local header, whose
    own name and extra fields (lengths at bytes 26-29) may differ from the central directory's."""
    info = next(i for i in zipfile.ZipFile(file).infolist() if which(i))
    with open(file, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_len + extra_len


class NoLen:
    """A loader without len() (a stream, an IterableDataset's): iterates `loader`."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)


class TimesTemperature(nn.Module):
    """`net(x)` times a tensor held outside the model (a temperature the optimizer trains beside the model)."""

    def __init__(self, net: nn.Module, temperature: torch.Tensor) -> None:
        super().__init__()
        self.net, self.temperature = net, [temperature]  # (a list: not registered as the model's parameter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.temperature[0]
