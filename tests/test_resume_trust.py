"""Resume and scheduling edge cases a hostile tester found: each test names what used to go wrong."""
from __future__ import annotations

import functools
import types
import warnings
import re
from functools import partial

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler
from torcheval.metrics import MulticlassAccuracy

from miniai.callbacks import BatchSchedCB, EpochSchedCB, GradAccumCB, GradClipCB, MetricsCB
from miniai.callbacks.checkpoint import (CheckpointMismatchError, list_checkpoints, load_checkpoint,
                                        save_checkpoint)
from miniai.callbacks.guards import EarlyStoppingCB
from miniai.learner import Callback, CancelFitException
from tests.synth import TimesTemperature
from tests.test_checkpoint import _CutPass, make_learner, same_params, without_time


def _plateau() -> EpochSchedCB:
    # cuts the lr unless valid_loss fell by half: it steps (and cuts) nearly every epoch
    return EpochSchedCB(partial(lr_scheduler.ReduceLROnPlateau, mode="min", factor=0.5, patience=0, threshold=0.5),
                        monitor="valid_loss")


@pytest.mark.parametrize("watcher", [_plateau, lambda: EarlyStoppingCB("valid_loss", patience=1, min_delta=0.02)])
def test_a_fit_cancelled_in_a_validation_pass_resumes_as_the_run_never_stopped(tmp_path, watcher):
    """A CancelFitException in epoch 1's validation pass (a time budget) still got epoch 1 saved as done, though
    its after_epoch never ran: the plateau scheduler had not stepped, EarlyStoppingCB not counted, MetricsCB not
    logged the row; the resumed run never ran that validation again and ended elsewhere."""
    straight, rec_straight = make_learner(tmp_path / "a", [watcher()])
    straight.fit(4)
    stopped, _ = make_learner(tmp_path / "b", [watcher(), _CutPass(training=False, at=0, exc=CancelFitException,
                                                                   epoch=1)])
    stopped.fit(4)
    assert [f.name for _, f in list_checkpoints(tmp_path / "b")] == ["epoch_0001.pt"]
    resumed, rec_resumed = make_learner(tmp_path / "b", [watcher()])
    resumed.fit(4, resume=tmp_path / "b")
    assert same_params(straight, resumed)
    assert rec_resumed.recs["lr"] == rec_straight.recs["lr"]
    assert without_time(resumed.metrics.history) == without_time(straight.metrics.history)


def test_a_chained_scheduler_holding_one_of_our_closed_form_schedules_is_refused():
    """CosineAnnealing, documented as a drop-in for torch's CosineAnnealingLR, inside a ChainedScheduler with an
    ExponentialLR set the lr outright each step: the decay was lost (0.0017 at the end instead of torch's 0.00015)."""
    from miniai.callbacks import BatchSchedCB
    from miniai.schedulers import CosineAnnealing
    for cos in (CosineAnnealing, lr_scheduler.CosineAnnealingLR):
        def chained(opt, cos=cos):
            return lr_scheduler.ChainedScheduler([lr_scheduler.ExponentialLR(opt, 0.8), cos(opt, T_max=24)])
        learn, _ = make_learner(None, [BatchSchedCB(chained)])
        if cos is CosineAnnealing:
            with pytest.raises(ValueError, match=r"CosineAnnealing, which is not chainable.*CosineAnnealingLR.*chains"):
                learn.fit(3)
        else:  # torch's chains: taken
            learn.fit(3)
    assert "drop-in" not in CosineAnnealing.__doc__ or "ChainedScheduler" in CosineAnnealing.__doc__

    def nested(opt):  # the chain inside a SequentialLR: found too
        chain = lr_scheduler.ChainedScheduler([lr_scheduler.ExponentialLR(opt, 0.8), CosineAnnealing(opt, T_max=12)])
        return lr_scheduler.SequentialLR(opt, [chain, lr_scheduler.ConstantLR(opt, 1.0, total_iters=12)], [12])
    learn, _ = make_learner(None, [BatchSchedCB(nested)])
    with pytest.raises(ValueError, match="not chainable"):
        learn.fit(3)

    def sequential_in_chain(opt):  # ours inside a SequentialLR that is a part of a chain: its decay lost too
        seq = lr_scheduler.SequentialLR(opt, [CosineAnnealing(opt, T_max=12), lr_scheduler.ConstantLR(opt, 1.0)], [12])
        return lr_scheduler.ChainedScheduler([seq, lr_scheduler.ExponentialLR(opt, 0.5)])
    learn, _ = make_learner(None, [BatchSchedCB(sequential_in_chain)])
    with pytest.raises(ValueError, match="not chainable"):
        learn.fit(3)


@pytest.mark.parametrize("how", ["fit_one_cycle", "BatchSchedCB", "EpochSchedCB"])
def test_a_schedule_the_checkpoint_did_not_have_is_refused_at_resume_before_anything_changes(tmp_path, how):
    """A run saved without a schedule, resumed with fit_one_cycle: a raw KeyError('initial_lr') after a step (the
    optimizer state loaded after the scheduler replaced the param-group keys it wrote); a cosine added so trained
    half a schedule that started mid-run. A ReduceLROnPlateau, which counts nothing from the run's start, is taken."""
    make_learner(tmp_path)[0].fit(2)
    learn, rec = make_learner(None)
    before = [p.detach().clone() for p in learn.model.parameters()]
    run = {"fit_one_cycle": lambda: learn.fit_one_cycle(4, max_lr=0.1, resume=tmp_path),
           "BatchSchedCB": lambda: learn.fit(4, cbs=[BatchSchedCB(partial(lr_scheduler.CosineAnnealingLR, T_max=32))],
                                             resume=tmp_path),
           "EpochSchedCB": lambda: learn.fit(4, cbs=[EpochSchedCB(partial(lr_scheduler.StepLR, step_size=1))],
                                             resume=tmp_path)}[how]
    with pytest.raises(ValueError, match=r"the run saved in .*epoch_0002.pt had no such schedule.*can't begin "
                                         r"mid-run.*same callbacks.*or start a new fit"):
        run()
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters())) and rec.recs["lr"] == []
    with pytest.warns(UserWarning, match="start fresh"):
        learn.fit(3, cbs=[_plateau()], resume=tmp_path)


class _WarmNp:
    """A warmup lr_lambda holding a numpy number, which the scheduler's state_dict keeps."""

    def __init__(self, n):
        self.n = np.float64(n)

    def __call__(self, step):
        return float(min(1.0, (step + 1) / self.n))


def test_a_scheduler_state_the_safe_loader_refuses_warns_at_once_and_each_refusal_names_what_to_allow(tmp_path):
    """A numpy number in an lr_lambda: checkpoints were written without a word, none could be resumed, and after
    following the add_safe_globals advice twice the third message blamed truncation or corruption and cut off the
    type's name (numpy.dtypes.Float64DType)."""
    def make():
        return make_learner(tmp_path, [BatchSchedCB(partial(lr_scheduler.LambdaLR, lr_lambda=_WarmNp(5)))])[0]
    with pytest.warns(UserWarning, match=r"BatchSchedCB_0.*safe loader refuses.*numpy\._core\.multiarray\.scalar"):
        make().fit(2)
    allowed = []
    for _ in range(4):
        try:
            with torch.serialization.safe_globals(allowed):
                make().fit(3, resume=tmp_path)
            break
        except CheckpointMismatchError as e:
            assert "corrupt" not in str(e) and "truncated" not in str(e)
            named = re.search(r"add_safe_globals\(\[([\w., ]+)\]\)", str(e))[1].split(", ")
            assert named and all(name.startswith("numpy.") for name in named)
            allowed += [functools.reduce(getattr, name.split(".")[1:], np) for name in named]
    else:
        pytest.fail(f"still refused after allowing {allowed}")


class _WarmShaped:
    """A callable lr_lambda holding a lambda: LambdaLR's state_dict keeps the object's attributes, lambda included."""

    def __init__(self, n):
        self.shape = lambda step: min(1.0, (step + 1) / n)

    def __call__(self, step):
        return self.shape(step)


def test_a_callback_state_that_cannot_be_saved_is_refused_before_training(tmp_path):
    """The fit trained its first epoch, then died saving it with a bare AttributeError ("Can't pickle local
    object"), naming neither the callback nor what to do, and wrote no checkpoint."""
    learn, _ = make_learner(tmp_path, [BatchSchedCB(partial(lr_scheduler.LambdaLR, lr_lambda=_WarmShaped(5)))])
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(TypeError, match=r"CheckpointCB can't save BatchSchedCB_0's state.*Can't pickle.*lambda"):
        learn.fit(2)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))
    assert list_checkpoints(tmp_path) == []


def test_an_evaluation_fit_resumed_from_a_scheduled_run_takes_its_callbacks(tmp_path):
    """fit(n, train=False, resume=dir) with the run's BatchSchedCB failed: "BatchSchedCB builds its scheduler at
    before_fit: load its state during a fit, after that (learn.fit(n, resume=path) does)", which is what it did."""
    def sched():
        return BatchSchedCB(partial(lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=24))
    trained, _ = make_learner(tmp_path, [sched()])
    trained.fit(3)
    learn, _ = make_learner(None, [sched()])
    learn.fit(4, train=False, resume=tmp_path)  # the weights after 3 epochs, validated once
    assert same_params(trained, learn)
    # labelled as the run labelled them (epoch 2), not as the next epoch (3), which never trained (probe 66)
    assert learn.metrics.history[-1]["epoch"] == trained.metrics.history[-1]["epoch"] == 2
    assert learn.metrics.history[-1]["train"] == "valid"
    assert learn.metrics.last["valid_loss"] == pytest.approx(trained.metrics.last["valid_loss"])


def test_a_resume_with_a_new_lr_takes_it_under_a_plateau_schedule(tmp_path):
    """fit(lr=0.01, resume=...) with EpochSchedCB(ReduceLROnPlateau) was refused: "its schedule sets the lr at
    every step", untrue of a plateau, which only scales the lr it finds when the metric stalls."""
    make_learner(tmp_path, [_plateau()])[0].fit(2)
    learn, rec = make_learner(None, [_plateau()])
    learn.fit(4, lr=0.01, resume=tmp_path)
    resumed = rec.recs["lr"][2 * 8:]  # 8 batches an epoch; the first two epochs' records come from the checkpoint
    assert resumed[0] == 0.01 and all(lr in (0.01, 0.005, 0.0025) for lr in resumed) and len(resumed) == 16


