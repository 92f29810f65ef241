"""The hand-written training pass every benchmark compares miniai with: a randperm, slicing, and the five steps."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def hand_train_pass(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, bs: int,
                    sched: Any = None) -> None:
    """One training pass over (x, y), already normalized and on the model's device; `sched` steps every batch."""
    model.train()
    idx = torch.randperm(len(x), device=x.device)
    for i in range(0, len(x), bs):
        b = idx[i:i + bs]
        loss = F.cross_entropy(model(x[b]), y[b])
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad()
