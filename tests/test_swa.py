"""SWACB: the average, the BatchNorm refresh, the lr hand-over from the schedulers to SWALR, the final validation."""
import math
import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.optim.lr_scheduler import OneCycleLR, StepLR

from miniai.callbacks import (ActivationStats, BatchSchedCB, BatchTransformCB, DeviceCB, EpochSchedCB, MetricsCB,
                              RecorderCB, SWACB, _lr)
from miniai.data import DataLoaders, TensorLoader
from miniai.learner import Callback, Learner, TrainLearner
from miniai.schedulers import lr_trajectory
from tests.synth import SumOfInputs


def bn_model() -> nn.Sequential:
    """Linear(1→4), BatchNorm1d, ReLU, Linear(4→1): the smallest model with BatchNorm statistics to refresh."""
    return nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))


def bn_learner(cbs=(), lr: float = 0.1, n_train: int = 48, bs: int = 16) -> Learner:
    """y = 2x + 3 on in-memory loaders (3 shuffled train batches, 2 valid batches) with bn_model."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, xv = torch.randn(n_train, 1, generator=g), torch.randn(32, 1, generator=g)
    dls = DataLoaders(TensorLoader(x, 2 * x + 3, bs, shuffle=True, seed=0), TensorLoader(xv, 2 * xv + 3, bs))
    return TrainLearner(bn_model(), dls, F.mse_loss, lr=lr, cbs=list(cbs))


class Snapshots(Callback):
    """Keeps a copy of the parameters at the end of every training pass."""

    def __init__(self) -> None:
        self.params: list[dict[str, torch.Tensor]] = []

    def after_epoch(self, learn: Learner) -> None:
        if learn.training:
            self.params.append({k: p.detach().clone() for k, p in learn.model.named_parameters()})


def per_epoch(lrs: list[float], batches: int) -> list[float]:
    """The lr of each epoch, checking it stayed constant within the epoch."""
    epochs = [lrs[i:i + batches] for i in range(0, len(lrs), batches)]
    for e in epochs:
        assert e == pytest.approx([e[0]] * len(e))
    return [e[0] for e in epochs]


def test_averaged_weights_are_the_mean_of_the_epoch_end_snapshots():
    snaps, swa = Snapshots(), SWACB(swa_start=2, swa_lr=0.05)
    learn = bn_learner([snaps, swa])
    learn.fit(5)
    assert len(snaps.params) == 5
    averaged = dict(learn.model.named_parameters())
    for name, p in averaged.items():
        mean = torch.stack([s[name] for s in snaps.params[2:]]).mean(0)
        assert torch.allclose(p, mean, atol=1e-6), name
    # a real average of different weights, not one of them
    assert not torch.allclose(averaged["0.weight"], snaps.params[-1]["0.weight"])
    assert int(swa.swa_model.n_averaged) == 3


def test_batchnorm_statistics_are_recomputed_for_the_averaged_weights():
    swa = SWACB(swa_start=1, swa_lr=0.05)
    learn = bn_learner([swa])
    learn.fit(3)
    bn, raw_bn = learn.model[1], swa.raw_model[1]
    assert not torch.allclose(bn.running_mean, raw_bn.running_mean)
    # by hand: BN's input is the averaged first Linear's output; update_bn's cumulative average over the
    # train batches gives each batch's mean and unbiased variance equal weight
    with torch.no_grad():
        outs = [learn.model[0](xb) for xb, _ in learn.dls.train]
    assert torch.allclose(bn.running_mean, torch.stack([h.mean(0) for h in outs]).mean(0), atol=1e-6)
    assert torch.allclose(bn.running_var, torch.stack([h.var(0) for h in outs]).mean(0), atol=1e-6)
    assert int(bn.num_batches_tracked) == len(learn.dls.train) == 3
    assert bn.momentum == raw_bn.momentum == 0.1  # update_bn puts the momentum back


def test_bn_refresh_uses_validation_transforms_but_not_train_only_augmentation():
    shift = BatchTransformCB(lambda x: x + 10, on_train=True, on_val=True)  # preprocessing: every pass
    noise = BatchTransformCB(lambda x: x + torch.randn_like(x) * 100)  # augmentation: training only
    learn = bn_learner([shift, noise, SWACB(swa_start=1, swa_lr=0.01)], lr=0.01)
    learn.fit(2)
    bn = learn.model[1]
    with torch.no_grad():
        outs = [learn.model[0](xb + 10) for xb, _ in learn.dls.train]
    assert torch.allclose(bn.running_mean, torch.stack([h.mean(0) for h in outs]).mean(0), atol=1e-5)


def test_refreshing_batchnorm_does_not_shift_the_loaders_shuffle():
    learn = bn_learner([SWACB(swa_start=1, swa_lr=0.05)])
    learn.fit(3)
    assert learn.dls.train.epoch == 3  # three training passes; the BN pass left the counter as it was


def test_lr_follows_swalr_after_swa_start():
    rec = RecorderCB(lr=_lr)
    learn = bn_learner([rec, SWACB(swa_start=2, swa_lr=0.01, anneal_epochs=2)], lr=0.1)
    learn.fit(6)
    # SWALR's cosine anneal from the lr it found (0.1) to swa_lr: epoch swa_start + k runs with its k-th value
    alpha = lambda k: (1 - math.cos(math.pi * min(1.0, k / 2))) / 2  # noqa: E731
    expected = [0.1, 0.1] + [0.01 * alpha(k) + 0.1 * (1 - alpha(k)) for k in range(4)]
    assert per_epoch(rec.recs["lr"], 3) == pytest.approx(expected, abs=1e-12)
    assert expected[3] == pytest.approx(0.055)


def test_linear_anneal_and_jump_straight_to_swa_lr():
    rec = RecorderCB(lr=_lr)
    bn_learner([rec, SWACB(swa_start=1, swa_lr=0.02, anneal_epochs=2, anneal_strategy="linear")]).fit(4)
    assert per_epoch(rec.recs["lr"], 3) == pytest.approx([0.1, 0.1, 0.06, 0.02])
    rec = RecorderCB(lr=_lr)
    bn_learner([rec, SWACB(swa_start=1, swa_lr=0.02, anneal_epochs=0)]).fit(3)
    assert per_epoch(rec.recs["lr"], 3) == pytest.approx([0.1, 0.02, 0.02])


def test_composes_with_a_batch_scheduler_running_before_swa_start():
    cycle = partial(OneCycleLR, max_lr=0.1, total_steps=2 * 3)  # a whole cycle in the 2 epochs before SWA
    sched, rec = BatchSchedCB(cycle), RecorderCB(lr=_lr)
    learn = bn_learner([sched, rec, SWACB(swa_start=2, swa_lr=0.01, anneal_epochs=0)])
    learn.fit(4)  # without the hand-over, the 6-step cycle would be refused for a 12-step fit
    lrs = rec.recs["lr"]
    opt = optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    assert lrs[:6] == pytest.approx(lr_trajectory(cycle, opt, 6), abs=1e-12)
    assert lrs[6:] == pytest.approx([0.01] * 6)
    # it stopped stepping at swa_start, before the step past the cycle's end (that lr would train SWA's first epoch)
    assert sched.n_steps == 5 and sched.scheduler.last_epoch == 5
    assert learn.schedule_stop == 2  # what SWACB told the schedulers; the next fit starts with None again


@pytest.mark.parametrize("sched_cls", [BatchSchedCB, EpochSchedCB])
def test_a_schedule_that_swa_takes_over_before_its_first_step_is_warned_of(sched_cls):
    """SWACB(swa_start=0) beside a one-cycle: the schedule never stepped (epoch 0 trained at the cycle's first lr
    (max_lr/25) as SWALR annealed from it), without a word, where a schedule that outlasts its fit is warned of."""
    steps = 2 * 3 if sched_cls is BatchSchedCB else 2
    cycle = partial(OneCycleLR, max_lr=0.1, total_steps=steps)
    with pytest.warns(UserWarning, match=r"OneCycleLR never steps in this fit: SWACB drives the lr from epoch 0 "
                                         r"\(swa_start=0\).*schedules nothing.*start SWA later"):
        bn_learner([sched_cls(cycle), SWACB(swa_start=0, swa_lr=0.01)]).fit(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bn_learner([sched_cls(partial(OneCycleLR, max_lr=0.1, total_steps=steps // 2)),
                    SWACB(swa_start=1, swa_lr=0.01)]).fit(2)


@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_the_first_swa_epoch_trains_with_the_cycles_last_lr_not_one_past_its_end(strategy):
    """The schedule's step after epoch swa_start - 1 took a one-cycle one step past its end: the first SWA epoch
    trained at 5,555× the cycle's final lr (cos), or at a negative lr (linear): gradient ascent."""
    cycle = partial(OneCycleLR, max_lr=0.1, total_steps=2 * 3, anneal_strategy=strategy)
    rec = RecorderCB(lr=_lr)
    bn_learner([BatchSchedCB(cycle), rec, SWACB(swa_start=2, swa_lr=0.01, anneal_epochs=1)]).fit(4)
    lrs = rec.recs["lr"]
    assert lrs[6:9] == pytest.approx([lrs[5]] * 3) and lrs[5] > 0


