"""MetricsCB and Accuracy give the right numbers (or a clear error) in the corner cases a hostile tester found."""
from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace
import io
import re
import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler, TensorDataset

from miniai.callbacks.metrics import Accuracy, MetricsCB
from miniai.data import DataLoaders, TensorLoader
from miniai.learner import Callback, TrainLearner


def classifier_data(n: int = 90, d: int = 5, c: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, c, (n,), generator=g)


def with_ignored_targets(n: int, *ignored: slice) -> tuple:
    """3-class data whose targets at `ignored` are -100, a linear model, its predicted classes, where the targets
    count, and its accuracy over those: (x, y, model, pred, real, truth)."""
    x, y = classifier_data(n, c=3)
    for where in ignored:
        y[where] = -100
    model = nn.Linear(5, 3)
    with torch.no_grad():
        pred = model(x).argmax(1)
    real = y != -100
    return x, y, model, pred, real, (pred[real] == y[real]).float().mean().item()


def evaluate(learn: TrainLearner) -> None:
    """A validation-only fit, its printed rows swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        learn.fit(1, train=False)


# ---------------------------------------------------------------- the loss MetricsCB logs

def test_a_prediction_pass_without_a_loss_step_logs_no_stale_loss():
    """get_preds(cbs=[MetricsCB()]) logged the last fit's learn.loss as the test loss (and, on a learner never
    fit, raised AttributeError): a pass that computes no loss logs none; with_loss=True logs the real one."""
    x, y = classifier_data()
    torch.manual_seed(0)
    model = nn.Linear(5, 4)
    learn = TrainLearner(model, DataLoaders(TensorLoader(x, y, 32), TensorLoader(x, y, 32)), F.cross_entropy)
    learn.loss = torch.tensor(123.0)  # what a fit leaves behind
    test = TensorLoader(x * 3, y, 32)
    m = MetricsCB(accuracy=Accuracy())
    with contextlib.redirect_stdout(io.StringIO()):
        learn.get_preds(dl=test, cbs=[m])
    with torch.no_grad():
        p = model(x * 3)
    assert "valid_loss" not in m.last and "loss" not in m.history[-1]
    assert m.last["valid_accuracy"] == pytest.approx((p.argmax(1) == y).float().mean().item())
    with contextlib.redirect_stdout(io.StringIO()):
        learn.get_preds(dl=test, cbs=[m], with_loss=True)
    assert m.last["valid_loss"] == pytest.approx(F.cross_entropy(p, y).item(), rel=1e-5)
    del learn.loss  # a learner never fit has no loss at all
    with contextlib.redirect_stdout(io.StringIO()):
        learn.get_preds(dl=test, cbs=[m])
    assert "valid_loss" not in m.last


@pytest.mark.parametrize("per_token", [False, True], ids=["per item", "per token"])
def test_an_unreduced_loss_leaves_out_ignored_targets_as_the_mean_one_does(per_token):
    """With reduction='none', MetricsCB averaged the per-item losses counting ignore_index targets as 0 loss:
    its valid_loss disagreed with reduction='mean' (and with get_preds). Now both log the same."""
    g = torch.Generator().manual_seed(0)
    if per_token:
        x, y = torch.randn(70, 5, 9, generator=g), torch.randint(0, 4, (70, 9), generator=g)
        y[:, 5:] = -100
        model = nn.Conv1d(5, 4, 1)
    else:
        x, y = torch.randn(70, 5, generator=g), torch.randint(0, 4, (70,), generator=g)
        y[::3] = -100
        model = nn.Linear(5, 4)
    dls = DataLoaders(TensorLoader(x, y, 32), TensorLoader(x, y, 32))
    logged = {}
    for reduction in ("mean", "none"):
        m = MetricsCB()
        evaluate(TrainLearner(model, dls, partial(F.cross_entropy, reduction=reduction), cbs=[m]))
        logged[reduction] = m.last["valid_loss"]
    assert logged["none"] == pytest.approx(logged["mean"], rel=1e-6)
    y0 = torch.where(y == -100, 0, y)  # the loss's own ignore_index (0 here), as get_preds reads it
    dls0 = DataLoaders(TensorLoader(x, y0, 32), TensorLoader(x, y0, 32))
    for reduction in ("mean", "none"):
        m = MetricsCB()
        evaluate(TrainLearner(model, dls0, nn.CrossEntropyLoss(ignore_index=0, reduction=reduction), cbs=[m]))
        logged[reduction] = m.last["valid_loss"]
    assert logged["none"] == pytest.approx(logged["mean"], rel=1e-6)


# ---------------------------------------------------------------- what reaches the metrics

class BatchCount:
    """How many update() calls it got, and the worst batch's error rate: statistics of each batch."""

    def reset(self) -> None:
        self.n, self.worst = 0, 0.0

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.n += 1
        self.worst = max(self.worst, (preds.argmax(1) != target).float().mean().item())

    def compute(self) -> float:
        return float(self.n)


def test_a_metric_not_known_to_be_additive_gets_one_update_per_batch():
    """MetricsCB concatenated up to 256 batches into one update: a per-batch statistic (a windowed metric, the
    worst batch) came out wrong. Only metrics that say they are additive (Accuracy) get concatenated batches."""
    x, y = classifier_data(n=400, c=3, d=6)
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    dl = TensorLoader(x, y, 20)
    counter = BatchCount()
    m = MetricsCB(updates=counter, accuracy=Accuracy())
    evaluate(TrainLearner(model, DataLoaders(dl, dl), F.cross_entropy, cbs=[m]))
    with torch.no_grad():
        errors = [(model(xb).argmax(1) != yb).float().mean().item() for xb, yb in dl]
    assert m.last["valid_updates"] == len(dl) == 20 and counter.worst == pytest.approx(max(errors))
    assert m.last["valid_accuracy"] == pytest.approx((model(x).argmax(1) == y).float().mean().item())
    assert Accuracy.additive


def test_a_torcheval_windowed_metric_sees_each_batch_on_its_own():
    metrics = pytest.importorskip("torcheval.metrics")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 3, generator=g), torch.randn(200, generator=g)
    x[:150] *= 10
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))
    dl = TensorLoader(x, y, 25)
    make = lambda: metrics.WindowedMeanSquaredError(max_num_updates=2, enable_lifetime=False)  # noqa: E731
    m = MetricsCB(wmse=make())
    evaluate(TrainLearner(model, DataLoaders(dl, dl), F.mse_loss, cbs=[m]))
    hand = make()
    with torch.no_grad():
        for xb, yb in dl:
            hand.update(model(xb), yb)
    assert m.last["valid_wmse"] == pytest.approx(hand.compute().item(), rel=1e-5)


# ---------------------------------------------------------------- Accuracy

def test_accuracy_never_ignores_a_class_that_ignore_index_wraps_to():
    """Targets stored as uint8: -100 wrapped to 156, so class 156 was left out of the accuracy."""
    preds = torch.zeros(4, 200)
    preds[:, 156] = 1  # every item predicted as class 156
    target = torch.tensor([156, 156, 3, 156], dtype=torch.uint8)
    assert Accuracy().update(preds, target).compute().item() == pytest.approx(0.75)
    long = torch.tensor([156, -100, 3, 156])  # in a dtype that holds -100, it is ignored
    assert Accuracy().update(preds, long).compute().item() == pytest.approx(2 / 3)


def test_accuracy_with_ignore_index_none_counts_every_target():
    acc = Accuracy(ignore_index=None).update(torch.eye(3), torch.tensor([0, 1, 1]))
    assert acc.compute().item() == pytest.approx(2 / 3)
    assert Accuracy(ignore_index=None).update(torch.eye(2), torch.tensor([-100, 1])).compute().item() == 0.5


@pytest.mark.parametrize("loss_func", [nn.CrossEntropyLoss(ignore_index=0), partial(F.cross_entropy, ignore_index=0)],
                         ids=["nn", "partial"])
