"""A run's curves.png: loss (and accuracy) per epoch as the book plots them, drawn by helper
processes (`python -m d2lrun.plots`) started ahead: matplotlib's import runs beside the work. And
a sweep's heatmap.png (heatmap_figure), drawn by d2lrun.sweeps.report."""

import contextlib
import functools
import io
import json
import math
import os
import subprocess
import sys


def curves_figure(rows: list[dict], title: str = ""):
    """Loss (and accuracy) per epoch, training and validation, as the book plots them: a Figure."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, and a faster import
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    panels = [("loss", "loss")] + ([("acc", "accuracy")] if "train_acc" in rows[0] else [])
    fig = Figure(figsize=(4.5 * len(panels), 3.5))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    marker = "o" if len(rows) <= 30 else None
    for ax, (key, label) in zip(axes, panels, strict=True):
        for split, style in (("train", "-"), ("val", "--")):
            if f"{split}_{key}" in rows[0]:
                values = [r[f"{split}_{key}"] for r in rows]
                ax.plot(epochs, values, style, marker=marker, label=f"{split} {label}")
        ax.set(xlabel="epoch", ylabel=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:  # one epoch: its tick, not 0.945 ... 1.065
            ax.set_xticks(epochs)
        if key == "loss" and all(r["train_loss"] > 0 for r in rows):
            ax.set_yscale("log")  # 6×10⁻¹ pushed the axis label off the figure's edge
            ax.yaxis.set_major_formatter(plain_log())
            ax.yaxis.set_minor_formatter(plain_log())
        else:  # one epoch's 0.11270 and 0.11275 read '1e-5+1.127e-1' on an axis of their own
            low, high = ax.get_ylim()
            ax.set_ylim(min(low, (low + high) / 2 - 0.01), max(high, (low + high) / 2 + 0.01))
            ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    # Fixed margins rather than tight_layout(), which measured 0.17 s of a 2.8 s default run.
    fig.subplots_adjust(left=0.17 / len(panels), right=0.97, bottom=0.14, top=0.87, wspace=0.3)
    # IPython shows an object through its _repr_png_; a Figure made without pyplot has none.
    fig._repr_png_ = functools.partial(png, fig)
    return fig


def plain_log(digits: str = "123456789"):
    """A log axis's labels as matplotlib picks them, written short: 0.6, 1e-4, not 6×10⁻¹; only
    those whose first digit is in digits."""
    from matplotlib.ticker import LogFormatterSciNotation

    class PlainLog(LogFormatterSciNotation):
        def __call__(self, x, pos=None):
            short = f"{x:g}" if x >= 0.01 else f"{x:.0e}".replace("e-0", "e-")
            return short if super().__call__(x, pos) and f"{x:.0e}"[0] in digits else ""

    return PlainLog()


def heatmap_figure(table, x_key: str, y_key: str, metric: str, higher: bool, sweep: str):
    """best_<metric> over two swept values of a sweep's table (d2lrun.sweeps.collect): a cell per
    grid job, a dot per trial of a search; higher: a higher metric is better. A Figure."""
    import matplotlib
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, and a faster import

    col = f"best_{metric}"
    cells = table.dropna(subset=[x_key, y_key])
    ok = cells["_score"].map(math.isfinite)
    values = cells.loc[ok, col].astype(float)
    cmap = matplotlib.colormaps["viridis" if higher else "viridis_r"].with_extremes(bad="lightgray")
    # A log scale when the values span more than a decade (min and max are NaN when none are left).
    norm = LogNorm() if values.min() > 0 and values.max() > 10 * values.min() else None
    xs, ys = sorted(set(cells[x_key])), sorted(set(cells[y_key]))
    grid = len(xs) * len(ys) == len(set(zip(cells[x_key], cells[y_key], strict=True)))
    size = (max(5.0, 1.1 * len(xs) + 2.5), max(3.5, 0.7 * len(ys) + 2)) if grid else (6, 4.5)
    fig = Figure(figsize=size)
    ax = fig.subplots()
    if grid:  # a grid sweep: one cell per job, failures grey with their status
        z = cells[ok].pivot_table(col, index=y_key, columns=x_key, aggfunc="last")
        z = z.reindex(index=ys, columns=xs).astype(float).to_numpy()
        image = ax.imshow(z, cmap=cmap, norm=norm, origin="lower", aspect="auto")
        for r, good in zip(cells.to_dict("records"), ok, strict=True):
            red, green, blue, _ = cmap(image.norm(r[col])) if good else (1, 1, 1, 1)
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # white text on dark cells
            text = f"{r[col]:.3g}" if good else r["status"]
            color = "white" if dark else "black" if good else "dimgray"
            ax.text(xs.index(r[x_key]), ys.index(r[y_key]), text, ha="center", va="center",
                    fontsize=8, color=color)  # fmt: skip
        ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
        ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
    else:  # a search (optuna): one dot per trial, failures as red crosses
        image = ax.scatter(cells.loc[ok, x_key], cells.loc[ok, y_key], c=values, cmap=cmap,
                           norm=norm, s=60, edgecolors="black")  # fmt: skip
        failed = cells[~ok]
        label = ", ".join(sorted(set(failed["status"])))  # diverged, failed
        ax.scatter(failed[x_key], failed[y_key], marker="x", color="red", label=label)
        for scale, axis, vals in ((ax.set_xscale, ax.xaxis, xs), (ax.set_yscale, ax.yaxis, ys)):
            if vals[0] > 0 and vals[-1] > 10 * vals[0]:  # 0.02 0.05: not 2×10⁻²3×10⁻² (overlaid)
                scale("log")
                axis.set_major_formatter(plain_log())
                axis.set_minor_formatter(plain_log("25"))
        if len(failed):
            ax.legend()
    if len(values):
        fig.colorbar(image, ax=ax, label=col)
    ax.set(xlabel=x_key, ylabel=y_key, title=f"{col} ({sweep})")
    fig.tight_layout()
    return fig


def png(fig) -> bytes:
    """A matplotlib Figure as PNG bytes, at the resolution of the run's curves.png."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def curves_png(rows: list[dict], title: str) -> bytes:
    return png(curves_figure(rows, title))


