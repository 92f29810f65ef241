"""Mixed precision, gradient accumulation, learn.compile() and the no-sync loop on CUDA."""
from __future__ import annotations

import math
import warnings
from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.optim.lr_scheduler import OneCycleLR
from torcheval.metrics import MulticlassAccuracy

from miniai.callbacks.activations import ActivationStats
from miniai.callbacks.basic import DeviceCB, SingleBatchCB
from miniai.callbacks.grad_accum import GradAccumCB
from miniai.callbacks.guards import GradClipCB
from miniai.callbacks.metrics import MetricsCB
from miniai.callbacks.mixed_precision import MixedPrecisionCB
from miniai.callbacks.progress import ProgressCB
from miniai.callbacks.scheduling import BatchSchedCB, RecorderCB, _lr, _mom, steps_per_epoch
from miniai.data import DataLoaders, TensorLoader
from miniai.learner import Callback, CancelFitException, Learner, TrainLearner
from miniai.models import GeneralRelu, get_model, init_weights
from miniai.utils import set_seed
from tests.synth import NoLen, TimesTemperature, tiny_learner


def reference_model() -> nn.Module:
    model = get_model(partial(GeneralRelu, leak=0.1, sub=0.4), norm=nn.BatchNorm2d)
    return model.apply(partial(init_weights, leaky=0.1))


def linear_problem(n: int = 64, n_in: int = 3, bs: int = 16, seed: int = 0) -> tuple[TrainLearner, DataLoaders]:
    """A Linear(3, 1) regression in unshuffled TensorLoaders: batch order is the same whatever the batch size."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3 + 0.1 * torch.randn(n, 1, generator=g)
    dls = DataLoaders(TensorLoader(x, y, bs), TensorLoader(x[:16], y[:16], bs))
    torch.manual_seed(seed)
    return TrainLearner(nn.Linear(n_in, 1), dls, F.mse_loss, lr=0.1), dls


class GradsBeforeStep(Callback):
    """Copies the gradients the optimizer is about to use (after_backward, after GradAccumCB and GradClipCB)."""
    order = 50

    def __init__(self) -> None:
        self.grads: list[list[torch.Tensor]] = []

    def after_backward(self, learn: Learner) -> None:
        self.grads.append([p.grad.clone() for p in learn.model.parameters()])


class InfGradAt(Callback):
    """Puts an inf into the first gradient at the given training batches (runs after the scaled backward)."""

    def __init__(self, *batches: int) -> None:
        self.batches = set(batches)

    def after_backward(self, learn: Learner) -> None:
        if learn.training and learn.iter in self.batches:
            next(learn.model.parameters()).grad.view(-1)[0] = float("inf")


# ---------------------------------------------------------------- gradient accumulation

def test_grad_accum_4_batches_of_16_give_the_gradients_of_one_batch_of_64():
    accum_learn, _ = linear_problem(bs=16)
    accum_grads = GradsBeforeStep()
    accum_learn.fit(1, valid=False, cbs=[GradAccumCB(4), accum_grads])
    big_learn, _ = linear_problem(bs=64)
    big_grads = GradsBeforeStep()
    big_learn.fit(1, valid=False, cbs=[big_grads])
    assert len(accum_grads.grads) == len(big_grads.grads) == 1  # one optimizer step each
    for ours, theirs in zip(accum_grads.grads[0], big_grads.grads[0]):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(accum_learn.model.parameters(), big_learn.model.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_grad_accum_last_partial_group_steps_on_its_mean():
    """5 batches with n=4: a step on the mean gradient of batches 1-4, and one on batch 5's alone."""
    learn, dls = linear_problem(n=80, bs=16)
    learn.add_cb(GradAccumCB(4))
    assert steps_per_epoch(learn) == 2
    steps = GradsBeforeStep()
    learn.fit(1, valid=False, cbs=[steps], lr=0.0)  # lr 0: the weights stay, so every gradient can be recomputed
    assert len(steps.grads) == 2
    x, y = dls.train.x, dls.train.y
    for grads, rows in zip(steps.grads, (slice(0, 64), slice(64, 80))):
        learn.model.zero_grad()
        F.mse_loss(learn.model(x[rows]), y[rows]).backward()
        for ours, param in zip(grads, learn.model.parameters()):
            torch.testing.assert_close(ours, param.grad, rtol=1e-5, atol=1e-6)