@pytest.mark.parametrize("milestone", [6, 8])
def test_a_one_cycle_inside_a_sequential_lr_hands_its_last_lr_to_swa(milestone):
    """Only the SequentialLR's last part was asked whether it ends: with the one-cycle first and its milestone past
    swa_start, the schedule took it one step past its end, and the first SWA epoch trained at a negative lr."""
    from torch.optim.lr_scheduler import ConstantLR, SequentialLR

    def schedule(opt):
        parts = [OneCycleLR(opt, max_lr=0.1, total_steps=6, anneal_strategy="linear"),
                 ConstantLR(opt, factor=0.1, total_iters=100)]
        return SequentialLR(opt, parts, milestones=[milestone])
    rec = RecorderCB(lr=_lr)
    bn_learner([BatchSchedCB(schedule), rec, SWACB(swa_start=2, swa_lr=0.01, anneal_epochs=1)]).fit(4)
    lrs = rec.recs["lr"]
    # past the milestone the one-cycle's last lr; at it, the schedule's own next lr, ConstantLR's 0.1/25 × 0.1
    assert lrs[6:9] == pytest.approx([lrs[5] if milestone > 6 else 4e-4] * 3) and lrs[5] > 0


def test_an_evaluation_fit_leaves_swa_and_its_average_alone():
    """fit(1, train=False) after an SWA fit refused ('averages from epoch 2 on, but this fit has epochs 0..0'), and
    fit(3, train=False) made raw_model the average, started a fresh one, emptied metrics and warned, wrongly, that
    learn.model was the raw model. An evaluation trains nothing: SWACB stands aside, as the schedules do."""
    import warnings
    metrics, swa = MetricsCB(), SWACB(swa_start=2, swa_lr=0.01)
    learn = bn_learner([metrics, swa])
    learn.fit(3)
    average, raw, n, swa_metrics = learn.model, swa.raw_model, int(swa.swa_model.n_averaged), dict(swa.metrics)
    for epochs in (1, 3):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            learn.fit(epochs, train=False)
        assert learn.model is average and swa.raw_model is raw and int(swa.swa_model.n_averaged) == n == 1
        assert swa.metrics == swa_metrics and metrics.last["valid_loss"] == pytest.approx(swa_metrics["valid_loss"])