class Plotter(contextlib.AbstractContextManager):
    """curves.png drawn by helper processes (`python -m d2lrun.plots`) started ahead: their import
    of matplotlib (0.3-0.4 s, a tenth of the default run) runs beside the command's work, and a
    stack's plots (0.1-0.3 s each) are drawn side by side, one helper per core (d2lrun.batched)."""

    # Processes, not multiprocessing: its spawn imports the caller's main script again, which a
    # script without `if __name__ == "__main__"` reruns.

    def __init__(self, helpers: int = 1):
        self.helpers = start_helpers(helpers)

    def __exit__(self, *exc) -> None:  # the command ended: a helper still waiting goes
        for helper in self.helpers:
            helper.kill()
            with helper:  # its pipes closed (a ResourceWarning each, left open), and waited for
                pass

    def __call__(self, rows: list[dict], title: str) -> bytes:
        return self.many([(rows, title)])[0]

    def many(self, plots: list[tuple[list[dict], str]]) -> list[bytes]:
        """curves.png of each (rows, title), in order: by the helpers started ahead (each draws
        once), else by new ones, one per core; where none can, here."""
        from concurrent.futures import ThreadPoolExecutor

        helpers, self.helpers = self.helpers[: len(plots)], self.helpers[len(plots) :]
        if not helpers and len(plots) > 1:
            helpers = start_helpers(min(len(plots), os.cpu_count() or 1))
        helpers = helpers or [None]
        parts = [plots[i :: len(helpers)] for i in range(len(helpers))]
        with ThreadPoolExecutor(len(helpers)) as pool:
            drawn = list(pool.map(helper_pngs, helpers, parts))
        return [drawn[i % len(helpers)][i // len(helpers)] for i in range(len(plots))]


def start_helpers(count: int) -> list[subprocess.Popen]:
    helpers = []
    with contextlib.suppress(OSError):  # none, or fewer: drawn here
        for _ in range(count):
            helpers.append(subprocess.Popen(
                [sys.executable, "-m", "d2lrun.plots"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
            ))  # fmt: skip
    return helpers


def helper_pngs(helper: subprocess.Popen | None, plots: list) -> list[bytes]:
    """The helper's PNG of each plot, each after its length; drawn here if it cannot."""
    with contextlib.suppress(AttributeError, OSError, ValueError, subprocess.SubprocessError):
        out, _ = helper.communicate(json.dumps(plots).encode(), timeout=600)
        stream = io.BytesIO(out)  # 8 bytes of length, then the PNG
        pngs = [stream.read(int.from_bytes(n, "big")) for n in iter(lambda: stream.read(8), b"")]
        if helper.returncode == 0 and [p[:4] for p in pngs] == [b"\x89PNG"] * len(plots):
            return pngs
    return [curves_png(*plot) for plot in plots]  # no helper (it could not start, or was killed)


if __name__ == "__main__":  # Plotter's helper: matplotlib at once, then plots in, PNGs out
    import matplotlib.figure  # noqa: F401  (while the command works)

    for rows, title in json.loads(sys.stdin.buffer.read() or "[]"):  # none: it ended first
        picture = curves_png(rows, title)  # not `png`: that is the function curves_png calls
        sys.stdout.buffer.write(len(picture).to_bytes(8, "big") + picture)