def test_grad_accum_with_momentum_learner_keeps_the_momentum_as_it_is():
    """MomentumLearner keeps mom x the old gradients in .grad; GradAccumCB divided them by k with the new ones, so
    the momentum became mom/k (0.14 off a hand loop after 2 epochs). Also with a last group of one batch."""
    from miniai.learner import MomentumLearner
    torch.manual_seed(0)
    x, y = torch.randn(20, 3), torch.randn(20, 1)
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 20, 4)]  # 5 batches: groups of 2, 2 and 1
    torch.manual_seed(1)
    ours, theirs = nn.Linear(3, 1), nn.Linear(3, 1)
    theirs.load_state_dict(ours.state_dict())
    learn = MomentumLearner(ours, DataLoaders(batches, batches[:1]), F.mse_loss, lr=0.1, mom=0.85,
                            cbs=[GradAccumCB(2)], nan_guard=False)
    learn.fit(2, valid=False)
    opt = optim.SGD(theirs.parameters(), 0.1)
    for _ in range(2):
        for i, (xb, yb) in enumerate(batches):
            k = 1 if i == 4 else 2
            (F.mse_loss(theirs(xb), yb) / k).backward()
            if i % 2 == 1 or i == 4:
                opt.step()
                for param in theirs.parameters():
                    param.grad *= 0.85
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("learner", ["train", "momentum"])
def test_a_tensor_the_optimizer_trains_outside_the_model_is_accumulated_and_kept_as_the_models_are(learner):
    """GradAccumCB divided only the model's gradients, and MomentumLearner decayed only theirs: a temperature the
    optimizer trains beside the model took the summed gradients of a group (1.2845 for 1.1097 after one epoch of
    GradAccumCB(3)), or every gradient since the fit began (2.040 for 1.477), without a word."""
    from miniai.learner import MomentumLearner
    torch.manual_seed(0)
    x, y = torch.randn(28, 3), torch.randn(28, 1) * 3
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 28, 4)]  # 7 batches: groups of 3, 3 and 1
    ours_t, theirs_t = torch.ones((), requires_grad=True), torch.ones((), requires_grad=True)
    ours, theirs = TimesTemperature(nn.Linear(3, 1), ours_t), TimesTemperature(nn.Linear(3, 1), theirs_t)
    theirs.load_state_dict(ours.state_dict())
    cls, kw = (TrainLearner, {}) if learner == "train" else (MomentumLearner, {"mom": 0.85})
    learn = cls(ours, DataLoaders(batches, batches[:1]), F.mse_loss, lr=0.05, cbs=[GradAccumCB(3)],
                opt_func=lambda params, lr: optim.SGD(list(params) + [ours_t], lr=lr), **kw)
    learn.fit(2, valid=False)
    opt = optim.SGD(list(theirs.parameters()) + [theirs_t], lr=0.05)
    for _ in range(2):
        for i, (xb, yb) in enumerate(batches):
            (F.mse_loss(theirs(xb), yb) / (1 if i == 6 else 3)).backward()
            if i in (2, 5, 6):
                opt.step()
                for param in opt.param_groups[0]["params"]:
                    if learner == "train":
                        param.grad = None
                    else:
                        param.grad *= 0.85
    torch.testing.assert_close(ours_t, theirs_t, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_pass_cut_inside_a_group_drops_that_group_s_gradients_and_keeps_the_momentum():
    """A training pass ended mid-group (CancelEpochException) left a partial group; GradAccumCB dropped it at the
    next pass with opt.zero_grad(), wiping too the momentum MomentumLearner carries in .grad (a hand loop, and the
    same fit without GradAccumCB, keep mom x the last step's gradients)."""
    from miniai.learner import CancelEpochException, MomentumLearner
    torch.manual_seed(0)
    x, y = torch.randn(24, 3), torch.randn(24, 1)
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 24, 4)]  # 6 batches; the pass is cut after 3

    class CutAfterThree(Callback):
        def after_batch(self, learn):
            if learn.training and learn.iter == 2:
                raise CancelEpochException()
    torch.manual_seed(1)
    ours, theirs = nn.Linear(3, 1), nn.Linear(3, 1)
    theirs.load_state_dict(ours.state_dict())
    learn = MomentumLearner(ours, DataLoaders(batches, batches[:1]), F.mse_loss, lr=0.1, mom=0.85,
                            cbs=[GradAccumCB(2), CutAfterThree()], nan_guard=False)
    learn.fit(2, valid=False)
    opt = optim.SGD(theirs.parameters(), 0.1)
    for _ in range(2):  # batches 0-1 a group and a step; batch 2 starts a group the cut drops
        for xb, yb in batches[:2]:
            (F.mse_loss(theirs(xb), yb) / 2).backward()
        opt.step()
        for param in theirs.parameters():
            param.grad *= 0.85
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_grad_accum_with_momentum_pairs_carried_gradients_with_their_own_parameters():
    """The carried gradients were paired by position with the parameters that had a .grad at the step: a layer
    that gained one within the group (unfrozen mid-fit) crashed with 'Tensor lists must have the same number'."""
    from miniai.learner import MomentumLearner
    torch.manual_seed(0)
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 32, 4)]
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))

    class Unfreeze(Callback):
        def before_fit(self, learn):
            learn.model[0].requires_grad_(False)

        def after_batch(self, learn):
            if learn.iter == 2:  # mid-group (groups of 2: batches 2 and 3)
                learn.model[0].requires_grad_(True)
    learn = MomentumLearner(model, DataLoaders(batches, batches[:1]), F.mse_loss, lr=0.01, cbs=[GradAccumCB(2),
                                                                                                  Unfreeze()])
    learn.fit(1, valid=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_grad_accum_metrics_see_the_unscaled_loss():
    plain, _ = linear_problem(bs=16)
    plain_metrics = MetricsCB()
    plain.fit(1, valid=False, cbs=[plain_metrics], lr=0.0)
    accum, _ = linear_problem(bs=16)
    accum_metrics = MetricsCB()
    accum.fit(1, valid=False, cbs=[accum_metrics, GradAccumCB(4)], lr=0.0)
    assert accum_metrics.last["train_loss"] == pytest.approx(plain_metrics.last["train_loss"], rel=1e-6)


def test_grad_accum_one_cycle_ends_at_its_final_lr_on_the_last_optimizer_step():
    learn, _ = linear_problem(n=160, bs=16)  # 10 batches an epoch; n=4 makes 3 optimizer steps an epoch
    recorder, steps = RecorderCB(lr=_lr), GradsBeforeStep()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*lr_scheduler")  # no "lr_scheduler.step() before optimizer.step()"
        learn.fit_one_cycle(2, 0.05, cbs=[GradAccumCB(4), recorder, steps], valid=False)
    lrs = recorder.recs["lr"]
    assert len(lrs) == 20 and len(steps.grads) == 6
    assert lrs[-1] == pytest.approx(0.05 / 25 / 1e4)  # initial_lr / final_div_factor: the cycle's last value
    # the lr changes only after an optimizer step: batches of one accumulation group share it
    assert lrs[0] == lrs[1] == lrs[2] == lrs[3] != lrs[4]
    assert lrs[8] == lrs[9] and lrs[10] != lrs[9]  # the epoch's short last group (2 batches) stepped too


def test_grad_accum_rejects_bad_n_steps():
    with pytest.raises(ValueError, match=r"GradAccumCB n_steps must be a whole number >= 1 \(batches per optimizer"):
        GradAccumCB(0)


# ---------------------------------------------------------------- mixed precision

def test_a_float16_fit_whose_every_step_was_skipped_says_so():
    """init_scale 2**100: every gradient overflowed, every step was skipped, the weights never changed, unsaid."""
    learn = tiny_learner(lr=0.05, n_train=96)  # 6 batches
    before = [p.detach().clone() for p in learn.model.parameters()]
    mp = MixedPrecisionCB(torch.float16, init_scale=2.0**100)
    with pytest.warns(UserWarning, match=r"float16 skipped all 6 optimizer steps.*lower init_scale"):
        learn.fit(1, cbs=[mp])
    assert mp.n_skipped == 6 and all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))
    with warnings.catch_warnings():  # a few skipped at the start are the scaler's way: no word
        warnings.simplefilter("error")
        learn.fit(1, cbs=[MixedPrecisionCB(torch.float16, init_scale=2.0**8)])