def test_accuracy_left_at_its_default_leaves_out_what_the_loss_leaves_out(loss_func):
    """With nn.CrossEntropyLoss(ignore_index=0) (padding id 0) the loss left the pads out and Accuracy() counted
    them: 0.53 for 0.22. Left at its default it follows the loss's ignore_index; one given that differs is warned
    of."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 5, 10, generator=g), torch.randint(1, 4, (20, 10), generator=g)
    y[:, 6:] = 0  # padding, easy to predict
    x[:, 0, 6:] = 50.0
    model = nn.Conv1d(5, 4, 1)
    with torch.no_grad():
        model.weight[0, 0, 0] = 1.0
        pred = model(x).argmax(1)
    real = y != 0
    dls = DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8))
    m = MetricsCB(acc=Accuracy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn of
        evaluate(TrainLearner(model, dls, loss_func, cbs=[m]))
    assert m.last["valid_acc"] == pytest.approx((pred[real] == y[real]).float().mean().item())
    assert m.last["valid_acc"] != pytest.approx((pred == y).float().mean().item())  # (the pads do count)
    assert Accuracy().update(torch.eye(3), torch.tensor([0, -100, 2])).compute().item() == 1.0  # alone: -100
    m = MetricsCB(acc=Accuracy(ignore_index=None))
    with pytest.warns(UserWarning, match=r"'acc' is an Accuracy\(ignore_index=None\).*loss leaves out.* 0.*"
                                         r"Leave ignore_index out"):
        evaluate(TrainLearner(model, dls, loss_func, cbs=[m]))
    assert m.last["valid_acc"] == pytest.approx((pred == y).float().mean().item())  # as it was told
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same as the loss's, or a loss of one's own that can't say: no warning
        evaluate(TrainLearner(model, dls, loss_func, cbs=[MetricsCB(acc=Accuracy(ignore_index=0))]))
        evaluate(TrainLearner(model, dls, lambda p, t: loss_func(p, t),
                              cbs=[MetricsCB(acc=Accuracy(ignore_index=0))]))


def test_a_torcheval_metric_is_given_the_targets_the_loss_counts():
    """With 8 of 20 targets at -100, torcheval's MulticlassAccuracy beside F.cross_entropy counted them as wrong
    (0.35 for 0.58), and MulticlassF1Score(average='macro') failed on them with an index error; miniai's
    Accuracy left them out. Targets of other shapes holding them are refused, naming the fix."""
    from torcheval.metrics import MulticlassAccuracy, MulticlassF1Score
    x, y, model, pred, real, truth = with_ignored_targets(20, slice(0, None, 5), slice(1, None, 5))
    dls = DataLoaders(TensorLoader(x, y, 6), TensorLoader(x, y, 6))
    m = MetricsCB(acc=Accuracy(), tacc=MulticlassAccuracy(), f1=MulticlassF1Score(num_classes=3, average="macro"))
    evaluate(TrainLearner(model, dls, F.cross_entropy, cbs=[m]))
    assert m.last["valid_acc"] == m.last["valid_tacc"] == pytest.approx(truth)
    expected = MulticlassF1Score(num_classes=3, average="macro").update(pred[real], y[real]).compute().item()
    assert m.last["valid_f1"] == pytest.approx(expected)
    x3 = torch.randn(20, 5, 4)
    dls = DataLoaders(TensorLoader(x3, y[:, None].expand(20, 4).clone(), 6), TensorLoader(x3, y[:, None].expand(
        20, 4).clone(), 6))
    with pytest.raises(ValueError, match=r"targets hold -100.*metrics 'tacc' would count them.*a metric of your own"):
        evaluate(TrainLearner(nn.Conv1d(5, 3, 1), dls, F.cross_entropy, cbs=[MetricsCB(tacc=MulticlassAccuracy())]))
    own = _OwnTokenAccuracy()  # (as the message says: one's own gets the targets as they are, and leaves them out)
    evaluate(TrainLearner(nn.Conv1d(5, 3, 1), dls, F.cross_entropy, cbs=[MetricsCB(tok=own)]))
    assert own.n == int((y != -100).sum()) * 4


def test_a_subclass_of_a_torcheval_metric_is_given_the_targets_the_loss_counts_too():
    """MetricsCB took a subclass of MulticlassAccuracy defined in one's own code for a metric of one's own, gave it
    the -100 targets, and torcheval's update counted them as wrong: 0.24 logged for 0.36. What decides is whose
    `update` it is: a subclass with its own update still gets the targets as they are."""
    from torcheval.metrics import MulticlassAccuracy

    class Top1(MulticlassAccuracy):  # its settings fixed: update and compute are torcheval's
        def __init__(self) -> None:
            super().__init__(num_classes=3)

    class OwnUpdate(MulticlassAccuracy):  # an update of its own, which leaves out -100 itself
        def update(self, preds, targets):
            kept = targets != -100
            return super().update(preds[kept], targets[kept])

    x, y, model, _, _, truth = with_ignored_targets(60, slice(0, None, 3))
    dls = DataLoaders(TensorLoader(x, y, 16), TensorLoader(x, y, 16))
    m = MetricsCB(acc=Accuracy(), sub=Top1(), own=OwnUpdate(num_classes=3))
    evaluate(TrainLearner(model, dls, F.cross_entropy, cbs=[m]))
    assert m.last["valid_sub"] == m.last["valid_acc"] == m.last["valid_own"] == pytest.approx(truth)


class _OwnTokenAccuracy:
    """A metric of one's own over (N, C, T) scores that leaves out targets of -100 itself."""
    def reset(self):
        self.hits = self.n = 0

    def update(self, preds, targets):
        kept = targets != -100
        self.hits += int((preds.argmax(1)[kept] == targets[kept]).sum())
        self.n += int(kept.sum())

    def compute(self):
        return self.hits / max(self.n, 1)