def test_an_evaluation_resumed_from_a_swa_run_validates_the_checkpoints_weights(tmp_path):
    """fit(train=False, resume=...) with SWACB failed with an AttributeError: an evaluation builds no average, and
    the resume loaded the checkpoint's into it."""
    from miniai.callbacks import CheckpointCB
    from miniai.callbacks.checkpoint import load_checkpoint
    bn_learner([MetricsCB(), SWACB(swa_start=1, swa_lr=0.01), CheckpointCB(tmp_path, keep=None)]).fit(3)
    metrics, swa = MetricsCB(), SWACB(swa_start=1, swa_lr=0.01)
    learn = bn_learner([metrics, swa])
    with pytest.warns(UserWarning, match="raw weights"):
        learn.fit(3, train=False, resume=tmp_path / "epoch_0002.pt")
    assert swa.swa_model is None
    model = bn_model().eval()
    model.load_state_dict(load_checkpoint(tmp_path / "epoch_0002.pt")["model"])
    xv, yv = torch.cat([b[0] for b in learn.dls.valid]), torch.cat([b[1] for b in learn.dls.valid])
    with torch.no_grad():
        assert metrics.last["valid_loss"] == pytest.approx(F.mse_loss(model(xv), yv).item(), rel=1e-5)


def test_composes_with_an_epoch_scheduler():
    rec = RecorderCB(lr=_lr)
    bn_learner([EpochSchedCB(partial(StepLR, step_size=1, gamma=0.5)), rec,
                SWACB(swa_start=2, swa_lr=0.01, anneal_epochs=1)]).fit(4)
    # StepLR halves after epochs 0 and 1, and SWALR starts from the 0.025 it left
    assert per_epoch(rec.recs["lr"], 3) == pytest.approx([0.1, 0.05, 0.025, 0.01])


def test_fit_one_cycle_with_swa_runs_the_cycle_until_swa_start():
    rec = RecorderCB(lr=_lr)
    learn = bn_learner([rec])
    learn.fit_one_cycle(4, 0.1, cbs=[SWACB(swa_start=3, swa_lr=0.01, anneal_epochs=0)])
    lrs = rec.recs["lr"]
    assert max(lrs[:9]) == pytest.approx(0.1, rel=0.05) and lrs[9:] == pytest.approx([0.01] * 3)


def test_averaged_model_is_validated_logged_as_swa_and_left_as_learn_model():
    metrics, swa = MetricsCB(), SWACB(swa_start=1, swa_lr=0.05)
    learn = bn_learner([metrics, swa])
    raw = learn.model
    learn.fit(3)
    assert learn.model is swa.swa_model.module and type(learn.model) is type(raw)
    assert learn.raw_model is raw and swa.raw_model is raw and learn.model is not raw
    last = metrics.history[-1]
    assert (last["epoch"], last["train"]) == ("swa", "valid")
    assert [row["epoch"] for row in metrics.history[:-1]] == [0, 0, 1, 1, 2, 2]
    learn.model.eval()
    with torch.no_grad():
        x, y = learn.dls.valid.x, learn.dls.valid.y
        loss = F.mse_loss(learn.model(x), y).item()
    assert last["loss"] == pytest.approx(loss, rel=1e-5)
    assert swa.metrics["valid_loss"] == pytest.approx(loss, rel=1e-5)
    assert learn.epoch == 2  # the 'swa' pass does not leave its label behind