def test_fp16_scaler_skip_does_not_step_the_scheduler_and_zeroes_the_grads():
    """An inf gradient on the very first batch: no optimizer step, no scheduler step, no torch warning."""
    learn = tiny_learner(lr=0.05, n_train=96)  # 6 batches
    mp = MixedPrecisionCB(torch.float16, init_scale=2.0**8)  # small enough that fp16 gradients don't overflow
    sched = BatchSchedCB(partial(OneCycleLR, max_lr=0.05, total_steps=6))
    recorder = RecorderCB(lr=_lr)
    before = [p.detach().clone() for p in learn.model.parameters()]

    class AfterFirstBatch(Callback):
        order = 40

        def after_batch(self, learn: Learner) -> None:
            if learn.iter == 0:
                self.weights = [p.detach().clone() for p in learn.model.parameters()]
                self.grads = [p.grad for p in learn.model.parameters()]
    seen = AfterFirstBatch()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*lr_scheduler")  # torch warns if the scheduler steps first
        learn.fit(1, valid=False, cbs=[mp, InfGradAt(0), sched, recorder, seen])
    assert mp.scaler is not None and mp.n_skipped == 1
    for b, a in zip(before, seen.weights):
        assert torch.equal(a, b)  # the skipped step left the weights alone
    assert all(g is None or not g.any() for g in seen.grads)  # and cleared the inf gradients
    assert sched.n_steps == 5  # it counted optimizer steps: 6 batches, one skipped
    reference = OneCycleLR(optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.05), max_lr=0.05, total_steps=6)
    expected = []
    for _ in range(5):
        expected.append(reference.get_last_lr()[0])
        reference.optimizer.step()
        reference.step()
    assert recorder.recs["lr"] == pytest.approx([expected[0]] + expected)  # batch 1 reran batch 0's lr
    assert mp.scaler.get_scale() == 2.0**7  # backed off once


def test_grad_accum_under_an_fp16_scaler_steps_once_per_group_on_the_mean_gradient():
    accum_learn, _ = linear_problem(bs=16)
    mp, grads = MixedPrecisionCB(torch.float16, init_scale=2.0**8), GradsBeforeStep()
    accum_learn.fit(1, valid=False, cbs=[mp, GradAccumCB(4), GradClipCB(max_norm=1e9), grads], lr=0.0)
    plain_learn, _ = linear_problem(bs=64)
    plain_grads = GradsBeforeStep()
    plain_learn.fit(1, valid=False, cbs=[plain_grads], lr=0.0)
    assert len(grads.grads) == 1 and mp.n_skipped == 0
    for ours, theirs in zip(grads.grads[0], plain_grads.grads[0]):  # unscaled by GradClipCB, averaged by GradAccumCB
        torch.testing.assert_close(ours, theirs, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("k", [2, 4])
def test_grad_accum_under_a_default_fp16_scaler_skips_the_steps_torchs_recipe_skips(k):
    """(probe P3) Torch's AMP recipe for accumulation backwards scale × loss / k; miniai backwards each batch's whole
    loss and divides the summed gradients at the step, so its float16 gradients were k× larger: about log2(k) more
    overflowed, skipped steps at the start of every run than the recipe's, and other weights. The scaler now starts
    at a k× lower scale: the same float16 values, the same skips, the same weights."""
    def run_by_hand() -> tuple[nn.Module, int]:
        learn, dls = linear_problem(bs=4)  # 16 batches: groups of k
        model, skipped = learn.model, 0
        opt, scaler = optim.SGD(model.parameters(), lr=0.05), torch.amp.GradScaler("cpu")
        batches = list(dls.train)
        for start in range(0, len(batches), k):
            for xb, yb in batches[start:start + k]:
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = F.mse_loss(model(xb), yb)
                scaler.scale(loss / k).backward()
            before = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            skipped += scaler.get_scale() < before
            opt.zero_grad()
        return model, skipped
    hand, skipped = run_by_hand()
    learn, _ = linear_problem(bs=4)
    mp = MixedPrecisionCB(torch.float16)
    learn.fit(1, valid=False, lr=0.05, cbs=[mp, GradAccumCB(k)])
    assert skipped > 0 and mp.n_skipped == skipped
    for ours, theirs in zip(learn.model.parameters(), hand.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # (probe P65) a loss of reduction='sum', which GradAccumCB does not divide: the recipe is scaler.scale(loss),
    # at GradScaler's own 2**16 (it started k× lower, skipping fewer steps than the recipe)
    summed, _ = linear_problem(bs=4)
    summed.loss_func = partial(F.mse_loss, reduction="sum")
    mp = MixedPrecisionCB(torch.float16)
    summed.fit(1, valid=False, lr=1e-4, cbs=[mp, GradAccumCB(k), SingleBatchCB()])
    assert mp.scaler.get_scale() == 2.0 ** 16


def test_scaler_state_round_trips_through_state_dict():
    learn = tiny_learner(lr=0.05)
    mp = MixedPrecisionCB(torch.float16, init_scale=1024.0)
    learn.fit(1, cbs=[mp, InfGradAt(1)])
    assert mp.n_skipped == 1
    state = mp.state_dict()
    assert state["scaler"]["scale"] == pytest.approx(512.0)
    fresh = MixedPrecisionCB(torch.float16)
    with pytest.raises(RuntimeError, match="load its state during a float16 fit"):
        fresh.load_state_dict(state)  # no scaler yet: it is made at before_fit

    class Load(Callback):  # as fit(resume=...) does: after MixedPrecisionCB's before_fit made the scaler
        def before_fit(self, learn):
            fresh.load_state_dict(state)
    tiny_learner(lr=0.0).fit(1, train=False, cbs=[fresh, Load()])
    assert fresh.scaler.get_scale() == pytest.approx(512.0)


def test_lr_find_under_an_fp16_scaler_stops_at_the_first_inf_loss_and_leaves_the_scaler_as_it_was():
    """Skipped fp16 steps never reached after_step, so the finder never looked at their (inf) losses: it ran all
    its epochs, and the scaler it left behind had a scale of 1e-41, whose inverse overflowed: the next fit's
    weights went NaN."""
    set_seed(0)
    x = torch.randn(512, 8)
    y = (x.sum(1) > 0).long()
    dls = DataLoaders(TensorLoader(x, y, 32, shuffle=True, seed=0), TensorLoader(x[:64], y[:64], 32))
    mp = MixedPrecisionCB(torch.float16)
    learn = TrainLearner(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)), dls, F.cross_entropy, lr=1e-2,
                         cbs=[mp])
    learn.fit(1)
    before = mp.scaler.state_dict()
    losses = []

    class Losses(Callback):
        def after_loss(self, learn: Learner) -> None:
            losses.append(float(learn.loss))
    learn.add_cb(Losses())
    learn.lr_find(start_lr=1e-2, gamma=4.0, max_mult=1e30, plot=False)
    assert not math.isfinite(losses[-1]) and all(math.isfinite(v) for v in losses[:-1])  # stopped at the first
    assert mp.scaler.state_dict() == before


