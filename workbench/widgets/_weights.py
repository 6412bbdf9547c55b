"""Weight view: for a chosen layer, each weight tensor's histogram, heat map and statistics.

Quantized tensors are shown decoded (the values the layer computes with), with their lookup table
beside the histogram and how often each entry is used. The numbers are ``weight_tensors``'s.
"""
import ipywidgets as W
import numpy as np
from matplotlib.figure import Figure

from ._common import Deferred, ErrorArea, image_of, table_html
from ._facts import layers_with_weights, weight_tensors


def _as_plane(values):
    """A 2-D view of any tensor: (out, rest) for >= 2-D, a near-square fold for 1-D."""
    v = np.asarray(values, np.float32)
    if v.ndim >= 2:
        return v.reshape(v.shape[0], -1)
    n = v.size
    cols = int(np.ceil(np.sqrt(n))) or 1
    rows = int(np.ceil(n / cols)) or 1
    plane = np.full(rows * cols, np.nan, np.float32)
    plane[:n] = v
    return plane.reshape(rows, cols)


def weight_figure(tensor):
    """Histogram (with the lookup table's entries, when quantized) and heat map of one tensor."""
    quantized = tensor.lookup_table is not None
    fig = Figure(figsize=(10.0 if quantized else 8.0, 3.0))      # fixed margins: constrained layout costs ~1 s
    fig.subplots_adjust(left=0.06 if not quantized else 0.05, right=0.97, bottom=0.12, top=0.88, wspace=0.35)
    axes = fig.subplots(1, 3 if quantized else 2, width_ratios=[3, 3, 2] if quantized else [3, 3])
    hist, heat = axes[0], axes[1]
    values = tensor.values.ravel()
    hist.hist(values[np.isfinite(values)], bins=min(50, max(5, values.size // 2)), color="tab:blue")
    hist.set_title(f"{tensor.name}: histogram ({values.size} values)", fontsize=9)
    plane = _as_plane(tensor.values)
    span = float(np.nanmax(np.abs(plane))) if np.isfinite(plane).any() else 1.0
    im = heat.imshow(plane, cmap="RdBu_r", vmin=-(span or 1.0), vmax=span or 1.0, aspect="auto",
                     interpolation="nearest")
    heat.set_title(f"heat map {tuple(tensor.values.shape)}" + (" (folded)" if tensor.values.ndim < 2 else ""),
                   fontsize=9)
    fig.colorbar(im, ax=heat, shrink=0.8)
    if quantized:
        for entry in tensor.lookup_table:
            hist.axvline(entry, color="tab:red", linewidth=0.8, alpha=0.6)
        used = np.bincount(tensor.codes, minlength=tensor.lookup_table.size)
        table = axes[2]
        table.barh(np.arange(tensor.lookup_table.size), used, color="tab:red")
        table.set_yticks(np.arange(tensor.lookup_table.size),
                         [f"{i}: {v:.3g}" for i, v in enumerate(tensor.lookup_table)], fontsize=7)
        table.set_title(f"{tensor.bits}-bit lookup table: uses", fontsize=9)
    return fig


class WeightView(Deferred, W.VBox):
    """Pick a layer with weights; see each tensor's statistics, histogram and heat map."""

    def __init__(self, session, active=True, **kwargs):
        self.session = session
        self.active = active
        self.errors = ErrorArea()
        names = layers_with_weights(session.model)
        self.layer_choice = W.Dropdown(description="layer", options=names, value=names[0] if names else None)
        self.stats = W.HTML()
        self.plots = W.VBox()
        self.layer_choice.observe(self.errors.guard(lambda change: self.show(change["new"])), names="value")
        super().__init__([self.layer_choice, self.stats, self.plots, self.errors], **kwargs)
        self.add_class("workbench-weights")
        self.tensors = []
        if names:
            self.errors.guard(self.show)(names[0])
        else:
            self.stats.value = "<i>no layer of this model holds weights</i>"

    def show(self, layer_name):
        self.tensors = weight_tensors(self.session.model, layer_name)
        rows = []
        for t in self.tensors:
            s = t.statistics()
            rows.append((t.name, tuple(t.values.shape), t.storage + (f" ({t.bits} bits)" if t.bits else ""),
                         s.get("min"), s.get("max"), s.get("mean"), s.get("std"), s.get("zeros")))
        self.stats.value = table_html(["tensor", "shape", "stored as", "min", "max", "mean", "std", "zeros"], rows,
                                      css_class="workbench-weight-table")
        tensors = self.tensors
        self.plots.children = []
        self.when_shown(lambda: setattr(self.plots, "children",
                                        [image_of(weight_figure(t)) for t in tensors if t.values.size]))

    def __repr__(self):
        return f"<workbench WeightView: layer {self.layer_choice.value!r}, {len(self.tensors)} tensor(s)>"