def test_the_swa_pass_is_shown_and_logged_by_every_logger_and_a_csv_with_it_resumes(tmp_path, capsys):
    """The 'swa' pass crashed ProgressCB's terminal bar (epoch + 1), TensorBoardCB (an int step) and a later
    resume reading the CSV log (int('swa')), each after the whole fit had trained."""
    import csv

    from miniai.callbacks import CheckpointCB, CSVLoggerCB, ProgressCB, TensorBoardCB
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def learner():
        progress = ProgressCB(mode="terminal")
        return progress, bn_learner([MetricsCB(), SWACB(swa_start=1, swa_lr=0.05), progress,
                                     CSVLoggerCB(tmp_path / "log.csv"), TensorBoardCB(tmp_path / "tb"),
                                     CheckpointCB(tmp_path / "ck", keep=None)])
    progress, learn = learner()
    learn.fit(2)
    out = capsys.readouterr().out
    assert "epoch swa valid" in out and "epoch 2/2 train" in out
    assert len(progress.valid_losses) == 2  # one per epoch: the average's loss is in the table, not the curve
    with open(tmp_path / "log.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "0", "1", "1", "swa"]
    acc = EventAccumulator(str(tmp_path / "tb" / "epoch"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("swa_valid_loss")] == [2]
    _, again = learner()
    again.fit(3, resume=tmp_path / "ck")  # from epoch 2: the CSV's 'swa' row came after it, and is dropped
    with open(tmp_path / "log.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "0", "1", "1", "2", "2", "swa"]


def test_swa_without_validation_averages_and_refreshes_but_validates_nothing():
    """fit(valid=False) failed after training: 'NoneType' is not iterable, or "pass fit(valid=False)"."""
    metrics, swa = MetricsCB(), SWACB(swa_start=1, swa_lr=0.05)
    learn = bn_learner([metrics, swa])
    learn.dls.valid = None
    learn.fit(2, valid=False)
    assert learn.model is swa.swa_model.module and swa.metrics == {}
    assert [row["train"] for row in metrics.history] == ["train", "train"]


def test_swa_with_batchnorm_and_two_inputs_refreshes_the_statistics():
    """torch's update_bn called model(x) with the first input only, so two inputs were refused; the refresh is now a
    prediction pass, which calls the model as the loop does."""
    x = torch.randn(32, 1)
    batches = [(x[i:i + 8], x[i:i + 8], 2 * x[i:i + 8]) for i in range(0, 32, 8)]
    learn = TrainLearner(SumOfInputs(bn_model()), DataLoaders(batches, batches), F.mse_loss, lr=0.1, n_inp=2,
                         cbs=[SWACB(1, 0.05)])
    learn.fit(2)
    bn = next(m for m in learn.model.modules() if isinstance(m, nn.BatchNorm1d))
    assert int(bn.num_batches_tracked) == 4  # one refresh pass over the 4 training batches, as update_bn counts


def test_swa_resumed_past_swa_start_continues_exactly(tmp_path):
    """The average and SWALR were not saved: a resume past swa_start averaged nothing, trained on another lr, and
    said so only after the last epoch."""
    from miniai.callbacks import CheckpointCB, RecorderCB, _lr

    def learner(path):
        rec = RecorderCB(lr=_lr)
        return rec, bn_learner([MetricsCB(), SWACB(swa_start=1, swa_lr=0.01, anneal_epochs=2), rec,
                                CheckpointCB(path, keep=None)])
    rec, straight = learner(tmp_path / "a")
    straight.fit(4)
    _, first = learner(tmp_path / "b")
    first.fit(2)
    rec2, resumed = learner(tmp_path / "b")
    resumed.fit(4, resume=tmp_path / "b")
    assert rec2.recs["lr"] == rec.recs["lr"][-len(rec2.recs["lr"]):]
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    _, again = learner(tmp_path / "b")  # an lr given past swa_start lasted one epoch, then SWALR set its own
    with pytest.raises(ValueError, match=r"fit\(lr=0.05, resume=...\) with SWACB"):
        again.fit(4, lr=0.05, resume=tmp_path / "b" / "epoch_0002.pt")


def test_the_average_does_not_copy_the_hooks_of_activation_stats():
    astats = ActivationStats(lambda m: isinstance(m, nn.ReLU))
    learn = bn_learner([astats, SWACB(swa_start=1, swa_lr=0.05)])
    learn.fit(2)
    assert all(not m._forward_hooks for m in learn.model.modules())  # copied before the hooks were registered
    assert len(astats.stats[0][0]) == 6  # the raw model was hooked: 2 epochs × 3 training batches


def test_a_model_without_batchnorm_is_averaged_too():
    learn = TrainLearner(nn.Linear(1, 1), bn_learner().dls, F.mse_loss, lr=0.1, cbs=[SWACB(1, 0.05)])
    learn.fit(2)
    assert isinstance(learn.model, nn.Linear) and learn.raw_model is not learn.model


def test_swa_start_at_or_past_the_last_epoch_is_an_error():
    with pytest.raises(ValueError, match=r"swa_start=3.*epochs 0..2: use swa_start < n_epochs"):
        bn_learner([SWACB(swa_start=3, swa_lr=0.01)]).fit(3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(swa_start=-1), r"swa_start must be a whole number >= 0 \(the first epoch to average\), got -1"),
    (dict(swa_start=True), "swa_start must be a whole number >= 0 .*, got True"),
    (dict(swa_start=1, anneal_epochs=-1), "anneal_epochs must be a whole number >= 0"),
    (dict(swa_start=1, anneal_strategy="exp"), "anneal_strategy must be 'cos' or 'linear'"),
])
def test_bad_arguments_are_rejected_with_a_message(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SWACB(swa_lr=0.01, **kwargs)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bn_refresh_runs_on_the_models_device_when_the_data_stays_on_the_cpu():
    learn = bn_learner([DeviceCB("cuda", move_data=False), SWACB(swa_start=1, swa_lr=0.05)])
    learn.fit(2)
    bn = learn.model[1]
    assert bn.running_mean.device.type == "cuda" and learn.dls.train.x.device.type == "cpu"
    with torch.no_grad():
        outs = [learn.model[0](xb.cuda()) for xb, _ in learn.dls.train]
    assert torch.allclose(bn.running_mean, torch.stack([h.mean(0) for h in outs]).mean(0), atol=1e-5)


def test_a_one_cycle_inside_a_chained_scheduler_hands_over_to_swa_at_its_last_lr_too():
    from torch.optim.lr_scheduler import ChainedScheduler
    # (a chain of one part: chained with another, a OneCycleLR, which sets the lr outright, is refused)
    def factory(opt):
        return ChainedScheduler([OneCycleLR(opt, max_lr=0.1, total_steps=6, anneal_strategy="linear")])
    rec = RecorderCB(lr=_lr)
    bn_learner([BatchSchedCB(factory), rec, SWACB(swa_start=2, swa_lr=0.01, anneal_epochs=1)]).fit(4)
    lrs = rec.recs["lr"]
    assert lrs[6:9] == pytest.approx([lrs[5]] * 3) and lrs[5] > 0


class Shift(Callback):
    """Preprocessing of the user's own that every pass needs, declared for prediction passes: inference = True."""
    inference, order = True, -10

    def before_batch(self, learn: Learner) -> None:
        xb, *rest = learn.batch
        learn.batch = (xb + 10, *rest)


def test_bn_refresh_runs_the_inference_callbacks_a_prediction_pass_runs():
    """The BatchNorm refresh ran only BatchTransformCB(on_val=True): with the preprocessing in a callback of the
    user's (inference = True), the statistics came from inputs the model never sees (valid accuracy 0.98 -> 0.56)."""
    learn = bn_learner([Shift(), SWACB(swa_start=1, swa_lr=0.01)], lr=0.01)
    learn.fit(2)
    bn = learn.model[1]
    with torch.no_grad():
        outs = [learn.model[0](xb + 10) for xb, _ in learn.dls.train]
    assert torch.allclose(bn.running_mean, torch.stack([h.mean(0) for h in outs]).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack([h.var(0) for h in outs]).mean(0), atol=1e-5)
    assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.1 and not learn.model.training


class CutAfter(Callback):
    """Ends every training pass after batch `last` (CancelEpochException at after_batch), as a time budget does."""
    order = 30

    def __init__(self, last: int) -> None:
        self.last = last

    def after_batch(self, learn: Learner) -> None:
        if learn.training and learn.iter == self.last:
            from miniai.learner import CancelEpochException
            raise CancelEpochException()


def test_a_training_pass_cut_short_is_averaged_as_the_schedulers_count_it():
    """A pass ended by CancelEpochException skipped after_epoch, where the average was updated, but SWALR stepped
    for it: 3 epochs trained from swa_start on, n_averaged 0, and the raw model kept with a warning."""
    torch.manual_seed(0)
    x, y = torch.randn(48, 5), torch.randint(0, 3, (48,))
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 48, 8)]

    def net() -> nn.Module:
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    swa = SWACB(swa_start=1, swa_lr=0.01)
    learn = TrainLearner(net(), DataLoaders(TensorLoader(x, y, bs=8), TensorLoader(x[:16], y[:16], bs=8)),
                         F.cross_entropy, lr=0.1, cbs=[swa, CutAfter(2)])
    learn.fit(4)

    # by hand: torch's SWA recipe on a loop that breaks out of each epoch after 3 batches
    from torch.optim.swa_utils import SWALR, AveragedModel, update_bn
    model = net()
    opt, averaged, swalr = optim.SGD(model.parameters(), lr=0.1), AveragedModel(model), None
    for epoch in range(4):
        model.train()
        if epoch == 1:
            swalr = SWALR(opt, 0.01, anneal_epochs=1, anneal_strategy="cos")
        for xb, yb in batches[:3]:
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            opt.zero_grad()
        if epoch >= 1:
            averaged.update_parameters(model)
            swalr.step()
    update_bn([xb for xb, _ in batches], averaged)
    assert int(swa.swa_model.n_averaged) == int(averaged.n_averaged) == 3
    assert learn.model is swa.swa_model.module
    for (name, ours), theirs in zip(learn.model.state_dict().items(), averaged.module.state_dict().values()):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0, msg=name)


