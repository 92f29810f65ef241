"""ProgressCB's notebook mode: refused outside a Jupyter kernel, and its live graph shows a single valid loss."""
from __future__ import annotations

from typing import Any

import matplotlib
import pytest

from miniai.callbacks import progress as progress_module
from miniai.callbacks.metrics import MetricsCB
from miniai.callbacks.progress import ProgressCB
from tests.synth import tiny_learner

matplotlib.use("Agg")


class FakeHandle:
    """What IPython's display(..., display_id=True) returns in a kernel: a handle to update what it showed."""

    def __init__(self, shown: list[Any], obj: Any) -> None:
        self.shown = shown
        shown.append(obj)

    def update(self, obj: Any) -> None:
        self.shown.append(obj)


@pytest.fixture
def fake_kernel(monkeypatch) -> list[Any]:
    """Pretend to run in a Jupyter kernel; returns the list of everything displayed."""
    import IPython.display
    shown: list[Any] = []
    monkeypatch.setattr(progress_module, "in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda obj, display_id=None, **kw: FakeHandle(shown, obj))
    return shown


def test_notebook_mode_outside_a_kernel_says_it_needs_one_and_cleans_up_without_a_second_error():
    learn = tiny_learner([MetricsCB(), ProgressCB(mode="notebook")])
    needs_kernel = r"ProgressCB\(mode='notebook'\) needs a running Jupyter kernel.*mode='terminal'"
    with pytest.raises(ValueError, match=needs_kernel) as info:
        learn.fit(1)
    assert not getattr(info.value, "__notes__", None)  # cleanup_fit raised nothing more


def test_the_live_graph_shows_a_single_valid_loss(fake_kernel):
    import matplotlib.figure
    progress = ProgressCB(mode="notebook", plot=True)
    tiny_learner([MetricsCB(), progress]).fit(1)
    figures = [obj for obj in fake_kernel if isinstance(obj, matplotlib.figure.Figure)]
    assert figures, "no graph was drawn"
    train, valid = figures[-1].axes[0].lines
    assert len(valid.get_xdata()) == 1 == len(progress.valid_losses)
    assert valid.get_marker() not in ("None", "", " ", None)  # a line through one point draws nothing: a marker does


def test_a_kernel_whose_shell_subclasses_jupyters_counts_as_a_notebook(monkeypatch):
    """Colab's shell (google.colab._shell.Shell) subclasses ZMQInteractiveShell: in_notebook() said False there,
    so the auto mode drew terminal bars, and mode='notebook' would be refused in a working kernel."""
    import sys
    from types import SimpleNamespace
    ZMQInteractiveShell = type("ZMQInteractiveShell", (), {})
    Shell = type("Shell", (ZMQInteractiveShell,), {})
    monkeypatch.setitem(sys.modules, "IPython", SimpleNamespace(get_ipython=Shell))
    monkeypatch.setitem(sys.modules, "google.colab", SimpleNamespace())
    assert progress_module.in_notebook()
    monkeypatch.delitem(sys.modules, "google.colab")
    # Spyder's console subclasses it too, but shows no HTML: not a notebook (fastprogress decides the same way)
    monkeypatch.setitem(sys.modules, "IPython", SimpleNamespace(get_ipython=type("SpyderShell", (ZMQInteractiveShell,),
                                                                                {})))
    assert not progress_module.in_notebook()
    monkeypatch.setitem(sys.modules, "IPython", SimpleNamespace(get_ipython=type("TerminalInteractiveShell", (), {})))
    assert not progress_module.in_notebook()


def test_in_a_notebook_callbacks_read_the_loader_and_the_epochs_as_in_a_script(fake_kernel):
    """(probe plots) In a notebook ProgressCB put its fastprogress bars in learn.dl and learn.epochs: a callback
    after it found no len(learn.dl) (a bare TypeError in Jupyter only), and the Ctrl-C note counted batches 'of ?'.
    The bars are moved by hand now, as the terminal bar is."""
    from miniai.learner import Callback
    seen = []

    class Reads(Callback):
        order = 40  # after ProgressCB (30)

        def before_epoch(self, learn):
            seen.append((learn.dl is (learn.dls.train if learn.training else learn.dls.valid), len(learn.dl),
                         learn.epochs))

    learn = tiny_learner([MetricsCB(), ProgressCB(mode="notebook"), Reads()])
    learn.fit(2)
    assert [same for same, _, _ in seen] == [True] * 4
    assert [n for _, n, _ in seen] == [len(learn.dls.train), len(learn.dls.valid)] * 2
    assert all(epochs == range(2) for _, _, epochs in seen)
    html = " ".join(str(obj) for obj in fake_kernel)  # the bars still move: the train pass's to its end
    assert f'<progress max="{len(learn.dls.train)}" value="{len(learn.dls.train)}"' in html


def _graph_lines(shown: list[Any]) -> list[Any]:
    import matplotlib.figure
    figures = [obj for obj in shown if isinstance(obj, matplotlib.figure.Figure)]
    return figures[-1].axes[0].lines if figures else []


def test_the_live_graph_ends_with_every_training_loss_of_a_fit_without_validation(fake_kernel):
    """(probe plots) fit(2, valid=False) drew its graph at the first batch only (the graph was redrawn at a
    validation pass's end): 1 of the fit's losses was left in the notebook, a single point, which draws nothing."""
    progress = ProgressCB(mode="notebook", plot=True)
    tiny_learner([MetricsCB(), progress]).fit(2, valid=False)
    train = _graph_lines(fake_kernel)[0]
    assert len(train.get_xdata()) == len(progress.losses) > 2


def test_lr_find_draws_no_live_training_graph(fake_kernel):
    """(probe plots) lr_find with a learner's ProgressCB(plot=True) left a live 'training loss' graph of the
    finder's first few losses in the notebook beside lr_find's own plot."""
    learn = tiny_learner([MetricsCB(), ProgressCB(mode="notebook", plot=True)])
    learn.lr_find(plot=False, max_epochs=2)
    assert _graph_lines(fake_kernel) == []


def test_a_fit_refused_at_its_progress_bars_before_fit_after_one_that_drew_a_graph_raises_its_own_error(fake_kernel):
    """The graph's redraw at cleanup_fit must not run on the last fit's state (no bar: a second AttributeError)."""
    progress = ProgressCB(mode="notebook", plot=True)
    learn = tiny_learner([MetricsCB(), progress])
    learn.fit(1)
    with pytest.raises(ValueError, match="ProgressCBs") as info:
        learn.fit(1, cbs=[ProgressCB()])
    assert not getattr(info.value, "__notes__", None)
