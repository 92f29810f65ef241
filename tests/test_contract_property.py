"""The callback contract, tested on random stacks of callbacks that raise at random places (hypothesis).

A reference model of the cancel table in learner.py's docstring predicts, for every stack, the events that run
and the exception the user sees: an exception raised at an event unwinds the stages from the innermost out,
running each one's cleanup, until a stage whose cancel it is catches it (a cancel raised in a stage's own cleanup
only ends that stage); an exception no stage catches ends the fit. Every cleanup handler runs even when another
raised, and the first exception is the one that surfaces. Then: hooks are removed, temporary callbacks are gone,
`learn.cbs` is as before, and the learner fits again.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from miniai.callbacks import HooksCallback
from miniai.data import DataLoaders, TensorLoader
from miniai.learner import (EVENTS, Callback, CancelBatchException, CancelEpochException, CancelFitException,
                            CancelStepException, TrainLearner)

N_EPOCHS, N_TRAIN, N_VALID = 2, 3, 2
BATCH_EVENTS = ("before_batch", "after_predict", "after_loss", "after_backward", "after_step", "after_batch",
                "cleanup_batch")
EXCEPTIONS = (CancelBatchException, CancelEpochException, CancelFitException, CancelStepException,
              ZeroDivisionError, KeyboardInterrupt)
CANCELS = {"batch": CancelBatchException, "epoch": CancelEpochException, "fit": CancelFitException}
OUTER_CANCELS = {"batch": (CancelEpochException, CancelFitException), "epoch": (CancelFitException,), "fit": ()}


def ends_more(new: BaseException, cancel: BaseException) -> bool:
    """An error, or a cancel of a stage further out than `cancel`'s (CancelStepException is innermost)."""
    order = [CancelFitException, CancelEpochException, CancelBatchException, CancelStepException]
    rank = [order.index(type(e)) if type(e) in order else -1 for e in (new, cancel)]
    return rank[0] < rank[1]


def stage_of(event: str) -> str:
    if event.endswith("_fit"):
        return "fit"
    return "epoch" if event.endswith("_epoch") else "batch"


@dataclass
class Spec:
    """Raise `exc` (tagged with `tag`) the first time `event` fires at (epoch, training, iter)."""
    tag: int
    event: str
    epoch: int
    training: bool
    iter: int
    exc: type[BaseException]
    order: int
    temporary: bool

    def matches(self, event: str, epoch: int | None, training: bool | None, iter: int | None) -> bool:
        if event != self.event:
            return False
        level = stage_of(event)
        return level == "fit" or (epoch == self.epoch and training == self.training
                                  and (level == "epoch" or iter == self.iter))

    def make(self) -> BaseException:
        return self.exc(f"raiser {self.tag}")


# ---------------------------------------------------------------- the reference model of the table

class Model:
    """Predicts the event trace and the outcome of a fit with these raisers (callbacks run sorted by order)."""

    def __init__(self, specs: list[Spec]) -> None:
        # the learner sorts by order, keeping insertion order among equals: the permanent callbacks, then the
        # temporary ones fit adds
        self.specs = sorted(specs, key=lambda s: (s.order, s.temporary))
        self.fired: set[int] = set()
        self.trace: list[tuple] = []

    def event(self, event: str, where: tuple, cleanup: bool = False) -> list[BaseException]:
        """Record the event; the raisers it triggers raise (an ordinary event stops at the first one)."""
        self.trace.append((event, *where))
        raised = []
        for spec in self.specs:
            if spec.tag not in self.fired and spec.matches(event, *where):
                self.fired.add(spec.tag)
                raised.append(spec.make())
                if not cleanup:
                    break
        return raised

    def stage(self, name: str, where: tuple, body) -> BaseException | None:
        """Run a stage; return the exception that leaves it (None if it ended normally or was cancelled)."""
        out = None
        for event in (f"before_{name}", "body", f"after_{name}"):
            out = body() if event == "body" else next(iter(self.event(event, where)), None)
            if out is not None:
                break
        if isinstance(out, CANCELS[name]):
            out = None
        for e in self.event(f"cleanup_{name}", where, cleanup=True):
            if isinstance(e, CANCELS[name]):
                continue  # its own cancel there ends only this stage
            ctrl_c = isinstance(e, KeyboardInterrupt) and isinstance(out, Exception)  # (an error on its way up)
            if out is None or ctrl_c or isinstance(out, OUTER_CANCELS[name]) and ends_more(e, out):
                # the first other exception raised by a cleanup goes on up, even after its own cancel; a cancel on
                # its way up to its stage is no error: a real one raised meanwhile replaces it, and so does the
                # cancel of a stage further out, whether the first came from the body or from an earlier cleanup;
                # Ctrl-C in a cleanup stops the fit even after an error (which `except Exception` would catch)
                out = e
        return out

    def fit(self) -> BaseException | None:
        def epochs():
            for epoch in range(N_EPOCHS):
                for training, n in ((True, N_TRAIN), (False, N_VALID)):
                    out = self.stage("epoch", (epoch, training, None), lambda: batches(epoch, training, n))
                    if out is not None:
                        return out
            return None

        def batches(epoch, training, n):
            for i in range(n):
                out = self.stage("batch", (epoch, training, i), lambda: one_batch((epoch, training, i)))
                if out is not None:
                    return out
            return None

        def one_batch(where):
            steps = ("after_predict", "after_loss") + (("after_backward", "after_step") if where[1] else ())
            for event in steps:
                out = next(iter(self.event(event, where)), None)
                if isinstance(out, CancelStepException) and event in ("after_backward", "after_step"):
                    return None  # skips the step (and zero_grad); after_batch runs
                if out is not None:
                    return out
            return None
        return self.stage("fit", (None, None, None), epochs)