def test_grad_accum_drops_the_trained_models_part_done_group_when_swa_replaced_learn_model():
    """GradAccumCB dropped the group at cleanup_fit on learn.model, which SWACB's after_fit had made the average:
    the trained model (raw_model) kept the unstepped group's gradients, for a later fit's first step."""
    from miniai.callbacks import GradAccumCB

    from tests.synth import NoLen  # 6 batches, no len: the last group (batches 4, 5) never steps
    learn = bn_learner(n_train=96)
    learn.dls = DataLoaders(NoLen(learn.dls.train), learn.dls.valid)
    swa = SWACB(swa_start=0, swa_lr=0.01)
    with pytest.warns(UserWarning, match="took no optimizer step"):
        learn.fit(1, cbs=[GradAccumCB(4), swa])
    assert learn.model is not swa.raw_model
    assert all(p.grad is None for p in swa.raw_model.parameters())


def test_a_resume_with_other_swa_settings_once_averaging_began_is_refused(tmp_path):
    """The average so far and SWALR's state are the saved settings': resumed with another swa_lr the run trained
    on the saved one, with another swa_start it averaged epochs the new one leaves out, without a word."""
    from miniai.callbacks import CheckpointCB
    bn_learner([SWACB(1, 0.05), CheckpointCB(tmp_path, keep=None)]).fit(3)  # averaging since epoch 1
    for changed in (SWACB(1, 0.01), SWACB(2, 0.05), SWACB(1, 0.05, anneal_epochs=2), SWACB(1, 0.05, 1, "linear")):
        learn = bn_learner([changed])
        before = [p.detach().clone() for p in learn.model.parameters()]
        with pytest.raises(ValueError, match=r"the checkpoint's run averaged with SWACB\(swa_start=1, swa_lr=0.05, "
                                             r"anneal_epochs=1, anneal_strategy='cos'\).*resume with that SWACB"):
            learn.fit(4, resume=tmp_path / "epoch_0002.pt")
        assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))  # nothing loaded
    for same in (SWACB(1, 0.05), SWACB(1, [0.05]), SWACB(1, 5e-2)):  # the same, written otherwise
        bn_learner([same]).fit(4, resume=tmp_path / "epoch_0002.pt")
    # before averaging began a new plan applies, unless the resumed epoch is already past its swa_start
    bn_learner([SWACB(2, 0.01)]).fit(4, resume=tmp_path / "epoch_0001.pt")
    with pytest.raises(ValueError, match=r"resumes at epoch 1, past SWACB_0's swa_start=0.*not begun averaging.*swa_start >= 1"):
        bn_learner([SWACB(0, 0.05)]).fit(4, resume=tmp_path / "epoch_0001.pt")


@pytest.mark.parametrize("swa_lr, match", [
    (-0.1, r"swa_lr must be a number >= 0 or one per param group, got -0.1"),
    ("0.05", r"swa_lr must be a number >= 0 or one per param group, got '0.05'"),
    (float("nan"), r"swa_lr must be a number >= 0"),
    ([0.05, -1.0], r"swa_lr must be a number >= 0 or one per param group, got \[0.05, -1.0\]"),
])
def test_a_bad_swa_lr_is_refused_when_built_not_after_swa_start_epochs(swa_lr, match):
    """SWACB(1, -0.1) trained uphill from swa_start without a word; '0.05' failed only at swa_start."""
    with pytest.raises(ValueError, match=match):
        SWACB(1, swa_lr)


def test_swa_lrs_of_another_count_than_the_param_groups_are_refused_before_training():
    learn = bn_learner([SWACB(2, [0.05, 0.01])])
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match=r"SWACB has 2 swa_lr values, the optimizer 1 param group"):
        learn.fit(3)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))  # refused before it trained