def test_momentum_learner_under_an_fp16_scaler_is_refused():
    """MomentumLearner keeps mom × the unscaled gradients; the next scaled backward adds to them and the unscale
    divides all by the scale: the momentum silently shrank 65536-fold."""
    from miniai.learner import MomentumLearner
    x = torch.randn(64, 4)
    dls = DataLoaders(TensorLoader(x, x @ torch.randn(4, 1), 32), TensorLoader(x, x @ torch.randn(4, 1), 32))
    learn = MomentumLearner(nn.Linear(4, 1), dls, F.mse_loss, lr=1e-3, cbs=[MixedPrecisionCB(torch.float16)])
    with pytest.raises(TypeError, match="MomentumLearner.*float16.*bfloat16"):
        learn.fit(1)
    MomentumLearner(nn.Linear(4, 1), dls, F.mse_loss, lr=1e-3, cbs=[MixedPrecisionCB(torch.bfloat16)]).fit(1)


class HalfBackbone(nn.Module):
    """A float16 backbone (kept half for memory; `frozen`: no grad) and a float32 head: (N, 1) -> (N, 1)."""
    def __init__(self, frozen: bool = False):
        super().__init__()
        self.backbone = nn.Linear(1, 4).half().requires_grad_(not frozen)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.backbone(x.half()).float())


def test_an_optimizer_a_callbacks_before_fit_brings_after_float16s_is_the_one_its_skips_are_read_from():
    """A callback (order 0) that set learn.opt at before_fit, after MixedPrecisionCB's (-5) hooked the fit's own:
    every real step was counted as skipped (CancelStepException), so after_step and the one-cycle never ran (lr left
    at its start for the whole fit) and both warnings said float16 skipped all steps (probe amp, s27)."""
    from miniai.learner import TrainLearner
    from tests.synth import linear_dls

    class OwnOpt(Callback):
        def before_fit(self, learn):
            learn.opt = optim.SGD(learn.model.parameters(), lr=learn.fit_lr)

    def run(cbs):
        torch.manual_seed(0)
        mp, steps = MixedPrecisionCB(torch.float16, init_scale=2.0**8), []  # (a scale no step overflows at)

        class Steps(Callback):
            order = 50

            def after_step(self, learn):
                steps.append(learn.opt.param_groups[0]["lr"])
        learn = TrainLearner(nn.Linear(1, 1), linear_dls(), F.mse_loss, lr=0.05, cbs=[mp, *cbs, Steps()])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            learn.fit_one_cycle(2, 0.05)
        return mp.n_skipped, steps, [p.detach().clone() for p in learn.model.parameters()]
    skipped, steps, weights = run([OwnOpt()])
    assert skipped == 0 and (skipped, steps) == run([])[:2]  # every step taken and scheduled, as without it
    assert all(torch.equal(a, b) for a, b in zip(weights, run([])[2]))


@pytest.mark.parametrize("subclass", [True, False])
def test_a_lookahead_wrapper_a_later_callback_sets_trains_under_float16(subclass):
    """Lookahead (the widespread recipe: an Optimizer subclass that never calls Optimizer.__init__ and shares its base's
    param_groups, or a plain class) set at before_fit by a callback after MixedPrecisionCB's: trained before the
    re-hooking of an optimizer set so; then a bare AttributeError '_optimizer_step_post_hooks', or a TypeError whose
    advice led to it (regression round 25). It steps the base, whose hook says the step was taken."""
    from collections import defaultdict
    from miniai.learner import TrainLearner
    from tests.synth import linear_dls

    class Lookahead(*((torch.optim.Optimizer,) if subclass else ())):
        def __init__(self, base, alpha=0.5, k=2):
            self.base, self.alpha, self.k, self.n = base, alpha, k, 0
            self.param_groups, self.defaults, self.state = base.param_groups, base.defaults, defaultdict(dict)
            self.slow = [[p.detach().clone() for p in g["params"]] for g in self.param_groups]

        def zero_grad(self, set_to_none=True):
            self.base.zero_grad(set_to_none)

        def step(self, closure=None):
            loss = self.base.step(closure)
            self.n += 1
            if self.n % self.k == 0:
                with torch.no_grad():
                    for g, slows in zip(self.param_groups, self.slow):
                        for p, slow in zip(g["params"], slows):
                            slow += self.alpha * (p - slow)
                            p.copy_(slow)
            return loss

    class LookaheadCB(Callback):
        def before_fit(self, learn):
            learn.opt = Lookahead(learn.opt)

    steps = []

    class Steps(Callback):
        order = 50

        def after_step(self, learn):
            steps.append(learn.iter)
    torch.manual_seed(0)
    mp = MixedPrecisionCB(torch.float16, init_scale=2.0**8)
    learn = TrainLearner(nn.Linear(1, 1), linear_dls(), F.mse_loss, lr=0.05, cbs=[mp, LookaheadCB(), Steps()])
    before = learn.model.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(2)
    assert mp.n_skipped == 0 and len(steps) == 2 * len(learn.dls.train) and not torch.equal(before, learn.model.weight)
    learn.get_preds()  # (regression round 26: the wrapper learn.opt kept, hooked at before_fit, a bare error)
    learn.fit(1, train=False)


def test_frozen_float16_weights_under_float16_mixed_precision_train_without_a_word():
    """A frozen float16 backbone (kept half for memory) and a float32 head: refused since the float16-weights check,
    which counted frozen weights, whose gradients the scaler never sees (regression round 25)."""
    from miniai.learner import TrainLearner
    from tests.synth import linear_dls

    torch.manual_seed(0)
    learn = TrainLearner(HalfBackbone(frozen=True), linear_dls(), F.mse_loss, lr=0.05,
                         cbs=[MixedPrecisionCB(torch.float16, init_scale=2.0**8)])  # (no overflow in 3 steps)
    before = learn.model.head.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(1)
    assert not torch.equal(before, learn.model.head.weight)