# ---------------------------------------------------------------- the real thing

class Recorder(Callback):
    """Records every event first (lowest order), with where it happened."""
    order = -1000

    def __init__(self) -> None:
        self.trace: list[tuple] = []


def _record(event):
    def handler(self, learn):
        level = stage_of(event)
        where = ((None, None, None) if level == "fit" else
                 (learn.epoch, learn.training, None if level == "epoch" else learn.iter))
        self.trace.append((event, *where))
    return handler


for _event in EVENTS:
    setattr(Recorder, _event, _record(_event))


def raiser(spec: Spec) -> Callback:
    def handler(self, learn):
        where = (learn.epoch, learn.training, learn.iter)
        if not self.fired and spec.matches(spec.event, *((None,) * 3 if stage_of(spec.event) == "fit" else where)):
            self.fired = True
            raise spec.make()
    cls = type(f"Raiser{spec.tag}", (Callback,), {"order": spec.order, spec.event: handler})
    cb = cls()
    cb.fired = False
    return cb


def learner(cbs) -> TrainLearner:
    torch.manual_seed(0)
    x = torch.randn(N_TRAIN * 4, 1)
    dls = DataLoaders(TensorLoader(x, 2 * x, bs=4, shuffle=True, seed=0), TensorLoader(x[:N_VALID * 4], x[:8], bs=4))
    return TrainLearner(nn.Linear(1, 1), dls, F.mse_loss, lr=0.01, cbs=cbs)


specs_strategy = st.lists(
    st.builds(Spec, tag=st.just(0), event=st.sampled_from(EVENTS), epoch=st.integers(0, N_EPOCHS - 1),
              training=st.booleans(), iter=st.integers(0, N_TRAIN - 1), exc=st.sampled_from(EXCEPTIONS),
              order=st.sampled_from([-1, 0, 3]), temporary=st.booleans()),
    min_size=1, max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=specs_strategy)
def test_random_raising_callbacks_follow_the_cancel_table(specs):
    for tag, spec in enumerate(specs):
        spec.tag = tag
    model = Model(specs)
    expected_error = model.fit()

    recorder = Recorder()
    hooks = HooksCallback(lambda *args: None)
    permanent = [raiser(s) for s in specs if not s.temporary]
    temporary = [raiser(s) for s in specs if s.temporary]
    learn = learner([recorder, hooks, *permanent])
    before = list(learn.cbs)
    try:
        learn.fit(N_EPOCHS, cbs=temporary)
        seen_error = None
    except BaseException as e:  # noqa: BLE001 -- KeyboardInterrupt included: it is one of the raised exceptions
        seen_error = e

    assert recorder.trace == model.trace
    if expected_error is None:
        assert seen_error is None
    else:  # the first exception raised that no stage caught, itself (type and which raiser)
        assert type(seen_error) is type(expected_error) and str(seen_error) == str(expected_error)
    stack = []  # every started stage is cleaned up exactly once, innermost first
    for event, *_ in recorder.trace:
        if event.startswith("before_"):
            stack.append(stage_of(event))
        elif event.startswith("cleanup_"):
            assert stack.pop() == stage_of(event)
    assert stack == []
    assert not learn.model._forward_hooks  # hooks removed
    assert learn.cbs == before and not any(cb in learn.cbs for cb in temporary)

    for cb in permanent:
        learn.rm_cb(cb)
    recorder.trace = []
    learn.fit(1)  # the learner fits again, the whole way
    assert recorder.trace[0][0] == "before_fit" and recorder.trace[-2:] == [("after_fit", None, None, None),
                                                                            ("cleanup_fit", None, None, None)]
    assert sum(e == "after_step" for e, *_ in recorder.trace) == N_TRAIN