def test_swa_added_on_resuming_past_swa_start_to_a_run_without_it_is_refused(tmp_path):
    """It averaged nothing and warned that no epoch from swa_start on was trained, though three did."""
    from miniai.callbacks import CheckpointCB
    bn_learner([CheckpointCB(tmp_path, keep=None)]).fit(3)
    learn = bn_learner([SWACB(2, 0.05)])
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match=r"resumes at epoch 3, past SWACB_0's swa_start=2.*swa_start >= 3.*nothing"):
        learn.fit(5, resume=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))  # refused before it loaded


def test_early_stopping_leaves_swacbs_pass_of_the_average_out_of_its_count():
    """EarlyStoppingCB compared the averaged model's validation loss with the epochs' and counted it as one more
    epoch without improvement (wait 3 for 2 epochs); a better average became its best, and could have set
    stop_requested after the fit was over."""
    from miniai.callbacks.guards import EarlyStoppingCB
    metrics = MetricsCB()
    metrics.log_fn = lambda row: None
    stop = EarlyStoppingCB("valid_loss", patience=10)
    learn = bn_learner([metrics, SWACB(2, 0.01), stop])
    learn.fit(4)
    losses = [row["loss"] for row in metrics.history if row["train"] == "valid" and row["epoch"] != "swa"]
    assert len(losses) == 4 and stop.best == min(losses)
    assert stop.wait == 3 - losses.index(min(losses)) and not learn.stop_requested


def test_one_swa_lr_keeps_each_param_groups_ratio_to_the_fits_lr():
    """SWACB(swa_lr=x) moved every param group to x: a body opt_func held at lr 0 began to train at swa_start."""
    def groups(params, lr):  # the first Linear frozen at lr 0, the rest at the fit's lr
        params = list(params)
        return optim.SGD([{"params": params[:2], "lr": 0.0}, {"params": params[2:]}], lr=lr)
    snaps = Snapshots()
    learn = bn_learner([SWACB(1, 0.05), snaps])
    learn.opt_func = groups
    body = {k: v.clone() for k, v in learn.model.state_dict().items() if k.startswith("0.")}
    learn.fit(3)
    assert [g["swa_lr"] for g in learn.opt.param_groups] == [0.0, 0.05]
    for params in snaps.params:  # the body never moved, before swa_start or after
        assert torch.equal(params["0.weight"], body["0.weight"]) and torch.equal(params["0.bias"], body["0.bias"])