def test_a_fit_of_zero_epochs_says_nothing_of_its_schedules_length():
    """fit_one_cycle(0) built its OneCycleLR with total_steps=1 (torch refuses 0), then warned the user to build it
    with total_steps=0."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_learner(None)[0].fit_one_cycle(0, max_lr=0.1)
        make_learner(None)[0].fit(0, cbs=[BatchSchedCB(partial(lr_scheduler.CosineAnnealingLR, T_max=5))])


@pytest.mark.parametrize("change", ["bs", "items", "valid"])
def test_resuming_on_loaders_of_another_size_warns_that_the_run_no_longer_continues_exactly(tmp_path, change):
    """A run saved at bs 8, resumed on loaders of bs 4 (or more items, or another validation set): no error, no
    warning, and weights that match neither the saved run's nor a straight run on the new loaders."""
    from miniai.data import DataLoaders, TensorLoader
    import shutil
    saved, _ = make_learner(tmp_path / "a", [_CutPass(training=True, at=0, exc=CancelFitException, epoch=1)])
    saved.fit(3)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    resumed, _ = make_learner(tmp_path / "a")
    x, y = resumed.dls.train.x, resumed.dls.train.y
    train = {"bs": TensorLoader(x, y, bs=4, shuffle=True, seed=3),
             "items": TensorLoader(torch.cat([x, x[:8]]), torch.cat([y, y[:8]]), bs=8, shuffle=True, seed=3),
             "valid": resumed.dls.train}[change]
    valid = TensorLoader(x[:24], y[:24], bs=8) if change == "valid" else resumed.dls.valid
    resumed.dls = DataLoaders(train, valid)
    name = "valid" if change == "valid" else "train"
    with pytest.warns(UserWarning, match=rf"dls\.{name} .*(batches|items).*saved run.*won't end as"):
        resumed.fit(3, resume=tmp_path / "a")
    same, _ = make_learner(tmp_path / "b")  # the same loaders: no warning
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.fit(3, resume=tmp_path / "b")