def test_a_torcheval_threshold_of_one_half_beside_a_loss_of_logits_is_warned_of():
    """BinaryAccuracy() thresholds at 0.5, which on logits is no 0.5 probability: 0.61 logged for 0.665."""
    from torcheval.metrics import BinaryAccuracy
    x = torch.randn(40, 5)
    dls = DataLoaders(TensorLoader(x, (x[:, 0] > 0).float(), 8), TensorLoader(x, (x[:, 0] > 0).float(), 8))
    model = nn.Sequential(nn.Linear(5, 1), nn.Flatten(0))
    with pytest.warns(UserWarning, match=r"'acc' \(BinaryAccuracy\) counts a prediction as 1 from 0.5.*logits.*"
                                         r"BinaryAccuracy\(threshold=0.0\)"):
        evaluate(TrainLearner(model, dls, F.binary_cross_entropy_with_logits, cbs=[MetricsCB(acc=BinaryAccuracy())]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(TrainLearner(model, dls, F.binary_cross_entropy_with_logits,
                              cbs=[MetricsCB(acc=BinaryAccuracy(threshold=0.0))]))


# ---------------------------------------------------------------- validation loaders that drop items

def test_a_validation_loader_whose_batch_sampler_drops_items_is_refused():
    """DataLoader(batch_sampler=BatchSampler(..., drop_last=True)) has dl.drop_last False: the validation
    metrics covered 192 of 203 items without a word."""
    x, y = classifier_data(n=203)
    ds = TensorDataset(x, y)
    valid = DataLoader(ds, batch_sampler=BatchSampler(SequentialSampler(ds), batch_size=64, drop_last=True))
    learn = TrainLearner(nn.Linear(5, 4), DataLoaders(valid, valid), F.cross_entropy, cbs=[MetricsCB()])
    with pytest.raises(ValueError, match=r"dls.valid drops its last items"):
        evaluate(learn)


# ---------------------------------------------------------------- clear errors

class DictItems(Dataset):
    def __init__(self, keys: int) -> None:
        self.keys = keys

    def __len__(self) -> int:
        return 50

    def __getitem__(self, i: int) -> dict:
        item = {"x": torch.randn(5, generator=torch.Generator().manual_seed(i)), "y": i % 3}
        if self.keys == 3:
            item["id"] = i
        return item


class DictSteps(Callback):
    owns_steps = ("predict", "get_loss")

    def predict(self, learn) -> None:
        learn.preds = learn.model(learn.batch["x"])

    def get_loss(self, learn) -> None:
        learn.loss = learn.loss_func(learn.preds, learn.batch["y"])


@pytest.mark.parametrize("keys", [2, 3])
def test_dict_batches_log_the_loss_and_refuse_metrics_with_a_clear_error(keys):
    """With a predict/get_loss of the user's reading dict batches, MetricsCB raised KeyError: 1 (or spoke of
    items after n_inp inputs). The loss alone is logged; a metric, which needs a target, says what to do."""
    dl = DataLoader(DictItems(keys), 16)
    torch.manual_seed(0)
    m = MetricsCB()
    learn = TrainLearner(nn.Linear(5, 3), DataLoaders(dl, dl), F.cross_entropy, cbs=[DictSteps(), m])
    evaluate(learn)
    with torch.no_grad():
        hand = [(F.cross_entropy(learn.model(b["x"]), b["y"]).item(), len(b["y"])) for b in dl]
    assert m.last["valid_loss"] == pytest.approx(sum(loss * n for loss, n in hand) / 50, rel=1e-6)
    learn = TrainLearner(nn.Linear(5, 3), DataLoaders(dl, dl), F.cross_entropy,
                         cbs=[DictSteps(), MetricsCB(acc=Accuracy())])
    with pytest.raises(TypeError, match=r"target.*tuple.*this batch is a dict.*collate_dict"):
        evaluate(learn)


def test_metric_classes_passed_positionally_are_named_after_themselves():
    """MetricsCB(Accuracy) named the metric 'type' (torcheval's classes 'ABCMeta'), and two classes collided."""
    with pytest.raises(TypeError, match=r"metric 'Accuracy' is the class Accuracy.*Accuracy\(\), not the class"):
        MetricsCB(Accuracy)
    metrics = pytest.importorskip("torcheval.metrics")
    with pytest.raises(TypeError, match=r"metric 'MulticlassAccuracy' is the class MulticlassAccuracy"):
        MetricsCB(metrics.MulticlassAccuracy, metrics.MulticlassF1Score)


def test_an_unbatched_loader_is_refused_with_the_fix():
    """DataLoader(batch_size=None) yields single items: MetricsCB failed with IndexError: tuple index out of range."""
    x, y = classifier_data(16)
    dls = DataLoaders(DataLoader(TensorDataset(x, y), batch_size=None), TensorLoader(x, y, 5))
    learn = TrainLearner(nn.Linear(5, 4), dls, F.cross_entropy, lr=0.1, cbs=[MetricsCB(accuracy=Accuracy())])
    with pytest.raises(ValueError, match=r"target of this batch is a 0-dim tensor.*batch_size"), \
            contextlib.redirect_stdout(io.StringIO()):
        learn.fit(1)


@pytest.mark.parametrize("loss_func", [
    nn.CrossEntropyLoss(weight=torch.tensor([1.0, 5.0, 10.0, 0.5])),
    nn.CrossEntropyLoss(weight=torch.tensor([1.0, 5.0, 10.0, 0.5]), label_smoothing=0.1),
    partial(F.cross_entropy, weight=torch.tensor([2.0, 1.0, 3.0, 4.0]), ignore_index=1),
    nn.NLLLoss(weight=torch.tensor([1.0, 5.0, 10.0, 0.5]))])
def test_scoring_through_get_preds_logs_a_class_weighted_loss_as_a_fit_does(loss_func):
    """get_preds(cbs=[MetricsCB()], with_loss=True) averaged the per-item losses by count; reduction='mean' of a
    class-weighted loss divides by the targets' weights: 6.06 was logged for a loss of 1.24."""
    x, y = classifier_data(50)
    model = nn.Sequential(nn.Linear(5, 4), nn.LogSoftmax(1)) if isinstance(loss_func, nn.NLLLoss) else nn.Linear(5, 4)
    dls = DataLoaders(TensorLoader(x, y, 16), TensorLoader(x, y, 16))
    fitted = MetricsCB(accuracy=Accuracy())
    learn = TrainLearner(model, dls, loss_func, lr=0.1, cbs=[fitted])
    evaluate(learn)
    scored = MetricsCB(accuracy=Accuracy())
    learn.get_preds(dls.valid, with_loss=True, cbs=[scored])
    with torch.no_grad():  # the loss over the whole set, as reduction='mean' weighs its targets
        expected = loss_func(model(x), y).item()
    assert fitted.last["valid_loss"] == pytest.approx(expected, rel=1e-5)
    assert scored.last["valid_loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("bs", [8, 16, 32, 64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("weight", [None, torch.tensor([1.0, 3.0])])
def test_the_logged_loss_with_ignored_targets_is_the_sets_whatever_the_batch_size(bs, reduction, weight):
    """24 of 64 validation targets -100 (torch's ignore_index): valid_loss read nan, nan, 0.711, 0.702 at bs 8, 16,
    32, 64 (each batch's mean weighted by all its items; a batch of ignored targets alone is NaN, and stopped a
    CheckpointCB run). The loss over the labelled items is 0.702, at any batch size; with reduction='sum' the sum
    over all 64 items, 0.439, as documented (per item, the unit of ProgressCB's curve and lr_find's)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, generator=g), torch.randint(0, 2, (64,), generator=g)
    y[:24] = -100
    model = nn.Linear(3, 2)
    loss_func = partial(F.cross_entropy, weight=weight, reduction=reduction)
    metrics = MetricsCB()
    learn = TrainLearner(model, DataLoaders(TensorLoader(x, y, bs), TensorLoader(x, y, bs)), loss_func, lr=0.1,
                         cbs=[metrics])
    evaluate(learn)
    with torch.no_grad():  # (a summed loss is logged per item, ignored ones too, as ProgressCB's curve shows it)
        expected = F.cross_entropy(model(x), y, weight=weight).item() if reduction == "mean" else \
            F.cross_entropy(model(x), y, weight=weight, reduction="sum").item() / len(y)
    assert metrics.last["valid_loss"] == pytest.approx(expected, rel=1e-5)
    scored = MetricsCB()
    learn.get_preds(with_loss=True, cbs=[scored])  # scoring a loader logs what the fit logs
    assert scored.last["valid_loss"] == pytest.approx(expected, rel=1e-5)



@pytest.mark.parametrize("loss_func, summed", [(nn.MSELoss(reduction="sum"), True),
                                               (partial(F.mse_loss, reduction="sum"), True),
                                               (nn.KLDivLoss(reduction="batchmean"), False), (nn.MSELoss(), False)])
def test_scoring_through_get_preds_logs_a_summed_or_batchmean_loss_as_a_fit_does(loss_func, summed):
    """get_preds(with_loss=True) averaged each item's losses over its positions: for reduction='sum' or KLDivLoss's
    'batchmean' over (N, C) outputs, which add them up, MetricsCB logged (and get_preds returned) losses C=4
    times smaller than the fit's."""
    x = torch.randn(50, 5, generator=torch.Generator().manual_seed(0))
    y = torch.softmax(torch.randn(50, 4, generator=torch.Generator().manual_seed(1)), 1)
    model = nn.Sequential(nn.Linear(5, 4), nn.LogSoftmax(1))
    dls = DataLoaders(TensorLoader(x, y, 16), TensorLoader(x, y, 16))
    fitted = MetricsCB()
    learn = TrainLearner(model, dls, loss_func, lr=0.1, cbs=[fitted])
    evaluate(learn)
    scored = MetricsCB()
    _, _, losses = learn.get_preds(dls.valid, with_loss=True, cbs=[scored])
    with torch.no_grad():  # per item, as the fit logs it: a summed batch loss divided by its items
        batches = [(loss_func(model(xb), yb).item() / (len(yb) if summed else 1), len(yb)) for xb, yb in dls.valid]
    expected = sum(v * n for v, n in batches) / sum(n for _, n in batches)
    assert fitted.last["valid_loss"] == pytest.approx(expected, rel=1e-5)
    assert scored.last["valid_loss"] == pytest.approx(expected, rel=1e-5)
    assert float(losses.mean()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("loss_func", [nn.MultiMarginLoss(weight=torch.tensor([100.0, 1.0, 1.0, 0.01])),
                                       lambda p, t: F.l1_loss(p[:, 0], t.float())])
def test_a_loss_other_than_cross_entropy_is_weighted_by_items(loss_func):
    """MultiMarginLoss(weight=w) divides by its items, not by the targets' weights, and a loss of one's own on
    integer targets knows no ignore_index: weighted as cross-entropy is, they were logged 24.6 for 17.8."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(23, 3, generator=g), torch.randint(0, 4, (23,), generator=g)
    y[:5] = -100 if not isinstance(loss_func, nn.MultiMarginLoss) else y[:5]
    model = nn.Linear(3, 4)
    metrics = MetricsCB()
    learn = TrainLearner(model, DataLoaders(TensorLoader(x, y, 9), TensorLoader(x, y, 9)), loss_func, lr=0.1,
                         cbs=[metrics])
    evaluate(learn)
    with torch.no_grad():
        expected = loss_func(model(x), y).item()
    assert metrics.last["valid_loss"] == pytest.approx(expected, rel=1e-5)
    if isinstance(loss_func, nn.MultiMarginLoss):  # scoring a loader logs what the fit logs (it logged 0.79 for 1.34)
        scored = MetricsCB()
        learn.get_preds(with_loss=True, cbs=[scored])
        assert scored.last["valid_loss"] == pytest.approx(expected, rel=1e-5)


class _FocalLoss(nn.CrossEntropyLoss):
    """A focal loss reusing nn.CrossEntropyLoss's settings; its forward is its own, a mean over the batch's items."""
    def forward(self, input, target):
        ce = F.cross_entropy(input, target, weight=self.weight, reduction="none")
        return ((1 - torch.exp(-F.cross_entropy(input, target, reduction="none"))) ** 2 * ce).mean()


@pytest.mark.parametrize("bs", [7, 50])
def test_a_subclass_of_cross_entropy_with_a_forward_of_its_own_is_weighted_by_items(bs):
    """A focal loss subclassing nn.CrossEntropyLoss (for its weight) was taken for torch's own: MetricsCB weighted
    each batch by its targets' class weights and logged 1.406 at bs 7, 1.2297 at bs 50, for the set's 1.2305."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 6, generator=g), torch.randint(0, 4, (200,), generator=g)
    model, loss_func = nn.Linear(6, 4), _FocalLoss(weight=torch.tensor([0.1, 1.0, 5.0, 0.5]))
    metrics = MetricsCB()
    evaluate(TrainLearner(model, DataLoaders(TensorLoader(x, y, bs), TensorLoader(x, y, bs)), loss_func,
                          cbs=[metrics]))
    with torch.no_grad():
        expected = loss_func(model(x), y).item()
    assert metrics.last["valid_loss"] == pytest.approx(expected, rel=1e-5)


def test_accuracys_multi_label_advice_gives_the_threshold_logits_need():
    """The advice named MultilabelAccuracy, whose default threshold 0.5 misreads the logits MetricsCB passes it."""
    from torcheval.metrics import MultilabelAccuracy
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    y = (torch.rand(64, 4, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    dls = DataLoaders(TensorLoader(x, y, 16), TensorLoader(x, y, 16))
    model = nn.Linear(8, 4)
    learn = TrainLearner(model, dls, F.binary_cross_entropy_with_logits, lr=0.1, cbs=[MetricsCB(acc=Accuracy())])
    with pytest.raises(ValueError, match=r"MultilabelAccuracy\(threshold=0\) in MetricsCB for logits"):
        evaluate(learn)
    advised = MetricsCB(acc=MultilabelAccuracy(threshold=0, criteria="hamming"))  # as the message says
    evaluate(TrainLearner(model, dls, F.binary_cross_entropy_with_logits, lr=0.1, cbs=[advised]))
    with torch.no_grad():
        assert advised.last["valid_acc"] == pytest.approx(((model(x) > 0).float() == y).float().mean().item())


# ---------------------------------------------------------------- losses of reduction='sum' and 'none'

def _grad_of_step(loss_func, accumulate):
    """The gradient of the weight at the (one) optimizer step of an epoch of 12 items in batches of 4."""
    from miniai.callbacks.grad_accum import GradAccumCB
    x, y = classifier_data(12, d=3, c=3)

    class Grab(Callback):
        order = 30  # after GradAccumCB's division, right before the step

        def after_backward(self, learn):
            self.grad = learn.model.weight.grad.clone()
    torch.manual_seed(1)
    grab, model = Grab(), nn.Linear(3, 3)
    dls = DataLoaders(TensorLoader(x, y, 4), TensorLoader(x, y, 4))
    learn = TrainLearner(model, dls, loss_func, lr=0.0, cbs=[GradAccumCB(3), grab] if accumulate else [grab])
    if not accumulate:
        learn.dls = DataLoaders(TensorLoader(x, y, 12), TensorLoader(x, y, 12))
    with contextlib.redirect_stdout(io.StringIO()):
        learn.fit(1, valid=False)
    return grab.grad


@pytest.mark.parametrize("loss_func", [F.cross_entropy, partial(F.cross_entropy, reduction="sum"),
                                       nn.CrossEntropyLoss(reduction="sum")])
def test_gradaccum_steps_on_one_bigger_batchs_gradient_for_a_summed_loss_too(loss_func):
    """GradAccumCB divided by k whatever the loss: with reduction='sum' (whose bigger batch's gradient is the sum)
    each step took a third of the gradient, a silent lr / 3."""
    assert torch.allclose(_grad_of_step(loss_func, True), _grad_of_step(loss_func, False), rtol=1e-5, atol=1e-6)


def test_metricscb_logs_a_summed_loss_per_item_whatever_the_batch_size():
    """Each batch's sum was weighted by its items again: valid_loss 3.72, 10.91, 21.83 at bs 4, 11, 22 for the
    same weights; now the per-item mean of the sums, the same at every batch size."""
    x, y = classifier_data(22, d=3, c=3)
    torch.manual_seed(1)
    model, loss_func = nn.Linear(3, 3), nn.CrossEntropyLoss(reduction="sum")
    logged = []
    for bs in (4, 11, 22):
        metrics = MetricsCB()
        evaluate(TrainLearner(model, DataLoaders(TensorLoader(x, y, bs), TensorLoader(x, y, bs)), loss_func,
                              cbs=[metrics]))
        logged.append(metrics.last["valid_loss"])
    with torch.no_grad():
        per_item = loss_func(model(x), y).item() / len(y)
    assert logged == pytest.approx([per_item] * 3, rel=1e-5)


def test_training_on_a_loss_of_one_value_per_item_says_to_reduce_it():
    """reduction='none' in training ended in torch's 'grad can be implicitly created only for scalar outputs'."""
    from miniai.callbacks.basic import LossInputError
    x, y = classifier_data(16)
    learn = TrainLearner(nn.Linear(5, 4), DataLoaders(TensorLoader(x, y, 4), TensorLoader(x, y, 4)),
                         nn.CrossEntropyLoss(reduction="none"), lr=0.1)
    with pytest.raises(LossInputError, match=r"a loss of shape \(4,\), not one number.*reduction='mean'"), \
            contextlib.redirect_stdout(io.StringIO()):
        learn.fit(1)
    evaluate(learn)  # an evaluation takes per-item losses (MetricsCB averages them)
    with pytest.raises(LossInputError, match="not one number"), contextlib.redirect_stdout(io.StringIO()):
        learn.fit(1)  # (after an evaluation of the same shapes too)


class ReusedBuffers:
    """A loader that copies each batch into the same two tensors and yields them (a prefetcher's buffers)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, bs: int) -> None:
        self.x, self.y, self.bs = x, y, bs
        self.xb, self.yb = torch.empty(bs, *x.shape[1:]), torch.empty(bs, dtype=y.dtype)

    def __len__(self) -> int:
        return len(self.x) // self.bs

    def __iter__(self):
        for i in range(0, len(self) * self.bs, self.bs):
            self.xb.copy_(self.x[i:i + self.bs])
            self.yb.copy_(self.y[i:i + self.bs])
            yield self.xb, self.yb


def test_metrics_of_a_loader_that_reuses_its_tensors_are_those_of_each_batch():
    """MetricsCB kept references to the targets until its update, 256 batches later: the loader had overwritten
    them with the last batch's, and accuracy read 0.375 for 0.325, without a word (the loss was right); get_preds
    returned the last batch's targets and inputs five times over."""
    from torcheval.metrics import MulticlassAccuracy
    y = torch.arange(40) % 3
    x = F.one_hot(y, 3).float()
    model = nn.Linear(3, 3)
    with torch.no_grad():  # a perfect classifier: every metric of every batch is 1
        model.weight.copy_(torch.eye(3))
        model.bias.zero_()
    metrics = MetricsCB(acc=Accuracy(), tacc=MulticlassAccuracy())
    metrics.log_fn = lambda row: None
    learn = TrainLearner(model, DataLoaders(ReusedBuffers(x, y, 8), ReusedBuffers(x, y, 8)), F.cross_entropy,
                         lr=0.1, cbs=[metrics])
    learn.fit(1, train=False)
    assert metrics.last["valid_acc"] == 1.0 and metrics.last["valid_tacc"] == 1.0
    xs, _, t = learn.get_preds(with_input=True)
    assert torch.equal(t, y) and torch.equal(xs, x)


class _OneBuffer(nn.Module):
    """Writes every batch's logits into one buffer and returns it (as CUDA-graph and exported-runtime wrappers do)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("out", torch.empty(8, 3), persistent=False)

    def forward(self, x):
        return self.out.copy_(self.lin(x))


class _Centres(Callback):
    """Centres the logits on their first class in place after MetricsCB has seen them (to look at them, say)."""
    order = 50

    def after_batch(self, learn):
        learn.preds.sub_(learn.preds[:, :1]).abs_()


@pytest.mark.parametrize("later", ["a model that returns one buffer", "preds changed in place after MetricsCB"])
def test_metrics_are_of_each_batchs_preds_as_metricscb_saw_them(later):
    """MetricsCB kept references to the preds until its update at the pass's end: a model returning the same buffer
    every batch was scored on its last batch's logits (0.300 for 0.317), and a later callback's in-place change to
    them counted (a binary model's sigmoid_: 0.5 for 0.5625), without a word; the loss was right."""
    from torcheval.metrics import MulticlassAccuracy
    torch.manual_seed(0)
    x, y = torch.randn(40, 3), torch.arange(40) % 3
    model = _OneBuffer() if later.startswith("a model") else nn.Linear(3, 3)
    metrics = MetricsCB(acc=Accuracy(), tacc=MulticlassAccuracy(), log_fn=None)
    cbs = [metrics] if later.startswith("a model") else [metrics, _Centres()]
    learn = TrainLearner(model, DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8)), F.cross_entropy,
                         lr=0.1, cbs=cbs)
    learn.fit(1, train=False)
    with torch.no_grad():
        hand = torch.cat([model(x[i:i + 8]).clone() for i in range(0, 40, 8)]).argmax(1).eq(y).float().mean().item()
    assert 0.0 < hand < 1.0 and metrics.last["valid_acc"] == pytest.approx(hand)
    assert metrics.last["valid_tacc"] == pytest.approx(hand)


class _Prior(nn.Module):
    """A constant baseline: every item gets the class scores of one parameter (a view of it, as expand gives)."""

    def __init__(self, copy: bool = False) -> None:
        super().__init__()
        self.logits, self.copy = nn.Parameter(torch.tensor([0.3, 0.0, 0.2])), copy

    def forward(self, x):
        out = self.logits.expand(len(x), 3)
        return out.clone() if self.copy else out


def test_a_models_output_that_is_a_view_of_a_parameter_is_refused_naming_the_step_and_the_fix_works():
    """MetricsCB refused it blaming the loss or a callback for changing the preds in place: it was the optimizer's
    step, which changes the parameter they are a view of."""
    y = torch.tensor([0, 0, 2, 2, 1, 2, 0, 2] * 3)
    dls = DataLoaders(TensorLoader(torch.zeros(24, 1), y, 4), TensorLoader(torch.zeros(8, 1), y[:8], 4))
    with pytest.raises(RuntimeError, match=r"the optimizer's step \(an output that is a view of a parameter.*"
                                           r"p.expand\(n, -1\).clone\(\)"):
        TrainLearner(_Prior(), dls, F.cross_entropy, lr=0.5, cbs=[MetricsCB(acc=Accuracy(), log_fn=None)]).fit(1)
    TrainLearner(_Prior(copy=True), dls, F.cross_entropy, lr=0.5, cbs=[MetricsCB(acc=Accuracy(), log_fn=None)]).fit(1)


class _ProbsForMetrics(Callback):
    """Turns the logits the loss took into the probabilities a thresholding metric takes (at after_loss)."""

    def after_loss(self, learn):
        learn.preds = torch.sigmoid(learn.preds)


class _ModelInLoss(Callback):
    """A predict that does nothing and a get_loss that runs the model and sets learn.preds itself."""
    owns_steps = ("predict", "get_loss")

    def predict(self, learn):
        learn.preds = None

    def get_loss(self, learn):
        learn.preds = learn.model(learn.batch[0])
        learn.loss = F.cross_entropy(learn.preds, learn.batch[1])


@pytest.mark.parametrize("case", ["preds changed for the metrics at after_loss", "preds set by get_loss"])
def test_metrics_read_the_preds_callbacks_leave_at_the_batchs_end(case):
    """(Kept, as a hand loop computing its metric after such a step would: a copy taken at after_predict, tried
    and reverted at this stop, read 0.4375 for 0.5625 in the first case and refused the second.)"""
    from torcheval.metrics import BinaryAccuracy, MulticlassAccuracy
    torch.manual_seed(0)
    x = torch.randn(32, 3)
    if case.startswith("preds changed"):
        y, model, loss = (x[:, 0] > 0.3).float(), nn.Linear(3, 1), nn.BCEWithLogitsLoss()
        metric, cb = BinaryAccuracy(), _ProbsForMetrics()
        with torch.no_grad():
            hand = (torch.sigmoid(model(x)[:, 0]) > 0.5).float().eq(y).float().mean().item()
    else:
        y, model, loss, metric, cb = torch.arange(32) % 3, nn.Linear(3, 3), F.cross_entropy, MulticlassAccuracy(), \
            _ModelInLoss()
        with torch.no_grad():
            hand = model(x).argmax(1).eq(y).float().mean().item()
    if case.startswith("preds changed"):
        class Squeeze(Callback):
            order = -1

            def after_predict(self, learn):
                learn.preds = learn.preds[:, 0]
        cbs = [Squeeze(), cb]
    else:
        cbs = [cb]
    metrics = MetricsCB(acc=metric, log_fn=None)
    TrainLearner(model, DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8)), loss, lr=0.1,
                 cbs=[metrics, *cbs]).fit(1, train=False)
    assert 0.0 < hand < 1.0 and metrics.last["valid_acc"] == pytest.approx(hand)


def test_uint8_targets_of_a_class_weighted_loss_are_counted_by_their_classes():
    """Indexing the class weights with uint8 targets read them as a mask: IndexError at the first flush."""
    y = torch.randint(0, 4, (23,), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    weight = torch.tensor([1.0, 2.0, 3.0, 4.0])
    metrics = MetricsCB()
    metrics.before_epoch(SimpleNamespace(model=nn.Linear(3, 4), loss_func=partial(F.cross_entropy, weight=weight),
                                         training=False))
    assert metrics._batch_weights((y[:9], y[9:]), (9, 14)).tolist() == [float(weight[y[:9].long()].sum()),
                                                                        float(weight[y[9:].long()].sum())]


def test_cross_entropy_in_a_function_of_ones_own_with_a_batch_of_ignored_targets_alone_is_not_nan():
    """def loss(p, t): return F.cross_entropy(p, t) (the language-model pattern), a first batch of targets all -100:
    its NaN, weighted by its items, made the pass's loss NaN. That batch counts for nothing now (the others are
    weighted by items: the ignore_index inside the function can't be seen)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 3, generator=g), torch.randint(0, 4, (20,), generator=g)
    y[:5] = -100
    model, metrics = nn.Linear(3, 4), MetricsCB()

    def loss_func(p, t):
        return F.cross_entropy(p, t)
    evaluate(TrainLearner(model, DataLoaders(TensorLoader(x, y, 5), TensorLoader(x, y, 5)), loss_func, lr=0.1,
                          cbs=[metrics]))
    with torch.no_grad():
        assert metrics.last["valid_loss"] == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-5)


def test_a_function_of_ones_own_on_targets_with_ignored_ones_is_warned_of_once_per_fit():
    """def loss(p, t): return F.cross_entropy(p, t) with some targets -100: valid_loss read 1.535 at bs 8, 1.524 at
    bs 5, 1.518 (the set's) at bs 1, without a word. MetricsCB, which weights such a loss's batches by items, says
    so."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(37, 5, generator=g), torch.randint(0, 4, (37,), generator=g)
    model = nn.Linear(5, 4)

    def my_loss(p, t):
        return F.cross_entropy(p, t)
    for loss_func, ignored, warns in [(my_loss, True, True), (my_loss, False, False), (F.cross_entropy, True, False),
                                      (nn.CrossEntropyLoss(), True, False)]:
        targets = torch.where(torch.arange(37) % 7 == 1, -100, y) if ignored else y
        dls = DataLoaders(TensorLoader(x, targets, 8), TensorLoader(x, targets, 8))
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("always")
            TrainLearner(model, dls, loss_func, lr=0.0, cbs=[MetricsCB()]).fit(2)
        said = [str(w.message) for w in caught if "weighted by its items" in str(w.message)]
        assert len(said) == warns, (loss_func, ignored, said)  # once for the fit's 4 passes
        if warns:
            assert "my_loss" in said[0] and "targets of -100" in said[0] and "batch size" in said[0]
            assert "loss_func=F.cross_entropy" in said[0] and "partial(F.cross_entropy" in said[0]


def test_an_accuracy_used_alone_after_a_fit_leaves_out_minus_100_again_and_takes_numpy_indices():
    """After a fit with nn.CrossEntropyLoss(ignore_index=0), the same Accuracy used by hand still left out class 0
    (its docstring: -100 alone); Accuracy(ignore_index=np.int64(0)) was refused, and a loss's NumPy ignore_index was
    read as -100: pads counted in the accuracy, the loss weighted by items."""
    import numpy as np
    x, y = torch.randn(16, 4), torch.tensor([0, 1, 2, 3] * 4)
    acc = Accuracy()
    learn = TrainLearner(nn.Linear(4, 4), DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8)),
                         nn.CrossEntropyLoss(ignore_index=0), cbs=[MetricsCB(acc=acc)])
    evaluate(learn)
    acc.reset()
    assert acc.update(torch.eye(4), torch.tensor([0, 1, 2, -100])).compute().item() == 1.0
    assert acc.counts.tolist() == [3, 3]  # class 0 counted, -100 left out
    assert Accuracy(ignore_index=np.int64(0)).ignore_index == 0
    last = []
    for ignore in (np.int64(0), 0):  # the same model each time: the same numbers
        torch.manual_seed(0)
        m = MetricsCB(acc=Accuracy())
        evaluate(TrainLearner(nn.Linear(4, 4), learn.dls, nn.CrossEntropyLoss(ignore_index=ignore), cbs=[m]))
        last.append(m.last)
    assert last[0] == pytest.approx(last[1])


def test_an_accuracy_that_counts_every_target_beside_torchs_default_loss_is_not_warned_of():
    """Accuracy(ignore_index=None) beside plain F.cross_entropy warned at every fit that the two count different
    targets, where no target was -100 and neither had chosen one; an Accuracy that leaves out a padding value the
    loss trains on is warned of."""
    x, y = torch.randn(16, 4), torch.tensor([0, 1, 2, 3] * 4)
    dls = DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(TrainLearner(nn.Linear(4, 4), dls, F.cross_entropy, cbs=[MetricsCB(acc=Accuracy(ignore_index=None))]))
    for padding in (0, 255):
        with pytest.warns(UserWarning, match=rf"Accuracy\(ignore_index={padding}\), and the loss leaves out targets "
                                             r"of -100"):
            evaluate(TrainLearner(nn.Linear(4, 4), dls, nn.CrossEntropyLoss(),
                                  cbs=[MetricsCB(acc=Accuracy(ignore_index=padding))]))


def test_a_look_at_another_loader_with_the_fits_own_metric_is_refused():
    """A callback scoring another loader mid-fit with get_preds(cbs=[MetricsCB(n=the fit's metric)]) reset and
    refilled the object the fit's MetricsCB had batches pending for: the fit's count read 64 for 40."""
    x, y = torch.randn(16, 4), torch.tensor([0, 1, 2, 3] * 4)
    dls = DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8))
    acc = Accuracy()

    class Look(Callback):
        def after_epoch(self, learn):
            if learn.training:
                learn.get_preds(dl=dls.valid, cbs=[MetricsCB(acc=acc)])
    learn = TrainLearner(nn.Linear(4, 4), dls, F.cross_entropy, cbs=[MetricsCB(acc=acc), Look()])
    with pytest.raises(ValueError, match="two MetricsCBs of this run hold one Accuracy object"):
        learn.fit(1)


def test_a_metric_that_computes_text_or_an_array_is_refused_by_name():
    import numpy as np
    from miniai.callbacks.metrics import _number
    with pytest.raises(TypeError, match="'f1' computed a str"):
        _number("f1", "0.5")
    with pytest.raises(ValueError, match=r"'f1' computed a tensor of shape \(3,\)"):
        _number("f1", np.array([0.1, 0.2, 0.3]))
    assert _number("f1", np.array([0.5])) == 0.5


def test_a_look_after_a_cancelled_pass_may_use_the_fits_metric_and_text_in_an_array_is_refused():
    """A pass cancelled by CancelEpochException skipped after_epoch, so the fit's MetricsCB still counted as mid-pass:
    a get_preds with its metric from after_fit was refused. np.array(['0.5']) was logged as 0.5."""
    import numpy as np
    from miniai.callbacks.metrics import _number
    from miniai.learner import CancelEpochException
    x, y = torch.randn(16, 4), torch.tensor([0, 1, 2, 3] * 4)
    dls = DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8))
    acc, looked = Accuracy(), []

    class CutValid(Callback):
        def before_batch(self, learn):
            if not learn.training and not learn._predicting:
                raise CancelEpochException()

        def after_fit(self, learn):
            looked.append(learn.get_preds(dl=dls.valid, cbs=[MetricsCB(acc=acc)]))
    TrainLearner(nn.Linear(4, 4), dls, F.cross_entropy, cbs=[MetricsCB(acc=acc), CutValid()]).fit(1)
    assert len(looked) == 1
    for text in (np.array(["0.5"]), np.array([b"0.5"])):
        with pytest.raises(TypeError, match="computed a"):
            _number("f1", text)