def test_swa_on_a_model_with_dropout_gives_no_warning_about_monte_carlo_predictions():
    """SWACB's BatchNorm refresh runs dropout as torch's update_bn does; it warned of repeated Monte Carlo draws."""
    learn = bn_learner([SWACB(1, 0.05)])
    learn.model.insert(3, nn.Dropout(0.2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(2)


@pytest.mark.parametrize("groups", ["all captured", "head captured"])
def test_a_fit_after_swa_whose_optimizer_holds_the_raw_models_parameters_says_so(groups):
    """After an SWACB fit learn.model is the averaged copy; an opt_func building its groups from lists made before
    (a head at another lr) trained learn.raw_model: with every group so, the error blamed a notebook cell run again;
    with the head alone so, the averaged model's head did not train, without a word."""
    learn = bn_learner()
    body, head = list(learn.model[:2].parameters()), list(learn.model[3].parameters())
    learn.opt_func = lambda params, lr: optim.SGD(
        [{"params": body if groups == "all captured" else list(params)[:4], "lr": lr / 10}, {"params": head}], lr=lr)
    learn.fit(2, cbs=[SWACB(1, swa_lr=0.01)])
    with pytest.raises(RuntimeError, match=r"parameters of learn.raw_model.*SWACB.*opt_func\(params, lr\)"):
        learn.fit(1)


def test_a_one_cycle_nested_two_deep_hands_over_to_swa_at_its_last_lr_too():
    """A OneCycleLR as a SequentialLR's last part, inside a ChainedScheduler: the hand-over looked one level down
    only, so the last scheduled step went past the cycle's end (torch refuses that step)."""
    from torch.optim.lr_scheduler import ChainedScheduler, ConstantLR, SequentialLR

    def factory(opt):
        parts = [ConstantLR(opt, factor=0.5, total_iters=2), OneCycleLR(opt, max_lr=0.1, total_steps=4)]
        return ChainedScheduler([SequentialLR(opt, parts, milestones=[2])])
    rec = RecorderCB(lr=_lr)
    bn_learner([BatchSchedCB(factory), rec, SWACB(swa_start=2, swa_lr=0.01, anneal_epochs=1)]).fit(4)
    lrs = rec.recs["lr"]
    assert lrs[6:9] == pytest.approx([lrs[5]] * 3) and lrs[5] > 0


def test_a_milestone_at_the_swa_start_is_not_warned_of_swalr_starts_from_its_lr():
    """A regression probe's case: MultiStepLR(milestones=[1, 2]) beside SWACB(swa_start=2) was warned of as a
    milestone no batch trains with; SWALR anneals from the lr it sets."""
    from torch.optim.lr_scheduler import MultiStepLR
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bn_learner([EpochSchedCB(partial(MultiStepLR, milestones=[1, 2], gamma=0.1)),
                    SWACB(swa_start=2, swa_lr=0.01)]).fit(4)


def test_a_milestone_at_the_swa_start_is_warned_of_when_swalr_does_not_anneal_from_it():
    """With anneal_epochs=0 SWALR sets swa_lr at once: the lr a milestone at swa_start sets trains no batch."""
    from torch.optim.lr_scheduler import MultiStepLR
    with pytest.warns(UserWarning, match=r"MultiStepLR's milestone 2 lies at or past"):
        bn_learner([EpochSchedCB(partial(MultiStepLR, milestones=[2], gamma=0.1)),
                    SWACB(swa_start=2, swa_lr=0.05, anneal_epochs=0)]).fit(4)


def test_a_lazy_layer_not_made_yet_is_refused_before_any_epoch_trains():
    """(probe P28, session 23) SWACB copied the model at before_fit with a LazyLinear not made yet: epochs 0..swa_start
    trained, then the first averaging failed with torch's "Attempted to use an uninitialized parameter"."""
    snaps = Snapshots()
    learn = bn_learner([snaps, SWACB(swa_start=2, swa_lr=0.05)])
    learn.model[0] = nn.LazyLinear(4)
    with pytest.raises(ValueError, match=r"SWACB copies the model.*0.weight.*not made yet.*learn.summary\(\)"):
        learn.fit(4)
    assert snaps.params == []


def test_a_lazy_model_resumed_from_a_swa_checkpoint_is_made_by_the_checkpoint_and_resumes_exactly(tmp_path):
    """(regression round T2) The refusal above came at before_fit, before the resume loaded the checkpoint's weights
    into the model and SWACB's copy: a fresh lazy model resumed exactly before it, and was refused."""
    from miniai.callbacks.checkpoint import CheckpointCB

    def learner(path=None):
        learn = bn_learner([SWACB(swa_start=1, swa_lr=0.05)] + ([CheckpointCB(path)] if path else []))
        learn.model[0] = nn.LazyLinear(4)
        return learn
    straight = learner()
    straight.model(torch.zeros(2, 1))
    straight.fit(3)
    stopped = learner(tmp_path)
    stopped.model(torch.zeros(2, 1))
    stopped.fit(3)
    resumed = learner()
    resumed.fit(3, resume=tmp_path / "epoch_0002.pt")
    assert all(torch.equal(a, b) for a, b in zip(straight.model.state_dict().values(),
                                                 resumed.model.state_dict().values()))


def test_a_fit_stopped_after_averaging_says_the_average_is_not_the_model():
    """(probe P28) EarlyStoppingCB stopping the fit during SWA left the raw model as learn.model, as documented, but
    without a word: the average the user asked for was silently not used."""
    from miniai.callbacks import EarlyStoppingCB
    swa = SWACB(swa_start=1, swa_lr=0.05, anneal_epochs=0)
    learn = bn_learner([MetricsCB(), EarlyStoppingCB(patience=1, min_delta=100.0), swa])
    learn.cbs[0].log_fn = lambda row: None
    with pytest.warns(UserWarning, match=r"SWACB: the fit was stopped .*after 1 epoch averaged.*learn.model is the "
                                         r"raw model.*swa_model"):
        learn.fit(5)
    assert learn.model is swa.raw_model and int(swa.swa_model.n_averaged) == 1


def test_an_average_whose_validation_pass_was_cancelled_has_no_metrics_of_the_raw_models():
    """(probe P68) A validation budget cancelling the 'swa' pass before MetricsCB's before_epoch: swa.metrics held
    the raw model's last validation loss (0.000283 for the average's 0.00065), and no word said the average was not
    validated."""
    from miniai.callbacks import MetricsCB, SWACB
    from miniai.learner import Callback, CancelEpochException
    from tests.synth import tiny_learner

    class ValidBudget(Callback):
        def __init__(self, n):
            self.n, self.done = n, 0

        def before_epoch(self, learn):
            if not learn.training:
                if self.done >= self.n:
                    raise CancelEpochException()
                self.done += 1
    swa = SWACB(swa_start=2, swa_lr=0.05)
    learn = tiny_learner(cbs=[ValidBudget(4), MetricsCB(log_fn=None), swa], lr=0.1)
    with pytest.warns(UserWarning, match=r"the average's validation pass.*was cut short.*not validated"):
        learn.fit(4)
    assert swa.metrics == {} and "valid_loss" not in learn.metrics.last


def test_swa_of_a_compiled_model_averages_the_module_inside_and_says_the_average_is_not_compiled(tmp_path):
    """(probe S26 compile) SWACB averaged the torch.compile wrapper: its checkpoint's average had
    'module._orig_mod.' keys, and a resume without the wrapper (or with it, of a plain run) failed with torch's bare
    missing/unexpected keys; the average, learn.model after the fit, ran eagerly, without a word."""
    from miniai.callbacks import CheckpointCB
    from miniai.callbacks.checkpoint import load_checkpoint
    from tests.synth import linear_dls

    def make(wrap):
        torch.manual_seed(0)
        return TrainLearner(wrap(nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))), linear_dls(),
                            F.mse_loss, lr=0.05)
    with pytest.warns(UserWarning, match=r"SWACB: the model was compiled, and its average.*learn.compile\(\)"):
        make(lambda m: torch.compile(m, backend="eager")).fit(4, cbs=[CheckpointCB(tmp_path), SWACB(1, 0.01)])
    assert list(load_checkpoint(tmp_path / "epoch_0002.pt")["callbacks"]["SWACB_0"]["swa_model"])[1] == \
        "module.0.weight"
    plain = make(lambda m: m)
    plain.fit(4, resume=tmp_path / "epoch_0002.pt", cbs=[SWACB(1, 0.01)])  # (refused with torch's keys error)