def test_a_scheduler_built_with_other_settings_on_resume_is_named_in_a_warning(tmp_path):
    """StepLR(gamma=0.1) resumed from a run with gamma=0.5: the saved gamma came back with the scheduler's state and
    the run went on with it, no word of the setting given (as for the lr: never silently)."""
    import shutil
    import warnings
    step = lambda gamma: EpochSchedCB(partial(lr_scheduler.StepLR, step_size=1, gamma=gamma))  # noqa: E731
    saved, _ = make_learner(tmp_path / "a", [step(0.5), _CutPass(training=True, at=0, exc=CancelFitException,
                                                                  epoch=1)])
    saved.fit(3)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    straight, _ = make_learner(None, [step(0.5)])
    straight.fit(3)
    resumed, _ = make_learner(tmp_path / "a", [step(0.1)])
    with pytest.warns(UserWarning, match=r"StepLR.*gamma 0\.5 \(saved\).*0\.1 \(here\).*saved ones are kept"):
        resumed.fit(3, resume=tmp_path / "a")
    assert same_params(straight, resumed)  # as the warning says: the saved run, continued
    same, _ = make_learner(tmp_path / "b", [step(0.5)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.fit(3, resume=tmp_path / "b")


def test_a_sequential_lr_resumed_with_another_milestone_is_named_in_a_warning(tmp_path):
    """SequentialLR's milestones live in its private _milestones, which the settings check skipped: a resume with
    the milestone moved from step 8 to 14 switched at 8, as the saved run did, without a word."""
    def sched(milestone):
        return BatchSchedCB(lambda o: lr_scheduler.SequentialLR(
            o, [lr_scheduler.ConstantLR(o, 0.1, total_iters=100), lr_scheduler.ExponentialLR(o, 0.9)],
            milestones=[milestone]))
    make_learner(tmp_path, [sched(8)])[0].fit(1)
    with pytest.warns(UserWarning, match=r"milestones \[8\] \(saved\) vs \[14\] \(here\).*saved ones are kept"):
        make_learner(tmp_path, [sched(14)])[0].fit(2, resume=tmp_path)


def test_a_plateau_resumed_watching_another_metric_looks_for_its_best_afresh(tmp_path):
    """A ReduceLROnPlateau resumed watching valid_loss kept the saved run's best of train_loss, so it cut the lr
    every epoch while valid_loss improved (5e-2 to 5e-5 in three epochs), without a word; EarlyStoppingCB and
    CheckpointCB warn and look for their best afresh, and so does the plateau now (its mode too: this fit's)."""
    def plateau(watch):
        return EpochSchedCB(partial(lr_scheduler.ReduceLROnPlateau, patience=0), monitor=watch)
    make_learner(tmp_path, [plateau("train_loss")])[0].fit(2)
    sched = plateau("valid_loss")
    with pytest.warns(UserWarning, match=r"watched 'train_loss' \(min\) in the run resumed from and watches "
                                         r"'valid_loss' \(min\) now: its best value so far is not carried over"):
        learn = make_learner(tmp_path, [sched])[0]
        learn.fit(3, resume=tmp_path)
    assert sched.scheduler.best == learn.metrics.history[-1]["loss"]  # (its valid row) its only epoch: the best seen


class _LateCounter(Callback):
    """A stateful callback ordered after every built-in one, which starts its count afresh at each before_fit."""
    order = 2000

    def __init__(self):
        self.n = 0

    def before_fit(self, learn):
        self.n = 0

    def after_batch(self, learn):
        self.n += 1

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_a_callback_ordered_after_1000_gets_its_saved_state_after_its_own_before_fit(tmp_path):
    """The resume loaded callbacks' state at order 1000, so a callback of order 2000 reset it at its own
    before_fit afterwards: the resumed run counted 16 batches where the run never stopped counted 32."""
    straight = _LateCounter()
    make_learner(None, [straight])[0].fit(2)
    make_learner(tmp_path, [_LateCounter()])[0].fit(1)
    resumed = _LateCounter()
    make_learner(tmp_path, [resumed])[0].fit(2, resume=tmp_path)
    assert resumed.n == straight.n == 2 * (8 + 2)


@pytest.mark.parametrize("per", ["batch", "epoch"])
def test_resuming_a_warm_restarts_schedule_warns_of_no_changed_setting(tmp_path, per):
    """Every resume of a CosineAnnealingWarmRestarts run warned "built with other settings than the saved run's
    (T_i 16 (saved) vs 4 (here); T_cur 3 (saved) vs 0 (here))": the length of the cycle running and the step in
    it are counters, not settings."""
    cls = BatchSchedCB if per == "batch" else EpochSchedCB

    def sched():
        return cls(partial(lr_scheduler.CosineAnnealingWarmRestarts, T_0=4 if per == "batch" else 1, T_mult=2))
    straight, rec_straight = make_learner(None, [sched()])
    straight.fit(4)
    make_learner(tmp_path, [sched()])[0].fit(2)
    resumed, rec_resumed = make_learner(tmp_path, [sched()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.fit(4, resume=tmp_path)
    assert rec_resumed.recs["lr"] == rec_straight.recs["lr"] and same_params(straight, resumed)


@pytest.mark.parametrize("cls", [lr_scheduler.LambdaLR, lr_scheduler.MultiplicativeLR])
def test_a_resume_with_another_lr_function_is_refused(tmp_path, cls):
    """torch saves no plain function: a resume with another lr_lambda (a closure over another run length) trained
    on with the new one, without a word (LambdaLR at 0.05 a step where the saved run's gave 0.0042)."""
    saved, new = (lambda step: 1 / (1 + step)), (lambda step: 1.0)
    if cls is lr_scheduler.MultiplicativeLR:
        saved, new = (lambda step: 0.9), (lambda step: 1.0)
    make_learner(tmp_path, [BatchSchedCB(partial(cls, lr_lambda=saved))])[0].fit(2)
    learn, _ = make_learner(tmp_path, [BatchSchedCB(partial(cls, lr_lambda=new))])
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match=r"saved run's .*LR set param group 0's lr to .* at its step 16.*"
                                         r"Resume with the saved run's lr_lambda"):
        learn.fit(4, resume=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))
    same, rec = make_learner(tmp_path, [BatchSchedCB(partial(cls, lr_lambda=saved))])
    same.fit(4, resume=tmp_path)  # the same function resumes
    straight, rec_straight = make_learner(None, [BatchSchedCB(partial(cls, lr_lambda=saved))])
    straight.fit(4)
    assert rec.recs["lr"] == rec_straight.recs["lr"]


def test_an_evaluation_resumed_from_a_checkpoint_leaves_the_recorders_curves(tmp_path):
    """fit(3, train=False, resume=epoch 2's file) after a 4-epoch fit replaced RecorderCB's 32 lrs with the
    checkpoint's 16, while ProgressCB kept the fit's losses; an evaluation leaves the last training fit's curves."""
    learn, rec = make_learner(tmp_path, [], keep=None)
    learn.fit(4)
    lrs = list(rec.recs["lr"])
    learn.fit(3, train=False, resume=tmp_path / "epoch_0002.pt")
    assert rec.recs["lr"] == lrs and len(lrs) == 4 * 8


@pytest.mark.parametrize("sched", ["ExponentialLR", "StepLR", "MultiStepLR in a ChainedScheduler"])
def test_an_lr_given_on_resume_goes_on_under_a_schedule_that_only_scales_the_lr_it_finds(tmp_path, sched):
    """fit(4, lr=0.005, resume=...) under an ExponentialLR (or StepLR, MultiStepLR) was refused as 'its schedule sets
    the lr at every step, so the lr given would be overwritten': these scale the lr they find, as a plateau's does,
    so the lr given is the lr from here on and the schedule goes on from it (what "lower the lr and resume" asks).
    (probe P4) It did, but warned that the schedule's initial_lr had changed and the saved one was kept, "so the
    run continues as it was": the opposite of what it did, and no word was due."""
    factories = {"ExponentialLR": partial(lr_scheduler.ExponentialLR, gamma=0.9),
                 "StepLR": partial(lr_scheduler.StepLR, step_size=3, gamma=0.5),
                 "MultiStepLR in a ChainedScheduler": lambda opt: lr_scheduler.ChainedScheduler([
                     lr_scheduler.ExponentialLR(opt, gamma=0.9), lr_scheduler.MultiStepLR(opt, [5, 20], gamma=0.5)])}
    make_learner(tmp_path, [BatchSchedCB(factories[sched])])[0].fit(2)
    straight, rec = make_learner(None, [BatchSchedCB(factories[sched])])
    straight.fit(4)
    learn, resumed = make_learner(None, [BatchSchedCB(factories[sched])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(4, lr=0.005, resume=tmp_path)
    ratio = 0.005 / rec.recs["lr"][16]  # the lr given, where the run was at its epoch 2
    assert resumed.recs["lr"][16:] == pytest.approx([lr * ratio for lr in rec.recs["lr"][16:]], rel=1e-6)


def test_an_lr_given_on_resume_under_a_sequentiallr_of_scaling_parts_is_refused(tmp_path):
    """A regression caught before it landed (probe T): torch starts a SequentialLR's next part at its milestone from
    the part's base_lrs, the saved run's, so the lr given was lost there (0.05 from step 20, for 0.027)."""
    def sched():
        return BatchSchedCB(lambda opt: lr_scheduler.SequentialLR(opt, [
            lr_scheduler.ExponentialLR(opt, gamma=0.9), lr_scheduler.MultiStepLR(opt, [5], gamma=0.5)], [20]))
    make_learner(tmp_path, [sched()])[0].fit(2)
    with pytest.raises(ValueError, match=r"its schedule sets the lr at every step from where the run began"):
        make_learner(None, [sched()])[0].fit(4, lr=0.005, resume=tmp_path)


def test_a_refused_resume_leaves_the_learners_records(tmp_path):
    """"nothing was changed", said a refused resume, but MetricsCB's history and RecorderCB's curves of the
    learner's last fit were gone: their before_fit had started them afresh before ResumeCB refused."""
    def sched():
        return BatchSchedCB(partial(lr_scheduler.CosineAnnealingLR, T_max=32))
    make_learner(tmp_path, [sched()])[0].fit(1)
    learn, rec = make_learner(None, [sched()])
    learn.fit(2)
    history, lrs = list(learn.metrics.history), list(rec.recs["lr"])
    opt, fit_lr = learn.opt, learn.fit_lr
    with pytest.raises(ValueError, match="its schedule sets the lr at every step"):
        learn.fit(4, lr=0.01, resume=tmp_path)
    assert learn.metrics.history == history and rec.recs["lr"] == lrs and len(lrs) == 16
    # and the learner's optimizer, with its state, and its fit_lr (fit had replaced them before ResumeCB refused)
    assert learn.opt is opt and learn.fit_lr == fit_lr != 0.01

    class Refuse(Callback):  # a cancel at before_fit, which fit's stage catches: refused as well, records kept
        def before_fit(self, learn):
            raise CancelFitException()
    learn.fit(2, lr=0.3, cbs=[Refuse()])
    assert learn.opt is opt and learn.fit_lr == fit_lr and learn.metrics.history == history


def test_checkpoints_never_call_the_lr_function(tmp_path):
    """Saving a LambdaLR's state called its function at the step it was at and the next, to compare on resume: a
    function with state of its own (a call count, a random jitter) then gave other lrs with CheckpointCB than
    without it."""
    class Counting:
        def __init__(self):
            self.calls = 0

        def __call__(self, step):
            self.calls += 1
            return 0.5 ** (self.calls // 4)
    runs = []
    for path in (None, tmp_path):
        learn, rec = make_learner(path, [BatchSchedCB(partial(lr_scheduler.LambdaLR, lr_lambda=Counting()))])
        learn.fit(3)
        runs.append(rec.recs["lr"])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("others", [
    lambda: [EpochSchedCB(partial(lr_scheduler.StepLR, step_size=1, gamma=0.5))],
    lambda: [_plateau()]])
def test_an_lr_function_resumes_beside_other_schedules(tmp_path, others):
    """The lr_lambda check compared the lr in the saved param groups with base × f(step), and refused a resume
    with the saved run's own function whenever something else also set the lr (a StepLR per epoch, a plateau)."""
    def sched():
        return BatchSchedCB(partial(lr_scheduler.MultiplicativeLR, lr_lambda=_times_0_99))
    make_learner(tmp_path, [sched(), *others()])[0].fit(2)
    straight, rec_straight = make_learner(None, [sched(), *others()])
    straight.fit(4)
    resumed, rec = make_learner(tmp_path, [sched(), *others()])
    resumed.fit(4, resume=tmp_path)
    assert rec.recs["lr"] == rec_straight.recs["lr"] and same_params(straight, resumed)


def _times_0_99(step):
    return 0.99


def test_a_changed_lr_function_inside_a_sequential_schedule_is_refused(tmp_path):
    """SequentialLR([LinearLR, LambdaLR(1 - s / total)]) resumed with the function built for another total: the
    lr jumped from 0.0875 to 0.097 without a word."""
    def sched(total):
        def make(opt):
            return lr_scheduler.SequentialLR(opt, [lr_scheduler.LinearLR(opt, 0.1, total_iters=2),
                                                   lr_scheduler.LambdaLR(opt, lambda s: 1 - s / total)], milestones=[2])
        return BatchSchedCB(make)
    make_learner(tmp_path, [sched(32)])[0].fit(2)
    learn, _ = make_learner(tmp_path, [sched(100)])
    with pytest.raises(ValueError, match=r"LambdaLR.*lr_lambda.*Resume with the saved run's lr_lambda"):
        learn.fit(4, resume=tmp_path)
    make_learner(tmp_path, [sched(32)])[0].fit(4, resume=tmp_path)  # the same function resumes


def test_a_warm_up_schedule_stopped_before_its_milestone_resumes(tmp_path):
    """SequentialLR([LinearLR, LambdaLR]) saved during the warm-up: the LambdaLR not started yet sits at step -1 with
    the lr of its step 0, and the check refused the saved run's own function ("at its step -1")."""
    def sched():
        def make(opt):
            return lr_scheduler.SequentialLR(opt, [lr_scheduler.LinearLR(opt, 0.1, total_iters=20),
                                                   lr_scheduler.LambdaLR(opt, _decay_0_9)], milestones=[20])
        return BatchSchedCB(make)
    make_learner(tmp_path, [sched()])[0].fit(2)
    straight, rec_straight = make_learner(None, [sched()])
    straight.fit(4)
    resumed, rec = make_learner(tmp_path, [sched()])
    resumed.fit(4, resume=tmp_path)
    assert rec.recs["lr"] == rec_straight.recs["lr"] and same_params(straight, resumed)


def _decay_0_9(step):
    return 0.9 ** step


class _Decay:
    def __init__(self, total):
        self.total = total

    def f(self, step):
        return 1 - step / self.total


def test_a_changed_lr_method_or_a_multiplicative_beside_swa_is_refused(tmp_path):
    """Two changes the check let through: a bound method as lr_lambda (torch restores none of its object's
    attributes), and a MultiplicativeLR beside SWACB (SWA sets the lr only after the schedule's last step)."""
    from miniai.callbacks import SWACB
    make_learner(tmp_path / "method", [BatchSchedCB(partial(lr_scheduler.LambdaLR, lr_lambda=_Decay(32).f))])[0].fit(2)
    changed = BatchSchedCB(partial(lr_scheduler.LambdaLR, lr_lambda=_Decay(100).f))
    learn, _ = make_learner(tmp_path / "method", [changed])
    with pytest.raises(ValueError, match=r"LambdaLR set param group 0's lr"):
        learn.fit(4, resume=tmp_path / "method")

    def run(factor):
        return [EpochSchedCB(partial(lr_scheduler.MultiplicativeLR, lr_lambda=lambda step: factor)),
                SWACB(3, swa_lr=0.01)]
    make_learner(tmp_path / "swa", [*run(0.97), _CutPass(training=True, at=0, exc=CancelFitException, epoch=2)]
                 )[0].fit(4)  # (stopped at epoch 2: SWA, from epoch 3, not begun)
    learn, _ = make_learner(tmp_path / "swa", run(0.5))
    with pytest.raises(ValueError, match=r"MultiplicativeLR set param group 0's lr"):
        learn.fit(4, resume=tmp_path / "swa")


class _AddedGroup(Callback):
    """Adds a param group at before_fit (a temperature): at a fixed lr, or at the lr the fit made the optimizer with."""
    order = 5

    def __init__(self, fixed: bool):
        self.fixed, self.t = fixed, torch.nn.Parameter(torch.ones(()))

    def before_fit(self, learn):
        if not any(self.t is p for g in learn.opt.param_groups for p in g["params"]):
            learn.opt.add_param_group({"params": [self.t], "lr": 1e-3 if self.fixed else learn.fit_lr})

    def state_dict(self):
        return {"t": self.t.detach().clone()}

    def load_state_dict(self, state):
        self.t.data.copy_(state["t"])


@pytest.mark.parametrize("fixed", [True, False])
def test_fit_one_cycle_resumed_with_a_callback_added_group_warns_of_nothing(tmp_path, fixed):
    """The resumed fit made its optimizer at the learner's lr (0.05), not the run's (max_lr 0.2): a group a callback
    added at a fixed lr got a 4 × higher peak, and the resume warned that the user had changed settings
    ("param group 1 max_lr: 0.001 saved, 0.004 here"), telling them to start a new fit; they had changed nothing."""
    def run(path, stop=None):
        cbs = [_AddedGroup(fixed)] + ([_CutPass(training=True, at=0, exc=CancelFitException, epoch=stop)] * bool(stop))
        learn, rec = make_learner(path, cbs)
        return learn, rec, cbs[0]
    straight, rec_straight, added = run(None)
    straight.fit_one_cycle(4, max_lr=0.2)
    run(tmp_path, stop=2)[0].fit_one_cycle(4, max_lr=0.2)
    resumed, rec_resumed, added_resumed = run(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.fit_one_cycle(4, max_lr=0.2, resume=tmp_path)
    assert same_params(straight, resumed) and torch.equal(added.t, added_resumed.t)
    assert rec_resumed.recs["lr"] == rec_straight.recs["lr"][-len(rec_resumed.recs["lr"]):]
    assert resumed.fit_lr == 0.2  # the run's lr, as the callbacks saw it in the run's first fit


@pytest.mark.parametrize("how", ["fit", "learner", "fit_one_cycle"])
def test_a_numpy_lr_gives_a_checkpoint_that_resumes(tmp_path, how):
    """fit(lr=np.float64(0.05)) (an lr read from a NumPy grid): the optimizer's param groups held the NumPy number,
    the checkpoint saved it, and the safe loader refused it at resume, blaming "a numpy number in an lr_lambda"."""
    lr = np.float64(0.05)
    learn, _ = make_learner(tmp_path)
    if how == "learner":
        learn.lr = np.float32(0.05)
    stop = [_CutPass(training=True, at=0, exc=CancelFitException, epoch=2)]
    {"fit": lambda: learn.fit(2, lr=lr), "learner": lambda: learn.fit(2),
     "fit_one_cycle": lambda: learn.fit_one_cycle(3, max_lr=lr, cbs=stop)}[how]()
    resumed, _ = make_learner(tmp_path)
    if how == "fit_one_cycle":
        resumed.fit_one_cycle(3, max_lr=lr, resume=tmp_path)
    else:
        resumed.fit(3, resume=tmp_path)
    assert type(resumed.fit_lr) is float and all(type(g["lr"]) is float for g in resumed.opt.param_groups)


@pytest.mark.parametrize("how", ["fit_one_cycle", "EpochSchedCB", "SWACB"])
def test_a_resume_that_leaves_out_the_saved_runs_schedule_says_what_the_fit_trains_at(tmp_path, how):
    """A fit_one_cycle run stopped at epoch 2 and resumed with plain fit(4, resume=...) trained its last two epochs
    at the lr the cycle had reached (0.035, not annealing to 0), with a warning naming only 'BatchSchedCB_0'. It now
    names the scheduler, the lr the fit trains on at, and the call that continues a one-cycle run; a left-out SWACB's
    average, that it is lost. (Not refused: a finished warm-up or a plateau left out is a fine way to go on.)"""
    from miniai.callbacks import SWACB
    stop = _CutPass(training=True, at=0, exc=CancelFitException, epoch=2)
    make = {"fit_one_cycle": lambda learn: learn.fit_one_cycle(4, max_lr=0.05),
            "EpochSchedCB": lambda learn: learn.fit(4, cbs=[EpochSchedCB(partial(lr_scheduler.StepLR, step_size=1))]),
            "SWACB": lambda learn: learn.fit(4, cbs=[SWACB(swa_start=1, swa_lr=0.01)])}[how]
    make(make_learner(tmp_path, [stop])[0])
    assert [f.name for _, f in list_checkpoints(tmp_path)] == ["epoch_0001.pt", "epoch_0002.pt"]
    said = {"fit_one_cycle": r"without BatchSchedCB_0's OneCycleLR this fit trains on at the lr its schedule's last "
                             r"step set, 0\.0\d+, unscheduled: a fit_one_cycle run continues with "
                             r"learn.fit_one_cycle\(n, max_lr, resume=",
            "EpochSchedCB": r"EpochSchedCB_0's StepLR this fit trains on at the lr its schedule's last step set, "
                            r"0\.0005, unscheduled\)",
            "SWACB": r"without SWACB_0 its average so far is lost"}[how]
    learn, rec = make_learner(tmp_path / "new")
    with pytest.warns(UserWarning, match=said):
        learn.fit(4, resume=tmp_path)
    assert len(set(rec.recs["lr"][-16:])) == 1  # (its last two epochs, 8 batches each, did train on at one lr)
    with warnings.catch_warnings(record=True) as caught:  # an evaluation trains nothing: without the schedule it is
        warnings.simplefilter("always")  # the same; without SWA's average, the plain warning
        learn.fit(3, train=False, resume=tmp_path)
    assert any("no callback here (dropped)." in str(w.message) for w in caught) == (how == "SWACB")


def test_the_left_out_schedule_warning_names_the_lr_the_fit_trains_at(tmp_path):
    """The warning named group 0's saved lr when an lr given on resume replaced it, when other groups train at
    other lrs, and when an SWACB kept here had already stopped the schedule left out (SWALR sets the lr)."""
    from miniai.callbacks import SWACB

    def two_groups(params, lr):
        first, *rest = list(params)
        return torch.optim.SGD([{"params": [first], "lr": lr / 10}, {"params": rest}], lr=lr)
    stop = _CutPass(training=True, at=0, exc=CancelFitException, epoch=3)
    plateau = _plateau
    make_learner(tmp_path / "a", [plateau(), stop], opt_func=two_groups)[0].fit(5)
    with pytest.warns(UserWarning, match=r"ReduceLROnPlateau this fit trains on at the lrs its schedule's last step "
                                         r"set, 0\.0\d+, 0\.\d+ \(by param group\), unscheduled\)"):
        make_learner(None, opt_func=two_groups)[0].fit(5, resume=tmp_path / "a")
    with pytest.warns(UserWarning, match=r"ReduceLROnPlateau this fit trains on at the lr given, unscheduled\)"):
        make_learner(None, opt_func=two_groups)[0].fit(5, resume=tmp_path / "a", lr=0.01)
    swa = partial(SWACB, swa_start=1, swa_lr=0.01)
    make_learner(tmp_path / "b", [stop])[0].fit_one_cycle(5, max_lr=0.05, cbs=[swa()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_learner(None)[0].fit(5, resume=tmp_path / "b", cbs=[swa()])
    said = [str(w.message) for w in caught if "no callback here" in str(w.message)]
    assert len(said) == 1 and "BatchSchedCB_0" in said[0] and "trains on at" not in said[0], said


def test_a_ddp_checkpoint_resumed_by_another_number_of_processes_says_each_ranks_draws_are_lost(tmp_path):
    """A 2-process run with dropout (each rank drawing its own masks), resumed in 1 process, went on from the
    global RNG state with no word and ended 0.17 from the uninterrupted run: resume is exact or says why not."""
    from miniai.callbacks.checkpoint import load_checkpoint, rng_state, save_checkpoint
    make_learner(tmp_path)[0].fit(2)
    file = tmp_path / "epoch_0002.pt"
    state = load_checkpoint(file)
    first = rng_state()
    torch.rand(3)
    state["rng_ranks"] = [first, rng_state()]  # as all_gather saves them: the ranks drew apart
    save_checkpoint(state, tmp_path / "ranks_apart.pt")
    state["rng_ranks"] = [first, {**first, "python": rng_state()["python"], "numpy": None}]  # only Python's and
    save_checkpoint(state, tmp_path / "ranks_alike.pt")  # NumPy's differ (any unseeded script's): torch draws alike
    with pytest.warns(UserWarning, match=r"saved by 2 processes whose random draws differ \(torch's: dropout, "
                                         r"augmentation; .*\), resumed by 1: .* not continue exactly"):
        make_learner(None)[0].fit(3, resume=tmp_path / "ranks_apart.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_learner(None)[0].fit(3, resume=tmp_path / "ranks_alike.pt")
    # (session 23) a generator of the model's own, seeded by rank: the ranks' torch draws alike, their own apart
    state["generator_ranks"] = [{"model": [torch.Generator().manual_seed(r).get_state()]} for r in range(2)]
    save_checkpoint(state, tmp_path / "own_apart.pt")
    with pytest.warns(UserWarning, match=r"saved by 2 processes whose random draws differ .*or generators of their "
                                         r"own\), resumed by 1"):
        make_learner(None)[0].fit(3, resume=tmp_path / "own_apart.pt")


def test_a_resume_that_trains_nothing_and_ends_in_a_cancel_keeps_what_it_loaded(tmp_path):
    """A resume from a finished run (no epoch left) whose after_fit cancelled: the optimizer and fit_lr were put
    back as for a refused fit, beside the checkpoint's weights it had loaded (the restore read "no epoch began")."""
    make_learner(tmp_path)[0].fit(2)
    learn, _ = make_learner(None)
    learn.fit(1, lr=0.01)

    class Boom(Callback):
        def after_fit(self, learn):
            raise CancelFitException()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (nothing left to train)
        learn.fit(2, resume=tmp_path, cbs=[Boom()])
    assert learn.fit_lr == 0.05 and len(learn.opt.state) > 0  # the saved run's lr, and its optimizer state


def test_fit_one_cycle_as_an_evaluation_says_nothing_of_an_lr_never_given(tmp_path):
    """fit_one_cycle(n, train=False) passed its max_lr (learn.lr by default) to fit, which warned that the lr the
    user gave an evaluation is not used: the user gave none."""
    learn, _ = make_learner(None)
    learn.fit(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit_one_cycle(1, train=False)


def test_a_fit_refused_because_nothing_can_train_keeps_the_learners_optimizer():
    """All parameters frozen: the fit is refused before any batch, but its new optimizer had replaced the learner's,
    with its state (the check ran after the restore's cut-off; found by a regression probe)."""
    learn, _ = make_learner(None)
    learn.fit(1)
    opt, fit_lr = learn.opt, learn.fit_lr
    learn.model.requires_grad_(False)
    with pytest.raises(RuntimeError):
        learn.fit(1, lr=0.5)
    assert learn.opt is opt and learn.fit_lr == fit_lr


def test_resuming_on_other_data_of_the_same_size_warns(tmp_path):
    """Only the loaders' sizes were compared: a run resumed on other images of the same count (MNIST for
    Fashion-MNIST, another holdout split) trained on without a word."""
    from miniai.data import DataLoaders, TensorLoader
    make_learner(tmp_path)[0].fit(1)
    learn, _ = make_learner(None)
    dl = learn.dls.train
    learn.dls = DataLoaders(TensorLoader(dl.x.flip(0), dl.y.flip(0), dl.bs, shuffle=True, seed=3), learn.dls.valid)
    with pytest.warns(UserWarning, match=r"dls.train holds other data than the saved run's"):
        learn.fit(2, resume=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_learner(None)[0].fit(2, resume=tmp_path)  # the same data: nothing to say


def _temperature_learner(path, cbs=(), shape=()):
    temperature = torch.ones(shape, requires_grad=True)
    torch.manual_seed(0)  # (the model is built before make_learner seeds)
    learn, _ = make_learner(path, cbs, model=TimesTemperature(torch.nn.Sequential(
                                torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)), temperature),
                            opt_func=lambda params, lr: torch.optim.AdamW(list(params) + [temperature], lr=lr))
    return learn, temperature


def test_a_tensor_the_optimizer_trains_beside_the_model_is_saved_and_resumed(tmp_path):
    """A checkpoint kept the model and the optimizer's moments, but not a temperature the optimizer trains beside
    the model: the resumed run went on from the fresh temperature (1.30 for 1.60), without a word."""
    straight, t_straight = _temperature_learner(None)
    straight.fit(4)
    _temperature_learner(tmp_path, [_CutPass(training=True, at=0, exc=CancelFitException, epoch=2)])[0].fit(4)
    other, t_other = _temperature_learner(tmp_path / "other", shape=(1,))
    with pytest.raises(CheckpointMismatchError, match=r"tensor 0 the optimizer trains beside the model.*\(\) saved, "
                                                      r"\(1,\) here"):
        other.fit(4, resume=tmp_path)
    assert torch.equal(t_other, torch.ones(1))  # nothing was changed
    older = load_checkpoint(tmp_path / "epoch_0002.pt")
    del older["beside_model"], older["checksum"]  # as a checkpoint saved before they were
    save_checkpoint(older, tmp_path / "older.pt")
    with pytest.warns(UserWarning, match="predates saving the tensors an optimizer trains beside the model"):
        _temperature_learner(tmp_path / "older")[0].fit(3, resume=tmp_path / "older.pt")
    resumed, t_resumed = _temperature_learner(tmp_path)
    resumed.fit(4, resume=tmp_path)
    assert torch.equal(t_resumed, t_straight) and same_params(straight, resumed)


class _Unfreeze(Callback):
    """Fine-tuning: the first layer frozen by before_fit, trained from epoch `at` on (the freeze-then-unfreeze way)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def before_fit(self, learn):
        learn.model[0].requires_grad_(False)

    def before_epoch(self, learn):
        if learn.training and learn.epoch == self.at:
            learn.model[0].requires_grad_(True)


def test_a_run_resumed_after_a_callback_unfroze_layers_trains_them_as_the_saved_run_did(tmp_path):
    """Which parameters were frozen was not saved: resumed after an unfreezing epoch, the fit's before_fit froze the
    layer again and nothing unfroze it, so it never trained again (0.136 from the run never stopped), silently.
    A checkpoint now saves the frozen ones; resume puts the saved run's back and says which it changed."""
    straight, _ = make_learner(None, [_Unfreeze(2)])
    straight.fit(4)
    make_learner(tmp_path, [_Unfreeze(2), _CutPass(training=True, at=0, exc=CancelFitException, epoch=3)])[0].fit(4)
    resumed, _ = make_learner(tmp_path, [_Unfreeze(2)])
    with pytest.warns(UserWarning, match=r"frozen here, trainable in the saved run: \['0.weight', '0.bias'\]; "
                                                   r"trainable here, frozen in the saved run: none"):
        resumed.fit(4, resume=tmp_path)
    assert same_params(straight, resumed) and resumed.model[0].weight.requires_grad


def test_a_run_resumed_in_another_autocast_dtype_is_refused_naming_both(tmp_path):
    """MixedPrecisionCB's dtype was not saved: a bfloat16 run resumed under float16 trained on (0.35 from the run
    never stopped), without a word; the other way was refused as a scaler 'loaded outside a float16 fit'."""
    from miniai.callbacks.mixed_precision import MixedPrecisionCB
    make_learner(tmp_path, [MixedPrecisionCB(torch.bfloat16),
                            _CutPass(training=True, at=0, exc=CancelFitException, epoch=2)])[0].fit(4)
    resumed, _ = make_learner(tmp_path, [MixedPrecisionCB(torch.float16)])
    with pytest.raises(ValueError, match=r"trained in torch.bfloat16 autocast, this fit in torch.float16: resume "
                                         r"with MixedPrecisionCB\(torch.bfloat16\)"):
        resumed.fit(4, resume=tmp_path)
    same, _ = make_learner(tmp_path, [MixedPrecisionCB(torch.bfloat16)])
    same.fit(4, resume=tmp_path)


def test_a_resume_with_other_gradient_clipping_or_none_says_so(tmp_path):
    """GradClipCB had no state: a run resumed with another max_norm, or without it, trained on (0.27 and 0.51 from
    the run never stopped) without a word."""
    from miniai.callbacks.guards import GradClipCB
    cases = [([GradClipCB(0.1)], r"clipped with GradClipCB\(\{'max_norm': 0.01"),
             ([], r"GradClipCB_\w*'?\] has no callback here")]
    for i, (now, warning) in enumerate(cases):
        path = tmp_path / str(i)
        make_learner(path, [GradClipCB(0.01), _CutPass(training=True, at=0, exc=CancelFitException, epoch=2)]
                     )[0].fit(4)
        with pytest.warns(UserWarning, match=warning):
            make_learner(path, now)[0].fit(4, resume=path)


class _Counting(torch.nn.Module):
    """Dropout whose forward counts its calls in a plain attribute and in a non-persistent buffer: state that no
    state_dict holds."""

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        self.drop, self.calls = torch.nn.Dropout(p), 0
        self.register_buffer("seen", torch.zeros(()), persistent=False)

    def forward(self, x):
        self.calls += 1
        self.seen += len(x)
        return self.drop(x) * (1 + 0.01 * (self.calls % 3))


class _CountingLoss(torch.nn.Module):
    """MSE whose weight grows with a counter buffer: a loss with state of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("n", torch.zeros(()))

    def forward(self, preds, y):
        self.n += 1
        return torch.nn.functional.mse_loss(preds, y) * (1 + 0.01 * (self.n % 5))


class _Jitter:
    """A batch transform object whose noise follows a counter it keeps."""

    def __init__(self, scale: float = 0.1) -> None:
        self.scale, self.n = scale, 0

    def __call__(self, x):
        self.n += 1
        return x + self.scale * ((self.n % 4) - 1.5)


def _counting_learner(path, loss=None, tfm=None, p=0.2, on_val=None):
    from miniai.callbacks.augment import BatchTransformCB
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), _Counting(p), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    learn, _ = make_learner(path, [BatchTransformCB(tfm or _Jitter(), on_val=on_val)], model=model)
    learn.loss_func = loss or _CountingLoss()
    return learn


def test_settings_changed_between_save_and_resume_are_named(tmp_path):
    """Dropout's p, the loss's settings, the batch transform and the sampler were taken as changed without a word."""
    from torch.utils.data import DataLoader, TensorDataset
    make = partial(_counting_learner, loss=torch.nn.HuberLoss(delta=1.0), tfm=torch.neg)
    stopped = make(tmp_path)
    stopped.cbs.append(_CutPass(training=True, at=0, exc=CancelFitException, epoch=2))
    stopped.fit(4)
    resumed = make(tmp_path, loss=torch.nn.HuberLoss(delta=2.0), tfm=torch.tanh, p=0.5, on_val=True)
    # (probe P14, session 22: the passes a BatchTransformCB runs in, on_val, were not compared)
    with pytest.warns(UserWarning, match=r"model\.1\.drop\.p: 0\.2 saved, 0\.5 here.*loss_func\.delta: 1\.0 saved, "
                                         r"2\.0 here.*BatchTransformCB_0\.tfm: neg saved, tanh here.*"
                                         r"BatchTransformCB_0\.on_val: False saved, True here"):
        resumed.fit(4, resume=tmp_path)
    # a file written before the transform's passes were compared resumes without a word of them
    file = tmp_path / "epoch_0002.pt"
    state = torch.load(file, weights_only=False)
    state["setup"] = {k: v for k, v in state["setup"].items() if not k.endswith((".on_train", ".on_val", ".inputs"))}
    (tmp_path / "old").mkdir()
    torch.save(state, tmp_path / "old" / "epoch_0002.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make(tmp_path / "old", loss=torch.nn.HuberLoss(delta=1.0), tfm=torch.neg).fit(4, resume=tmp_path / "old")
    assert not [w for w in caught if "outside every state_dict" in str(w.message)], [str(w.message) for w in caught]
    # a torch DataLoader shuffled in the saved run, in order here
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    path = tmp_path / "dl"
    for i, shuffle in enumerate((True, False)):
        learn, _ = make_learner(path, [_CutPass(training=True, at=0, exc=CancelFitException, epoch=2)] * (i == 0))
        learn.dls.train = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=shuffle)
        if i == 0:
            learn.fit(4)
        else:
            with pytest.warns(UserWarning, match=r"dls\.train\.sampler: RandomSampler saved, SequentialSampler here"):
                learn.fit(4, resume=path)


def _resumes_silently_as_never_stopped(make, tmp_path) -> None:
    """`make(path, extra_cbs=())` builds a learner checkpointing into path: a run stopped after 2 of 4 epochs and
    resumed warns of nothing and ends as the run never stopped."""
    straight = make(tmp_path / "a")
    straight.fit(4)
    make(tmp_path / "b", [_CutPass(training=True, at=0, exc=CancelFitException, epoch=2)]).fit(4)
    resumed = make(tmp_path / "b")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.fit(4, resume=tmp_path / "b")
    assert same_params(straight, resumed)


def test_a_resume_of_the_same_setup_says_nothing_of_settings(tmp_path):
    """The comparison must not cry wolf: the same modules (conv, BatchNorm, a partial loss, a transform function)
    give no warning, and the resumed run is the run never stopped."""
    from miniai.callbacks.augment import BatchTransformCB

    def make(path, extra=()):
        torch.manual_seed(0)
        nn = torch.nn
        model = nn.Sequential(nn.Unflatten(1, (1, 4)), nn.Conv1d(1, 3, 3, padding=1), nn.BatchNorm1d(3), nn.ReLU(),
                              nn.Flatten(), nn.Linear(12, 1))
        learn, _ = make_learner(path, [BatchTransformCB(partial(torch.mul, other=1.5)), *extra], model=model)
        learn.loss_func = partial(torch.nn.functional.huber_loss, delta=0.5)
        return learn
    _resumes_silently_as_never_stopped(make, tmp_path)


class _Mode(str, __import__("enum").Enum):
    TRAIN = "train"


class _Cache(torch.nn.Module):
    """Keeps the length of the last input it saw, as a rotary embedding's cache does: set in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.seen_len = None

    def forward(self, x):
        self.seen_len = x.shape[-1]
        return x


class _DropoutSchedule(Callback):
    """Sets Dropout's p from the epoch, holding no state: a resume sets it again at before_epoch."""

    def before_epoch(self, learn):
        learn.model[1].p = 0.2 / (1 + learn.epoch)


class _Stretch:
    """A batch transform with one setting and no state."""

    def __init__(self, k: float = 0.0) -> None:
        self.k = k

    def __call__(self, x):
        return x * (1 + self.k)


class _StretchRamp(Callback):
    """Moves a batch transform's setting each epoch, holding no state (an augmentation's strength ramped up)."""

    def __init__(self, tfm: _Stretch) -> None:
        self.tfm = tfm

    def before_epoch(self, learn):
        self.tfm.k = 0.1 * learn.epoch


@pytest.mark.parametrize("case", ["numpy hyperparameters", "weight_norm", "spectral_norm", "prune", "nan sentinel",
                                  "numpy strings and enums", "a forward cache", "a setting a callback moves",
                                  "a cache filled before the fit", "the model's bound method as the loss",
                                  "a transform's setting a callback moves"])
def test_a_resume_of_the_same_setup_with_settings_of_these_kinds_says_nothing(tmp_path, case):
    """NumPy numbers as a Dropout's p or a loss's label_smoothing, NumPy strings or an Enum as a model's attribute
    went into the checkpoint as they were, and torch's safe loader refused the file on resume; the weight that
    torch.nn.utils.weight_norm, spectral_norm and prune keep as a plain attribute (recomputed from the parameters
    before each forward), a NaN float attribute (nan != nan), a value a forward caches and a setting a callback
    with no state moves each epoch were warned of as changed on every resume, the run continuing exactly."""
    import torch.nn.utils.prune as prune

    def make(path, extra=()):
        torch.manual_seed(0)
        p = np.linspace(0.1, 0.3, 3)[1] if case.startswith("numpy") else 0.2
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(p), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        {"weight_norm": lambda: torch.nn.utils.weight_norm(model[0]),
         "spectral_norm": lambda: torch.nn.utils.spectral_norm(model[0]),
         "prune": lambda: prune.l1_unstructured(model[0], "weight", amount=0.3),
         "nan sentinel": lambda: setattr(model[0], "clip", float("nan")),
         "numpy strings and enums": lambda: (setattr(model, "classes", list(np.unique(np.array(["b", "a"])))),
                                             setattr(model[0], "mode", _Mode.TRAIN)),
         "a forward cache": lambda: model.insert(0, _Cache())}.get(case, lambda: None)()
        if case in ("a cache filled before the fit", "the model's bound method as the loss"):
            model.insert(0, _Cache())
            model(torch.zeros(2, 4)) if case == "a cache filled before the fit" and extra else None
        extra = [*extra, _DropoutSchedule()] if case == "a setting a callback moves" else extra
        if case == "a transform's setting a callback moves":
            from miniai.callbacks.augment import BatchTransformCB
            stretch = _Stretch()
            extra = [*extra, BatchTransformCB(stretch), _StretchRamp(stretch)]
        learn, _ = make_learner(path, list(extra), model=model)
        if case == "the model's bound method as the loss":
            model.loss = lambda preds, y: torch.nn.functional.mse_loss(preds, y)
            learn.loss_func = types.MethodType(lambda self, preds, y: torch.nn.functional.mse_loss(preds, y), model)
        if case.startswith("numpy"):
            learn.loss_func = partial(torch.nn.functional.huber_loss, delta=np.float64(0.5))
        return learn
    _resumes_silently_as_never_stopped(make, tmp_path)


class _SmoothedCE(torch.nn.Module):
    """A loss module wrapping torch's: its settings are its submodule's."""

    def __init__(self, smoothing: float) -> None:
        super().__init__()
        self.ce = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)

    def forward(self, preds, y):
        return self.ce(preds, y)


class _Scaled:
    def __init__(self, scale: float) -> None:
        self.scale = scale

    def loss(self, preds, y):
        return torch.nn.functional.cross_entropy(preds * self.scale, y)


def _smoothed(smoothing: float):
    """A loss made by a factory: its setting is a closure's."""
    def loss(preds, y):
        return torch.nn.functional.cross_entropy(preds, y, label_smoothing=smoothing)
    return loss


def _scaled_by_default(scale: float):
    """A loss whose setting is an argument's default (lambda preds, y, scale=2.0: ...)."""
    return lambda preds, y, scale=scale: torch.nn.functional.cross_entropy(preds * scale, y)


class _TopK(MulticlassAccuracy):
    def __init__(self, topk: int = 1) -> None:
        super().__init__(k=topk)


def test_settings_inside_a_compose_a_loss_module_or_a_bound_methods_object_are_compared_too(tmp_path):
    """batch_tfms(RandomFlip(p)) (a Compose holding a list of transforms), a loss module whose setting is its
    submodule's, and a loss that is a bound method took other settings on resume without a word."""
    from miniai.augment import RandomFlip, batch_tfms
    from miniai.callbacks import CheckpointCB
    from miniai.callbacks.augment import BatchTransformCB
    from miniai.data import DataLoaders, TensorLoader
    from miniai.learner import TrainLearner
    cases = {"BatchTransformCB_0.tfm.tfms.0.p: 0.5 saved, 1.0 here":
             lambda v: dict(cbs=[BatchTransformCB(batch_tfms(RandomFlip(p=v)))]),
             "loss_func.ce.label_smoothing: 0.0 saved, 0.3 here": lambda v: dict(loss_func=_SmoothedCE(v)),
             "loss_func.scale: 1.0 saved, 3.0 here": lambda v: dict(loss_func=_Scaled(v).loss),
             # (probe S25 ckptmix) a loss made by a factory, or with a default: resumed with another, without a word
             "loss_func.smoothing: 0.0 saved, 0.5 here": lambda v: dict(loss_func=_smoothed(v)),
             "loss_func.scale: 2.0 saved, 1.0 here": lambda v: dict(loss_func=_scaled_by_default(v)),
             # and a metric computing something else under its name (top-2 accuracy resumed as top-1): the run's
             # history, its best checkpoint and its early stopping mixed the two
             "MetricsCB_0.acc.k: 2.0 saved, 1.0 here": lambda v: dict(cbs=[MetricsCB(acc=MulticlassAccuracy(
                 k=int(v)))]),
             # (regression round T8) a subclass storing its argument under its parent's name (topk -> k)
             "MetricsCB_0.top.k: 3.0 saved, 1.0 here": lambda v: dict(cbs=[MetricsCB(top=_TopK(int(v)))])}
    for i, (said, setup) in enumerate(cases.items()):
        saved, here = (float(v) for v in re.findall(r"(\d\.\d) (?:saved|here)", said))

        def make(value, extra=()):
            torch.manual_seed(0)
            x, y = torch.randn(32, 1, 2, 2), torch.arange(32) % 3
            kw = {"loss_func": torch.nn.functional.cross_entropy, "cbs": [], **setup(value)}
            return TrainLearner(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)),
                                DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8)), kw["loss_func"], lr=0.1,
                                cbs=[*kw["cbs"], CheckpointCB(tmp_path / str(i)), *extra])
        make(saved, [_CutPass(training=True, at=0, exc=CancelFitException, epoch=2)]).fit(4)
        with pytest.warns(UserWarning, match=re.escape(re.sub(r"(\d)\.0 saved, (\d)\.0 here", r"\1 saved, \2 here",
                                                              said) if "MetricsCB" in said else said)):
            make(here).fit(4, resume=tmp_path / str(i))
        if i < 3:
            continue
        i += 100  # the same settings again: nothing to say
        make(saved, [_CutPass(training=True, at=0, exc=CancelFitException, epoch=2)]).fit(4)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make(saved).fit(4, resume=tmp_path / str(i))
        assert not [w for w in caught if "kept outside" in str(w.message)], said


def test_a_model_with_lazy_layers_resumes_as_the_run_never_stopped(tmp_path):
    """A fresh model's lazy layer has no shape before its first forward: resume failed reading it ("Can't access the
    shape of an uninitialized parameter"), where torch's load_state_dict gives it the checkpoint's."""
    def make(path, extra=()):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.LazyLinear(8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        return make_learner(path, list(extra), model=model)[0]
    _resumes_silently_as_never_stopped(make, tmp_path)


def test_a_validation_loader_of_another_batch_size_is_no_other_run_but_one_of_other_items_is(tmp_path):
    """A resume whose validation loader had another batch size (a run on another number of processes, whose
    validation batch is each rank's) was warned of as a run that "won't end as the saved run would have": the
    validation batches train nothing, and the run ended exactly as the saved one."""
    from miniai.data import TensorLoader
    straight, _ = make_learner(tmp_path / "a")
    straight.fit(4)
    make_learner(tmp_path / "b", [_CutPass(training=True, at=0, exc=CancelFitException, epoch=2)])[0].fit(4)
    resumed, _ = make_learner(tmp_path / "b")
    valid = resumed.dls.valid
    resumed.dls.valid = TensorLoader(valid.x, valid.y, bs=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.fit(4, resume=tmp_path / "b")
    assert same_params(straight, resumed)
    again, _ = make_learner(tmp_path / "b")
    again.dls.valid = TensorLoader(valid.x[:12], valid.y[:12], bs=8)
    with pytest.warns(UserWarning, match=r"dls.valid gives 2 batches of 12 items an epoch, the saved run's 2 of 16"):
        again.fit(4, resume=tmp_path / "b" / "epoch_0002.pt")


def test_an_evaluation_of_a_checkpoint_without_the_runs_training_callbacks_says_nothing_of_them(tmp_path):
    # README's way to evaluate a checkpoint, fit(n, train=False, resume=dir), warned that the fit_one_cycle's
    # schedule (or the run's GradClipCB, EarlyStoppingCB) was "dropped": an evaluation trains nothing with them
    from miniai.callbacks import GradAccumCB, GradClipCB

    class Counter(Callback):  # a callback of the user's with a state: an evaluation may need it, so it is named
        n = 0
        def after_batch(self, learn): self.n += 1
        def state_dict(self): return {"n": self.n}
        def load_state_dict(self, state): self.n = state["n"]
    trained, _ = make_learner(tmp_path, [GradClipCB(1.0), GradAccumCB(2), EarlyStoppingCB(patience=5), Counter()])
    trained.fit_one_cycle(2, max_lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn, _ = make_learner(None, [Counter()])
        learn.fit(3, train=False, resume=tmp_path)
    assert learn.metrics.last["valid_loss"] == pytest.approx(trained.metrics.last["valid_loss"])
    with pytest.warns(UserWarning, match=r"its state for \['Counter_0'\] has no callback here"):
        make_learner(None)[0].fit(3, train=False, resume=tmp_path)


class _LateHalving(Callback):
    """Halves the lr at each epoch's end, in cleanup_epoch, ordered after CheckpointCB (80) by the user."""
    order = 90

    def __init__(self):
        self.n = 0

    def cleanup_epoch(self, learn):
        if not learn.training:
            self.n += 1
            for g in learn.opt.param_groups:
                g["lr"] = 0.01 / 2 ** self.n

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_a_callback_whose_cleanup_epoch_runs_after_the_checkpoint_is_saved_is_warned_of(tmp_path):
    """(probe P42) A callback of order 90 halving the lr in cleanup_epoch changed its state after CheckpointCB (80)
    had saved the epoch: the resumed run trained an epoch at the previous lr (valid loss 4.70 for 4.73), silently."""
    with pytest.warns(UserWarning, match=r"_LateHalving \(order 90\) has a cleanup_epoch, which runs after "
                                         r"CheckpointCB \(order 80\) has saved.*after_epoch.*order below 80"):
        make_learner(tmp_path, [_LateHalving()])[0].fit(1)
    early = _LateHalving()
    early.order = 50  # before the save: nothing is said
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_learner(tmp_path / "early", [early])[0].fit(1)


@pytest.mark.parametrize("key", ["callbacks", "grads", "rng"])
def test_a_checkpoint_lacking_what_a_resume_reads_is_refused_before_anything_is_loaded(tmp_path, key):
    """(probe S25 ckptmix) A tagged file trimmed by hand failed with a bare KeyError, after the weights (and for
    'rng', the optimizer and callbacks) were loaded into the learner the refused resume should leave alone."""
    make_learner(tmp_path / "run")[0].fit(2)
    state = load_checkpoint(tmp_path / "run")
    trimmed = tmp_path / "trimmed" / "epoch_0002.pt"
    trimmed.parent.mkdir()
    torch.save({k: v for k, v in state.items() if k not in (key, "checksum")}, trimmed)
    learn = make_learner(tmp_path / "other")[0]
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=rf"lacks '{key}'.*load_state_dict\(load_checkpoint"):
        learn.fit(3, resume=trimmed)
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in before.items())


def test_a_metric_of_ones_own_with_counts_as_attributes_is_no_setting_on_resume(tmp_path):
    """(regression round T7) A metric keeping `correct` and `total` as public ints: a resume warned 'MetricsCB_0.acc.
    total: 32 saved, 0 here', a count the pass resets, no setting (its constructor's arguments are)."""
    from miniai.data import DataLoaders, TensorLoader
    from miniai.learner import TrainLearner
    from miniai.callbacks import CheckpointCB

    class MyAcc:
        def __init__(self, k: int = 1):
            self.k = k
            self.reset()

        def reset(self):
            self.correct, self.total = 0, 0

        def update(self, preds, y):
            self.correct += int((preds.argmax(1) == y).sum())
            self.total += len(y)

        def compute(self):
            return torch.tensor(self.correct / max(self.total, 1))

    def make(k=1):
        torch.manual_seed(0)
        x, y = torch.randn(32, 4), torch.arange(32) % 3
        return TrainLearner(torch.nn.Linear(4, 3), DataLoaders(TensorLoader(x, y, 8), TensorLoader(x[:16], y[:16], 8)),
                            torch.nn.functional.cross_entropy, lr=0.1, cbs=[MetricsCB(log_fn=None, acc=MyAcc(k))])
    learn = make()
    learn.fit(1)
    learn.fit(4, cbs=[CheckpointCB(tmp_path), _CutPass(training=True, at=0, exc=CancelFitException, epoch=2)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make().fit(4, resume=tmp_path)
    assert not [w for w in caught if "kept outside" in str(w.message)], [str(w.message) for w in caught]
    with pytest.warns(UserWarning, match=r"MetricsCB_0.acc.k: 1 saved, 2 here"):
        make(2).fit(4, resume=tmp_path / "epoch_0002.pt", cbs=[CheckpointCB(tmp_path / "other")])


@pytest.mark.parametrize("version", [None, 2])
def test_a_checkpoint_of_an_older_setup_compares_only_the_settings_it_holds(tmp_path, version):
    """(regression round T10) A file written before metrics' settings were compared (or before their parents'
    were: setup version 2) was told 'MetricsCB_0.acc.k: none saved, 1 here' on an unchanged resume."""
    from miniai.data import DataLoaders, TensorLoader
    from miniai.learner import TrainLearner
    from miniai.callbacks import CheckpointCB

    def make():
        torch.manual_seed(0)
        x, y = torch.randn(32, 4), torch.arange(32) % 3
        return TrainLearner(torch.nn.Linear(4, 3), DataLoaders(TensorLoader(x, y, 8), TensorLoader(x[:16], y[:16], 8)),
                            torch.nn.functional.cross_entropy, lr=0.1,
                            cbs=[MetricsCB(log_fn=None, acc=MulticlassAccuracy())])
    make().fit(2, cbs=[CheckpointCB(tmp_path / "run")])
    state = load_checkpoint(tmp_path / "run")
    setup = {k: v for k, v in state["setup"].items() if not k.startswith("MetricsCB") and k != "setup version"}
    if version is not None:
        setup["setup version"] = version
    older = tmp_path / "older" / "epoch_0002.pt"
    older.parent.mkdir()
    torch.save({**{k: v for k, v in state.items() if k != "checksum"}, "setup": setup}, older)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make().fit(3, resume=older)
    assert not [w for w in caught if "kept outside" in str(w.message)], [str(w.message) for w in caught]


_SCALE = 1.0  # a module-level setting a lambda loss reads (the test below changes it, and puts it back)


class _WeightedMSE(torch.nn.Module):
    """A loss module keeping its weight as a plain tensor attribute (not a buffer), and a running mean likewise."""
    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w, self.mean = w, torch.ones(())

    def forward(self, p, y):
        loss = (self.w * (p - y) ** 2).mean()
        self.mean.mul_(0.5).add_(0.5 * loss.detach())
        return loss


class _WeightedMAE:
    """A metric of one's own given a tensor argument."""
    def __init__(self, weights: torch.Tensor):
        self.weights = weights
        self.reset()

    def reset(self):
        self.s, self.n = 0.0, 0
        return self

    def update(self, p, y):
        self.s, self.n = self.s + float((self.weights * (p - y).abs()).sum()), self.n + len(p)
        return self

    def compute(self):
        return torch.tensor(self.s / max(self.n, 1))


def _scaled_mse(p, y, power=2):
    return _SCALE * ((p - y).abs() ** power).mean()


def _calls_scaled_mse(p, y):
    return _scaled_mse(p, y)


class _ScaledLoss:
    def loss(self, p, y):
        return _SCALE * torch.nn.functional.mse_loss(p, y)


class _ScaledCall:
    def __call__(self, p, y):
        return _SCALE * torch.nn.functional.mse_loss(p, y)


class _ScaledModule(torch.nn.Module):
    def forward(self, p, y):
        return _SCALE * torch.nn.functional.mse_loss(p, y)


def test_a_loss_modules_tensor_a_metrics_tensor_argument_and_a_global_a_lambda_loss_reads_are_compared(tmp_path):
    """(regression round T15) A loss module's weight kept as a plain tensor attribute, a metric's tensor argument
    (class weights) and a module-level number a lambda loss reads each took another value on resume without a
    word (a partial's or a factory closure's were warned of); a running mean kept as a plain tensor is no setting."""
    global _SCALE
    from miniai.callbacks import CheckpointCB
    from tests.synth import linear_dls
    from miniai.learner import TrainLearner
    scale = "loss_func.global _SCALE: 1.0 saved, 10.0 here"
    cases = [("loss_func.w: tensor 1.0", lambda v: (_WeightedMSE(torch.tensor(v)), [])),
             ("MetricsCB_0.m.weights: tensor 1.0", lambda v: (
                 torch.nn.functional.mse_loss, [MetricsCB(m=_WeightedMAE(torch.tensor(v)), log_fn=None)])),
             (scale, lambda v: (lambda p, y: _SCALE * torch.nn.functional.mse_loss(p, y), [])),
             # (regression round T16) the same global read by a partial's function, a bound method, a loss module's
             # forward, or a helper the loss calls
             (scale, lambda v: (partial(_scaled_mse, power=2), [])),
             (scale, lambda v: (_ScaledLoss().loss, [])),
             (scale, lambda v: (_ScaledModule(), [])),
             (scale, lambda v: (_calls_scaled_mse, [])),
             (scale, lambda v: (_ScaledCall(), []))]  # (regression round T17) a callable object's __call__
    try:
        for i, (said, setup) in enumerate(cases):
            for value, warned in ((1.0, False), (10.0, True)):
                def make(v):
                    global _SCALE
                    torch.manual_seed(0)
                    _SCALE = v
                    loss, cbs = setup(v)
                    return TrainLearner(torch.nn.Linear(1, 1), linear_dls(), loss, lr=0.05,
                                        cbs=[*cbs, CheckpointCB(tmp_path / f"{i}{warned}")])
                make(1.0).fit(1)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    make(value).fit(2, resume=tmp_path / f"{i}{warned}")
                told = [str(w.message) for w in caught if "kept outside" in str(w.message)]
                assert bool(told) == warned and (not warned or said in told[0]), (said, told)
    finally:
        _SCALE = 1.0


size = 28  # a script's image size, which a loss's preds.size(...) is no read of


def test_an_attributes_name_a_loss_reads_is_no_global_of_that_name(tmp_path):
    """(regression round T17) F.mse_loss(preds.view(preds.size(0), -1), y) was told 'loss_func.global size: 28
    saved, 64 here' on resume when the script's image size changed (progressive resizing): co_names holds the
    attributes' names too."""
    global size
    from miniai.callbacks import CheckpointCB
    from miniai.learner import TrainLearner
    from tests.synth import linear_dls

    def loss(preds, y):
        return torch.nn.functional.mse_loss(preds.view(preds.size(0), -1), y)
    try:
        TrainLearner(torch.nn.Linear(1, 1), linear_dls(), loss, cbs=[CheckpointCB(tmp_path)]).fit(1)
        size = 64
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            TrainLearner(torch.nn.Linear(1, 1), linear_dls(), loss).fit(2, resume=tmp_path)
        assert not [w for w in caught if "kept outside" in str(w.message)], [str(w.message) for w in caught]
    finally:
        size = 28


def test_the_advice_to_load_a_checkpoints_weights_works_for_a_compiled_model(tmp_path):
    """(probe S26 compile) The refusals' 'learn.model.load_state_dict(load_checkpoint(f)['model'])' failed for a
    torch.compile(model) learner (missing '_orig_mod.' keys): a checkpoint's keys are the module's own."""
    import re as _re
    from miniai.callbacks import CheckpointCB
    from miniai.callbacks.checkpoint import unwrap  # noqa: F401 -- the advice's own names
    from miniai.learner import TrainLearner
    from tests.synth import linear_dls

    def make(momentum):
        return TrainLearner(torch.compile(torch.nn.Linear(1, 1), backend="eager"), linear_dls(),
                            torch.nn.functional.mse_loss, lr=0.1,
                            opt_func=partial(torch.optim.SGD, momentum=momentum))
    make(0.0).fit(1, cbs=[CheckpointCB(tmp_path)])
    learn = make(0.9)
    with pytest.raises(CheckpointMismatchError, match=r"unwrap\(learn.model\).load_state_dict") as info:
        learn.fit(2, resume=tmp_path)
    call = _re.search(r"(unwrap\(learn.model\).load_state_dict\(load_checkpoint\('[^']+'\)\['model'\]\))",
                      str(info.value)).group(1)
    eval(call)  # the advice, as given
    assert torch.equal(learn.model.weight, load_checkpoint(tmp_path / "epoch_0001.pt")["model"]["weight"])


def test_a_version_4_checkpoints_loss_globals_are_not_compared(tmp_path):
    """(regression round T18) Files of setup version 4 read a loss's globals otherwise (attributes' names taken
    for globals, no __call__'s): an unchanged resume was told 'loss_func.global size: 3 saved, none here'."""
    from miniai.callbacks import CheckpointCB
    from miniai.learner import TrainLearner
    from tests.synth import linear_dls
    TrainLearner(torch.nn.Linear(1, 1), linear_dls(), _ScaledCall()).fit(2, cbs=[CheckpointCB(tmp_path / "run")])
    state = load_checkpoint(tmp_path / "run")
    setup = {k: v for k, v in state["setup"].items() if ".global " not in k}
    setup.update({"setup version": 4, "loss_func.global size": 3})
    older = tmp_path / "older" / "epoch_0002.pt"
    older.parent.mkdir()
    torch.save({**{k: v for k, v in state.items() if k != "checksum"}, "setup": setup}, older)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TrainLearner(torch.nn.Linear(1, 1), linear_dls(), _ScaledCall()).fit(3, resume=older)
    assert not [w for w in caught if "kept outside" in str(w.message)], [str(w.message) for w in caught]


def test_a_checkpoint_differing_only_by_a_compiled_parts_keys_says_so(tmp_path):
    """(regression round T20) A part compiled in the saved run and not in the resumed one (as the hook refusal
    advises) was refused as 'a different model: build the same model', which it is."""
    from miniai.callbacks import CheckpointCB
    from miniai.learner import TrainLearner
    from tests.synth import linear_dls

    def make(compiled):
        torch.manual_seed(0)
        body = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.ReLU())
        return TrainLearner(torch.nn.Sequential(torch.compile(body, backend="eager") if compiled else body,
                                                torch.nn.Linear(4, 1)), linear_dls(), torch.nn.functional.mse_loss)
    make(True).fit(1, cbs=[CheckpointCB(tmp_path)])
    with pytest.raises(CheckpointMismatchError, match=r"differ only by torch.compile's '_orig_mod.'.*compile the "
                                                      r"same parts as the run that saved it"):
        make(False).fit(2, resume=tmp_path)


@pytest.mark.parametrize("make", [lambda: GradAccumCB(np.arange(1, 5)[1]), lambda: GradClipCB(np.logspace(-1, 1, 3)[0]),
                                  lambda: GradClipCB(1.0, norm_type=np.float32(2.0))])
def test_numpy_numbers_given_to_grad_accumulation_or_clipping_resume(tmp_path, make):
    """GradAccumCB(np.int64(2)) and GradClipCB(np.float64(0.1)), as a sweep over np.arange gives them, were saved as
    numpy numbers, which the safe loader refuses: every checkpoint of the run failed to resume, blaming 'a numpy
    number in an lr_lambda' (probe amp, s27)."""
    import torch.nn.functional as F
    from torch import nn
    from miniai.callbacks import CheckpointCB
    from miniai.supervised import TrainLearner
    from tests.synth import linear_dls

    class Interrupt(Callback):
        def before_epoch(self, learn):
            if learn.epoch == 1:
                raise KeyboardInterrupt

    def learner(*cbs):
        torch.manual_seed(0)
        return TrainLearner(nn.Linear(1, 1), linear_dls(), F.mse_loss, lr=0.05, cbs=[make(), *cbs])
    with pytest.raises(KeyboardInterrupt):
        learner(CheckpointCB(tmp_path)).fit(3, cbs=[Interrupt()])
    resumed, straight = learner(CheckpointCB(tmp_path)), learner()
    resumed.fit(3, resume=tmp_path)
    straight.fit(3)
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), straight.model.parameters()))


def _resume_warnings(tmp_path, saved_loss, resumed_loss) -> list[str]:
    """The 'kept outside' warnings a resume with `resumed_loss` gets from a run saved with `saved_loss`."""
    from miniai.callbacks import CheckpointCB
    from miniai.learner import TrainLearner
    from torch.utils.data import DataLoader, TensorDataset
    from types import SimpleNamespace
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g))
    dls = SimpleNamespace(train=DataLoader(data, 8), valid=DataLoader(data, 8))
    torch.manual_seed(0)
    TrainLearner(torch.nn.Linear(4, 3), dls, saved_loss).fit(1, cbs=[CheckpointCB(tmp_path / "run")])
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TrainLearner(torch.nn.Linear(4, 3), dls, resumed_loss).fit(2, resume=tmp_path / "run")
    return [str(w.message) for w in caught if "kept outside" in str(w.message)]


def test_a_loss_wrapped_in_partial_is_compared_with_its_functions_defaults(tmp_path):
    """(probe ckpt) partial(F.cross_entropy) against F.cross_entropy was told that ignore_index and reduction
    differed ('mean saved, none here', which reads as reduction='none'): a partial's settings were its keywords
    alone, a function's its defaults. The same call is no change; a changed keyword is named alone."""
    import torch.nn.functional as F
    assert _resume_warnings(tmp_path / "a", F.cross_entropy, partial(F.cross_entropy)) == []
    assert _resume_warnings(tmp_path / "b", partial(F.cross_entropy, reduction="mean"), F.cross_entropy) == []
    [told] = _resume_warnings(tmp_path / "c", F.cross_entropy, partial(F.cross_entropy, label_smoothing=0.3))
    assert "loss_func.label_smoothing: 0.0 saved, 0.3 here" in told
    assert "ignore_index" not in told and "reduction" not in told, told


def test_a_setting_only_one_side_has_is_said_to_be_not_set_there_not_none(tmp_path):
    """(probe ckpt) A setting missing on one side was shown as 'none', which reads as a value (reduction='none')."""
    class Scaled(torch.nn.Module):
        def forward(self, p, y):
            return torch.nn.functional.cross_entropy(p, y) * getattr(self, "scale", 1.0)
    extra = Scaled()
    extra.scale = 2.0
    [told] = _resume_warnings(tmp_path, Scaled(), extra)
    assert "loss_func.scale: (not set) saved, 2.0 here" in told, told


def test_a_torch_loader_over_a_tensor_dataset_holding_other_data_of_the_same_size_is_said_so_on_resume(tmp_path):
    """(probe ckpt) Resumed on a DataLoader(TensorDataset) of other values (another split seed, another
    preprocessing), the same size: nothing was said, and the weights ended 0.27 from the run never stopped. A
    TensorLoader's tensors were checksummed; a TensorDataset's are too now."""
    from torch.utils.data import DataLoader, TensorDataset
    from types import SimpleNamespace
    from miniai.callbacks import CheckpointCB
    from miniai.learner import TrainLearner

    def learner(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(48, 2, generator=g)
        train, valid = (TensorDataset(part, part.sum(1, keepdim=True)) for part in (x[:32], x[32:]))
        torch.manual_seed(0)
        dls = SimpleNamespace(train=DataLoader(train, 8), valid=DataLoader(valid, 8))
        return TrainLearner(torch.nn.Linear(2, 1), dls, torch.nn.functional.mse_loss)
    learner(0).fit(1, cbs=[CheckpointCB(tmp_path / "run")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same data: nothing to say
        learner(0).fit(2, resume=tmp_path / "run")
    with pytest.warns(UserWarning, match=r"dls.train holds other data than the saved run's"):
        learner(1).fit(3, resume=tmp_path / "run" / "epoch_0001.pt")


def test_a_partial_over_a_loss_module_is_compared_by_the_modules_settings(tmp_path):
    """(regression round 33) partial(nn.CrossEntropyLoss(label_smoothing=0.1)) resumed as partial(nn.CrossEntropyLoss())
    was not warned of (a partial's settings were its function's defaults, and a module has none), and
    nn.CrossEntropyLoss() resumed as partial(nn.CrossEntropyLoss()) was told three settings differed."""
    from torch import nn
    [told] = _resume_warnings(tmp_path / "a", partial(nn.CrossEntropyLoss(label_smoothing=0.1)),
                              partial(nn.CrossEntropyLoss()))
    assert "label_smoothing: 0.1 saved, 0.0 here" in told, told
    assert _resume_warnings(tmp_path / "b", nn.CrossEntropyLoss(), partial(nn.CrossEntropyLoss())) == []


def test_a_version_6_checkpoint_of_a_partial_over_a_loss_module_resumes_without_a_false_alarm(tmp_path):
    """(regression round 34) Files of setup version 6 recorded no settings of a partial over a module: an unchanged
    resume was told reduction, ignore_index and label_smoothing were '(not set) saved'."""
    from torch import nn
    from miniai.callbacks import CheckpointCB
    from miniai.learner import TrainLearner
    from tests.synth import linear_dls
    loss = partial(nn.MSELoss(reduction="mean"))
    TrainLearner(torch.nn.Linear(1, 1), linear_dls(), loss).fit(1, cbs=[CheckpointCB(tmp_path / "run")])
    state = load_checkpoint(tmp_path / "run")
    setup = {k: v for k, v in state["setup"].items() if not k.startswith("loss_func.")}
    setup["setup version"] = 6
    older = tmp_path / "older" / "epoch_0001.pt"
    older.parent.mkdir()
    torch.save({**{k: v for k, v in state.items() if k != "checksum"}, "setup": setup}, older)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TrainLearner(torch.nn.Linear(1, 1), linear_dls(), loss).fit(2, resume=older)
    assert not [w for w in caught if "kept outside" in str(w.message)], [str(w.message) for w in caught]


def test_an_older_checkpoint_resumed_with_an_added_transform_is_still_said(tmp_path):
    """(regression round 35) Setup version 7 made a key only here no change for every older file: a version-6 run
    resumed with a BatchTransformCB added trained on changed inputs unsaid (version 6 had said it). Only the keys
    version 7 added (a loss's and a transform's settings) are left out for older files."""
    from miniai.callbacks import BatchTransformCB, CheckpointCB
    from miniai.learner import TrainLearner
    from tests.synth import linear_dls
    TrainLearner(torch.nn.Linear(1, 1), linear_dls(), torch.nn.functional.mse_loss).fit(
        1, cbs=[CheckpointCB(tmp_path / "run")])
    state = load_checkpoint(tmp_path / "run")
    older = tmp_path / "older" / "epoch_0001.pt"
    older.parent.mkdir()
    torch.save({**{k: v for k, v in state.items() if k != "checksum"}, "setup": {**state["setup"],
                                                                                 "setup version": 6}}, older)
    learn = TrainLearner(torch.nn.Linear(1, 1), linear_dls(), torch.nn.functional.mse_loss,
                         cbs=[BatchTransformCB(partial(torch.add, other=0.5))])
    with pytest.warns(UserWarning, match=r"kept outside.*BatchTransformCB_0"):
        learn.fit(2, resume=older)


def test_an_older_checkpoint_resumed_with_a_transform_setting_added_is_still_said(tmp_path):
    """(regression round 36) Version 7's threshold for transform keys silenced a setting added to a transform on
    resume of a version-6 file (x + 1.5 for x + 0.5, unsaid), which version 6 recorded and said."""
    from miniai.callbacks import BatchTransformCB, CheckpointCB
    from miniai.learner import TrainLearner
    from tests.synth import linear_dls

    def learner(tfm):
        return TrainLearner(torch.nn.Linear(1, 1), linear_dls(), torch.nn.functional.mse_loss,
                            cbs=[BatchTransformCB(tfm)])
    learner(partial(torch.add, other=0.5)).fit(1, cbs=[CheckpointCB(tmp_path / "run")])
    state = load_checkpoint(tmp_path / "run")
    older = tmp_path / "older" / "epoch_0001.pt"
    older.parent.mkdir()
    torch.save({**{k: v for k, v in state.items() if k != "checksum"}, "setup": {**state["setup"],
                                                                                 "setup version": 6}}, older)
    with pytest.warns(UserWarning, match=r"kept outside.*BatchTransformCB_0.tfm.alpha"):
        learner(partial(torch.add, other=0.5, alpha=3.0)).fit(2, resume=older)