def test_a_binary_models_column_of_logits_is_refused_at_the_first_batch_with_advice_that_works():
    # (N, 1) logits and (N, 1) targets, BCE's usual shapes: refused only once a whole epoch had trained (Accuracy is
    # updated for up to 256 batches at once), advising BinaryAccuracy(threshold=0), which fails on (N, 1), and
    # (preds > 0).long(), which MetricsCB has no place for (probe)
    from torcheval.metrics import BinaryAccuracy
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, :1] > 0).float()
    dls = DataLoaders(TensorLoader(x, y, 16), TensorLoader(x, y, 16))
    batches = []

    class Count(Callback):
        def after_batch(self, learn): batches.append(learn.iter)
    learn = TrainLearner(nn.Linear(8, 1), dls, F.binary_cross_entropy_with_logits, lr=0.1,
                         cbs=[MetricsCB(acc=Accuracy(), log_fn=None), Count()])
    with pytest.raises(ValueError, match=r"BinaryAccuracy\(threshold=0\).*nn.Flatten\(0\).*targets.*y.squeeze\(1\)"):
        learn.fit(1)
    assert batches == [0]  # refused at the first batch
    model = nn.Sequential(nn.Linear(8, 1), nn.Flatten(0))  # the advice, followed
    advised = MetricsCB(acc=BinaryAccuracy(threshold=0), log_fn=None)
    flat = DataLoaders(TensorLoader(x, y.squeeze(1), 16), TensorLoader(x, y.squeeze(1), 16))
    TrainLearner(model, flat, F.binary_cross_entropy_with_logits, lr=0.1, cbs=[advised]).fit(1)
    with torch.no_grad():
        assert advised.last["valid_acc"] == pytest.approx(((model(x) > 0).float() == y[:, 0]).float().mean().item())


