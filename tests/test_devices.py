"""Device decisions that a CPU machine can check: what would go wrong only on CUDA or MPS."""
import torch

from miniai.weighting import sum_dtype
from miniai.utils import to_device


def test_batches_are_copied_without_blocking_only_to_cuda(monkeypatch):
    """A non-blocking copy to MPS may read its source after the source is freed (pytorch#139550): corrupt batches."""
    seen = []

    def to(self, *args, **kwargs):
        seen.append(kwargs.get("non_blocking"))
        return self
    monkeypatch.setattr(torch.Tensor, "to", to)
    for device in ("cuda", "mps", "cpu"):
        to_device((torch.zeros(2), [torch.ones(1)]), device)
    assert seen == [True, True, False, False, False, False]


def test_sums_over_a_pass_are_float64_except_on_mps_which_has_none():
    assert sum_dtype(torch.device("cpu")) == torch.float64
    assert sum_dtype(torch.device("cuda", 0)) == torch.float64
    assert sum_dtype(torch.device("mps")) == torch.float32


def test_predictions_turn_autocast_off_only_where_torch_has_it():
    """MPS before torch 2.5 has no autocast, and torch.autocast('mps', enabled=False) raised there: get_preds(act=)
    and tta failed on a Mac. A device without autocast ('meta' here) has nothing to turn off."""
    import contextlib
    from miniai.callbacks.preds import _no_autocast
    assert isinstance(_no_autocast("meta"), contextlib.nullcontext)
    assert isinstance(_no_autocast("cpu"), torch.autocast)