def test_frozen_float16_weights_unfrozen_during_a_fit_are_refused_with_the_way_at_the_step():
    """A frozen float16 backbone unfrozen at epoch 1's before_epoch (a fine-tune) ended in torch's bare 'Attempting
    to unscale FP16 gradients.' after a whole epoch (regression round 26): the step says what and how."""
    from miniai.learner import TrainLearner
    from tests.synth import linear_dls

    class Unfreeze(Callback):
        def before_epoch(self, learn):
            if learn.epoch == 1:
                learn.model.backbone.requires_grad_(True)
    learn = TrainLearner(HalfBackbone(frozen=True), linear_dls(), F.mse_loss, lr=0.05,
                         cbs=[MixedPrecisionCB(torch.float16, init_scale=2.0**8), Unfreeze()])
    with pytest.raises(TypeError, match=r"backbone.weight, backbone.bias.*float16.*GradScaler can't unscale.*"
                                        r"model.float\(\)"):
        learn.fit(2)


def test_a_look_at_predictions_during_a_float16_fit_leaves_its_steps_watched():
    """A callback's get_preds at each validation after_epoch (which README allows) removed the training fit's step
    hook in the prediction pass's cleanup: every later step was counted as a float16 skip, the one-cycle froze at
    0.0449 and the weights ended at 2.98 for 1.996, with a warning blaming overflows (regression round 27)."""
    from miniai.learner import TrainLearner
    from tests.synth import linear_dls

    class Look(Callback):
        def after_epoch(self, learn):
            if not learn.training:
                learn.get_preds(dl=[(torch.ones(2, 1),)])
                learn.summary(xb=(torch.ones(2, 1),))

    def run(look):
        torch.manual_seed(0)
        mp = MixedPrecisionCB(torch.float16, init_scale=2.0**8)
        learn = TrainLearner(nn.Linear(1, 1), linear_dls(), F.mse_loss, lr=0.05, cbs=[mp, *([Look()] if look else [])])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (summary's printout aside)
            learn.fit_one_cycle(3, 0.05)
        return mp.n_skipped, learn.model.weight.item()
    assert run(True) == run(False) and run(True)[0] == 0


def test_float16_weights_the_optimizer_leaves_out_pass_and_those_it_trains_are_named_under_grad_clipping_too():
    """A trainable float16 part that opt_func leaves out was refused (torch's recipe steps it fine); unfrozen float16
    weights under GradClipCB, which unscales first, and a float16 tensor trained beside the model ended in torch's
    bare 'Attempting to unscale FP16 gradients.' (regression round 27)."""
    from miniai.learner import TrainLearner
    from tests.synth import linear_dls

    def learner(opt_func, cbs=()):
        torch.manual_seed(0)
        return TrainLearner(HalfBackbone(), linear_dls(), F.mse_loss, lr=0.05, opt_func=opt_func,
                            cbs=[MixedPrecisionCB(torch.float16, init_scale=2.0**8), *cbs])
    learner(lambda ps, lr: optim.SGD([p for p in ps if p.dtype == torch.float32], lr=lr)).fit(1)
    with pytest.raises(TypeError, match=r"weights are float16 \(backbone.weight, backbone.bias\).*model.float"):
        learner(optim.SGD).fit(1)

    class Unfreeze(Callback):
        def before_epoch(self, learn):
            learn.model.backbone.requires_grad_(learn.epoch == 1)
    learn = learner(optim.SGD, [Unfreeze(), GradClipCB(1.0)])
    learn.model.backbone.requires_grad_(False)
    with pytest.raises(TypeError, match=r"weights are float16 \(backbone.weight, backbone.bias\).*model.float"):
        learn.fit(2)


def test_a_float16_model_under_float16_mixed_precision_is_refused_and_a_bfloat16_one_warned_of():
    """A model already in float16 under MixedPrecisionCB(float16) ended at the first step in torch's bare
    'Attempting to unscale FP16 gradients.' (its scaler can't); one in bfloat16 trained in pure bfloat16, its
    updates below bfloat16's resolution, without a word, where float64 weights are warned of (probe amp, s27)."""
    from miniai.checks import MiniaiWarning
    torch.manual_seed(0)
    learn = tiny_learner(cbs=[MixedPrecisionCB(torch.float16)])
    learn.model.half()
    with pytest.raises(TypeError, match=r"weights are float16.*GradScaler.*can't unscale.*keep the model float32"
                                        r".*model.float\(\)"):
        learn.fit(1)
    learn.model.float()  # the advice, followed
    learn.fit(1)
    learn = tiny_learner(cbs=[MixedPrecisionCB(torch.bfloat16)])
    learn.model.bfloat16()
    with pytest.warns(MiniaiWarning, match=r"weights are bfloat16.*run in bfloat16 alone.*model.float\(\)"):
        learn.fit(1)


def test_grad_clip_unscales_before_clipping_under_a_scaler():
    learn = tiny_learner(lr=0.0)
    mp, clip, grads = MixedPrecisionCB(torch.float16, init_scale=2.0**12), GradClipCB(max_norm=1e9), GradsBeforeStep()
    learn.fit(1, valid=False, cbs=[mp, clip, grads])
    plain = tiny_learner(lr=0.0)
    plain_grads = GradsBeforeStep()
    plain.fit(1, valid=False, cbs=[plain_grads])
    # after GradClipCB the gradients are true (unscaled) ones, close to fp32's up to fp16 rounding
    for ours, theirs in zip(grads.grads[0], plain_grads.grads[0]):
        torch.testing.assert_close(ours, theirs, rtol=1e-2, atol=1e-3)


def test_mixed_precision_autocasts_forward_and_loss_only():
    seen = {}

    class Probe(Callback):
        def after_predict(self, learn: Learner) -> None:
            seen["predict"] = (learn.preds.dtype, torch.is_autocast_enabled("cpu"))

        def after_backward(self, learn: Learner) -> None:
            seen["backward"] = torch.is_autocast_enabled("cpu")

    learn = tiny_learner()
    learn.fit(1, valid=False, cbs=[MixedPrecisionCB(), Probe()])  # dtype=None on the CPU: bfloat16, no scaler
    assert seen == {"predict": (torch.bfloat16, True), "backward": False}
    assert not torch.is_autocast_enabled("cpu")


def test_mixed_precision_leaves_autocast_when_the_forward_raises():
    class Broken(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("broken forward")
    learn = TrainLearner(Broken(1, 1), tiny_learner().dls, F.mse_loss, lr=0.1)
    with pytest.raises(RuntimeError, match="broken forward"):
        learn.fit(1, cbs=[MixedPrecisionCB()])
    assert not torch.is_autocast_enabled("cpu")


def test_mixed_precision_refuses_a_second_owner_of_the_steps():
    from miniai.callbacks.basic import TrainCB
    with pytest.raises(TypeError, match="MixedPrecisionCB and TrainCB both own the 'backward' step"):
        Learner(nn.Linear(1, 1), tiny_learner().dls, F.mse_loss, lr=0.1, cbs=[TrainCB(), MixedPrecisionCB()])


def test_mixed_precision_rejects_other_dtypes():
    with pytest.raises(ValueError, match="torch.float16, torch.bfloat16 or None"):
        MixedPrecisionCB(torch.float32)


@pytest.mark.slow
def test_bf16_on_cpu_trains_the_reference_model_within_1pct_of_fp32():
    """One epoch over a sixth of the training set: CPUs without native bf16 run its convolutions ~7x slower."""
    from miniai.data import get_dls
    accuracies = {}
    for name, extra in (("fp32", []), ("bf16", [MixedPrecisionCB()])):  # dtype=None on the CPU: bfloat16
        set_seed(42)
        dls = get_dls(bs=500, n_train=10_000, seed=42)
        metrics = MetricsCB(accuracy=MulticlassAccuracy())
        learn = TrainLearner(reference_model(), dls, F.cross_entropy, lr=1e-2, opt_func=optim.AdamW,
                             cbs=[DeviceCB("cpu"), metrics, *extra])
        learn.fit_one_cycle(1, 1e-2)
        accuracies[name] = metrics.last["valid_accuracy"]
    assert accuracies["fp32"] > 0.7, accuracies
    assert abs(accuracies["bf16"] - accuracies["fp32"]) < 0.01, accuracies


# ---------------------------------------------------------------- compile

@pytest.mark.slow  # inductor compiles C++ for the CPU: tens of seconds on 2 cores
def test_compiled_fit_gives_the_same_losses_and_clean_state_dict_keys():
    eager = tiny_learner()
    eager_metrics = MetricsCB()
    eager.fit(2, cbs=[eager_metrics])
    compiled = tiny_learner()
    compiled_metrics = MetricsCB()
    assert compiled.compile() is compiled
    compiled.fit(2, cbs=[compiled_metrics])
    for ours, theirs in zip(compiled_metrics.history, eager_metrics.history):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-4, abs=1e-6)
    assert list(compiled.model.state_dict()) == ["weight", "bias"]  # no _orig_mod. prefix
    tiny_learner().model.load_state_dict(compiled.model.state_dict())


def test_hooks_added_or_removed_after_compile_are_seen():
    """Dynamo skips checking module hooks by default: after learn.compile() and a fit, ActivationStats recorded
    nothing and summary() showed no shapes; hooks removed after were still called."""
    learn = TrainLearner(nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1)), tiny_learner().dls, F.mse_loss,
                         lr=0.1)
    learn.compile(backend="eager")  # the same dynamo front end as inductor, without compiling C++
    learn.fit(1)
    stats = ActivationStats(lambda m: isinstance(m, nn.ReLU))
    learn.fit(1, cbs=[stats])
    assert len(stats.stats[0][0]) == 3  # one entry per training batch
    assert "MACs for the batch: 0" not in str(learn.summary())
    learn.fit(1)
    assert len(stats.stats[0][0]) == 3  # its hook, removed, is not called any more