def test_accuracy_asks_which_dim_holds_the_classes_when_the_scores_read_both_ways_and_takes_them_last_when_told():
    """A sequence model's (N, T, C) scores with T == C: Accuracy took the argmax over dim 1, the time steps, without a
    word (0.21 for 0.18); with T != C it was refused as 'their shapes don't match', with no way through (probe W)."""
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 6, (37, 6), generator=g)
    preds = torch.randn(37, 6, 6, generator=g)  # (N, T, C), T == C
    with pytest.raises(ValueError, match=r"preds \(37, 6, 6\) read two ways.*Accuracy\(dim=1\).*Accuracy\(dim=-1\)"):
        Accuracy().update(preds, target)
    truth = (preds.argmax(-1) == target).float().mean()
    assert Accuracy(dim=-1).update(preds, target).compute() == truth
    assert Accuracy(dim=1).update(preds, target).compute() == (preds.argmax(1) == target).float().mean()
    longer = torch.randn(37, 6, 4, generator=g)  # (N, T, C), T != C
    with pytest.raises(ValueError, match=r"the class scores last \(a sequence model's \(N, T, C\)\): "
                                         r"Accuracy\(dim=-1\)"):
        Accuracy().update(longer, target)
    assert Accuracy(dim=-1).update(longer, target).compute() == (longer.argmax(-1) == target).float().mean()
    with pytest.raises(TypeError, match="Accuracy's dim"):
        Accuracy(dim=0.5)
    with pytest.raises(ValueError, match="dim 0 is the items"):
        Accuracy(dim=0)