def test_a_checkpoint_whose_average_has_the_compile_wrappers_keys_still_resumes(tmp_path):
    """(regression round T18) Checkpoints written before SWACB averaged the module inside a torch.compile wrapper
    hold 'module._orig_mod.' keys: their resume failed with torch's bare key error."""
    from miniai.callbacks import CheckpointCB
    from miniai.callbacks.checkpoint import load_checkpoint
    from tests.synth import linear_dls

    def make():
        torch.manual_seed(0)
        return TrainLearner(torch.compile(nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)),
                                          backend="eager"), linear_dls(), F.mse_loss, lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the average is not compiled: said)
        make().fit(2, cbs=[CheckpointCB(tmp_path / "run"), SWACB(1, 0.01)])
        state = load_checkpoint(tmp_path / "run" / "epoch_0002.pt")
        swa = state["callbacks"]["SWACB_0"]
        swa["swa_model"] = {k.replace("module.", "module._orig_mod.", 1): v for k, v in swa["swa_model"].items()}
        older = tmp_path / "older" / "epoch_0002.pt"
        older.parent.mkdir()
        torch.save({k: v for k, v in state.items() if k != "checksum"}, older)
        make().fit(3, resume=older, cbs=[SWACB(1, 0.01)])


class _HoldsACompiledPart(nn.Module):
    def __init__(self):
        super().__init__()
        self.module = torch.compile(nn.Sequential(nn.Linear(1, 8), nn.ReLU()), backend="eager")
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.module(x))


def test_a_models_own_compiled_part_named_module_resumes_in_swa(tmp_path):
    """(regression round T19) The key rename for old averages took a model's own 'module._orig_mod.' (a compiled
    part held as self.module) for the wrapper's: its SWA checkpoint could not be resumed, torch's bare key error."""
    from miniai.callbacks import CheckpointCB
    from tests.synth import linear_dls

    def make():
        torch.manual_seed(0)
        return TrainLearner(_HoldsACompiledPart(), linear_dls(), F.mse_loss, lr=0.05)
    make().fit(2, cbs=[CheckpointCB(tmp_path), SWACB(1, 0.01)])
    make().fit(3, resume=tmp_path, cbs=[SWACB(1, 0.01)])


def test_swa_of_a_dataparallel_model_is_not_told_it_was_compiled():
    """(review) The compiled-average warning looked for any wrapper, so nn.DataParallel's was taken for
    torch.compile's: 'SWACB: the model was compiled', which it was not."""
    from tests.synth import linear_dls
    learn = TrainLearner(nn.DataParallel(nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1))), linear_dls(),
                         F.mse_loss, lr=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learn.fit(3, cbs=[SWACB(1, 0.01)])
    assert not [w for w in caught if "compiled" in str(w.message)], [str(w.message) for w in caught]


def test_a_one_cycle_resumed_without_the_saved_runs_swacb_says_swacb_sized_it(tmp_path):
    """(probe swa) A fit_one_cycle + SWACB run resumed without SWACB was refused as 'a OneCycleLR of total_steps=12
    into a fit that takes 24 steps ... resume with the saved run's length' (it had: SWACB had ended the cycle at
    swa_start), the cause only in a warning beside it. The refusal says so (regression round 38: a refusal of every
    schedule resumed without SWACB refused runs that could go on, and said an average was lost that was not)."""
    one_cycle = True
    from miniai.callbacks import CheckpointCB
    from miniai.data import DataLoaders, TensorLoader
    from miniai.learner import Callback, TrainLearner
    g = torch.Generator().manual_seed(0)
    x, xv = torch.randn(64, 3, generator=g), torch.randn(32, 3, generator=g)

    def learner(cbs):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
        dls = DataLoaders(TensorLoader(x, x.sum(1, keepdim=True), 16, shuffle=True, seed=0),
                          TensorLoader(xv, xv.sum(1, keepdim=True), 16))
        return TrainLearner(model, dls, F.mse_loss, lr=0.05, cbs=[CheckpointCB(tmp_path, keep=None), *cbs])

    class Stop(Callback):
        def before_epoch(self, learn):
            if learn.training and learn.epoch == 4:
                raise KeyboardInterrupt
    run = (lambda learn, **kw: learn.fit_one_cycle(6, 0.05, **kw)) if one_cycle else \
        (lambda learn, **kw: learn.fit(6, **kw))
    with pytest.raises(KeyboardInterrupt):
        run(learner([SWACB(swa_start=3, swa_lr=0.005)]), cbs=[Stop()])
    with pytest.raises(ValueError, match=r"resume it with the same SWACB"), \
            pytest.warns(UserWarning, match=r"resume with SWACB\(swa_start=3, swa_lr=0.005"):  # (regression round 39)
        run(learner([]), resume=tmp_path)


def test_the_warning_for_a_swacb_left_out_on_resume_says_what_the_fit_does_instead(tmp_path):
    """(regression round 40) Resumed before swa_start without SWACB, the warning called the StepLR's lr 'SWA's, past
    swa_start' and said nothing of the epochs that then train under the schedule with no average made."""
    from miniai.callbacks import CheckpointCB
    from miniai.learner import Callback

    class Stop(Callback):
        def before_epoch(self, learn):
            if learn.training and learn.epoch == 1:
                raise KeyboardInterrupt
    step = partial(StepLR, step_size=2, gamma=0.5)
    x = torch.randn(48, 3)
    dls = DataLoaders(TensorLoader(x, x.sum(1, keepdim=True), 16, shuffle=True, seed=0),
                      TensorLoader(x[:16], x[:16].sum(1, keepdim=True), 16))

    def make(cbs):
        torch.manual_seed(0)
        from miniai.learner import TrainLearner
        return TrainLearner(nn.Linear(3, 1), dls, F.mse_loss, lr=0.05,
                            cbs=[CheckpointCB(tmp_path, keep=None), BatchSchedCB(step), *cbs])
    with pytest.raises(KeyboardInterrupt):
        make([SWACB(swa_start=2, swa_lr=0.01)]).fit(4, cbs=[Stop()])
    with pytest.warns(UserWarning, match=r"its epochs from swa_start=2 on train under this fit's schedule instead of "
                                         r"SWA's anneal to swa_lr, and no average is made: resume with SWACB\("):
        make([]).fit(4, resume=tmp_path)