# ---------------------------------------------------------------- CUDA: no host-device sync in the batch loop

class NoSyncInBatches(Callback):
    """Turns torch's sync debug mode to 'error' from the first batch of each pass until its after_epoch."""
    order = -100  # first at after_epoch: MetricsCB reads its values (one allowed sync) after this

    def before_batch(self, learn: Learner) -> None:
        torch.cuda.set_sync_debug_mode("error")

    def after_epoch(self, learn: Learner) -> None:
        torch.cuda.set_sync_debug_mode("default")

    def cleanup_epoch(self, learn: Learner) -> None:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("with_activation_stats", [False, True], ids=["row2", "row3"])
def test_no_host_device_sync_inside_the_batch_loop_on_cuda(with_activation_stats):
    from miniai.data import get_dls
    dls = get_dls(bs=1024, device="cuda")
    assert dls.train.x.device.type == "cuda"  # the whole dataset lives on the GPU
    extra = [ActivationStats(lambda m: isinstance(m, GeneralRelu))] if with_activation_stats else []
    cbs = [DeviceCB("cuda"), MetricsCB(accuracy=MulticlassAccuracy()), ProgressCB(mode="terminal"),
           BatchSchedCB(partial(OneCycleLR, max_lr=1e-2, total_steps=len(dls.train))),
           RecorderCB(lr=_lr, mom=_mom), NoSyncInBatches(), *extra]
    learn = TrainLearner(reference_model(), dls, F.cross_entropy, lr=1e-2, cbs=cbs, opt_func=optim.AdamW)
    learn.fit(1)
    assert learn.metrics.last["valid_accuracy"] > 0.7
    assert not math.isnan(learn.metrics.last["train_loss"])


def test_the_count_of_skipped_fp16_steps_continues_on_resume(tmp_path):
    """n_skipped counts from the start of the run, as BatchSchedCB's n_steps does; resumed, it restarted at 0 (a
    run that skipped 2 steps reported 1)."""
    from miniai.callbacks.checkpoint import CheckpointCB

    class InfGradAtEpochBatch(InfGradAt):
        def after_backward(self, learn: Learner) -> None:
            if learn.training and (learn.epoch, learn.iter) in self.batches:
                next(learn.model.parameters()).grad.view(-1)[0] = float("inf")
    straight = MixedPrecisionCB(torch.float16, init_scale=2.0**8)
    tiny_learner(cbs=[straight, InfGradAtEpochBatch((0, 1), (1, 1)), CheckpointCB(tmp_path)]).fit(2)
    resumed = MixedPrecisionCB(torch.float16, init_scale=2.0**8)
    tiny_learner(cbs=[resumed, InfGradAtEpochBatch((0, 1), (1, 1))]).fit(2, resume=tmp_path / "epoch_0001.pt")
    assert straight.n_skipped == resumed.n_skipped == 2
    tiny_learner(cbs=[resumed, InfGradAtEpochBatch((0, 1))]).fit(1)  # a new run counts its own
    assert resumed.n_skipped == 1


