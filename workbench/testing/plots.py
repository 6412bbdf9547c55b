"""Diff plots fitted to the data: heat maps for planes and images, overlays for series, bars for classes.

Figures are made with ``matplotlib.figure.Figure`` (not pyplot), so they never pile up in pyplot's
global state and a notebook shows each one exactly once. Every plot of a mismatch marks the
worst element, since that is where a person starts looking.
"""
import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from .compare import format_index

DIFF_CMAP = "RdBu_r"          # diverging: blue below the reference, red above, white equal
VALUE_CMAP = "viridis"
MAX_BARS = 20


def _png(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _show_figures_in_notebooks():
    """A bare Figure only draws in IPython once pyplot's inline backend is set up; register it here,
    so ``report.plot()`` draws in a fresh notebook without ``%matplotlib inline``."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "display_formatter"):
        formatter = shell.display_formatter.formatters["image/png"]
        if Figure not in formatter.type_printers:      # leave a configured inline backend alone
            formatter.for_type(Figure, _png)


_show_figures_in_notebooks()


def plot_comparison(comparison, title=None):
    """A Figure showing where ``comparison``'s actual value differs from its expected value."""
    c = comparison
    title = title or f"output '{c.name}'"
    if c.kind == "label" or c.expected_array is None:
        fig = _text_figure(c)
    elif c.kind == "probabilities":
        fig = _probabilities_figure(c)
    else:
        fig = _array_figure(c)
    fig.suptitle(f"{title}\n{_verdict(c)}", fontsize=10)
    return fig


def _verdict(c):
    if c.kind == "label" or c.max_abs_error is None:
        return ("PASS" if c.passed else "FAIL") + (f": {c.problem}" if c.problem else "")
    text = (f"{'PASS' if c.passed else 'FAIL'}: {c.mismatched} of {c.size} outside tolerance "
            f"(rtol {c.rtol:g}, atol {c.atol:g}), max abs error {c.max_abs_error:.3g}")
    if c.mismatched:
        text += f", worst at {format_index(c.worst_index)}"
    return text


# ------------------------------------------------------------------ choosing what to draw

def choose_view(shape, worst_index, kind):
    """How to draw an array: ("scalar"|"series"|"plane"|"rgb", selection, label).

    Unit axes are dropped. Three or more remaining axes are cut to the plane of the last two
    (H and W of [.., C, H, W]), at the leading coordinates of the worst element, so the plot
    shows where the worst element is. A plane with one short side (<= 4) is drawn as that many
    series. Images keep their colour axis (H x W x 3 or 4) and are drawn in colour.
    """
    worst = tuple(worst_index) if isinstance(worst_index, tuple) else (0,) * len(shape)
    axes = [i for i, d in enumerate(shape) if d != 1]
    if kind == "image" and len(axes) == 3 and shape[-1] in (3, 4):
        return "rgb", tuple(slice(None) if i in axes else 0 for i in range(len(shape))), ""
    if len(axes) == 0:
        return "scalar", tuple(0 for _ in shape), ""
    if len(axes) == 1:
        return "series", tuple(slice(None) if i in axes else 0 for i in range(len(shape))), ""
    plane = axes[-2:]
    selection = tuple(slice(None) if i in plane else (worst[i] if i in axes else 0) for i in range(len(shape)))
    label = ""
    if len(axes) > 2:
        label = "slice [" + ", ".join(":" if isinstance(s, slice) else str(s) for s in selection) + "]"
    rows, cols = shape[plane[0]], shape[plane[1]]
    if min(rows, cols) <= 4 and max(rows, cols) >= 16:
        return "series", selection, label
    return "plane", selection, label


def _worst_in_view(c, selection):
    """(row, col) or (i,) of the worst element inside the drawn selection, or None when it is elsewhere."""
    if not isinstance(c.worst_index, tuple):
        return None
    kept = []
    for s, w in zip(selection, c.worst_index):
        if isinstance(s, slice):
            kept.append(w)
        elif s != w:
            return None
    return tuple(kept)


# ------------------------------------------------------------------ figures

def _array_figure(c):
    kind, selection, label = choose_view(c.expected_array.shape, c.worst_index, c.kind)
    e, a = c.expected_array[selection], c.actual_array[selection]
    worst = _worst_in_view(c, selection)
    if kind == "scalar":
        fig = Figure(figsize=(8.0, 3.0), layout="constrained")
        ax = fig.subplots()
        ax.bar(["expected", "actual"], [float(e), float(a)], color=["tab:blue", "tab:orange"])
        ax.set_title("expected and actual")
        return fig
    if kind == "series":
        return _series_figure(c, e, a, worst, label)
    return _plane_figure(c, e, a, worst, label, rgb=(kind == "rgb"))


def _series_figure(c, e, a, worst, label):
    if e.ndim == 1:
        e, a, worst = e[None], a[None], (None if worst is None else (0,) + worst)
    elif e.shape[0] > e.shape[1]:                         # series along the long side
        e, a, worst = e.T, a.T, (None if worst is None else worst[::-1])
    n = e.shape[1]
    # fixed margins, not constrained layout: this is the figure of the edit loop (vectors, the
    # common case), and constrained layout alone took a third of its drawing time
    fig = Figure(figsize=(12.0, 3.4))
    fig.subplots_adjust(left=0.055, right=0.985, bottom=0.15, top=0.78, wspace=0.28)
    overlay, diff, hist = fig.subplots(1, 3, width_ratios=[3, 3, 2])
    x = np.arange(n)
    marker = "o" if n <= 64 else None
    for row in range(e.shape[0]):
        suffix = f" [{row}]" if e.shape[0] > 1 else ""
        overlay.plot(x, e[row], color="tab:blue", marker=marker, markersize=3, label=f"expected{suffix}")
        overlay.plot(x, a[row], color="tab:orange", linestyle="--", marker=marker, markersize=3,
                     label=f"actual{suffix}")
        diff.plot(x, a[row] - e[row], color="tab:red", marker=marker, markersize=3)
    if worst is not None and not c.passed:
        r, i = worst
        overlay.plot([i], [a[r, i]], "kx", markersize=10, label="worst")
        diff.plot([i], [a[r, i] - e[r, i]], "kx", markersize=10)
    diff.axhline(0, color="grey", linewidth=0.8)
    overlay.legend(fontsize=7, loc="best")
    overlay.set_title("expected and actual" + (f" ({label})" if label else ""))
    diff.set_title("difference (actual - expected)")
    overlay.set_xlabel("index")
    diff.set_xlabel("index")
    _histogram(hist, c)
    return fig


def _plane_figure(c, e, a, worst, label, rgb):
    rows, cols = e.shape[:2]
    panel = float(np.clip(3.2 * cols / max(rows, 1), 1.6, 6.0))
    fig = Figure(figsize=(3 * panel + 4.0, 3.6), layout="constrained")
    ax_e, ax_a, ax_d, ax_h = fig.subplots(1, 4, width_ratios=[panel, panel, panel, 2.6])
    suffix = f" ({label})" if label else ""
    if rgb:
        ax_e.imshow(np.clip(e / 255.0, 0, 1), interpolation="nearest")
        ax_a.imshow(np.clip(a / 255.0, 0, 1), interpolation="nearest")
        d = np.abs(a - e).max(axis=-1)
        im = ax_d.imshow(d, cmap="magma", interpolation="nearest")
        ax_d.set_title("difference |actual - expected| (max over colours)")
        fig.colorbar(im, ax=ax_d, shrink=0.8)
    else:
        finite = np.concatenate([e[np.isfinite(e)], a[np.isfinite(a)]])
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        for ax, values in ((ax_e, e), (ax_a, a)):
            im = ax.imshow(values, cmap=VALUE_CMAP, vmin=low, vmax=high, interpolation="nearest", aspect="auto")
        fig.colorbar(im, ax=[ax_e, ax_a], shrink=0.8)
        d = a - e
        span = float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else 0.0
        span = span or 1.0
        im = ax_d.imshow(d, cmap=DIFF_CMAP, vmin=-span, vmax=span, interpolation="nearest", aspect="auto")
        ax_d.set_title("difference (actual - expected)")
        fig.colorbar(im, ax=ax_d, shrink=0.8)
    ax_e.set_title("expected" + suffix)
    ax_a.set_title("actual" + suffix)
    if worst is not None and not c.passed:
        for ax in (ax_e, ax_a, ax_d):
            ax.plot([worst[1]], [worst[0]], marker="o", markersize=12, markerfacecolor="none",
                    markeredgecolor="red", markeredgewidth=1.5)
    _histogram(ax_h, c)
    return fig


def _probabilities_figure(c):
    labels, e, a = c.labels, c.expected_array, c.actual_array
    order = list(np.argsort(-e, kind="stable")[:MAX_BARS // 2])
    for i in np.argsort(-np.abs(a - e), kind="stable"):
        if len(order) >= min(MAX_BARS, len(labels)):
            break
        if i not in order:
            order.append(int(i))
    order.sort(key=lambda i: -e[i])
    names = [str(labels[i]) for i in order]
    x = np.arange(len(order))
    fig = Figure(figsize=(max(8.0, 0.45 * len(order) + 3), 5.2), layout="constrained")
    bars, diff = fig.subplots(2, 1, sharex=True)
    bars.bar(x - 0.2, e[order], width=0.4, label="expected", color="tab:blue")
    bars.bar(x + 0.2, a[order], width=0.4, label="actual", color="tab:orange")
    bars.legend(fontsize=8)
    shown = f"{len(order)} of {len(labels)} labels" if len(order) < len(labels) else f"{len(labels)} labels"
    bars.set_title(f"probabilities ({shown}: the most likely and the most different)")
    colours = ["tab:red" if abs(a[i] - e[i]) > c.atol + c.rtol * abs(e[i]) else "tab:grey" for i in order]
    diff.bar(x, a[order] - e[order], color=colours)
    diff.axhline(0, color="grey", linewidth=0.8)
    diff.set_title("difference (actual - expected); red: outside tolerance")
    diff.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    return fig


def _text_figure(c):
    fig = Figure(figsize=(8.0, 1.8), layout="constrained")
    ax = fig.subplots()
    ax.set_axis_off()
    if c.kind == "label":
        ax.set_title("label")
        ax.text(0.5, 0.5, f"expected {c.expected!r}\nactual {c.actual!r}", ha="center", va="center",
                color="black" if c.passed else "darkred", fontsize=12, transform=ax.transAxes)
    else:
        ax.set_title("no values to compare")
        ax.text(0.5, 0.5, c.problem or "", ha="center", va="center", wrap=True, transform=ax.transAxes)
    return fig


def _histogram(ax, c):
    """Histogram of |actual - expected| with log-spaced bins, and where the tolerance typically lies."""
    error = np.abs(c.actual_array - c.expected_array).reshape(-1)
    error = error[np.isfinite(error)]
    ax.set_title("error histogram")
    positive = error[error > 0]
    zeros = error.size - positive.size
    if positive.size == 0:
        ax.text(0.5, 0.5, "all compared elements are equal", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
        return
    low, high = float(positive.min()), float(positive.max())
    if high > low:
        bins = np.logspace(np.log10(low), np.log10(high), 30)
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())      # decades are enough; minor log ticks cost draw time
    else:
        bins = 10
    ax.hist(positive, bins=bins, color="tab:red", alpha=0.8)
    typical = c.atol + c.rtol * float(np.median(np.abs(c.expected_array)))
    if typical > 0:
        ax.axvline(typical, color="black", linestyle="--", linewidth=1, label="tolerance at median |expected|")
        ax.legend(fontsize=7, loc="upper left")
    ax.set_xlabel("absolute error" + (f" (+{zeros} zeros)" if zeros else ""))
    ax.set_ylabel("elements")