def test_accuracy_reads_scores_that_read_both_ways_on_dim_1_once_a_batch_said_so_and_refuses_none_that_read_one_way():
    """A regression caught before it landed (probe T2): per-token (N, C, T) batches of varying T were refused at the
    first batch where T == C, mid-fit, and (N, C, H, W) with C == W, which reads one way only, was refused too."""
    g = torch.Generator().manual_seed(0)
    acc, truth = Accuracy(), []
    for t in (5, 3, 4):  # C = 3: the second batch reads both ways, the first said the classes are on dim 1
        preds, target = torch.randn(8, 3, t, generator=g), torch.randint(0, 3, (8, t), generator=g)
        acc.update(preds, target)
        truth.append(preds.argmax(1) == target)
    assert acc.compute() == torch.cat([t.flatten() for t in truth]).float().mean()
    seg, mask = torch.randn(4, 3, 8, 3, generator=g), torch.randint(0, 3, (4, 8, 3), generator=g)
    assert Accuracy().update(seg, mask).compute() == (seg.argmax(1) == mask).float().mean()


def test_a_batch_whose_targets_all_weigh_zero_has_torchs_nan_loss_not_inf():
    """Under label smoothing a batch of targets all of a class weighted 0 sums to more than 0 over weights of 0:
    mean_loss gave inf, where torch's loss is NaN (probe T3)."""
    from miniai.weighting import mean_loss
    preds, target = torch.randn(4, 3), torch.zeros(4, dtype=torch.long)
    loss = nn.CrossEntropyLoss(weight=torch.tensor([0.0, 1.0, 1.0]), label_smoothing=0.2)
    unreduced = F.cross_entropy(preds, target, weight=loss.weight, label_smoothing=0.2, reduction="none")
    assert torch.isnan(loss(preds, target)) and torch.isnan(mean_loss(unreduced, target, loss))


def test_accuracys_reading_of_the_class_dim_is_kept_by_its_state_so_a_resumed_run_reads_as_the_run_did():
    """(probe T3) What a one-way batch showed (classes on dim 1) was not in state_dict: a resumed run refused a
    T == C batch that the run never stopped took."""
    g = torch.Generator().manual_seed(0)
    acc = Accuracy().update(torch.randn(4, 3, 5, generator=g), torch.randint(0, 3, (4, 5), generator=g))
    again = Accuracy()
    again.load_state_dict(acc.state_dict())
    again.update(torch.randn(4, 3, 3, generator=g), torch.randint(0, 3, (4, 3), generator=g))
    again.load_state_dict({"counts": torch.zeros(2, dtype=torch.int64)})  # (a checkpoint from before: as it was)


@pytest.mark.parametrize("bs", [3, 4, 5])
def test_class_weights_of_uint8_targets_are_looked_up_by_class_not_used_as_a_mask(bs):
    """(probe P21, session 23) torch's cross-entropy takes uint8 targets; the per-item weights indexed the class
    weights with them, which torch reads as a mask: an evaluation with reduction='none' logged 1.926 for 2.054 where
    the batch held as many items as classes, and an IndexError elsewhere; Interpretation and
    get_preds(with_loss=True) failed on any class-weighted cross-entropy."""
    from miniai.interpret import Interpretation
    g = torch.Generator().manual_seed(5)
    x, y, w = torch.randn(12, 3, generator=g) * 2, torch.randint(0, 3, (12,), generator=g), torch.tensor([1.0, 3, 0.5])
    model = nn.Linear(3, 3)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
        model.bias.zero_()
    dl = TensorLoader(x, y.to(torch.uint8), bs)
    metrics = MetricsCB(log_fn=None)
    learn = TrainLearner(model, DataLoaders(dl, dl), nn.CrossEntropyLoss(weight=w, reduction="none"), cbs=[metrics])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "indexing with dtype torch.uint8")  # (torch's own, in its loss)
        learn.fit(1, train=False)
        assert metrics.last["valid_loss"] == pytest.approx(F.cross_entropy(x, y, weight=w).item(), abs=1e-5)
        learn.loss_func = nn.CrossEntropyLoss(weight=w)
        per_item = F.cross_entropy(x, y, weight=w, reduction="none") / w[y]  # each item's own mean: its loss
        losses = Interpretation.from_learner(learn).losses
    torch.testing.assert_close(losses, per_item)


@pytest.mark.parametrize("bs", [1, 8])
def test_integer_regression_targets_of_minus_100_count_for_a_torch_loss_that_ignores_none(bs):
    """(probe P34, session 23) Targets equal to -100 were left out of the metrics (and, at batch size 1, of the
    loss) for any loss, F.mse_loss too, which has no ignore_index: whole-number regression targets read
    valid_mse 139.42 for 128.96."""
    from torcheval.metrics import MeanSquaredError
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=g), torch.randint(-120, -80, (40,), generator=g)
    assert (y == -100).any()

    class Reg(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(5, 1)

        def forward(self, x):
            return self.l(x).squeeze(-1) - 100
    model, dl = Reg(), DataLoader(TensorDataset(x, y), batch_size=bs)
    metrics = MetricsCB(log_fn=None, mse=MeanSquaredError())
    learn = TrainLearner(model, DataLoaders(dl, dl), F.mse_loss, lr=0.0, cbs=[metrics])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "dls.valid gives the same data")
        learn.fit(1, train=False)
    with torch.no_grad():
        truth = F.mse_loss(model(x), y.float()).item()
    assert metrics.last["valid_mse"] == pytest.approx(truth, rel=1e-5)
    assert metrics.last["valid_loss"] == pytest.approx(truth, rel=1e-5)


@pytest.mark.parametrize("column", [True, False])
def test_a_torcheval_multiclass_metric_given_a_binary_models_scores_is_refused(column):
    """MulticlassAccuracy over a binary model's one score per item: as a column (N, 1) its argmax is class 0 for
    every item (0.344 logged, the share of class 0); as (N,) scores it compares them with the labels (0.000)."""
    from torcheval.metrics import MulticlassAccuracy, MulticlassF1Score
    x = torch.randn(64, 5)
    y = (x[:, 0] > 0).long()
    dls = DataLoaders(TensorLoader(x, y, 16), TensorLoader(x, y, 16))
    model = nn.Sequential(nn.Linear(5, 1), *([] if column else [nn.Flatten(0)]))
    loss = (lambda p, t: F.binary_cross_entropy_with_logits(p.reshape(-1), t.float()))
    for metric in (MulticlassAccuracy(), MulticlassF1Score()):
        with pytest.raises(ValueError, match=rf"'m' \({type(metric).__name__}\) takes class scores \(N, C\).*"
                                             r"binary model.*BinaryAccuracy\(threshold=0"):
            evaluate(TrainLearner(model, dls, loss, cbs=[MetricsCB(m=metric)]))
    # class labels as floats (whole numbers), and two class scores, are taken
    labels = nn.Sequential(nn.Linear(5, 2), nn.Flatten(), _ArgmaxFloat())
    evaluate(TrainLearner(labels, dls, lambda p, t: (p - t).abs().mean(),
                          cbs=[MetricsCB(m=MulticlassAccuracy())]))
    evaluate(TrainLearner(nn.Linear(5, 2), dls, F.cross_entropy, cbs=[MetricsCB(m=MulticlassAccuracy())]))


class _ArgmaxFloat(nn.Module):
    def forward(self, x):
        return x.argmax(1).float()


def test_a_cancelled_pass_leaves_no_values_of_an_earlier_pass_in_last():
    """A last validation pass cancelled by CancelEpochException left epoch 0's valid values in learn.metrics.last,
    read after the fit as the last epoch's."""
    from miniai.learner import CancelEpochException
    x, y = torch.randn(16, 4), torch.tensor([0, 1, 2, 3] * 4)
    dls = DataLoaders(TensorLoader(x, y, 8), TensorLoader(x[:8], y[:8], 8))

    class CutLastValid(Callback):
        def before_batch(self, learn):
            if not learn.training and learn.epoch == 1:
                raise CancelEpochException()
    learn = TrainLearner(nn.Linear(4, 4), dls, F.cross_entropy, cbs=[MetricsCB(acc=Accuracy(), log_fn=None),
                                                                      CutLastValid()])
    learn.fit(2)
    assert [(row["epoch"], row["train"]) for row in learn.metrics.history] == [(0, "train"), (0, "valid"),
                                                                                 (1, "train")]
    assert set(learn.metrics.last) == {"train_acc", "train_loss"}


