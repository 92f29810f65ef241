"""miniai.plotting: figures come back (headless, Agg) and nothing calls plt.show()."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from miniai.plotting import get_grid, show_image, show_images  # noqa: E402


@pytest.fixture(autouse=True)
def no_show(monkeypatch):
    """Fail if the library calls plt.show(); close figures afterwards."""
    def boom(*a, **k):
        raise AssertionError("plt.show() called")
    monkeypatch.setattr(plt, "show", boom)
    yield
    plt.close("all")


def test_show_images_grid_with_titles():
    xb, yb = torch.randn(9, 1, 28, 28), torch.arange(9)
    classes = [f"c{i}" for i in range(10)]
    fig = show_images(xb, titles=[classes[i] for i in yb])
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles == classes[:9]
    assert fig.axes[0].images[0].get_array().shape == (28, 28)


def test_show_images_rgb_and_uneven_grid():
    fig = show_images(torch.randn(5, 3, 8, 8), ncols=3)
    assert len(fig.axes) == 6 and sum(bool(ax.images) for ax in fig.axes) == 5
    arr = fig.axes[0].images[0].get_array()
    assert arr.shape == (8, 8, 3) and arr.min() >= 0 and arr.max() <= 1  # rescaled for display, not clipped


def test_a_grey_uint8_image_is_drawn_on_the_pixels_scale_not_stretched_to_its_own_range():
    """(probe P9) imshow stretches one channel to its own min and max: an all-white uint8 image was drawn black,
    a dark one of pixels 10 and 40 as pure black and white; colour uint8 images were drawn as they are."""
    white = torch.full((1, 8, 8), 255, dtype=torch.uint8)
    dark = torch.tensor([[10, 40], [40, 10]], dtype=torch.uint8)
    for image in (white, dark, dark.numpy()):
        fig = show_image(image)
        norm = fig.axes[0].images[0].norm
        assert (norm.vmin, norm.vmax) == (0, 255)
        plt.close(fig)
    fig = show_image(dark, vmin=10, vmax=40)  # asked for: as asked
    assert (fig.axes[0].images[0].norm.vmin, fig.axes[0].images[0].norm.vmax) == (10, 40)
    plt.close(fig)
    for fig in (show_image(dark, cmap="gray"), show_images([dark], cmap="Greys")):  # (regression round T3) grey
        assert (fig.axes[0].images[0].norm.vmin, fig.axes[0].images[0].norm.vmax) == (0, 255)  # asked by name
        plt.close(fig)
    # (regression round T2) a uint8 label mask in a colour map of one's own: classes 0..4 all got one colour
    mask = torch.arange(5, dtype=torch.uint8).repeat(4, 1)
    for fig in (show_image(mask, cmap="tab10"), show_images([mask], cmap="viridis")):
        norm = fig.axes[0].images[0].norm
        assert (norm.vmin, norm.vmax) == (0, 4)
        plt.close(fig)


def test_show_image_on_given_ax_returns_its_figure():
    fig, ax = plt.subplots()
    assert show_image(torch.rand(28, 28), ax=ax, title="t") is fig and ax.get_title() == "t"
    assert isinstance(show_image(torch.rand(1, 4, 4)), Figure)


def test_get_grid_shape():
    fig, axs = get_grid(7, nrows=2)
    assert len(axs) == 7 and len(fig.axes) == 8


def test_a_colour_map_chosen_by_the_user_is_kept_and_figsize_sizes_a_grid():
    """show_image forced 'gray' over rcParams['image.cmap'] (the course's get_hist image came out grey);
    show_images ignored figsize; dead_chart(figsize=) was a TypeError."""
    im = torch.rand(8, 8)
    assert show_image(im).axes[0].images[0].get_cmap().name == "gray"  # matplotlib's default map: grey
    with plt.rc_context({"image.cmap": "viridis_r"}):
        assert show_image(im).axes[0].images[0].get_cmap().name == "viridis_r"
    assert show_image(im, cmap="magma").axes[0].images[0].get_cmap().name == "magma"
    assert tuple(show_images([im] * 4, figsize=(8, 2)).get_size_inches()) == (8, 2)
    from miniai.callbacks.activations import ActivationStats
    from tests.synth import tiny_learner
    stats = ActivationStats()
    tiny_learner([stats]).fit(1)
    assert tuple(stats.dead_chart(figsize=(11, 5)).get_size_inches()) == (11, 5)


def test_raw_pixels_and_labels_are_drawn_as_given():
    """A uint8 colour tensor was contrast-stretched (60 and 100 drawn black and white; as an ndarray it was not);
    a grid or a title list shorter than the images dropped images without a word; get_grid(0) divided by zero."""
    im = torch.full((3, 4, 5), 60, dtype=torch.uint8)
    im[:, :2] = 100
    drawn = show_image(im).axes[0].images[0].get_array()
    assert drawn.dtype == np.uint8 and drawn.min() == 60 and drawn.max() == 100
    ims = [torch.rand(8, 8)] * 5
    with pytest.raises(ValueError, match="a grid of 1x2 has no room for 5 images"):
        show_images(ims, nrows=1, ncols=2)
    drawn = [ax for ax in show_images(ims, titles=["a", "b"]).axes if ax.images]
    assert len(drawn) == 5 and [ax.get_title() for ax in drawn] == ["a", "b", "", "", ""]  # as the course's
    with pytest.raises(ValueError, match="get_grid needs n >= 1"):
        get_grid(0)


def test_the_lr_finder_chart_keeps_a_last_point_that_is_no_blow_up():
    from miniai.plotting import plot_lr_find
    ax = plot_lr_find([1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0], [2.3, 2.0, 1.2, 1.0, 2.8, float("nan")]).axes[0]
    assert ax.get_ylim()[1] >= 2.8
    ax = plot_lr_find([1e-4, 1e-3, 1e-2, 1e-1], [2.3, 1.2, 1.0, 50.0]).axes[0]
    assert ax.get_ylim()[1] < 3  # the blow-up leaves the chart rather than squash the rest


def test_activation_plots_say_their_x_axis_counts_recorded_batches():
    """They said 'batch', but with every=k (batches 0, k, 2k... of each pass) and on_valid=True (validation batches
    in between) the x axis is the index of the recorded batch, not the batch number; each plot draws one pass's
    (probe P45), and says which."""
    from torch import nn

    from miniai.callbacks.activations import ActivationStats
    from tests.synth import tiny_learner
    stats = ActivationStats(lambda m: isinstance(m, nn.Linear), every=2, on_valid=True)
    tiny_learner([stats]).fit(2)
    figures = {"color_dim": stats.color_dim(), "dead_chart": stats.dead_chart(), "plot_stats": stats.plot_stats()}
    for name, fig in figures.items():
        labels = {ax.get_xlabel() for ax in fig.axes if ax.lines or ax.images}
        assert labels == {"recorded training batch"}, (name, labels)


def _cut_off(fig: Figure) -> list[str]:
    """The axis labels and titles of `fig` that fall (partly) outside it once drawn, as saved at dpi=100."""
    fig.set_dpi(100)
    fig.canvas.draw()
    box = fig.bbox
    texts = [t for ax in fig.axes for t in (ax.xaxis.label, ax.yaxis.label, ax.title) if t.get_text()]
    return [t.get_text() for t in texts if not box.contains(*t.get_window_extent().p0)
            or not box.contains(*t.get_window_extent().p1)]


def test_the_png_plots_of_the_cli_keep_their_labels_inside_the_figure():
    """loss.png (plot_losses) had the bottom of its x label 'batch' cut off; schedule.png is plot_recorder's."""
    from miniai.plotting import plot_losses, plot_recorder
    assert _cut_off(plot_losses([2.0, 1.5, 1.2, 1.0], [1.4, 1.1], 2)) == []
    assert _cut_off(plot_recorder({"lr": [0.1, 0.2, 0.1], "mom": [0.9, 0.85, 0.9]})) == []


def test_get_grid_takes_the_courses_parameters_in_the_courses_order():
    """The course's get_grid(n, nrows, ncols, title, weight, size, figsize, imsize, suptitle): miniai's took imsize
    4th, so get_grid(4, 2, 2, "A title") failed deep in matplotlib."""
    import inspect
    params = list(inspect.signature(get_grid).parameters)
    assert params[:9] == ["n", "nrows", "ncols", "title", "weight", "size", "figsize", "imsize", "suptitle"]
    fig, axs = get_grid(4, 2, 2, "A title", "normal", 9)
    assert len(axs) == 4 and fig._suptitle.get_text() == "A title"
    assert fig._suptitle.get_weight() == "normal" and fig._suptitle.get_size() == 9
    fig, _ = get_grid(2, 1, 2, None, "bold", 14, None, 1.5, "plain")
    assert tuple(fig.get_size_inches()) == (3.0, 1.5) and fig._suptitle.get_text() == "plain"
    assert tuple(get_grid(2, 1, 2, figsize=(5, 2))[0].get_size_inches()) == (5.0, 2.0)


def test_the_lr_finder_chart_keeps_its_labels_inside_the_figure():
    """plot_lr_find's figure cut off the bottom of 'learning rate', as loss.png did 'batch'."""
    from miniai.plotting import plot_lr_find
    assert _cut_off(plot_lr_find([1e-3, 1e-2, 1e-1], [1.0, 0.5, 2.0], {"valley": 1e-2})) == []


def test_color_dim_without_figsize_keeps_a_readable_size():
    """get_grid's course order made figsize=None mean imsize-sized cells: one layer's image became 2 x 2 inches."""
    from miniai.plotting import plot_color_dim
    assert tuple(plot_color_dim([torch.rand(20, 40)]).get_size_inches()) == (4.0, 3.0)
    assert tuple(plot_color_dim([torch.rand(20, 40)] * 3).get_size_inches()) == (6.4, 4.8)


def test_plot_recorder_on_one_axes_titles_it_with_every_quantity():
    """plot_recorder(recs, ax=one_axes) set each name as the panel's title in turn: a panel of lr and mom read 'mom'."""
    import matplotlib.pyplot as plt
    from miniai.plotting import plot_recorder
    fig, ax = plt.subplots()
    plot_recorder({"lr": [0.1, 0.05], "mom": [0.85, 0.9]}, ax=ax)
    assert ax.get_title() == "lr, mom" and [line.get_label() for line in ax.lines] == ["lr", "mom"]
    plt.close(fig)


def test_the_terminal_bar_of_a_validation_pass_moves(monkeypatch):
    """The terminal bar drew the validation pass at 0/N and never redrew it until the metrics row replaced it."""
    import contextlib
    import io
    import torch.nn.functional as F
    from torch import nn
    from miniai.callbacks import progress
    from miniai.callbacks.metrics import MetricsCB
    from miniai.callbacks.progress import ProgressCB
    from miniai.supervised import TrainLearner
    from tests.synth import linear_dls
    monkeypatch.setattr(progress, "_READ_EVERY", 0.0)  # redraw every batch (no timing in the test)
    dls = linear_dls(n_train=16, n_valid=32, bs=8)
    learn = TrainLearner(nn.Linear(1, 1), dls, F.mse_loss, lr=0.01, cbs=[MetricsCB(), ProgressCB(mode="terminal")])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        learn.fit(1)
    frames = [f for f in out.getvalue().split("\r") if " valid |" in f]
    assert any("4/4" in f for f in frames) and any("2/4" in f for f in frames)


@pytest.mark.parametrize("kwargs", [{"nrows": 0}, {"ncols": 0}, {"nrows": 1.5}])
def test_get_grid_of_no_rows_or_columns_is_refused_with_the_reason(kwargs):
    """get_grid(5, nrows=0) ended in a ZeroDivisionError."""
    with pytest.raises(ValueError, match=r"get_grid (nrows|ncols) must be a whole number >= 1"):
        get_grid(5, **kwargs)


def test_a_tensor_image_is_drawn_channels_first_whatever_its_width():
    """A 3×4×4 RGB tensor was drawn as 3 rows of 4 RGBA pixels, a (1,6,1) one as a lying row: only a last size
    other than 1, 3 or 4 was taken as a sign of [C,H,W]."""
    from miniai.plotting import show_image
    for shape, drawn in [((3, 4, 4), (4, 4, 3)), ((3, 5, 4), (5, 4, 3)), ((1, 6, 1), (6, 1)), ((3, 8, 8), (8, 8, 3))]:
        fig = show_image(torch.rand(shape))
        assert fig.axes[0].images[0].get_array().shape == drawn
        plt.close(fig)
    fig = show_image(np.random.rand(4, 4, 3))  # an array: matplotlib's [H,W,C]
    assert fig.axes[0].images[0].get_array().shape == (4, 4, 3)
    plt.close(fig)



def test_plot_recorder_draws_a_value_per_param_group_as_one_line_each():
    # RecorderCB(lrs=lambda cb: [g["lr"] for g in cb.learn.opt.param_groups]) recorded fine, then plot() failed on
    # float(list) (probe); the course's plt.plot(v) drew a line per group. A tensor of them is drawn so too
    from miniai.plotting import plot_recorder
    recs = {"lrs": [[0.1, 0.01], [0.2, 0.02], [0.3, 0.03]], "moms": [torch.tensor([0.9, 0.8])] * 3}
    fig = plot_recorder(recs)
    lines = fig.axes[0].get_lines()
    assert [list(l.get_ydata()) for l in lines] == [[0.1, 0.2, 0.3], [0.01, 0.02, 0.03]]
    assert [l.get_label() for l in lines] == ["lrs[0]", "lrs[1]"]
    assert [list(map(float, l.get_ydata())) for l in fig.axes[1].get_lines()] == [pytest.approx([0.9] * 3),
                                                                                  pytest.approx([0.8] * 3)]
    with pytest.raises(ValueError, match=r"'lrs' recorded values of 2 and 3 numbers"):
        plot_recorder({"lrs": [[0.1, 0.01], [0.2, 0.02, 0.3]]})


def test_the_lr_find_plots_axis_leaves_out_the_whole_blow_up_that_stopped_the_finder():
    # the finder stops on a median of 5 losses, so the last 2-3 are blow-ups: only the last was left out, and the
    # curve before it filled 37% of the axis (probe). The losses before the blow-up, the first ones too, stay in
    from miniai.plotting import plot_lr_find
    lrs = [1e-4 * 2 ** i for i in range(8)]
    top = plot_lr_find(lrs, [0.7, 0.5, 0.3, 0.35, 0.6, 1.2, 1.4, 2.5]).axes[0].get_ylim()[1]
    assert 0.7 < top < 0.75
    top = plot_lr_find(lrs, [2.0, 0.5, 0.3, 0.35, 0.6, 1.2, 1.4, 2.5]).axes[0].get_ylim()[1]
    assert 2.0 < top < 2.2
    top = plot_lr_find(lrs[:5], [0.7, 0.5, 0.3, 0.35, 0.6]).axes[0].get_ylim()[1]  # the data ran out: all in
    assert 0.7 < top < 0.75
    top = plot_lr_find(lrs, [0.7, 0.5, 0.2, 0.0, 0.6, 1.2, 1.4, 2.5]).axes[0].get_ylim()[1]  # a loss of exactly 0
    assert 0.7 < top < 0.75  # (the blow-up was drawn on the axis: 3 x 0 took every point in)