def test_a_fit_broken_mid_group_on_a_loader_without_len_starts_the_next_fit_on_a_fresh_group():
    """On a loader without len a partial group is dropped at the end of a fit; a fit ended inside a batch after its
    backward (CancelFitException there) drops that batch's gradients, but GradAccumCB kept counting the group: the
    next fit's first step divided its 4 batches' gradients by 6."""
    class NoLen:
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __iter__(self):
            for i in range(len(self.x)):
                yield self.x[i:i + 1], self.y[i:i + 1]
    x = torch.randn(8, 1, generator=torch.Generator().manual_seed(0))
    dls = SimpleNamespace(train=NoLen(x, 2 * x + 3), valid=NoLen(x[:2], 2 * x[:2] + 3))

    class StopAt2(Callback):
        order = 10  # at after_backward, before GradAccumCB (15)

        def after_backward(self, learn):
            if learn.iter == 2:
                raise CancelFitException()

    class FirstStep(Callback):
        order = 16  # after GradAccumCB's averaging, before the step
        grad = None

        def after_backward(self, learn):
            if learn.iter == 3 and self.grad is None:
                self.grad = learn.model.weight.grad.clone()
    torch.manual_seed(0)
    learn = TrainLearner(nn.Linear(1, 1), dls, F.mse_loss, lr=0.0, cbs=[GradAccumCB(4)])  # lr 0: weights stay
    learn.fit(1, valid=False, cbs=[StopAt2()])
    first = FirstStep()
    learn.fit(1, valid=False, cbs=[first])
    expected = torch.zeros_like(first.grad)
    for i in range(4):
        learn.model.zero_grad()
        F.mse_loss(learn.model(x[i:i + 1]), 2 * x[i:i + 1] + 3).backward()
        expected += learn.model.weight.grad / 4
    torch.testing.assert_close(first.grad, expected)


def _six_batches() -> tuple[torch.Tensor, torch.Tensor, DataLoaders]:
    """48 items of 5 features, 3 classes, in 6 unshuffled training batches of 8."""
    torch.manual_seed(0)
    x, y = torch.randn(48, 5), torch.randint(0, 3, (48,))
    return x, y, DataLoaders(TensorLoader(x, y, bs=8), TensorLoader(x[:16], y[:16], bs=8))


def _net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("how", ["fit cbs", "rm_cb"])
def test_a_part_done_group_of_a_fit_that_ended_early_does_not_reach_the_next_fit(how):
    """A one-batch smoke test of the set-up (SingleBatchCB) took no step and left batch 0's gradients in .grad: the
    next plain fit added them to its first step (0.016 off the same fit on a fresh learner)."""
    from miniai.callbacks import SingleBatchCB
    _, _, dls = _six_batches()
    a = TrainLearner(_net(), dls, F.cross_entropy, lr=0.1)
    if how == "fit cbs":
        a.fit(1, cbs=[GradAccumCB(4), SingleBatchCB()])
    else:
        accum = GradAccumCB(4)
        a.add_cb(accum).fit(1, cbs=[SingleBatchCB()])
        a.rm_cb(accum)
    assert all(p.grad is None for p in a.model.parameters())  # as after a fit without GradAccumCB
    a.fit(1)
    b = TrainLearner(_net(), dls, F.cross_entropy, lr=0.1)
    b.fit(1)
    assert _max_diff(a.model, b.model) == 0.0


def test_a_part_done_group_dropped_at_the_end_of_a_fit_keeps_the_momentum_learner_s_momentum():
    """MomentumLearner keeps mom x the last step's gradients in .grad: dropping the part-done group puts those back."""
    from miniai.callbacks import SingleBatchCB
    from miniai.learner import MomentumLearner
    _, _, dls = _six_batches()
    a, b = (MomentumLearner(_net(), dls, F.cross_entropy, lr=0.1, mom=0.85) for _ in range(2))
    a.fit(1)
    a.fit(1, cbs=[GradAccumCB(4), SingleBatchCB()])  # no step: the weights and the momentum stay as they were
    a.fit(1)
    b.fit(1)
    b.fit(1)
    assert _max_diff(a.model, b.model) == 0.0


class SkipLast(Callback):
    """Drops the training pass's last batch before its backward (CancelBatchException at after_loss)."""
    order = 6

    def after_loss(self, learn: Learner) -> None:
        if learn.training and learn.iter == len(learn.dl) - 1:
            from miniai.learner import CancelBatchException
            raise CancelBatchException()


class CountSteps(Callback):
    """Optimizer steps per training pass, counted by `learn.stepped` as the schedulers count them."""
    order = 90

    def __init__(self) -> None:
        self.steps: list[int] = []

    def before_epoch(self, learn: Learner) -> None:
        if learn.training:
            self.steps.append(0)

    def cleanup_batch(self, learn: Learner) -> None:
        if learn.training and learn.stepped:
            self.steps[-1] += 1


@pytest.mark.parametrize("k, groups", [(2, [[0, 1], [2, 3]]), (3, [[0, 1, 2]]), (6, [])])
def test_when_the_epoch_s_last_batch_is_dropped_before_its_backward_its_group_is_dropped_with_a_warning(k, groups):
    """The last batch was told by after_backward, which a batch dropped at after_loss never reaches: the group of
    the batches before it was dropped at the next pass without a word (or, at the fit's end, leaked into the next
    fit). Now it is dropped at once, with a warning, as a hand loop skipping its stepping batch would."""
    x, y, dls = _six_batches()
    steps = CountSteps()
    learn = TrainLearner(_net(), dls, F.cross_entropy, lr=0.1,
                         cbs=[GradAccumCB(k), SkipLast(), GradClipCB(max_norm=0.5), steps])
    with pytest.warns(UserWarning, match="took no optimizer step: their gradients are dropped"):
        learn.fit(2)
    hand = _net()
    opt = optim.SGD(hand.parameters(), lr=0.1)
    for _ in range(2):
        for group in groups:  # the full groups step on their mean, clipped; the last one never does
            for i in group:
                (F.cross_entropy(hand(x[8 * i:8 * i + 8]), y[8 * i:8 * i + 8]) / len(group)).backward()
            torch.nn.utils.clip_grad_norm_(hand.parameters(), 0.5)
            opt.step()
            opt.zero_grad()
    assert _max_diff(learn.model, hand) < 1e-6
    assert steps.steps == [len(groups)] * 2  # each taken step counted, as a schedule counts it
    assert all(p.grad is None or not p.grad.any() for p in learn.model.parameters())