def test_a_torcheval_metrics_own_shape_error_names_the_metric_and_the_way():
    """(probe P61) MulticlassAccuracy on a segmentation's (N, C, H, W) scores: torcheval's bare 'target should be a
    one-dimensional tensor', naming neither MetricsCB, the metric, nor miniai's Accuracy, which takes them."""
    from torcheval.metrics import MulticlassAccuracy
    x, y = torch.randn(16, 3, 6, 6), torch.randint(0, 3, (16, 6, 6))
    dls = DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8))
    learn = TrainLearner(nn.Conv2d(3, 3, 1), dls, F.cross_entropy, cbs=[MetricsCB(acc=MulticlassAccuracy())])
    with pytest.raises(ValueError, match="one-dimensional") as e:
        evaluate(learn)
    assert any("'acc' (MulticlassAccuracy)" in note and "(8, 3, 6, 6)" in note and "Accuracy()" in note
               for note in e.value.__notes__)


def test_a_pass_whose_metric_fails_to_compute_leaves_no_earlier_values_in_last():
    """(regression round T4) A metric's compute() raising in epoch 1's validation: last kept epoch 0's values."""
    class FailsLater:
        def __init__(self):
            self.calls = 0

        def update(self, preds, targets):
            pass

        def compute(self):
            self.calls += 1
            if self.calls == 4:  # epoch 1's validation pass
                raise RuntimeError("compute failed")
            return 1.0

        def reset(self):
            pass
    x, y = torch.randn(16, 4), torch.tensor([0, 1, 2, 3] * 4)
    learn = TrainLearner(nn.Linear(4, 4), DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8)), F.cross_entropy,
                         cbs=[MetricsCB(m=FailsLater(), log_fn=None)])
    with pytest.raises(RuntimeError, match="compute failed"):
        learn.fit(2)
    assert not any(name.startswith("valid_") for name in learn.metrics.last)


@pytest.mark.parametrize("output, pick", [("dict", "preds['logits']"), ("tuple", "preds[0]")])
def test_a_metric_given_a_models_dict_or_tuple_is_told_how_to_pick_the_scores_out_of_it(output, pick):
    """(probe S25 parity2) The refusal for a model returning {'logits', 'aux'} said 'calls the metric on preds[0]',
    which on a dict raises KeyError 0."""
    class TwoOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls, self.aux = nn.Linear(4, 3), nn.Linear(4, 1)

        def forward(self, x):
            out = {"logits": self.cls(x), "aux": self.aux(x)}
            return out if output == "dict" else tuple(out.values())
    x, y = torch.randn(16, 4), torch.arange(16) % 3
    loss = (lambda o, y: F.cross_entropy(o["logits"] if output == "dict" else o[0], y))
    learn = TrainLearner(TwoOutputs(), DataLoaders(TensorLoader(x, y, 8), TensorLoader(x[:8], y[:8], 8)), loss,
                         cbs=[MetricsCB(log_fn=None, accuracy=Accuracy())])
    with pytest.raises(TypeError, match=rf"returned a {output}.*calls the metric on {re.escape(pick)}\)"):
        learn.fit(1)


def test_a_metric_given_a_dict_of_no_tensors_is_told_its_first_key():
    """(regression round T8) A model returning {'heads': [logits, ...]} was told 'calls the metric on preds[None]'."""
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return {"heads": [self.lin(x), self.lin(x) * 0.5]}
    x, y = torch.randn(16, 4), torch.arange(16) % 3
    learn = TrainLearner(Heads(), DataLoaders(TensorLoader(x, y, 8), TensorLoader(x[:8], y[:8], 8)),
                         lambda o, y: F.cross_entropy(o["heads"][0], y),
                         cbs=[MetricsCB(log_fn=None, accuracy=Accuracy())])
    with pytest.raises(TypeError, match=r"calls the metric on preds\['heads'\]"):
        learn.fit(1)


@pytest.mark.parametrize("torcheval_too", [False, True])
def test_float_class_indices_holding_minus_100_beside_class_scores_are_refused_with_the_way(torcheval_too):
    """Labels read as floats (a CSV column, -100 for the unlabelled) with a loss of one's own that casts them: Accuracy
    left the -100 items out, torcheval's MulticlassAccuracy counted them as wrong (0.0667 vs 0.0435), and a batch
    of -100 alone made the pass's loss NaN, without a word (probe metrics, s27)."""
    from torcheval.metrics import MulticlassAccuracy
    torch.manual_seed(0)
    x, y = torch.randn(23, 5), torch.randint(0, 4, (23,))
    y[:8] = -100

    def my_loss(preds, target):
        return F.cross_entropy(preds, target.long())
    metrics = {"acc": Accuracy()} | ({"macc": MulticlassAccuracy()} if torcheval_too else {})

    def learner(target):
        data = TensorDataset(x, target)
        dls = SimpleNamespace(train=DataLoader(data, 5), valid=DataLoader(data, 5))
        return TrainLearner(nn.Linear(5, 4), dls, my_loss, lr=0.0, cbs=[MetricsCB(**metrics, log_fn=None)])
    with pytest.raises(ValueError, match=r"targets are floats holding -100.*class scores.*preds \(5, 4\).*targets "
                                         r"\(5,\).*y.long\(\)"):
        learner(y.float()).fit(1, train=False)
    first_only = torch.randint(0, 4, (23,))
    first_only[:5] = -100  # (a first batch of -100 alone, flushed alone, and none after: regression round 26)
    with pytest.raises(ValueError, match=r"targets are floats holding -100"):
        learner(first_only.float()).fit(1, train=False)
    learn = learner(y)  # the advice, followed: int64 class indices
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (a loss of one's own: -100 taken as its ignore_index, warned of)
        learn.fit(1, train=False)
    kept = y != -100
    hand = (learn.model(x)[kept].argmax(1) == y[kept]).float().mean().item()
    assert learn.metrics.last["valid_acc"] == pytest.approx(hand) and math.isfinite(learn.metrics.last["valid_loss"])
    if torcheval_too:
        assert learn.metrics.last["valid_macc"] == pytest.approx(hand)


@pytest.mark.parametrize("outputs, target", [(1, (8, 1)), (1, (8,)), (2, (8,))])
def test_float_regression_targets_of_minus_100_are_values(outputs, target):
    """(the refusal above is for class indices beside class scores: regression targets, -100 included, are values,
    as for F.mse_loss: of the outputs' shape, or (N,) beside one output column (a dB floor), or beside a mean and a
    log-variance (regression round 25: refused, with advice y.long() that would have truncated them))"""
    torch.manual_seed(0)
    x, y = torch.randn(8, 1), torch.randn(target) * 30
    y[:4] = -100.0  # (a first batch of -100 alone)

    def loss(preds, t):
        return F.mse_loss(preds[:, 0], t.reshape(-1))

    class MAE:
        def reset(self):
            self.total, self.n = 0.0, 0

        def update(self, preds, t):
            self.total += (preds[:, 0] - t.reshape(-1)).abs().sum().item()
            self.n += len(t)

        def compute(self):
            return self.total / self.n
    dls = SimpleNamespace(train=DataLoader(TensorDataset(x, y), 4), valid=DataLoader(TensorDataset(x, y), 4))
    learn = TrainLearner(nn.Linear(1, outputs), dls, loss, lr=0.0, cbs=[MetricsCB(mae=MAE(), log_fn=None)])
    learn.fit(1, train=False)
    preds = learn.model(x)
    assert learn.metrics.last["valid_loss"] == pytest.approx(loss(preds, y).item(), rel=1e-5)
    assert learn.metrics.last["valid_mae"] == pytest.approx((preds[:, 0] - y.reshape(-1)).abs().mean().item(), rel=1e-5)


@pytest.mark.parametrize("legacy, reduction", [({"size_average": False}, "sum"), ({"reduce": False}, "none"),
                                               ({"size_average": True, "reduction": "sum"}, "mean"),
                                               ({"size_average": None, "reduction": "sum"}, "sum"),
                                               ({"reduce": None, "size_average": None}, "mean")])
def test_torchs_legacy_size_average_and_reduce_in_a_partial_are_read_as_torch_reads_them(legacy, reduction):
    """partial(F.cross_entropy, size_average=False) sums, as torch's deprecated pair says (and overrides reduction=),
    but was read as reduction='mean': the logged loss was the batches' sums averaged, 8.21 at bs 5 and 39.2 at bs 23
    for 1.704 per item (nn.CrossEntropyLoss(size_average=False) was right: its constructor turns the pair into a
    reduction) (probe metrics, s27). None for both, as torch's own signatures pass them, leaves reduction= to say
    (regression round 25: reduction='sum' with size_average=None was read as a mean, 9.767 logged for 1.221)."""
    from miniai.utils import loss_reduction
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch's deprecation warning)
        loss_func = partial(F.cross_entropy, **legacy)
        assert loss_reduction(loss_func) == reduction == nn.CrossEntropyLoss(**legacy).reduction
        if reduction == "none":
            return  # (refused while training, as reduction='none' is)
        torch.manual_seed(0)
        x, y = torch.randn(23, 5), torch.randint(0, 4, (23,))
        model = nn.Linear(5, 4)
        for bs in (5, 23):
            dls = SimpleNamespace(train=DataLoader(TensorDataset(x, y), bs), valid=DataLoader(TensorDataset(x, y), bs))
            learn = TrainLearner(model, dls, loss_func, lr=0.0, cbs=[MetricsCB(log_fn=None)])
            learn.fit(1, train=False)
            assert learn.metrics.last["valid_loss"] == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-5)


