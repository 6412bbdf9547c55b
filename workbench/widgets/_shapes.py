"""Shape view: every blob's shape (a table and a compact diagram); other input shapes for flexible models.

Choosing another input shape runs ``shapes_at`` (a trace on zeros of that shape), which calls each
custom layer's ``output_shapes`` again, as Core ML does when input shapes change.
"""
import html

import ipywidgets as W
import numpy as np
from matplotlib.figure import Figure

from ._common import Deferred, ErrorArea, image_of, table_html
from ._facts import blob_rows, input_shape_choices, shapes_at


def shape_diagram(rows):
    """One bar per blob, in order, as long as log10 of its element count; custom layers' outputs in orange."""
    n = max(len(rows), 1)
    height = 0.9 + 0.22 * n
    fig = Figure(figsize=(7.0, height))                          # fixed margins: constrained layout costs ~1 s
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.6 / height, top=1 - 0.15 / height)
    ax = fig.subplots()
    sizes = [float(np.prod(r.shape)) if len(r.shape) else 1.0 for r in rows]
    lengths = [np.log10(s) + 1 if s > 0 else 0.5 for s in sizes]
    colours = ["tab:orange" if r.kind == "custom" else "tab:green" if r.kind == "input" else "tab:blue"
               for r in rows]
    y = np.arange(len(rows))[::-1]
    ax.barh(y, lengths, color=colours, height=0.7)
    for yi, r, length in zip(y, rows, lengths):
        label = f"{r.blob} {tuple(r.shape)}" + (f"  [{r.class_name}]" if r.class_name else "")
        ax.text(length + 0.05, yi, label, va="center", fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(0, max(lengths, default=1) * 1.9 + 1)
    ax.set_xlabel("log10(elements) + 1   (green: input, orange: custom layer output, blue: built-in)")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    return fig


def parse_shape(text):
    """'1, 3, 64, 64' or '(1,3,64,64)' -> (1, 3, 64, 64)."""
    parts = [p for p in text.replace("(", " ").replace(")", " ").replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"shape {text!r}: give whole numbers separated by commas, e.g. 1, 3, 64, 64") from None
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"shape {text!r}: every dimension must be a positive whole number")
    return shape


def _allowed(choice):
    if choice.kind == "enumerated":
        return "one of " + ", ".join(str(s) for s in choice.shapes)
    if choice.ranges:
        return " x ".join(f"[{lo}, {'unbounded' if hi < 0 else hi}]" for lo, hi in choice.ranges) + \
            (" (height x width)" if choice.kind == "image" else "")
    if choice.kind == "image" and choice.shapes:
        return "one of " + ", ".join(f"{h}x{w}" for h, w in choice.shapes) + " (height x width)"
    return "fixed"


class ShapeView(Deferred, W.VBox):
    """The blob shapes table and diagram; for flexible inputs, a field per input to try another shape."""

    def __init__(self, session, active=True, **kwargs):
        self.session = session
        self.active = active
        self.errors = ErrorArea()
        self.choices = input_shape_choices(session.model)
        self.fields = {}
        controls = []
        for c in self.choices:
            if not c.flexible:
                continue
            if c.kind == "enumerated" or (c.kind == "image" and c.shapes):
                options = [(", ".join(str(d) for d in s), s) for s in c.shapes]
                field = W.Dropdown(options=options, value=tuple(c.default) if tuple(c.default) in c.shapes
                                   else c.shapes[0], description=c.name)
            else:
                field = W.Text(value=", ".join(str(d) for d in c.default), description=c.name)
            self.fields[c.name] = field
            controls.append(W.HBox([field, W.HTML(f"<small>allowed: {html.escape(_allowed(c))}</small>")]))
        self.apply_button = W.Button(description="Shapes at these inputs", icon="refresh")
        self.apply_button.on_click(self.errors.guard(lambda _: self.set_input_shapes(self._field_shapes())))
        self.table = W.HTML(layout=W.Layout(overflow="auto", max_height="420px"))
        self.diagram = W.Box()
        head = [W.HTML("<b>input shapes</b> (the model takes flexible shapes)"), *controls, self.apply_button] \
            if controls else [W.HTML("<i>the model's input shapes are fixed</i>")]
        super().__init__([*head, W.HBox([self.table, self.diagram]), self.errors], **kwargs)
        self.add_class("workbench-shapes")
        self.input_shapes = {}
        self.blob_shapes = dict(session.model.blob_shapes)
        session.on_change(self.errors.guard(lambda what: self.refresh() if what == "model" else None))
        self.draw()

    def _field_shapes(self):
        return {name: (f.value if isinstance(f, W.Dropdown) else parse_shape(f.value)) for name, f in self.fields.items()}

    def set_input_shapes(self, input_shapes):
        """Trace at these input shapes ({input: shape}) and show the blob shapes that result."""
        self.errors.clear()
        self.blob_shapes = shapes_at(self.session.model, input_shapes)
        self.input_shapes = dict(input_shapes)
        for name, shape in input_shapes.items():
            field = self.fields.get(name)
            if isinstance(field, W.Text):
                field.value = ", ".join(str(d) for d in shape)
            elif isinstance(field, W.Dropdown) and tuple(shape) in [v for _, v in field.options]:
                field.value = tuple(shape)
        self.draw()
        return self.blob_shapes

    def refresh(self):
        """After an edit: the custom layers' output_shapes may differ, so trace again at the chosen shapes."""
        if self.session.model.missing_implementations():
            self.blob_shapes = dict(self.session.model.blob_shapes)
        else:
            self.blob_shapes = shapes_at(self.session.model, self.input_shapes)
        self.draw()

    def draw(self):
        self.rows = blob_rows(self.session.model, self.blob_shapes)
        self.table.value = table_html(["blob", "shape", "written by", "kind", "className"],
                                      [(r.blob, r.shape, r.layer or "(model input)", r.kind, r.class_name or "")
                                       for r in self.rows], css_class="workbench-shape-table")
        rows = self.rows
        self.when_shown(lambda: setattr(self.diagram, "children", [image_of(shape_diagram(rows))]))

    def __repr__(self):
        return f"<workbench ShapeView: {len(self.blob_shapes)} blobs, inputs {self.input_shapes or 'default'}>"