def test_the_model_predicts_a_known_trace():
    """The reference model itself, on the table's CancelBatchException row."""
    spec = Spec(0, "after_loss", 0, True, 1, CancelBatchException, 0, False)
    model = Model([spec])
    assert model.fit() is None
    batch1 = [e for e, epoch, training, i in model.trace if (epoch, training, i) == (0, True, 1)]
    assert batch1 == ["before_batch", "after_predict", "after_loss", "cleanup_batch"]


@pytest.mark.parametrize("exc", [ZeroDivisionError, KeyboardInterrupt])
def test_an_error_in_a_cleanup_while_another_propagates_is_a_note_not_a_replacement(exc):
    first = Spec(0, "after_batch", 0, True, 0, exc, 0, False)
    second = Spec(1, "cleanup_epoch", 0, True, 0, RuntimeError, 0, False)
    learn = learner([raiser(first), raiser(second)])
    with pytest.raises(exc, match="raiser 0") as info:
        learn.fit(1)
    assert any("also raised RuntimeError: raiser 1" in note for note in info.value.__notes__)


def test_an_error_in_a_cleanup_after_its_stages_own_cancel_there_is_not_swallowed():
    """The stage's own cancel in one cleanup_epoch handler, then a RuntimeError in the next: the old loop noted the
    error on the cancel and swallowed both, so the fit went on as if nothing had failed."""
    cancel = Spec(0, "cleanup_epoch", 0, True, 0, CancelEpochException, -1, False)
    error = Spec(1, "cleanup_epoch", 0, True, 0, RuntimeError, 0, False)
    assert isinstance(Model([cancel, error]).fit(), RuntimeError)
    with pytest.raises(RuntimeError, match="raiser 1"):
        learner([raiser(cancel), raiser(error)]).fit(2)


def test_an_error_in_a_cleanup_while_an_outer_stages_cancel_is_on_its_way_up_is_raised():
    """SingleBatchCB's CancelFitException on its way up, then the NaN guard's error in cleanup_epoch: the error was
    a note on the cancel, which the fit stage then swallowed, so the fit ended as if it were fine."""
    cancel = Spec(0, "after_batch", 0, True, 0, CancelFitException, 0, False)
    error = Spec(1, "cleanup_epoch", 0, True, 0, RuntimeError, 0, False)
    with pytest.raises(RuntimeError, match="raiser 1"):
        learner([raiser(cancel), raiser(error)]).fit(1)


@pytest.mark.parametrize("first", [("after_batch", CancelEpochException), ("cleanup_batch", CancelEpochException)])
def test_a_fit_cancel_from_a_cleanup_while_an_inner_cancel_is_on_its_way_up_ends_the_fit(first):
    """CancelEpochException on its way up (from the batch, or from an earlier cleanup_batch), then a
    CancelFitException from a cleanup_batch: the fit's cancel became a note on the epoch's, which the epoch stage
    then caught, so the fit trained on for every epoch left."""
    event, exc = first
    epoch_cancel = Spec(0, event, 0, True, 0, exc, 0, False)
    fit_cancel = Spec(1, "cleanup_batch", 0, True, 0, CancelFitException, 1, False)
    model = Model([epoch_cancel, fit_cancel])
    assert model.fit() is None
    recorder = Recorder()
    learner([recorder, raiser(epoch_cancel), raiser(fit_cancel)]).fit(N_EPOCHS)
    assert recorder.trace == model.trace
    assert recorder.trace[-3:] == [("cleanup_batch", 0, True, 0), ("cleanup_epoch", 0, True, None),
                                   ("cleanup_fit", None, None, None)]


def test_ctrl_c_in_a_cleanup_after_an_error_is_raised_with_the_error_in_a_note():
    """(probe P43) Ctrl-C pressed while a cleanup ran after an error became a note on that error: a sweep catching
    Exception went on to its next run, the interrupt lost."""
    error = Spec(0, "after_loss", 0, True, 0, ZeroDivisionError, 0, False)
    ctrl_c = Spec(1, "cleanup_fit", None, None, None, KeyboardInterrupt, 0, False)
    assert isinstance(Model([error, ctrl_c]).fit(), KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt, match="raiser 1") as info:
        learner([raiser(error), raiser(ctrl_c)]).fit(1)
    assert isinstance(info.value.__context__, ZeroDivisionError) and str(info.value.__context__) == "raiser 0"