def test_a_binary_metric_at_threshold_half_beside_preds_that_are_not_probabilities_is_warned_of_whatever_the_loss():
    """BinaryAccuracy() beside binary_cross_entropy_with_logits inside a def of one's own (a cast, a pos_weight)
    thresholded the logits at 0.5 (probability 0.62) without a word: 0.935 for 1.0 (probe metrics, s27); warned of
    only for torch's own loss given as itself. Preds of the first batch outside [0, 1] say they are no probabilities."""
    from torcheval.metrics import BinaryAccuracy
    from miniai.checks import MiniaiWarning
    torch.manual_seed(0)
    x = torch.randn(40, 5)
    y = (x[:, 0] + 0.3 > 0).float()

    def my_loss(preds, target):
        return F.binary_cross_entropy_with_logits(preds, target.float())

    def fit(model, threshold=0.5):
        dls = SimpleNamespace(train=DataLoader(TensorDataset(x, y), 10), valid=DataLoader(TensorDataset(x, y), 10))
        learn = TrainLearner(model, dls, my_loss, lr=0.0, cbs=[MetricsCB(acc=BinaryAccuracy(threshold=threshold),
                                                                         log_fn=None)])
        learn.fit(1, train=False)
        return learn
    logits = nn.Sequential(nn.Linear(5, 1), nn.Flatten(0))
    with torch.no_grad():
        logits[0].weight.zero_()
        logits[0].weight[0, 0], logits[0].bias[0] = 4.0, 1.2
    with pytest.warns(MiniaiWarning, match=r"'acc' \(BinaryAccuracy\) counts a prediction as 1 from 0.5.*preds range "
                                           r"from -.* to .*: not probabilities.*threshold=0"):
        fit(logits)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MiniaiWarning)
        assert fit(logits, threshold=0.0).metrics.last["valid_acc"] == 1.0  # the advice, followed
        fit(nn.Sequential(logits, nn.Sigmoid()))  # probabilities: nothing to say


def test_a_callback_of_ones_own_at_the_default_order_never_reads_the_last_passs_values_as_this_ones():
    """A hand-written early stop reading learn.metrics.last in after_epoch at order 0 (before MetricsCB's 10, which
    logs there) got the previous epoch's valid_accuracy every epoch (None, 0.4375, 0.546875 for 0.4375, 0.546875,
    0.703125), without a word (probe newcomer, s27): this pass's entries are gone until MetricsCB logs them, so it
    reads None; at an order above MetricsCB's it reads this pass's."""
    seen = {}

    def watcher(order):
        class Watch(Callback):
            def after_epoch(self, learn):
                if not learn.training:
                    seen.setdefault(order, []).append(learn.metrics.last.get("valid_acc"))
        Watch.order = order
        return Watch()
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    dls = DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8))
    metrics = MetricsCB(acc=Accuracy(), log_fn=None)
    learn = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.3, cbs=[metrics, watcher(0), watcher(11)])
    learn.fit(3)
    logged = [row["acc"] for row in metrics.history if row["train"] == "valid"]
    assert seen[11] == logged and seen[0] == [None, None, None], (seen, logged)


def test_monitors_read_the_metricscb_that_logs_their_name_when_a_fit_has_two(tmp_path):
    """(probe metrics2) A MetricsCB given to fit(cbs=...) beside the learner's took learn.metrics, and
    EarlyStoppingCB(monitor='valid_acc'), a name the learner's own logs, was refused: 'MetricsCB does not log that
    name'. Each watcher reads the MetricsCB that logs its name; a name neither logs is refused naming both's."""
    from miniai.callbacks import CheckpointCB, EarlyStoppingCB, EpochSchedCB
    from miniai.callbacks.metrics import MetricsCB
    from tests.synth import tiny_learner

    class Negated:
        """A metric of one's own: minus the mean absolute error (rises as the model improves)."""
        def __init__(self):
            self.reset()

        def reset(self):
            self.total, self.n = 0.0, 0

        def update(self, p, y):
            self.total, self.n = self.total + float((p - y).abs().sum()), self.n + len(y)

        def compute(self):
            return torch.tensor(-self.total / self.n)

    own = MetricsCB(acc=Negated())
    learn = tiny_learner([own])
    stop = EarlyStoppingCB(monitor="valid_acc", mode="max", patience=5)
    plateau = EpochSchedCB(partial(torch.optim.lr_scheduler.ReduceLROnPlateau, mode="max"),
                           monitor="valid_acc")
    learn.fit(2, cbs=[MetricsCB(other=Negated()), stop, plateau, CheckpointCB(tmp_path, monitor="valid_acc",
                                                                             mode="max")])
    assert stop.best == max(row["acc"] for row in own.history if row["train"] == "valid")
    with pytest.raises(ValueError, match=r"none of this fit's MetricsCBs logs that name; they log .*valid_acc.*"
                                         r"valid_other"):
        learn.fit(1, cbs=[MetricsCB(other=Negated()), EarlyStoppingCB(monitor="valid_f1", mode="max")])


def _binary_column_learner(metric):
    """A binary model's usual (N, 1) logits and BCEWithLogitsLoss's (N, 1) targets, validated with `metric`."""
    from types import SimpleNamespace
    from torch.utils.data import DataLoader, TensorDataset
    from miniai.callbacks.metrics import MetricsCB
    from miniai.learner import TrainLearner
    g = torch.Generator().manual_seed(4)
    x = torch.randn(29, 3, generator=g)
    y = (x[:, 0] + 0.8 * torch.randn(29, generator=g) > 0).float()[:, None]
    torch.manual_seed(0)
    cb = MetricsCB(log_fn=None, m=metric)
    return TrainLearner(torch.nn.Linear(3, 1), SimpleNamespace(train=[], valid=DataLoader(TensorDataset(x, y), 5)),
                        torch.nn.BCEWithLogitsLoss(), cbs=[cb])


def test_a_binary_metric_given_one_score_column_is_refused_with_the_way():
    """(probe metrics2) BinaryBinnedAUPRC on (N, 1) logits logged -0.0 (0.1519 on (N,)): torcheval's own slip, which
    MetricsCB passed on; the other Binary metrics failed with torcheval's shape error, naming no way."""
    from torcheval.metrics import BinaryAccuracy, BinaryBinnedAUPRC
    for metric in (BinaryBinnedAUPRC(), BinaryAccuracy(threshold=0)):
        with pytest.raises(ValueError, match=r"one score column \(N, 1\).*nn.Flatten\(0\)"):
            _binary_column_learner(metric).fit(1, train=False)


def test_torchevals_shape_errors_get_advice_for_the_kind_of_metric():
    """(probe metrics2) Every torcheval ValueError got the classification note ('(N, C) scores ... use miniai's
    Accuracy()'), a regression metric's and Perplexity's too; a one-input metric (Mean) was a bare TypeError."""
    from torcheval.metrics import Mean, MeanSquaredError
    from miniai.callbacks.metrics import MetricsCB
    from tests.synth import tiny_learner

    class Squeezed(torch.nn.Module):  # a loss of one's own that squeezes (N, 1) preds to the targets' (N,)
        def forward(self, p, y):
            return torch.nn.functional.mse_loss(p.squeeze(1), y)
    learn = tiny_learner([MetricsCB(mse=MeanSquaredError())])
    learn.loss_func = Squeezed()
    learn.dls.valid = [(torch.randn(4, 1), torch.randn(4))]
    with pytest.raises(ValueError) as info:
        learn.fit(1, train=False)
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "the same shape" in notes and "Accuracy()" not in notes, notes
    with pytest.raises(TypeError) as info:
        tiny_learner([MetricsCB(mean=Mean())]).fit(1, train=False)
    assert "update(preds, targets)" in " ".join(getattr(info.value, "__notes__", []))


def test_a_binary_segmentations_masks_reach_torchevals_error_with_the_binary_note():
    """(regression round 34) (N, 1, H, W) logits were refused as 'one score column (N, 1)' with advice for one score
    per item (Flatten(0), targets (N,)); a segmentation's are torcheval's to refuse, with the note to flatten both."""
    from types import SimpleNamespace
    from torcheval.metrics import BinaryAccuracy
    from miniai.callbacks.metrics import MetricsCB
    from miniai.learner import TrainLearner
    x, y = torch.randn(4, 3, 5, 5), (torch.rand(4, 1, 5, 5) > 0.5).float()
    learn = TrainLearner(torch.nn.Conv2d(3, 1, 1), SimpleNamespace(train=[], valid=[(x, y)]),
                         torch.nn.BCEWithLogitsLoss(), cbs=[MetricsCB(log_fn=None, acc=BinaryAccuracy(threshold=0.))])
    with pytest.raises(ValueError) as info:
        learn.fit(1, train=False)
    assert "one score column" not in str(info.value)
    assert "a segmentation's masks too" in " ".join(getattr(info.value, "__notes__", []))


def test_a_monitor_reads_the_metricscb_before_it_beside_a_later_one():
    """(regression round 34) A MetricsCB subclass of order 90 (a second table) beside the learner's made
    EarlyStoppingCB refuse ('runs after EarlyStoppingCB'), though it reads the learner's, which runs before it."""
    from miniai.callbacks import EarlyStoppingCB
    from miniai.callbacks.metrics import MetricsCB
    from tests.synth import tiny_learner

    class LateTable(MetricsCB):
        order = 90
    stop = EarlyStoppingCB(patience=5)
    tiny_learner([MetricsCB(), stop]).fit(2, cbs=[LateTable()])
    assert stop.best is not None
    with pytest.raises(ValueError, match=r"LateTable \(order 90\) runs after EarlyStoppingCB"):
        tiny_learner([LateTable(), EarlyStoppingCB()]).fit(1)