def test_two_grad_accum_callbacks_are_refused_at_fit():
    """Each divided by its own count: the gradients of GradAccumCB(2) and GradAccumCB(3) together were garbled."""
    _, _, dls = _six_batches()
    learn = TrainLearner(_net(), dls, F.cross_entropy, lr=0.1, cbs=[GradAccumCB(2)])
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match=r"2 GradAccumCB callbacks \(n_steps=2, n_steps=3\).*keep one"):
        learn.fit(1, cbs=[GradAccumCB(3)])
    assert all(torch.equal(p, q) for p, q in zip(before, learn.model.parameters()))  # refused before any step
    learn.fit(1)  # the one left works


def test_groups_longer_than_a_pass_step_on_a_loader_without_len():
    """Counted by position in the pass, a group of 10 on passes of 6 batches without len never stepped: the fit
    trained nothing, with one warning at its end."""
    x, y, dls = _six_batches()
    torch.manual_seed(0)
    learn = TrainLearner(_net(), type(dls)(NoLen(dls.train), dls.valid), F.cross_entropy, lr=0.1,
                         cbs=[GradAccumCB(4)])
    before = [p.detach().clone() for p in learn.model.parameters()]
    steps = CountSteps()
    with pytest.warns(UserWarning, match="2 batch"):  # 3 passes of 6: groups of 4, 2 batches left at the end
        learn.fit(3, cbs=[steps])
    assert sum(steps.steps) == 4 and not all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))


def test_a_checkpoint_of_another_accumulation_count_is_refused():
    cb = GradAccumCB(2)
    with pytest.raises(ValueError, match=r"resume with GradAccumCB\(5\)"):
        cb.load_state_dict({**GradAccumCB(5).state_dict()})
    cb.load_state_dict({"summed": 0, "carried": []})  # (a checkpoint of before n_steps was saved)


def test_a_resume_with_other_grad_scaler_settings_is_refused(tmp_path):
    """The saved GradScaler's state put its growth and backoff back over the ones given, without a word."""
    from miniai.callbacks.checkpoint import CheckpointCB
    tiny_learner(cbs=[MixedPrecisionCB(torch.float16, init_scale=2.0**8), CheckpointCB(tmp_path)]).fit(1)
    learn = tiny_learner(cbs=[MixedPrecisionCB(torch.float16, init_scale=2.0**8, growth_interval=1)])
    with pytest.raises(ValueError, match=r"the checkpoint's run scaled float16 gradients with growth_interval=2000, "
                                         r"this fit's GradScaler has growth_interval=1.*resume with the saved"):
        learn.fit(2, resume=tmp_path)
    # the scale is learned state, not a setting: another init_scale resumes, on the saved scale
    resumed = MixedPrecisionCB(torch.float16, init_scale=2.0**4)
    tiny_learner(cbs=[resumed]).fit(2, resume=tmp_path)



def test_grad_scaler_settings_given_as_numpy_numbers_resume(tmp_path):
    """growth_interval=np.int64(100): every checkpoint saved it as a NumPy scalar, which the safe loader refuses, so
    the resume failed after the run, with no word when it saved."""
    import numpy as np
    from miniai.callbacks.checkpoint import CheckpointCB
    settings = dict(init_scale=np.float64(2.0**8), growth_interval=np.int64(100))
    tiny_learner(cbs=[MixedPrecisionCB(torch.float16, **settings), CheckpointCB(tmp_path)]).fit(1)
    tiny_learner(cbs=[MixedPrecisionCB(torch.float16, **settings)]).fit(2, resume=tmp_path)

def test_an_epoch_whose_every_float16_step_was_skipped_still_counts_as_an_epoch():
    """An epoch of only skipped steps was not counted: the next fit replayed its loader order (fit(1); fit(2) was
    not fit(3)), and SWACB left it out of the average, where a hand loop with a GradScaler counts it."""
    from miniai.callbacks import SWACB

    class SkipFirstEpoch(InfGradAt):
        def after_backward(self, learn: Learner) -> None:
            if learn.training and learn.epoch_offset + learn.epoch == 0:
                next(learn.model.parameters()).grad.view(-1)[0] = float("inf")

    def learner(cbs=()):
        from miniai.data import DataLoaders, TensorLoader
        x = torch.linspace(-1, 1, 48).unsqueeze(1)
        dls = DataLoaders(TensorLoader(x, 2 * x + 3, 16, shuffle=True, seed=0), TensorLoader(x, 2 * x + 3, 16))
        torch.manual_seed(0)
        return TrainLearner(nn.Linear(1, 1), dls, F.mse_loss, lr=0.05, cbs=[
            MixedPrecisionCB(torch.float16, init_scale=2.0**8), SkipFirstEpoch(), *cbs])
    straight, split = learner(), learner()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the first fit of the split run skipped all its steps, and says so)
        straight.fit(3, valid=False)
        split.fit(1, valid=False)
        split.fit(2, valid=False)
    assert split._epochs_trained == 3
    assert all(torch.equal(a, b) for a, b in zip(straight.model.parameters(), split.model.parameters()))
    swa = SWACB(0, 0.05)
    learner([swa]).fit(3, valid=False)
    assert int(swa.swa_model.n_averaged) == 3


def test_grad_accum_sums_for_a_function_of_ones_own_that_says_it_sums():
    """A summing loss written as a function can't be told from a mean one from outside: its `reduction` attribute
    says so, and GradAccumCB then steps on the sum, as one batch 4× larger."""
    def summed(preds, targets):
        return F.mse_loss(preds, targets, reduction="sum")
    summed.reduction = "sum"
    accum_learn, _ = linear_problem(bs=16)
    accum_learn.loss_func = summed
    accum = GradsBeforeStep()
    accum_learn.fit(1, valid=False, cbs=[GradAccumCB(4), accum])
    big_learn, _ = linear_problem(bs=64)
    big_learn.loss_func = summed
    big = GradsBeforeStep()
    big_learn.fit(1, valid=False, cbs=[big])
    torch.testing.assert_close(accum.grads[0], big.grads[0])
