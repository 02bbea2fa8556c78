"""curves.png: the book's plot of a run's metrics, drawn by helper processes started ahead."""

from d2lrun.plots import Plotter, curves_figure, curves_png


def test_several_runs_curves_are_drawn_by_helpers_in_order():
    """A stack's members' curves.png, drawn side by side: each the picture of its own rows."""
    plots = [([{"epoch": e, "train_loss": 1 / (e + k), "val_loss": 2 / (e + k)} for e in (1, 2)],
              f"run {k}") for k in range(5)]  # fmt: skip
    with Plotter(2) as plotter:  # started ahead: each draws its share once
        helpers = list(plotter.helpers)
        assert plotter.many(plots) == [curves_png(rows, title) for rows, title in plots]
        assert [h.returncode for h in helpers] == [0, 0] and plotter.helpers == []
        # Then new ones, one per core; a single plot without a helper is drawn here.
        assert plotter.many(plots[:2]) == [curves_png(*plot) for plot in plots[:2]]
        assert plotter.many(plots[:1]) == [curves_png(*plots[0])]


def test_curves_are_the_books_plot_loss_and_accuracy_per_epoch_train_and_val():
    rows = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.5 + e / 10, "val_loss": 1.5 / e,
             "val_acc": 0.4 + e / 10} for e in (1, 2, 3)]  # fmt: skip
    fig = curves_figure(rows, "softmax on fashion_mnist")
    assert fig._suptitle.get_text() == "softmax on fashion_mnist"
    assert tuple(fig.get_size_inches()) == (9.0, 3.5)  # two panels side by side
    loss, acc = fig.axes
    for ax, label, scale, key in (
        (loss, "loss", "log", "loss"),
        (acc, "accuracy", "linear", "acc"),
    ):
        assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_yscale()) == ("epoch", label, scale)
        train, val = ax.get_lines()
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend == [f"train {label}", f"val {label}"]
        assert (train.get_linestyle(), val.get_linestyle()) == ("-", "--")
        assert train.get_marker() == val.get_marker() == "o"  # up to 30 epochs: each one marked
        assert list(train.get_xdata()) == [1, 2, 3]
        assert list(train.get_ydata()) == [r[f"train_{key}"] for r in rows]
        assert list(val.get_ydata()) == [r[f"val_{key}"] for r in rows]
    assert loss.xaxis.get_major_locator()._integer  # whole epochs on the axis

    # Regression without held-out rows, 31 epochs, a loss that reaches 0: one linear panel.
    rows = [{"epoch": e, "train_loss": 30 - e + 1, "train_rmse": 1.0} for e in range(1, 32)]
    fig = curves_figure(rows)
    (only,) = fig.axes
    (train,) = only.get_lines()
    assert tuple(fig.get_size_inches()) == (4.5, 3.5)
    assert only.get_yscale() == "linear" and train.get_marker() == "None"
    assert [t.get_text() for t in only.get_legend().get_texts()] == ["train loss"]

    # Classification without held-out rows (val_fraction=0): its accuracy too, it had none
    rows = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.5 + e / 10} for e in (1, 2)]
    loss, acc = curves_figure(rows).axes
    assert [t.get_text() for t in acc.get_legend().get_texts()] == ["train accuracy"]


def test_the_loss_axis_label_is_inside_the_picture_and_one_epoch_has_its_one_tick():
    """A loss within one decade was labelled 6×10⁻¹ ..., wide enough to push 'loss' off the
    figure's left edge (most Fashion-MNIST runs); one epoch's axis read 0.945 ... 1.065."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for losses in ([0.78, 0.57], [1.04, 1.02, 0.98, 0.95], [2.9, 0.03, 2e-4], [0.3]):
        rows = [{"epoch": e, "train_loss": v, "val_loss": v} for e, v in enumerate(losses, 1)]
        fig = curves_figure(rows)
        FigureCanvasAgg(fig).draw()
        (ax,) = fig.axes
        assert ax.yaxis.label.get_window_extent().x0 >= 0, losses
        labels = [t.get_text() for t in ax.get_yticklabels(which="both") if t.get_text()]
        assert labels and all(len(t) <= 5 for t in labels), labels  # 0.6, 1e-4
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1"]
    # One epoch's accuracies 0.11275 and 0.1127 read '1e-5+1.127e-1' over ticks 0 ... 5.
    rows = [
        {"epoch": 1, "train_loss": 2.3, "val_loss": 2.3, "train_acc": 0.11275, "val_acc": 0.1127}
    ]
    fig = curves_figure(rows)
    FigureCanvasAgg(fig).draw()
    acc = fig.axes[1]
    assert acc.yaxis.get_offset_text().get_text() == ""
    low, high = acc.get_ylim()
    assert low < 0.1127 < 0.11275 < high and high - low > 0.0199


def test_a_runs_curves_come_from_its_helper_process_or_are_drawn_here_without_one():
    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 2 / e} for e in (1, 2)]
    with Plotter() as draw:
        (helper,) = draw.helpers
        assert draw(rows, "linreg") == curves_png(rows, "linreg")
    assert helper.returncode == 0  # it drew the picture and ended
    with Plotter() as draw:
        draw.helpers[0].kill()  # a helper that died (or never started): drawn in this process
        draw.helpers[0].wait()
        assert draw(rows, "linreg") == curves_png(rows, "linreg")
    with Plotter(2) as draw:  # the command ended without a plot: its helpers go with it, and
        helpers = list(draw.helpers)  # their pipes (ResourceWarning: unclosed file, in a notebook)
    assert all(h.poll() is not None and h.stdin.closed and h.stdout.closed for h in helpers)
